//! openraft's log storage for one Raft group on a core's write-ahead log
//! ([`tinkerdb_storage::wal`]): [`WalLogStore`] implements `RaftLogStorage`,
//! [`LogReader`] implements `RaftLogReader`.
//!
//! # How the log maps onto the WAL
//!
//! The store owns its WAL directory: every record in it is a Raft entry,
//! record kind [`RECORD_KIND_RAFT_ENTRY`] (2; kind 1 is the key-value path's
//! `RECORD_KIND_KV`). A WAL index is not a Raft index: the WAL numbers its
//! records densely from 1, while Raft indexes start at 0 and jump forward
//! when a snapshot is installed past the end of the log (openraft then
//! purges everything and appends at snapshot + 1). Truncations move both
//! back together (a WAL truncation marker at the same point), and purges
//! move neither. So the live entries (those after the last purged one)
//! always sit at consecutive WAL indexes, and the mapping is one offset:
//!
//! ```text
//! wal_index(raft_index) = first_wal_index + (raft_index - first_raft_index)
//! ```
//!
//! where `first_*` are those of the oldest live entry. The offset is fixed
//! when an entry is appended to an empty log and checked on every append
//! (the WAL must hand out exactly the expected index: a pair assertion that
//! nobody else writes this WAL). Each record also carries its own log id,
//! so recovery rebuilds the mapping from the records alone.
//!
//! # Entry record (WAL payload of kind 2, little-endian)
//!
//! | field | size |
//! |---|---|
//! | format: 1 | 1 |
//! | log id: term, leader node id, index | 8 + 8 + 8 |
//! | payload: 0 blank, 1 command, 2 membership | 1 |
//! | command: [`crate::command`]'s encoding | n |
//! | membership: config count, then per config its voter count and ids | 4 + (4 + 8n)... |
//! | membership: node count, then per node id, address length, address | 4 + (8 + 4 + n)... |
//!
//! An explicit encoding rather than serde: it is on disk for as long as the
//! entry is live, so it must not change when openraft (an alpha) or a serde
//! format changes the shape of its types; and it is documented byte by byte
//! like the rest of the WAL. Decoding checks every length.
//!
//! # Metadata (the WAL's `save_meta` record)
//!
//! | field | size |
//! |---|---|
//! | format: 1 | 1 |
//! | flags: 1 vote, 2 vote committed, 4 committed id, 8 purged id | 1 |
//! | vote: term, node id | 8 + 8 |
//! | committed log id: term, node id, index | 24 |
//! | last purged log id: term, node id, index | 24 |
//!
//! Absent fields are zeros. The record is replaced whole and durably, in
//! one of two alternating checksummed slots (the WAL's `save_meta`).
//!
//! # Durability
//!
//! - `append` encodes the entries, appends them to the WAL's pending batch
//!   and to the in-memory log, and returns: they are readable at once. The
//!   `IOFlushed` callback is handed to `Wal::when_durable` for the last
//!   record, so the WAL flusher completes it on this core once the flush
//!   covering it returned from `fdatasync`. openraft keeps issuing appends
//!   meanwhile, so one flush acknowledges many appends: group commit.
//! - `save_vote` and `purge` write the metadata record and return once it is
//!   durable. A purge writes the metadata first and deletes WAL segments
//!   after: a crash in between leaves extra records that recovery skips,
//!   never a log that starts after the purged id + 1.
//! - `save_committed` updates memory and returns; a background task on the
//!   core writes the metadata record with it (coalescing: one write in
//!   flight, then one with the newest value). openraft awaits
//!   `save_committed` before applying, so a synchronous `fdatasync` there
//!   would sit in the path of every client write. After a crash the
//!   recovered committed id may therefore lag slightly; openraft tolerates
//!   that (it is a lower bound: the state machine is re-applied up to it and
//!   the rest is committed again by the cluster). [`WalLogStore::sync_committed`]
//!   makes it durable now (a clean shutdown).
//! - Metadata writes never overlap: the WAL's two slots alternate, so two
//!   writes in flight could land out of order and a crash could bring back
//!   the older one. An async mutex orders them.
//! - `truncate_after` appends a WAL truncation marker and waits for it.
//! - Any failed write marks the store failed: every later write is refused
//!   (the WAL is poisoned too); reads keep working.
//!
//! # Memory
//!
//! Every live entry stays in memory (a `VecDeque`), so reads never touch the
//! disk; the WAL is read only at [`WalLogStore::open`]. The live log is
//! bounded by openraft's snapshot and purge policy. (A bounded cache with
//! reads from disk needs a WAL read that works after segments were purged;
//! `wal::read_range` does not yet: it scans from index 1 and reports a
//! purged log as corrupt.)
//!
//! # Invariants
//! - `entries` holds exactly the live entries, dense in Raft index, from
//!   `purged.index + 1` (or 0) to the last;
//! - `entries[i]` is WAL record `first_wal_index + i`;
//! - the vote readers see is the durable one (updated after `save_meta`).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend};
use tinkerdb_storage::wal::{self, DurabilityMode, PurgeHandle, Replay, Wal, WalError};
use tinkerdb_storage::wal_format::{BATCH_HEADER_BYTES, MAX_BATCH_BYTES, RECORD_HEADER_BYTES};

