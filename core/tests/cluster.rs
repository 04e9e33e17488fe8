//! Cluster mode with real processes: three nodes of two cores each on
//! loopback (so two Raft groups, each replicated on all three nodes),
//! driven through the Rust client.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::TestNode;
use tinkerdb_client::{Client, ClientConfig};

const CORES: usize = 2;

/// Three Raft base ports, each with the next `CORES - 1` ports free too.
fn raft_ports() -> Vec<u16> {
    let mut ports = Vec::new();
    while ports.len() < 3 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port();
        drop(probe);
        let all_free = (0..CORES as u16).all(|c| {
            base.checked_add(c)
                .is_some_and(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        });
        if all_free && ports.iter().all(|p: &u16| p.abs_diff(base) > CORES as u16) {
            ports.push(base);
        }
    }
    ports
}

struct Cluster {
    nodes: BTreeMap<u64, TestNode>,
    dirs: BTreeMap<u64, PathBuf>,
    peers: String,
}

impl Cluster {
    fn start() -> Cluster {
        let ports = raft_ports();
        let peers = (1..=3)
            .map(|id| format!("{id}=127.0.0.1:{}", ports[id as usize - 1]))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            dirs: BTreeMap::new(),
            peers,
        };
        for id in 1..=3 {
            let dir = common::fresh_dir();
            cluster.dirs.insert(id, dir);
            cluster.start_node(id);
        }
        cluster
    }

    fn start_node(&mut self, id: u64) {
        let args = vec![
            "--node-id".to_string(),
            id.to_string(),
            "--peers".to_string(),
            self.peers.clone(),
        ];
        let node = TestNode::start_with_args(CORES, "", &self.dirs[&id], &[], &args);
        self.nodes.insert(id, node);
    }

    /// Kills node `id` with SIGKILL, keeping its files.
    fn kill(&mut self, id: u64) {
        let node = self.nodes.remove(&id).unwrap();
        let dir = node.crash();
        assert_eq!(dir, self.dirs[&id]);
    }

    fn client(&self, id: u64) -> Client {
        let config = ClientConfig::new(self.nodes[&id].addr.to_string())
            .request_timeout(Duration::from_secs(15));
        runtime().block_on(Client::connect(config)).unwrap()
    }

    /// Leaders of the groups, as node `id` sees them.
    fn leaders(&self, id: u64) -> Vec<Option<u64>> {
        let url = format!("http://{}/v1/cluster", self.nodes[&id].admin_addr);
        let body: serde_json::Value = reqwest::blocking::get(url).unwrap().json().unwrap();
        assert_eq!(body["mode"], "raft", "{body}");
        body["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|shard| shard["leader"].as_u64())
            .collect()
    }
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
    let mut cluster = Cluster::start();
    let mut agreed = Vec::new();
    assert!(
        common::eventually(Duration::from_secs(15), || {
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
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
    cluster.kill(victim);
    let killed_at = Instant::now();
    let clients: BTreeMap<u64, Client> = survivors
        .iter()
        .map(|&id| (id, cluster.client(id)))
        .collect();
    let mut slowest = Duration::ZERO;
    runtime().block_on(async {
        for i in 120..240 {
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
    eprintln!(
        "killed node {victim} (leader of group 0); slowest write after the kill {slowest:?}; \
         240 writes acknowledged in {:?}, none lost",
        killed_at.elapsed()
    );

    // The killed node restarts from its Raft log and catches up.
    cluster.start_node(victim);
    let client = cluster.client(victim);
    runtime().block_on(assert_all_readable(&client, &acked, "the restarted node"));
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
fn cluster_mode_refuses_what_it_does_not_replicate_yet() {
    let cluster = Cluster::start();
    let client = cluster.client(1);
    runtime().block_on(async {
        client.set("k", "v").await.unwrap();
        let error = client.compare_and_set("k", 1, "w", None).await.unwrap_err();
        assert_eq!(
            error.code(),
            Some(tinkerdb_client::ErrorCode::InvalidArgument),
            "{error}"
        );
        assert_eq!(client.get("k").await.unwrap().unwrap().value, "v");
    });
}
