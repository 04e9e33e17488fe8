//! Cluster mode with more nodes than replicas: five nodes of one core, eight
//! ranges, the default replication factor of three. Each range lives on
//! three nodes (`cluster::layout`); every node still serves every key,
//! forwarding requests for the ranges it does not hold
//! (`coord::forward`). Real processes on loopback, driven through the Rust
//! client and the peer transport.

mod common;
#[path = "../../replication/tests/common/register.rs"]
mod register;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::TestNode;
use tinkerdb_client::{Client, ClientConfig, ScanOptions};

const NODES: usize = 5;
const RANGES: usize = 8;
/// The default replication factor (not configured here on purpose).
const REPLICAS: usize = 3;
const CONFIG: &str = "ranges_per_core = 8\n[raft]\nsnapshot_every_entries = 40\n\
                      logs_kept_after_snapshot = 5\n";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn client(node: &TestNode) -> Client {
    let config = ClientConfig::new(node.addr.to_string()).request_timeout(Duration::from_secs(15));
    runtime().block_on(Client::connect(config)).unwrap()
}

fn status(node: &TestNode) -> serde_json::Value {
    let url = format!("http://{}/v1/cluster", node.admin_addr);
    reqwest::blocking::get(url).unwrap().json().unwrap()
}

/// The ranges a node hosts: range -> (replicas, leader).
fn hosted(node: &TestNode) -> BTreeMap<u64, (BTreeSet<u64>, Option<u64>)> {
    status(node)["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|shard| {
            let replicas = shard["replicas"].as_array().unwrap();
            let replicas = replicas.iter().filter_map(|id| id.as_u64()).collect();
            (
                shard["id"].as_u64().unwrap(),
                (replicas, shard["leader"].as_u64()),
            )
        })
        .collect()
}

