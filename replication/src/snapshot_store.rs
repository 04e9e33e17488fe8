//! A group's snapshots on disk: the state machine's data as of one log
//! index, and the Raft metadata that says which index (and term, and
//! membership) it stands for.
//!
//! Why durable snapshots: once a snapshot covers a prefix of the log, the
//! log store purges that prefix (the WAL deletes whole segments), so the
//! snapshot becomes the only copy of those entries' effects. A snapshot
//! must therefore be on disk (written, `fdatasync`ed, renamed, directory
//! fsynced) *before* openraft learns it exists: before `build_snapshot`
//! returns on a replica that compacts its log, and before
//! `install_snapshot` returns on a follower that receives one. At start
//! openraft asks for the current snapshot and, since the state machine is
//! transient, installs it and re-applies the log after it
//! (`restore_from_snapshot` then `reapply_committed` in openraft).
//!
//! # Files (in the group's snapshot directory)
//! - `raft-<last index, 20 digits>.data`: the data, as the node's
//!   [`crate::state_machine::Applier`] streams it (TinkerDB's node writes
//!   the storage crate's snapshot format, `tinkerdb_storage::snapshot`).
//!   Written in steps while the group keeps applying, through glommio's DMA
//!   writer, then synced.
//! - `raft-<last index>.meta` (little-endian), written after the data is
//!   durable, so it is the commit mark of the pair:
//!   ```text
//!   magic u32 "TRSM" | format u32 (1) | meta_bytes u32 | meta (postcard SnapshotMeta)
//!   | data_bytes u64 | data_crc u32 (CRC-32C of the data file) | crc u32 (of all before)
//!   ```
//! Both go to `<name>.tmp` first and are renamed; older pairs are deleted
//! once a newer one is complete. At start the newest complete pair is
//! found and its meta checked; the data's checksum is checked whenever the
//! data is read (openraft reads it at start to install it). A damaged
//! snapshot stops the group: the log it replaced is gone, so there is
//! nothing to fall back to silently.

use std::io;
use std::path::{Path, PathBuf};

use futures_lite::AsyncWriteExt;
use glommio::io::{BufferedFile, DmaFile, DmaStreamWriter, DmaStreamWriterBuilder};
use openraft::type_config::alias::SnapshotMetaOf;
use tinkerdb_storage::wal::sync_dir;

use crate::TypeConfig;

const META_MAGIC: u32 = u32::from_le_bytes(*b"TRSM");
const META_FORMAT: u32 = 1;

/// A snapshot's Raft metadata.
pub type SnapshotMeta = SnapshotMetaOf<TypeConfig>;

/// The file stem of a snapshot: `raft-<last index>` (or `raft-none` for a
/// snapshot of the empty log).
pub fn snapshot_stem(meta: &SnapshotMeta) -> String {
    match meta.last_log_id {
        Some(log_id) => format!("raft-{:020}", log_id.index),
        None => "raft-none".to_string(),
    }
}

/// A complete snapshot on disk.
#[derive(Debug, Clone)]
pub struct StoredSnapshot {
    /// Its Raft metadata.
    pub meta: SnapshotMeta,
    /// Its data file.
    pub data_path: PathBuf,
    /// Size of the data, bytes.
    pub data_bytes: u64,
    /// CRC-32C of the data, checked whenever it is read.
    pub data_crc: u32,
}

fn invalid(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot {}: {why}", path.display()),
    )
}

fn encode_meta(meta: &SnapshotMeta, data_bytes: u64, data_crc: u32) -> Vec<u8> {
    let meta_bytes = postcard::to_allocvec(meta).expect("snapshot metadata serializes");
    let mut image = Vec::with_capacity(32 + meta_bytes.len());
    image.extend_from_slice(&META_MAGIC.to_le_bytes());
    image.extend_from_slice(&META_FORMAT.to_le_bytes());
    image.extend_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
    image.extend_from_slice(&meta_bytes);
    image.extend_from_slice(&data_bytes.to_le_bytes());
    image.extend_from_slice(&data_crc.to_le_bytes());
    let crc = crc32c::crc32c(&image);
    image.extend_from_slice(&crc.to_le_bytes());
    image
}

/// Decodes a meta file: the metadata, the data's size and checksum.
fn decode_meta(path: &Path, image: &[u8]) -> io::Result<(SnapshotMeta, u64, u32)> {
    if image.len() < 12 + 8 + 4 + 4 {
        return Err(invalid(path, "shorter than its fixed fields"));
    }
    let (body, crc) = image.split_at(image.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(invalid(path, "checksum mismatch"));
    }
    let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    if u32_at(0) != META_MAGIC || u32_at(4) != META_FORMAT {
        return Err(invalid(path, "not a TinkerDB Raft snapshot (format 1)"));
    }
    let meta_bytes = u32_at(8) as usize;
    if 12 + meta_bytes + 12 != body.len() {
        return Err(invalid(path, "lengths do not match the file size"));
    }
    let meta: SnapshotMeta =
        postcard::from_bytes(&body[12..12 + meta_bytes]).map_err(|error| invalid(path, error))?;
    let tail = &body[12 + meta_bytes..];
    let data_bytes = u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"));
    let data_crc = u32::from_le_bytes(tail[8..12].try_into().expect("4 bytes"));
    Ok((meta, data_bytes, data_crc))
}

