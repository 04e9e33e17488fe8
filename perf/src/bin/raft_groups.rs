//! `raft-groups`: what Raft groups cost a core when idle, and what they
//! carry when busy, by number of groups per core.
//!
//! Three nodes run in this process, each a glommio executor (one core's
//! worth) with its own peer listener on loopback, hosting `N` groups of the
//! real stack (`tinkerdb-replication`: WAL log store with fdatasync,
//! snapshots, the flatbuffers transport; every group on a node shares that
//! node's one connection per peer). For each `N`:
//! 1. idle: once every group has a leader, the CPU time the three executor
//!    threads use over a few seconds (heartbeats, election timers, ticks),
//!    as a share of one core per node;
//! 2. busy: one writer per group (one write in flight each) through the
//!    group's leader for a few seconds: writes per second in total.
//!
//! Two log layouts, in the same run: `shared` (what a node runs: one
//! `CoreLog` per core for every group on it, one `fdatasync` per flush for
//! all of them) and `per-group` (a `CoreLog` of its own per group, as before
//! the shared log: each group pays its own `fdatasync`). A log directory
//! costs 32 MiB of disk (16 MiB segments, one prepared ahead), so
//! `per-group` costs `3 x N x 32 MiB` while it runs.
//!
//! Every node runs health probes and hibernation as a TinkerDB node does
//! (`--hibernate-after-ms`, default `hibernate::HIBERNATE_AFTER`; 0 turns it
//! off); idle CPU is measured once the groups had time to fall asleep. With
//! `--busy N` only the first N groups get a writer (the others stay idle):
//! the latency of a busy range among idle ones.
//!
//!     cargo run --release -p tinkerdb-perf --bin raft-groups -- 1 8 32 64
//!     cargo run --release -p tinkerdb-perf --bin raft-groups -- --layout shared 64
//!     cargo run --release -p tinkerdb-perf --bin raft-groups -- --layout shared --busy 1 256

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use tinkerdb_replication::group::{self, CoreGroups, GroupRaft, GroupSpec};
use tinkerdb_replication::health::{self, HealthTable};
use tinkerdb_replication::hibernate;
use tinkerdb_replication::network::Peers;
use tinkerdb_replication::state_machine::{Applier, WholeCopy};
use tinkerdb_replication::transport::serve_peers_until;
use tinkerdb_replication::{Command, CoreLog, Node, NodeId, Response};

/// A state machine that counts what it applies (the cost measured is
/// Raft's, not a store's).
#[derive(Default)]
struct CountingApplier {
    applied: u64,
    snapshot: WholeCopy,
}

impl Applier for CountingApplier {
    fn apply(&mut self, _command: &Command) -> Response {
        self.applied += 1;
        Response::Put {
            version: self.applied,
        }
    }
    fn begin_snapshot(&mut self, _last_index: u64) -> Result<(), String> {
        self.snapshot.begin(self.applied.to_le_bytes().to_vec())
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
    fn restore(&mut self, data_file: &Path) -> Result<(), String> {
        let data = std::fs::read(data_file).map_err(|e| e.to_string())?;
        let bytes: [u8; 8] = data.try_into().map_err(|_| "8 bytes expected")?;
        self.applied = u64::from_le_bytes(bytes);
        Ok(())
    }
}

type Raft = GroupRaft<CountingApplier>;

enum Ask {
    /// How many of this node's groups know a leader, and which lead here.
    Leaders(oneshot::Sender<(usize, Vec<u64>)>),
    /// One writer per group this node leads among the first `busy`
    /// groups, for this long: each write's latency (us), and the WAL
    /// flushes (write + `fdatasync`) this node made meanwhile.
    Write(Duration, u64, oneshot::Sender<(Vec<u64>, u64)>),
    /// How many of this node's groups sleep (hibernation).
    Asleep(oneshot::Sender<usize>),
    /// The executor thread's Linux thread id (for its CPU time).
    ThreadId(oneshot::Sender<u32>),
    Stop(oneshot::Sender<()>),
}

fn thread_id() -> u32 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|path| path.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time a thread of this process has used (`/proc/.../schedstat`).
fn thread_cpu(tid: u32) -> Duration {
    let path = format!("/proc/self/task/{tid}/schedstat");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let nanos = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(nanos)
}

/// Where the groups of a node keep their Raft logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// One log per node (core) for all its groups.
    Shared,
    /// One log per group.
    PerGroup,
}