use crate::codec::{put_bytes_u32, put_u32, put_u64, DecodeError, Reader};
use crate::command::{Command, MAX_COMMAND_BYTES};
use crate::{Entry, LogId, Membership, Node, NodeId, TypeConfig, Vote};

/// WAL record kind of a Raft log entry (kind 1 is a key-value operation).
pub const RECORD_KIND_RAFT_ENTRY: u32 = 2;

/// Largest encoded entry: a command at its limit plus the envelope, or a
/// membership of any sane size.
pub const MAX_ENTRY_BYTES: usize = MAX_COMMAND_BYTES + (64 << 10);

// An entry must fit one WAL batch with its headers (and the record's
// 8-byte padding), or `Wal::append` would panic.
const _: () =
    assert!(MAX_ENTRY_BYTES + RECORD_HEADER_BYTES + 8 + BATCH_HEADER_BYTES <= MAX_BATCH_BYTES);

const ENTRY_FORMAT: u8 = 1;
const PAYLOAD_BLANK: u8 = 0;
const PAYLOAD_COMMAND: u8 = 1;
const PAYLOAD_MEMBERSHIP: u8 = 2;

const META_FORMAT: u8 = 1;
const META_BYTES: usize = 1 + 1 + 16 + 24 + 24;
const META_HAS_VOTE: u8 = 1;
const META_VOTE_COMMITTED: u8 = 2;
const META_HAS_COMMITTED: u8 = 4;
const META_HAS_PURGED: u8 = 8;

