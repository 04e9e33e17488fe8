//! Addresses for containers and VMs: peers named by host name (`localhost`
//! here, as `node1` in Docker), bind addresses apart from advertised ones,
//! and `tinker ping` as a health probe.

mod common;

use std::process::Command;
use std::time::Duration;

use common::TestNode;
use tinkerdb_client::{Client, ClientConfig};

const CORES: usize = 2;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn cluster_status(node: &TestNode) -> serde_json::Value {
    let url = format!("http://{}/v1/cluster", node.admin_addr);
    reqwest::blocking::get(url).unwrap().json().unwrap()
}

/// Node `id`'s arguments: peers by host name, Raft bound on an IP, the
/// advertised Raft address its own --peers entry, and an advertised
/// client address.
fn node_args(id: u64, peers: &str, raft_port: u16) -> Vec<String> {
    [
        "--node-id".to_string(),
        id.to_string(),
        "--peers".into(),
        peers.into(),
        "--raft-listen".into(),
        format!("127.0.0.1:{raft_port}"),
        "--advertise-raft".into(),
        format!("localhost:{raft_port}"),
        "--advertise-listen".into(),
        format!("localhost:{}", 7379 + id),
    ]
    .into()
}

#[test]
fn a_cluster_of_host_names_replicates_and_a_node_joins_by_name() {
    let ports: Vec<u16> = (0..4).map(|_| common::free_port_block(1)).collect();
    let peers = (1..=3)
        .map(|id| format!("{id}=localhost:{}", ports[id as usize - 1]))
        .collect::<Vec<_>>()
        .join(",");
    let dirs: Vec<_> = (0..4).map(|_| common::fresh_dir()).collect();
    let nodes: Vec<TestNode> = (1..=3u64)
        .map(|id| {
            let i = id as usize - 1;
            TestNode::start_with_args(CORES, "", &dirs[i], &[], &node_args(id, &peers, ports[i]))
        })
        .collect();
    let runtime = runtime();
    let client = |node: &TestNode| {
        let config =
            ClientConfig::new(node.addr.to_string()).request_timeout(Duration::from_secs(20));
        runtime.block_on(Client::connect(config)).unwrap()
    };
    let first = client(&nodes[0]);
    runtime.block_on(async {
        for i in 0..50 {
            first
                .set(format!("key-{i}"), format!("value-{i}"))
                .await
                .unwrap();
        }
    });
    for node in &nodes[1..] {
        let other = client(node);
        runtime.block_on(async {
            for i in 0..50 {
                let value = other.get(format!("key-{i}")).await.unwrap().unwrap();
                assert_eq!(value.value, format!("value-{i}").as_bytes());
            }
        });
    }
    // The members know each other by the names they were given.
    let status = cluster_status(&nodes[1]);
    let addresses: Vec<String> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| node["address"].as_str().unwrap().to_owned())
        .collect();
    for port in &ports[..3] {
        assert!(
            addresses.contains(&format!("localhost:{port}")),
            "{addresses:?} lacks localhost:{port}: {status}"
        );
    }

    // A fourth node joins: bound on an IP, advertised by name.
    let joiner = TestNode::start_with_args(
        CORES,
        "",
        &dirs[3],
        &[],
        &[
            "--node-id".into(),
            "4".into(),
            "--join".into(),
            nodes[0].admin_addr.to_string(),
            "--raft-listen".into(),
            format!("127.0.0.1:{}", ports[3]),
            "--advertise-raft".into(),
            format!("localhost:{}", ports[3]),
        ],
    );
    let status = cluster_status(&nodes[0]);
    let nodes_json = status["nodes"].as_array().unwrap();
    let fourth = nodes_json
        .iter()
        .find(|node| node["id"] == 4)
        .unwrap_or_else(|| panic!("node 4 is not a member: {status}"));
    assert_eq!(
        fourth["address"],
        format!("localhost:{}", ports[3]),
        "{status}"
    );
    let joined = client(&joiner);
    runtime.block_on(async {
        for i in 0..50 {
            let value = joined.get(format!("key-{i}")).await.unwrap().unwrap();
            assert_eq!(value.value, format!("value-{i}").as_bytes());
        }
        joined.set("after-join", "yes").await.unwrap();
    });
    let last = client(&nodes[2]);
    let value = runtime.block_on(last.get("after-join")).unwrap().unwrap();
    assert_eq!(value.value, b"yes".as_slice());
}

