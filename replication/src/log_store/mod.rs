//! One write-ahead log per core for the Raft logs of every range on it:
//! [`CoreLog`] owns the core's WAL ([`tinkerdb_storage::wal`]) and hands
//! each range a [`RangeLogStore`] (openraft's `RaftLogStorage`) and
//! [`LogReader`]s (`RaftLogReader`).
//!
//! # Why one stream
//!
//! A range is the unit of replication, and a core hosts many of them. With
//! a WAL per range, every range pays its own `fdatasync` per flush and no
//! two ranges share a group commit (measured before this design: 64 groups
//! on a core, one writer each, 3,283 writes/s in all, where one group with
//! 100 writes in flight reached 24,000). Here every range appends to the
//! core's one ordered stream, so one write and one `fdatasync` acknowledge
//! whatever every range appended meanwhile (TiKV's raft-engine and ScyllaDB's
//! tablets share a log the same way).
//!
//! # What the stream holds
//!
//! Four record kinds, each naming its range (byte layouts in [`records`]):
//! an *entry*; a range's *state* (vote, committed id, purge point: the
//! newest state record of a range replaces the older ones); a *truncation*
//! (the range's entries after a point are void); a *drop* (everything the
//! range wrote before is void). Votes travel in the same stream as the
//! entries, so vote and log I/O are ordered as openraft requires.
//!
//! Recovery ([`CoreLog::open`]) reads the stream once, in order, and
//! rebuilds every range: an entry extends its range's log (an entry that
//! does not follow the previous one without a truncation in between is
//! corruption), a state record sets its vote and committed id and drops
//! the entries up to its purge point, a truncation drops a suffix, a drop
//! forgets the range. Entries at or below the purge point known so far are
//! skipped. At the end every range must be dense from its purge point + 1.
//!
//! # Durability
//!
//! - `append` encodes the entries, appends them to the WAL's pending batch
//!   and to the range's in-memory log, and returns: they are readable at
//!   once. `IOFlushed` is completed by the WAL's flusher on this core once
//!   the flush covering the last of them returned from `fdatasync`: group
//!   commit across every range of the core.
//! - `save_vote` appends a state record and returns once it is durable;
//!   readers see the new vote only then.
//! - `truncate_after` drops the suffix from memory, appends a truncation
//!   record and returns once it is durable.
//! - `purge` drops the prefix from memory, appends a state record with the
//!   new purge point and returns once it is durable. WAL segments are
//!   deleted later, in the background, by [`CoreLog`]'s reclaimer (one at
//!   a time per core; [`CoreLog::reclaim_now`] waits for it), and only
//!   after the records that make them unnecessary are durable.
//! - `save_committed` appends a state record *lazily*
//!   ([`Wal::append_lazily`]): it rides with the next flush instead of
//!   costing one. The committed id recovered may therefore lag; openraft
//!   tolerates that (it is a lower bound that the cluster commits again).
//! - Any failed write poisons the WAL: every range refuses every later
//!   write (nothing is retried); reads keep working from memory.
//!
//! # Segments and reclaiming them
//!
//! A segment can be deleted once no range needs a record in it: every
//! range's first live entry is in a later segment, and so is every range's
//! newest state record. A range whose state record is old (an idle range)
//! would pin segments forever, so the reclaimer first appends a fresh copy
//! of such states at the end of the stream, waits until they are durable,
//! then deletes the segments. Truncation and drop records need no copy:
//! segments go in prefix order, so a marker is deleted only together with
//! every entry it voids. A range whose first live entry is old pins every
//! segment after it: [`CoreLog::ranges_pinning`] names them, and
//! `group::release_pinned_segments` (a task per core) makes them purge to
//! their snapshot, or snapshot first.
//!
//! # Memory
//!
//! Every live entry stays in memory (a `VecDeque` per range, with each
//! entry's WAL index), so reads never touch the disk; the WAL is read only
//! at [`CoreLog::open`]. The live log is bounded by openraft's snapshot and
//! purge policy.
//!
//! # Invariants
//! - A range's `entries` hold exactly its live entries, dense in Raft index,
//!   from `purged.index + 1` (or anywhere for a log never purged) to the last;
//!   `wal_indexes[i]` is the WAL index of `entries[i]`, strictly increasing.
//! - The vote readers see is the durable one.
//! - `written` is the state of the newest state record appended for the
//!   range (durable or not), so a copy made by the reclaimer never goes
//!   back on a vote appended before it.
//! - At most one [`RangeLogStore`] per range is open at a time.

