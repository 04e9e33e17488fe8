//! Cluster mode with real processes: three nodes of two cores each on
//! loopback (so two Raft groups, each replicated on all three nodes),
//! driven through the Rust client.

mod common;
#[path = "../../replication/tests/common/register.rs"]
mod register;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::TestNode;
use tinkerdb_client::{Client, ClientConfig};

const CORES: usize = 2;

/// Snapshot and purge every few dozen entries, so that these short tests
/// run through snapshots, purged logs and catch-up by snapshot.
const RAFT_TUNING: &str = "[raft]\nsnapshot_every_entries = 40\nlogs_kept_after_snapshot = 5\n";

/// `n` free Raft ports (one per node, whatever its core count).
fn raft_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| common::free_port_block(1)).collect()
}

struct Cluster {
    nodes: BTreeMap<u64, TestNode>,
    dirs: BTreeMap<u64, PathBuf>,
    peers: String,
    config: String,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with_ranges(1)
    }

    /// Three nodes of `CORES` cores, each core hosting `ranges_per_core`
    /// ranges (Raft groups).
    fn start_with_ranges(ranges_per_core: usize) -> Cluster {
        Cluster::start_with_config(ranges_per_core, "")
    }

    /// [`Cluster::start_with_ranges`] with more configuration (TOML tables
    /// after the `[raft]` tuning).
    fn start_with_config(ranges_per_core: usize, more: &str) -> Cluster {
        let ports = raft_ports(3);
        let peers = (1..=3)
            .map(|id| format!("{id}=127.0.0.1:{}", ports[id as usize - 1]))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            dirs: BTreeMap::new(),
            peers,
            config: format!("ranges_per_core = {ranges_per_core}\n{RAFT_TUNING}{more}"),
        };
        for id in 1..=3 {
            let dir = common::fresh_dir();
            cluster.dirs.insert(id, dir);
            cluster.start_node(id);
        }
        cluster
    }

    fn start_node(&mut self, id: u64) {
        self.start_node_with_env(id, &[]);
    }

    /// Starts node `id` with extra environment variables (failpoints).
    fn start_node_with_env(&mut self, id: u64, env: &[(&str, &str)]) {
        let args = vec![
            "--node-id".to_string(),
            id.to_string(),
            "--peers".to_string(),
            self.peers.clone(),
        ];
        let node = TestNode::start_with_args(CORES, &self.config, &self.dirs[&id], env, &args);
        self.nodes.insert(id, node);
    }

    /// Kills node `id` with SIGKILL, keeping its files.
    fn kill(&mut self, id: u64) {
        let node = self.nodes.remove(&id).unwrap();
        let dir = node.crash();
        assert_eq!(dir, self.dirs[&id]);
    }

    /// Stops node `id` with SIGTERM (graceful: hands off leadership,
    /// drains); returns its exit status and how long it took.
    fn stop_gracefully(&mut self, id: u64) -> (std::process::ExitStatus, Duration) {
        let mut node = self.nodes.remove(&id).unwrap();
        let started = Instant::now();
        node.signal("TERM");
        let status = node
            .wait_exit(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("node {id} did not exit after SIGTERM"));
        let took = started.elapsed();
        assert_eq!(node.into_dir(), self.dirs[&id]);
        (status, took)
    }

    fn client(&self, id: u64) -> Client {
        let config = ClientConfig::new(self.nodes[&id].addr.to_string())
            .request_timeout(Duration::from_secs(15));
        runtime().block_on(Client::connect(config)).unwrap()
    }

    /// The groups as node `id` sees them (`/v1/cluster`'s shards).
    fn shards(&self, id: u64) -> Vec<serde_json::Value> {
        let url = format!("http://{}/v1/cluster", self.nodes[&id].admin_addr);
        let body: serde_json::Value = reqwest::blocking::get(url).unwrap().json().unwrap();
        assert_eq!(body["mode"], "raft", "{body}");
        body["shards"].as_array().unwrap().clone()
    }

    /// Node `id`'s `/v1/cluster` as a whole.
    fn status(&self, id: u64) -> serde_json::Value {
        let url = format!("http://{}/v1/cluster", self.nodes[&id].admin_addr);
        reqwest::blocking::get(url).unwrap().json().unwrap()
    }

    /// Waits (bounded) until node `id`'s replica of the cluster metadata
    /// has exactly `members` as voters and as registered nodes, each
    /// registered with the addresses it serves at; panics with what it
    /// saw last.
    fn wait_for_metadata(&self, id: u64, members: &[u64]) {
        let mut last = serde_json::Value::Null;
        let settled = common::eventually(Duration::from_secs(60), || {
            last = self.status(id);
            let meta = &last["metadata"];
            let ids = |field: &str| -> Vec<u64> {
                let list = meta[field].as_array().cloned().unwrap_or_default();
                list.iter().filter_map(serde_json::Value::as_u64).collect()
            };
            let registered_where_they_serve = last["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|node| members.contains(&node["id"].as_u64().unwrap()))
                .all(|node| {
                    let served = &self.nodes[&node["id"].as_u64().unwrap()];
                    let registered = &node["registered"];
                    registered["client"] == served.addr.to_string()
                        && registered["resp"] == served.resp_addr.to_string()
                        && registered["admin"] == served.admin_addr.to_string()
                });
            ids("voters") == members
                && ids("registered_nodes") == members
                && meta["leader"].as_u64().is_some()
                && registered_where_they_serve
        });
        assert!(
            settled,
            "node {id}'s metadata never settled on {members:?}: {last}"
        );
    }

    /// Waits (bounded) until every node sees a leader for every group.
    fn wait_for_leaders(&self) {
        assert!(
            common::eventually(Duration::from_secs(60), || {
                (1..=3).all(|id| self.leaders(id).iter().all(Option::is_some))
            }),
            "the groups never elected leaders"
        );
    }

    /// Leaders of the groups, as node `id` sees them.
    fn leaders(&self, id: u64) -> Vec<Option<u64>> {
        self.shards(id)
            .iter()
            .map(|shard| shard["leader"].as_u64())
            .collect()
    }
}

/// Held by each test for its whole run: a cluster is 3 nodes of 2 cores on
/// a machine that may have 2 CPUs, and several at once starve each other
/// into election timeouts that the tests would then blame on the code.
fn one_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ALONE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

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

#[test]
fn kill_9_of_a_leader_loses_no_acknowledged_write_and_the_node_catches_up() {
    let _alone = one_cluster_at_a_time();
    kill_9_of_a_leader_of_range_0(1);
}