#[test]
fn advertise_raft_must_match_the_own_peers_entry() {
    let dir = common::fresh_dir();
    let started = TestNode::spawn(
        1,
        "",
        &dir,
        &[],
        &[
            "--node-id".into(),
            "1".into(),
            "--peers".into(),
            "1=localhost:7390,2=node2:7390".into(),
            "--advertise-raft".into(),
            "node1:7390".into(),
        ],
        None,
    )
    .wait_ready();
    assert!(
        started.is_none(),
        "started with a mismatched --advertise-raft"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The clash a new user hit: a 2-core node whose Raft port was P gave core
/// 1 the Raft port P + 1; `--listen` on P + 1 started (both bound with
/// SO_REUSEPORT) and clients reached the Raft listener. A node now has one
/// Raft port, and a listener on the same port refuses the start, naming
/// both listeners.
#[test]
fn two_listeners_on_one_port_refuse_to_start_and_say_which() {
    let base = common::free_port_block(4);
    let dir = common::fresh_dir();
    let mut child = Command::new(common::workspace_binary("tinkerdb"))
        .args(["--cores", "2", "--node-id", "1"])
        .args(["--peers", &format!("1=127.0.0.1:{base}")])
        .args(["--listen", &format!("127.0.0.1:{base}")])
        .args(["--resp-listen", &format!("127.0.0.1:{}", base + 2)])
        .args(["--admin-listen", &format!("127.0.0.1:{}", base + 3)])
        .arg("--data-dir")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = common::eventually(Duration::from_secs(30), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(exited && !output.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains("would share port") && stderr.contains("Raft (--raft-listen"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A node has one Raft address whatever its core count: a 2-core node
/// listens for peers on its Raft port P only (P + 1 is free for anything
/// else, here the client listener), routes a connection's hello for range
/// 1 to core 1 (which answers calls for its group), and refuses a hello for
/// a range it does not host with a message saying so.
#[test]
fn one_raft_port_per_node_routes_each_range_to_its_core() {
    use tinkerdb_replication::transport::{PeerCall, PeerClient, TransportError};
    use tinkerdb_schemas::wire::PeerCallKind;
    let base = common::free_port_block(4);
    let dir = common::fresh_dir();
    let node = common::TestNode::start_on(
        2,
        "",
        &dir,
        &[],
        &[
            "--node-id".into(),
            "1".into(),
            "--peers".into(),
            format!("1=127.0.0.1:{base}"),
        ],
        Some(common::NodePorts {
            client: base + 1,
            resp: base + 2,
            admin: base + 3,
        }),
    );
    let raft = std::net::SocketAddr::from(([127, 0, 0, 1], base));
    let answers = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .unwrap()
        .run(async move {
            let ping = |range| PeerCall {
                group: range,
                kind: PeerCallKind::Ping,
                payload: Vec::new(),
            };
            let deadline = Duration::from_secs(10);
            let mut answers = Vec::new();
            for range in [0u64, 1, 2, 1 << 40] {
                let client = PeerClient::new(raft, range, None);
                answers.push(client.call(ping(range), deadline).await);
            }
            // Core 1 serves its group's Raft calls: a vote request with a
            // garbage body reaches the group and is refused by its decoder,
            // not by the router.
            let client = PeerClient::new(raft, 1, None);
            let garbage = client
                .call(
                    PeerCall {
                        group: 1,
                        kind: PeerCallKind::Vote,
                        payload: vec![0xff; 3],
                    },
                    deadline,
                )
                .await;
            (answers, garbage)
        });
    let (answers, garbage) = answers;
    assert_eq!(answers[0], Ok(Vec::new()), "range 0: {answers:?}");
    assert_eq!(answers[1], Ok(Vec::new()), "range 1: {answers:?}");
    for refused in &answers[2..] {
        assert!(
            matches!(refused, Err(TransportError::Refused(_, why)) if why.contains("is not hosted on this node")),
            "{refused:?}"
        );
    }
    assert!(
        matches!(&garbage, Err(TransportError::Refused(_, why)) if !why.contains("not hosted")),
        "{garbage:?}"
    );
    // The node goes on: both ranges still report.
    let status = cluster_status(&node);
    assert_eq!(
        status["shards"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    drop(node);
    let _ = std::fs::remove_dir_all(dir);
}

fn tinker_ping(addr: &str) -> std::process::Output {
    Command::new(common::workspace_binary("tinker"))
        .args(["--addr", addr, "ping", "--timeout-ms", "1000"])
        .output()
        .expect("run tinker")
}

#[test]
fn tinker_ping_is_a_health_probe() {
    // A port nobody listens on: exit status 1, quickly.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let started = std::time::Instant::now();
    let output = tinker_ping(&closed.to_string());
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A name that does not resolve: 1 too.
    let output = tinker_ping("no-such-host.invalid:7379");
    assert_eq!(output.status.code(), Some(1), "{output:?}");

    let node = TestNode::start(1);
    let output = tinker_ping(&node.addr.to_string());
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("PONG"));
    // By host name as well.
    let output = tinker_ping(&format!("localhost:{}", node.addr.port()));
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}

#[test]
fn version_flag_prints_the_version() {
    let output = Command::new(common::workspace_binary("tinkerdb"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("tinkerdb {}", env!("CARGO_PKG_VERSION"))
    );
}