/// Why a log store cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The WAL itself could not be recovered.
    #[error(transparent)]
    Wal(#[from] wal::RecoveryError),
    /// The WAL recovered, but what it holds is not a valid Raft log.
    #[error("Raft log in {dir} is damaged at WAL index {wal_index}: {reason}; refusing to start")]
    Corrupt {
        /// The WAL directory.
        dir: PathBuf,
        /// The WAL record (0: the metadata record).
        wal_index: u64,
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

/// What the store and its readers share (one core, one thread).
#[derive(Default)]
struct Shared {
    /// The durable vote.
    vote: Option<Vote>,
    /// The last committed id openraft reported (persisted in the background).
    committed: Option<LogId>,
    /// The committed id in the durable metadata record.
    durable_committed: Option<LogId>,
    /// The last purged entry's id.
    purged: Option<LogId>,
    /// The live entries, dense in Raft index.
    entries: VecDeque<Entry>,
    /// WAL index of `entries[0]` (meaningless while `entries` is empty).
    first_wal_index: u64,
    /// Encoded bytes of `entries` (a gauge for memory use).
    entry_bytes: usize,
}

impl Shared {
    /// Where the first live entry must be: right after the purged one. A
    /// log never purged may start anywhere (openraft's suite starts logs at
    /// 1; a real group starts at 0): no segment was ever deleted from it, so
    /// the WAL's own density check covers it.
    fn required_first_index(&self) -> Option<u64> {
        self.purged.as_ref().map(|purged| purged.index + 1)
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .back()
            .map(|entry| entry.log_id)
            .or(self.purged)
    }

    /// The Raft index the next appended entry must have (`None`: any, the
    /// log is empty and was never purged).
    fn next_index(&self) -> Option<u64> {
        self.last_log_id().map(|id| id.index + 1)
    }

    fn meta(&self) -> Meta {
        Meta {
            vote: self.vote,
            committed: self.committed,
            purged: self.purged,
        }
    }

    fn check(&self) {
        if let Some(front) = self.entries.front() {
            if let Some(required) = self.required_first_index() {
                assert_eq!(
                    front.log_id.index, required,
                    "log starts after the purge point"
                );
            }
            let back = self.entries.back().expect("non-empty");
            assert_eq!(
                back.log_id.index - front.log_id.index + 1,
                self.entries.len() as u64,
                "a hole in the log"
            );
        }
    }
}

/// The durable metadata record's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Meta {
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
}

/// openraft's `RaftLogStorage` for one Raft group, on a WAL directory it
/// owns. Lives on the core that opened it.
pub struct WalLogStore {
    shared: Rc<RefCell<Shared>>,
    /// Orders metadata writes (module doc); shared with the background
    /// committed-id writer.
    meta_lock: Rc<futures::lock::Mutex<()>>,
    /// Whether the background committed-id writer is running.
    committed_writer_running: Rc<std::cell::Cell<bool>>,
    wal: Wal,
    purge: PurgeHandle,
    dir: PathBuf,
    /// Why the store refuses writes, once a write failed.
    failed: Option<String>,
}

/// openraft's `RaftLogReader` for a [`WalLogStore`]: reads the in-memory log.
#[derive(Clone)]
pub struct LogReader {
    shared: Rc<RefCell<Shared>>,
}

impl WalLogStore {
    /// The WAL's counters (bytes, flushes, flush latency), shared.
    pub fn wal_stats(&self) -> Rc<tinkerdb_storage::wal::WalStats> {
        self.wal.stats_handle()
    }

    /// Opens (creating if needed) the Raft log in WAL directory `dir`,
    /// rebuilding vote, purge point and entries from the WAL and its
    /// metadata, and spawns the WAL's flusher on the current glommio
    /// executor. Blocking file I/O; call once, on the core that owns `dir`.
    /// The flusher lives until the executor stops: open a directory once
    /// per executor.
    pub fn open(dir: &Path) -> Result<WalLogStore, OpenError> {
        let corrupt = |wal_index: u64, reason: String| OpenError::Corrupt {
            dir: dir.to_owned(),
            wal_index,
            reason,
        };
        // Recovery must start at the oldest segment left by purges: the WAL
        // refuses a log that starts after `after_index + 1`, and a truncation
        // marker at or before `after_index`. Segments are named by their
        // first index (docs/storage-format.md).
        let after_index = first_segment_index(dir)?.map_or(0, |first| first - 1);
        let mut records: Vec<(u64, Entry)> = Vec::new();
        let recovered = wal::recover(dir, after_index, DurabilityMode::Sync, |event| {
            match event {
                Replay::Record(record) => {
                    if record.kind != RECORD_KIND_RAFT_ENTRY {
                        return Err(format!(
                            "record kind {} in a Raft log (only {RECORD_KIND_RAFT_ENTRY})",
                            record.kind
                        ));
                    }
                    let entry = decode_entry(&record.payload).map_err(|error| error.to_string())?;
                    records.push((record.index, entry));
                }
                Replay::TruncatedAfter(wal_index) => {
                    while records.last().is_some_and(|(at, _)| *at > wal_index) {
                        records.pop();
                    }
                }
            }
            Ok(())
        })?;
        let meta = match &recovered.meta {
            Some(bytes) => decode_meta(bytes).map_err(|error| corrupt(0, error.to_string()))?,
            None => Meta::default(),
        };
        // Entries up to the purge point may linger in segments not yet
        // deleted (or not deletable: the segment also holds live entries).
        let purged_index = meta.purged.map(|purged| purged.index);
        records.retain(|(_, entry)| purged_index.is_none_or(|purged| entry.log_id.index > purged));
        let mut shared = Shared {
            vote: meta.vote,
            committed: meta.committed,
            durable_committed: meta.committed,
            purged: meta.purged,
            ..Shared::default()
        };
        let first_raft_index = records.first().map_or(0, |(_, first)| first.log_id.index);
        if let Some((first_wal_index, first)) = records.first() {
            if shared
                .required_first_index()
                .is_some_and(|required| required != first.log_id.index)
            {
                // A segment holding live entries is gone.
                return Err(corrupt(
                    *first_wal_index,
                    format!(
                        "the log resumes at Raft index {} after the purge point {:?}",
                        first.log_id.index, shared.purged
                    ),
                ));
            }
            shared.first_wal_index = *first_wal_index;
        }
        for (position, (wal_index, entry)) in records.into_iter().enumerate() {
            let expected_raft = first_raft_index + position as u64;
            let expected_wal = shared.first_wal_index + position as u64;
            if entry.log_id.index != expected_raft || wal_index != expected_wal {
                return Err(corrupt(
                    wal_index,
                    format!(
                        "entry {} at WAL index {wal_index}, expected entry {expected_raft} at {expected_wal}",
                        entry.log_id.index
                    ),
                ));
            }
            shared.entry_bytes += encoded_entry_len(&entry);
            shared.entries.push_back(entry);
        }
        shared.check();
        tracing::info!(
            dir = %dir.display(),
            entries = shared.entries.len(),
            last = ?shared.last_log_id(),
            purged = ?shared.purged,
            torn_tail_cut = recovered.torn_tail_cut,
            "Raft log recovered"
        );
        let wal::Recovered { wal, writer, .. } = recovered;
        glommio::spawn_local(writer.run()).detach();
        Ok(WalLogStore {
            shared: Rc::new(RefCell::new(shared)),
            meta_lock: Rc::new(futures::lock::Mutex::new(())),
            committed_writer_running: Rc::new(std::cell::Cell::new(false)),
            wal,
            purge: PurgeHandle::new(dir.to_owned()),
            dir: dir.to_owned(),
            failed: None,
        })
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Encoded bytes of the live entries held in memory.
    pub fn entry_bytes(&self) -> usize {
        self.shared.borrow().entry_bytes
    }

    /// The WAL handle (durability stats, flush latency).
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Refuses writes once anything failed (here or in the WAL).
    fn check_writable(&self) -> io::Result<()> {
        if let Some(reason) = &self.failed {
            return Err(io::Error::other(format!(
                "the Raft log store failed earlier and refuses writes: {reason}"
            )));
        }
        if let Some(error) = self.wal.poisoned() {
            return Err(io::Error::other(error));
        }
        Ok(())
    }

    /// Records a write failure: no write is accepted after it.
    fn fail(&mut self, error: impl std::fmt::Display) -> io::Error {
        let reason = error.to_string();
        tracing::error!(dir = %self.dir.display(), %reason, "Raft log store failed: refusing writes");
        self.failed.get_or_insert(reason.clone());
        io::Error::other(reason)
    }

    /// Durably replaces the metadata record with the current one changed by
    /// `change`, then makes the change visible (vote, purge point). Returns
    /// the metadata written.
    async fn save_meta(&mut self, change: impl FnOnce(&mut Meta)) -> io::Result<Meta> {
        let lock = self.meta_lock.clone();
        let _ordered = lock.lock().await;
        let mut meta = self.shared.borrow().meta();
        change(&mut meta);
        match write_meta(&self.wal, &meta).await {
            Ok(()) => {
                let mut shared = self.shared.borrow_mut();
                shared.vote = meta.vote;
                shared.durable_committed = meta.committed;
                Ok(meta)
            }
            Err(error) => Err(self.fail(error)),
        }
    }

    /// Makes the last committed id openraft reported durable now (the
    /// background writer does it soon anyway).
    pub async fn sync_committed(&mut self) -> io::Result<()> {
        self.check_writable()?;
        let stale = {
            let shared = self.shared.borrow();
            shared.committed != shared.durable_committed
        };
        if stale {
            self.save_meta(|_| {}).await?;
        }
        Ok(())
    }

    /// The committed id in the durable metadata record.
    pub fn durable_committed(&self) -> Option<LogId> {
        self.shared.borrow().durable_committed
    }

    /// Starts the background committed-id writer unless it runs already.
    fn spawn_committed_writer(&self) {
        if self.committed_writer_running.replace(true) {
            return; // it will see the new value before it stops
        }
        let shared = self.shared.clone();
        let lock = self.meta_lock.clone();
        let running = self.committed_writer_running.clone();
        let wal = self.wal.clone();
        glommio::spawn_local(async move {
            loop {
                let _ordered = lock.lock().await;
                let meta = shared.borrow().meta();
                if meta.committed == shared.borrow().durable_committed || wal.poisoned().is_some() {
                    // Checked and cleared with no await in between: a
                    // later save_committed sees `false` and starts a writer.
                    running.set(false);
                    return;
                }
                if let Err(error) = write_meta(&wal, &meta).await {
                    // The WAL is poisoned now: the store refuses writes.
                    tracing::error!(%error, "cannot persist the committed log id");
                    running.set(false);
                    return;
                }
                shared.borrow_mut().durable_committed = meta.committed;
            }
        })
        .detach();
    }
}

/// The first index of the oldest WAL segment in `dir`, if any.
fn first_segment_index(dir: &Path) -> Result<Option<u64>, OpenError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(OpenError::Io {
                dir: dir.to_owned(),
                source,
            })
        }
    };
    let mut first = None::<u64>;
    for entry in entries {
        let entry = entry.map_err(|source| OpenError::Io {
            dir: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|name| name.strip_suffix(".wal"))
            .and_then(|stem| stem.parse::<u64>().ok())
        else {
            continue;
        };
        assert!(index >= 1, "WAL segment named 0 in {}", dir.display());
        first = Some(first.map_or(index, |first| first.min(index)));
    }
    Ok(first)
}

