//! The sandbox: a Genesys Cloud simulator for tests, the demo and local development (the
//! repository's docs/architecture.md, section 5.2).
//!
//! It serves the real paths, methods, field names and error bodies of the endpoints the worker
//! uses (Genesys Cloud Platform API v2), checked against the official Python SDK's models by the
//! conformance test, on loopback by default, with state in memory seeded from a
//! [`SandboxConfig`]. One listener serves both the login host (`/oauth/token`) and the API host.
//!
//! Every API request passes the [`gateway`]: it is counted, rate-limited per OAuth client and,
//! with the behaviour's org limit, per route family for the whole org (a real 429 with
//! `Retry-After` naming the `limit` hit; the [`limits`] API reports the same values), and
//! exposed to the faults set through the control API and the behaviour's gateway errors
//! (errors with a Genesys, HTML or empty body, latency, a connection reset before any answer, a
//! response dropped after the change was made). The control API under
//! `/sandbox/` ([`control`]) reports what Genesys *saw* and resets state, so tests assert on it.

mod api;
mod architect;
mod behaviour;
mod control;
mod faults;
mod gateway;
mod limits;
mod oauth;
mod presence;
mod state;
mod taskmanagement;
mod users;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::middleware;
use axum::routing::{get, post, put};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use uuid::Uuid;

pub use architect::flow_id;
pub use behaviour::{Behaviour, ErrorBodyKind, FlowOperations, GatewayErrors, OrgLimit};
pub use faults::Fault;
pub use state::{presence_definition_id, SYSTEM_PRESENCES};
pub use taskmanagement::{status_id, workitem_id, worktype_id};

/// Requests per second and burst of a token bucket.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
}

/// What the sandbox starts with.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Seeded users, with ids from [`user_id`].
    pub users: usize,
    /// Seeded workitems of the seeded worktype, with ids from [`workitem_id`].
    pub workitems: usize,
    /// Seeded flows, each with a published version, with ids from [`flow_id`].
    pub flows: usize,
    /// OAuth clients accepted by `/oauth/token`: (client id, client secret).
    pub clients: Vec<(String, String)>,
    /// `expires_in` of issued tokens; after it the API answers 401.
    pub token_ttl_secs: u64,
    /// Per-OAuth-client token bucket; `None` serves without limit.
    pub rate_limit: Option<RateLimit>,
    /// Largest list `PUT /api/v2/users/presences/bulk` accepts.
    pub bulk_presence_max: usize,
    /// How long an asynchronous flow operation (checkin, publish) takes to complete.
    pub flow_operation_ms: u64,
    /// Seed of the fault injector's random draws: the same requests in the same order meet
    /// the same faults.
    pub seed: u64,
    /// Which of the real service's behaviours to play (see [`Behaviour`]).
    pub behaviour: Behaviour,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            users: 200,
            workitems: 20,
            flows: 3,
            clients: vec![
                (DEFAULT_CLIENT_ID.into(), DEFAULT_CLIENT_SECRET.into()),
                (OTHER_CLIENT_ID.into(), OTHER_CLIENT_SECRET.into()),
            ],
            token_ttl_secs: 86_400,
            rate_limit: None,
            bulk_presence_max: 50,
            flow_operation_ms: 200,
            seed: 42,
            behaviour: Behaviour::default(),
        }
    }
}

pub const DEFAULT_CLIENT_ID: &str = "sandbox-client";
pub const DEFAULT_CLIENT_SECRET: &str = "sandbox-secret";
/// A second OAuth client, e.g. someone else holding a flow lock.
pub const OTHER_CLIENT_ID: &str = "other-client";
pub const OTHER_CLIENT_SECRET: &str = "other-secret";

/// Id of seeded user `n` (0-based): stable across runs, so sample jobs can name real users.
pub fn user_id(n: usize) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("genesys-worker:sandbox:user:{n}").as_bytes(),
    )
}

/// Shared state behind every handler.
#[derive(Debug)]
pub(crate) struct Sandbox {
    config: Mutex<SandboxConfig>,
    world: Mutex<state::World>,
}

impl Sandbox {
    fn new(config: SandboxConfig) -> Self {
        let world = state::World::seeded(&config);
        Self {
            config: Mutex::new(config),
            world: Mutex::new(world),
        }
    }

