//! The core's shared Raft log ([`CoreLog`]): openraft's conformance suite
//! on one range while other ranges of the same log write, truncate and
//! purge beside it, and restarts of logs with interleaved ranges, on real
//! WAL directories (real `fdatasync`) inside glommio executors.
//!
//! openraft's suite also exercises a state machine: the crate's own
//! `StateMachine`, over an applier that only counts commands.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{RaftLogReader, StorageError};
use openraft_rt::{AsyncRuntime, Oneshot};
use tinkerdb_replication::log_store::{RangeLogStore, LEGACY_RECORD_KIND_GROUP_ENTRY};
use tinkerdb_replication::state_machine::{Applier, StateMachine, WholeCopy};
use tinkerdb_replication::{
    Command, CoreLog, Entry, GlommioRuntime, LogId, Membership, RangeId, Response, TypeConfig, Vote,
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

/// Builds each suite case as a fresh range of one shared log, with a
/// neighbour range writing beside it for as long as the case runs. The
/// suite wants a `Send` builder: the log itself (`!Send`, one core's) is
/// kept in a thread local of the suite's executor.
struct Builder {
    next_range: AtomicU64,
}

thread_local! {
    static SUITE_LOG: RefCell<Option<CoreLog>> = const { RefCell::new(None) };
}

fn suite_log() -> CoreLog {
    SUITE_LOG.with(|log| log.borrow().clone().expect("the suite's log is open"))
}

/// A suite case's guard: stops its neighbour when the case is over.
struct CaseGuard {
    stop: Arc<AtomicBool>,
}

impl Drop for CaseGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A neighbour range: appends, truncates and purges its own log while the
/// suite's range is under test, so every suite case runs on a stream where
/// another range's records interleave with its own. Bounded: at most 400
/// rounds of a few entries.
async fn neighbour(log: CoreLog, range: RangeId, stop: Arc<AtomicBool>) {
    let mut store = log.open_range(range).expect("a fresh neighbour range");
    let mut next = 1;
    for round in 0..400u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let entries: Vec<Entry> = (next..next + 3).map(|index| put(1, index)).collect();
        next += 3;
        append_durably(&mut store, entries).await;
        if round % 7 == 6 {
            store
                .truncate_after(Some(log_id(1, next - 2)))
                .await
                .unwrap();
            next -= 1;
        }
        if round % 11 == 10 {
            store.purge(log_id(1, next - 5)).await.unwrap();
        }
    }
}

impl StoreBuilder<TypeConfig, RangeLogStore, TestStateMachine, CaseGuard> for Builder {
    async fn build(
        &self,
    ) -> Result<(CaseGuard, RangeLogStore, TestStateMachine), StorageError<TypeConfig>> {
        let range = self.next_range.fetch_add(2, Ordering::Relaxed);
        let log = suite_log();
        let stop = Arc::new(AtomicBool::new(false));
        glommio::spawn_local(neighbour(log.clone(), range + 1, stop.clone())).detach();
        let store = log.open_range(range).expect("a fresh range");
        let applier = Rc::new(RefCell::new(CountingApplier::default()));
        let snapshots = log.dir().join(format!("snapshots-{range}"));
        let state_machine = StateMachine::open(applier, &snapshots).expect("open");
        Ok((CaseGuard { stop }, store, state_machine))
    }
}

#[test]
fn openraft_log_store_suite_passes_on_a_shared_log_with_interleaved_ranges() {
    let dir = TempDir::new("suite");
    let path = dir.0.clone();
    GlommioRuntime::new(1).block_on(async move {
        let log = CoreLog::open(&path).expect("open a fresh log");
        SUITE_LOG.with(|suite| *suite.borrow_mut() = Some(log.clone()));
        Suite::test_all(Builder {
            next_range: AtomicU64::new(100),
        })
        .await
        .expect("openraft's log store suite");
        // Every case's range and its neighbour wrote to the one log.
        assert!(log.range_ids().len() > 20, "{:?}", log.range_ids());
        SUITE_LOG.with(|suite| suite.borrow_mut().take());
    });
    // The executor has ended: no task can touch the directory any more.
    drop(dir);
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
async fn append_durably(store: &mut RangeLogStore, entries: Vec<Entry>) {
    let (done, flushed) = <GlommioRuntime as AsyncRuntime>::Oneshot::channel();
    store
        .append(entries, IOFlushed::signal(done))
        .await
        .unwrap();
    flushed.await.unwrap().unwrap();
}

/// The range the single-range tests use.
const RANGE: RangeId = 1;

/// Runs one "life" of range [`RANGE`]'s store on `dir` in its own
/// executor, as a restarted process would.
fn life<T: 'static>(dir: &Path, body: impl AsyncFnOnce(RangeLogStore) -> T) -> T {
    life_of_log(dir, async |log| body(log.open_range(RANGE).unwrap()).await)
}