/// Writes `meta` durably; the caller holds the metadata lock.
async fn write_meta(wal: &Wal, meta: &Meta) -> Result<(), WalError> {
    let bytes = encode_meta(meta);
    // Pair assertion: what we write reads back as what we meant.
    assert_eq!(decode_meta(&bytes).expect("fresh metadata decodes"), *meta);
    wal.save_meta(&bytes).await
}

fn wal_io_error(error: WalError) -> io::Error {
    io::Error::other(error)
}

/// The entries of `shared` with Raft indexes in `range` (those it holds).
fn entries_in(shared: &Shared, range: impl RangeBounds<u64>) -> Vec<Entry> {
    let Some(front) = shared.entries.front() else {
        return Vec::new();
    };
    let first = front.log_id.index;
    let end = first + shared.entries.len() as u64; // exclusive
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
    shared
        .entries
        .range((start - first) as usize..(stop - first) as usize)
        .cloned()
        .collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        // One borrow, no await: the read is atomic with respect to writes.
        Ok(entries_in(&self.shared.borrow(), range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.borrow().vote)
    }
}

impl RaftLogReader<TypeConfig> for WalLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(entries_in(&self.shared.borrow(), range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.borrow().vote)
    }
}

impl RaftLogStorage<TypeConfig> for WalLogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let shared = self.shared.borrow();
        Ok(LogState {
            last_purged_log_id: shared.purged,
            last_log_id: shared.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.check_writable()?;
        // Readers see the vote only once it is durable (save_meta sets it).
        let vote = *vote;
        self.save_meta(|meta| meta.vote = Some(vote)).await?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.check_writable()?;
        // Durable soon, in the background (module doc).
        self.shared.borrow_mut().committed = committed;
        self.spawn_committed_writer();
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.shared.borrow().committed)
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
        self.check_writable()?;
        // Encode everything first: an entry over the limit refuses the whole
        // append before anything reaches the WAL.
        let mut encoded = Vec::new();
        for entry in entries {
            let mut bytes = Vec::with_capacity(encoded_entry_len(&entry));
            encode_entry(&entry, &mut bytes)
                .map_err(|reason| io::Error::new(io::ErrorKind::InvalidInput, reason))?;
            encoded.push((entry, bytes));
        }
        for (entry, bytes) in encoded {
            let mut shared = self.shared.borrow_mut();
            if let Some(next) = shared.next_index() {
                assert_eq!(
                    entry.log_id.index, next,
                    "openraft appended out of order (a hole or an overlap)"
                );
            }
            let wal_index = match self.wal.append(RECORD_KIND_RAFT_ENTRY, &bytes) {
                Ok(wal_index) => wal_index,
                Err(error) => {
                    drop(shared);
                    return Err(self.fail(error));
                }
            };
            if shared.entries.is_empty() {
                // The offset between the two numberings is set here.
                shared.first_wal_index = wal_index;
            } else {
                assert_eq!(
                    wal_index,
                    shared.first_wal_index + shared.entries.len() as u64,
                    "the WAL handed out an unexpected index: is another writer using it?"
                );
            }
            shared.entry_bytes += bytes.len();
            shared.entries.push_back(entry);
        }
        // Everything appended so far, these entries included, is durable
        // once the WAL's last index is; the flusher runs this on our core.
        self.wal.when_durable(self.wal.last_index(), move |result| {
            callback.io_completed(result.map_err(wal_io_error));
        });
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.check_writable()?;
        let wal_index = {
            let shared = self.shared.borrow();
            let keep_through = last_log_id.map(|id| id.index);
            let Some(front) = shared.entries.front() else {
                return Ok(()); // nothing live to drop
            };
            let first = front.log_id.index;
            let last = shared.entries.back().expect("non-empty").log_id.index;
            match keep_through {
                Some(index) if index >= last => return Ok(()),
                Some(index) => {
                    // Never into the purged part: that would open a hole.
                    assert!(
                        index + 1 >= first,
                        "truncate_after({index}) before the log start {first}"
                    );
                    if index >= first {
                        let kept = &shared.entries[(index - first) as usize];
                        assert_eq!(
                            Some(kept.log_id),
                            last_log_id,
                            "truncating after a different entry"
                        );
                    }
                    shared.first_wal_index + (index + 1 - first) - 1
                }
                None => {
                    assert!(
                        shared.purged.is_none(),
                        "truncate_after(None) on a purged log"
                    );
                    shared.first_wal_index - 1
                }
            }
        };
        // Drop from memory first so readers never see entries the WAL is
        // dropping; the marker is durable when this returns.
        {
            let mut shared = self.shared.borrow_mut();
            let keep = (wal_index + 1 - shared.first_wal_index) as usize;
            let dropped: usize = shared.entries.range(keep..).map(encoded_entry_len).sum();
            shared.entries.truncate(keep);
            shared.entry_bytes -= dropped;
            shared.check();
        }
        match self.wal.truncate_after(wal_index).await {
            Ok(()) => Ok(()),
            Err(error) => Err(self.fail(error)),
        }
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.check_writable()?;
        let wal_purge_through = {
            let shared = self.shared.borrow();
            if shared
                .purged
                .is_some_and(|purged| purged.index >= log_id.index)
            {
                return Ok(()); // already purged
            }
            let wal_through = match shared.entries.front() {
                // Before the first live entry (a log that never started at
                // 0): nothing live goes, only what precedes it in the WAL.
                Some(front) if log_id.index < front.log_id.index => {
                    assert_eq!(
                        log_id.index + 1,
                        front.log_id.index,
                        "purging {log_id} would leave a hole before {}",
                        front.log_id
                    );
                    shared.first_wal_index - 1
                }
                Some(front)
                    if log_id.index <= shared.entries.back().expect("non-empty").log_id.index =>
                {
                    let position = (log_id.index - front.log_id.index) as usize;
                    assert_eq!(
                        shared.entries[position].log_id, log_id,
                        "purging a different entry"
                    );
                    shared.first_wal_index + position as u64
                }
                // Past the end (a snapshot was installed): every record in
                // the WAL is dead.
                _ => self.wal.last_index(),
            };
            wal_through
        };
        // Durable purge point first, then forget, then delete files.
        self.save_meta(|meta| meta.purged = Some(log_id)).await?;
        {
            let mut shared = self.shared.borrow_mut();
            let purge_count = shared
                .entries
                .iter()
                .take_while(|entry| entry.log_id.index <= log_id.index)
                .count();
            let dropped: usize = shared
                .entries
                .range(..purge_count)
                .map(encoded_entry_len)
                .sum();
            shared.entries.drain(..purge_count);
            shared.first_wal_index += purge_count as u64;
            shared.entry_bytes -= dropped;
            shared.purged = Some(log_id);
            shared.check();
        }
        match self.purge.purge_up_to(wal_purge_through) {
            Ok(_) => Ok(()),
            Err(error) => Err(self.fail(format!("cannot delete purged WAL segments: {error}"))),
        }
    }
}

