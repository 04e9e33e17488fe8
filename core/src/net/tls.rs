//! TLS on every listener: rustls over glommio's `TcpStream` through
//! `futures-rustls` on the client ports (flatbuffers and RESP), over
//! tokio on the admin port (`tinkerdb_admin::tls`), and mutual TLS on the
//! peer port (`tinkerdb_replication::peer_tls`), all from one
//! [`TlsSettings`], with the `ring` provider passed explicitly (with both
//! `ring` and `aws-lc-rs` compiled in, rustls's default-provider lookup
//! panics; only `ring` is in the tree).
//!
//! A node with a `[tls]` table serves TLS only on all its ports (no
//! plaintext port beside them: a client that must not send secrets in the
//! clear cannot fall back by mistake). On the peer port both ends present
//! a certificate of `ca_file`'s CA, and a dialling node's must name one of
//! `peer_names` ([`NodeNameVerifier`]); the dialer checks that the server's
//! names the host it dialled. [`TlsSettings::reload`] reads the files
//! again (SIGHUP, `POST /v1/tls/reload`). The handshake runs in the
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
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use tinkerdb_replication::peer_tls::{PeerTls, PeerTlsConfigs};

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

/// The node's TLS: the certificate files of `[tls]`, loaded at start and
/// again on a reload (SIGHUP, `POST /v1/tls/reload`), shared by every core,
/// the admin plane and the peer transport. A reload that fails changes
/// nothing; one that succeeds serves the new certificates to every new
/// connection on every listener (open ones keep theirs).
#[derive(Clone)]
pub struct TlsSettings {
    files: TlsConfig,
    /// Whether the node is in a cluster (then its peer port speaks mutual
    /// TLS too).
    cluster: bool,
    clients: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    peers: Option<PeerTls>,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cert_file", &self.files.cert_file)
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

/// ring, not aws-lc-rs (which needs a C toolchain step and a minute more to
/// build here): rustls 0.23.48 deprecates ring's provider only to point at
/// post-quantum key exchange, which ring lacks.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What one reading of the files gives.
struct Loaded {
    clients: Arc<rustls::ServerConfig>,
    peers: Option<PeerTlsConfigs>,
}

fn load_files(tls: &TlsConfig, cluster: bool) -> anyhow::Result<Loaded> {
    let provider = provider();
    let chain = read_certificates(&tls.cert_file, "tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|error| anyhow::anyhow!("tls.key_file {}: {error}", tls.key_file.display()))?;
    let bad_pair = |error: rustls::Error| {
        anyhow::anyhow!(
            "tls.cert_file {} and tls.key_file {}: {error}",
            tls.cert_file.display(),
            tls.key_file.display()
        )
    };
    let roots = match &tls.ca_file {
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in read_certificates(ca_file, "tls.ca_file")? {
                roots.add(certificate).map_err(|error| {
                    anyhow::anyhow!("tls.ca_file {}: {error}", ca_file.display())
                })?;
            }
            Some(Arc::new(roots))
        }
        None => None,
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (&tls.client_certs, &roots) {
        (ClientCerts::No, _) => builder.with_no_client_auth(),
        (required_or_optional, Some(roots)) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
            let verifier = match required_or_optional {
                ClientCerts::Optional => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            builder.with_client_cert_verifier(verifier.build()?)
        }
        (_, None) => anyhow::bail!("tls.client_certs other than \"no\" needs tls.ca_file"),
    };
    let mut clients = builder
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(bad_pair)?;
    // RESP and the flatbuffers protocol are the only ones spoken (the
    // admin port's HTTP/1.1 needs no ALPN either).
    clients.alpn_protocols = Vec::new();
    let peers = match cluster {
        false => None,
        true => {
            let roots = roots.ok_or_else(|| {
                anyhow::anyhow!(
                    "a cluster node with [tls] needs tls.ca_file (peers use mutual TLS)"
                )
            })?;
            let allowed = tls
                .peer_names
                .iter()
                .map(|name| {
                    ServerName::try_from(name.clone())
                        .map_err(|error| anyhow::anyhow!("tls.peer_names {name:?}: {error}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            // This node dials its peers with its own certificate: one that
            // names no allowed node would be refused by all of them.
            let own = rustls::server::ParsedCertificate::try_from(&chain[0]).map_err(|error| {
                anyhow::anyhow!("tls.cert_file {}: {error}", tls.cert_file.display())
            })?;
            if !allowed
                .iter()
                .any(|name| rustls::client::verify_server_name(&own, name).is_ok())
            {
                anyhow::bail!(
                    "tls.cert_file {}: the node's certificate names none of tls.peer_names {:?} \
                     (its peers would refuse it)",
                    tls.cert_file.display(),
                    tls.peer_names
                );
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()?;
            let server = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(Arc::new(NodeNameVerifier {
                    chain: verifier,
                    allowed,
                }))
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(bad_pair)?;
            let client = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .map_err(bad_pair)?;
            Some(PeerTlsConfigs {
                server: Arc::new(server),
                client: Arc::new(client),
            })
        }
    };
    Ok(Loaded {
        clients: Arc::new(clients),
        peers,
    })
}

/// The peer port's check of a dialling node: its certificate chains to
/// the cluster's CA (`chain`) and names one of `tls.peer_names`. A
/// certificate of the right CA made for something else (a client's, a web
/// server's) is refused in the handshake.
#[derive(Debug)]
struct NodeNameVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    allowed: Vec<ServerName<'static>>,
}

impl ClientCertVerifier for NodeNameVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        let a_node = self
            .allowed
            .iter()
            .any(|name| rustls::client::verify_server_name(&parsed, name).is_ok());
        match a_node {
            true => Ok(ClientCertVerified::assertion()),
            false => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

impl TlsSettings {
    /// Loads the certificate chain, key and (for client certificates and
    /// peers) CA of `tls`; `cluster`: the node's peer port speaks mutual
    /// TLS too. Errors name the file and what is wrong with it.
    pub fn load(tls: &TlsConfig, cluster: bool) -> anyhow::Result<TlsSettings> {
        let loaded = load_files(tls, cluster)?;
        Ok(TlsSettings {
            files: tls.clone(),
            cluster,
            clients: Arc::new(RwLock::new(loaded.clients)),
            peers: loaded.peers.map(PeerTls::new),
            handshake_timeout: Duration::from_millis(tls.handshake_timeout_ms),
        })
    }

    /// Reads the files again and, if all of them are good, serves them to
    /// every new connection; otherwise changes nothing and says why.
    pub fn reload(&self) -> anyhow::Result<()> {
        let loaded = load_files(&self.files, self.cluster)?;
        *self
            .clients
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = loaded.clients;
        if let (Some(peers), Some(configs)) = (&self.peers, loaded.peers) {
            peers.replace(configs);
        }
        tracing::info!(cert_file = %self.files.cert_file.display(), "TLS certificates reloaded");
        Ok(())
    }

    /// The peer transport's TLS (cluster mode).
    pub fn peers(&self) -> Option<PeerTls> {
        self.peers.clone()
    }

    /// The config of the client-facing listeners now.
    fn client_config(&self) -> Arc<rustls::ServerConfig> {
        self.clients
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Runs the server side of the handshake on `tcp`, within the
    /// handshake timeout.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<ClientStream> {
        let acceptor = futures_rustls::TlsAcceptor::from(self.client_config());
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

/// The admin port serves the client listeners' certificate and reloads
/// them all.
impl tinkerdb_admin::tls::ServerTls for TlsSettings {
    fn config(&self) -> Arc<rustls::ServerConfig> {
        self.client_config()
    }

    fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    fn reload(&self) -> Result<(), String> {
        TlsSettings::reload(self).map_err(|error| format!("{error:#}"))
    }
}
