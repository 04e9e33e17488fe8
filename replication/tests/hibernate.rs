//! Hibernation of idle groups (`replication::hibernate`) on three real
//! nodes (executors, sockets, WALs): an idle group sleeps on every node,
//! a write through a follower wakes it and succeeds at once, it sleeps
//! again once quiet, a graceful hand-off of its leadership works while it
//! sleeps, and when the sleeping group's leader dies the other two notice
//! through their health probes, elect, and take writes.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use tinkerdb_replication::group;
use tinkerdb_replication::{NodeId, Response};

fn all_asleep(nodes: &BTreeMap<NodeId, NodeThread>) -> bool {
    nodes.values().all(|node| node.asleep())
}

#[test]
fn an_idle_group_sleeps_wakes_for_a_write_and_fails_over_when_its_leader_dies() {
    let addrs = free_addrs(3);
    let base = fresh_dir("hibernate");
    let mut nodes: BTreeMap<NodeId, NodeThread> = addrs
        .keys()
        .map(|&id| (id, start_node(id, &addrs, base.join(format!("node-{id}")))))
        .collect();
    let leader = agreed_leader(&nodes);
    assert!(matches!(
        nodes[&leader].write(put("before", "1")),
        Ok(Response::Put { .. })
    ));
    // Quiet: every node puts the group to sleep.
    wait_for(
        "the group asleep everywhere",
        Duration::from_secs(20),
        || all_asleep(&nodes),
    );
    // Asleep, it stays led and stable: no election while nobody talks.
    std::thread::sleep(TEST_HIBERNATE_AFTER * 2);
    assert!(all_asleep(&nodes));
    assert_eq!(
        agreed_leader(&nodes),
        leader,
        "a sleeping group changed leader"
    );

    // A follower woken (as by a request it then forwards) after a long
    // sleep does not depose its sleeping leader: the last heartbeat it saw
    // is long past its election timeout, so openraft would elect at once if
    // its timers ran before it heard from the leader again.
    let follower = *addrs.keys().find(|id| **id != leader).unwrap();
    nodes[&follower].wake();
    std::thread::sleep(group::ELECTION_TIMEOUT_MAX * 3);
    assert_eq!(
        agreed_leader(&nodes),
        leader,
        "a woken follower called an election against its sleeping leader"
    );

    // A write through a follower wakes the group and succeeds promptly.
    let started = Instant::now();
    assert!(matches!(
        nodes[&follower].write(put("woken", "2")),
        Ok(Response::Put { .. })
    ));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "a write to a sleeping group took {took:?}"
    );
    // Waking costs no election: the woken follower waits for its leader's
    // heartbeat instead of timing out on the old one.
    assert_eq!(
        agreed_leader(&nodes),
        leader,
        "a write through a follower of a sleeping group changed its leader"
    );
    assert!(
        !nodes[&leader].asleep(),
        "the leader stays asleep after a write"
    );
    assert_eq!(nodes[&follower].read("woken").unwrap(), Some(b"2".to_vec()));
    wait_for("the group asleep again", Duration::from_secs(20), || {
        all_asleep(&nodes)
    });

    // A graceful stop hands a sleeping group's leadership over at once
    // (it wakes the group to see which followers answer first: asleep for
    // over a second, no follower has acknowledged anything lately).
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let taker = nodes[&leader].hand_off();
    let hand_off = started.elapsed();
    let Some(taker) = taker else {
        panic!("no hand-off of a sleeping group's leadership");
    };
    assert_ne!(taker, leader);
    assert!(
        hand_off < Duration::from_secs(3),
        "the hand-off took {hand_off:?}"
    );
    assert_eq!(agreed_leader(&nodes), taker);
    let leader = taker;
    wait_for(
        "the group asleep after the hand-off",
        Duration::from_secs(20),
        || all_asleep(&nodes),
    );

    // The sleeping group's leader dies: the others see it down and elect.
    let died_at = Instant::now();
    nodes.remove(&leader).unwrap().stop();
    let mut new_leader = None;
    wait_for(
        "a new leader after the sleeping leader died",
        Duration::from_secs(30),
        || {
            let seen: Vec<Option<NodeId>> = nodes.values().map(|node| node.leader()).collect();
            new_leader = seen[0].filter(|l| *l != leader && seen.iter().all(|s| *s == seen[0]));
            new_leader.is_some()
        },
    );
    let failover = died_at.elapsed();
    let new_leader = new_leader.unwrap();
    assert!(matches!(
        nodes[&new_leader].write(put("after", "3")),
        Ok(Response::Put { .. })
    ));
    for node in nodes.values() {
        assert_eq!(node.read("before").unwrap(), Some(b"1".to_vec()));
        assert_eq!(node.read("woken").unwrap(), Some(b"2".to_vec()));
    }
    eprintln!(
        "failover of a sleeping group: {failover:?}, a write that woke it: {took:?}, a hand-off: {hand_off:?}"
    );
    for (_, node) in nodes {
        node.stop();
    }
    let _ = std::fs::remove_dir_all(&base);
}
