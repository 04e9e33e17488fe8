//! TLS on the client listeners (flatbuffers and RESP): rustls over glommio's
//! `TcpStream` through `futures-rustls`, with the `ring` provider passed
//! explicitly (with both `ring` and `aws-lc-rs` compiled in, rustls's
//! default-provider lookup panics; only `ring` is in the tree).
//!
//! A node with a `[tls]` table serves TLS only on both client ports (no
//! plaintext port beside it: a client that must not send secrets in the
//! clear cannot fall back by mistake). The handshake runs in the
//! connection's own task, bounded by `handshake_timeout_ms`: a client that
//! connects and says nothing is closed then, and never holds the accept
//! loop. A plaintext client reaching a TLS port gets a TLS alert, never a
//! parsed command. Client certificates are `no` (default), `optional` or
//! `required`, checked against `ca_file`; with `required`, a client
//! without one completes a TLS 1.3 handshake and fails at its first read
//! (the server's refusal travels after the client's Finished).
//!
//! Every front end reads and writes a [`ClientStream`], plaintext or TLS:
//! none of them knows which.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::config::{ClientCerts, TlsConfig};

/// An accepted client connection's byte stream.
pub enum ClientStream {
    /// Plain TCP (no `[tls]` table).
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<futures_rustls::server::TlsStream<TcpStream>>),
}

impl ClientStream {
    /// The client's address.
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        let tcp = match self {
            ClientStream::Plain(tcp) => tcp,
            ClientStream::Tls(tls) => tls.get_ref().0,
        };
        Ok(tcp.peer_addr()?)
    }

    /// The node's own address of the connection.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        let tcp = match self {
            ClientStream::Plain(tcp) => tcp,
            ClientStream::Tls(tls) => tls.get_ref().0,
        };
        Ok(tcp.local_addr()?)
    }

    /// Ends the node's direction of the stream (the client reads what was
    /// sent, then the end): TLS's `close_notify` first, then the TCP
    /// half-close.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(tcp) => Ok(tcp.shutdown(std::net::Shutdown::Write).await?),
            ClientStream::Tls(tls) => {
                tls.get_mut().1.send_close_notify();
                tls.flush().await?;
                Ok(tls.get_mut().0.shutdown(std::net::Shutdown::Write).await?)
            }
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_close(cx),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_close(cx),
        }
    }
}

/// The node's TLS settings, checked and loaded once at start, shared by
/// every core (a rustls `ServerConfig` is `Send + Sync`).
#[derive(Clone)]
pub struct TlsSettings {
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

fn read_certificates(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| anyhow::anyhow!("{what} {}: {error}", path.display()))?;
    if certificates.is_empty() {
        anyhow::bail!("{what} {} holds no PEM certificate", path.display());
    }
    Ok(certificates)
}

impl TlsSettings {
    /// Loads the certificate chain, key and (for client certificates) CA
    /// of `tls`. Errors name the file and what is wrong with it.
    pub fn load(tls: &TlsConfig) -> anyhow::Result<TlsSettings> {
        // ring, not aws-lc-rs (which needs a C toolchain step and a minute
        // more to build here): rustls 0.23.48 deprecates ring's provider
        // only to point at post-quantum key exchange, which ring lacks.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = read_certificates(&tls.cert_file, "tls.cert_file")?;
        let key = PrivateKeyDer::from_pem_file(&tls.key_file)
            .map_err(|error| anyhow::anyhow!("tls.key_file {}: {error}", tls.key_file.display()))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match (&tls.client_certs, &tls.ca_file) {
            (ClientCerts::No, _) => builder.with_no_client_auth(),
            (required_or_optional, Some(ca_file)) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in read_certificates(ca_file, "tls.ca_file")? {
                    roots.add(certificate).map_err(|error| {
                        anyhow::anyhow!("tls.ca_file {}: {error}", ca_file.display())
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = match required_or_optional {
                    ClientCerts::Optional => verifier.allow_unauthenticated(),
                    _ => verifier,
                };
                builder.with_client_cert_verifier(verifier.build()?)
            }
            (_, None) => anyhow::bail!("tls.client_certs other than \"no\" needs tls.ca_file"),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|error| {
            anyhow::anyhow!(
                "tls.cert_file {} and tls.key_file {}: {error}",
                tls.cert_file.display(),
                tls.key_file.display()
            )
        })?;
        // RESP and the flatbuffers protocol are the only ones spoken.
        config.alpn_protocols = Vec::new();
        Ok(TlsSettings {
            config: Arc::new(config),
            handshake_timeout: Duration::from_millis(tls.handshake_timeout_ms),
        })
    }

    /// Runs the server side of the handshake on `tcp`, within the
    /// handshake timeout.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<ClientStream> {
        let acceptor = futures_rustls::TlsAcceptor::from(self.config.clone());
        let timeout = self.handshake_timeout;
        futures_lite::future::or(
            async {
                acceptor
                    .accept(tcp)
                    .await
                    .map(|tls| ClientStream::Tls(Box::new(tls)))
            },
            async {
                glommio::timer::sleep(timeout).await;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no TLS handshake within {timeout:?}"),
                ))
            },
        )
        .await
    }
}