/// The same with two ranges (Raft groups) on each core, four in all, on
/// each core's one shared log: every range keeps its own store, version
/// counter and snapshots; a request spanning ranges of one core is split
/// like one spanning cores.
#[test]
fn with_two_ranges_per_core_a_kill_9_loses_nothing_and_requests_span_ranges() {
    let _alone = one_cluster_at_a_time();
    let (cluster, acked) = kill_9_of_a_leader_of_range_0(2);
    let shards = cluster.shards(1);
    assert_eq!(shards.len(), CORES * 2, "{shards:?}");
    let mut next_slot = 0;
    for (range, shard) in shards.iter().enumerate() {
        assert_eq!(shard["id"].as_u64(), Some(range as u64), "{shard}");
        assert_eq!(shard["slots"]["start"].as_u64(), Some(next_slot), "{shard}");
        next_slot = shard["slots"]["end"].as_u64().unwrap() + 1;
        assert_eq!(
            shard["replicas"].as_array().map(Vec::len),
            Some(3),
            "{shard}"
        );
    }
    assert_eq!(next_slot, 16384);
    let client = cluster.client(2);
    runtime().block_on(async {
        // Multi-key requests fan out over the ranges, those on one core
        // included, and every key is counted and scanned exactly once.
        let entries: Vec<(String, String)> = (0..40)
            .map(|i| (format!("multi:{i}"), format!("m{i}")))
            .collect();
        client.mset(&entries).await.unwrap();
        let keys: Vec<&String> = entries.iter().map(|(key, _)| key).collect();
        let values = client.mget(&keys).await.unwrap();
        for ((_, value), read) in entries.iter().zip(values) {
            assert_eq!(read.map(|v| v.value), Some(value.clone().into()));
        }
        assert_eq!(
            client.count().await.unwrap(),
            (acked.len() + entries.len()) as u64
        );
        let mut scanned = client
            .scan_all(&tinkerdb_client::ScanOptions::default())
            .await
            .unwrap();
        scanned.sort();
        let before = scanned.len();
        scanned.dedup();
        assert_eq!(
            (before, scanned.len()),
            (acked.len() + entries.len(), before)
        );
        assert_eq!(client.delete(&keys).await.unwrap(), 40);
        // Atomic multi-key requests stay within one range.
        // (Searched over independent names: a CRC's slots of keys that
        // differ only in a shared suffix are tied to each other.)
        let (a, b) = (0..1000)
            .flat_map(|i| (0..1000).map(move |j| (format!("pair:{i}"), format!("other:{j}"))))
            .find(|(a, b)| range_of(a) != range_of(b) && core_of(a) == core_of(b))
            .expect("two keys of two ranges of one core");
        let refused = client.mset_if_absent(&[(&a, "1"), (&b, "2")]).await;
        assert!(
            matches!(
                &refused,
                Err(tinkerdb_client::ClientError::Server { code, .. })
                    if *code == tinkerdb_schemas::wire::ErrorCode::CrossShard
            ),
            "{refused:?}"
        );
        assert_eq!(
            client.exists(&[&a, &b]).await.unwrap(),
            0,
            "nothing applied"
        );
    });
}

/// The range of `key` (default tenant) on 2 cores x 2 ranges.
fn range_of(key: &str) -> usize {
    let slot = tinkerdb_storage::hash_slot("default", key.as_bytes());
    usize::from(slot) * (CORES * 2) / 16384
}

fn core_of(key: &str) -> usize {
    range_of(key) / 2
}

/// Starts a cluster with `ranges_per_core`, writes through every node,
/// kills the leader of range 0 with SIGKILL, writes on until the survivors
/// purge range 0's log past what the victim holds, restarts the victim and
/// reads everything back through it. Returns the cluster and the writes.
/// The caller holds [`one_cluster_at_a_time`].
fn kill_9_of_a_leader_of_range_0(ranges_per_core: usize) -> (Cluster, Vec<(String, String)>) {
    let mut cluster = Cluster::start_with_ranges(ranges_per_core);
    let mut agreed = Vec::new();
    assert!(
        common::eventually(Duration::from_secs(60), || {
            let views: Vec<_> = (1..=3).map(|id| cluster.leaders(id)).collect();
            agreed = views[0].clone();
            agreed.iter().all(Option::is_some) && views.iter().all(|v| *v == agreed)
        }),
        "the groups never agreed on leaders"
    );

    // Writes through every node; reads of every key through every node.
    let clients: BTreeMap<u64, Client> = (1..=3).map(|id| (id, cluster.client(id))).collect();
    let mut acked: Vec<(String, String)> = Vec::new();
    runtime().block_on(async {
        for i in 0..120 {
            let via = (i % 3) as u64 + 1;
            let (key, value) = (format!("key:{i}"), format!("value:{i}"));
            clients[&via].set(&key, &value).await.unwrap();
            acked.push((key, value));
        }
        for (id, client) in &clients {
            assert_all_readable(client, &acked, &format!("node {id}")).await;
        }
    });
    drop(clients);

    // kill -9 the leader of group 0, then keep writing through the others.
    let victim = agreed[0].unwrap();
    let victim_last_index = cluster.shards(victim)[0]["last_log_index"]
        .as_u64()
        .unwrap();
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
    cluster.kill(victim);
    let killed_at = Instant::now();
    let clients: BTreeMap<u64, Client> = survivors
        .iter()
        .map(|&id| (id, cluster.client(id)))
        .collect();
    let mut slowest = Duration::ZERO;
    runtime().block_on(async {
        // Enough that group 0 (about 1 / ranges of the keys) passes its
        // next snapshot points (every 40 entries) well beyond the
        // victim's log.
        for i in 120..120 + 200 * ranges_per_core {
            let via = survivors[i % 2];
            let (key, value) = (format!("key:{i}"), format!("value:{i}"));
            let started = Instant::now();
            clients[&via]
                .set(&key, &value)
                .await
                .unwrap_or_else(|error| panic!("write {key} via {via} after the kill: {error}"));
            slowest = slowest.max(started.elapsed());
            acked.push((key, value));
        }
        for (id, client) in &clients {
            assert_all_readable(client, &acked, &format!("node {id}")).await;
        }
    });
    let new_leaders = cluster.leaders(survivors[0]);
    assert!(
        new_leaders[0].is_some_and(|leader| leader != victim),
        "{new_leaders:?}"
    );
    // The survivors compacted group 0's log past what the victim holds:
    // it can only catch up by snapshot. (Snapshots and purges run in the
    // background after the writes that trigger them.)
    let mut purged = None;
    assert!(
        common::eventually(Duration::from_secs(60), || {
            purged = cluster.shards(survivors[0])[0]["purged_index"].as_u64();
            purged.is_some_and(|purged| purged > victim_last_index)
        }),
        "group 0 purged to {purged:?}, the victim has up to {victim_last_index}"
    );
    eprintln!(
        "killed node {victim} (leader of group 0, log up to {victim_last_index}); slowest write \
         after the kill {slowest:?}; {} writes acknowledged in {:?}, none lost; survivors purged \
         group 0 to {purged:?} ({ranges_per_core} ranges per core)",
        acked.len(),
        killed_at.elapsed()
    );

    // The killed node restarts from its snapshot and log, and catches up
    // by snapshot.
    cluster.start_node(victim);
    let client = cluster.client(victim);
    runtime().block_on(assert_all_readable(&client, &acked, "the restarted node"));
    let installed = cluster.shards(victim)[0]["snapshot_index"].as_u64();
    assert!(
        installed.is_some_and(|index| index > victim_last_index),
        "the restarted node holds snapshot {installed:?}"
    );
    (cluster, acked)
}