/// Runs one "life" of the whole log on `dir`.
fn life_of_log<T: 'static>(dir: &Path, body: impl AsyncFnOnce(CoreLog) -> T) -> T {
    let dir = dir.to_owned();
    GlommioRuntime::new(1).block_on(async move {
        let log = CoreLog::open(&dir).expect("recover the Raft log");
        body(log).await
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
        // Rides with the next flush; sync_committed makes it durable now.
        store.save_committed(Some(log_id(1, 40))).await.unwrap();
        store.sync_committed().await.unwrap();
        entries
    });
    life(&dir.0, async |mut store| {
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 50)));
        assert_eq!(state.last_purged_log_id, None);
        assert_eq!(store.read_vote().await.unwrap(), Some(vote(2, 3, true)));
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 40)));
        assert_eq!(store.try_get_log_entries(..).await.unwrap(), written);
        // A vote write carries the newest committed id along, though the
        // committed id's own record was appended lazily.
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
    life(&dir.0, async |mut store| {
        for index in 0..20 {
            append_durably(&mut store, vec![big(index)]).await;
        }
    });
    let before = segment_count(&dir.0);
    assert!(before >= 3, "{before} segments");
    life_of_log(&dir.0, async |log| {
        let mut store = log.open_range(RANGE).unwrap();
        store.purge(log_id(1, 15)).await.unwrap();
        log.reclaim_now().await;
    });
    let after = segment_count(&dir.0);
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

/// The entries of `range` (all of them) in a log `log`.
async fn entries_of(log: &CoreLog, range: RangeId) -> Vec<Entry> {
    let mut store = log.open_range(range).unwrap();
    store.try_get_log_entries(..).await.unwrap()
}

/// An entry of about 2.5 MiB: a few of them fill a 16 MiB WAL segment.
fn big(term: u64, index: u64) -> Entry {
    Entry::new_normal(
        log_id(term, index),
        Command::Put {
            tenant: "acme".into(),
            key: index.to_le_bytes().to_vec(),
            value: vec![index as u8; 5 << 19],
            expires_at_unix_ms: None,
        },
    )
}

fn segment_count(dir: &Path) -> usize {
    tinkerdb_storage::wal::segment_first_indexes(dir)
        .unwrap()
        .len()
}

#[test]
fn interleaved_ranges_each_recover_exactly_their_own_log() {
    let dir = TempDir::new("interleaved");
    let expected = life_of_log(&dir.0, async |log| {
        let mut a = log.open_range(10).unwrap();
        let mut b = log.open_range(20).unwrap();
        let mut c = log.open_range(30).unwrap();
        // Appends of three ranges interleave in the one stream; only the
        // last append of each is waited for (group commit across ranges).
        for index in 0..40 {
            a.append(vec![put(1, index)], IOFlushed::noop())
                .await
                .unwrap();
            b.append(vec![put(2, index)], IOFlushed::noop())
                .await
                .unwrap();
            if index % 2 == 0 {
                c.append(vec![put(3, index / 2)], IOFlushed::noop())
                    .await
                    .unwrap();
            }
        }
        append_durably(&mut a, vec![put(1, 40)]).await;
        // b: a new leader overwrote 30..; a truncates nothing of a or c.
        b.truncate_after(Some(log_id(2, 29))).await.unwrap();
        append_durably(&mut b, (30..=33).map(|index| put(4, index)).collect()).await;
        // c: purged to 9; a keeps everything; votes differ per range.
        c.purge(log_id(3, 9)).await.unwrap();
        a.save_vote(&vote(5, 1, true)).await.unwrap();
        b.save_vote(&vote(6, 2, false)).await.unwrap();
        append_durably(&mut c, vec![put(3, 20)]).await;
        let mut expected = BTreeMap::new();
        expected.insert(10, (0..=40).map(|index| put(1, index)).collect::<Vec<_>>());
        expected.insert(
            20,
            (0..30)
                .map(|index| put(2, index))
                .chain((30..=33).map(|index| put(4, index)))
                .collect(),
        );
        expected.insert(30, (10..=20).map(|index| put(3, index)).collect());
        for (range, entries) in &expected {
            let mut reader = match *range {
                10 => a.get_log_reader().await,
                20 => b.get_log_reader().await,
                _ => c.get_log_reader().await,
            };
            assert_eq!(&reader.try_get_log_entries(..).await.unwrap(), entries);
        }
        expected
    });
    life_of_log(&dir.0, async |log| {
        assert_eq!(log.range_ids(), vec![10, 20, 30]);
        for (range, entries) in &expected {
            assert_eq!(&entries_of(&log, *range).await, entries, "range {range}");
        }
        let mut a = log.open_range(10).unwrap();
        assert_eq!(a.read_vote().await.unwrap(), Some(vote(5, 1, true)));
        let mut b = log.open_range(20).unwrap();
        assert_eq!(b.read_vote().await.unwrap(), Some(vote(6, 2, false)));
        let mut c = log.open_range(30).unwrap();
        assert_eq!(c.read_vote().await.unwrap(), None);
        assert_eq!(
            c.get_log_state().await.unwrap().last_purged_log_id,
            Some(log_id(3, 9))
        );
        // One store per range at a time.
        assert!(log.open_range(30).is_err());
    });
}