fn put_log_id(out: &mut Vec<u8>, log_id: Option<&LogId>) {
    let (term, node_id, index) = log_id.map_or((0, 0, 0), |id| {
        (id.leader_id.term, id.leader_id.node_id, id.index)
    });
    put_u64(out, term);
    put_u64(out, node_id);
    put_u64(out, index);
}

fn read_log_id(reader: &mut Reader<'_>) -> Result<LogId, DecodeError> {
    let term = reader.u64()?;
    let node_id = reader.u64()?;
    let index = reader.u64()?;
    Ok(LogId {
        leader_id: openraft::impls::leader_id_adv::LeaderId { term, node_id },
        index,
    })
}

/// Exact bytes of [`encode_entry`]'s output.
fn encoded_entry_len(entry: &Entry) -> usize {
    let envelope = 1 + 24 + 1;
    envelope
        + match &entry.payload {
            EntryPayload::Blank => 0,
            EntryPayload::Normal(command) => command.encoded_len(),
            EntryPayload::Membership(membership) => {
                let configs: usize = membership
                    .get_joint_config()
                    .iter()
                    .map(|config| 4 + 8 * config.len())
                    .sum();
                let nodes: usize = membership
                    .nodes()
                    .map(|(_, node)| 8 + 4 + node.addr.len())
                    .sum();
                4 + configs + 4 + nodes
            }
        }
}

