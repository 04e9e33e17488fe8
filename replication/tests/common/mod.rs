//! The harness of the cluster tests: Raft nodes on their own glommio
//! executors (threads) in this process, with real sockets and WALs, driven
//! by messages from the test thread.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use glommio::net::TcpListener;
use tinkerdb_replication::group::{
    self, CoreGroups, GroupSpec, GroupStatus, MemberChange, ReadRefused,
};
use tinkerdb_replication::health::{self, HealthTable};
use tinkerdb_replication::hibernate;
use tinkerdb_replication::network::Peers;
use tinkerdb_replication::state_machine::{Applier, WholeCopy};
use tinkerdb_replication::transport::serve_peers_until;
use tinkerdb_replication::{Command, CoreLog, Node, NodeId, Response};

/// The one group the tests run.
pub const GROUP: u64 = 7;

/// The test's state machine: a map, versions from a counter.
#[derive(Default)]
pub struct MapApplier {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    version: u64,
    snapshot: WholeCopy,
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
            Command::PutIf { .. } | Command::Ops { .. } | Command::Meta { .. } => {
                Response::Refused {
                    code: 0,
                    message: "the test applier has only puts and deletes".into(),
                }
            }
        }
    }
    fn begin_snapshot(&mut self, _last_index: u64) -> Result<(), String> {
        let copy = postcard::to_allocvec(&(&self.map, self.version)).unwrap();
        self.snapshot.begin(copy)
    }
    fn snapshot_step(&mut self) -> (Vec<u8>, bool) {
        self.snapshot.step()
    }
    fn finish_snapshot(&mut self) -> Vec<u8> {
        self.snapshot.finish()
    }
    fn abort_snapshot(&mut self) {
        self.snapshot.finish();
    }
    fn restore(&mut self, data_file: &std::path::Path) -> Result<(), String> {
        let data = std::fs::read(data_file).map_err(|e| e.to_string())?;
        (self.map, self.version) = postcard::from_bytes(&data).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// What the test asks a node's thread to do.
pub enum Ask {
    Write(Command, oneshot::Sender<Result<Response, String>>),
    Read(Vec<u8>, oneshot::Sender<Result<Option<Vec<u8>>, String>>),
    /// A read of local state with no read index (the negative control).
    ReadLocal(Vec<u8>, oneshot::Sender<Option<Vec<u8>>>),
    Leader(oneshot::Sender<Option<NodeId>>),
    Cut(NodeId, bool, oneshot::Sender<()>),
    Len(oneshot::Sender<usize>),
    Status(oneshot::Sender<GroupStatus>),
    Change(MemberChange, oneshot::Sender<Result<Vec<NodeId>, String>>),
    /// Whether the group sleeps on this node (`hibernate`).
    Asleep(oneshot::Sender<bool>),
    /// Wakes the group here as a request would, without a request.
    Wake(oneshot::Sender<()>),
    /// Hands this node's leadership to another voter (graceful stop).
    HandOff(oneshot::Sender<Option<NodeId>>),
    Stop(oneshot::Sender<()>),
}

/// The harness's groups hibernate after this much quiet (short, so tests
/// see it; every test runs with hibernation on, as a node does).
pub const TEST_HIBERNATE_AFTER: Duration = Duration::from_millis(600);

pub struct NodeThread {
    asks: async_channel::Sender<Ask>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn put(key: &str, value: &str) -> Command {
    Command::Put {
        tenant: "default".into(),
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        expires_at_unix_ms: None,
    }
}

/// Snapshot after this many entries in the tests (small, so that tests
/// with a few hundred writes snapshot and purge several times).
pub const TEST_SNAPSHOT_EVERY: u64 = 40;

pub fn start_node(id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>, dir: PathBuf) -> NodeThread {
    start_node_with(id, addrs, dir, true)
}

/// A node whose group starts with `addrs` as its members if `initialize`;
/// otherwise it waits to be added by a membership change (a joining node).
pub fn start_node_with(
    id: NodeId,
    addrs: &BTreeMap<NodeId, SocketAddr>,
    dir: PathBuf,
    initialize: bool,
) -> NodeThread {
    // RUST_LOG=openraft=debug shows a node's Raft decisions.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
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
                    GROUP,
                    addrs
                        .iter()
                        .filter(|(p, _)| **p != id)
                        .map(|(p, a)| (*p, *a)),
                    None,
                ));
                let groups: Rc<CoreGroups<MapApplier>> = Rc::new(CoreGroups::default());
                // Closed at Stop: the listener must not outlive this node
                // (a restarted node binds the same address).
                let (stop_serving, stop) = async_channel::bounded::<()>(1);
                let server = glommio::spawn_local(serve_peers_until(
                    listener,
                    groups.call_handler(peers.clone()),
                    stop,
                ))
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
                    log: CoreLog::open(&dir.join("raft-log")).unwrap(),
                    snapshot_dir: dir.join("snapshots"),
                    snapshot_every_entries: TEST_SNAPSHOT_EVERY,
                    logs_kept_after_snapshot: 5,
                    initialize,
                };
                let raft = group::start(&spec, applier.clone(), peers.clone())
                    .await
                    .unwrap();
                groups.insert(GROUP, raft.clone());
                // Health probes and hibernation, as a node runs them.
                let health = Rc::new(HealthTable::default());
                let members = {
                    let raft = raft.clone();
                    move || group::status(&raft, GROUP).other_members()
                };
                glommio::spawn_local(health::probe_peers(peers.clone(), health.clone(), members))
                    .detach();
                glommio::spawn_local(hibernate::run(
                    groups.clone(),
                    health,
                    id,
                    TEST_HIBERNATE_AFTER,
                ))
                .detach();
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
                        Ask::ReadLocal(key, reply) => {
                            let _ = reply.send(applier.borrow().map.get(&key).cloned());
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
                        Ask::Status(reply) => {
                            let _ = reply.send(group::status(&raft, GROUP));
                        }
                        Ask::Change(change, reply) => {
                            let raft = raft.clone();
                            let peers = peers.clone();
                            glommio::spawn_local(async move {
                                let outcome = group::change_members(&raft, &peers, GROUP, &change)
                                    .await
                                    .map_err(|e| e.to_string());
                                let _ = reply.send(outcome);
                            })
                            .detach();
                        }
                        Ask::Asleep(reply) => {
                            let _ = reply.send(hibernate::is_asleep(GROUP));
                        }
                        Ask::Wake(reply) => {
                            hibernate::wake(&raft, GROUP);
                            let _ = reply.send(());
                        }
                        Ask::HandOff(reply) => {
                            let raft = raft.clone();
                            glommio::spawn_local(async move {
                                let to = group::hand_off_leadership(
                                    &raft,
                                    GROUP,
                                    Duration::from_secs(5),
                                )
                                .await;
                                let _ = reply.send(to);
                            })
                            .detach();
                        }
                        Ask::Stop(reply) => {
                            raft.shutdown().await.unwrap();
                            // The listener and every accepted connection
                            // are closed when the server returns.
                            stop_serving.close();
                            server.await;
                            // Let calls in flight end and close their
                            // connections before the executor stops
                            // polling its tasks.
                            glommio::timer::sleep(Duration::from_millis(50)).await;
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
    pub fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Ask) -> T {
        let (reply, answer) = oneshot::channel();
        self.asks.send_blocking(make(reply)).unwrap();
        futures::executor::block_on(answer).unwrap()
    }
    pub fn write(&self, command: Command) -> Result<Response, String> {
        self.ask(|reply| Ask::Write(command, reply))
    }
    pub fn read_local(&self, key: &str) -> Option<Vec<u8>> {
        self.ask(|reply| Ask::ReadLocal(key.as_bytes().to_vec(), reply))
    }
    pub fn read(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.ask(|reply| Ask::Read(key.as_bytes().to_vec(), reply))
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.ask(Ask::Leader)
    }
    pub fn asleep(&self) -> bool {
        self.ask(Ask::Asleep)
    }
    pub fn hand_off(&self) -> Option<NodeId> {
        self.ask(Ask::HandOff)
    }
    pub fn wake(&self) {
        self.ask(Ask::Wake)
    }
    pub fn len(&self) -> usize {
        self.ask(Ask::Len)
    }
    pub fn status(&self) -> GroupStatus {
        self.ask(Ask::Status)
    }
    pub fn change(&self, change: MemberChange) -> Result<Vec<NodeId>, String> {
        self.ask(|reply| Ask::Change(change, reply))
    }
    pub fn cut(&self, peer: NodeId, cut: bool) {
        self.ask(|reply| Ask::Cut(peer, cut, reply))
    }
    pub fn stop(mut self) {
        self.ask(Ask::Stop);
        self.thread.take().unwrap().join().unwrap();
    }
}

