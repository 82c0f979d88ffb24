//! `run(config, shutdown)`: connects the stages and runs until `shutdown` resolves.

use std::future::Future;
use std::sync::Arc;

use lapin::types::ReplyCode;
use tokio_util::sync::CancellationToken;

use std::time::Duration;

use crate::admin::{self, Health};
use crate::apply::bulk::BulkPresence;
use crate::apply::flow_deploy::FlowSettings;
use crate::apply::users::UserReads;
use crate::audit::note::SigningKey;
use crate::audit::seal::{self, Sealing};
use crate::broker::{self, topology, BrokerError, Publisher};
use crate::config::Config;
use crate::control::Controls;
use crate::genesys::GenesysClient;
use crate::ingest::{self, Ingest};
use crate::intake::{self, IntakeSettings};
use crate::lane::Lane;
use crate::limit::Budget;
use crate::pipeline::{Pipeline, Stages};
use crate::retry::RetryPolicy;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("cannot serve the admin endpoints on {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve HTTP ingest on {addr} (INGEST_ADDR): {source}")]
    Ingest {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("AUDIT_SIGNING_KEY_FILE {path}: {cause}")]
    AuditKey { path: String, cause: String },
}

/// Runs the worker until `shutdown` resolves: stops intake, lets in-flight jobs finish within
/// the grace period, then closes the broker connection cleanly. A lost or refused broker
/// connection is not the end: the worker reconnects with backoff and declares its topology
/// again.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
    tracing::info!(amqp = %config.amqp_url, redis = %config.redis.urls, redis_topology = ?config.redis.topology, genesys = %config.genesys.api_base, "Starting worker.");
    // Installed before the first job, so no count is lost before the first scrape.
    crate::telemetry::metrics();
    let store = Store::connect(
        &config.redis,
        &config.redis_key_prefix,
        config.idempotency_ttl_secs,
        config.lease_ms,
    )
    .await?
    .with_entity_ttl(config.entity_ttl_secs)
    .with_audit_log(config.audit_log.on);
    let admin_listener = admin::bind(config.admin_addr)
        .await
        .map_err(|source| WorkerError::Admin {
            addr: config.admin_addr,
            source,
        })?;
    let rps = config.genesys.rate_limit_rps;
    let genesys = Arc::new(genesys_client(&config, &store));
    let budgets = genesys.budgets();
    let health = Arc::new(Health::new(store.clone()).with_budgets(budgets.iter().cloned()));
    let retry = RetryPolicy::for_genesys(&config.genesys);
    let bulk = config.bulk_presence.then(|| {
        BulkPresence::start(
            genesys.clone(),
            retry,
            Duration::from_millis(config.bulk_window_ms),
            config.bulk_max,
        )
    });
    let users = UserReads::start(
        genesys.clone(),
        retry,
        Duration::from_millis(config.bulk_window_ms),
    );
    let sealing = sealing(&config)?;
    let cancel = CancellationToken::new();
    // A worker starts knowing what operators paused or cancelled, and follows their changes.
    let controls = Controls::watch(store.clone(), cancel.clone()).await?;
    let console = crate::console::Console::new(&config, store.clone(), controls.clone(), health.clone());
    let admin_server = admin::spawn(
        admin_listener,
        health.clone(),
        crate::console::pages(console),
        cancel.clone(),
    )
    .map_err(|source| WorkerError::Admin {
        addr: config.admin_addr,
        source,
    })?;
    crate::telemetry::keep_metrics_tidy(cancel.clone());
    if config.genesys.limits_refresh_secs > 0 {
        // Each OAuth client's own effective limit, read as that client.
        for budget in budgets {
            tokio::spawn(crate::genesys::limits::follow_allowed_rate(
                genesys.clone(),
                budget,
                rps,
                Duration::from_secs(config.genesys.limits_refresh_secs),
                cancel.clone(),
            ));
        }
    }
    let ingest_server = match (config.ingest_addr, &config.ingest_token) {
        (Some(addr), Some(token)) => {
            let listener = ingest::bind(addr)
                .await
                .map_err(|source| WorkerError::Ingest { addr, source })?;
            tracing::info!(%addr, "Accepting jobs over HTTP on POST /v1/jobs.");
            let ingest = Arc::new(Ingest::new(
                token.clone(),
                config.amqp_url.clone(),
                config.topology.jobs_exchange.clone(),
                config.limits,
            ));
            Some(tokio::spawn(ingest::serve(listener, ingest, cancel.clone())))
        }
        _ => None,
    };
    // However `run` ends, early errors included, the admin server stops with it.
    let _stop_admin = cancel.clone().drop_guard();
    let intake = cancel.child_token();
    let parts = Parts {
        config: &config,
        store: &store,
        genesys: &genesys,
        bulk: bulk.as_ref(),
        users: &users,
        health: &health,
        controls: &controls,
        sealing: sealing.as_ref(),
    };
    let supervise = supervise(&parts, intake.clone());
    tokio::pin!(supervise, shutdown);
    let result = tokio::select! {
        result = &mut supervise => result,
        _ = &mut shutdown => {
            tracing::info!("Shutdown requested.");
            intake.cancel();
            supervise.await
        }
    };
    cancel.cancel();
    let _ = tokio::task::spawn_blocking(move || admin_server.join()).await;
    if let Some(server) = ingest_server {
        let _ = server.await;
    }
    tracing::info!("Worker stopped.");
    result
}