/// Encodes one entry as a WAL record payload (layout in the module doc).
fn encode_entry(entry: &Entry, out: &mut Vec<u8>) -> Result<(), String> {
    let length = encoded_entry_len(entry);
    if length > MAX_ENTRY_BYTES {
        return Err(format!(
            "log entry {} of {length} bytes over the limit of {MAX_ENTRY_BYTES}",
            entry.log_id
        ));
    }
    let start = out.len();
    out.push(ENTRY_FORMAT);
    put_log_id(out, Some(&entry.log_id));
    match &entry.payload {
        EntryPayload::Blank => out.push(PAYLOAD_BLANK),
        EntryPayload::Normal(command) => {
            out.push(PAYLOAD_COMMAND);
            command.encode(out).map_err(|error| error.to_string())?;
        }
        EntryPayload::Membership(membership) => {
            out.push(PAYLOAD_MEMBERSHIP);
            let configs = membership.get_joint_config();
            put_u32(out, configs.len() as u32);
            for config in configs {
                put_u32(out, config.len() as u32);
                for node_id in config {
                    put_u64(out, *node_id);
                }
            }
            let nodes: Vec<(&NodeId, &Node)> = membership.nodes().collect();
            put_u32(out, nodes.len() as u32);
            for (node_id, node) in nodes {
                put_u64(out, *node_id);
                put_bytes_u32(out, node.addr.as_bytes());
            }
        }
    }
    assert_eq!(out.len() - start, length, "encoded_entry_len is exact");
    // Pair check: never write what `open` could not read back (a membership
    // openraft accepted from a peer but `Membership::new` refuses would
    // leave a log the node cannot restart from).
    if let Err(error) = decode_entry(&out[start..]) {
        out.truncate(start);
        return Err(format!(
            "log entry {} would not read back: {error}",
            entry.log_id
        ));
    }
    Ok(())
}

/// Whether `entry` can be stored and read back (the checks `append`
/// makes), for refusing an entry from a peer with a typed error before
/// openraft takes it: a storage error inside openraft would stop the group.
/// A membership is encoded and decoded (its decoder has rules of its own);
/// a command must pass its limits (then it always encodes and decodes), and
/// every entry must fit; `append` checks every entry again.
pub fn check_storable(entry: &Entry) -> Result<(), String> {
    match &entry.payload {
        EntryPayload::Membership(_) => {
            encode_entry(entry, &mut Vec::with_capacity(encoded_entry_len(entry)))
        }
        EntryPayload::Normal(command) if command.validate().is_err() => Err(format!(
            "log entry {}: {}",
            entry.log_id,
            command.validate().expect_err("checked")
        )),
        _ if encoded_entry_len(entry) > MAX_ENTRY_BYTES => Err(format!(
            "log entry {} over the limit of {MAX_ENTRY_BYTES} bytes",
            entry.log_id
        )),
        _ => Ok(()),
    }
}

