//! TLS on every listener (`[tls]`), against real nodes: `redis-cli
//! --tls`, the Rust client and `tinker --tls`; the matrix of the three
//! client-facing listeners (flatbuffers, RESP, admin HTTP) against right
//! and wrong CAs, names, client certificates and an expired certificate,
//! plaintext and silent clients, and certificates reloaded (SIGHUP, `POST
//! /v1/tls/reload`); a cluster whose peers speak mutual TLS, where a
//! certificate of the cluster's CA that names no node is refused on its
//! first reply. Certificates are made per test run (rcgen), never checked
//! in.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{workspace_binary, TestNode};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use tinkerdb_client::{Client, ClientConfig, ClientTls};

/// The handshake timeout the test nodes use.
const HANDSHAKE_TIMEOUT_MS: u64 = 2_000;

/// PEM files of a test PKI.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    node_cert: PathBuf,
    node_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `names` signed by `ca`, for `purpose`; PEM of the
/// certificate and of its key.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    purpose: ExtendedKeyUsagePurpose,
) -> (String, String) {
    leaf_with(ca, names, &[purpose], false)
}

/// [`leaf`] for several purposes, expired long ago if `expired`.
fn leaf_with(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    purposes: &[ExtendedKeyUsagePurpose],
    expired: bool,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(
        names
            .iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    params.extended_key_usages = purposes.to_vec();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let certificate = params.signed_by(&key, ca).unwrap();
    (certificate.pem(), key.serialize_pem())
}

fn make_pki(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    let ca = certificate_authority("TinkerDB test CA");
    let other = certificate_authority("Someone else's CA");
    let (node_cert, node_key) = leaf(
        &ca,
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(&ca, &["client"], ExtendedKeyUsagePurpose::ClientAuth);
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        other_ca: write("other-ca.pem", &other.pem()),
        node_cert: write("node.pem", &node_cert),
        node_key: write("node-key.pem", &node_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client-key.pem", &client_key),
    }
}

fn start_tls_node(pki: &Pki, client_certs: &str) -> TestNode {
    let config = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\nca_file = {:?}\nclient_certs = {client_certs:?}\nhandshake_timeout_ms = {HANDSHAKE_TIMEOUT_MS}\n",
        pki.node_cert, pki.node_key, pki.ca
    );
    TestNode::start_with_config(2, &config)
}

fn redis_cli(node: &TestNode, tls: &[&str], args: &[&str]) -> std::process::Output {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &node.resp_addr.port().to_string()])
        .args(tls)
        .args(args)
        .output()
        .expect("redis-cli (Debian package redis-tools) must be installed")
}