/// Every acknowledged write reads back through `client` with its value.
async fn assert_all_readable(client: &Client, acked: &[(String, String)], via: &str) {
    for (key, value) in acked {
        let read = client.get(key).await.unwrap();
        assert_eq!(
            read.map(|v| v.value),
            Some(value.clone().into()),
            "{key} via {via}"
        );
    }
}

#[test]
fn conditional_writes_replicate_and_compare_and_set_loses_no_increment() {
    let _alone = one_cluster_at_a_time();
    let cluster = Cluster::start();
    let clients: Vec<Client> = (1..=3).map(|id| cluster.client(id)).collect();
    runtime().block_on(async {
        // NX and XX are judged when applied, the same on every replica.
        let first = clients[0]
            .set_with("nx-key", "one", nx())
            .await
            .unwrap();
        assert!(first.applied);
        let second = clients[1].set_with("nx-key", "two", nx()).await.unwrap();
        assert!(!second.applied, "NX on an existing key");
        assert_eq!(second.version, first.version);
        let absent = clients[2]
            .set_with("xx-key", "x", xx())
            .await
            .unwrap();
        assert!(!absent.applied, "XX on a missing key");
        for client in &clients {
            assert_eq!(client.get("nx-key").await.unwrap().unwrap().value, "one");
            assert!(client.get("xx-key").await.unwrap().is_none());
        }

        // Three clients, one per node, each add 1 to a counter 25 times by
        // compare-and-set, retrying on conflict: no increment is lost.
        clients[0].set("counter", "0").await.unwrap();
        let increments: Vec<_> = clients
            .iter()
            .cloned()
            .map(|client| {
                tokio::spawn(async move {
                    let mut conflicts = 0u32;
                    for _ in 0..25 {
                        loop {
                            let current = client.get("counter").await.unwrap().unwrap();
                            let seen: u64 =
                                std::str::from_utf8(&current.value).unwrap().parse().unwrap();
                            let next = (seen + 1).to_string();
                            let written = client
                                .compare_and_set("counter", current.version, next, None)
                                .await
                                .unwrap();
                            if written.applied {
                                break;
                            }
                            conflicts += 1;
                        }
                    }
                    conflicts
                })
            })
            .collect();
        let mut conflicts = 0;
        for increment in increments {
            conflicts += increment.await.unwrap();
        }
        for client in &clients {
            assert_eq!(client.get("counter").await.unwrap().unwrap().value, "75");
        }
        eprintln!("compare-and-set through Raft: 75 increments from 3 nodes, {conflicts} conflicts retried, none lost");
    });
    // The Raft log's WAL is the node's WAL in its status and metrics.
    let url = format!("http://{}/v1/node", cluster.nodes[&1].admin_addr);
    let node: serde_json::Value = reqwest::blocking::get(url).unwrap().json().unwrap();
    assert!(node["wal_bytes"].as_u64().unwrap() > 0, "{node}");
    assert!(
        node["per_core"]
            .as_array()
            .unwrap()
            .iter()
            .all(|core| core["wal_fsyncs"].as_u64().unwrap() > 0),
        "{node}"
    );
}

fn nx() -> tinkerdb_client::SetOptions {
    tinkerdb_client::SetOptions {
        ttl: None,
        condition: tinkerdb_client::SetCondition::IfAbsent,
    }
}

fn xx() -> tinkerdb_client::SetOptions {
    tinkerdb_client::SetOptions {
        ttl: None,
        condition: tinkerdb_client::SetCondition::IfPresent,
    }
}

