//! Three Raft nodes in one process, each on its own glommio executor
//! (thread) with its own WAL directory and its own peer listener on
//! loopback: real sockets, real fsync. One group, replicated by all three.
//!
//! Checks: election, writes through any node (forwarded to the leader),
//! linearizable reads only on the leader, failover when the leader is cut
//! off (the fault layer of the transport), the isolated old leader neither
//! commits nor serves reads, catch-up after healing, and a restart that
//! rebuilds the state from the log.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use glommio::net::TcpListener;
use tinkerdb_replication::group::{self, CoreGroups, GroupSpec, ReadRefused};
use tinkerdb_replication::network::Peers;
use tinkerdb_replication::state_machine::Applier;
use tinkerdb_replication::transport::serve_peers;
use tinkerdb_replication::{Command, Node, NodeId, Response};

const GROUP: u64 = 7;

/// The test's state machine: a map, versions from a counter.
#[derive(Default)]
struct MapApplier {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    version: u64,
}

impl Applier for MapApplier {
    fn apply(&mut self, command: &Command) -> Response {
        self.version += 1;
        match command {
            Command::Put { key, value, .. } => {
                self.map.insert(key.clone(), value.clone());
                Response::Put {
                    version: self.version,
                }
            }
            Command::Delete { key, .. } => Response::Delete {
                existed: self.map.remove(key).is_some(),
            },
        }
    }
    fn dump(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.map).unwrap()
    }
    fn restore(&mut self, dump: &[u8]) -> Result<(), String> {
        self.map = postcard::from_bytes(dump).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// What the test asks a node's thread to do.
enum Ask {
    Write(Command, oneshot::Sender<Result<Response, String>>),
    Read(Vec<u8>, oneshot::Sender<Result<Option<Vec<u8>>, String>>),
    Leader(oneshot::Sender<Option<NodeId>>),
    Cut(NodeId, bool, oneshot::Sender<()>),
    Len(oneshot::Sender<usize>),
    Stop(oneshot::Sender<()>),
}

struct NodeThread {
    asks: async_channel::Sender<Ask>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        tenant: "default".into(),
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        expires_at_unix_ms: None,
    }
}

fn start_node(id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>, dir: PathBuf) -> NodeThread {
    let (asks, inbox) = async_channel::unbounded::<Ask>();
    let addrs = addrs.clone();
    let thread = std::thread::spawn(move || {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .make()
            .unwrap()
            .run(async move {
                let listener = TcpListener::bind(addrs[&id]).unwrap();
                let peers = Rc::new(Peers::new(
                    addrs
                        .iter()
                        .filter(|(p, _)| **p != id)
                        .map(|(p, a)| (*p, *a)),
                ));
                let groups: Rc<CoreGroups<MapApplier>> = Rc::new(CoreGroups::default());
                glommio::spawn_local(serve_peers(listener, groups.call_handler(peers.clone())))
                    .detach();
                let applier = Rc::new(RefCell::new(MapApplier::default()));
                let members = addrs
                    .iter()
                    .map(|(p, a)| (*p, Node::new(a.to_string())))
                    .collect();
                let spec = GroupSpec {
                    group: GROUP,
                    node_id: id,
                    members,
                    wal_dir: dir,
                };
                let raft = group::start(&spec, applier.clone(), peers.clone())
                    .await
                    .unwrap();
                groups.insert(GROUP, raft.clone());
                while let Ok(ask) = inbox.recv().await {
                    match ask {
                        Ask::Write(command, reply) => {
                            let raft = raft.clone();
                            let peers = peers.clone();
                            glommio::spawn_local(async move {
                                let outcome = group::write(&raft, &peers, GROUP, command)
                                    .await
                                    .map_err(|e| e.to_string());
                                let _ = reply.send(outcome);
                            })
                            .detach();
                        }
                        Ask::Read(key, reply) => {
                            let raft = raft.clone();
                            let applier = applier.clone();
                            let peers = peers.clone();
                            glommio::spawn_local(async move {
                                let barrier = group::read_barrier(&raft, &peers, GROUP).await;
                                let outcome = match barrier {
                                    Ok(()) => Ok(applier.borrow().map.get(&key).cloned()),
                                    Err(ReadRefused::Failed(error)) => Err(error.to_string()),
                                };
                                let _ = reply.send(outcome);
                            })
                            .detach();
                        }
                        Ask::Leader(reply) => {
                            let _ = reply.send(raft.current_leader().await);
                        }
                        Ask::Cut(peer, cut, reply) => {
                            peers.get(peer).unwrap().set_blocked(cut);
                            let _ = reply.send(());
                        }
                        Ask::Len(reply) => {
                            let _ = reply.send(applier.borrow().map.len());
                        }
                        Ask::Stop(reply) => {
                            raft.shutdown().await.unwrap();
                            let _ = reply.send(());
                            return;
                        }
                    }
                }
            });
    });
    NodeThread {
        asks,
        thread: Some(thread),
    }
}