/// The cluster metadata's range table as `node` applied it: range ->
/// (voters, leader).
fn range_table(node: &TestNode) -> BTreeMap<u64, (BTreeSet<u64>, u64)> {
    let status = status(node);
    let ranges = status["metadata"]["ranges"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ranges
        .iter()
        .map(|range| {
            let voters = range["voters"].as_array().unwrap();
            let voters = voters.iter().filter_map(|id| id.as_u64()).collect();
            (
                range["id"].as_u64().unwrap(),
                (voters, range["leader"].as_u64().unwrap()),
            )
        })
        .collect()
}

/// The key's range (ranges split the slots evenly).
fn range_of(key: &str) -> usize {
    let slot = tinkerdb_storage::hash_slot("default", key.as_bytes());
    usize::from(slot) * RANGES / 16384
}

#[test]
fn five_nodes_keep_three_replicas_of_each_range_and_any_node_serves_any_key() {
    let (mut nodes, raft_ports) = common::start_cluster(NODES, 1, CONFIG);
    // Every node sees a leader for each range it holds.
    assert!(
        common::eventually(Duration::from_secs(60), || nodes.iter().all(|node| hosted(
            node
        )
        .values()
        .all(|(_, leader)| leader.is_some()))),
        "the ranges never elected leaders"
    );

    // The layout: each range on exactly three nodes, each node a strict
    // share (24 replicas over 5 nodes: 4 or 5 each), and each replica
    // agrees with the others on who the replicas are.
    let mut holders: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for (index, node) in nodes.iter().enumerate() {
        let id = index as u64 + 1;
        let ranges = hosted(node);
        assert!(
            (4..=5).contains(&ranges.len()),
            "node {id} holds {ranges:?}"
        );
        for (range, (replicas, _)) in ranges {
            assert!(
                replicas.contains(&id),
                "node {id}, range {range}: {replicas:?}"
            );
            assert_eq!(replicas.len(), REPLICAS, "range {range}: {replicas:?}");
            holders.entry(range).or_default().insert(id);
        }
    }
    assert_eq!(holders.len(), RANGES, "{holders:?}");
    for (range, on) in &holders {
        assert_eq!(on.len(), REPLICAS, "range {range} is on {on:?}");
    }
    // Every node, also one holding a few ranges, sees the whole range
    // table in the cluster metadata, as the ranges' leaders reported it.
    let mut table = BTreeMap::new();
    let settled = common::eventually(Duration::from_secs(30), || {
        nodes.iter().all(|node| {
            table = range_table(node);
            table.len() == RANGES
                && table.iter().all(|(range, (voters, leader))| {
                    voters == &holders[range] && voters.contains(leader)
                })
        })
    });
    assert!(
        settled,
        "the range table never listed every range: {table:?}"
    );

    // Writes through every node, for keys of every range; each key read
    // back through every node.
    let clients: Vec<Client> = nodes.iter().map(client).collect();
    let keys: Vec<String> = (0..200).map(|i| format!("key:{i}")).collect();
    assert_eq!(
        keys.iter()
            .map(|key| range_of(key))
            .collect::<BTreeSet<_>>()
            .len(),
        RANGES,
        "the keys span every range"
    );
    runtime().block_on(async {
        for (i, key) in keys.iter().enumerate() {
            clients[i % NODES]
                .set(key, format!("v{i}"))
                .await
                .unwrap_or_else(|error| {
                    panic!("SET {key} through node {}: {error}", i % NODES + 1)
                });
        }
        for (index, client) in clients.iter().enumerate() {
            let values = client.mget(&keys).await.unwrap();
            for (i, value) in values.iter().enumerate() {
                let value = value.as_ref().map(|v| v.value.clone());
                assert_eq!(
                    value.as_deref(),
                    Some(format!("v{i}").as_bytes()),
                    "{} read through node {}",
                    keys[i],
                    index + 1
                );
            }
            // A scan through any node returns each key exactly once.
            let scanned = client.scan_all(&ScanOptions::default()).await.unwrap();
            let distinct: BTreeSet<_> = scanned.iter().cloned().collect();
            assert_eq!(scanned.len(), keys.len(), "node {}: {scanned:?}", index + 1);
            assert_eq!(distinct.len(), keys.len());
            assert_eq!(client.exists(&keys).await.unwrap(), keys.len() as u64);
        }
        // Multi-key writes spanning ranges, through one node.
        let pairs: Vec<(String, String)> =
            (0..40).map(|i| (format!("m:{i}"), i.to_string())).collect();
        clients[1].mset(&pairs).await.unwrap();
        let names: Vec<&String> = pairs.iter().map(|(key, _)| key).collect();
        assert_eq!(clients[3].exists(&names).await.unwrap(), 40);
        assert_eq!(clients[2].delete(&names).await.unwrap(), 40);
        assert_eq!(clients[4].exists(&names).await.unwrap(), 0);
        // INCR on one key from every node: one count each, none twice.
        for client in &clients {
            client.incr_by("counter", 1).await.unwrap();
        }
        assert_eq!(
            clients[0].incr_by("counter", 0).await.unwrap(),
            NODES as i64
        );
    });

    // Leaders end spread as the layout planned them (8 ranges on 5 nodes:
    // one or two each), whichever nodes won the first elections. Writes
    // to every range keep the groups awake meanwhile (a sleeping group's
    // leadership is left alone).
    let mut leaders: Vec<usize> = Vec::new();
    let spread = common::eventually(Duration::from_secs(60), || {
        runtime().block_on(async {
            for i in 0..40 {
                clients[0].set(format!("wake:{i}"), "x").await.unwrap();
            }
        });
        leaders = (1..=NODES as u64)
            .map(|id| {
                let ranges = hosted(&nodes[id as usize - 1]);
                ranges
                    .values()
                    .filter(|(_, leader)| *leader == Some(id))
                    .count()
            })
            .collect();
        leaders.iter().all(|count| (1..=2).contains(count))
    });
    assert!(spread, "leaders per node never evened out: {leaders:?}");

    // Adding or removing a node would need replicas moved between nodes:
    // refused with a reason, nothing changes.
    let http = reqwest::blocking::Client::new();
    let refused = http
        .post(format!("http://{}/v1/cluster/nodes", nodes[0].admin_addr))
        .json(
            &serde_json::json!({"id": 6, "raft": "127.0.0.1:9", "cores": 1, "ranges_per_core": 8}),
        )
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 409);
    let body = refused.text().unwrap();
    assert!(body.contains("not built yet"), "{body}");
    let refused = http
        .delete(format!("http://{}/v1/cluster/nodes/5", nodes[0].admin_addr))
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 409);

    peer_calls_for_ranges_a_node_does_not_hold_are_refused(&nodes, &raft_ports, &holders);

    // Load on 24 keys from clients of the other nodes, the node leading the
    // most ranges killed in the middle (its ranges elect new leaders while
    // requests for them are forwarded): no acknowledged write lost, every
    // key's history linearizable.
    drop(clients);
    let leaders: Vec<usize> = (1..=NODES as u64)
        .map(|id| {
            let node = &nodes[id as usize - 1];
            let ranges = hosted(node);
            ranges
                .values()
                .filter(|(_, leader)| *leader == Some(id))
                .count()
        })
        .collect();
    let victim_index = (0..NODES).max_by_key(|&index| leaders[index]).unwrap();
    assert!(
        leaders[victim_index] >= 2,
        "8 ranges on 5 nodes: {leaders:?}"
    );
    let victim = nodes.remove(victim_index);
    load_while(&nodes, || {
        victim.crash();
    });
    // The range table follows: no range is led by the dead node.
    let victim_id = victim_index as u64 + 1;
    let mut table = BTreeMap::new();
    let moved_on = common::eventually(Duration::from_secs(30), || {
        table = range_table(&nodes[0]);
        table.len() == RANGES && table.values().all(|(_, leader)| *leader != victim_id)
    });
    assert!(
        moved_on,
        "ranges still led by the dead node {victim_id}: {table:?}"
    );
    eprintln!(
        "node {} led {} ranges when it was killed",
        victim_index + 1,
        leaders[victim_index]
    );
}