/// Runs `tinker --admin ADDR ARGS...` and returns its stdout (panics on a
/// failure exit).
fn tinker_admin(admin: std::net::SocketAddr, args: &[&str]) -> String {
    let output = std::process::Command::new(common::workspace_binary("tinker"))
        .arg("--admin")
        .arg(admin.to_string())
        .args(args)
        .output()
        .expect("run tinker");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "tinker {args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The `NODE ROLE HEALTH` columns of `tinker cluster status`, by node id.
fn status_rows(status: &str) -> BTreeMap<u64, (String, String)> {
    status
        .lines()
        .skip_while(|line| !line.starts_with("NODE"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let id = words.next()?.parse().ok()?;
            Some((id, (words.next()?.to_owned(), words.next()?.to_owned())))
        })
        .collect()
}

#[test]
fn a_node_joins_and_another_leaves_under_load_and_health_shows_a_dead_peer() {
    let _alone = one_cluster_at_a_time();
    let mut cluster = Cluster::start();
    assert!(
        common::eventually(Duration::from_secs(60), || {
            cluster.leaders(1).iter().all(Option::is_some)
        }),
        "no leaders"
    );
    // Load: one writer through node 2, one through node 3, until stopped.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = [2u64, 3]
        .into_iter()
        .map(|via| {
            let client = cluster.client(via);
            let (stop, written) = (stop.clone(), written.clone());
            runtime().spawn(async move {
                let mut acked = Vec::new();
                let mut slowest = Duration::ZERO;
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("load:{via}:{i}");
                    let started = Instant::now();
                    client
                        .set(&key, "v")
                        .await
                        .unwrap_or_else(|error| panic!("{key}: {error}"));
                    slowest = slowest.max(started.elapsed());
                    acked.push(key);
                    written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    i += 1;
                }
                (acked, slowest)
            })
        })
        .collect();
    // Waits until the writers have had `n` writes acknowledged in all (a
    // count, not a pause, so that a busy machine still runs the changes
    // under load); a writer that stopped has panicked (its message is
    // above).
    let writes_reach = |n: usize, when: &str| {
        let reached = common::eventually(Duration::from_secs(60), || {
            assert!(
                !writers.iter().any(|writer| writer.is_finished()),
                "a writer failed {when} (its panic is above)"
            );
            written.load(std::sync::atomic::Ordering::Relaxed) >= n
        });
        assert!(
            reached,
            "{} writes under load {when}, waited for {n}",
            written.load(std::sync::atomic::Ordering::Relaxed)
        );
    };
    writes_reach(10, "before the join");
    let epochs = |shards: Vec<serde_json::Value>| -> Vec<u64> {
        shards
            .iter()
            .map(|shard| shard["epoch"].as_u64().expect("an epoch"))
            .collect()
    };
    let epochs_before = epochs(cluster.shards(1));

    // Node 4 joins through node 1's admin API; "ready" means it is a voter.
    let port = raft_ports(1)[0];
    let dir4 = common::fresh_dir();
    let join_args = [
        "--node-id",
        "4",
        "--raft-listen",
        &format!("127.0.0.1:{port}"),
        "--join",
        &cluster.nodes[&1].admin_addr.to_string(),
    ]
    .map(String::from);
    // A node of another core count may join as long as it has the same
    // ranges: node 4 runs both on its one core, and its peers' calls for
    // range 1 find that core through a connection of their own.
    let url = format!("http://{}/v1/cluster/nodes", cluster.nodes[&1].admin_addr);
    let refused = reqwest::blocking::Client::new()
        .post(&url)
        .json(&serde_json::json!({ "id": 4, "raft": "127.0.0.1:1", "cores": 3 }))
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    let why: serde_json::Value = refused.json().unwrap();
    assert!(
        why["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has 3 ranges (cores x ranges per core); this cluster's nodes have 2"),
        "{why}"
    );
    let joined_at = Instant::now();
    let node4 = TestNode::start_with_args(1, "ranges_per_core = 2\n", &dir4, &[], &join_args);
    let join_took = joined_at.elapsed();
    cluster.dirs.insert(4, dir4);
    cluster.nodes.insert(4, node4);
    let status = tinker_admin(cluster.nodes[&4].admin_addr, &["cluster", "status"]);
    let rows = status_rows(&status);
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4],
        "{status}"
    );
    assert!(rows.values().all(|(role, _)| role == "voter"), "{status}");
    // The cluster metadata follows: node 4 is a member of its group and
    // registered where it serves, as every node sees it.
    for id in [1, 4] {
        cluster.wait_for_metadata(id, &[1, 2, 3, 4]);
    }
    let status = tinker_admin(cluster.nodes[&4].admin_addr, &["cluster", "status"]);
    assert!(
        status.contains(&format!("serves clients at {}", cluster.nodes[&4].addr)),
        "{status}"
    );
    assert!(status.contains("nodes registered [1,2,3,4]"), "{status}");

    // Node 1 leaves, asked through node 2.
    let removed = tinker_admin(cluster.nodes[&2].admin_addr, &["cluster", "remove", "1"]);
    assert!(
        removed.contains("node 1 removed; voters per shard: [[2,3,4],[2,3,4]]"),
        "{removed}"
    );
    // Every change of a range's replicas raises its epoch.
    let epochs_after = epochs(cluster.shards(2));
    assert!(
        epochs_after
            .iter()
            .zip(&epochs_before)
            .all(|(after, before)| after > before),
        "epochs before the join {epochs_before:?}, after the removal {epochs_after:?}"
    );
    // A request routed with a range's epoch from before the changes gets
    // the typed answer with the current one, and runs with that.
    let stale = tinkerdb_client::Route {
        range: 0,
        epoch: epochs_before[0],
    };
    // (A key of range 0 of the two: the lower half of the slots.)
    let key = (0..)
        .map(|i| format!("routed:{i}"))
        .find(|key| tinkerdb_storage::hash_slot("default", key.as_bytes()) < 8192)
        .unwrap();
    let via_2 = cluster.client(2);
    let current = match runtime().block_on(via_2.set_routed(&key, "v", stale)) {
        Err(tinkerdb_client::ClientError::StaleRoute { owner, .. }) => owner.route(),
        other => panic!("an old epoch: {other:?}"),
    };
    assert_eq!(current.range, 0);
    assert!(
        current.epoch > epochs_before[0],
        "{current:?} after {epochs_before:?}"
    );
    runtime()
        .block_on(via_2.set_routed(&key, "v", current))
        .unwrap();
    drop(via_2);
    let after_removal = written.load(std::sync::atomic::Ordering::Relaxed) + 10;
    writes_reach(after_removal.max(21), "after the removal");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut slowest = Duration::ZERO;
    for writer in writers {
        let (keys, slow) = runtime().block_on(writer).unwrap();
        acked.extend(keys);
        slowest = slowest.max(slow);
    }
    assert!(acked.len() > 20, "only {} writes under load", acked.len());
    // The metadata forgets the node that left.
    cluster.wait_for_metadata(2, &[2, 3, 4]);
    cluster.kill(1);

    // Everything acknowledged reads back through the new node.
    let client = cluster.client(4);
    runtime().block_on(async {
        for key in &acked {
            assert!(client.get(key).await.unwrap().is_some(), "{key} on node 4");
        }
    });

    // Health: node 3 dies; node 4's probes report it down, and the
    // remaining majority (2 and 4, of two cores and one) still takes writes.
    cluster.kill(3);
    let mut status = String::new();
    assert!(
        common::eventually(Duration::from_secs(60), || {
            status = tinker_admin(cluster.nodes[&4].admin_addr, &["cluster", "status"]);
            status_rows(&status)
                .get(&3)
                .is_some_and(|(_, health)| health == "down")
        }),
        "node 3 never reported down: {status}"
    );
    let rows = status_rows(&status);
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        vec![2, 3, 4],
        "{status}"
    );
    assert_eq!(rows[&2].1, "up", "{status}");
    runtime().block_on(async {
        client.set("after-node-3-died", "v").await.unwrap();
    });
    // So does the metadata group (2 of its 3 voters), whose leader may
    // have been node 3: a leader among the living.
    assert!(
        common::eventually(Duration::from_secs(60), || {
            let meta = cluster.status(4)["metadata"].clone();
            meta["leader"].as_u64().is_some_and(|leader| leader != 3)
        }),
        "the metadata group has no leader after node 3 died: {}",
        cluster.status(4)
    );
    eprintln!(
        "membership (processes): node 4 joined in {join_took:?}, node 1 removed; {} writes under load, \
         none failed, slowest {slowest:?}; node 3 killed and reported down\n{status}",
        acked.len()
    );
}