/// `n` loopback addresses for nodes, taken below Linux's ephemeral range
/// (32768 and up): a node restarted in a test binds its address again, and
/// an outgoing connection must never have been given that port by the
/// kernel meanwhile. A counter keeps the tests of this process (run in
/// parallel) apart.
pub fn free_addrs(n: usize) -> BTreeMap<NodeId, SocketAddr> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20_000 + (std::process::id() % 1_000) as u16 * 10;
    let mut addrs = BTreeMap::new();
    while addrs.len() < n {
        let port = start + NEXT.fetch_add(1, Ordering::Relaxed) % 2_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            let id = addrs.len() as NodeId + 1;
            addrs.insert(id, SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    addrs
}

/// Polls `check` until it holds; fails after `timeout`. Callers give long
/// limits (a busy machine, CI, may take many times the usual time).
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tinkerdb-raft-{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A leader agreed by all the given nodes.
pub fn agreed_leader(nodes: &BTreeMap<NodeId, NodeThread>) -> NodeId {
    let mut leader = None;
    wait_for("a leader", Duration::from_secs(60), || {
        let seen: Vec<Option<NodeId>> = nodes.values().map(|n| n.leader()).collect();
        leader = seen[0];
        leader.is_some() && seen.iter().all(|s| *s == leader)
    });
    leader.unwrap()
}
