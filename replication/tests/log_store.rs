//! The WAL-backed Raft log store: openraft's conformance suite and restarts,
//! on real WAL directories (real `fdatasync`) inside glommio executors.
//!
//! openraft's suite also exercises a state machine: the crate's own
//! `StateMachine`, over an applier that only counts commands.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{RaftLogReader, StorageError};
use openraft_rt::{AsyncRuntime, Oneshot};
use tinkerdb_replication::log_store::RECORD_KIND_RAFT_ENTRY;
use tinkerdb_replication::state_machine::{Applier, StateMachine, WholeCopy};
use tinkerdb_replication::{
    Command, Entry, GlommioRuntime, LogId, Membership, Response, TypeConfig, Vote, WalLogStore,
};

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "tinkerdb-raft-log-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }

    /// The path, no longer removed on drop.
    fn keep(self) -> PathBuf {
        std::mem::ManuallyDrop::new(self).0.clone()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Counts applied commands: the crate's own `StateMachine` needs nothing
/// more to run openraft's suite.
#[derive(Default)]
struct CountingApplier {
    applied_commands: u64,
    snapshot: WholeCopy,
}

impl Applier for CountingApplier {
    fn apply(&mut self, _command: &Command) -> Response {
        self.applied_commands += 1;
        Response::Put {
            version: self.applied_commands,
        }
    }
    fn begin_snapshot(&mut self, _last_index: u64) -> Result<(), String> {
        self.snapshot
            .begin(self.applied_commands.to_le_bytes().to_vec())
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
        let bytes: [u8; 8] = data
            .try_into()
            .map_err(|_| "a snapshot of this applier is 8 bytes".to_string())?;
        self.applied_commands = u64::from_le_bytes(bytes);
        Ok(())
    }
}

type TestStateMachine = StateMachine<CountingApplier>;

/// Builds each suite case on a fresh WAL directory.
struct Builder;

/// A suite case's directory, removed only once the whole suite is over.
/// The suite drops a case's guard while the case's WAL writer task may
/// still run on the executor (it ends when it sees its handle gone), and
/// removing the directory under a writer that is preparing its next
/// segment makes glommio's open panic (a `statfs` of the vanished file,
/// unwrapped inside glommio): a failure of the test's teardown, not of
/// the store.
struct SuiteDir(PathBuf);

static SUITE_DIRS: std::sync::Mutex<Vec<TempDir>> = std::sync::Mutex::new(Vec::new());

impl Drop for SuiteDir {
    fn drop(&mut self) {
        let dir = TempDir(std::mem::take(&mut self.0));
        SUITE_DIRS.lock().unwrap().push(dir);
    }
}

impl StoreBuilder<TypeConfig, WalLogStore, TestStateMachine, SuiteDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(SuiteDir, WalLogStore, TestStateMachine), StorageError<TypeConfig>> {
        let path = TempDir::new("suite").keep();
        let store = WalLogStore::open(&path).expect("open a fresh WAL");
        let applier = Rc::new(RefCell::new(CountingApplier::default()));
        let state_machine = StateMachine::open(applier, &path.join("snapshots")).expect("open");
        Ok((SuiteDir(path), store, state_machine))
    }
}

#[test]
fn openraft_log_store_suite_passes() {
    GlommioRuntime::new(1).block_on(async {
        Suite::test_all(Builder)
            .await
            .expect("openraft's log store suite");
    });
    // The executor has ended: no task of any case can touch its directory.
    SUITE_DIRS.lock().unwrap().clear();
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId {
        leader_id: openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 },
        index,
    }
}

fn put(term: u64, index: u64) -> Entry {
    Entry::new_normal(
        log_id(term, index),
        Command::Put {
            tenant: "acme".into(),
            key: format!("key-{index}").into_bytes(),
            value: vec![index as u8; 100],
            expires_at_unix_ms: Some(1_700_000_000_000 + index),
        },
    )
}

