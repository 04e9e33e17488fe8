//! Authentication against a real node with `[auth] enabled = true`: RESP's
//! ACL dialect byte for byte, the flatbuffers Hello's credentials, the
//! admin API's basic auth, users made and removed at runtime (their open
//! connections cut off), and credentials stored as hashes only.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{workspace_binary, TestNode};
use tinkerdb_client::{Client, ClientConfig, ClientError};

const ADMIN_PASSWORD: &str = "admin-secret-1";
const ALICE_PASSWORD: &str = "alice-secret-2";
const MALLORY_PASSWORD: &str = "mallory-secret-3";
const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const NOAUTH: &str = "-NOAUTH Authentication required.\r\n";

/// A hash made by the node's own tool (`tinkerdb --hash-password`).
fn hash_with_the_tool(password: &str) -> String {
    let mut tool = Command::new(workspace_binary("tinkerdb"))
        .arg("--hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(tool.stdin.take().unwrap(), "{password}").unwrap();
    let output = tool.wait_with_output().unwrap();
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(password));
    hash
}

/// A node with authentication on: `admin` (cluster admin), `alice`
/// (tenant `acme`), `mallory` (disabled).
fn start_node() -> TestNode {
    TestNode::start_with_config(2, &auth_config())
}

/// The configuration of [`start_node`].
fn auth_config() -> String {
    let hash = |password: &str| tinkerdb_admin::users::hash_password(password.as_bytes()).unwrap();
    format!(
        r#"
[[tenants]]
name = "acme"

[auth]
enabled = true

[[auth.users]]
name = "admin"
password_hash = "{}"
cluster_admin = true

[[auth.users]]
name = "alice"
password_hash = "{}"
tenant = "acme"

[[auth.users]]
name = "mallory"
password_hash = "{}"
enabled = false
"#,
        hash_with_the_tool(ADMIN_PASSWORD),
        hash(ALICE_PASSWORD),
        hash(MALLORY_PASSWORD)
    )
}

/// A raw RESP connection: commands out, reply text back as sent.
struct Raw(TcpStream);

impl Raw {
    fn connect(node: &TestNode) -> Raw {
        let stream = TcpStream::connect(node.resp_addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Raw(stream)
    }

    fn send(&mut self, args: &[&[u8]]) {
        let mut bytes = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            bytes.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            bytes.extend_from_slice(arg);
            bytes.extend_from_slice(b"\r\n");
        }
        self.0.write_all(&bytes).unwrap();
    }

