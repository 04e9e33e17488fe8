//! TLS on the admin port: a [`TlsListener`] that axum serves like a TCP
//! listener, over the node's certificate.
//!
//! The node (`tinkerdb-core`) owns the certificate files and their reload;
//! this crate sees them through [`ServerTls`]: the config to use for the
//! next connection, the handshake timeout, and a reload
//! (`POST /v1/tls/reload`). Each accepted connection's handshake runs in a
//! task of its own, bounded by the timeout, so a client that connects and
//! says nothing neither holds the accept loop nor stays open; at most
//! [`MAX_ADMIN_HANDSHAKES`] run at once (beyond, new connections are
//! closed at once).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
        let in_flight = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
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
                if in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_ADMIN_HANDSHAKES {
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    drop(tcp);
                    continue;
                }
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                let timeout = tls.handshake_timeout();
                let sender = sender.clone();
                let in_flight = in_flight.clone();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(timeout, acceptor.accept(tcp)).await;
                    in_flight.fetch_sub(1, Ordering::Relaxed);
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
