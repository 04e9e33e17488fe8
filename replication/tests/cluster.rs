//! Three Raft nodes in one process, each on its own glommio executor
//! (thread) with its own WAL directory and its own peer listener on
//! loopback: real sockets, real fsync. One group, replicated by all three.
//!
//! Checks: election, writes through any node (forwarded to the leader),
//! linearizable reads only on the leader, failover when the leader is cut
//! off (the fault layer of the transport), the isolated old leader neither
//! commits nor serves reads, catch-up after healing, and a restart that
//! rebuilds the state from the log.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use tinkerdb_replication::{NodeId, Response};

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
        Duration::from_secs(60),
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
        Duration::from_secs(60),
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
        Duration::from_secs(60),
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