#[test]
fn a_truncation_across_a_segment_boundary_voids_only_its_own_range() {
    let dir = TempDir::new("truncate-segments");
    life_of_log(&dir.0, async |log| {
        let mut a = log.open_range(1).unwrap();
        let mut b = log.open_range(2).unwrap();
        // a's big entries span several segments; b appends between them.
        for index in 0..14 {
            append_durably(&mut a, vec![big(1, index)]).await;
            append_durably(&mut b, vec![put(1, index)]).await;
        }
        assert!(segment_count(log.dir()) >= 3);
        // Back to index 2 (two segments back), while b keeps appending.
        a.truncate_after(Some(log_id(1, 2))).await.unwrap();
        append_durably(&mut b, vec![put(1, 14)]).await;
        append_durably(&mut a, vec![put(2, 3), put(2, 4)]).await;
    });
    life_of_log(&dir.0, async |log| {
        let a: Vec<Entry> = (0..=2)
            .map(|index| big(1, index))
            .chain([put(2, 3), put(2, 4)])
            .collect();
        assert_eq!(entries_of(&log, 1).await, a);
        assert_eq!(
            entries_of(&log, 2).await,
            (0..=14).map(|index| put(1, index)).collect::<Vec<_>>()
        );
    });
}

#[test]
fn a_lagging_range_keeps_segments_until_it_purges_and_idle_states_survive_reclaiming() {
    let dir = TempDir::new("lagging");
    let path = dir.0.clone();
    let (before, pinned) = life_of_log(&dir.0, async |log| {
        let mut busy = log.open_range(1).unwrap();
        let mut lagging = log.open_range(2).unwrap();
        let mut idle = log.open_range(3).unwrap();
        // The idle range only votes, once, at the start of the log.
        idle.save_vote(&vote(7, 3, true)).await.unwrap();
        append_durably(&mut lagging, vec![put(1, 0)]).await;
        for index in 0..20 {
            append_durably(&mut busy, vec![big(1, index)]).await;
        }
        let before = segment_count(&path);
        assert!(before >= 3, "{before} segments");
        // busy purges almost everything, but lagging's entry 0 sits in the
        // first segment: nothing can go.
        busy.purge(log_id(1, 18)).await.unwrap();
        glommio::timer::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(
            segment_count(&path),
            before,
            "a segment a range needs was deleted"
        );
        let pinned = log.ranges_pinning(2).unwrap();
        // Once it purges, the segments go; the idle range's vote is written
        // again at the end of the log first.
        lagging.purge(log_id(1, 0)).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while segment_count(&path) >= before && std::time::Instant::now() < deadline {
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
        }
        (before, pinned)
    });
    assert_eq!(pinned, vec![2], "the lagging range holds the segments back");
    let after = segment_count(&dir.0);
    assert!(after < before, "no segment reclaimed ({before} -> {after})");
    life_of_log(&dir.0, async |log| {
        let mut idle = log.open_range(3).unwrap();
        assert_eq!(idle.read_vote().await.unwrap(), Some(vote(7, 3, true)));
        assert_eq!(
            entries_of(&log, 1).await,
            vec![big(1, 19)],
            "busy keeps exactly its live entry"
        );
        let mut lagging = log.open_range(2).unwrap();
        let state = lagging.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 0)));
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 0)));
    });
}

#[test]
fn a_dropped_range_is_forgotten_and_its_id_starts_afresh() {
    let dir = TempDir::new("dropped");
    life_of_log(&dir.0, async |log| {
        let mut gone = log.open_range(5).unwrap();
        append_durably(&mut gone, (0..10).map(|index| put(1, index)).collect()).await;
        gone.save_vote(&vote(3, 1, true)).await.unwrap();
        let mut kept = log.open_range(6).unwrap();
        append_durably(&mut kept, vec![put(1, 0)]).await;
        // Refused while open (its Raft would still write to it).
        assert!(log.drop_range(5).await.is_err());
        drop(gone);
        log.drop_range(5).await.unwrap();
        assert_eq!(log.range_ids(), vec![6]);
    });
    life_of_log(&dir.0, async |log| {
        assert_eq!(log.range_ids(), vec![6]);
        let mut again = log.open_range(5).unwrap();
        assert_eq!(again.read_vote().await.unwrap(), None);
        assert!(again.try_get_log_entries(..).await.unwrap().is_empty());
        append_durably(&mut again, vec![put(9, 100)]).await;
    });
    life_of_log(&dir.0, async |log| {
        assert_eq!(entries_of(&log, 5).await, vec![put(9, 100)]);
        assert_eq!(entries_of(&log, 6).await, vec![put(1, 0)]);
    });
}

