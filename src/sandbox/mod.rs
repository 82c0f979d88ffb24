//! The sandbox: a Genesys Cloud simulator for tests, the demo and local development
//! (DESIGN.md section 7).
//!
//! It serves the real paths, methods, field names and error bodies of the endpoints the worker
//! uses (`../shared/genesys-api.md`), on loopback by default, with state in memory seeded from a
//! [`SandboxConfig`]. One listener serves both the login host (`/oauth/token`) and the API host.
//! A control API under `/sandbox/` reports what Genesys *saw* (requests per route and status,
//! every applied change) and resets state, so tests assert on it.

mod api;
mod control;
mod oauth;
mod presence;
mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use uuid::Uuid;

pub use state::{presence_definition_id, SYSTEM_PRESENCES};

/// What the sandbox starts with.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Seeded users, with ids from [`user_id`].
    pub users: usize,
    /// OAuth clients accepted by `/oauth/token`: (client id, client secret).
    pub clients: Vec<(String, String)>,
    /// `expires_in` of issued tokens; after it the API answers 401.
    pub token_ttl_secs: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            users: 200,
            clients: vec![(DEFAULT_CLIENT_ID.into(), DEFAULT_CLIENT_SECRET.into())],
            token_ttl_secs: 86_400,
        }
    }
}

pub const DEFAULT_CLIENT_ID: &str = "sandbox-client";
pub const DEFAULT_CLIENT_SECRET: &str = "sandbox-secret";

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
    config: SandboxConfig,
    world: Mutex<state::World>,
}

impl Sandbox {
    fn new(config: SandboxConfig) -> Self {
        let world = state::World::seeded(&config);
        Self {
            config,
            world: Mutex::new(world),
        }
    }

    pub(crate) fn world(&self) -> std::sync::MutexGuard<'_, state::World> {
        // A handler that panicked mid-update leaves test state suspect, but the sandbox keeps
        // serving: tests assert on what they see.
        self.world.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        if let Err(err) = serve(listener, config, async {
            let _ = stopped.await;
        })
        .await
        {
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

fn router(sandbox: Arc<Sandbox>) -> Router {
    let genesys = Router::new()
        .route("/oauth/token", post(oauth::token))
        .route("/api/v2/presence/definitions", get(presence::definitions))
        .route(
            "/api/v2/users/{user_id}/presences/purecloud",
            get(presence::get_presence).patch(presence::patch_presence),
        )
        .route(
            "/api/v2/users/{user_id}/routingstatus",
            get(presence::get_routing_status).put(presence::put_routing_status),
        )
        .fallback(api::not_found)
        .layer(middleware::from_fn_with_state(sandbox.clone(), count_requests));
    let control = Router::new()
        .route("/sandbox/stats", get(control::stats))
        .route("/sandbox/reset", post(control::reset))
        .route("/sandbox/users", get(control::users))
        .route("/sandbox/tokens/revoke", post(control::revoke_tokens));
    genesys.merge(control).with_state(sandbox)
}

/// Counts every Genesys request by route template and status, as the stats report them.
async fn count_requests(State(sandbox): State<Arc<Sandbox>>, request: Request, next: Next) -> Response {
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) => format!("{} {}", request.method(), path.as_str()),
        None => format!("{} (unmatched)", request.method()),
    };
    let response = next.run(request).await;
    sandbox.world().stats.count(route, response.status().as_u16());
    response
}
