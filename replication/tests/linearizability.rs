//! Linearizability under partitions, checked on recorded histories.
//!
//! Three nodes (see `common`); clients on three threads run random writes
//! and linearizable reads of a few keys through random nodes while the
//! leader is cut off and healed. Every operation is recorded with its
//! invocation and completion times; each key's history is then checked for
//! linearizability as a register (Wing-Gong search with memoisation:
//! find an order of the operations that respects real time, in which every
//! read returns the latest write). A write that failed may or may not have
//! taken effect: it may be placed anywhere after its invocation, or nowhere.
//!
//! The negative control reads local state without the read index on a node
//! cut off from the majority; the checker must flag that history.

mod common;
#[path = "common/register.rs"]
mod register;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use register::{linearizable, Op, UNKNOWN};
use tinkerdb_replication::NodeId;

fn decode(value: Option<Vec<u8>>) -> Option<u64> {
    value.map(|bytes| String::from_utf8(bytes).unwrap().parse().unwrap())
}

#[test]
fn the_checker_accepts_and_rejects_textbook_histories() {
    register::self_test();
}

const KEYS: usize = 3;
const CLIENTS: usize = 6;
/// The checker's search keeps a key's remaining operations in a u64; a key
/// stops taking operations once it has this many (up to CLIENTS - 1 more
/// may be in flight then).
const MAX_OPS_PER_KEY: usize = register::MAX_OPS - CLIENTS;
/// Pause between a client's operations, so the 120-180 recorded operations
/// spread over the ~4 s of partitions.
const CLIENT_PACE: Duration = Duration::from_millis(40);

