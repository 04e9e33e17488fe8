//! TLS on the client listeners (`[tls]`), against a real node: `redis-cli
//! --tls`, the Rust client and `tinker --tls`, a wrong CA and a wrong name
//! refused by the client, a plaintext client answered with nothing parsed,
//! a silent client closed after the handshake timeout, and client
//! certificates required and checked. Certificates are made per test run
//! (rcgen), never checked in.

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
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(
        names
            .iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    params.extended_key_usages = vec![purpose];
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
