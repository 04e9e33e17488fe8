//! Snapshots, log purging and membership changes on three (then four)
//! Raft nodes in one process: real sockets, real WALs, real snapshot files.
//!
//! - A follower down while the leader snapshots and purges its log comes
//!   back and catches up by snapshot (its log could not be sent any more).
//! - Under a steady stream of writes, a fourth node joins (learner, catch
//!   up, voter through joint consensus), then the leader is removed; no
//!   acknowledged write is lost and the new member serves them all.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use tinkerdb_replication::group::MemberChange;
use tinkerdb_replication::NodeId;

#[test]
fn a_follower_behind_a_purged_log_catches_up_by_snapshot() {
    let addrs = free_addrs(3);
    let base = fresh_dir("snapshot-catch-up");
    let dir = |id: NodeId| base.join(format!("node-{id}"));
    let mut nodes: BTreeMap<NodeId, NodeThread> = addrs
        .keys()
        .map(|&id| (id, start_node(id, &addrs, dir(id))))
        .collect();
    let leader = agreed_leader(&nodes);
    for i in 0..20 {
        nodes[&leader]
            .write(put(&format!("early-{i}"), "v"))
            .unwrap();
    }
    let behind = addrs.keys().copied().find(|id| *id != leader).unwrap();
    wait_for(
        "the follower to have the early writes",
        Duration::from_secs(60),
        || nodes[&behind].len() == 20,
    );
    let behind_index = nodes[&behind].status().last_log_index.unwrap();
    nodes.remove(&behind).unwrap().stop();

    // Enough writes for several snapshots on the two live nodes: the
    // leader's log no longer holds what the stopped follower lacks.
    let writes = 6 * TEST_SNAPSHOT_EVERY as usize;
    for i in 0..writes {
        nodes[&leader]
            .write(put(&format!("late-{i}"), "v"))
            .unwrap();
    }
    // Snapshots and purges run in the background after the writes that
    // trigger them.
    let mut purged = None;
    wait_for(
        "the leader to purge past the stopped follower's log",
        Duration::from_secs(60),
        || {
            purged = nodes[&leader].status().purged_index;
            purged.is_some_and(|purged| purged > behind_index)
        },
    );
    let purged = purged.unwrap();
    // A later snapshot may still be committing in the background (its data
    // renamed into place, the older pair not yet deleted): wait for the
    // directory to settle on one pair rather than look once.
    let snapshot_files = || {
        let mut names: Vec<String> = std::fs::read_dir(dir(leader).join("snapshots"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| !name.ends_with(".tmp"))
            .collect();
        names.sort();
        names
    };
    let mut listed = Vec::new();
    wait_for(
        "one snapshot (data and meta), older ones deleted",
        Duration::from_secs(60),
        || {
            listed = snapshot_files();
            listed.len() == 2
        },
    );
    let stems: Vec<&str> = listed
        .iter()
        .map(|name| name.rsplit_once('.').unwrap().0)
        .collect();
    assert_eq!(stems[0], stems[1], "one pair: {listed:?}");

    // The follower restarts from its own (short) log; the leader can only
    // send it a snapshot.
    nodes.insert(behind, start_node(behind, &addrs, dir(behind)));
    let started = Instant::now();
    wait_for(
        "the follower to install the snapshot",
        Duration::from_secs(60),
        || nodes[&behind].len() == 20 + writes,
    );
    let caught_up = started.elapsed();
    let status = nodes[&behind].status();
    let installed = status
        .snapshot_index
        .expect("the follower holds a snapshot");
    assert!(
        installed > behind_index,
        "snapshot {installed} vs {behind_index}"
    );
    for i in (0..writes).step_by(37) {
        let key = format!("late-{i}");
        assert!(nodes[&behind].read(&key).unwrap().is_some(), "{key}");
    }

    // Every node restarts from snapshot + log suffix (their logs were purged).
    let ids: Vec<NodeId> = nodes.keys().copied().collect();
    for id in &ids {
        nodes.remove(id).unwrap().stop();
    }
    for id in &ids {
        nodes.insert(*id, start_node(*id, &addrs, dir(*id)));
    }
    for id in &ids {
        wait_for(
            "a restart from snapshot and log",
            Duration::from_secs(60),
            || nodes[id].len() == 20 + writes,
        );
    }
    eprintln!(
        "snapshot catch-up: follower stopped at index {behind_index}, leader purged to {purged}, \
         follower installed snapshot at {installed} and had all {} keys {caught_up:?} after restart",
        20 + writes
    );
    for (_, node) in std::mem::take(&mut nodes) {
        node.stop();
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn a_node_joins_and_the_leader_leaves_under_load() {
    let all_addrs = free_addrs(4);
    let seeds: BTreeMap<NodeId, _> = all_addrs
        .iter()
        .filter(|(id, _)| **id <= 3)
        .map(|(id, addr)| (*id, *addr))
        .collect();
    let base = fresh_dir("membership");
    let dir = |id: NodeId| base.join(format!("node-{id}"));
    // The seed nodes know only each other; node 4 is reached through the
    // address its membership entry gives.
    let mut nodes: BTreeMap<NodeId, NodeThread> = seeds
        .keys()
        .map(|&id| (id, start_node(id, &seeds, dir(id))))
        .collect();
    let first_leader = agreed_leader(&nodes);
    for i in 0..50 {
        nodes[&first_leader]
            .write(put(&format!("before-{i}"), "v"))
            .unwrap();
    }
    nodes.insert(4, start_node_with(4, &all_addrs, dir(4), false));

    let stop = AtomicBool::new(false);
    let acked = Mutex::new(Vec::<String>::new());
    let slowest = Mutex::new(Duration::ZERO);
    let failed = Mutex::new(Vec::<String>::new());
    // The node the load must no longer write through (0: none): the leader
    // about to be removed. Which node leads depends on how the election
    // went, and it may be node 2 or 3.
    let avoided = AtomicU64::new(0);
    let (joined, left) = std::thread::scope(|scope| {
        // Load: writes one after another through node 2 and node 3 (but
        // never through the node being removed), timed.
        scope.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut via = 2 + (i % 2) as NodeId;
                if via == avoided.load(Ordering::SeqCst) {
                    via = 5 - via;
                }
                let key = format!("during-{i}");
                let started = Instant::now();
                match nodes[&via].write(put(&key, "v")) {
                    Ok(_) => acked.lock().unwrap().push(key),
                    Err(error) => failed
                        .lock()
                        .unwrap()
                        .push(format!("{key} via {via}: {error}")),
                }
                let took = started.elapsed();
                let mut slowest = slowest.lock().unwrap();
                *slowest = (*slowest).max(took);
                i += 1;
            }
        });
        // Stops the load however this closure ends (a failed wait or change
        // panics, and the scope would wait for the writer forever).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop_load = StopOnDrop(&stop);
        // Each change starts once the load has made progress (a count of
        // writes, not a pause, so that a busy machine still runs every
        // change under load).
        let writes_reach = |n: usize, when: &str| {
            wait_for(
                &format!("{n} writes under load {when}"),
                Duration::from_secs(60),
                || acked.lock().unwrap().len() + failed.lock().unwrap().len() >= n,
            )
        };
        let writes_so_far = || acked.lock().unwrap().len() + failed.lock().unwrap().len();
        writes_reach(8, "before the join");
        // Add node 4 through a node that may not lead (forwarded).
        let join = nodes[&2].change(MemberChange::Add {
            id: 4,
            addr: all_addrs[&4].to_string(),
        });
        let joined = join.expect("node 4 joins");
        writes_reach(writes_so_far() + 8, "after the join");
        // Remove the current leader, asked through node 3. First the load
        // moves off it: once one more write has completed, none is in
        // flight through it.
        let leader = nodes[&2].leader().unwrap();
        avoided.store(leader, Ordering::SeqCst);
        writes_reach(writes_so_far() + 2, "before the removal");
        let left = nodes[&3]
            .change(MemberChange::Remove { id: leader })
            .map(|voters| (leader, voters));
        writes_reach((writes_so_far() + 8).max(21), "after the removal");
        stop.store(true, Ordering::Relaxed);
        (joined, left.expect("the leader is removed"))
    });
    let (removed, voters_after) = left;
    assert_eq!(joined, vec![1, 2, 3, 4], "voters after the join");
    let mut expected: Vec<NodeId> = vec![1, 2, 3, 4];
    expected.retain(|id| *id != removed);
    assert_eq!(voters_after, expected, "voters after removing {removed}");
    let failed = failed.into_inner().unwrap();
    assert!(
        failed.is_empty(),
        "writes failed during the changes (node {removed} removed): {failed:?}"
    );
    let acked = acked.into_inner().unwrap();
    assert!(
        acked.len() > 20,
        "only {} writes during the changes",
        acked.len()
    );

    // The new member has everything, and serves linearizable reads.
    let total = 50 + acked.len();
    let survivor = *expected.iter().find(|id| **id != 4).unwrap();
    wait_for(
        "node 4 to apply every write",
        Duration::from_secs(60),
        || nodes[&4].len() == total,
    );
    for key in acked.iter().step_by(7) {
        assert!(nodes[&4].read(key).unwrap().is_some(), "{key} on node 4");
    }
    let status = nodes[&survivor].status();
    let mut members: Vec<NodeId> = status.voters.iter().map(|(id, _)| *id).collect();
    members.sort();
    assert_eq!(members, expected);
    // The group keeps working without the removed node.
    let removed_node = nodes.remove(&removed).unwrap();
    removed_node.stop();
    nodes[&4].write(put("after", "v")).unwrap();
    assert!(nodes[&survivor].read("after").unwrap().is_some());
    eprintln!(
        "membership: node 4 joined (voters {joined:?}), leader {removed} removed (voters {voters_after:?}); \
         {} writes during the changes, none failed, slowest {:?}",
        acked.len(),
        slowest.into_inner().unwrap()
    );
    for (_, node) in std::mem::take(&mut nodes) {
        node.stop();
    }
    let _ = std::fs::remove_dir_all(&base);
}