mod records;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use tinkerdb_storage::wal::{self, DurabilityMode, PurgeHandle, Replay, Wal, WalError, WalStats};

pub use records::{
    check_storable, decode_entry_for_fuzzing, decode_record_for_fuzzing, encode_entry_for_fuzzing,
    reencode_meta_for_fuzzing, RangeId, LEGACY_RECORD_KIND_GROUP_ENTRY, MAX_ENTRY_BYTES,
    RECORD_KIND_RANGE_DROPPED, RECORD_KIND_RANGE_ENTRY, RECORD_KIND_RANGE_STATE,
    RECORD_KIND_RANGE_TRUNCATE,
};
use records::{
    decode_record, encode_dropped_record, encode_entry_record, encode_state_record,
    encode_truncate_record, LogRecord, RangeState,
};

use crate::{Entry, LogId, TypeConfig, Vote};

/// Why a core's log cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The WAL itself could not be recovered (a record that is no valid
    /// shared-log record included).
    #[error(transparent)]
    Wal(#[from] wal::RecoveryError),
    /// The WAL recovered, but a range's log in it has a hole.
    #[error("Raft log of range {range} in {dir} is damaged: {reason}; refusing to start")]
    Corrupt {
        /// The WAL directory.
        dir: PathBuf,
        /// The range.
        range: RangeId,
        /// What is wrong.
        reason: String,
    },
    /// Listing the WAL directory failed.
    #[error("cannot list {dir}: {source}")]
    Io {
        /// The WAL directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// One range's log, shared by its store and its readers (one core).
#[derive(Default)]
struct RangeLog {
    /// The durable vote.
    vote: Option<Vote>,
    /// The last committed id openraft reported.
    committed: Option<LogId>,
    /// The last purged entry's id.
    purged: Option<LogId>,
    /// The state of the newest state record appended (module doc).
    written: RangeState,
    /// WAL index of that record (0: none).
    state_wal_index: u64,
    /// The live entries, dense in Raft index.
    entries: VecDeque<Entry>,
    /// WAL index of each live entry.
    wal_indexes: VecDeque<u64>,
    /// Encoded bytes of `entries` (a gauge for memory use).
    entry_bytes: usize,
    /// Whether a [`RangeLogStore`] is open on it.
    attached: bool,
}

impl RangeLog {
    fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .back()
            .map(|entry| entry.log_id)
            .or(self.purged)
    }

    /// The Raft index the next entry must have (`None`: any, the log is
    /// empty and was never purged).
    fn next_index(&self) -> Option<u64> {
        self.last_log_id().map(|id| id.index + 1)
    }

    /// Drops the entries after Raft index `keep_through` (all for `None`).
    fn drop_after(&mut self, keep_through: Option<u64>) {
        let keep = self
            .entries
            .iter()
            .take_while(|entry| keep_through.is_some_and(|keep| entry.log_id.index <= keep))
            .count();
        let dropped: usize = self
            .entries
            .range(keep..)
            .map(records::encoded_entry_len)
            .sum();
        self.entries.truncate(keep);
        self.wal_indexes.truncate(keep);
        self.entry_bytes -= dropped;
    }

    /// Drops the entries up to Raft index `through`.
    fn drop_through(&mut self, through: u64) {
        let count = self
            .entries
            .iter()
            .take_while(|entry| entry.log_id.index <= through)
            .count();
        let dropped: usize = self
            .entries
            .range(..count)
            .map(records::encoded_entry_len)
            .sum();
        self.entries.drain(..count);
        self.wal_indexes.drain(..count);
        self.entry_bytes -= dropped;
    }

    /// The live log's shape: dense, starting right after the purge point.
    fn check_shape(&self) -> Result<(), String> {
        let (Some(front), Some(back)) = (self.entries.front(), self.entries.back()) else {
            return Ok(());
        };
        if let Some(purged) = self.purged {
            if front.log_id.index != purged.index + 1 {
                return Err(format!(
                    "the log resumes at Raft index {} after the purge point {purged}",
                    front.log_id.index
                ));
            }
        }
        if back.log_id.index - front.log_id.index + 1 != self.entries.len() as u64 {
            return Err(format!(
                "a hole between Raft indexes {} and {}",
                front.log_id.index, back.log_id.index
            ));
        }
        Ok(())
    }

    /// Applies one record read back at recovery (module doc).
    fn replay(&mut self, wal_index: u64, record: LogRecord) -> Result<(), String> {
        match record {
            LogRecord::Entry { entry, .. } => {
                let index = entry.log_id.index;
                if self.purged.is_some_and(|purged| index <= purged.index) {
                    return Ok(()); // covered by a snapshot, not deleted yet
                }
                if let Some(next) = self.next_index() {
                    if index != next {
                        return Err(format!(
                            "entry {} where {next} was expected, with no truncation between",
                            entry.log_id
                        ));
                    }
                }
                self.entry_bytes += records::encoded_entry_len(&entry);
                self.entries.push_back(entry);
                self.wal_indexes.push_back(wal_index);
            }
            LogRecord::State { state, .. } => {
                self.vote = state.vote;
                self.committed = state.committed;
                if let Some(purged) = state.purged {
                    self.drop_through(purged.index);
                }
                self.purged = state.purged;
                self.written = state;
                self.state_wal_index = wal_index;
            }
            LogRecord::Truncate { keep_through, .. } => self.drop_after(keep_through),
            LogRecord::Dropped { .. } => unreachable!("handled by the caller"),
        }
        Ok(())
    }
}

/// What the core's log and its range stores share.
struct Inner {
    wal: Wal,
    dir: PathBuf,
    purge: PurgeHandle,
    ranges: RefCell<BTreeMap<RangeId, Rc<RefCell<RangeLog>>>>,
    /// Why the log refuses writes, once a write failed.
    failed: RefCell<Option<String>>,
    /// Whether the reclaimer runs, and whether it must run once more.
    reclaiming: Cell<bool>,
    reclaim_again: Cell<bool>,
}

/// The Raft log of every range on one core, in one WAL directory. Cheap
/// to clone; lives on the core that opened it.
#[derive(Clone)]
pub struct CoreLog {
    inner: Rc<Inner>,
}

impl Debug for CoreLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreLog")
            .field("dir", &self.inner.dir)
            .field("ranges", &self.range_ids())
            .finish()
    }
}