/// The entry record decoder (a WAL payload of kind [`RECORD_KIND_RAFT_ENTRY`]),
/// public only for the fuzz targets (`fuzz/`) and tests.
pub fn decode_entry_for_fuzzing(bytes: &[u8]) -> Result<Entry, DecodeError> {
    decode_entry(bytes)
}

/// The entry record encoder, public only for the fuzz targets and tests.
pub fn encode_entry_for_fuzzing(entry: &Entry, out: &mut Vec<u8>) -> Result<(), String> {
    encode_entry(entry, out)
}

/// The metadata record decoded and encoded again, public only for the
/// fuzz targets and tests (the metadata type itself is private).
pub fn reencode_meta_for_fuzzing(bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
    decode_meta(bytes).map(|meta| encode_meta(&meta))
}

/// Decodes a WAL record payload into an entry.
fn decode_entry(bytes: &[u8]) -> Result<Entry, DecodeError> {
    let mut reader = Reader::new(bytes, "Raft log entry");
    let format = reader.u8()?;
    if format != ENTRY_FORMAT {
        return Err(reader.error(format!("unknown entry format {format}")));
    }
    let log_id = read_log_id(&mut reader)?;
    let payload = match reader.u8()? {
        PAYLOAD_BLANK => EntryPayload::Blank,
        PAYLOAD_COMMAND => EntryPayload::Normal(Command::decode_from(&mut reader)?),
        PAYLOAD_MEMBERSHIP => {
            let config_count = reader.count(4)?;
            let mut configs = Vec::with_capacity(config_count);
            for _ in 0..config_count {
                let voter_count = reader.count(8)?;
                let mut voters = BTreeSet::new();
                for _ in 0..voter_count {
                    voters.insert(reader.u64()?);
                }
                configs.push(voters);
            }
            let node_count = reader.count(12)?;
            let mut nodes = BTreeMap::new();
            for _ in 0..node_count {
                let node_id = reader.u64()?;
                let addr = reader.bytes_u32()?;
                let addr = reader.utf8(addr)?;
                nodes.insert(node_id, Node { addr });
            }
            let membership = Membership::new(configs, nodes)
                .map_err(|error| reader.error(format!("invalid membership: {error}")))?;
            EntryPayload::Membership(membership)
        }
        other => return Err(reader.error(format!("unknown payload kind {other}"))),
    };
    reader.finish()?;
    Ok(Entry { log_id, payload })
}

fn encode_meta(meta: &Meta) -> Vec<u8> {
    let mut out = Vec::with_capacity(META_BYTES);
    out.push(META_FORMAT);
    let mut flags = 0;
    if let Some(vote) = &meta.vote {
        flags |= META_HAS_VOTE;
        if vote.committed {
            flags |= META_VOTE_COMMITTED;
        }
    }
    if meta.committed.is_some() {
        flags |= META_HAS_COMMITTED;
    }
    if meta.purged.is_some() {
        flags |= META_HAS_PURGED;
    }
    out.push(flags);
    let (term, node_id) = meta
        .vote
        .map_or((0, 0), |vote| (vote.leader_id.term, vote.leader_id.node_id));
    put_u64(&mut out, term);
    put_u64(&mut out, node_id);
    put_log_id(&mut out, meta.committed.as_ref());
    put_log_id(&mut out, meta.purged.as_ref());
    assert_eq!(out.len(), META_BYTES);
    out
}

