//! After the WAL fails an `fdatasync`, the core's log acknowledges nothing
//! more and every range's store refuses every write; reads keep working. Its own test binary:
//! the WAL's failpoint is a process environment variable.

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::RaftLogReader;
use openraft_rt::{AsyncRuntime, Oneshot};
use tinkerdb_replication::{CoreLog, Entry, GlommioRuntime, LogId};

fn blank(index: u64) -> Entry {
    Entry::new_blank(LogId {
        leader_id: openraft::impls::leader_id_adv::LeaderId {
            term: 1,
            node_id: 1,
        },
        index,
    })
}

#[test]
fn a_failed_fsync_fails_the_append_and_every_later_write() {
    let dir = std::env::temp_dir().join(format!("tinkerdb-raft-log-poison-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The flush after 2 good ones fails as if fdatasync returned EIO. Set
    // before the WAL is opened (read once, at recovery); the only test here.
    std::env::set_var(tinkerdb_storage::wal::FAILPOINT_FSYNC_FAIL_AFTER, "2");
    let path = dir.clone();
    GlommioRuntime::new(1).block_on(async move {
        let log = CoreLog::open(&path).unwrap();
        let mut store = log.open_range(1).unwrap();
        let mut neighbour = log.open_range(2).unwrap();
        let mut results = Vec::new();
        for index in 0..3 {
            let (done, flushed) = <GlommioRuntime as AsyncRuntime>::Oneshot::channel();
            store
                .append(vec![blank(index)], IOFlushed::signal(done))
                .await
                .unwrap();
            results.push(flushed.await.unwrap().is_ok());
        }
        assert_eq!(results, [true, true, false], "the third flush failed");
        let (done, _flushed) = <GlommioRuntime as AsyncRuntime>::Oneshot::channel();
        assert!(store
            .append(vec![blank(3)], IOFlushed::signal(done))
            .await
            .is_err());
        assert!(store.truncate_after(None).await.is_err());
        assert!(store
            .save_vote(&openraft::impls::Vote {
                leader_id: openraft::impls::leader_id_adv::LeaderId {
                    term: 2,
                    node_id: 1
                },
                committed: false,
            })
            .await
            .is_err());
        assert!(store.purge(blank(0).log_id).await.is_err());
        assert!(store.save_committed(None).await.is_err());
        // The whole core's log failed: every other range refuses too.
        assert!(neighbour.save_committed(None).await.is_err());
        assert!(neighbour.truncate_after(None).await.is_err());
        assert!(log.drop_range(3).await.is_err());
        // Reads still answer from memory.
        assert_eq!(store.try_get_log_entries(..).await.unwrap().len(), 3);
    });
    let _ = std::fs::remove_dir_all(&dir);
}