impl CoreLog {
    /// Opens (creating if needed) the core's log in WAL directory `dir`,
    /// rebuilding every range from the stream, and spawns the WAL's
    /// flusher on the current glommio executor. Blocking file I/O; call
    /// once per directory and executor, on the core that owns `dir`.
    pub fn open(dir: &Path) -> Result<CoreLog, OpenError> {
        // Recovery starts at the oldest segment left by reclaiming: the WAL
        // refuses a log that starts after `after_index + 1`.
        let after_index = first_segment_index(dir)?.map_or(0, |first| first - 1);
        let mut ranges: BTreeMap<RangeId, RangeLog> = BTreeMap::new();
        let recovered = wal::recover(dir, after_index, DurabilityMode::Sync, |event| {
            let record = match event {
                Replay::Record(record) => record,
                Replay::TruncatedAfter(_) => {
                    return Err("a WAL truncation marker: the shared Raft log never \
                                truncates the WAL itself (each range writes its own truncation record)"
                        .into())
                }
            };
            if record.kind == LEGACY_RECORD_KIND_GROUP_ENTRY {
                return Err(format!(
                    "a per-group Raft log record (kind {LEGACY_RECORD_KIND_GROUP_ENTRY}), \
                     written by a TinkerDB before the shared log; this version cannot read it: \
                     move the directory away and let the node catch up from its peers"
                ));
            }
            let decoded = decode_record(record.kind, &record.payload).map_err(|e| e.to_string())?;
            match decoded {
                LogRecord::Dropped { range } => {
                    ranges.remove(&range);
                    Ok(())
                }
                LogRecord::Entry { range, .. }
                | LogRecord::State { range, .. }
                | LogRecord::Truncate { range, .. } => ranges
                    .entry(range)
                    .or_default()
                    .replay(record.index, decoded)
                    .map_err(|reason| format!("range {range}: {reason}")),
            }
        })?;
        for (range, log) in &ranges {
            log.check_shape().map_err(|reason| OpenError::Corrupt {
                dir: dir.to_owned(),
                range: *range,
                reason,
            })?;
            tracing::info!(
                dir = %dir.display(),
                range,
                entries = log.entries.len(),
                last = ?log.last_log_id(),
                purged = ?log.purged,
                "range log recovered"
            );
        }
        tracing::info!(
            dir = %dir.display(),
            ranges = ranges.len(),
            records = recovered.replayed,
            torn_tail_cut = recovered.torn_tail_cut,
            "core Raft log recovered"
        );
        let wal::Recovered { wal, writer, .. } = recovered;
        glommio::spawn_local(writer.run()).detach();
        Ok(CoreLog {
            inner: Rc::new(Inner {
                wal,
                dir: dir.to_owned(),
                purge: PurgeHandle::new(dir.to_owned()),
                ranges: RefCell::new(
                    ranges
                        .into_iter()
                        .map(|(range, log)| (range, Rc::new(RefCell::new(log))))
                        .collect(),
                ),
                failed: RefCell::new(None),
                reclaiming: Cell::new(false),
                reclaim_again: Cell::new(false),
            }),
        })
    }