#[test]
fn a_client_given_one_node_learns_the_others_and_fails_over_when_it_dies() {
    let _alone = one_cluster_at_a_time();
    let mut cluster = Cluster::start();
    cluster.wait_for_leaders();
    cluster.wait_for_metadata(1, &[1, 2, 3]);
    let addr = |id: u64| cluster.nodes[&id].addr.to_string();
    let (addr1, addr2, addr3) = (addr(1), addr(2), addr(3));
    let config = ClientConfig::new(&addr1)
        .connections(1)
        .request_timeout(Duration::from_secs(15));
    let client = runtime().block_on(Client::connect(config)).unwrap();
    // Node 1's handshake named every member.
    let mut known = client.known_addresses();
    assert_eq!(known[0], addr1, "{known:?}");
    known.sort();
    let mut members = vec![addr1.clone(), addr2.clone(), addr3.clone()];
    members.sort();
    assert_eq!(known, members);
    assert_eq!(client.node_id(), 1);
    let keys: Vec<String> = (0..20).map(|i| format!("failover:{i}")).collect();
    runtime().block_on(async {
        for key in &keys {
            client.set(key, key).await.unwrap();
        }
    });

    // Node 1 dies: the request in flight (if any) fails, the next ones go
    // to another member through a new connection.
    cluster.kill(1);
    let mut failed = Vec::new();
    runtime().block_on(async {
        for key in &keys {
            let mut attempts = 0;
            loop {
                attempts += 1;
                match client.get(key).await {
                    Ok(value) => {
                        let value = value.map(|value| value.value);
                        assert_eq!(value.as_deref(), Some(key.as_bytes()), "{key}");
                        break;
                    }
                    Err(error) if attempts < 3 => failed.push(format!("{key}: {error}")),
                    Err(error) => panic!("{key} after {attempts} attempts: {error}; {failed:?}"),
                }
            }
        }
        client.set("failover:after", "v").await.unwrap();
    });
    // At most the connection's one break was seen, on one request.
    assert!(failed.len() <= 1, "{failed:?}");
    let now = client.known_addresses()[0].clone();
    assert!(now == addr2 || now == addr3, "{now} after node 1 died");

    // A client whose first address is dead starts at the next seed.
    let config = ClientConfig::new(&addr1)
        .seeds([addr3.clone()])
        .connections(1);
    let seeded = runtime().block_on(Client::connect(config)).unwrap();
    assert_eq!(seeded.node_id(), 3);
    let read = runtime().block_on(seeded.get("failover:after")).unwrap();
    assert_eq!(read.map(|read| read.value).as_deref(), Some(&b"v"[..]));
    eprintln!(
        "client failover: {} request(s) failed while node 1 went away: {failed:?}",
        failed.len()
    );
}

/// The admin password of [`users_made_on_one_node_authenticate_on_every_node`].
const ADMIN_PASSWORD: &str = "admin-password-1";

/// `AUTH user password` on a fresh RESP connection to node `id`: the
/// answer, `OK` or the error's text.
fn resp_auth(cluster: &Cluster, id: u64, user: &str, password: &str) -> String {
    let url = format!("redis://{}/", cluster.nodes[&id].resp_addr);
    let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
    match redis::cmd("AUTH")
        .arg(user)
        .arg(password)
        .query::<String>(&mut connection)
    {
        Ok(answer) => answer,
        Err(error) => error.to_string(),
    }
}

#[test]
fn users_made_on_one_node_authenticate_on_every_node() {
    let _alone = one_cluster_at_a_time();
    let hash = tinkerdb_admin::users::hash_password(ADMIN_PASSWORD.as_bytes()).unwrap();
    let auth = format!(
        "\n[auth]\nenabled = true\n\n[[auth.users]]\nname = \"admin\"\npassword_hash = \"{hash}\"\ncluster_admin = true\n"
    );
    let mut cluster = Cluster::start_with_config(1, &auth);
    // (Node 1 stays up throughout; nodes 2 and 3 are asked before any
    // restart.)
    let admin_addrs: BTreeMap<u64, std::net::SocketAddr> = cluster
        .nodes
        .iter()
        .map(|(id, node)| (*id, node.admin_addr))
        .collect();
    let admin = |id: u64, method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let url = format!("http://{}{path}", admin_addrs[&id]);
        let mut request = reqwest::blocking::Client::new()
            .request(method, url)
            .basic_auth("admin", Some(ADMIN_PASSWORD));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().unwrap();
        let status = answer.status().as_u16();
        (
            status,
            answer.json::<serde_json::Value>().unwrap_or_default(),
        )
    };
    let user_names = |id: u64| -> Vec<String> {
        let (status, list) = admin(id, reqwest::Method::GET, "/v1/users", None);
        assert_eq!(status, 200, "{list}");
        let names = list
            .as_array()
            .unwrap()
            .iter()
            .map(|user| user["name"].to_string());
        names
            .map(|name| name.trim_matches('"').to_owned())
            .collect()
    };
    assert!(
        common::eventually(Duration::from_secs(60), || {
            let (_, status) = admin(1, reqwest::Method::GET, "/v1/cluster", None);
            status["metadata"]["leader"].as_u64().is_some()
                && status["metadata"]["voters"] == serde_json::json!([1, 2, 3])
        }),
        "no metadata leader"
    );

    // Made through node 1's admin API: node 1 knows it when the call
    // returns, the others once they applied it.
    let body = serde_json::json!({ "name": "alice", "password": "alice-password" });
    let (status, made) = admin(1, reqwest::Method::POST, "/v1/users", Some(body));
    assert_eq!(status, 201, "{made}");
    assert!(user_names(1).contains(&"alice".to_owned()));
    let everywhere = |name: &str, present: bool| {
        common::eventually(Duration::from_secs(30), || {
            (1..=3).all(|id| user_names(id).contains(&name.to_owned()) == present)
        })
    };
    assert!(everywhere("alice", true), "alice never reached every node");
    assert_eq!(resp_auth(&cluster, 3, "alice", "alice-password"), "OK");

    // Made and deleted through RESP on node 3, as a cluster admin.
    let url = format!("redis://{}/", cluster.nodes[&3].resp_addr);
    let mut redis = redis::Client::open(url).unwrap().get_connection().unwrap();
    let _: String = redis::cmd("AUTH")
        .arg("admin")
        .arg(ADMIN_PASSWORD)
        .query(&mut redis)
        .unwrap();
    let _: String = redis::cmd("ACL")
        .arg(&["SETUSER", "bob", "on", ">bob-password"])
        .query(&mut redis)
        .unwrap();
    let deleted: i64 = redis::cmd("ACL")
        .arg(&["DELUSER", "alice"])
        .query(&mut redis)
        .unwrap();
    assert_eq!(deleted, 1);
    assert!(everywhere("bob", true), "bob never reached every node");
    assert!(
        everywhere("alice", false),
        "alice was never deleted everywhere"
    );
    assert_eq!(resp_auth(&cluster, 1, "bob", "bob-password"), "OK");
    assert!(resp_auth(&cluster, 1, "alice", "alice-password").contains("WRONGPASS"));

    // A restarted node starts with what it applied.
    cluster.kill(2);
    cluster.start_node(2);
    assert_eq!(resp_auth(&cluster, 2, "bob", "bob-password"), "OK");
    assert!(resp_auth(&cluster, 2, "alice", "alice-password").contains("WRONGPASS"));

    // Without a quorum a change is refused in bounded time, typed, and
    // the node asked keeps its users.
    cluster.kill(2);
    cluster.kill(3);
    let asked = Instant::now();
    let body = serde_json::json!({ "name": "erin", "password": "erin-password" });
    let (status, refused) = admin(1, reqwest::Method::POST, "/v1/users", Some(body));
    let waited = asked.elapsed();
    assert_eq!(
        refused["error"]["code"], "unavailable",
        "{status} {refused}"
    );
    assert!(waited < Duration::from_secs(30), "refused after {waited:?}");
    assert!(!user_names(1).contains(&"erin".to_owned()));
    assert_eq!(resp_auth(&cluster, 1, "bob", "bob-password"), "OK");
}