/// Sends `PeerCallKind::Execute` calls to a node's Raft port the way another
/// node would: for a range the node does not hold (refused, so the sender
/// tries another replica: never run, never forwarded on), and garbage for a
/// range it holds (refused with why). The node keeps serving.
fn peer_calls_for_ranges_a_node_does_not_hold_are_refused(
    nodes: &[TestNode],
    raft_ports: &[u16],
    holders: &BTreeMap<u64, BTreeSet<u64>>,
) {
    use tinkerdb_core::shard::remote::{self, RemoteAnswer, RemoteOp, RemoteRequest};
    use tinkerdb_replication::transport::{PeerCall, PeerClient, TransportError};
    use tinkerdb_schemas::wire::PeerCallKind;
    let node_id = 1u64;
    let held = |range: &u64| holders[range].contains(&node_id);
    let foreign = *holders.keys().find(|range| !held(range)).unwrap();
    let own = *holders.keys().find(|range| held(range)).unwrap();
    let raft = std::net::SocketAddr::from(([127, 0, 0, 1], raft_ports[0]));
    let get = |tenant: &str| {
        remote::encode_request(&RemoteRequest {
            batch: false,
            ops: vec![RemoteOp::Get {
                tenant: tenant.into(),
                key: b"key:1".to_vec(),
                stale: false,
            }],
        })
    };
    let (foreign_hello, foreign_call, garbage, unknown_tenant) =
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .unwrap()
            .run(async move {
                let deadline = Duration::from_secs(10);
                let execute = |range: u64, payload: Vec<u8>| PeerCall {
                    group: range,
                    kind: PeerCallKind::Execute,
                    payload,
                };
                // A connection whose hello names a range the node lacks.
                let stranger = PeerClient::new(raft, foreign, None);
                let foreign_hello = stranger
                    .call(execute(foreign, get("default")), deadline)
                    .await;
                // A connection to a range it holds, asked about another.
                let client = PeerClient::new(raft, own, None);
                let foreign_call = client
                    .call(execute(foreign, get("default")), deadline)
                    .await;
                let garbage = client.call(execute(own, vec![0xff; 5]), deadline).await;
                let unknown_tenant = client.call(execute(own, get("nobody")), deadline).await;
                (foreign_hello, foreign_call, garbage, unknown_tenant)
            });
    for refused in [&foreign_hello, &foreign_call] {
        assert!(
            matches!(refused, Err(TransportError::Refused(_, why)) if why.contains("not hosted")),
            "range {foreign} on node {node_id}: {refused:?}"
        );
    }
    assert!(
        matches!(&garbage, Err(TransportError::Refused(_, why)) if why.contains("undecodable")),
        "{garbage:?}"
    );
    let answers = remote::decode_reply(&unknown_tenant.unwrap())
        .unwrap()
        .answers;
    assert!(
        matches!(&answers[..], [RemoteAnswer::Error { code, .. }] if *code == tinkerdb_schemas::wire::ErrorCode::UnknownTenant.0),
        "{answers:?}"
    );
    // Still serving.
    let value = runtime()
        .block_on(client(&nodes[0]).get("key:1"))
        .unwrap()
        .map(|read| read.value);
    assert_eq!(value.as_deref(), Some(&b"v1"[..]));
}

const LOAD_KEYS: usize = 24;
const LOAD_CLIENTS: usize = 6;
/// Operations completed before the kill, and again after it.
const LOAD_OPS_BETWEEN: usize = 150;
/// Shortest load before the kill, and again after it: several election
/// timeouts.
const LOAD_SPAN: Duration = Duration::from_secs(4);

