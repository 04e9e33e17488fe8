//! The per-core write-ahead log: io_uring O_DIRECT writes with group commit.
//!
//! Two halves share one [`WalState`]:
//! - [`Wal`], the handle the shard uses synchronously: [`Wal::append`] encodes
//!   a record into the pending batch and returns its index at once;
//!   [`Wal::when_durable`] runs a callback once that index is on disk.
//! - [`WalWriter::run`], the flusher task: it takes everything pending,
//!   writes it as one batch at the next 4 KiB boundary of the current
//!   segment (`DmaFile::write_at`, O_DIRECT through io_uring), calls
//!   `fdatasync` once, then completes every callback the batch covers.
//!   Records appended while a flush is in flight wait for the next one: that
//!   is group commit, and one `fdatasync` acknowledges the whole batch.
//!
//! Invariants:
//! - indexes are dense and strictly increasing, across segments;
//! - a callback for index `i` runs only after every record up to `i` was
//!   written and `fdatasync` returned success;
//! - after a failed write or `fdatasync` the WAL is *poisoned*: every waiting
//!   and every later callback gets the error, `append` refuses, and nothing is
//!   retried (after an fsync error Linux may have dropped the dirty pages, so
//!   a retry that succeeds proves nothing).
//!
//! Files: `<dir>/<first index, 20 digits>.wal`, each [`SEGMENT_BYTES`] long,
//! zero-filled when created so later writes overwrite written blocks (cheaper
//! for ext4 than converting unwritten extents). Layout: `wal_format`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use glommio::io::{DmaFile, OpenOptions};

use crate::wal_format::{
    encode_batch, encode_record, record_bytes, scan_segment, Record, SegmentEnd,
    BATCH_HEADER_BYTES, BLOCK_BYTES, MAX_BATCH_BYTES, SEGMENT_BYTES,
};

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurabilityMode {
    /// After its record is written and `fdatasync`ed (default).
    Sync,
    /// At once; the log is flushed every this often (a crash loses at most
    /// about that much acknowledged data).
    Interval(Duration),
}

/// The WAL failed and refuses all writes from now on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the write-ahead log failed and accepts no more writes: {0}")]
pub struct WalError(pub String);

/// Why a WAL directory cannot be recovered.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Data that was durable once is damaged: refuse to start.
    #[error("WAL corruption in {path} at offset {offset}: {reason}; refusing to start (restore this core's data from a backup or a replica)")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Byte offset of the bad batch.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The caller rejected a record while replaying it.
    #[error("cannot replay WAL record {index} from {path}: {reason}")]
    Replay {
        /// The segment.
        path: PathBuf,
        /// The record's index.
        index: u64,
        /// Why.
        reason: String,
    },
}

type Callback = Box<dyn FnOnce(Result<(), WalError>)>;

/// A chunk of pending records that will become one batch.
struct Chunk {
    body: Vec<u8>,
    first_index: u64,
    count: u32,
}

/// State shared by the handle and the flusher (one core, one thread).
struct WalState {
    next_index: u64,
    pending: Vec<Chunk>,
    durable_index: u64,
    poisoned: Option<WalError>,
    /// Callbacks waiting for their index to be durable, in index order.
    waiting: BTreeMap<u64, Vec<Callback>>,
    flusher: Option<Waker>,
    /// Bytes written to segments since the last snapshot (for triggering one).
    bytes_since_snapshot: u64,
}

/// The handle a shard writes through. Cheap to clone; one core only.
#[derive(Clone)]
pub struct Wal {
    state: Rc<RefCell<WalState>>,
    mode: DurabilityMode,
}