    /// The ranges this log holds anything of (entries or state), by id.
    pub fn range_ids(&self) -> Vec<RangeId> {
        self.inner.ranges.borrow().keys().copied().collect()
    }

    /// The log store of `range`, created empty if the log holds nothing of
    /// it. Refused while another store of the range is open (two Raft
    /// instances of one range on one core would corrupt its log).
    pub fn open_range(&self, range: RangeId) -> Result<RangeLogStore, String> {
        let log = self
            .inner
            .ranges
            .borrow_mut()
            .entry(range)
            .or_default()
            .clone();
        if log.borrow().attached {
            return Err(format!(
                "range {range}'s log in {} is already open",
                self.inner.dir.display()
            ));
        }
        log.borrow_mut().attached = true;
        Ok(RangeLogStore {
            core: self.clone(),
            range,
            log,
        })
    }

    /// Forgets `range` and everything it wrote: appends a drop record and
    /// returns once it is durable (its segments go when no other range
    /// needs them). Refused while the range's store is open: shut its Raft
    /// down first.
    pub async fn drop_range(&self, range: RangeId) -> io::Result<()> {
        self.check_writable()?;
        let Some(log) = self.inner.ranges.borrow().get(&range).cloned() else {
            return Ok(());
        };
        if log.borrow().attached {
            return Err(io::Error::other(format!(
                "range {range} is still open: shut its Raft group down before dropping it"
            )));
        }
        let index = self.append(RECORD_KIND_RANGE_DROPPED, &encode_dropped_record(range))?;
        self.inner.ranges.borrow_mut().remove(&range);
        self.wait_durable(index).await?;
        self.schedule_reclaim();
        Ok(())
    }

    /// Whether the log holds anything of `range`.
    pub fn holds_range(&self, range: RangeId) -> bool {
        self.inner.ranges.borrow().contains_key(&range)
    }