#[test]
fn stale_reads_answer_without_a_quorum_and_linearizable_reads_refuse() {
    let _alone = one_cluster_at_a_time();
    let mut cluster = Cluster::start();
    let writer = cluster.client(1);
    runtime().block_on(async {
        writer.set("stale-key", "v1").await.unwrap();
    });
    // Every replica has applied it (a linearizable read through each).
    for id in 1..=3 {
        let client = cluster.client(id);
        runtime().block_on(async {
            assert_eq!(client.get("stale-key").await.unwrap().unwrap().value, "v1");
        });
    }
    drop(writer);
    // Only node 3 is left: no group has a quorum.
    cluster.kill(1);
    cluster.kill(2);
    let linearizable = cluster.client(3);
    let stale = {
        let config = ClientConfig::new(cluster.nodes[&3].addr.to_string())
            .request_timeout(Duration::from_secs(15))
            .stale_reads(true);
        runtime().block_on(Client::connect(config)).unwrap()
    };
    runtime().block_on(async {
        let started = Instant::now();
        let value = stale.get("stale-key").await.unwrap().unwrap();
        assert_eq!(value.value, "v1");
        // A read that waited for a quorum would wait the group's whole
        // request deadline (as the linearizable read below does) before
        // failing; a busy machine may still take a while for a local one.
        let took = started.elapsed();
        assert!(
            took < tinkerdb_replication::group::REQUEST_DEADLINE,
            "a stale read waits for nobody, it took {took:?}"
        );
        let error = linearizable.get("stale-key").await.unwrap_err();
        assert_eq!(
            error.code(),
            Some(tinkerdb_client::ErrorCode::Unavailable),
            "{error}"
        );
        // Stale is for reads only: a write still needs a quorum.
        let error = stale.set("stale-key", "v2").await.unwrap_err();
        assert_eq!(
            error.code(),
            Some(tinkerdb_client::ErrorCode::Unavailable),
            "{error}"
        );
    });
    // The same through the HTTP API.
    let admin = cluster.nodes[&3].admin_addr;
    let url = format!("http://{admin}/v1/tenants/default/keys/stale-key");
    let stale_read = reqwest::blocking::get(format!("{url}?consistency=stale")).unwrap();
    assert_eq!(stale_read.status(), 200);
    let body: serde_json::Value = stale_read.json().unwrap();
    assert_eq!(body["value"], "v1", "{body}");
    let bad = reqwest::blocking::get(format!("{url}?consistency=eventually")).unwrap();
    assert_eq!(bad.status(), 400);
    let refused = reqwest::blocking::get(&url).unwrap();
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = refused.json().unwrap();
    // The group's own answer (no leader within its deadline), not the
    // admin plane's timeout.
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("no leader for group"), "{body}");
}

