//! TLS for the client's connections (tokio-rustls, the `ring` provider
//! passed explicitly, as the node does): the CA to trust, the name to
//! expect in the node's certificate, and an optional client certificate
//! for nodes that ask for one (`client_certs = "optional"|"required"`).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// How to speak TLS to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM file of the CA the node's certificate must chain to.
    pub ca_file: PathBuf,
    /// The name the node's certificate must carry; `None`: the host of the
    /// address dialled.
    pub server_name: Option<String>,
    /// PEM files of a client certificate and its key, for nodes that ask.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl ClientTls {
    /// Trusts the CA in `ca_file`.
    pub fn new(ca_file: impl Into<PathBuf>) -> ClientTls {
        ClientTls {
            ca_file: ca_file.into(),
            server_name: None,
            client_cert: None,
        }
    }

    pub(crate) fn config(&self) -> Result<rustls::ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        let certificates = CertificateDer::pem_file_iter(&self.ca_file)
            .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
            .map_err(|error| format!("CA file {}: {error}", self.ca_file.display()))?;
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|error| format!("CA file {}: {error}", self.ca_file.display()))?;
        }
        // ring, as on the node (rustls 0.23.48 deprecates its provider only
        // to point at post-quantum key exchange, which ring lacks).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_root_certificates(roots);
        match &self.client_cert {
            None => Ok(builder.with_no_client_auth()),
            Some((cert_file, key_file)) => {
                let chain = CertificateDer::pem_file_iter(cert_file)
                    .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
                    .map_err(|error| format!("certificate {}: {error}", cert_file.display()))?;
                let key = PrivateKeyDer::from_pem_file(key_file)
                    .map_err(|error| format!("key {}: {error}", key_file.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|error| error.to_string())
            }
        }
    }

    /// The name the certificate of the node at `host` must carry.
    pub(crate) fn expected_name(&self, host: &str) -> Result<ServerName<'static>, String> {
        let name = self.server_name.as_deref().unwrap_or(host);
        ServerName::try_from(name.to_owned())
            .map_err(|error| format!("server name {name:?}: {error}"))
    }

    /// Runs the client side of the handshake over `stream` to `host`.
    pub async fn connect(
        &self,
        host: &str,
        stream: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.config()?));
        let name = self.expected_name(host)?;
        connector
            .connect(name, stream)
            .await
            .map_err(|error| error.to_string())
    }
}