    /// Everything `range` holds here (its state and its live entries), as
    /// bytes another core's log can [`import`](Self::import_range): how a
    /// range moves from one core to another. Refused while the range's
    /// store is open (shut its Raft down first) and once the log failed.
    /// Waits until everything the range appended is durable, so what is
    /// exported is what a crash would have left.
    pub async fn export_range(&self, range: RangeId) -> io::Result<Vec<u8>> {
        self.check_writable()?;
        let log = self.inner.ranges.borrow().get(&range).cloned();
        let Some(log) = log else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("range {range} has nothing in {}", self.inner.dir.display()),
            ));
        };
        if log.borrow().attached {
            return Err(io::Error::other(format!(
                "range {range} is still open: shut its Raft group down before exporting it"
            )));
        }
        self.wait_durable(self.inner.wal.last_index()).await?;
        let log = log.borrow();
        let mut out =
            Vec::with_capacity(EXPORT_HEADER_BYTES + log.entry_bytes + 64 * log.entries.len());
        out.extend_from_slice(EXPORT_MAGIC);
        out.extend_from_slice(&EXPORT_FORMAT.to_le_bytes());
        out.extend_from_slice(&range.to_le_bytes());
        let mut put = |kind: u32, payload: &[u8]| {
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(payload);
        };
        put(
            RECORD_KIND_RANGE_STATE,
            &encode_state_record(range, &log.written),
        );
        let mut bytes = Vec::new();
        for entry in &log.entries {
            bytes.clear();
            encode_entry_record(range, entry, &mut bytes)
                .map_err(|reason| io::Error::other(format!("range {range}: {reason}")))?;
            put(RECORD_KIND_RANGE_ENTRY, &bytes);
        }
        Ok(out)
    }

    /// Takes in a range [exported](Self::export_range) by another core's
    /// log: appends its state and entries to this log's stream and returns
    /// once they are durable. Refused when this log already holds anything
    /// of the range (drop it first) or the bytes are not a whole export of
    /// it; nothing is appended then.
    pub async fn import_range(&self, range: RangeId, export: &[u8]) -> io::Result<()> {
        self.check_writable()?;
        if self.holds_range(range) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} already holds range {range}: drop it before importing it",
                    self.inner.dir.display()
                ),
            ));
        }
        // Decoded and checked whole before anything is appended.
        let records = decode_export(range, export)
            .map_err(|reason| io::Error::new(io::ErrorKind::InvalidData, reason))?;
        let mut log = RangeLog::default();
        let mut last = 0;
        for (kind, payload, record) in records {
            last = self.append(kind, payload)?;
            log.replay(last, record)
                .map_err(|reason| io::Error::new(io::ErrorKind::InvalidData, reason))?;
        }
        log.check_shape()
            .map_err(|reason| io::Error::new(io::ErrorKind::InvalidData, reason))?;
        // In the map before the wait: the reclaimer must see its records.
        self.inner
            .ranges
            .borrow_mut()
            .insert(range, Rc::new(RefCell::new(log)));
        if let Err(error) = self.wait_durable(last).await {
            self.inner.ranges.borrow_mut().remove(&range);
            return Err(error);
        }
        Ok(())
    }

    /// The WAL's counters (bytes, flushes, flush latency), shared.
    pub fn wal_stats(&self) -> Rc<WalStats> {
        self.inner.wal.stats_handle()
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The WAL segments on disk.
    pub fn segment_count(&self) -> io::Result<usize> {
        Ok(wal::segment_first_indexes(&self.inner.dir)?.len())
    }

    /// The ranges whose oldest live entry keeps more than `max_segments`
    /// segments alive, oldest first: they should snapshot (and purge) so
    /// the segments can go.
    pub fn ranges_pinning(&self, max_segments: usize) -> io::Result<Vec<RangeId>> {
        let firsts = wal::segment_first_indexes(&self.inner.dir)?;
        let mut pinning: Vec<(u64, RangeId)> = self
            .inner
            .ranges
            .borrow()
            .iter()
            .filter_map(|(range, log)| {
                let oldest = *log.borrow().wal_indexes.front()?;
                let held = firsts.len() - firsts.partition_point(|first| *first <= oldest) + 1;
                (held > max_segments).then_some((oldest, *range))
            })
            .collect();
        pinning.sort_unstable();
        Ok(pinning.into_iter().map(|(_, range)| range).collect())
    }

    /// Refuses writes once anything failed (here or in the WAL).
    fn check_writable(&self) -> io::Result<()> {
        if let Some(reason) = self.inner.failed.borrow().as_ref() {
            return Err(io::Error::other(format!(
                "the core's Raft log failed earlier and refuses writes: {reason}"
            )));
        }
        if let Some(error) = self.inner.wal.poisoned() {
            return Err(io::Error::other(error));
        }
        Ok(())
    }

    /// Records a write failure: no write is accepted after it.
    fn fail(&self, error: impl std::fmt::Display) -> io::Error {
        let reason = error.to_string();
        tracing::error!(dir = %self.inner.dir.display(), %reason, "core Raft log failed: refusing writes");
        self.inner.failed.borrow_mut().get_or_insert(reason.clone());
        io::Error::other(reason)
    }

    fn append(&self, kind: u32, payload: &[u8]) -> io::Result<u64> {
        self.inner
            .wal
            .append(kind, payload)
            .map_err(|error| self.fail(error))
    }

    async fn wait_durable(&self, index: u64) -> io::Result<()> {
        self.inner
            .wal
            .wait_durable(index)
            .await
            .map_err(|error| self.fail(error))
    }

    /// Appends `range`'s current state record (lazily: it rides with the
    /// next flush); returns its WAL index.
    fn append_state(&self, range: RangeId, log: &mut RangeLog, lazily: bool) -> io::Result<u64> {
        let payload = encode_state_record(range, &log.written);
        let appended = if lazily {
            self.inner
                .wal
                .append_lazily(RECORD_KIND_RANGE_STATE, &payload)
        } else {
            self.inner.wal.append(RECORD_KIND_RANGE_STATE, &payload)
        };
        let index = appended.map_err(|error| self.fail(error))?;
        log.state_wal_index = index;
        Ok(index)
    }

    /// Deletes the WAL segments no range needs now, and returns once the
    /// reclaimer is idle (a purge starts it in the background anyway).
    pub async fn reclaim_now(&self) {
        self.schedule_reclaim();
        while self.inner.reclaiming.get() {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Starts the reclaimer unless it runs; if it does, it runs once more.
    fn schedule_reclaim(&self) {
        if self.inner.reclaiming.replace(true) {
            self.inner.reclaim_again.set(true);
            return;
        }
        let core = self.clone();
        glommio::spawn_local(async move {
            loop {
                core.inner.reclaim_again.set(false);
                if let Err(error) = core.reclaim().await {
                    tracing::error!(dir = %core.inner.dir.display(), %error, "cannot reclaim WAL segments");
                    break;
                }
                if !core.inner.reclaim_again.get() {
                    break;
                }
            }
            core.inner.reclaiming.set(false);
        })
        .detach();
    }

    /// Deletes the segments no range needs (module doc); returns how many.
    async fn reclaim(&self) -> io::Result<usize> {
        let firsts = wal::segment_first_indexes(&self.inner.dir)?;
        let entry_floor = self
            .inner
            .ranges
            .borrow()
            .values()
            .filter_map(|log| log.borrow().wal_indexes.front().copied())
            .min()
            .unwrap_or(self.inner.wal.last_index() + 1);
        // The segment holding the oldest live entry stays, and every later
        // one; segments before it may go.
        let keep_from = match firsts.iter().rev().find(|first| **first <= entry_floor) {
            Some(first) if *first > firsts[0] => *first,
            _ => return Ok(0),
        };
        // Idle ranges' states in doomed segments are written again first.
        let stale: Vec<(RangeId, Rc<RefCell<RangeLog>>)> = self
            .inner
            .ranges
            .borrow()
            .iter()
            .filter(|(_, log)| {
                let state_at = log.borrow().state_wal_index;
                state_at != 0 && state_at < keep_from
            })
            .map(|(range, log)| (*range, log.clone()))
            .collect();
        for (range, log) in &stale {
            self.append_state(*range, &mut log.borrow_mut(), false)?;
        }
        // Everything the doomed segments' records stood for is durable in
        // later records before anything is deleted.
        self.check_writable()?;
        self.wait_durable(self.inner.wal.last_index()).await?;
        let removed = self
            .inner
            .purge
            .purge_up_to(keep_from - 1)
            .map_err(|error| self.fail(format!("cannot delete WAL segments: {error}")))?;
        tracing::debug!(
            removed,
            rewritten_states = stale.len(),
            keep_from,
            "WAL segments reclaimed"
        );
        Ok(removed)
    }
}

/// First bytes of a range export ([`CoreLog::export_range`]).
const EXPORT_MAGIC: &[u8; 4] = b"TKRX";
/// Format of a range export: after the magic, this as `u32`, the range as
/// `u64`, then records, each `kind: u32, length: u32, payload` (the WAL
/// record payloads of [`records`]): the range's state first, then its live
/// entries in order. All little-endian.
const EXPORT_FORMAT: u32 = 1;
const EXPORT_HEADER_BYTES: usize = 4 + 4 + 8;

/// One record of a range export: its WAL kind, its payload, decoded.
type ExportedRecord<'a> = (u32, &'a [u8], LogRecord);

/// The records of an export of `range`.
fn decode_export(range: RangeId, bytes: &[u8]) -> Result<Vec<ExportedRecord<'_>>, String> {
    if bytes.len() < EXPORT_HEADER_BYTES || &bytes[..4] != EXPORT_MAGIC {
        return Err("not a range export".into());
    }
    let format = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if format != EXPORT_FORMAT {
        return Err(format!(
            "range export format {format}, expected {EXPORT_FORMAT}"
        ));
    }
    let named = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if named != range {
        return Err(format!("an export of range {named}, not of range {range}"));
    }
    let mut rest = &bytes[EXPORT_HEADER_BYTES..];
    let mut records = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 8 {
            return Err("a range export cut inside a record header".into());
        }
        let kind = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        let length = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize;
        let payload = rest
            .get(8..8 + length)
            .ok_or("a range export cut inside a record")?;
        let record = decode_record(kind, payload).map_err(|error| error.to_string())?;
        let record_range = match &record {
            LogRecord::State { range, .. } if records.is_empty() => *range,
            LogRecord::Entry { range, .. } if !records.is_empty() => *range,
            _ => return Err(format!("record kind {kind} out of place in a range export")),
        };
        if record_range != range {
            return Err(format!(
                "a record of range {record_range} in an export of range {range}"
            ));
        }
        records.push((kind, payload, record));
        rest = &rest[8 + length..];
    }
    if records.is_empty() {
        return Err("a range export without its state".into());
    }
    Ok(records)
}