#[test]
fn histories_under_partitions_are_linearizable_and_stale_reads_are_caught() {
    let addrs = free_addrs(3);
    let base = fresh_dir("linearizability");
    let nodes: Arc<BTreeMap<NodeId, NodeThread>> = Arc::new(
        addrs
            .keys()
            .map(|&id| (id, start_node(id, &addrs, base.join(format!("node-{id}")))))
            .collect(),
    );
    let clock = Instant::now();
    let history: Arc<Mutex<Vec<Vec<Op>>>> = Arc::new(Mutex::new(vec![Vec::new(); KEYS]));
    let leader = agreed_leader(&nodes);
    let others: Vec<NodeId> = addrs.keys().copied().filter(|id| *id != leader).collect();

    // Clients: random ops through random nodes, one op at a time each.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (nodes, history, stop) = (nodes.clone(), history.clone(), stop.clone());
        clients.push(std::thread::spawn(move || {
            let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ client as u64;
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let mut counter = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = (next() % KEYS as u64) as usize;
                let via = (next() % 3) as NodeId + 1;
                // A full key gets no more operations: an unrecorded write
                // would make the recorded reads look wrong.
                if history.lock().unwrap()[key].len() >= MAX_OPS_PER_KEY {
                    std::thread::sleep(CLIENT_PACE);
                    continue;
                }
                let invoked = clock.elapsed().as_nanos();
                let op = if next() % 2 == 0 {
                    counter += 1;
                    let value = (client as u64) << 32 | counter;
                    let outcome = nodes[&via].write(put(&format!("k{key}"), &value.to_string()));
                    let returned = match outcome {
                        Ok(_) => clock.elapsed().as_nanos(),
                        Err(_) => UNKNOWN,
                    };
                    Op::write(value, invoked, returned)
                } else {
                    match nodes[&via].read(&format!("k{key}")) {
                        Ok(value) => Op::read(decode(value), invoked, clock.elapsed().as_nanos()),
                        // A refused read says nothing: not recorded.
                        Err(_) => continue,
                    }
                };
                {
                    let mut history = history.lock().unwrap();
                    history[key].push(op);
                }
                // Spread the operations over the whole fault schedule.
                std::thread::sleep(CLIENT_PACE);
            }
        }));
    }
    // Faults while the clients run: cut the leader off, heal, cut a
    // follower off, heal. Each phase lasts at least its pause and until
    // enough operations were recorded in it (counts, not pauses alone, so
    // that a busy machine, where operations are slow, still records a
    // history that exercises the partitions). Once every key is full,
    // nothing more is recorded: no wait then.
    let recorded_since = |since: u128| {
        history
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .filter(|op| op.invoked >= since)
            .count()
    };
    let all_full = || {
        history
            .lock()
            .unwrap()
            .iter()
            .all(|ops| ops.len() >= MAX_OPS_PER_KEY)
    };
    let pause = Duration::from_millis(1200);
    let mut windows = Vec::new();
    std::thread::sleep(Duration::from_millis(300));
    wait_for(
        "operations before the faults",
        Duration::from_secs(60),
        || recorded_since(0) >= 6 || all_full(),
    );
    for victim in [leader, others[0]] {
        for &other in addrs.keys().filter(|id| **id != victim) {
            nodes[&victim].cut(other, true);
            nodes[&other].cut(victim, true);
        }
        let cut = clock.elapsed().as_nanos();
        std::thread::sleep(pause);
        // Invoked after the cut and recorded before the heal: these overlap
        // the window.
        wait_for(
            "operations during the partition",
            Duration::from_secs(60),
            || recorded_since(cut) >= 4 || all_full(),
        );
        windows.push(cut..clock.elapsed().as_nanos());
        for &other in addrs.keys().filter(|id| **id != victim) {
            nodes[&victim].cut(other, false);
            nodes[&other].cut(victim, false);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_for("30 operations", Duration::from_secs(60), || {
        recorded_since(0) >= 30 || all_full()
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let history = history.lock().unwrap().clone();
    let total: usize = history.iter().map(Vec::len).sum();
    let during_partitions = history
        .iter()
        .flatten()
        // Overlapping a partition: invoked before it healed, answered (or
        // not) after it began.
        .filter(|op| {
            windows
                .iter()
                .any(|window| op.invoked < window.end && op.returned > window.start)
        })
        .count();
    let failed = history
        .iter()
        .flatten()
        .filter(|op| op.returned == UNKNOWN)
        .count();
    for (key, ops) in history.iter().enumerate() {
        assert!(
            linearizable(ops),
            "key k{key} is not linearizable: {ops:#?}"
        );
    }
    assert!(total >= 30, "too few operations recorded: {total}");
    assert!(
        during_partitions >= 8,
        "only {during_partitions} operations overlapped the partitions"
    );

    // Negative control: a node cut off from the majority serves a local
    // read without the read index after the majority took a newer write.
    let leader = agreed_leader(&nodes);
    let victim = *addrs.keys().find(|id| **id != leader).unwrap();
    let mut control = Vec::new();
    let t = || clock.elapsed().as_nanos();
    let invoked = t();
    nodes[&leader].write(put("control", "1")).unwrap();
    control.push(Op::write(1, invoked, t()));
    wait_for(
        "the victim to apply the first write",
        Duration::from_secs(60),
        || decode(nodes[&victim].read_local("control")) == Some(1),
    );
    for &other in addrs.keys().filter(|id| **id != victim) {
        nodes[&victim].cut(other, true);
        nodes[&other].cut(victim, true);
    }
    let invoked = t();
    nodes[&leader].write(put("control", "2")).unwrap();
    control.push(Op::write(2, invoked, t()));
    let invoked = t();
    let read = decode(nodes[&victim].read_local("control"));
    control.push(Op::read(read, invoked, t()));
    assert!(
        !linearizable(&control),
        "the checker missed a stale read: {control:?}"
    );
    // The same read with the read index is refused instead of stale.
    assert!(nodes[&victim].read("control").is_err());
    eprintln!(
        "{total} operations on {KEYS} keys by {CLIENTS} clients, {during_partitions} of them \
         overlapping 2 partitions ({failed} writes with unknown outcome): linearizable; the negative \
         control's stale read (value {read:?} after write 2) was flagged"
    );
    for &other in addrs.keys().filter(|id| **id != victim) {
        nodes[&victim].cut(other, false);
        nodes[&other].cut(victim, false);
    }
    let nodes = Arc::try_unwrap(nodes).unwrap_or_else(|_| panic!("clients still hold nodes"));
    for (_, node) in nodes {
        node.stop();
    }
    let _ = std::fs::remove_dir_all(&base);
}
