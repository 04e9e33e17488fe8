//! TLS on the admin port: a [`TlsListener`] that axum serves like a TCP
//! listener, over the node's certificate.
//!
//! The node (`tinkerdb-core`) owns the certificate files and their reload;
//! this crate sees them through [`ServerTls`]: the config to use for the
//! next connection, the handshake timeout, and a reload
//! (`POST /v1/tls/reload`). Each accepted connection's handshake runs in a
//! task of its own, bounded by the timeout, so a client that connects and
//! says nothing neither holds the accept loop nor stays open. At most
//! [`MAX_ADMIN_HANDSHAKES`] run at once (beyond, new connections wait in
//! the kernel's backlog until one ends), and at most
//! [`MAX_ADMIN_HANDSHAKES_PER_ADDRESS`] from one client address (beyond,
//! closed at once): one client holding silent connections cannot lock the
//! others (orchestrators' probes, operators, joining nodes) out.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The node's TLS, as the admin plane needs it.
pub trait ServerTls: Send + Sync {
    /// The config new connections use (the reloaded one after a reload).
    fn config(&self) -> Arc<rustls::ServerConfig>;
    /// Longest a client may take to finish its handshake.
    fn handshake_timeout(&self) -> Duration;
    /// Reads the certificate, key and CA files again and uses them for
    /// every new connection on every listener; on an error the node keeps
    /// the certificates it has and the error names the file.
    fn reload(&self) -> Result<(), String>;
}

/// Handshakes in flight on the admin port at most.
pub const MAX_ADMIN_HANDSHAKES: usize = 64;

/// Handshakes in flight from one client address at most.
pub const MAX_ADMIN_HANDSHAKES_PER_ADDRESS: usize = 8;

/// Handshakes in flight, by client address (entries removed at zero).
#[derive(Default)]
struct InFlight(Mutex<HashMap<IpAddr, usize>>);

impl InFlight {
    /// Counts one more from `address`, unless it has its share already.
    fn enter(&self, address: IpAddr) -> bool {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(address).or_default();
        if *count >= MAX_ADMIN_HANDSHAKES_PER_ADDRESS {
            return false;
        }
        *count += 1;
        true
    }

    fn leave(&self, address: IpAddr) {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&address);
            }
        }
    }
}

/// Connections whose handshake finished, waiting for axum to take them.
const ADMIN_ACCEPTED_QUEUE: usize = 64;

/// A TLS listener for `axum::serve`.
pub struct TlsListener {
    addr: SocketAddr,
    accepted: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Accepts on `listener` and runs each connection's handshake (must be
    /// called inside the admin's tokio runtime).
    pub fn new(listener: TcpListener, tls: Arc<dyn ServerTls>) -> std::io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let (sender, accepted) = mpsc::channel(ADMIN_ACCEPTED_QUEUE);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_HANDSHAKES));
        let in_flight = Arc::new(InFlight::default());
        tokio::spawn(async move {
            loop {
                // A slot before the accept: beyond the limit, connections
                // wait in the backlog (never closed for want of one).
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors, mostly: wait, do not spin.
                        tracing::warn!(%error, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if sender.is_closed() {
                    return;
                }
                if !in_flight.enter(peer.ip()) {
                    tracing::debug!(%peer, "admin TLS: too many handshakes from one address");
                    drop(tcp);
                    continue;
                }
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                let timeout = tls.handshake_timeout();
                let sender = sender.clone();
                let in_flight = in_flight.clone();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(timeout, acceptor.accept(tcp)).await;
                    in_flight.leave(peer.ip());
                    drop(slot);
                    match handshake {
                        Ok(Ok(stream)) => {
                            let _ = sender.send((stream, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%error, %peer, "admin TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { addr, accepted })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept task ends only with the runtime.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
