//! A range that pins its core's shared log is made to let go
//! (`group::release_pinned_segments`): two one-voter groups on one
//! `CoreLog`, one busy (big writes, several segments, snapshots and purges
//! of its own), one idle after a few writes. The idle one's oldest entry
//! holds every segment back until the task makes it snapshot and purge;
//! then the segments go, and both groups keep their data.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{MapApplier, TEST_SNAPSHOT_EVERY};
use openraft::rt::WatchReceiver;
use openraft_rt::AsyncRuntime;
use tinkerdb_replication::group::{self, CoreGroups, GroupSpec};
use tinkerdb_replication::network::Peers;
use tinkerdb_replication::{Command, CoreLog, GlommioRuntime, Node};

fn put(key: String, bytes: usize) -> Command {
    Command::Put {
        tenant: "default".into(),
        key: key.into_bytes(),
        value: vec![7; bytes],
        expires_at_unix_ms: None,
    }
}

#[test]
fn an_idle_range_that_pins_the_log_is_made_to_snapshot_and_purge() {
    let dir = common::fresh_dir("janitor");
    let base = dir.clone();
    GlommioRuntime::new(1).block_on(async move {
        let log = CoreLog::open(&base.join("raft-log")).unwrap();
        let peers = Rc::new(Peers::new(
            0,
            std::iter::empty::<(u64, std::net::SocketAddr)>(),
            None,
        ));
        let groups: Rc<CoreGroups<MapApplier>> = Rc::new(CoreGroups::default());
        let mut rafts = BTreeMap::new();
        for range in [1u64, 2] {
            let spec = GroupSpec {
                group: range,
                node_id: 1,
                members: BTreeMap::from([(1, Node::new("127.0.0.1:1"))]),
                log: log.clone(),
                snapshot_dir: base.join(format!("snapshots-{range}")),
                snapshot_every_entries: TEST_SNAPSHOT_EVERY,
                logs_kept_after_snapshot: 5,
                initialize: true,
            };
            let applier = Rc::new(RefCell::new(MapApplier::default()));
            let raft = group::start(&spec, applier, peers.clone()).await.unwrap();
            groups.insert(range, raft.clone());
            rafts.insert(range, raft);
        }
        // Range 1: a few small writes, then nothing.
        for i in 0..10 {
            group::write(&rafts[&1], &peers, 1, put(format!("idle-{i}"), 100))
                .await
                .unwrap();
        }
        // Range 2: about 90 MiB, so several 16 MiB segments, snapshots and
        // purges of its own.
        for i in 0..70 {
            group::write(&rafts[&2], &peers, 2, put(format!("busy-{i}"), 1300 << 10))
                .await
                .unwrap();
        }
        log.reclaim_now().await;
        let pinned = log.segment_count().unwrap();
        assert!(pinned >= 5, "{pinned} segments: the test writes too little");
        // The idle range holds the log back, first of all (the busy one
        // keeps the entries since its last snapshot too).
        assert_eq!(
            log.ranges_pinning(2).unwrap().first(),
            Some(&1),
            "the idle range does not hold the log back: the test shows nothing"
        );
        glommio::spawn_local(group::release_pinned_segments(
            groups.clone(),
            log.clone(),
            2,
            Duration::from_millis(100),
        ))
        .detach();
        let deadline = Instant::now() + Duration::from_secs(30);
        while log.ranges_pinning(2).unwrap().contains(&1) || log.segment_count().unwrap() >= pinned
        {
            assert!(
                Instant::now() < deadline,
                "still pinned after 30 s: {:?}, {} segments",
                log.ranges_pinning(2).unwrap(),
                log.segment_count().unwrap()
            );
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
        let purged = rafts[&1]
            .metrics()
            .borrow_watched()
            .purged
            .map(|id| id.index);
        assert!(purged >= Some(10), "the idle range purged to {purged:?}");
        // Both still take writes; the idle one's data is in its state
        // machine and its snapshot.
        for range in [1u64, 2] {
            group::write(&rafts[&range], &peers, range, put("after".into(), 10))
                .await
                .unwrap();
        }
        for raft in rafts.values() {
            raft.shutdown().await.unwrap();
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