/// The first index of the oldest WAL segment in `dir`, if any.
fn first_segment_index(dir: &Path) -> Result<Option<u64>, OpenError> {
    let firsts = wal::segment_first_indexes(dir).map_err(|source| OpenError::Io {
        dir: dir.to_owned(),
        source,
    })?;
    if let Some(first) = firsts.first() {
        assert!(*first >= 1, "WAL segment named 0 in {}", dir.display());
    }
    Ok(firsts.first().copied())
}

fn wal_io_error(error: WalError) -> io::Error {
    io::Error::other(error)
}

/// The entries of `log` with Raft indexes in `range` (those it holds).
fn entries_in(log: &RangeLog, range: impl RangeBounds<u64>) -> Vec<Entry> {
    let Some(front) = log.entries.front() else {
        return Vec::new();
    };
    let first = front.log_id.index;
    let end = first + log.entries.len() as u64; // exclusive
    let start = match range.start_bound() {
        Bound::Included(&start) => start,
        Bound::Excluded(&start) => start.saturating_add(1),
        Bound::Unbounded => 0,
    }
    .max(first);
    let stop = match range.end_bound() {
        Bound::Included(&stop) => stop.saturating_add(1),
        Bound::Excluded(&stop) => stop,
        Bound::Unbounded => u64::MAX,
    }
    .min(end);
    if start >= stop {
        return Vec::new();
    }
    log.entries
        .range((start - first) as usize..(stop - first) as usize)
        .cloned()
        .collect()
}