/// How this worker seals the audit log (`None`: the log is off), its signing key read from
/// `AUDIT_SIGNING_KEY_FILE`; says at start what the log will be.
fn sealing(config: &Config) -> Result<Option<Sealing>, WorkerError> {
    let settings = &config.audit_log;
    if !settings.on {
        tracing::info!("Audit log off (AUDIT_LOG=off): audit events carry no log_index.");
        return Ok(None);
    }
    let key = match &settings.signing_key_file {
        Some(path) => {
            let failed = |cause: String| WorkerError::AuditKey {
                path: path.display().to_string(),
                cause,
            };
            let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
            Some(SigningKey::parse(&text).map_err(|e| failed(e.to_string()))?)
        }
        None => None,
    };
    match &key {
        Some(key) => {
            tracing::info!(origin = key.name(), verifier_key = %key.verifier(), "Audit log on; checkpoints signed.")
        }
        None => tracing::warn!(
            "Audit log on, UNSIGNED: no AUDIT_SIGNING_KEY_FILE, so checkpoints carry no signature and prove nothing about who made them (make a key with `genesys-worker audit keygen`)."
        ),
    }
    Ok(Some(Sealing::new(
        key,
        Duration::from_secs(settings.checkpoint_secs),
        settings.checkpoint_leaves,
        config.topology.audit_exchange.clone(),
    )))
}

/// The Genesys client of `config`'s OAuth client pool: one budget per client, each shared
/// fleet-wide under its client id through `store` (unless `GENESYS_RATE_LIMIT_SCOPE=replica`).
/// `plan` builds its client here too, so its calls spend the workers' budget.
pub(crate) fn genesys_client(config: &Config, store: &Store) -> GenesysClient {
    let (rps, burst) = (config.genesys.rate_limit_rps, config.genesys.rate_limit_burst);
    // With several clients, their budgets' metrics carry the client id as a label.
    let pooled = config.genesys_clients.len() > 1;
    let clients: Vec<_> = config
        .genesys_clients
        .iter()
        .map(|client| {
            let mut budget = if pooled {
                Budget::for_pool_client(&client.id, rps, burst, config.lane_weights)
            } else {
                Budget::for_client(&client.id, rps, burst, config.lane_weights)
            };
            if config.genesys.rate_limit_shared {
                budget = budget.shared(store.clone(), &client.id);
            }
            (client.clone(), Arc::new(budget))
        })
        .collect();
    if pooled {
        let ids: Vec<&str> = clients.iter().map(|(client, _)| client.id.as_str()).collect();
        tracing::info!(clients = ?ids, per_client_rps = rps, "Calling Genesys through a pool of OAuth clients.");
    }
    GenesysClient::pool(&config.genesys, clients)
}

/// What outlives a broker connection: each new connection builds its pipeline from these.
struct Parts<'a> {
    config: &'a Config,
    store: &'a Store,
    genesys: &'a Arc<GenesysClient>,
    bulk: Option<&'a BulkPresence>,
    users: &'a UserReads,
    health: &'a Health,
    controls: &'a Controls,
    /// With the audit log: how this replica seals it when it holds the sealer's lease.
    sealing: Option<&'a Sealing>,
}