/// Appends and waits until the WAL says the entries are durable.
async fn append_durably(store: &mut WalLogStore, entries: Vec<Entry>) {
    let (done, flushed) = <GlommioRuntime as AsyncRuntime>::Oneshot::channel();
    store
        .append(entries, IOFlushed::signal(done))
        .await
        .unwrap();
    flushed.await.unwrap().unwrap();
}

/// Runs one "life" of a store on `dir` in its own executor, as a restarted
/// process would.
fn life<T: 'static>(dir: &Path, body: impl AsyncFnOnce(WalLogStore) -> T) -> T {
    let dir = dir.to_owned();
    GlommioRuntime::new(1).block_on(async move {
        let store = WalLogStore::open(&dir).expect("recover the Raft log");
        body(store).await
    })
}

fn vote(term: u64, node_id: u64, committed: bool) -> Vote {
    openraft::impls::Vote {
        leader_id: openraft::impls::leader_id_adv::LeaderId { term, node_id },
        committed,
    }
}

#[test]
fn entries_and_vote_survive_a_restart() {
    let dir = TempDir::new("restart");
    let membership = Membership::new(
        vec![BTreeSet::from([1, 2, 3])],
        [1, 2, 3]
            .map(|id| {
                (
                    id,
                    openraft::BasicNode {
                        addr: format!("127.0.0.1:{}", 7000 + id),
                    },
                )
            })
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>(),
    )
    .unwrap();
    let written = life(&dir.0, async |mut store| {
        store.save_vote(&vote(1, 1, false)).await.unwrap();
        let mut entries = vec![Entry::new_membership(log_id(1, 0), membership.clone())];
        entries.extend((1..=50).map(|index| put(1, index)));
        // Not waiting for durability between appends: group commit.
        let (done, flushed) = <GlommioRuntime as AsyncRuntime>::Oneshot::channel();
        store
            .append(entries[..20].to_vec(), IOFlushed::noop())
            .await
            .unwrap();
        store
            .append(entries[20..].to_vec(), IOFlushed::signal(done))
            .await
            .unwrap();
        // Readable before durable.
        let mut reader = store.get_log_reader().await;
        assert_eq!(reader.try_get_log_entries(0..=50).await.unwrap().len(), 51);
        flushed.await.unwrap().unwrap();
        store.save_vote(&vote(2, 3, true)).await.unwrap();
        // Persisted in the background; sync_committed waits for it.
        store.save_committed(Some(log_id(1, 40))).await.unwrap();
        store.sync_committed().await.unwrap();
        assert_eq!(store.durable_committed(), Some(log_id(1, 40)));
        entries
    });
    life(&dir.0, async |mut store| {
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 50)));
        assert_eq!(state.last_purged_log_id, None);
        assert_eq!(store.read_vote().await.unwrap(), Some(vote(2, 3, true)));
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 40)));
        assert_eq!(store.try_get_log_entries(..).await.unwrap(), written);
        // A vote write carries the newest committed id along, whether or
        // not the background writer got to it first.
        store.save_committed(Some(log_id(1, 45))).await.unwrap();
        store.save_vote(&vote(3, 3, false)).await.unwrap();
        append_durably(&mut store, vec![put(3, 51)]).await;
    });
    life(&dir.0, async |mut store| {
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 45)));
        assert_eq!(store.read_vote().await.unwrap(), Some(vote(3, 3, false)));
        let entries = store.try_get_log_entries(49..).await.unwrap();
        assert_eq!(entries, vec![put(1, 49), put(1, 50), put(3, 51)]);
    });
}