/// Finds and checks the newest complete snapshot in `dir` (blocking:
/// called once when a group opens, before it serves anything).
pub fn newest(dir: &Path) -> io::Result<Option<StoredSnapshot>> {
    let names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    // Temporaries are snapshots a crash interrupted: never complete.
    for name in names.iter().filter(|name| name.ends_with(".tmp")) {
        std::fs::remove_file(dir.join(name))?;
    }
    let mut stems: Vec<String> = names
        .iter()
        .filter_map(|name| name.strip_suffix(".meta").map(str::to_owned))
        .filter(|stem| stem.starts_with("raft-"))
        .collect();
    // Zero-padded indexes sort as numbers; "raft-none" (the empty log)
    // counts only when it is alone.
    stems.sort();
    let Some(stem) = stems
        .iter()
        .rev()
        .find(|stem| *stem != "raft-none")
        .or(stems.first())
    else {
        return Ok(None);
    };
    let meta_path = dir.join(format!("{stem}.meta"));
    let (meta, data_bytes, data_crc) = decode_meta(&meta_path, &std::fs::read(&meta_path)?)?;
    let data_path = dir.join(format!("{stem}.data"));
    // The data's checksum is checked when it is read (openraft reads it at
    // start to install it): here only that it is there, whole.
    if std::fs::metadata(&data_path)?.len() != data_bytes {
        return Err(invalid(&data_path, "size does not match its .meta"));
    }
    Ok(Some(StoredSnapshot {
        meta,
        data_path,
        data_bytes,
        data_crc,
    }))
}

/// Reads a snapshot's data, checking it against its metadata.
pub async fn read_data(stored: &StoredSnapshot) -> io::Result<Vec<u8>> {
    // Buffered: the file is read whole, and O_DIRECT reads need aligned
    // sizes (and fail on tmpfs).
    let file = BufferedFile::open(&stored.data_path).await?;
    let read = file.read_at(0, stored.data_bytes as usize).await;
    let _ = file.close().await;
    let data = read?.to_vec();
    if data.len() as u64 != stored.data_bytes || crc32c::crc32c(&data) != stored.data_crc {
        return Err(invalid(
            &stored.data_path,
            "size or checksum does not match its .meta",
        ));
    }
    Ok(data)
}

/// A snapshot being written: the data streamed in, then committed with its
/// metadata.
pub struct SnapshotWriter {
    dir: PathBuf,
    stem: String,
    writer: DmaStreamWriter,
    data_bytes: u64,
    data_crc: u32,
}

impl SnapshotWriter {
    /// Starts writing the snapshot `meta` into `dir`.
    pub async fn create(dir: &Path, meta: &SnapshotMeta) -> io::Result<SnapshotWriter> {
        std::fs::create_dir_all(dir)?;
        let stem = snapshot_stem(meta);
        let file = DmaFile::create(dir.join(format!("{stem}.data.tmp"))).await?;
        let writer = DmaStreamWriterBuilder::new(file)
            .with_buffer_size(1 << 20)
            .build();
        Ok(SnapshotWriter {
            dir: dir.to_owned(),
            stem,
            writer,
            data_bytes: 0,
            data_crc: 0,
        })
    }

    /// Appends data.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes).await?;
        self.data_bytes += bytes.len() as u64;
        self.data_crc = crc32c::crc32c_append(self.data_crc, bytes);
        Ok(())
    }

    /// Makes the data durable, then its metadata (the commit mark), then
    /// deletes older snapshots. Returns the snapshot once it is on disk.
    pub async fn commit(mut self, meta: &SnapshotMeta) -> io::Result<StoredSnapshot> {
        self.writer.sync().await?;
        self.writer.close().await?;
        let data_temp = self.dir.join(format!("{}.data.tmp", self.stem));
        let data_path = self.dir.join(format!("{}.data", self.stem));
        std::fs::rename(&data_temp, &data_path)?;
        let meta_temp = self.dir.join(format!("{}.meta.tmp", self.stem));
        let meta_path = self.dir.join(format!("{}.meta", self.stem));
        let image = encode_meta(meta, self.data_bytes, self.data_crc);
        let file = DmaFile::create(&meta_temp).await?;
        let mut writer = DmaStreamWriterBuilder::new(file).build();
        writer.write_all(&image).await?;
        writer.sync().await?;
        writer.close().await?;
        std::fs::rename(&meta_temp, &meta_path)?;
        sync_dir(&self.dir)?;
        delete_older_than(&self.dir, &self.stem)?;
        Ok(StoredSnapshot {
            meta: meta.clone(),
            data_path,
            data_bytes: self.data_bytes,
            data_crc: self.data_crc,
        })
    }

    /// Drops a snapshot that will not be completed.
    pub async fn abandon(mut self) {
        let _ = self.writer.close().await;
        let _ = std::fs::remove_file(self.dir.join(format!("{}.data.tmp", self.stem)));
    }
}

/// Deletes every complete snapshot older than `stem`. Temporaries are left
/// alone (an older build may still be writing one; [`newest`] removes
/// those left by a crash).
fn delete_older_than(dir: &Path, stem: &str) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(other) = name
            .strip_suffix(".data")
            .or_else(|| name.strip_suffix(".meta"))
        else {
            continue;
        };
        let older = other == "raft-none" || other < stem;
        if other != stem && other.starts_with("raft-") && older {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Writes a whole snapshot received from the leader.
pub async fn write_whole(
    dir: &Path,
    meta: &SnapshotMeta,
    data: &[u8],
) -> io::Result<StoredSnapshot> {
    let mut writer = SnapshotWriter::create(dir, meta).await?;
    writer.write(data).await?;
    writer.commit(meta).await
}