    /// One reply: a line (`+`, `-`, `:`), or a bulk string with its line.
    fn reply(&mut self) -> String {
        let mut text = Vec::new();
        let mut byte = [0u8];
        while !text.ends_with(b"\r\n") {
            assert_eq!(self.0.read(&mut byte).unwrap(), 1, "connection closed");
            text.push(byte[0]);
        }
        if text[0] == b'$' && text != b"$-1\r\n" {
            let length: usize = std::str::from_utf8(&text[1..text.len() - 2])
                .unwrap()
                .parse()
                .unwrap();
            let mut body = vec![0u8; length + 2];
            self.0.read_exact(&mut body).unwrap();
            text.extend_from_slice(&body);
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    fn call(&mut self, args: &[&str]) -> String {
        let args: Vec<&[u8]> = args.iter().map(|arg| arg.as_bytes()).collect();
        self.send(&args);
        self.reply()
    }

    /// Whether the node closed the connection (within the read timeout).
    fn closed(&mut self) -> bool {
        let mut byte = [0u8];
        matches!(self.0.read(&mut byte), Ok(0) | Err(_))
    }
}

fn admin_get(
    node: &TestNode,
    path: &str,
    user: Option<(&str, &str)>,
) -> reqwest::blocking::Response {
    let request = reqwest::blocking::Client::new().get(format!("http://{}{path}", node.admin_addr));
    let request = match user {
        Some((user, password)) => request.basic_auth(user, Some(password)),
        None => request,
    };
    request.send().unwrap()
}

#[test]
fn resp_clients_authenticate_like_redis_and_every_failure_answers_the_same() {
    let node = start_node();
    let mut raw = Raw::connect(&node);
    assert_eq!(raw.call(&["GET", "k"]), NOAUTH);
    assert_eq!(raw.call(&["PING"]), NOAUTH);
    assert_eq!(raw.call(&["ACL", "WHOAMI"]), NOAUTH);
    assert!(raw
        .call(&["HELLO", "3"])
        .starts_with("-NOAUTH HELLO must be called"));
    // A stranger's long pipeline (answered in rounds of
    // UNAUTHENTICATED_MAX_PIPELINED, which a client cannot tell apart):
    // every command answered, in order, and an AUTH behind it counts.
    for _ in 0..50 {
        raw.send(&[b"GET", b"k"]);
    }
    raw.send(&[b"AUTH", b"alice", ALICE_PASSWORD.as_bytes()]);
    for _ in 0..50 {
        assert_eq!(raw.reply(), NOAUTH);
    }
    assert_eq!(raw.reply(), "+OK\r\n");
    let mut raw = Raw::connect(&node);
    // Wrong, empty, near-miss and another user's password, an unknown
    // user, a disabled user with its right password, Redis's one-argument
    // form (user `default`, which does not exist): one answer.
    for attempt in [
        vec!["AUTH", "alice", "wrong"],
        vec!["AUTH", "alice", ""],
        vec!["AUTH", "alice", "alice-secret-"],
        vec!["AUTH", "alice", "alice-secret-2 "],
        vec!["AUTH", "alice", ADMIN_PASSWORD],
        vec!["AUTH", "nobody", ALICE_PASSWORD],
        vec!["AUTH", "mallory", MALLORY_PASSWORD],
        vec!["AUTH", ALICE_PASSWORD],
        vec!["HELLO", "3", "AUTH", "alice", "wrong"],
    ] {
        assert_eq!(raw.call(&attempt), WRONGPASS, "{attempt:?}");
    }
    assert_eq!(
        raw.call(&["GET", "k"]),
        NOAUTH,
        "failures leave it unauthenticated"
    );
    assert_eq!(raw.call(&["AUTH", "alice", ALICE_PASSWORD]), "+OK\r\n");
    assert_eq!(raw.call(&["ACL", "WHOAMI"]), "$5\r\nalice\r\n");
    assert_eq!(raw.call(&["SET", "k", "alice's"]), "+OK\r\n");
    // Alice acts for tenant acme: the admin API finds the key there.
    let key = admin_get(
        &node,
        "/v1/tenants/acme/keys/k",
        Some(("admin", ADMIN_PASSWORD)),
    );
    assert_eq!(key.status(), 200);
    assert!(key.text().unwrap().contains("alice's"));
    // Alice is no cluster admin.
    assert!(raw
        .call(&["ACL", "SETUSER", "eve", "on", ">pw"])
        .starts_with("-NOPERM User alice has no permissions"));
    assert!(raw.call(&["ACL", "LIST"]).starts_with("-NOPERM"));
    // A failed HELLO changes nothing: still RESP2 (a null is `$-1`).
    assert_eq!(
        raw.call(&["HELLO", "3", "AUTH", "alice", "wrong"]),
        WRONGPASS
    );
    assert_eq!(raw.call(&["GET", "missing"]), "$-1\r\n");
    // A snapshot covers every tenant: cluster admins only.
    assert!(raw
        .call(&["BGSAVE"])
        .starts_with("-NOPERM User alice has no permissions to run the 'bgsave' command"));
    // HELLO ... AUTH switches user and protocol at once.
    let hello = raw.call(&["HELLO", "3", "AUTH", "admin", ADMIN_PASSWORD]);
    assert!(hello.starts_with('%'), "{hello}");
    // The rest of the RESP3 map, then a list that shows no hash.
    let mut rest = Raw(raw.0.try_clone().unwrap());
    for _ in 0..14 {
        rest.reply();
    }
    raw.send(&[b"ACL", b"LIST"]);
    let header = raw.reply();
    assert_eq!(header, "*3\r\n");
    let lines: Vec<String> = (0..3).map(|_| raw.reply()).collect();
    assert!(lines
        .iter()
        .any(|line| line.contains("user alice on tenant=acme")));
    assert!(lines.iter().any(|line| line.contains("user mallory off")));
    assert!(lines.iter().all(|line| !line.contains("argon2")));
    // A stranger cannot make the node buffer a large command.
    let mut stranger = Raw::connect(&node);
    let big = vec![b'x'; 64 << 10];
    stranger.send(&[b"AUTH", b"alice", &big]);
    assert!(stranger.reply().starts_with("-ERR Protocol error"));
    assert!(stranger.closed());
}

#[test]
fn a_deleted_or_disabled_user_is_cut_off_and_credentials_are_stored_as_hashes_only() {
    let node = start_node();
    let mut admin = Raw::connect(&node);
    assert_eq!(admin.call(&["AUTH", "admin", ADMIN_PASSWORD]), "+OK\r\n");
    assert_eq!(
        admin.call(&["ACL", "SETUSER", "bob", "on", ">bob-pass-4", "tenant=acme"]),
        "+OK\r\n"
    );
    assert!(admin
        .call(&["ACL", "SETUSER", "eve", "on", "~*"])
        .starts_with("-ERR Error in ACL SETUSER modifier '~*'"));
    assert!(admin
        .call(&["ACL", "SETUSER", "eve", "on"])
        .contains("needs a password"));
    let mut bob = Raw::connect(&node);
    assert_eq!(bob.call(&["AUTH", "bob", "bob-pass-4"]), "+OK\r\n");
    assert_eq!(bob.call(&["SET", "b", "1"]), "+OK\r\n");
    assert_eq!(admin.call(&["ACL", "DELUSER", "bob", "nobody"]), ":1\r\n");
    // Taking a right away cuts the session off too (it would otherwise
    // keep acting as a cluster admin).
    assert_eq!(
        admin.call(&[
            "ACL",
            "SETUSER",
            "erin",
            "on",
            ">erin-pass-7",
            "cluster-admin"
        ]),
        "+OK\r\n"
    );
    let mut erin = Raw::connect(&node);
    assert_eq!(erin.call(&["AUTH", "erin", "erin-pass-7"]), "+OK\r\n");
    assert_eq!(erin.call(&["ACL", "USERS"]), "*4\r\n");
    for _ in 0..4 {
        erin.reply();
    }
    assert_eq!(
        admin.call(&["ACL", "SETUSER", "erin", "no-cluster-admin"]),
        "+OK\r\n"
    );
    assert_eq!(
        erin.call(&["ACL", "SETUSER", "erin", "cluster-admin"]),
        NOAUTH
    );
    assert!(erin.closed());
    // Bob's next commands, pipelined: refused, and the connection closes.
    bob.send(&[b"GET", b"b"]);
    bob.send(&[b"GET", b"b"]);
    assert_eq!(bob.reply(), NOAUTH);
    assert!(bob.closed());
    assert_eq!(
        Raw::connect(&node).call(&["AUTH", "bob", "bob-pass-4"]),
        WRONGPASS
    );

    // Through the admin API: a user made, then disabled while connected.
    let http = reqwest::blocking::Client::new();
    let url = |path: &str| format!("http://{}{path}", node.admin_addr);
    let made = http
        .post(url("/v1/users"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({"name": "carol", "password": "carol-pass-5", "tenant": "acme"}))
        .send()
        .unwrap();
    assert_eq!(made.status(), 201);
    let again = http
        .post(url("/v1/users"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({"name": "carol", "password": "x"}))
        .send()
        .unwrap();
    assert_eq!(again.status(), 409);
    let mut carol = Raw::connect(&node);
    assert_eq!(carol.call(&["AUTH", "carol", "carol-pass-5"]), "+OK\r\n");
    let disabled = http
        .put(url("/v1/users/carol"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({"enabled": false}))
        .send()
        .unwrap();
    assert_eq!(disabled.status(), 200);
    assert_eq!(carol.call(&["GET", "b"]), NOAUTH);
    assert!(carol.closed());

    // No password anywhere in the data directory: hashes only.
    let data = node.data_dir().join("data");
    let users = std::fs::read_to_string(data.join("users.json")).unwrap();
    assert!(users.contains("$argon2id$"));
    for password in ["bob-pass-4", "carol-pass-5", ADMIN_PASSWORD, ALICE_PASSWORD] {
        assert_no_file_contains(&data, password.as_bytes());
    }
}

fn assert_no_file_contains(dir: &Path, needle: &[u8]) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_no_file_contains(&path, needle);
        } else if let Ok(bytes) = std::fs::read(&path) {
            assert!(
                !bytes.windows(needle.len()).any(|window| window == needle),
                "{} holds a password",
                path.display()
            );
        }
    }
}

#[test]
fn the_admin_api_the_flatbuffers_hello_and_tinker_need_credentials() {
    let node = start_node();
    // Probes stay open; everything else needs a cluster admin.
    assert_eq!(admin_get(&node, "/health", None).status(), 200);
    let refused = admin_get(&node, "/v1/node", None);
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().contains_key("www-authenticate"));
    assert!(refused.text().unwrap().contains("unauthenticated"));
    assert_eq!(admin_get(&node, "/metrics", None).status(), 401);
    assert_eq!(
        admin_get(&node, "/v1/node", Some(("admin", "wrong"))).status(),
        401
    );
    assert_eq!(
        admin_get(&node, "/v1/node", Some(("nobody", ADMIN_PASSWORD))).status(),
        401
    );
    let not_admin = admin_get(&node, "/v1/users", Some(("alice", ALICE_PASSWORD)));
    assert_eq!(not_admin.status(), 403);
    assert!(not_admin.text().unwrap().contains("permission_denied"));
    let users = admin_get(&node, "/v1/users", Some(("admin", ADMIN_PASSWORD)));
    assert_eq!(users.status(), 200);
    let users = users.text().unwrap();
    assert!(
        users.contains("alice") && !users.contains("argon2"),
        "{users}"
    );

    // Before its Hello, a flatbuffers connection may not announce a large
    // frame: answered FrameTooLarge and closed (without authentication
    // the node would wait for the body's 16 KiB).
    let mut stranger = TcpStream::connect(node.addr).unwrap();
    stranger
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stranger.write_all(&(16u32 << 10).to_le_bytes()).unwrap();
    let mut answer = Vec::new();
    stranger.read_to_end(&mut answer).unwrap();
    assert!(!answer.is_empty(), "answered before closing");

    // The flatbuffers Hello: credentials or nothing.
    common::client_runtime().block_on(async {
        let addr = node.addr.to_string();
        for config in [
            ClientConfig::new(&addr),
            ClientConfig::new(&addr).credentials("alice", "wrong"),
            ClientConfig::new(&addr).credentials("mallory", MALLORY_PASSWORD),
        ] {
            match Client::connect(config).await {
                Err(ClientError::Server { code, .. }) => {
                    assert_eq!(code, tinkerdb_schemas::wire::ErrorCode::Unauthenticated)
                }
                Err(other) => panic!("expected Unauthenticated, got {other}"),
                Ok(_) => panic!("connected without valid credentials"),
            }
        }
        let alice = Client::connect(ClientConfig::new(&addr).credentials("alice", ALICE_PASSWORD))
            .await
            .unwrap();
        assert_eq!(alice.tenant(), "acme");
        alice.set("f", "flatbuffers").await.unwrap();
    });

    // tinker: admin commands with --user/--password, data with the user's.
    let tinker = |args: &[&str], password: Option<&str>| {
        let mut command = Command::new(workspace_binary("tinker"));
        command
            .args(["--addr", &node.addr.to_string()])
            .args(["--admin", &node.admin_addr.to_string()])
            .args(args);
        if let Some(password) = password {
            command.env("TINKER_PASSWORD", password);
        }
        command.output().unwrap()
    };
    let added = tinker(
        &[
            "--user",
            "admin",
            "user",
            "add",
            "dave",
            "--new-password",
            "dave-pass-6",
            "--for-tenant",
            "acme",
        ],
        Some(ADMIN_PASSWORD),
    );
    assert!(added.status.success(), "{added:?}");
    let listed = tinker(&["--user", "admin", "user", "list"], Some(ADMIN_PASSWORD));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("dave"));
    let tenants = tinker(&["--user", "admin", "tenant", "list"], Some(ADMIN_PASSWORD));
    assert!(String::from_utf8_lossy(&tenants.stdout).contains("acme"));
    let read = tinker(&["--user", "dave", "get", "f"], Some("dave-pass-6"));
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "flatbuffers");
    let anonymous = tinker(&["get", "f"], None);
    assert_eq!(anonymous.status.code(), Some(2));
    let no_admin = tinker(&["user", "list"], None);
    assert!(String::from_utf8_lossy(&no_admin.stderr).contains("unauthenticated"));
}