fn start_node(
    id: NodeId,
    addrs: BTreeMap<NodeId, SocketAddr>,
    groups: u64,
    dir: PathBuf,
    layout: Layout,
    hibernate_after: Duration,
) -> (async_channel::Sender<Ask>, std::thread::JoinHandle<()>) {
    let (asks, inbox) = async_channel::unbounded::<Ask>();
    let thread = std::thread::spawn(move || {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor")
            .run(async move {
                let listener = glommio::net::TcpListener::bind(addrs[&id]).expect("bind");
                let peers = Rc::new(Peers::new(
                    0,
                    addrs
                        .iter()
                        .filter(|(p, _)| **p != id)
                        .map(|(p, a)| (*p, *a)),
                    None,
                ));
                let table: Rc<CoreGroups<CountingApplier>> = Rc::new(CoreGroups::default());
                let (stop_serving, stop) = async_channel::bounded::<()>(1);
                let health = Rc::new(HealthTable::default());
                glommio::spawn_local(serve_peers_until(
                    listener,
                    table.call_handler(peers.clone()),
                    stop,
                ))
                .detach();
                let members: BTreeMap<NodeId, Node> = addrs
                    .iter()
                    .map(|(p, a)| (*p, Node::new(a.to_string())))
                    .collect();
                let mut rafts: Vec<Raft> = Vec::new();
                let shared_log = CoreLog::open(&dir.join("raft-log")).expect("open the log");
                let mut logs = vec![shared_log.clone()];
                for g in 0..groups {
                    let log = match layout {
                        Layout::Shared => shared_log.clone(),
                        Layout::PerGroup => {
                            let log =
                                CoreLog::open(&dir.join(format!("g{g}/raft-log"))).expect("open");
                            logs.push(log.clone());
                            log
                        }
                    };
                    let spec = GroupSpec {
                        group: g,
                        node_id: id,
                        members: members.clone(),
                        log,
                        snapshot_dir: dir.join(format!("g{g}/snapshots")),
                        snapshot_every_entries: group::SNAPSHOT_EVERY_ENTRIES,
                        logs_kept_after_snapshot: group::LOGS_KEPT_AFTER_SNAPSHOT,
                        initialize: true,
                    };
                    let applier = Rc::new(RefCell::new(CountingApplier::default()));
                    let raft = group::start(&spec, applier, peers.clone())
                        .await
                        .expect("group starts");
                    table.insert(g, raft.clone());
                    // Spread leaders over the nodes, as a TinkerDB node does.
                    if (g % addrs.len() as u64) + 1 == id {
                        let _ = raft.trigger().elect(false).await;
                    }
                    rafts.push(raft);
                }
                // Health probes and hibernation, as a node runs them.
                let members: Vec<(NodeId, String)> = addrs
                    .iter()
                    .filter(|(p, _)| **p != id)
                    .map(|(p, a)| (*p, a.to_string()))
                    .collect();
                glommio::spawn_local(health::probe_peers(
                    peers.clone(),
                    health.clone(),
                    move || members.clone(),
                ))
                .detach();
                if !hibernate_after.is_zero() {
                    glommio::spawn_local(hibernate::run(
                        table.clone(),
                        health.clone(),
                        id,
                        hibernate_after,
                    ))
                    .detach();
                }
                while let Ok(ask) = inbox.recv().await {
                    match ask {
                        Ask::Leaders(reply) => {
                            let mut known = 0;
                            let mut mine = Vec::new();
                            for (g, raft) in rafts.iter().enumerate() {
                                match raft.current_leader().await {
                                    Some(leader) if leader == id => {
                                        known += 1;
                                        mine.push(g as u64);
                                    }
                                    Some(_) => known += 1,
                                    None => {}
                                }
                            }
                            let _ = reply.send((known, mine));
                        }
                        Ask::Asleep(reply) => {
                            let asleep = (0..groups).filter(|g| hibernate::is_asleep(*g)).count();
                            let _ = reply.send(asleep);
                        }
                        Ask::Write(duration, busy, reply) => {
                            let flushes = || -> u64 {
                                logs.iter().map(|log| log.wal_stats().flushes.get()).sum()
                            };
                            let flushes_before = flushes();
                            let done = Rc::new(RefCell::new(Vec::<u64>::new()));
                            let deadline = Instant::now() + duration;
                            let mut writers = Vec::new();
                            for (g, raft) in rafts.iter().enumerate().take(busy as usize) {
                                if raft.current_leader().await != Some(id) {
                                    continue;
                                }
                                let raft = raft.clone();
                                let peers = peers.clone();
                                let done = done.clone();
                                writers.push(glommio::spawn_local(async move {
                                    let mut i = 0u64;
                                    while Instant::now() < deadline {
                                        let command = Command::Put {
                                            tenant: "default".into(),
                                            key: format!("k{}", i % 1000).into_bytes(),
                                            value: vec![7; 100],
                                            expires_at_unix_ms: None,
                                        };
                                        let started = Instant::now();
                                        if group::write(&raft, &peers, g as u64, command)
                                            .await
                                            .is_ok()
                                        {
                                            done.borrow_mut()
                                                .push(started.elapsed().as_micros() as u64);
                                        }
                                        i += 1;
                                    }
                                }));
                            }
                            for writer in writers {
                                writer.await;
                            }
                            let total = done.take();
                            let _ = reply.send((total, flushes() - flushes_before));
                        }
                        Ask::ThreadId(reply) => {
                            let _ = reply.send(thread_id());
                        }
                        Ask::Stop(reply) => {
                            for raft in &rafts {
                                let _ = raft.shutdown().await;
                            }
                            stop_serving.close();
                            let _ = reply.send(());
                            return;
                        }
                    }
                }
            });
    });
    (asks, thread)
}