    pub(crate) fn world(&self) -> std::sync::MutexGuard<'_, state::World> {
        // A handler that panicked mid-update leaves test state suspect, but the sandbox keeps
        // serving: tests assert on what they see.
        self.world.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn config(&self) -> SandboxConfig {
        self.config
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(crate) fn set_rate_limit(&self, limit: Option<RateLimit>) {
        self.config
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .rate_limit = limit;
        self.world().set_rate_limit(limit);
    }

    pub(crate) fn behaviour(&self) -> Behaviour {
        self.config
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .behaviour
            .clone()
    }

    /// Plays `behaviour` from now on; an org limit set again starts with a fresh bucket.
    pub(crate) fn set_behaviour(&self, behaviour: Behaviour) {
        self.config
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .behaviour = behaviour;
        self.world().forget_org_bucket();
    }
}

/// A running sandbox; stops when dropped or on [`SandboxHandle::stop`].
#[derive(Debug)]
pub struct SandboxHandle {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SandboxHandle {
    /// `http://<addr>`: the base of both the login and the API host.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a sandbox on `addr` (use `127.0.0.1:0` for a free port) in a background task.
pub async fn spawn(addr: SocketAddr, config: SandboxConfig) -> std::io::Result<SandboxHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(err) = serve(listener, config, shutdown).await {
            tracing::error!(error.message = %err, "Sandbox server failed.");
        }
    });
    Ok(SandboxHandle {
        addr,
        stop: Some(stop),
        task: Some(task),
    })
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: SandboxConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(Arc::new(Sandbox::new(config)));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Route templates use the Genesys documentation's parameter names, so stats and fault
/// routes read like the API reference (`PATCH /api/v2/users/{userId}/presences/purecloud`).
fn router(sandbox: Arc<Sandbox>) -> Router {
    let genesys = Router::new()
        .route("/oauth/token", post(oauth::token))
        .route("/api/v2/presence/definitions", get(presence::definitions))
        .route("/api/v2/users", get(users::list_users))
        .route("/api/v2/users/{userId}", get(users::get_user))
        .route(
            "/api/v2/users/{userId}/outofoffice",
            get(users::get_out_of_office).put(users::put_out_of_office),
        )
        .route(
            "/api/v2/users/{userId}/presences/purecloud",
            get(presence::get_presence).patch(presence::patch_presence),
        )
        .route("/api/v2/users/presences/bulk", put(presence::put_bulk))
        .route("/api/v2/users/presences/purecloud/bulk", get(presence::get_bulk))
        .route(
            "/api/v2/users/{userId}/routingstatus",
            get(presence::get_routing_status).put(presence::put_routing_status),
        )
        .route("/api/v2/taskmanagement/workitems", post(taskmanagement::create))
        .route(
            "/api/v2/taskmanagement/workitems/query",
            post(taskmanagement::query),
        )
        .route(
            "/api/v2/taskmanagement/workitems/{workitemId}",
            get(taskmanagement::get).patch(taskmanagement::update),
        )
        .route(
            "/api/v2/taskmanagement/worktypes/{worktypeId}/statuses",
            get(taskmanagement::statuses),
        )
        .route(
            "/api/v2/flows",
            get(architect::list_flows).post(architect::create_flow),
        )
        .route("/api/v2/flows/{flowId}", get(architect::get_flow))
        .route(
            "/api/v2/flows/{flowId}/versions",
            get(architect::list_versions).post(architect::save_version),
        )
        .route(
            "/api/v2/flows/{flowId}/versions/{versionId}/configuration",
            get(architect::version_configuration),
        )
        .route("/api/v2/flows/actions/checkout", post(architect::checkout))
        .route("/api/v2/flows/actions/checkin", post(architect::checkin))
        .route("/api/v2/flows/actions/publish", post(architect::publish))
        .route("/api/v2/flows/actions/revert", post(architect::revert))
        .route("/api/v2/flows/actions/unlock", post(architect::unlock))
        .route(
            "/api/v2/architect/dependencytracking/consumingresources",
            get(architect::consuming_resources),
        )
        .route(
            "/api/v2/organizations/limits/namespaces",
            get(limits::list_namespaces),
        )
        .route(
            "/api/v2/organizations/limits/namespaces/{namespaceName}",
            get(limits::effective_limits),
        )
        .route(
            "/api/v2/organizations/limits/namespaces/{namespaceName}/defaults",
            get(limits::default_limits),
        )
        .fallback(api::not_found)
        .layer(middleware::from_fn_with_state(sandbox.clone(), gateway::gateway));
    genesys.merge(control::router()).with_state(sandbox)
}