/// A rolling restart under load: each node in turn gets SIGTERM (it hands
/// its leaderships to another voter, answers what is in flight, exits 0)
/// and is started again. Writers keep writing through every node, moving to
/// another node when theirs goes away; no acknowledged write is lost, and no
/// write waits as long as an election timeout (the hand-off spares the
/// election a killed leader costs).
#[test]
fn a_rolling_restart_under_load_loses_no_write_and_costs_no_election_timeout() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let _alone = one_cluster_at_a_time();
    let mut cluster = Cluster::start();
    let clock = Instant::now();
    assert!(
        common::eventually(Duration::from_secs(15), || {
            let views: Vec<_> = (1..=3).map(|id| cluster.leaders(id)).collect();
            views[0].iter().all(Option::is_some) && views.iter().all(|v| *v == views[0])
        }),
        "the groups never agreed on leaders"
    );
    // The clients of each node; a writer tries its own node first.
    let clients: Arc<Mutex<BTreeMap<u64, Client>>> = Arc::new(Mutex::new(
        (1..=3).map(|id| (id, cluster.client(id))).collect(),
    ));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let waits: Arc<Mutex<Vec<(Duration, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..6u64)
        .map(|writer| {
            let (clients, acked, waits, stop) =
                (clients.clone(), acked.clone(), waits.clone(), stop.clone());
            runtime().spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let (key, value) = (format!("w{writer}-{n}"), format!("v{n}"));
                    let started = Instant::now();
                    let mut attempt = 0u64;
                    let mut tried = Vec::new();
                    loop {
                        let via = (writer + attempt) % 3 + 1;
                        attempt += 1;
                        let client = clients.lock().unwrap().get(&via).cloned();
                        let Some(client) = client else { continue };
                        let sent = Instant::now();
                        let outcome = client.set(&key, &value).await;
                        tried.push(format!(
                            "via {via}: {:?} {:?}",
                            sent.elapsed(),
                            outcome.as_ref().err()
                        ));
                        if outcome.is_ok() {
                            break;
                        }
                        assert!(
                            started.elapsed() < Duration::from_secs(20),
                            "{key} was never acknowledged"
                        );
                    }
                    let at = clock.elapsed();
                    waits
                        .lock()
                        .unwrap()
                        .push((started.elapsed(), format!("{key} at {at:?}: {tried:?}")));
                    acked.lock().unwrap().push((key, value));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut stops = Vec::new();
    for id in 1..=3 {
        let led: usize = cluster
            .leaders(id)
            .iter()
            .filter(|leader| **leader == Some(id))
            .count();
        clients.lock().unwrap().remove(&id);
        let at = clock.elapsed();
        let (status, took) = cluster.stop_gracefully(id);
        assert_eq!(status.code(), Some(0), "node {id}: {status:?}");
        stops.push(format!(
            "node {id} (leader of {led}) at {at:?} exited 0 in {took:?}"
        ));
        cluster.start_node(id);
        let client = cluster.client(id);
        clients.lock().unwrap().insert(id, client);
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        runtime().block_on(writer).unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let mut waits = waits.lock().unwrap().clone();
    waits.sort_unstable();
    let (slowest, slowest_write) = waits.last().unwrap().clone();
    let client = cluster.client(1);
    runtime().block_on(assert_all_readable(
        &client,
        &acked,
        "node 1 after the rolling restart",
    ));
    // Each node restarted with its metadata (log and snapshots on core 0)
    // and is registered where it serves now.
    for id in 1..=3 {
        cluster.wait_for_metadata(id, &[1, 2, 3]);
    }
    eprintln!(
        "rolling restart: {}; {} writes acknowledged, none lost; wait median {:?}, p99 {:?}, max {:?}",
        stops.join(", "),
        acked.len(),
        waits[waits.len() / 2].0,
        waits[waits.len() * 99 / 100].0,
        slowest
    );
    assert!(
        slowest < tinkerdb_replication::group::ELECTION_TIMEOUT_MAX,
        "a write waited {slowest:?}, an election timeout is {:?}: {slowest_write}; stops: {}",
        tinkerdb_replication::group::ELECTION_TIMEOUT_MAX,
        stops.join(", ")
    );
}

/// Keys of the range-move test and its history clients.
const MOVE_KEYS: usize = 48;
const MOVE_CLIENTS: usize = 6;
/// Operations the load completes before each move and after the last.
const MOVE_OPS_BETWEEN: usize = 60;

/// `POST /v1/ranges/{range}/move` on node `id`; the HTTP status and body.
fn move_range(cluster: &Cluster, id: u64, range: usize, core: usize) -> (u16, serde_json::Value) {
    let url = format!(
        "http://{}/v1/ranges/{range}/move",
        cluster.nodes[&id].admin_addr
    );
    let response = reqwest::blocking::Client::new()
        .post(url)
        .json(&serde_json::json!({ "core": core }))
        .timeout(Duration::from_secs(60))
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap())
}

/// The core hosting each range, as node `id` reports it.
fn cores_of_ranges(cluster: &Cluster, id: u64) -> Vec<u64> {
    cluster
        .shards(id)
        .iter()
        .map(|shard| shard["core"].as_u64().unwrap())
        .collect()
}

/// Ranges move between the cores of running nodes (on every node, there
/// and back) while clients on all three nodes write and read keys of those
/// ranges; every operation is recorded with its call and return times.
/// Each key's history must be linearizable (an acknowledged write lost, or
/// a read of a value that was then taken back, shows up as a violation),
/// and the last values read back through every node. A node killed with
/// SIGKILL after the moves comes back with its ranges where they were
/// moved. Bad move requests get typed refusals.
#[test]
fn ranges_move_between_cores_under_load_and_histories_stay_linearizable() {
    use register::{linearizable, Op, UNKNOWN};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let _alone = one_cluster_at_a_time();
    let mut cluster = Cluster::start_with_ranges(2);
    cluster.wait_for_leaders();
    // Keys of ranges 1 (home core 0) and 2 (home core 1): the ones moving.
    let keys: Vec<String> = (0..)
        .map(|i| format!("mv:{i}"))
        .filter(|key| matches!(range_of(key), 1 | 2))
        .take(MOVE_KEYS)
        .collect();
    let clock = Instant::now();
    let now = move || clock.elapsed().as_nanos();
    let history: Arc<Mutex<Vec<Vec<Op>>>> = Arc::new(Mutex::new(vec![Vec::new(); MOVE_KEYS]));
    // Room for every client's last operation and one final read per key.
    let full = register::MAX_OPS - MOVE_CLIENTS - 1;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..MOVE_CLIENTS)
        .map(|worker| {
            let client = cluster.client(worker as u64 % 3 + 1);
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
                    let key = (seed % MOVE_KEYS as u64) as usize;
                    // Paced so the history spans every move.
                    tokio::time::sleep(Duration::from_millis(15)).await;
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
                            Ok(read) => {
                                let read = read.map(|v| {
                                    std::str::from_utf8(&v.value).unwrap().parse().unwrap()
                                });
                                Op::read(read, invoked, now())
                            }
                            Err(error) => {
                                // A failed read says nothing: not recorded.
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

    // Bad requests first: typed refusals, nothing moves.
    assert_eq!(move_range(&cluster, 1, 1, 7).0, 400);
    assert_eq!(move_range(&cluster, 1, 99, 1).0, 400);
    let (status, body) = move_range(&cluster, 1, 1, 0);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already"),
        "{body}"
    );

    // (node, range, to core): ranges 1 and 2 leave home on every node,
    // and some come back.
    let moves = [
        (1, 1, 1),
        (2, 1, 1),
        (3, 2, 0),
        (1, 2, 0),
        (1, 1, 0),
        (3, 1, 1),
    ];
    // Each move waits for some load after the one before (a count, not a
    // pause, so a slow machine still moves under load).
    let load_runs = |when: &str| {
        let from = done.load(Ordering::Relaxed);
        assert!(
            common::eventually(Duration::from_secs(60), || {
                done.load(Ordering::Relaxed) >= from + MOVE_OPS_BETWEEN
            }),
            "the load stalled {when}"
        );
    };
    for (node, range, core) in moves {
        load_runs(&format!("before moving range {range} on node {node}"));
        let (status, body) = move_range(&cluster, node, range, core);
        assert_eq!(
            status, 200,
            "node {node}, range {range} to core {core}: {body}"
        );
        eprintln!("node {node}: {body}");
        assert_eq!(body["to_core"], core, "{body}");
    }
    load_runs("after the moves");
    stop.store(true, Ordering::Relaxed);
    runtime().block_on(async {
        for task in load {
            task.await.unwrap();
        }
    });
    // Where the ranges are now, as each node reports them.
    assert_eq!(cores_of_ranges(&cluster, 1), vec![0, 0, 0, 1]);
    assert_eq!(cores_of_ranges(&cluster, 2), vec![0, 1, 1, 1]);
    assert_eq!(cores_of_ranges(&cluster, 3), vec![0, 1, 0, 1]);

    // The last value of every key, read through each node, then checked
    // with the rest of its history.
    let readers: Vec<Client> = (1..=3).map(|id| cluster.client(id)).collect();
    let finals: Vec<Option<u64>> = runtime().block_on(async {
        let mut finals = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            let mut seen = Vec::new();
            for (node, reader) in readers.iter().enumerate() {
                let invoked = now();
                let read = reader.get(key).await.unwrap().map(|v| {
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
            finals.push(seen[0]);
        }
        finals
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
    eprintln!(
        "{} moves under load: {operations} operations recorded on {MOVE_KEYS} keys, {failed} \
         failed, every history linearizable",
        moves.len()
    );
    // Requests wait out a move instead of failing (measured: none fail;
    // a loaded machine may time one out).
    assert!(failed * 50 <= operations, "{failed} of {operations} failed");

    // A node killed after its moves starts with its ranges where they were
    // moved, and serves them.
    drop(readers);
    cluster.kill(2);
    cluster.start_node(2);
    assert_eq!(cores_of_ranges(&cluster, 2), vec![0, 1, 1, 1]);
    let client = cluster.client(2);
    runtime().block_on(async {
        for (key, last) in keys.iter().zip(&finals) {
            let read = client.get(key).await.unwrap().map(|v| {
                std::str::from_utf8(&v.value)
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            });
            assert_eq!(read, *last, "{key} after the restart");
        }
    });
}

/// A node that dies in the middle of a range move comes back with the
/// range on exactly one core, all its data, and no copy left on the other:
/// dying after the target imported the log (placement unchanged) keeps the
/// range where it was; dying after the placement was recorded (the source
/// not yet cleaned up) puts it on the target.
#[test]
fn a_node_that_dies_in_the_middle_of_a_range_move_keeps_the_range_on_one_core() {
    let _alone = one_cluster_at_a_time();
    let mut cluster = Cluster::start_with_ranges(2);
    cluster.wait_for_leaders();
    // Enough writes to range 1 that it snapshots (every 40 entries).
    let written: Vec<(String, String)> = (0..)
        .map(|i| format!("crash-mv:{i}"))
        .filter(|key| range_of(key) == 1)
        .take(120)
        .enumerate()
        .map(|(i, key)| (key, format!("v{i}")))
        .collect();
    let client = cluster.client(2);
    runtime().block_on(async {
        for (key, value) in &written {
            client.set(key, value).await.unwrap();
        }
    });
    drop(client);
    let data = cluster.dirs[&1].join("data");
    let snapshots_on = |core: usize| data.join(format!("core-{core}/raft-snapshots-range-1"));
    for (point, home_after) in [("imported", 0u64), ("placed", 1u64)] {
        // Restart node 1 with the failpoint armed, once its copy of range 1
        // has snapshots where it is now.
        cluster.kill(1);
        cluster.start_node_with_env(1, &[("TINKERDB_FAILPOINT_MOVE_EXIT_AT", point)]);
        let from = cores_of_ranges(&cluster, 1)[1] as usize;
        assert!(
            common::eventually(Duration::from_secs(30), || snapshots_on(from).exists()),
            "range 1 never snapshotted on core {from}"
        );
        let url = format!("http://{}/v1/ranges/1/move", cluster.nodes[&1].admin_addr);
        let died = reqwest::blocking::Client::new()
            .post(url)
            .json(&serde_json::json!({ "core": 1 - from }))
            .timeout(Duration::from_secs(60))
            .send();
        if let Ok(answer) = died {
            panic!(
                "the node should have died mid-move, it answered {}: {}",
                answer.status(),
                answer.text().unwrap_or_default()
            );
        }
        cluster.kill(1);
        cluster.start_node(1);
        let cores = cores_of_ranges(&cluster, 1);
        let expected = if home_after == 0 { from } else { 1 - from } as u64;
        assert_eq!(cores[1], expected, "after dying at {point}: {cores:?}");
        // The other core's copy is gone (its snapshots with it).
        assert!(
            !snapshots_on(1 - expected as usize).exists(),
            "a copy of range 1 stayed on core {} after dying at {point}",
            1 - expected
        );
        let client = cluster.client(1);
        runtime().block_on(async {
            for (key, value) in &written {
                let read = client.get(key).await.unwrap().map(|v| v.value);
                assert_eq!(
                    read,
                    Some(value.clone().into()),
                    "{key} after dying at {point}"
                );
            }
            client.set("after-crash", point).await.unwrap();
        });
        eprintln!(
            "died at {point}: range 1 on core {expected}, all {} keys read back",
            written.len()
        );
    }
    // And a move still works afterwards.
    let (status, body) = move_range(&cluster, 1, 1, 0);
    assert_eq!(status, 200, "{body}");
}

/// A range moved to another core keeps its share of every tenant's quota:
/// the replica there refuses the writes the other replicas refuse, so all
/// three hold the same keys (a fresh shard without quotas would apply
/// every write the leader's quota turned down, and diverge).
#[test]
fn a_moved_range_keeps_its_quota_share_and_its_replicas_agree() {
    let _alone = one_cluster_at_a_time();
    let tenants =
        "[[tenants]]\nname = \"default\"\n[[tenants]]\nname = \"capped\"\nmax_keys = 40\n";
    let cluster = Cluster::start_with_config(2, tenants);
    cluster.wait_for_leaders();
    // Range 1 (slots 4096..8192 of 4 ranges) holds a quarter of the
    // quota: 10 keys. It moves on every node.
    for node in 1..=3 {
        let (status, body) = move_range(&cluster, node, 1, 1);
        assert_eq!(status, 200, "node {node}: {body}");
    }
    let keys: Vec<String> = (0..)
        .map(|i| format!("q:{i}"))
        .filter(|key| {
            let slot = usize::from(tinkerdb_storage::hash_slot("capped", key.as_bytes()));
            slot * 4 / 16384 == 1
        })
        .take(30)
        .collect();
    let capped = |id: u64, stale: bool| {
        let config = ClientConfig::new(cluster.nodes[&id].addr.to_string())
            .tenant("capped")
            .stale_reads(stale)
            .request_timeout(Duration::from_secs(15));
        runtime().block_on(Client::connect(config)).unwrap()
    };
    let writer = capped(2, false);
    let mut written = 0;
    runtime().block_on(async {
        for key in &keys {
            match writer.set(key, "v").await {
                Ok(_) => written += 1,
                Err(error) => assert_eq!(
                    error.code(),
                    Some(tinkerdb_schemas::wire::ErrorCode::QuotaExceeded),
                    "{key}: {error}"
                ),
            }
        }
    });
    assert_eq!(written, 10, "range 1's share of 40 keys");
    // Every replica, read as it is (stale reads: no leader involved),
    // holds exactly those keys once it has applied the writes.
    let readers: Vec<Client> = (1..=3).map(|id| capped(id, true)).collect();
    for (node, reader) in readers.iter().enumerate() {
        let mut held = 0;
        let agreed = common::eventually(Duration::from_secs(30), || {
            held = runtime().block_on(reader.exists(&keys)).unwrap();
            held == 10
        });
        assert!(
            agreed,
            "node {} holds {held} of the keys, the others 10",
            node + 1
        );
    }
}