/// Runs a recorded register load over `nodes` (their clients), calls
/// `in_the_middle` after some operations, keeps loading, then checks every
/// key: the same last value through every node, and a linearizable history.
fn load_while(nodes: &[TestNode], in_the_middle: impl FnOnce()) {
    use register::{linearizable, Op, UNKNOWN};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let keys: Vec<String> = (0..LOAD_KEYS).map(|i| format!("reg:{i}")).collect();
    let clock = Instant::now();
    let now = move || clock.elapsed().as_nanos();
    let history: Arc<Mutex<Vec<Vec<Op>>>> = Arc::new(Mutex::new(vec![Vec::new(); LOAD_KEYS]));
    let full = register::MAX_OPS - LOAD_CLIENTS - 1;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..LOAD_CLIENTS)
        .map(|worker| {
            let client = client(&nodes[worker % nodes.len()]);
            let (history, stop, failures, done, keys) = (
                history.clone(),
                stop.clone(),
                failures.clone(),
                done.clone(),
                keys.clone(),
            );
            runtime().spawn(async move {
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (worker as u64 + 1) << 17;
                let mut counter = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let key = (seed % LOAD_KEYS as u64) as usize;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if history.lock().unwrap()[key].len() >= full {
                        continue;
                    }
                    let invoked = now();
                    let op = if seed & (1 << 40) == 0 {
                        counter += 1;
                        let value = (worker as u64) << 32 | counter;
                        match client.set(&keys[key], value.to_string()).await {
                            Ok(_) => Op::write(value, invoked, now()),
                            Err(error) => {
                                eprintln!("write {} failed: {error}", keys[key]);
                                failures.fetch_add(1, Ordering::Relaxed);
                                Op::write(value, invoked, UNKNOWN)
                            }
                        }
                    } else {
                        match client.get(&keys[key]).await {
                            Ok(read) => Op::read(
                                read.map(|v| {
                                    std::str::from_utf8(&v.value).unwrap().parse().unwrap()
                                }),
                                invoked,
                                now(),
                            ),
                            Err(error) => {
                                eprintln!("read {} failed: {error}", keys[key]);
                                failures.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        }
                    };
                    history.lock().unwrap()[key].push(op);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // A count of operations and at least LOAD_SPAN, so that the load after
    // the kill outlasts the elections it causes however fast the machine.
    let load_runs = |when: &str| {
        let (from, started) = (done.load(Ordering::Relaxed), Instant::now());
        assert!(
            common::eventually(Duration::from_secs(90), || {
                done.load(Ordering::Relaxed) >= from + LOAD_OPS_BETWEEN
                    && started.elapsed() >= LOAD_SPAN
            }),
            "the load stalled {when}"
        );
    };
    load_runs("before the kill");
    in_the_middle();
    load_runs("after the kill");
    stop.store(true, Ordering::Relaxed);
    runtime().block_on(async {
        for task in load {
            task.await.unwrap();
        }
    });
    let readers: Vec<Client> = nodes.iter().map(client).collect();
    runtime().block_on(async {
        for (index, key) in keys.iter().enumerate() {
            let mut seen = Vec::new();
            for (node, reader) in readers.iter().enumerate() {
                let invoked = now();
                let read = reader
                    .get(key)
                    .await
                    .unwrap_or_else(|error| panic!("{key} through node {}: {error}", node + 1))
                    .map(|v| {
                        std::str::from_utf8(&v.value)
                            .unwrap()
                            .parse::<u64>()
                            .unwrap()
                    });
                seen.push(read);
                if node == 0 {
                    history.lock().unwrap()[index].push(Op::read(read, invoked, now()));
                }
            }
            assert!(
                seen.windows(2).all(|pair| pair[0] == pair[1]),
                "{key}: {seen:?}"
            );
        }
    });
    let history = history.lock().unwrap();
    let operations: usize = history.iter().map(Vec::len).sum();
    for (key, ops) in keys.iter().zip(history.iter()) {
        assert!(
            linearizable(ops),
            "{key}'s history is not linearizable: {ops:#?}"
        );
    }
    let failed = failures.load(Ordering::Relaxed);
    eprintln!("{operations} operations on {LOAD_KEYS} keys, {failed} failed, all linearizable");
    // Failures are the requests caught by the kill (a leader's election).
    assert!(failed * 10 <= operations, "{failed} of {operations} failed");
}
