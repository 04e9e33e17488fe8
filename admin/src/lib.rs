//! The TinkerDB admin plane: a tokio runtime on its own thread serving the
//! HTTP API (`/v1`), Prometheus metrics (`/metrics`) and the live
//! performance dashboard (`/`), by default on 127.0.0.1:7380.
//!
//! Role and invariants:
//! - the cores run glommio and own all data; this crate never touches a
//!   core's state. It reaches the cores only through [`link`]: one bounded
//!   channel per core carrying `Send` messages, answered by oneshot. A full
//!   queue is answered `busy` at once and every call has a deadline, so a
//!   slow admin request can never stall a core and a stuck core can never
//!   hang an HTTP client;
//! - nothing here is on the data path: client requests never pass through
//!   this runtime;
//! - the crate knows nothing of glommio: the node (`tinkerdb-core`) creates
//!   the channels, serves them on each core, and calls [`start`].
//!
//! Modules:
//! - [`link`]: the messages and the [`NodeHandle`];
//! - [`api`]: the HTTP handlers and the generated OpenAPI document;
//! - [`access`]: who may use the API (basic auth), the user routes;
//! - [`live`]: the per-second series the dashboard draws;
//! - [`metrics`]: the Prometheus exposition;
//! - [`report`]: what a core reports (counters, hdrhistograms);
//! - [`tenants_file`]: tenants created at runtime, saved in the data dir;
//! - [`tls`]: TLS on the admin port (the node's certificate, reloadable);
//! - [`tokens`]: bearer tokens for the admin API;
//! - [`users`]: users, password hashes and their check (authentication);
//! - [`error`]: error codes and the JSON error body.

pub mod access;
pub mod api;
mod assets;
pub mod error;
pub mod link;
pub mod live;
pub mod metrics;
pub mod report;
pub mod tenants_file;
pub mod tls;
pub mod tokens;
pub mod users;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub use error::{ApiError, ErrorCode};
pub use link::{core_channel, CoreInbox, CoreRequest, CoreResponse, NodeFacts, NodeHandle};

/// Worker threads of the admin runtime: one is plenty for an admin plane
/// and leaves the CPUs to the cores.
pub const ADMIN_WORKER_THREADS: usize = 1;

/// A running admin plane.
pub struct AdminServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Waits for the admin thread (it runs until the process exits).
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds `addr` now (so a taken port fails the node's start with a clear
/// error) without serving yet.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|error| anyhow::anyhow!("cannot listen for the admin API on {addr}: {error}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Starts the admin runtime on its own thread, serving `listener` (TLS
/// only, when `tls` is given).
pub fn start(
    listener: std::net::TcpListener,
    node: NodeHandle,
    tls: Option<Arc<dyn tls::ServerTls>>,
) -> anyhow::Result<AdminServer> {
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ADMIN_WORKER_THREADS)
        .thread_name("tinkerdb-admin")
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new()
        .name("tinkerdb-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let live = Arc::new(Mutex::new(live::LiveSeries::default()));
                tokio::spawn(live::sample_forever(node.clone(), live.clone()));
                let state = api::AppState {
                    node,
                    live,
                    admin_addr: addr,
                    moves: Arc::default(),
                    credentials: Arc::default(),
                    tls: tls.clone(),
                    tokens: Arc::default(),
                };
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(%error, "admin listener unusable");
                        return;
                    }
                };
                let served = match tls {
                    None => axum::serve(listener, api::router(state)).await,
                    Some(tls) => match tls::TlsListener::new(listener, tls) {
                        Ok(listener) => axum::serve(listener, api::router(state)).await,
                        Err(error) => Err(error),
                    },
                };
                if let Err(error) = served {
                    tracing::error!(%error, "admin server stopped");
                }
            })
        })?;
    Ok(AdminServer {
        addr,
        thread: Some(thread),
    })
}