/// openraft's `RaftLogStorage` for one range, on its core's [`CoreLog`].
pub struct RangeLogStore {
    core: CoreLog,
    range: RangeId,
    log: Rc<RefCell<RangeLog>>,
}

/// openraft's `RaftLogReader` for a [`RangeLogStore`]: reads the in-memory log.
#[derive(Clone)]
pub struct LogReader {
    log: Rc<RefCell<RangeLog>>,
}

impl Drop for RangeLogStore {
    fn drop(&mut self) {
        self.log.borrow_mut().attached = false;
    }
}

impl RangeLogStore {
    /// The range.
    pub fn range(&self) -> RangeId {
        self.range
    }

    /// The core's log this store writes to.
    pub fn core_log(&self) -> &CoreLog {
        &self.core
    }

    /// Encoded bytes of the live entries held in memory.
    pub fn entry_bytes(&self) -> usize {
        self.log.borrow().entry_bytes
    }

    /// Makes the last committed id openraft reported durable now (a clean
    /// shutdown; otherwise it rides with the next flush).
    pub async fn sync_committed(&mut self) -> io::Result<()> {
        self.core.check_writable()?;
        let index = self
            .core
            .append_state(self.range, &mut self.log.borrow_mut(), false)?;
        self.core.wait_durable(index).await
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        // One borrow, no await: the read is atomic with respect to writes.
        Ok(entries_in(&self.log.borrow(), range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.log.borrow().vote)
    }
}

impl RaftLogReader<TypeConfig> for RangeLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(entries_in(&self.log.borrow(), range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.log.borrow().vote)
    }
}

