//! `genesys-worker control pause|resume|cancel|list`: the operator controls ([`crate::control`])
//! from a shell. Exit 0 when done, 1 when there was nothing to resume or Redis or the broker
//! failed, 2 for an invalid target.

use std::process::ExitCode;

use crate::broker::{self, Publisher};
use crate::cli::{ControlArgs, ControlCommand, ControlStore};
use crate::config::Topology;
use crate::control::{self, Change, ChangeKind, ControlError, Target};
use crate::store::Store;

pub async fn run(command: ControlCommand) -> ExitCode {
    let (kind, args) = match command {
        ControlCommand::List { json, store } => return list(json, &store).await,
        ControlCommand::Pause(args) => (ChangeKind::Pause, args),
        ControlCommand::Resume(args) => (ChangeKind::Resume, args),
        ControlCommand::Cancel(args) => (ChangeKind::Cancel, args),
    };
    match change(kind, args).await {
        Ok(control) => {
            println!("{}: {}", kind.as_str(), control.describe());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("control {}: {err}", kind.as_str());
            match err {
                ControlError::Invalid(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn change(kind: ChangeKind, args: ControlArgs) -> Result<control::Control, ControlError> {
    let target = Target::parse(&args.scope, &args.value)?;
    let actor = args
        .actor
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "cli".into());
    let store = connect(&args.store).await?;
    let connection = broker::connect(&args.broker.amqp_url).await?;
    let publisher = Publisher::open(&connection).await?;
    // A control's event goes to the audit exchange only (no CRM event).
    let topology = Topology {
        audit_exchange: args.audit_exchange,
        ..Topology::default()
    };
    let change = Change {
        kind,
        target,
        actor,
        reason: args.reason,
    };
    let result = control::change(&store, &publisher, &topology, change).await;
    let _ = connection.close(200, "control changed".into()).await;
    result
}

async fn connect(store: &ControlStore) -> Result<Store, ControlError> {
    // The lease is the one of the lock on the control's audit chain; the TTL is not used.
    let lease_ms = crate::config::DEFAULT_LEASE_MS;
    Ok(
        Store::connect(&store.redis.settings(), &store.redis_key_prefix, 1, lease_ms)
            .await?
            .with_audit_log(store.audit_log == "on"),
    )
}

async fn list(json: bool, store: &ControlStore) -> ExitCode {
    let controls = match connect(store).await {
        Ok(store) => control::read(&store).await.map_err(ControlError::from),
        Err(err) => Err(err),
    };
    let controls = match controls {
        Ok(controls) => controls.list(),
        Err(err) => {
            eprintln!("control list: {err}");
            return ExitCode::FAILURE;
        }
    };
    for control in &controls {
        if json {
            println!("{}", serde_json::to_string(control).expect("controls serialize"));
        } else {
            println!("{}", control.describe());
        }
    }
    if !json {
        eprintln!("{} control(s) in force", controls.len());
    }
    ExitCode::SUCCESS
}