impl NodeThread {
    fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Ask) -> T {
        let (reply, answer) = oneshot::channel();
        self.asks.send_blocking(make(reply)).unwrap();
        futures::executor::block_on(answer).unwrap()
    }
    fn write(&self, command: Command) -> Result<Response, String> {
        self.ask(|reply| Ask::Write(command, reply))
    }
    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.ask(|reply| Ask::Read(key.as_bytes().to_vec(), reply))
    }
    fn leader(&self) -> Option<NodeId> {
        self.ask(Ask::Leader)
    }
    fn len(&self) -> usize {
        self.ask(Ask::Len)
    }
    fn cut(&self, peer: NodeId, cut: bool) {
        self.ask(|reply| Ask::Cut(peer, cut, reply))
    }
    fn stop(mut self) {
        self.ask(Ask::Stop);
        self.thread.take().unwrap().join().unwrap();
    }
}

fn free_addrs(n: usize) -> BTreeMap<NodeId, SocketAddr> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (i as NodeId + 1, l.local_addr().unwrap()))
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tinkerdb-raft-{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A leader agreed by all the given nodes.
fn agreed_leader(nodes: &BTreeMap<NodeId, NodeThread>) -> NodeId {
    let mut leader = None;
    wait_for("a leader", Duration::from_secs(10), || {
        let seen: Vec<Option<NodeId>> = nodes.values().map(|n| n.leader()).collect();
        leader = seen[0];
        leader.is_some() && seen.iter().all(|s| *s == leader)
    });
    leader.unwrap()
}

#[test]
fn three_nodes_elect_replicate_fail_over_and_catch_up() {
    let addrs = free_addrs(3);
    let base = fresh_dir("cluster");
    let mut nodes: BTreeMap<NodeId, NodeThread> = addrs
        .keys()
        .map(|&id| (id, start_node(id, &addrs, base.join(format!("node-{id}")))))
        .collect();
    let leader = agreed_leader(&nodes);

    // Writes through every node (followers forward to the leader).
    let mut acked = Vec::new();
    for i in 0..90 {
        let via = (i % 3) as NodeId + 1;
        let key = format!("k{i}");
        match nodes[&via].write(put(&key, &format!("v{i}"))) {
            Ok(Response::Put { .. }) => acked.push(key),
            other => panic!("write {i} via {via}: {other:?}"),
        }
    }
    // Linearizable reads on every node (a follower gets the leader's read
    // index and catches up to it) see every acknowledged write.
    for (i, key) in acked.iter().enumerate() {
        let via = (i % 3) as NodeId + 1;
        assert!(nodes[&via].read(key).unwrap().is_some(), "{key} via {via}");
    }

    // Cut the leader off from both followers, both ways.
    let others: Vec<NodeId> = addrs.keys().copied().filter(|id| *id != leader).collect();
    for &other in &others {
        nodes[&leader].cut(other, true);
        nodes[&other].cut(leader, true);
    }
    let cut_at = Instant::now();
    // The majority elects a new leader and takes writes again.
    let mut new_leader = None;
    wait_for(
        "a new leader on the majority side",
        Duration::from_secs(10),
        || {
            let seen: Vec<Option<NodeId>> = others.iter().map(|id| nodes[id].leader()).collect();
            new_leader = seen[0].filter(|l| *l != leader && seen.iter().all(|s| *s == seen[0]));
            new_leader.is_some()
        },
    );
    let failover = cut_at.elapsed();
    let new_leader = new_leader.unwrap();
    for i in 90..150 {
        let key = format!("k{i}");
        let via = others[i % 2];
        nodes[&via].write(put(&key, "after")).unwrap();
        acked.push(key);
    }
    // The isolated old leader can neither commit nor serve a read.
    let stranded = nodes[&leader].write(put("stranded", "x"));
    assert!(
        stranded.is_err(),
        "an isolated leader committed: {stranded:?}"
    );
    let stale = nodes[&leader].read("k100");
    assert!(
        stale.is_err(),
        "an isolated leader served a read: {stale:?}"
    );

    // Heal: the old leader rejoins as a follower and catches up by log.
    for &other in &others {
        nodes[&leader].cut(other, false);
        nodes[&other].cut(leader, false);
    }
    wait_for(
        "the old leader to catch up",
        Duration::from_secs(10),
        || nodes[&leader].len() >= acked.len(),
    );
    for key in &acked {
        assert!(
            nodes[&new_leader].read(key).unwrap().is_some(),
            "{key} lost"
        );
    }

    // Restart a follower from its WAL: the log rebuilds its state.
    let restarted = others
        .iter()
        .copied()
        .find(|id| *id != new_leader)
        .unwrap_or(leader);
    nodes.remove(&restarted).unwrap().stop();
    nodes.insert(
        restarted,
        start_node(restarted, &addrs, base.join(format!("node-{restarted}"))),
    );
    wait_for(
        "the restarted node to replay its log",
        Duration::from_secs(10),
        || nodes[&restarted].len() >= acked.len(),
    );
    eprintln!(
        "failover: new leader {new_leader} within {failover:?} of cutting off {leader}; {} writes acknowledged, none lost",
        acked.len()
    );
    for (_, node) in std::mem::take(&mut nodes) {
        node.stop();
    }
    let _ = std::fs::remove_dir_all(&base);
}