impl RaftLogStorage<TypeConfig> for RangeLogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let log = self.log.borrow();
        Ok(LogState {
            last_purged_log_id: log.purged,
            last_log_id: log.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            log: self.log.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.core.check_writable()?;
        let index = {
            let mut log = self.log.borrow_mut();
            log.written.vote = Some(*vote);
            self.core.append_state(self.range, &mut log, false)?
        };
        self.core.wait_durable(index).await?;
        // Readers see the vote only once it is durable.
        self.log.borrow_mut().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.core.check_writable()?;
        let mut log = self.log.borrow_mut();
        log.committed = committed;
        log.written.committed = committed;
        self.core.append_state(self.range, &mut log, true)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.log.borrow().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.core.check_writable()?;
        // Encode everything first: an entry over the limit refuses the whole
        // append before anything reaches the WAL.
        let mut encoded = Vec::new();
        for entry in entries {
            let mut bytes = Vec::with_capacity(records::encoded_entry_len(&entry) + 8);
            encode_entry_record(self.range, &entry, &mut bytes)
                .map_err(|reason| io::Error::new(io::ErrorKind::InvalidInput, reason))?;
            encoded.push((entry, bytes));
        }
        let mut last_wal_index = None;
        for (entry, bytes) in encoded {
            let mut log = self.log.borrow_mut();
            if let Some(next) = log.next_index() {
                assert_eq!(
                    entry.log_id.index, next,
                    "openraft appended out of order (a hole or an overlap)"
                );
            }
            let wal_index = self.core.append(RECORD_KIND_RANGE_ENTRY, &bytes)?;
            log.entry_bytes += records::encoded_entry_len(&entry);
            log.entries.push_back(entry);
            log.wal_indexes.push_back(wal_index);
            last_wal_index = Some(wal_index);
        }
        // The flusher runs this on our core once the flush covering the
        // last of these entries (and everything before it) is durable.
        match last_wal_index {
            Some(index) => self.core.inner.wal.when_durable(index, move |result| {
                callback.io_completed(result.map_err(wal_io_error));
            }),
            None => callback.io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.core.check_writable()?;
        let keep_through = last_log_id.map(|id| id.index);
        {
            let mut log = self.log.borrow_mut();
            let (Some(front), Some(back)) = (log.entries.front(), log.entries.back()) else {
                return Ok(()); // nothing live to drop
            };
            let (first, last) = (front.log_id.index, back.log_id.index);
            match keep_through {
                Some(index) if index >= last => return Ok(()),
                Some(index) => {
                    // Never into the purged part: that would open a hole.
                    assert!(
                        index + 1 >= first,
                        "truncate_after({index}) before the log start {first}"
                    );
                    if index >= first {
                        let kept = &log.entries[(index - first) as usize];
                        assert_eq!(
                            Some(kept.log_id),
                            last_log_id,
                            "truncating after a different entry"
                        );
                    }
                }
                None => assert!(log.purged.is_none(), "truncate_after(None) on a purged log"),
            }
            // Dropped from memory first so readers never see entries the
            // log is dropping; the record is durable when this returns.
            log.drop_after(keep_through);
            debug_assert!(log.check_shape().is_ok());
        }
        let index = self.core.append(
            RECORD_KIND_RANGE_TRUNCATE,
            &encode_truncate_record(self.range, keep_through),
        )?;
        self.core.wait_durable(index).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.core.check_writable()?;
        let index = {
            let mut log = self.log.borrow_mut();
            if log
                .purged
                .is_some_and(|purged| purged.index >= log_id.index)
            {
                return Ok(()); // already purged
            }
            match (log.entries.front(), log.entries.back()) {
                // Before the first live entry (a log that never started at
                // 0): nothing live goes.
                (Some(front), _) if log_id.index < front.log_id.index => assert_eq!(
                    log_id.index + 1,
                    front.log_id.index,
                    "purging {log_id} would leave a hole before {}",
                    front.log_id
                ),
                (Some(front), Some(back)) if log_id.index <= back.log_id.index => {
                    let position = (log_id.index - front.log_id.index) as usize;
                    assert_eq!(
                        log.entries[position].log_id, log_id,
                        "purging a different entry"
                    );
                }
                // Past the end (a snapshot was installed): all of it goes.
                _ => {}
            }
            log.drop_through(log_id.index);
            log.purged = Some(log_id);
            log.written.purged = Some(log_id);
            debug_assert!(log.check_shape().is_ok());
            self.core.append_state(self.range, &mut log, false)?
        };
        self.core.wait_durable(index).await?;
        self.core.schedule_reclaim();
        Ok(())
    }
}
