//! A group's snapshots on disk: the state machine's data as of one log
//! index, with the Raft metadata that says which index (and term, and
//! membership) it stands for.
//!
//! Why durable snapshots: once a snapshot covers a prefix of the log, the
//! log store purges that prefix (the WAL deletes whole segments), so the
//! snapshot becomes the only copy of those entries' effects. A snapshot
//! must therefore be on disk (written, `fdatasync`ed, renamed, directory
//! fsynced) *before* openraft learns it exists: before `build_snapshot`
//! returns on the leader or a follower that compacts, and before
//! `install_snapshot` returns on a follower that receives one. At start
//! openraft asks for the current snapshot and, since the state machine is
//! transient, installs it and re-applies the log after it
//! (`restore_from_snapshot` then `reapply_committed` in openraft).
//!
//! # File layout (`raft-<last index, 20 digits>.snap`, little-endian)
//! ```text
//! magic u32 "TRSN" | format u32 (1) | meta_bytes u32 | data_bytes u64
//! | meta (postcard SnapshotMeta: last log id, membership) | data (the Applier's dump)
//! | crc u32 (CRC-32C of everything before it)
//! ```
//! Written to `<name>.tmp` with glommio's DMA writer, synced, renamed: a
//! snapshot file exists whole or not at all. Older files are deleted after
//! a newer one is in place. A file that fails its checksum at start stops
//! the group: the log it replaced is gone, so there is nothing to fall
//! back to silently.

use std::io;
use std::path::{Path, PathBuf};

use futures_lite::AsyncWriteExt;
use glommio::io::{BufferedFile, DmaFile, DmaStreamWriterBuilder};
use openraft::type_config::alias::SnapshotMetaOf;
use tinkerdb_storage::wal::sync_dir;

use crate::TypeConfig;

const MAGIC: u32 = u32::from_le_bytes(*b"TRSN");
const FORMAT: u32 = 1;
const HEADER_BYTES: usize = 4 + 4 + 4 + 8;

/// A snapshot's metadata.
pub type SnapshotMeta = SnapshotMetaOf<TypeConfig>;

/// The snapshot file of the entry `last_index` (or `none` for a snapshot
/// of the empty log).
pub fn snapshot_file_name(meta: &SnapshotMeta) -> String {
    match meta.last_log_id {
        Some(log_id) => format!("raft-{:020}.snap", log_id.index),
        None => "raft-none.snap".to_string(),
    }
}

/// The newest snapshot in a directory, as found at start.
#[derive(Debug, Clone)]
pub struct StoredSnapshot {
    /// Its metadata.
    pub meta: SnapshotMeta,
    /// Its file.
    pub path: PathBuf,
    /// Size of the data (the dump), bytes.
    pub data_bytes: u64,
}

fn encode(meta: &SnapshotMeta, data: &[u8]) -> Vec<u8> {
    let meta_bytes = postcard::to_allocvec(meta).expect("snapshot metadata serializes");
    let mut image = Vec::with_capacity(HEADER_BYTES + meta_bytes.len() + data.len() + 4);
    image.extend_from_slice(&MAGIC.to_le_bytes());
    image.extend_from_slice(&FORMAT.to_le_bytes());
    image.extend_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
    image.extend_from_slice(&(data.len() as u64).to_le_bytes());
    image.extend_from_slice(&meta_bytes);
    image.extend_from_slice(data);
    let crc = crc32c::crc32c(&image);
    image.extend_from_slice(&crc.to_le_bytes());
    image
}

fn invalid(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot {}: {why}", path.display()),
    )
}

/// Decodes a whole snapshot file: its metadata and its data.
pub fn decode(path: &Path, image: &[u8]) -> io::Result<(SnapshotMeta, Vec<u8>)> {
    if image.len() < HEADER_BYTES + 4 {
        return Err(invalid(path, "shorter than its header"));
    }
    let (body, crc) = image.split_at(image.len() - 4);
    let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != crc {
        return Err(invalid(path, "checksum mismatch"));
    }
    let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    if u32_at(0) != MAGIC || u32_at(4) != FORMAT {
        return Err(invalid(path, "not a TinkerDB Raft snapshot (format 1)"));
    }
    let meta_bytes = u32_at(8) as usize;
    let data_bytes = u64::from_le_bytes(body[12..20].try_into().expect("8 bytes")) as usize;
    if HEADER_BYTES + meta_bytes + data_bytes != body.len() {
        return Err(invalid(path, "lengths do not match the file size"));
    }
    let meta: SnapshotMeta = postcard::from_bytes(&body[HEADER_BYTES..HEADER_BYTES + meta_bytes])
        .map_err(|error| invalid(path, error))?;
    Ok((meta, body[HEADER_BYTES + meta_bytes..].to_vec()))
}

/// Finds and checks the newest snapshot in `dir` (blocking: called once
/// when a group opens, before it serves anything).
pub fn newest(dir: &Path) -> io::Result<Option<StoredSnapshot>> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| name.starts_with("raft-") && name.ends_with(".snap"))
            .collect(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    // Zero-padded indexes sort as numbers; "raft-none" sorts after the
    // digits but only exists alone (a snapshot of an empty log).
    names.sort();
    let Some(name) = names
        .iter()
        .rev()
        .find(|n| *n != "raft-none.snap")
        .or(names.first())
    else {
        return Ok(None);
    };
    let path = dir.join(name);
    let image = std::fs::read(&path)?;
    let (meta, data) = decode(&path, &image)?;
    Ok(Some(StoredSnapshot {
        meta,
        path,
        data_bytes: data.len() as u64,
    }))
}

/// Reads a snapshot file written by [`write`].
pub async fn read(path: &Path) -> io::Result<(SnapshotMeta, Vec<u8>)> {
    // Buffered: the file is read whole once, and O_DIRECT reads need
    // aligned sizes (and fail on tmpfs).
    let file = BufferedFile::open(path).await?;
    let size = file.file_size().await?;
    let read = file.read_at(0, size as usize).await;
    let _ = file.close().await;
    let image = read?;
    decode(path, &image)
}

/// Writes a snapshot durably into `dir` and deletes the older ones.
/// Returns the stored snapshot once it is on disk.
pub async fn write(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> io::Result<StoredSnapshot> {
    std::fs::create_dir_all(dir)?;
    let name = snapshot_file_name(meta);
    let path = dir.join(&name);
    let temp = dir.join(format!("{name}.tmp"));
    let image = encode(meta, data);
    let written = async {
        let file = DmaFile::create(&temp).await?;
        let mut writer = DmaStreamWriterBuilder::new(file)
            .with_buffer_size(1 << 20)
            .build();
        writer.write_all(&image).await?;
        writer.sync().await?;
        writer.close().await
    }
    .await;
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(error);
    }
    std::fs::rename(&temp, &path)?;
    sync_dir(dir)?;
    // Everything older is covered by this one.
    for entry in std::fs::read_dir(dir)?.flatten() {
        let Ok(other) = entry.file_name().into_string() else {
            continue;
        };
        let older = other == "raft-none.snap" || other < name;
        if other != name && other.starts_with("raft-") && other.ends_with(".snap") && older {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(StoredSnapshot {
        meta: meta.clone(),
        path,
        data_bytes: data.len() as u64,
    })
}
