//! Mutual TLS between nodes: the byte stream a peer connection runs on
//! once its hello is answered.
//!
//! Order on a connection with TLS: the dialer connects and sends its hello
//! in the clear (a range id and a protocol version: nothing secret); the
//! accepting core answers which of its cores serves the connection and
//! hands the socket there ([`crate::transport`]); only then do both ends
//! run the TLS handshake, the dialer as client, the serving core as server.
//! So the handshake's state never has to cross cores (a rustls session is
//! not a socket descriptor), and everything after the hello, every Raft
//! call and its answer, is encrypted and authenticated. A node configured
//! with TLS refuses a peer that does not complete the handshake within
//! [`crate::transport::PEER_HELLO_TIMEOUT`].
//!
//! What is checked is decided by the configs the node gives
//! ([`PeerTls::new`], [`PeerTls::replace`]): in TinkerDB (`core::net::tls`)
//! both ends present a certificate of the cluster's CA and the server end
//! also requires the dialer's certificate to name an allowed node; the
//! dialer checks that the server's certificate names the host it dialled.
//! A hello tampered with in flight can only misroute a connection (the
//! handshake or the first call then fails); it cannot forge a Raft message.
//!
//! [`PeerTls::replace`] swaps both configs for certificates reloaded from
//! disk: connections made later use the new ones, open ones keep theirs.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;

/// The two rustls configs a node's peer connections use.
#[derive(Clone)]
pub struct PeerTlsConfigs {
    /// For connections this node accepts (must verify the dialer's
    /// certificate: the peer port is for nodes only).
    pub server: Arc<rustls::ServerConfig>,
    /// For connections this node dials (carries this node's certificate).
    pub client: Arc<rustls::ClientConfig>,
}

/// A node's peer TLS, shared by all its cores (cheap to clone); `None`
/// where a node has no TLS.
#[derive(Clone)]
pub struct PeerTls {
    current: Arc<RwLock<PeerTlsConfigs>>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Peer TLS with `configs`.
    pub fn new(configs: PeerTlsConfigs) -> PeerTls {
        PeerTls {
            current: Arc::new(RwLock::new(configs)),
        }
    }

    /// Uses `configs` for every connection made from now on.
    pub fn replace(&self, configs: PeerTlsConfigs) {
        // A poisoned lock still holds a whole config (the writer only
        // assigns): take it over.
        *self
            .current
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = configs;
    }

    fn configs(&self) -> PeerTlsConfigs {
        self.current
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// The server side of the handshake on an accepted connection whose
    /// hello is answered, within `timeout`.
    pub async fn accept(&self, tcp: TcpStream, timeout: Duration) -> io::Result<PeerStream> {
        let acceptor = futures_rustls::TlsAcceptor::from(self.configs().server);
        within(timeout, async {
            let tls = acceptor.accept(tcp).await?;
            Ok(PeerStream::TlsServer(Box::new(tls)))
        })
        .await
    }

    /// The client side of the handshake on a dialled connection whose hello
    /// is answered, expecting a certificate that names `host` (a DNS name
    /// or an IP literal, as the peer's address gives it), within `timeout`.
    pub async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
        timeout: Duration,
    ) -> io::Result<PeerStream> {
        let name = ServerName::try_from(host.to_owned()).map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("peer host {host:?} is not a name a certificate can carry: {error}"),
            )
        })?;
        let connector = futures_rustls::TlsConnector::from(self.configs().client);
        within(timeout, async {
            let tls = connector.connect(name, tcp).await?;
            Ok(PeerStream::TlsClient(Box::new(tls)))
        })
        .await
    }
}

async fn within(
    timeout: Duration,
    handshake: impl std::future::Future<Output = io::Result<PeerStream>>,
) -> io::Result<PeerStream> {
    glommio::timer::timeout(timeout, async { Ok(handshake.await) })
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no TLS handshake within {timeout:?}"),
            ))
        })
}

/// A peer connection's byte stream after the hello.
pub enum PeerStream {
    /// Plain TCP (the node has no TLS).
    Plain(TcpStream),
    /// TLS, this node accepted.
    TlsServer(Box<futures_rustls::server::TlsStream<TcpStream>>),
    /// TLS, this node dialled.
    TlsClient(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            PeerStream::TlsServer(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            PeerStream::TlsClient(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            PeerStream::TlsServer(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            PeerStream::TlsClient(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            PeerStream::TlsServer(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            PeerStream::TlsClient(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(tcp) => Pin::new(tcp).poll_close(cx),
            PeerStream::TlsServer(tls) => Pin::new(tls.as_mut()).poll_close(cx),
            PeerStream::TlsClient(tls) => Pin::new(tls.as_mut()).poll_close(cx),
        }
    }
}