#[test]
fn truncation_and_purge_survive_a_restart_without_holes() {
    let dir = TempDir::new("truncate-purge");
    life(&dir.0, async |mut store| {
        append_durably(&mut store, (0..=30).map(|index| put(1, index)).collect()).await;
        // A new leader overwrote 21..: truncate after 20, append term 2.
        store.truncate_after(Some(log_id(1, 20))).await.unwrap();
        append_durably(&mut store, (21..=25).map(|index| put(2, index)).collect()).await;
        // Not yet durable when the restart comes: readable now, maybe gone later.
        store.purge(log_id(1, 10)).await.unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 10)));
        assert_eq!(state.last_log_id, Some(log_id(2, 25)));
    });
    life(&dir.0, async |mut store| {
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 10)));
        assert_eq!(state.last_log_id, Some(log_id(2, 25)));
        let entries = store.try_get_log_entries(..).await.unwrap();
        let expected: Vec<Entry> = (11..=20)
            .map(|index| put(1, index))
            .chain((21..=25).map(|index| put(2, index)))
            .collect();
        assert_eq!(entries, expected);
        // Truncate everything live, then continue; then install a snapshot
        // past the end (purge beyond the last entry: Raft indexes jump
        // while WAL indexes stay dense).
        store.truncate_after(Some(log_id(1, 10))).await.unwrap();
        assert_eq!(
            store.get_log_state().await.unwrap().last_log_id,
            Some(log_id(1, 10))
        );
        append_durably(&mut store, (11..=12).map(|index| put(3, index)).collect()).await;
        store.purge(log_id(4, 1000)).await.unwrap();
        assert!(store.try_get_log_entries(..).await.unwrap().is_empty());
        append_durably(
            &mut store,
            (1001..=1003).map(|index| put(4, index)).collect(),
        )
        .await;
    });
    life(&dir.0, async |mut store| {
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(4, 1000)));
        assert_eq!(state.last_log_id, Some(log_id(4, 1003)));
        let entries = store.try_get_log_entries(..).await.unwrap();
        assert_eq!(
            entries,
            (1001..=1003).map(|index| put(4, index)).collect::<Vec<_>>()
        );
        // Keep going after the jump: truncate inside it, append, purge into it.
        store.truncate_after(Some(log_id(4, 1001))).await.unwrap();
        append_durably(&mut store, vec![put(5, 1002)]).await;
        store.purge(log_id(4, 1001)).await.unwrap();
    });
    life(&dir.0, async |mut store| {
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(4, 1001)));
        assert_eq!(
            store.try_get_log_entries(..).await.unwrap(),
            vec![put(5, 1002)]
        );
    });
}

#[test]
fn purge_deletes_wal_segments_and_restart_still_works() {
    // 16 MiB segments: about 2.5 MiB entries make several of them quickly.
    let dir = TempDir::new("segments");
    let big = |index: u64| {
        Entry::new_normal(
            log_id(1, index),
            Command::Put {
                tenant: "acme".into(),
                key: index.to_le_bytes().to_vec(),
                value: vec![7; 5 << 19],
                expires_at_unix_ms: None,
            },
        )
    };
    let segments = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|entry| {
                entry
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".wal")
            })
            .count()
    };
    life(&dir.0, async |mut store| {
        for index in 0..20 {
            append_durably(&mut store, vec![big(index)]).await;
        }
    });
    let before = segments(&dir.0);
    assert!(before >= 3, "{before} segments");
    life(&dir.0, async |mut store| {
        store.purge(log_id(1, 15)).await.unwrap();
    });
    let after = segments(&dir.0);
    assert!(
        after < before,
        "purge deleted no segment ({before} -> {after})"
    );
    life(&dir.0, async |mut store| {
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 15)));
        let entries = store.try_get_log_entries(..).await.unwrap();
        assert_eq!(entries, (16..20).map(big).collect::<Vec<_>>());
        append_durably(&mut store, vec![big(20)]).await;
    });
    life(&dir.0, async |mut store| {
        assert_eq!(
            store.get_log_state().await.unwrap().last_log_id,
            Some(log_id(1, 20))
        );
    });
}

#[test]
fn the_wal_holds_only_raft_entry_records() {
    assert_eq!(RECORD_KIND_RAFT_ENTRY, 2);
    assert_ne!(
        RECORD_KIND_RAFT_ENTRY,
        tinkerdb_storage::log_op::RECORD_KIND_KV
    );
}