fn ask<T>(node: &async_channel::Sender<Ask>, make: impl FnOnce(oneshot::Sender<T>) -> Ask) -> T {
    let (reply, answer) = oneshot::channel();
    node.send_blocking(make(reply)).expect("node alive");
    futures::executor::block_on(answer).expect("node answered")
}

fn free_addrs() -> BTreeMap<NodeId, SocketAddr> {
    let listeners: Vec<_> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (i as NodeId + 1, l.local_addr().expect("addr")))
        .collect()
}

/// Takes `--name value` out of `args`.
fn take_flag(args: &mut Vec<String>, name: &str) -> Option<String> {
    let at = args.iter().position(|arg| arg == name)?;
    let value = args.get(at + 1).cloned().unwrap_or_default();
    args.drain(at..(at + 2).min(args.len()));
    Some(value)
}

/// This process's resident memory, bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

fn percentile(sorted: &[u64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * quantile).round() as usize;
    sorted[at] as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let layouts = match take_flag(&mut args, "--layout").as_deref() {
        Some("shared") => vec![Layout::Shared],
        Some("per-group") => vec![Layout::PerGroup],
        Some("both") | None => vec![Layout::PerGroup, Layout::Shared],
        Some(other) => anyhow::bail!("--layout shared|per-group|both, not {other:?}"),
    };
    let hibernate_after = match take_flag(&mut args, "--hibernate-after-ms") {
        Some(ms) => Duration::from_millis(ms.parse()?),
        None => hibernate::HIBERNATE_AFTER,
    };
    let busy: Option<u64> = take_flag(&mut args, "--busy")
        .map(|n| n.parse())
        .transpose()?;
    let counts: Vec<u64> = args
        .iter()
        .map(|arg| arg.parse())
        .collect::<Result<_, _>>()?;
    let counts = if counts.is_empty() {
        vec![1, 8, 32, 64]
    } else {
        counts
    };
    let idle_for = Duration::from_secs(5);
    let write_for = Duration::from_secs(5);
    println!(
        "3 nodes x 1 core in one process; idle CPU over {idle_for:?} (hibernation after {hibernate_after:?}, 0 = off), \
         then one writer per busy group ({}) for {write_for:?}",
        busy.map_or("all".to_string(), |n| n.to_string())
    );
    println!(
        "{:>10} {:>7} {:>7} {:>9} {:>18} {:>10} {:>14} {:>10} {:>10} {:>12} {:>14}",
        "log",
        "groups",
        "asleep",
        "KiB/group",
        "idle CPU per core",
        "per group",
        "busy writes/s",
        "p50 ms",
        "p99 ms",
        "flushes/s",
        "CPU us/write"
    );
    for (&groups, &layout) in counts
        .iter()
        .flat_map(|groups| layouts.iter().map(move |layout| (groups, layout)))
    {
        let base =
            std::env::temp_dir().join(format!("tinkerdb-raft-groups-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let addrs = free_addrs();
        let rss_before = resident_bytes();
        let nodes: Vec<_> = addrs
            .keys()
            .map(|&id| {
                start_node(
                    id,
                    addrs.clone(),
                    groups,
                    base.join(format!("n{id}")),
                    layout,
                    hibernate_after,
                )
            })
            .collect();
        let started = Instant::now();
        loop {
            let known: usize = nodes.iter().map(|(n, _)| ask(n, Ask::Leaders).0).sum();
            if known == 3 * groups as usize {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "{groups} groups: no leader everywhere after 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Let start-up work (elections, first appends) settle, and the
        // groups fall asleep when hibernation is on.
        std::thread::sleep(Duration::from_secs(1));
        if !hibernate_after.is_zero() {
            std::thread::sleep(hibernate_after + Duration::from_secs(1));
        }
        let tids: Vec<u32> = nodes.iter().map(|(n, _)| ask(n, Ask::ThreadId)).collect();
        let before: Duration = tids.iter().map(|t| thread_cpu(*t)).sum();
        std::thread::sleep(idle_for);
        let used: Duration = tids.iter().map(|t| thread_cpu(*t)).sum::<Duration>() - before;
        let per_core = used.as_secs_f64() / idle_for.as_secs_f64() / 3.0 * 100.0;
        let asleep: usize = nodes.iter().map(|(n, _)| ask(n, Ask::Asleep)).sum();
        // What the groups hold idle: the executors' own memory included, so
        // one group's figure is an upper bound.
        let kib_per_group =
            resident_bytes().saturating_sub(rss_before) as f64 / 1024.0 / (3 * groups) as f64;
        let busy_before: Duration = tids.iter().map(|t| thread_cpu(*t)).sum();
        let answers: Vec<_> = nodes
            .iter()
            .map(|(n, _)| {
                let (reply, answer) = oneshot::channel();
                n.send_blocking(Ask::Write(write_for, busy.unwrap_or(groups), reply))
                    .expect("node alive");
                answer
            })
            .collect();
        let mut latencies = Vec::new();
        let mut flushes = 0;
        for answer in answers {
            let (node_latencies, node_flushes) =
                futures::executor::block_on(answer).expect("answer");
            latencies.extend(node_latencies);
            flushes += node_flushes;
        }
        latencies.sort_unstable();
        let writes = latencies.len() as u64;
        // The three nodes' executor threads: all the CPU a write costs.
        let busy_cpu = tids.iter().map(|t| thread_cpu(*t)).sum::<Duration>() - busy_before;
        let name = match layout {
            Layout::Shared => "shared",
            Layout::PerGroup => "per-group",
        };
        println!(
            "{name:>10} {groups:>7} {:>7} {kib_per_group:>9.0} {per_core:>17.1}% {:>9.2}% {:>14.0} {:>10.2} {:>10.2} {:>12.0} {:>14.1}",
            format!("{asleep}/{}", 3 * groups),
            per_core / groups as f64,
            writes as f64 / write_for.as_secs_f64(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            flushes as f64 / write_for.as_secs_f64(),
            busy_cpu.as_secs_f64() * 1e6 / writes.max(1) as f64
        );
        for (node, thread) in nodes {
            ask(&node, Ask::Stop);
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&base);
    }
    Ok(())
}