/// Keeps a broker connection and consumes through it until `stop`; reconnects after a failure,
/// backing off from 250 ms to 10 s.
async fn supervise(parts: &Parts<'_>, stop: CancellationToken) -> Result<(), WorkerError> {
    const FIRST_WAIT: Duration = Duration::from_millis(250);
    let mut wait = FIRST_WAIT;
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let (result, connected) = connect_and_consume(parts, stop.clone()).await;
        let err = match result {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        parts.health.stopped_consuming();
        if connected {
            wait = FIRST_WAIT;
        }
        tracing::error!(error.message = %err, retry_in_ms = wait.as_millis() as u64, "Broker connection lost or refused; reconnecting.");
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

/// One connection's life: connect, declare, consume until `stop` or a failure, close. Also says
/// whether the connection was made, so backoff restarts after a connection that worked.
async fn connect_and_consume(parts: &Parts<'_>, stop: CancellationToken) -> (Result<(), BrokerError>, bool) {
    let Parts {
        config,
        store,
        genesys,
        bulk,
        users,
        health,
        controls,
        sealing,
    } = *parts;
    let connection = match broker::connect(&config.amqp_url).await {
        Ok(connection) => connection,
        Err(err) => return (Err(err), false),
    };
    let result = async {
        topology::declare(&connection, &config.topology).await?;
        let publisher = Publisher::open(&connection).await?;
        let pipeline = Arc::new(Pipeline::new(Stages {
            store: store.clone(),
            genesys: genesys.clone(),
            publisher: publisher.clone(),
            topology: config.topology.clone(),
            retry: RetryPolicy::for_genesys(&config.genesys),
            flows: FlowSettings {
                poll: Duration::from_millis(config.flow_poll_ms),
                timeout: Duration::from_secs(config.flow_operation_timeout_secs),
                lock_wait: Duration::from_secs(config.flow_lock_wait_secs),
                force_unlock_actors: config.flow_force_unlock_actors.clone(),
            },
            bulk: bulk.cloned(),
            users: users.clone(),
            limits: config.limits,
            controls: controls.clone(),
        }));
        let unparker = Arc::new(tokio::sync::Notify::new());
        let lanes = [
            IntakeSettings {
                queue: config.topology.work_queue.clone(),
                lane: Lane::Single,
                concurrency: config.worker_concurrency,
                prefetch: config.worker_prefetch,
                grace: config.shutdown_timeout(),
                dead_letter: config.topology.dead_letter.clone(),
                publisher: publisher.clone(),
                controls: controls.clone(),
                unparker: unparker.clone(),
            },
            IntakeSettings {
                queue: config.topology.batch_queue.clone(),
                lane: Lane::Batch,
                concurrency: config.batch_concurrency,
                prefetch: config.batch_prefetch,
                grace: config.shutdown_timeout(),
                dead_letter: config.topology.dead_letter.clone(),
                publisher: publisher.clone(),
                controls: controls.clone(),
                unparker: unparker.clone(),
            },
        ];
        // Each lane consumes on its own channel, with its own prefetch and concurrency; when
        // one stops (shutdown or a broken channel), so does the other.
        let lanes_stop = stop.child_token();
        let mut consumers = Vec::new();
        for _ in &lanes {
            consumers.push(connection.create_channel().await?);
        }
        let consume =
            futures_util::future::join_all(lanes.iter().zip(&consumers).map(|(settings, consumer)| {
                let (pipeline, lanes_stop) = (pipeline.clone(), lanes_stop.clone());
                async move {
                    let consumed =
                        intake::consume(consumer, pipeline, settings, health, lanes_stop.clone()).await;
                    lanes_stop.cancel();
                    consumed
                }
            }));
        let unparking = connection.create_channel().await?;
        let resumes = intake::parked::follow_resumes(
            &unparking,
            &publisher,
            [
                (Lane::Single, config.topology.work_queue.as_str()),
                (Lane::Batch, config.topology.batch_queue.as_str()),
            ],
            controls.clone(),
            &unparker,
            lanes_stop.clone(),
        );
        let seal = async {
            if let Some(sealing) = sealing {
                seal::run(
                    store.clone(),
                    publisher.clone(),
                    sealing.clone(),
                    lanes_stop.clone(),
                )
                .await;
            }
        };
        let (consumed, (), ()) = tokio::join!(consume, resumes, seal);
        // Acks travel on the consumer channels: closing one waits for what was written before.
        let ok: ReplyCode = 200;
        for channel in &consumers {
            let _ = channel.close(ok, "worker stopping".into()).await;
        }
        consumed.into_iter().collect::<Result<Vec<()>, _>>().map(|_| ())
    }
    .await;
    let _ = connection.close(200, "worker stopping".into()).await;
    (result, true)
}