#[test]
fn a_log_of_the_per_group_format_is_refused_with_a_clear_reason() {
    let dir = TempDir::new("legacy");
    let path = dir.0.clone();
    GlommioRuntime::new(1).block_on(async move {
        let recovered = tinkerdb_storage::wal::recover(
            &path,
            0,
            tinkerdb_storage::wal::DurabilityMode::Sync,
            |_| Ok(()),
        )
        .unwrap();
        let wal = recovered.wal;
        glommio::spawn_local(recovered.writer.run()).detach();
        let index = wal
            .append(LEGACY_RECORD_KIND_GROUP_ENTRY, &[1; 30])
            .unwrap();
        wal.wait_durable(index).await.unwrap();
    });
    let path = dir.0.clone();
    let refusal = GlommioRuntime::new(1)
        .block_on(async move { CoreLog::open(&path).map(|_| ()).unwrap_err().to_string() });
    assert!(refusal.contains("before the shared log"), "{refusal}");
}

#[test]
fn a_range_exported_from_one_core_log_and_imported_into_another_keeps_its_vote_log_and_purge_point()
{
    let from = TempDir::new("export-from");
    let to = TempDir::new("export-to");
    // The source: range 5 purged through 3, with entries 4..=9 and a vote,
    // beside range 6 that stays.
    let export = life_of_log(&from.0, async |log| {
        let mut moving = log.open_range(5).unwrap();
        append_durably(&mut moving, (0..10).map(|index| put(2, index)).collect()).await;
        moving.save_vote(&vote(2, 3, true)).await.unwrap();
        moving.save_committed(Some(log_id(2, 8))).await.unwrap();
        moving.purge(log_id(2, 3)).await.unwrap();
        let mut staying = log.open_range(6).unwrap();
        append_durably(&mut staying, vec![put(1, 0)]).await;
        // Refused while open: its Raft would go on writing.
        assert!(log.export_range(5).await.is_err());
        drop(moving);
        assert!(log.export_range(7).await.is_err(), "nothing of range 7");
        log.export_range(5).await.unwrap()
    });
    // The target already holds range 9; bad exports change nothing.
    life_of_log(&to.0, async |log| {
        let mut other = log.open_range(9).unwrap();
        append_durably(&mut other, vec![put(1, 0), put(1, 1)]).await;
        drop(other);
        assert!(
            log.import_range(6, &export).await.is_err(),
            "an export of 5 as 6"
        );
        assert!(log
            .import_range(5, &export[..export.len() - 3])
            .await
            .is_err());
        assert!(log.import_range(5, b"TKRX").await.is_err());
        assert!(log.import_range(9, &export).await.is_err());
        assert_eq!(log.range_ids(), vec![9]);
        log.import_range(5, &export).await.unwrap();
        assert!(
            log.import_range(5, &export).await.is_err(),
            "imported twice"
        );
    });
    // After a restart the target has range 5 exactly as the source had it.
    life_of_log(&to.0, async |log| {
        assert_eq!(log.range_ids(), vec![5, 9]);
        let mut moved = log.open_range(5).unwrap();
        assert_eq!(moved.read_vote().await.unwrap(), Some(vote(2, 3, true)));
        assert_eq!(moved.read_committed().await.unwrap(), Some(log_id(2, 8)));
        let state = moved.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 3)));
        assert_eq!(state.last_log_id, Some(log_id(2, 9)));
        assert_eq!(
            moved.try_get_log_entries(..).await.unwrap(),
            (4..10).map(|index| put(2, index)).collect::<Vec<_>>()
        );
        // It goes on from there.
        append_durably(&mut moved, vec![put(3, 10)]).await;
        drop(moved);
        assert_eq!(entries_of(&log, 9).await, vec![put(1, 0), put(1, 1)]);
    });
    // The source drops its copy; its other range is untouched.
    life_of_log(&from.0, async |log| {
        log.drop_range(5).await.unwrap();
        assert_eq!(entries_of(&log, 6).await, vec![put(1, 0)]);
    });
    life_of_log(&from.0, async |log| assert_eq!(log.range_ids(), vec![6]));
}