impl Wal {
    /// Appends a record; returns its index. Refused once poisoned.
    pub fn append(&self, kind: u32, payload: &[u8]) -> Result<u64, WalError> {
        let mut state = self.state.borrow_mut();
        if let Some(error) = &state.poisoned {
            return Err(error.clone());
        }
        let frame = record_bytes(payload.len());
        assert!(
            BATCH_HEADER_BYTES + frame <= MAX_BATCH_BYTES,
            "record of {} bytes over the WAL batch limit",
            payload.len()
        );
        let index = state.next_index;
        state.next_index += 1;
        let fits = state
            .pending
            .last()
            .is_some_and(|chunk| BATCH_HEADER_BYTES + chunk.body.len() + frame <= MAX_BATCH_BYTES);
        if !fits {
            state.pending.push(Chunk {
                body: Vec::with_capacity(frame.max(4096)),
                first_index: index,
                count: 0,
            });
        }
        let chunk = state.pending.last_mut().expect("just ensured");
        encode_record(&mut chunk.body, index, kind, payload);
        chunk.count += 1;
        if let Some(flusher) = state.flusher.take() {
            flusher.wake();
        }
        Ok(index)
    }

    /// The index whose durability a write's acknowledgement must wait for:
    /// `index` in sync mode, nothing in interval mode.
    pub fn ack_point(&self, index: u64) -> Option<u64> {
        (self.mode == DurabilityMode::Sync).then_some(index)
    }

    /// Runs `callback` once every record up to `index` is on disk (at once if
    /// it already is), or with the error if the WAL is or becomes poisoned.
    pub fn when_durable(&self, index: u64, callback: impl FnOnce(Result<(), WalError>) + 'static) {
        let mut state = self.state.borrow_mut();
        if let Some(error) = &state.poisoned {
            let error = error.clone();
            drop(state);
            return callback(Err(error));
        }
        if state.durable_index >= index {
            drop(state);
            return callback(Ok(()));
        }
        state
            .waiting
            .entry(index)
            .or_default()
            .push(Box::new(callback));
    }

    /// Waits until every record up to `index` is on disk.
    pub async fn wait_durable(&self, index: u64) -> Result<(), WalError> {
        let (done, wait) = futures_channel::oneshot::channel();
        self.when_durable(index, move |result| {
            let _ = done.send(result);
        });
        wait.await
            .unwrap_or_else(|_| Err(WalError("the WAL flusher stopped".into())))
    }

    /// The last index handed out (0 if none).
    pub fn last_index(&self) -> u64 {
        self.state.borrow().next_index - 1
    }

    /// The highest index known to be on disk.
    pub fn durable_index(&self) -> u64 {
        self.state.borrow().durable_index
    }

    /// The error, once poisoned.
    pub fn poisoned(&self) -> Option<WalError> {
        self.state.borrow().poisoned.clone()
    }

    /// Bytes written since [`Wal::reset_snapshot_counter`].
    pub fn bytes_since_snapshot(&self) -> u64 {
        self.state.borrow().bytes_since_snapshot
    }

    /// Restarts the count of bytes written since the last snapshot.
    pub fn reset_snapshot_counter(&self) {
        self.state.borrow_mut().bytes_since_snapshot = 0;
    }
}

/// A segment file on disk.
#[derive(Debug, Clone)]
struct Segment {
    first_index: u64,
    path: PathBuf,
}

/// Test hook: `TINKERDB_FAILPOINT_WAL_FSYNC_FAIL_AFTER=N` makes the flush
/// after N successful ones fail as if `fdatasync` returned EIO. It exercises
/// the real poisoning path; it is read once, at start-up.
pub const FAILPOINT_FSYNC_FAIL_AFTER: &str = "TINKERDB_FAILPOINT_WAL_FSYNC_FAIL_AFTER";

/// The flusher: owns the files. Run it as a task on the WAL's core.
pub struct WalWriter {
    dir: PathBuf,
    state: Rc<RefCell<WalState>>,
    mode: DurabilityMode,
    log_id: u32,
    segments: Vec<Segment>,
    file: Option<DmaFile>,
    /// Next write offset in the current (last) segment.
    offset: u64,
    fail_after_flushes: Option<u64>,
    flushes: u64,
}

/// What recovery found, ready to continue writing.
pub struct Recovered {
    /// The handle.
    pub wal: Wal,
    /// The flusher, to spawn.
    pub writer: WalWriter,
    /// Records replayed.
    pub replayed: u64,
    /// Whether a torn tail was cut off.
    pub torn_tail_cut: bool,
}

fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}.wal"))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RecoveryError + '_ {
    move |source| RecoveryError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Opens the WAL in `dir` (created if missing), replays every record after
/// `after_index` (the snapshot's cut) through `replay`, cuts off a torn
/// tail, and returns the handle and the flusher. Blocking file I/O: call it
/// once at start-up.
pub fn recover(
    dir: &Path,
    after_index: u64,
    mode: DurabilityMode,
    mut replay: impl FnMut(&Record) -> Result<(), String>,
) -> Result<Recovered, RecoveryError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let mut segments: Vec<Segment> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let first_index = path
                .file_name()?
                .to_str()?
                .strip_suffix(".wal")?
                .parse()
                .ok()?;
            Some(Segment { first_index, path })
        })
        .collect();
    segments.sort_by_key(|segment| segment.first_index);
    let mut expected = None::<u64>;
    let mut replayed = 0;
    let mut offset = 0;
    let mut torn_tail_cut = false;
    let last = segments.len().saturating_sub(1);
    for (position, segment) in segments.iter().enumerate() {
        let bytes = std::fs::read(&segment.path).map_err(io_error(&segment.path))?;
        let (batches, end) = scan_segment(&bytes);
        let corrupt = |offset: usize, reason: String| RecoveryError::Corrupt {
            path: segment.path.clone(),
            offset: offset as u64,
            reason,
        };
        for batch in &batches {
            for record in &batch.records {
                match expected {
                    Some(index) if record.index != index => {
                        return Err(corrupt(
                            batch.offset,
                            format!("expected index {index}, found {}", record.index),
                        ));
                    }
                    None if record.index > after_index + 1 => {
                        return Err(corrupt(
                            batch.offset,
                            format!(
                                "the log starts at index {} but the snapshot ends at {after_index}",
                                record.index
                            ),
                        ));
                    }
                    _ => {}
                }
                expected = Some(record.index + 1);
                if record.index > after_index {
                    replay(record).map_err(|reason| RecoveryError::Replay {
                        path: segment.path.clone(),
                        index: record.index,
                        reason,
                    })?;
                    replayed += 1;
                }
            }
        }
        match end {
            SegmentEnd::Clean(at) => offset = at as u64,
            SegmentEnd::TornTail(at) if position == last => {
                // A flush torn by a crash: never acknowledged. Zero it so a
                // later scan cannot mistake its remains for data.
                zero_from(&segment.path, at as u64).map_err(io_error(&segment.path))?;
                offset = at as u64;
                torn_tail_cut = true;
            }
            SegmentEnd::TornTail(at) => {
                return Err(corrupt(
                    at,
                    "invalid batch in a segment that is not the last".into(),
                ));
            }
            SegmentEnd::Corrupt { offset, reason } => return Err(corrupt(offset, reason)),
        }
    }
    let next_index = expected.unwrap_or(after_index + 1).max(after_index + 1);
    let state = Rc::new(RefCell::new(WalState {
        next_index,
        pending: Vec::new(),
        durable_index: next_index - 1,
        poisoned: None,
        waiting: BTreeMap::new(),
        flusher: None,
        bytes_since_snapshot: 0,
    }));
    let fail_after_flushes = std::env::var(FAILPOINT_FSYNC_FAIL_AFTER)
        .ok()
        .and_then(|n| n.parse().ok());
    let full = offset + BLOCK_BYTES as u64 > SEGMENT_BYTES;
    Ok(Recovered {
        wal: Wal {
            state: state.clone(),
            mode,
        },
        writer: WalWriter {
            dir: dir.to_owned(),
            state,
            mode,
            log_id: 0,
            offset: if segments.is_empty() || full {
                SEGMENT_BYTES
            } else {
                offset
            },
            segments,
            file: None,
            fail_after_flushes,
            flushes: 0,
        },
        replayed,
        torn_tail_cut,
    })
}