fn decode_meta(bytes: &[u8]) -> Result<Meta, DecodeError> {
    let mut reader = Reader::new(bytes, "Raft log metadata");
    let format = reader.u8()?;
    if format != META_FORMAT {
        return Err(reader.error(format!("unknown metadata format {format}")));
    }
    let flags = reader.u8()?;
    if flags & !(META_HAS_VOTE | META_VOTE_COMMITTED | META_HAS_COMMITTED | META_HAS_PURGED) != 0 {
        return Err(reader.error(format!("unknown metadata flags {flags:#x}")));
    }
    let term = reader.u64()?;
    let node_id = reader.u64()?;
    let committed = read_log_id(&mut reader)?;
    let purged = read_log_id(&mut reader)?;
    reader.finish()?;
    Ok(Meta {
        vote: (flags & META_HAS_VOTE != 0).then_some(openraft::impls::Vote {
            leader_id: openraft::impls::leader_id_adv::LeaderId { term, node_id },
            committed: flags & META_VOTE_COMMITTED != 0,
        }),
        committed: (flags & META_HAS_COMMITTED != 0).then_some(committed),
        purged: (flags & META_HAS_PURGED != 0).then_some(purged),
    })
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;

    use super::*;

    fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
        LogId {
            leader_id: openraft::impls::leader_id_adv::LeaderId { term, node_id },
            index,
        }
    }

    #[test]
    fn entries_round_trip_and_damage_is_an_error() {
        let membership = Membership::new(
            vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([3, 4])],
            BTreeMap::from([
                (
                    1,
                    Node {
                        addr: "10.0.0.1:7000".into(),
                    },
                ),
                (
                    2,
                    Node {
                        addr: "10.0.0.2:7000".into(),
                    },
                ),
                (
                    3,
                    Node {
                        addr: "10.0.0.3:7000".into(),
                    },
                ),
                (
                    4,
                    Node {
                        addr: "h4:1".into(),
                    },
                ),
                (
                    9,
                    Node {
                        addr: "learner:1".into(),
                    },
                ),
            ]),
        )
        .unwrap();
        let entries = [
            Entry::new_blank(log_id(1, 2, 0)),
            Entry::new_normal(
                log_id(3, 1, 7),
                Command::Put {
                    tenant: "t".into(),
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    expires_at_unix_ms: Some(99),
                },
            ),
            Entry::new_membership(log_id(4, 1, 8), membership),
            Entry::new_membership(log_id(4, 1, 9), Membership::default()),
        ];
        for entry in entries {
            let mut bytes = Vec::new();
            encode_entry(&entry, &mut bytes).unwrap();
            assert_eq!(decode_entry(&bytes).unwrap(), entry);
            for cut in 0..bytes.len() {
                assert!(decode_entry(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    /// Found by fuzzing: openraft deserializes (from a peer's
    /// AppendEntries) a joint membership whose second config is empty,
    /// which `Membership::new` refuses when the log is read back. It must
    /// be refused before it is stored.
    /// A peer's entry whose command is over the size limit (serde accepts
    /// it) is refused before openraft takes it: `append` would fail, and a
    /// storage error stops the group.
    #[test]
    fn an_oversized_command_from_a_peer_is_refused_before_it_is_stored() {
        let entry = |bytes: usize| {
            Entry::new_normal(
                log_id(2, 1, 5),
                Command::Put {
                    tenant: "t".into(),
                    key: b"k".to_vec(),
                    value: vec![0; bytes],
                    expires_at_unix_ms: None,
                },
            )
        };
        assert!(check_storable(&entry(1 << 20)).is_ok());
        let refusal = check_storable(&entry(MAX_COMMAND_BYTES)).unwrap_err();
        assert!(refusal.contains("over the limit"), "{refusal}");
    }

    #[test]
    fn a_membership_that_would_not_read_back_is_refused_before_it_is_stored() {
        let nodes = BTreeMap::from([(1, Node::new("a:1")), (2, Node::new("b:1"))]);
        let joint = Membership::new(
            vec![BTreeSet::from([1]), BTreeSet::from([1, 2])],
            nodes.clone(),
        )
        .unwrap();
        let entry = Entry::new_membership(log_id(2, 1, 5), joint);
        // The peer's bytes, as openraft's serde would decode them.
        let mut bytes = postcard::to_allocvec(&entry).unwrap();
        let good: Entry = postcard::from_bytes(&bytes).unwrap();
        assert!(check_storable(&good).is_ok());
        // Rewrite the second config ({1, 2}: count 2, ids 1 and 2) as empty.
        let pattern = [2u8, 1, 2];
        let at = bytes
            .windows(pattern.len())
            .position(|window| window == pattern)
            .expect("the second config in postcard form");
        bytes.splice(at..at + pattern.len(), [0u8]);
        let hostile: Entry = postcard::from_bytes(&bytes).expect("serde accepts it");
        let EntryPayload::Membership(membership) = &hostile.payload else {
            panic!("still a membership entry");
        };
        assert!(membership.get_joint_config()[1].is_empty());
        let refusal = check_storable(&hostile).unwrap_err();
        assert!(refusal.contains("would not read back"), "{refusal}");
        let mut out = Vec::new();
        assert!(encode_entry(&hostile, &mut out).is_err());
        assert!(out.is_empty(), "nothing is left to write");
    }

    #[test]
    fn metadata_round_trips() {
        let vote = openraft::impls::Vote {
            leader_id: openraft::impls::leader_id_adv::LeaderId {
                term: 5,
                node_id: 2,
            },
            committed: true,
        };
        for meta in [
            Meta::default(),
            Meta {
                vote: Some(vote),
                committed: Some(log_id(5, 2, 40)),
                purged: Some(log_id(4, 1, 30)),
            },
        ] {
            assert_eq!(decode_meta(&encode_meta(&meta)).unwrap(), meta);
        }
        let mut bytes = encode_meta(&Meta::default());
        bytes[1] = 0x80;
        assert!(decode_meta(&bytes).is_err());
    }
}