#[test]
fn redis_cli_the_rust_client_and_tinker_speak_tls_and_strangers_get_nothing() {
    let dir = common::fresh_dir();
    let pki = make_pki(&dir.join("pki"));
    let node = start_tls_node(&pki, "no");
    let ca = pki.ca.to_str().unwrap();
    let set = redis_cli(&node, &["--tls", "--cacert", ca], &["SET", "k", "over tls"]);
    assert_eq!(String::from_utf8_lossy(&set.stdout).trim(), "OK", "{set:?}");
    let get = redis_cli(&node, &["--tls", "--cacert", ca], &["GET", "k"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "over tls");

    let addr = node.addr.to_string();
    common::client_runtime().block_on(async {
        let mut trusted = ClientTls::new(&pki.ca);
        trusted.server_name = Some("localhost".into());
        let client = Client::connect(ClientConfig::new(&addr).tls(trusted.clone()))
            .await
            .unwrap();
        client.set("f", "flatbuffers over tls").await.unwrap();
        assert_eq!(
            client.get("k").await.unwrap().unwrap().value.as_ref(),
            b"over tls"
        );
        // The node's certificate from another CA, or for another name:
        // refused by the client.
        let stranger_ca = ClientTls::new(&pki.other_ca);
        let error = Client::connect(ClientConfig::new(&addr).tls(stranger_ca))
            .await
            .err()
            .expect("another CA is refused");
        assert!(error.to_string().contains("UnknownIssuer"), "{error}");
        let mut wrong_name = trusted;
        wrong_name.server_name = Some("not-the-node.example".into());
        let error = Client::connect(ClientConfig::new(&addr).tls(wrong_name))
            .await
            .err()
            .expect("another name is refused");
        assert!(error.to_string().contains("not valid for name"), "{error}");
    });

    let tinker = Command::new(workspace_binary("tinker"))
        .args([
            "--addr",
            &addr,
            "--tls",
            "--cacert",
            ca,
            "--sni",
            "localhost",
        ])
        .args(["get", "f"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&tinker.stdout).trim(),
        "flatbuffers over tls",
        "{tinker:?}"
    );

    // A plaintext Redis client: answered with a TLS alert, never a reply.
    let mut plain = TcpStream::connect(node.resp_addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    plain.write_all(b"PING\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"+") && !answer.starts_with(b"-"),
        "{answer:?}"
    );
    // A client that connects and says nothing: closed after the timeout.
    let started = Instant::now();
    let mut silent = TcpStream::connect(node.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut byte = [0u8];
    assert_eq!(silent.read(&mut byte).unwrap(), 0, "closed by the node");
    assert!(started.elapsed() >= Duration::from_millis(HANDSHAKE_TIMEOUT_MS));
}

#[test]
fn required_client_certificates_are_checked() {
    let dir = common::fresh_dir();
    let pki = make_pki(&dir.join("pki"));
    let node = start_tls_node(&pki, "required");
    let addr = node.addr.to_string();
    common::client_runtime().block_on(async {
        let mut without = ClientTls::new(&pki.ca);
        without.server_name = Some("localhost".into());
        // TLS 1.3: the handshake completes on the client's side and the
        // node's refusal arrives with the first reply (the Hello's).
        let error = Client::connect(ClientConfig::new(&addr).tls(without.clone()))
            .await
            .err()
            .expect("no client certificate is refused");
        assert!(
            error.to_string().to_lowercase().contains("certificate"),
            "{error}"
        );
        let mut with = without;
        with.client_cert = Some((pki.client_cert.clone(), pki.client_key.clone()));
        let client = Client::connect(ClientConfig::new(&addr).tls(with))
            .await
            .unwrap();
        client.set("k", "v").await.unwrap();
    });
    let ca = pki.ca.to_str().unwrap();
    let (cert, key) = (
        pki.client_cert.to_str().unwrap(),
        pki.client_key.to_str().unwrap(),
    );
    let ping = redis_cli(
        &node,
        &["--tls", "--cacert", ca, "--cert", cert, "--key", key],
        &["PING"],
    );
    assert_eq!(
        String::from_utf8_lossy(&ping.stdout).trim(),
        "PONG",
        "{ping:?}"
    );
}

#[test]
fn only_the_ring_provider_is_in_the_dependency_tree() {
    // With aws-lc-rs beside ring, rustls's default-provider lookup panics;
    // the node passes ring explicitly, and nothing may pull the other in.
    let lock =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
    assert!(
        !lock.contains("name = \"aws-lc-rs\""),
        "aws-lc-rs entered Cargo.lock"
    );
    assert!(lock.contains("name = \"ring\""));
}

#[test]
fn the_dev_certs_script_makes_what_a_node_and_redis_cli_accept() {
    let dir = common::fresh_dir().join("dev-certs");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/dev-certs.sh");
    let made = Command::new(script).arg(&dir).output().unwrap();
    assert!(made.status.success(), "{made:?}");
    // What it prints is the node's [tls] table, client certificates asked.
    let config = String::from_utf8(made.stdout)
        .unwrap()
        .replace("client_certs = \"no\"", "client_certs = \"required\"");
    let node = TestNode::start_with_config(1, &config);
    let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let ping = redis_cli(
        &node,
        &[
            "--tls",
            "--cacert",
            &file("ca.pem"),
            "--cert",
            &file("client.pem"),
            "--key",
            &file("client-key.pem"),
        ],
        &["PING"],
    );
    assert_eq!(
        String::from_utf8_lossy(&ping.stdout).trim(),
        "PONG",
        "{ping:?}"
    );
}

/// The three client-facing listeners of a node.
#[derive(Debug, Clone, Copy)]
enum Listener {
    Flatbuffers,
    Resp,
    Admin,
}

const CLIENT_LISTENERS: [Listener; 3] = [Listener::Flatbuffers, Listener::Resp, Listener::Admin];

/// How a probe speaks TLS: the CA it trusts, the name it expects, the
/// certificate it presents.
#[derive(Clone)]
struct Probe {
    ca: PathBuf,
    name: String,
    client: Option<(PathBuf, PathBuf)>,
}

impl Probe {
    fn rustls_config(&self) -> rustls::ClientConfig {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(certificate.unwrap()).unwrap();
        }
        #[allow(deprecated)]
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(cert)
                        .unwrap()
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_file(key).unwrap(),
                )
                .unwrap(),
        }
    }

    /// Connects to `listener` of `node` over TLS and makes one request
    /// (PING, a Hello and PING, `GET /health`): `Ok` with a good answer,
    /// else what failed (the handshake, or the first reply).
    fn run(&self, node: &TestNode, listener: Listener) -> Result<(), String> {
        let addr = match listener {
            Listener::Flatbuffers => {
                let mut tls = ClientTls::new(&self.ca);
                tls.server_name = Some(self.name.clone());
                tls.client_cert = self.client.clone();
                let addr = node.addr.to_string();
                return common::client_runtime().block_on(async {
                    let client = Client::connect(ClientConfig::new(&addr).tls(tls))
                        .await
                        .map_err(|error| error.to_string())?;
                    client.ping().await.map_err(|error| error.to_string())?;
                    Ok(())
                });
            }
            Listener::Resp => node.resp_addr,
            Listener::Admin => node.admin_addr,
        };
        let name = rustls::pki_types::ServerName::try_from(self.name.clone()).unwrap();
        let connection =
            rustls::ClientConnection::new(std::sync::Arc::new(self.rustls_config()), name).unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        let (request, answer): (&[u8], &str) = match listener {
            Listener::Resp => (b"PING\r\n", "+PONG"),
            _ => (
                b"GET /health HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n",
                "HTTP/1.1 200",
            ),
        };
        stream
            .write_all(request)
            .map_err(|error| error.to_string())?;
        let mut reply = vec![0u8; answer.len()];
        stream
            .read_exact(&mut reply)
            .map_err(|error| error.to_string())?;
        match reply == answer.as_bytes() {
            true => Ok(()),
            false => Err(format!("answered {:?}", String::from_utf8_lossy(&reply))),
        }
    }

    /// Asserts that every client listener answers.
    fn works_everywhere(&self, node: &TestNode, case: &str) {
        for listener in CLIENT_LISTENERS {
            if let Err(error) = self.run(node, listener) {
                panic!("{case}: {listener:?} refused: {error}");
            }
        }
    }

    /// Asserts that every client listener refuses, with an error that
    /// contains `why`.
    fn refused_everywhere(&self, node: &TestNode, case: &str, why: &str) {
        for listener in CLIENT_LISTENERS {
            match self.run(node, listener) {
                Ok(()) => panic!("{case}: {listener:?} answered"),
                Err(error) => assert!(
                    error.to_lowercase().contains(&why.to_lowercase()),
                    "{case}: {listener:?} refused, but with {error:?} (expected {why:?})"
                ),
            }
        }
    }
}