/// Overwrites a file with zeros from `offset` to its end, durably.
fn zero_from(path: &Path, offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    let length = file.metadata()?.len();
    file.seek(SeekFrom::Start(offset))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = length.saturating_sub(offset);
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_data()
}

/// fsyncs a directory, so a file created or renamed in it survives a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl WalWriter {
    /// Flushes until the WAL is poisoned. Spawn on the WAL's core.
    pub async fn run(mut self) {
        loop {
            match self.mode {
                DurabilityMode::Sync => self.wait_for_records().await,
                DurabilityMode::Interval(every) => glommio::timer::sleep(every).await,
            }
            let chunks = self.take_chunks();
            if chunks.is_empty() {
                continue;
            }
            let last_index = {
                let chunk = chunks.last().expect("not empty");
                chunk.first_index + u64::from(chunk.count) - 1
            };
            if let Err(error) = self.write_batches(&chunks).await {
                self.poison(error);
                return;
            }
            let ready: Vec<Callback> = {
                let mut state = self.state.borrow_mut();
                state.durable_index = last_index;
                let later = state.waiting.split_off(&(last_index + 1));
                std::mem::replace(&mut state.waiting, later)
                    .into_values()
                    .flatten()
                    .collect()
            };
            for callback in ready {
                callback(Ok(()));
            }
        }
    }

    async fn wait_for_records(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            if state.pending.is_empty() {
                state.flusher = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }

    /// Takes pending chunks, at most `MAX_BATCH_BYTES` of them (at least one).
    fn take_chunks(&self) -> Vec<Chunk> {
        let mut state = self.state.borrow_mut();
        let mut taken_bytes = 0;
        let mut count = 0;
        for chunk in &state.pending {
            let bytes = BATCH_HEADER_BYTES + chunk.body.len();
            if count > 0 && taken_bytes + bytes > MAX_BATCH_BYTES {
                break;
            }
            taken_bytes += bytes.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
            count += 1;
        }
        state.pending.drain(..count).collect()
    }

    async fn write_batches(&mut self, chunks: &[Chunk]) -> Result<(), String> {
        let mut image = Vec::new();
        for chunk in chunks {
            encode_batch(
                &mut image,
                chunk.first_index,
                chunk.count,
                &chunk.body,
                self.log_id,
            );
        }
        if self.file.is_none() || self.offset + image.len() as u64 > SEGMENT_BYTES {
            self.roll(chunks[0].first_index).await?;
        }
        let file = self.file.as_ref().expect("rolled");
        let mut buffer = file.alloc_dma_buffer(image.len());
        buffer.as_bytes_mut().copy_from_slice(&image);
        let written = file
            .write_at(buffer, self.offset)
            .await
            .map_err(|error| format!("WAL write failed: {error}"))?;
        if written != image.len() {
            return Err(format!(
                "WAL write was short: {written} of {} bytes",
                image.len()
            ));
        }
        self.flushes += 1;
        if self.fail_after_flushes.is_some_and(|n| self.flushes > n) {
            return Err("fdatasync failed: injected by failpoint".into());
        }
        file.fdatasync()
            .await
            .map_err(|error| format!("WAL fdatasync failed: {error}"))?;
        self.offset += image.len() as u64;
        self.state.borrow_mut().bytes_since_snapshot += image.len() as u64;
        Ok(())
    }

    /// Opens the last segment to append, or starts a new one at `first_index`.
    async fn roll(&mut self, first_index: u64) -> Result<(), String> {
        if let Some(file) = self.file.take() {
            let _ = file.close().await;
        }
        if self.offset < SEGMENT_BYTES {
            if let Some(last) = self.segments.last() {
                // Recovery left room in the last segment: continue it.
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .dma_open(&last.path)
                    .await
                    .map_err(|error| {
                        format!("cannot open WAL segment {}: {error}", last.path.display())
                    })?;
                self.file = Some(file);
                return Ok(());
            }
        }
        let path = segment_path(&self.dir, first_index);
        let file = DmaFile::create(&path)
            .await
            .map_err(|error| format!("cannot create WAL segment {}: {error}", path.display()))?;
        let zeros_bytes = 1 << 20;
        let mut at = 0;
        while at < SEGMENT_BYTES {
            let mut zeros = file.alloc_dma_buffer(zeros_bytes);
            zeros.as_bytes_mut().fill(0);
            file.write_at(zeros, at).await.map_err(|error| {
                format!("cannot zero-fill WAL segment {}: {error}", path.display())
            })?;
            at += zeros_bytes as u64;
        }
        file.fdatasync()
            .await
            .map_err(|error| format!("WAL fdatasync failed: {error}"))?;
        sync_dir(&self.dir)
            .map_err(|error| format!("cannot fsync {}: {error}", self.dir.display()))?;
        self.segments.push(Segment { first_index, path });
        self.file = Some(file);
        self.offset = 0;
        Ok(())
    }

    fn poison(&self, reason: String) {
        tracing::error!(%reason, dir = %self.dir.display(), "WAL poisoned: refusing all writes");
        let error = WalError(reason);
        let waiting = {
            let mut state = self.state.borrow_mut();
            state.poisoned = Some(error.clone());
            std::mem::take(&mut state.waiting)
        };
        for callback in waiting.into_values().flatten() {
            callback(Err(error.clone()));
        }
    }

    /// A handle that deletes segments made redundant by a snapshot.
    pub fn purge_handle(&self) -> PurgeHandle {
        PurgeHandle {
            dir: self.dir.clone(),
        }
    }
}