#[test]
fn a_stranger_is_closed_after_the_authentication_timeout_even_dripping_bytes_but_a_user_is_not() {
    let node = start_node();
    let started = std::time::Instant::now();
    let mut silent = Raw::connect(&node);
    let dripping = Raw::connect(&node);
    let mut user = Raw::connect(&node);
    assert_eq!(user.call(&["AUTH", "alice", ALICE_PASSWORD]), "+OK\r\n");
    // One byte of a command every 2 s: never a whole command, never idle
    // for long, and still closed at the deadline counted from the accept.
    let mut drip = dripping.0.try_clone().unwrap();
    let dripper = std::thread::spawn(move || {
        for byte in b"*1\r\n$4\r\nPIN".iter().cycle().take(30) {
            if drip.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    let mut byte = [0u8];
    // Closed by the node (end of stream), not by our read timeout (20 s).
    assert_eq!(silent.0.read(&mut byte).unwrap(), 0);
    let mut dripping = dripping;
    assert_eq!(dripping.0.read(&mut byte).unwrap(), 0);
    let waited = started.elapsed();
    assert!(
        waited >= tinkerdb_core::coord::session::AUTHENTICATION_TIMEOUT,
        "closed after {waited:?}"
    );
    dripper.join().unwrap();
    // The authenticated connection lived as long and still answers.
    assert_eq!(user.call(&["PING"]), "+PONG\r\n");
}

#[test]
fn a_cluster_with_authentication_serves_users_on_every_node_and_a_node_joins_with_credentials() {
    let config = auth_config();
    let (nodes, _) = common::start_cluster(3, 2, &config);
    let admin = Some(("admin", ADMIN_PASSWORD));
    let cluster_status = |node: &TestNode| {
        let status = admin_get(node, "/v1/cluster", admin);
        assert_eq!(status.status(), 200);
        Some(status.json::<serde_json::Value>().unwrap())
    };
    assert!(
        common::wait_for_leaders(&nodes, cluster_status),
        "no leaders"
    );
    assert_eq!(admin_get(&nodes[0], "/v1/cluster", None).status(), 401);
    // Tenants are per node: deleting one is refused in cluster mode.
    let refused = reqwest::blocking::Client::new()
        .delete(format!("http://{}/v1/tenants/acme", nodes[0].admin_addr))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(refused.status(), 409);
    // Nor made, nor given another quota, at runtime: every replica judges
    // a write by its own node's tenants and quotas, so a change on one
    // node only would make the replicas diverge.
    let http = reqwest::blocking::Client::new();
    let made = http
        .post(format!("http://{}/v1/tenants", nodes[0].admin_addr))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({ "name": "beta" }))
        .send()
        .unwrap();
    assert_eq!(made.status(), 409);
    let why: serde_json::Value = made.json().unwrap();
    assert!(
        why["error"]["message"]
            .as_str()
            .unwrap()
            .contains("config file"),
        "{why}"
    );
    let quota = http
        .put(format!(
            "http://{}/v1/tenants/acme/quota",
            nodes[0].admin_addr
        ))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({ "max_keys": 5, "max_bytes": null }))
        .send()
        .unwrap();
    assert_eq!(quota.status(), 409);
    // Writes through one node (forwarded to each range's leader), read
    // back through another, as alice (tenant acme).
    let mut writer = Raw::connect(&nodes[1]);
    assert_eq!(writer.call(&["SET", "k", "v"]), NOAUTH);
    assert_eq!(writer.call(&["AUTH", "alice", ALICE_PASSWORD]), "+OK\r\n");
    for i in 0..20 {
        assert_eq!(
            writer.call(&["SET", &format!("c{i}"), &format!("v{i}")]),
            "+OK\r\n"
        );
    }
    let mut reader = Raw::connect(&nodes[2]);
    assert_eq!(reader.call(&["AUTH", "alice", "wrong"]), WRONGPASS);
    assert_eq!(reader.call(&["AUTH", "alice", ALICE_PASSWORD]), "+OK\r\n");
    for i in 0..20 {
        assert_eq!(
            reader.call(&["GET", &format!("c{i}")]),
            format!("${}\r\nv{i}\r\n", format!("v{i}").len())
        );
    }
    // A fourth node joins through node 1's admin API with a cluster
    // admin's credentials from its environment, then serves alice too.
    let join_args = [
        "--node-id",
        "4",
        "--raft-listen",
        &format!("127.0.0.1:{}", common::free_port_block(1)),
        "--join",
        &nodes[0].admin_addr.to_string(),
    ]
    .map(String::from);
    // Without credentials the join is refused, and the node says so and
    // exits instead of waiting.
    let refused = TestNode::spawn(2, &config, &common::fresh_dir(), &[], &join_args, None);
    assert!(refused.wait_ready().is_none(), "joined without credentials");
    let env = [
        ("TINKERDB_JOIN_USER", "admin"),
        ("TINKERDB_JOIN_PASSWORD", ADMIN_PASSWORD),
    ];
    let node4 = TestNode::start_with_args(2, &config, &common::fresh_dir(), &env, &join_args);
    let mut late = Raw::connect(&node4);
    assert_eq!(late.call(&["AUTH", "alice", ALICE_PASSWORD]), "+OK\r\n");
    assert_eq!(late.call(&["GET", "c7"]), "$2\r\nv7\r\n");
}

#[test]
fn with_authentication_off_users_cannot_be_made_over_resp() {
    let node = TestNode::start(1);
    let mut raw = Raw::connect(&node);
    assert_eq!(raw.call(&["ACL", "WHOAMI"]), "$7\r\ndefault\r\n");
    assert!(raw
        .call(&["ACL", "SETUSER", "x", "on", ">pw", "cluster-admin"])
        .starts_with("-ERR authentication is off on this node"));
    // AUTH picks a tenant, as before authentication existed.
    assert_eq!(raw.call(&["AUTH", "default", "anything"]), "+OK\r\n");
}

#[test]
fn access_levels_hold_on_every_front_end() {
    let node = start_node();
    let mut admin = Raw::connect(&node);
    assert_eq!(admin.call(&["AUTH", "admin", ADMIN_PASSWORD]), "+OK\r\n");
    for (user, access) in [("reader", "read"), ("writer", "write"), ("owner", "admin")] {
        let password = format!(">{user}-pass");
        let access = format!("access={access}");
        let made = admin.call(&[
            "ACL",
            "SETUSER",
            user,
            "on",
            &password,
            "tenant=acme",
            &access,
        ]);
        assert_eq!(made, "+OK\r\n");
    }
    let connect = |user: &str| {
        let mut raw = Raw::connect(&node);
        assert_eq!(
            raw.call(&["AUTH", user, &format!("{user}-pass")]),
            "+OK\r\n"
        );
        raw
    };
    let mut writer = connect("writer");
    assert_eq!(writer.call(&["SET", "k", "v"]), "+OK\r\n");
    assert!(writer
        .call(&["FLUSHDB"])
        .starts_with("-NOPERM user writer has write access to tenant acme: this needs admin"));
    let mut reader = connect("reader");
    assert_eq!(reader.call(&["GET", "k"]), "$1\r\nv\r\n");
    for write in [
        vec!["SET", "k", "w"],
        vec!["INCR", "n"],
        vec!["DEL", "k", "other"],
        vec!["MSET", "a", "1", "b", "2"],
        vec!["EXPIRE", "k", "100"],
        vec!["FLUSHALL"],
    ] {
        let answer = reader.call(&write);
        assert!(
            answer.starts_with("-NOPERM user reader has read access to tenant acme"),
            "{write:?}: {answer}"
        );
    }
    // A pipelined write among reads is refused alone.
    reader.send(&[b"SET", b"k", b"x"]);
    reader.send(&[b"GET", b"k"]);
    assert!(reader.reply().starts_with("-NOPERM"));
    assert_eq!(reader.reply(), "$1\r\nv\r\n");
    let mut owner = connect("owner");
    assert_eq!(owner.call(&["FLUSHDB"]), "+OK\r\n");
    assert_eq!(owner.call(&["GET", "k"]), "$-1\r\n");

    // The flatbuffers protocol: the same check, a typed error.
    common::client_runtime().block_on(async {
        let addr = node.addr.to_string();
        let reader = Client::connect(ClientConfig::new(&addr).credentials("reader", "reader-pass"))
            .await
            .unwrap();
        assert_eq!(reader.get("k").await.unwrap(), None);
        for refused in [
            reader.set("k", "v").await.map(|_| ()),
            reader.mset(&[("a", "1"), ("b", "2")]).await.map(|_| ()),
            reader.delete(&["a", "b"]).await.map(|_| ()),
        ] {
            match refused {
                Err(ClientError::Server { code, .. }) => {
                    assert_eq!(code, tinkerdb_schemas::wire::ErrorCode::PermissionDenied)
                }
                other => panic!("expected PermissionDenied, got {other:?}"),
            }
        }
    });
}

#[test]
fn bearer_tokens_and_roles_from_the_cli() {
    let node = start_node();
    let tinker = |args: &[&str], env: &[(&str, &str)]| {
        let output = Command::new(workspace_binary("tinker"))
            .args(["--admin", &node.admin_addr.to_string()])
            .args(args)
            .env_remove("TINKER_TOKEN")
            .env_remove("TINKER_PASSWORD")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        )
    };
    let as_admin = [("TINKER_PASSWORD", ADMIN_PASSWORD)];
    let (status, token, _) = tinker(
        &["--user", "admin", "token", "create", "--ttl-seconds", "600"],
        &as_admin,
    );
    assert_eq!(status, Some(0));
    assert!(token.starts_with("tdbt_"), "{token}");
    let with_bearer = |token: &str, method: reqwest::Method, path: &str| {
        reqwest::blocking::Client::new()
            .request(method, format!("http://{}{path}", node.admin_addr))
            .bearer_auth(token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(with_bearer(&token, reqwest::Method::GET, "/v1/node"), 200);
    assert_eq!(
        with_bearer("tdbt_forged", reqwest::Method::GET, "/v1/node"),
        401
    );
    // A token cannot mint another (a stolen one dies at its expiry).
    assert_eq!(
        with_bearer(&token, reqwest::Method::POST, "/v1/tokens"),
        403
    );
    // The CLI with the token: roles granted and listed.
    let as_token = [("TINKER_TOKEN", token.as_str())];
    let (status, _, stderr) = tinker(
        &["role", "grant", "alice", "read", "--on-tenant", "acme"],
        &as_token,
    );
    assert_eq!(status, Some(0), "{stderr}");
    let (status, roles, _) = tinker(&["role", "list"], &as_token);
    assert_eq!(status, Some(0));
    assert!(roles.contains("read on acme"), "{roles}");
    assert!(roles.contains("cluster-admin"), "{roles}");
    let (status, _, stderr) = tinker(&["role", "grant", "alice", "read"], &as_token);
    assert_eq!(status, Some(2));
    assert!(stderr.contains("needs --on-tenant"), "{stderr}");
    // alice's role is what the RESP port enforces now.
    let mut alice = Raw::connect(&node);
    assert_eq!(alice.call(&["AUTH", "alice", ALICE_PASSWORD]), "+OK\r\n");
    assert!(alice.call(&["SET", "k", "v"]).starts_with("-NOPERM"));
    // A new password revokes the user's tokens at their next use.
    let (status, _, stderr) = tinker(
        &["user", "passwd", "admin"],
        &[
            ("TINKER_TOKEN", token.as_str()),
            ("TINKER_NEW_PASSWORD", "admin-secret-9"),
        ],
    );
    assert_eq!(status, Some(0), "{stderr}");
    assert_eq!(with_bearer(&token, reqwest::Method::GET, "/v1/node"), 401);
    // DELETE /v1/tokens revokes the caller's tokens.
    let as_admin = [("TINKER_PASSWORD", "admin-secret-9")];
    let (_, second, _) = tinker(&["--user", "admin", "token", "create"], &as_admin);
    assert_eq!(with_bearer(&second, reqwest::Method::GET, "/v1/node"), 200);
    let (status, revoked, _) = tinker(&["--token", &second, "token", "revoke"], &[]);
    assert_eq!(status, Some(0));
    assert_eq!(revoked, "1 token(s) revoked");
    assert_eq!(with_bearer(&second, reqwest::Method::GET, "/v1/node"), 401);
}