#[test]
fn every_client_listener_serves_tls_checks_certificates_and_reloads_them() {
    let dir = common::fresh_dir();
    let pki = make_pki(&dir.join("pki"));
    let node = start_tls_node(&pki, "required");
    let good = Probe {
        ca: pki.ca.clone(),
        name: "localhost".into(),
        client: Some((pki.client_cert.clone(), pki.client_key.clone())),
    };
    good.works_everywhere(&node, "right CA, name and client certificate");
    let by_ip = Probe {
        name: "127.0.0.1".into(),
        ..good.clone()
    };
    by_ip.works_everywhere(&node, "the node's IP address as its name");
    // The client's own checks: refused in the handshake.
    let wrong_ca = Probe {
        ca: pki.other_ca.clone(),
        ..good.clone()
    };
    wrong_ca.refused_everywhere(&node, "another CA trusted", "UnknownIssuer");
    let wrong_name = Probe {
        name: "not-the-node.example".into(),
        ..good.clone()
    };
    wrong_name.refused_everywhere(&node, "another name expected", "not valid for name");
    // The node's checks: with TLS 1.3 the client's side of the handshake
    // completes, and the refusal (an alert) is its first reply.
    let without = Probe {
        client: None,
        ..good.clone()
    };
    without.refused_everywhere(&node, "no client certificate", "alert");
    let strangers = {
        let other = certificate_authority("A stranger's CA");
        let (cert, key) = leaf(&other, &["client"], ExtendedKeyUsagePurpose::ClientAuth);
        let (cert_path, key_path) = (dir.join("stranger.pem"), dir.join("stranger-key.pem"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        Probe {
            client: Some((cert_path, key_path)),
            ..good.clone()
        }
    };
    strangers.refused_everywhere(&node, "a client certificate of another CA", "alert");
    // Plaintext on each TLS port: nothing parsed as a request.
    for (addr, request) in [
        (node.resp_addr, &b"PING\r\n"[..]),
        (node.admin_addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"),
        (node.addr, b"\x10\x00\x00\x00plaintext-frame!"),
    ] {
        let mut plain = TcpStream::connect(addr).unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        plain.write_all(request).unwrap();
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer);
        assert!(
            !answer.starts_with(b"+") && !answer.starts_with(b"HTTP"),
            "{addr}: {answer:?}"
        );
        // Whatever came back is a TLS record (an alert, type 21), if anything.
        assert!(answer.is_empty() || answer[0] == 21, "{addr}: {answer:?}");
    }
    // A client that connects and says nothing: closed after the handshake
    // timeout, on every port.
    for addr in [node.addr, node.resp_addr, node.admin_addr] {
        let started = Instant::now();
        let mut silent = TcpStream::connect(addr).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut byte = [0u8];
        assert!(
            matches!(silent.read(&mut byte), Ok(0) | Err(_)),
            "{addr}: closed by the node"
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(HANDSHAKE_TIMEOUT_MS - 100)
                && waited < Duration::from_secs(15),
            "{addr}: closed after {waited:?}"
        );
    }

    // Reloads. A bad key file: refused, the old certificate stays.
    let admin = |tls: &Probe| {
        let mut client_tls = ClientTls::new(&tls.ca);
        client_tls.server_name = Some(tls.name.clone());
        client_tls.client_cert = tls.client.clone();
        tinkerdb_client::admin::request_as(
            &node.admin_addr.to_string(),
            "POST",
            "/v1/tls/reload",
            None,
            Duration::from_secs(20),
            None,
            Some(&client_tls),
        )
    };
    std::fs::write(&pki.node_key, b"not a key").unwrap();
    match admin(&good) {
        Err(tinkerdb_client::admin::AdminError::Api {
            status, message, ..
        }) => {
            assert_eq!(status, 400, "{message}");
            assert!(message.contains("tls.key_file"), "{message}");
        }
        other => panic!("a bad key was reloaded: {other:?}"),
    }
    good.works_everywhere(&node, "after a refused reload");
    // A new certificate for another name, through the admin API: new
    // connections get it.
    let ca = rcgen_ca_from(&dir.join("pki"));
    let (renamed, renamed_key) = leaf(
        &ca,
        &["renamed.example"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    std::fs::write(&pki.node_cert, renamed).unwrap();
    std::fs::write(&pki.node_key, renamed_key).unwrap();
    let answer = admin(&good).expect("reload through the admin API");
    assert_eq!(answer["reloaded"], true);
    let renamed = Probe {
        name: "renamed.example".into(),
        ..good.clone()
    };
    renamed.works_everywhere(&node, "the reloaded certificate");
    good.refused_everywhere(&node, "the old name after the reload", "not valid for name");
    // SIGHUP: an expired certificate (an operator's mistake) is served to
    // new connections, and clients refuse it.
    let (expired, expired_key) = leaf_with(
        &ca,
        &["localhost"],
        &[ExtendedKeyUsagePurpose::ServerAuth],
        true,
    );
    std::fs::write(&pki.node_cert, expired).unwrap();
    std::fs::write(&pki.node_key, expired_key).unwrap();
    node.signal("HUP");
    assert!(
        common::eventually(Duration::from_secs(10), || good
            .run(&node, Listener::Resp)
            .is_err_and(|error| error.contains("certificate expired"))),
        "SIGHUP did not reload"
    );
    good.refused_everywhere(&node, "an expired certificate", "certificate expired");
}

/// The test CA of `make_pki`, as an issuer again: rcgen keeps no CA on
/// disk, so the matrix test signs its later certificates with a CA whose
/// certificate it writes over `ca.pem` first.
fn rcgen_ca_from(pki_dir: &Path) -> CertifiedIssuer<'static, KeyPair> {
    let ca = certificate_authority("TinkerDB test CA, second");
    // Both CAs are trusted from now on (the node's client-certificate
    // check and the probes read ca.pem).
    let mut both = std::fs::read_to_string(pki_dir.join("ca.pem")).unwrap();
    both.push_str(&ca.pem());
    std::fs::write(pki_dir.join("ca.pem"), both).unwrap();
    ca
}

/// Files of a cluster's PKI: the node certificate (server and client
/// purposes, for 127.0.0.1) and three that must not pass as a node.
struct ClusterPki {
    dir: PathBuf,
    ca: PathBuf,
}

impl ClusterPki {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn make_cluster_pki(dir: &Path) -> ClusterPki {
    std::fs::create_dir_all(dir).unwrap();
    let ca = certificate_authority("TinkerDB cluster CA");
    let other = certificate_authority("Someone else's CA");
    let both = [
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let write = |name: &str, (cert, key): (String, String)| {
        std::fs::write(dir.join(format!("{name}.pem")), cert).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key).unwrap();
    };
    write(
        "node",
        leaf_with(&ca, &["localhost", "127.0.0.1"], &both, false),
    );
    // Right CA, but a name that is no node's.
    write(
        "intruder",
        leaf_with(&ca, &["intruder.example"], &both, false),
    );
    // A node's name, but another CA.
    write("forged", leaf_with(&other, &["127.0.0.1"], &both, false));
    // The right CA and a node's name, but expired.
    write("expired", leaf_with(&ca, &["127.0.0.1"], &both, true));
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    ClusterPki {
        dir: dir.to_owned(),
        ca: dir.join("ca.pem"),
    }
}

/// Pings range 0 at the Raft address `raft` over the peer transport,
/// presenting `cert` (or speaking plaintext with `None`).
fn peer_ping(
    raft: std::net::SocketAddr,
    pki: &ClusterPki,
    cert: Option<&str>,
) -> Result<Vec<u8>, tinkerdb_replication::transport::TransportError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tinkerdb_replication::peer_tls::{PeerTls, PeerTlsConfigs};
    use tinkerdb_replication::transport::{PeerCall, PeerClient};
    let tls = cert.map(|name| {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
            roots.add(certificate.unwrap()).unwrap();
        }
        let chain: Vec<_> = CertificateDer::pem_file_iter(pki.file(&format!("{name}.pem")))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(pki.file(&format!("{name}-key.pem"))).unwrap();
        #[allow(deprecated)]
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .unwrap();
        // Only dialled here: the server half is never used.
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        PeerTls::new(PeerTlsConfigs {
            server: std::sync::Arc::new(server),
            client: std::sync::Arc::new(client),
        })
    });
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .unwrap()
        .run(async move {
            let client = PeerClient::new(raft, 0, tls);
            let ping = PeerCall {
                group: 0,
                kind: tinkerdb_schemas::wire::PeerCallKind::Ping,
                payload: Vec::new(),
            };
            client.call(ping, Duration::from_secs(10)).await
        })
}

#[test]
fn peers_speak_mutual_tls_and_a_certificate_that_names_no_node_is_refused() {
    let dir = common::fresh_dir();
    let pki = make_cluster_pki(&dir.join("pki"));
    let config = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\nca_file = {:?}\npeer_names = [\"127.0.0.1\"]\nhandshake_timeout_ms = {HANDSHAKE_TIMEOUT_MS}\n",
        pki.file("node.pem"),
        pki.file("node-key.pem"),
        pki.ca
    );
    let (nodes, ports) = common::start_cluster(3, 2, &config);
    let node_tls = {
        let mut tls = ClientTls::new(&pki.ca);
        tls.server_name = Some("localhost".into());
        tls
    };
    // The cluster elects leaders over mutual TLS (its admin API is TLS
    // too) and replicates a write made on one node to the others.
    let cluster_status = |node: &TestNode| {
        tinkerdb_client::admin::request_as(
            &node.admin_addr.to_string(),
            "GET",
            "/v1/cluster",
            None,
            Duration::from_secs(10),
            None,
            Some(&node_tls),
        )
        .ok()
    };
    assert!(
        common::wait_for_leaders(&nodes, cluster_status),
        "no leaders over mutual TLS"
    );
    common::client_runtime().block_on(async {
        let connect = |node: &TestNode| {
            Client::connect(ClientConfig::new(node.addr.to_string()).tls(node_tls.clone()))
        };
        let writer = connect(&nodes[0]).await.unwrap();
        for i in 0..20 {
            writer.set(format!("k{i}"), format!("v{i}")).await.unwrap();
        }
        let reader = connect(&nodes[2]).await.unwrap();
        for i in 0..20 {
            let value = reader.get(format!("k{i}")).await.unwrap().unwrap();
            assert_eq!(value.value.as_ref(), format!("v{i}").as_bytes());
        }
    });
    // The peer port: a node's certificate is served (the control); one of
    // the right CA naming no node, one of another CA, an expired one and
    // plaintext are refused, all but plaintext on their first reply (after
    // a handshake the dialer saw complete).
    let raft = std::net::SocketAddr::from(([127, 0, 0, 1], ports[0]));
    assert_eq!(peer_ping(raft, &pki, Some("node")), Ok(Vec::new()));
    for (cert, case) in [
        (Some("intruder"), "a name that is no node's"),
        (Some("forged"), "another CA"),
        (Some("expired"), "an expired certificate"),
        (None, "plaintext"),
    ] {
        match peer_ping(raft, &pki, cert) {
            Ok(answer) => panic!("{case}: the peer port answered {answer:?}"),
            Err(error) => {
                let text = error.to_string();
                if cert.is_some() {
                    assert!(text.contains("alert"), "{case}: {text}");
                }
            }
        }
    }
    // A fourth node joins through node 1's admin port (TLS) and is caught
    // up over mutual TLS.
    let join_args = [
        "--node-id",
        "4",
        "--raft-listen",
        &format!("127.0.0.1:{}", common::free_port_block(1)),
        "--join",
        &nodes[0].admin_addr.to_string(),
    ]
    .map(String::from);
    let node4 = TestNode::start_with_args(2, &config, &common::fresh_dir(), &[], &join_args);
    common::client_runtime().block_on(async {
        let late = Client::connect(ClientConfig::new(node4.addr.to_string()).tls(node_tls.clone()))
            .await
            .unwrap();
        assert_eq!(late.get("k7").await.unwrap().unwrap().value.as_ref(), b"v7");
    });
}