/// Deletes segments a snapshot made redundant.
#[derive(Debug, Clone)]
pub struct PurgeHandle {
    dir: PathBuf,
}

impl PurgeHandle {
    /// A handle on the WAL directory `dir`.
    pub fn new(dir: PathBuf) -> PurgeHandle {
        PurgeHandle { dir }
    }

    /// Deletes every segment whose records all have index `<= index`, i.e.
    /// every segment followed by a segment starting at or before `index + 1`.
    /// Never leaves a hole: the segment holding `index + 1` stays.
    pub fn purge_up_to(&self, index: u64) -> std::io::Result<usize> {
        let mut firsts: Vec<u64> = std::fs::read_dir(&self.dir)?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name();
                name.to_str()?.strip_suffix(".wal")?.parse().ok()
            })
            .collect();
        firsts.sort_unstable();
        let mut removed = 0;
        for pair in firsts.windows(2) {
            if pair[1] <= index + 1 {
                std::fs::remove_file(segment_path(&self.dir, pair[0]))?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tinkerdb-wal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn run<T: 'static>(future: impl std::future::Future<Output = T> + 'static) -> T {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .make()
            .unwrap()
            .run(future)
    }

    fn collect(dir: &Path, after: u64) -> (Vec<(u64, Vec<u8>)>, Recovered) {
        let mut records = Vec::new();
        let recovered = recover(dir, after, DurabilityMode::Sync, |record| {
            records.push((record.index, record.payload.clone()));
            Ok(())
        })
        .unwrap();
        (records, recovered)
    }

    #[test]
    fn group_commit_then_recovery_then_more_writes() {
        let dir = temp_dir("roundtrip");
        let (records, recovered) = collect(&dir, 0);
        assert!(records.is_empty());
        let dir2 = dir.clone();
        run(async move {
            let Recovered { wal, writer, .. } = recovered;
            glommio::spawn_local(writer.run()).detach();
            // 500 appends without waiting: they share few flushes.
            for i in 0..500u32 {
                assert_eq!(wal.append(1, &i.to_le_bytes()).unwrap(), u64::from(i) + 1);
            }
            wal.wait_durable(500).await.unwrap();
            assert_eq!(wal.durable_index(), 500);
            let big = vec![7u8; 3 << 20];
            let index = wal.append(1, &big).unwrap();
            wal.wait_durable(index).await.unwrap();
        });
        let (records, recovered) = collect(&dir2, 0);
        assert_eq!(records.len(), 501);
        assert_eq!(records[41], (42, 41u32.to_le_bytes().to_vec()));
        assert_eq!(records[500].1.len(), 3 << 20);
        // Replay after a snapshot cut skips what it covers; writing goes on.
        run(async move {
            let Recovered { wal, writer, .. } = recovered;
            glommio::spawn_local(writer.run()).detach();
            let index = wal.append(1, b"after restart").unwrap();
            assert_eq!(index, 502);
            wal.wait_durable(index).await.unwrap();
        });
        let (records, _) = collect(&dir2, 500);
        assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), [501, 502]);
        let _ = std::fs::remove_dir_all(&dir2);
    }

    #[test]
    fn segments_roll_and_purge_never_leaves_a_hole() {
        let dir = temp_dir("roll");
        let (_, recovered) = collect(&dir, 0);
        run(async move {
            let Recovered { wal, writer, .. } = recovered;
            glommio::spawn_local(writer.run()).detach();
            let value = vec![1u8; 1 << 20];
            for _ in 0..40 {
                let index = wal.append(1, &value).unwrap();
                wal.wait_durable(index).await.unwrap();
            }
        });
        let segments = std::fs::read_dir(&dir).unwrap().count();
        assert!(segments >= 3, "{segments} segments for 40 MiB");
        let purge = PurgeHandle { dir: dir.clone() };
        assert!(purge.purge_up_to(30).unwrap() >= 1);
        let (records, _) = collect(&dir, 30);
        assert_eq!(
            records.iter().map(|r| r.0).collect::<Vec<_>>(),
            (31..=40).collect::<Vec<_>>()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_fsync_poisons_and_nothing_is_acknowledged_after() {
        let dir = temp_dir("poison");
        let (_, recovered) = collect(&dir, 0);
        run(async move {
            let Recovered {
                wal, mut writer, ..
            } = recovered;
            writer.fail_after_flushes = Some(2);
            glommio::spawn_local(writer.run()).detach();
            let mut acknowledged = 0;
            let mut failed = 0;
            for i in 0..10u32 {
                match wal.append(1, &i.to_le_bytes()) {
                    Ok(index) => match wal.wait_durable(index).await {
                        Ok(()) => {
                            assert_eq!(failed, 0, "an acknowledgement after a failure");
                            acknowledged += 1;
                        }
                        Err(_) => failed += 1,
                    },
                    Err(_) => failed += 1,
                }
            }
            assert_eq!(acknowledged, 2);
            assert_eq!(failed, 8);
            assert!(wal.poisoned().is_some());
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_tail_is_cut_and_mid_log_damage_refuses_to_start() {
        let dir = temp_dir("torn");
        let (_, recovered) = collect(&dir, 0);
        run(async move {
            let Recovered { wal, writer, .. } = recovered;
            glommio::spawn_local(writer.run()).detach();
            for i in 0..3u32 {
                let index = wal.append(1, &vec![i as u8; 5000]).unwrap();
                wal.wait_durable(index).await.unwrap();
            }
        });
        let segment = segment_path(&dir, 1);
        let mut bytes = std::fs::read(&segment).unwrap();
        // Batches sit at 0, 8192 and 16384 (5000-byte records, 4 KiB blocks).
        let torn = bytes.clone();
        let mut torn_image = torn.clone();
        torn_image[16384 + 100] ^= 0xff;
        std::fs::write(&segment, &torn_image).unwrap();
        let (records, recovered) = collect(&dir, 0);
        assert_eq!(records.len(), 2);
        assert!(recovered.torn_tail_cut);
        drop(recovered);
        // The cut is durable: a second recovery sees a clean end.
        let (records, recovered) = collect(&dir, 0);
        assert_eq!((records.len(), recovered.torn_tail_cut), (2, false));
        drop(recovered);
        bytes[100] ^= 0x01;
        std::fs::write(&segment, &bytes).unwrap();
        let error = recover(&dir, 0, DurabilityMode::Sync, |_| Ok(()))
            .err()
            .expect("corruption accepted");
        let message = error.to_string();
        assert!(
            message.contains("corruption") && message.contains("offset 0"),
            "{message}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
