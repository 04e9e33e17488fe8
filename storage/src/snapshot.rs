//! Snapshots: a point-in-time copy of one core's store, taken without
//! stopping the core and without copying the whole map (no fork).
//!
//! # How a fork-less cut works
//! A snapshot starts at a *cut*: the WAL index of the last write applied.
//! From then on the store keeps changing, so the snapshot must record each
//! slot as it was at the cut. Slots are serialised one at a time, in order,
//! by a low-priority task ([`SnapshotCut::advance`]). Before any write to a
//! slot the snapshot has not reached yet, the shard first serialises that
//! slot as it still is ([`SnapshotCut::before_write`]): copy-on-write at slot
//! granularity. Each slot is thus written exactly once, as of the cut, and
//! the cost of a write during a snapshot is at most one slot's entries.
//! Recovery loads the snapshot, then replays the WAL after the cut.
//!
//! # File layout (`snapshot-<cut, 20 digits>.snap`, little-endian)
//! ```text
//! header  = magic u32 "TSNP" | format u32 (1) | cut_index u64 | last_version u64
//!           | created_ms u64 | header_crc u32 (CRC-32C of the 32 bytes before)
//! frame*  = payload_bytes u32 | crc u32 (of payload) | payload (LoggedOp::Put ...)
//! trailer = 0xFFFF_FFFF u32 | entries u64 | frames u64 | crc u32 (of the 16 bytes before)
//! ```
//! Written to `<name>.tmp` with O_DIRECT, `fdatasync`ed, renamed, and the
//! directory fsynced: a snapshot file either exists whole or not at all.

use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::log_op::LoggedOp;
use crate::slot::{Slot, SLOT_COUNT};
use crate::store::{Store, TenantId};

/// "TSNP" as a little-endian u32.
pub const SNAPSHOT_MAGIC: u32 = u32::from_le_bytes(*b"TSNP");
/// Version of the layout above.
pub const SNAPSHOT_FORMAT: u32 = 1;
/// Bytes of the header.
pub const SNAPSHOT_HEADER_BYTES: usize = 36;
/// A frame is sealed once its payload reaches this size.
pub const SNAPSHOT_FRAME_BYTES: usize = 256 << 10;
/// Largest frame a reader accepts (a frame can exceed the sealing size by
/// one entry: a 16 KiB key and a 4 MiB value at most today).
pub const SNAPSHOT_MAX_FRAME_BYTES: usize = 64 << 20;
const TRAILER_MARKER: u32 = u32::MAX;

/// The file name of the snapshot cut at `cut_index`.
pub fn snapshot_file_name(cut_index: u64) -> String {
    format!("snapshot-{cut_index:020}.snap")
}

/// A snapshot being taken: which slots are done, and bytes not yet written.
pub struct SnapshotCut {
    /// WAL index of the last write the snapshot includes.
    pub cut_index: u64,
    slots: Range<usize>,
    next_slot: usize,
    done: Vec<u64>,
    frame: Vec<u8>,
    sealed: Vec<u8>,
    entries: u64,
    frames: u64,
}

impl SnapshotCut {
    /// Starts a snapshot of the slots in `slots` at `cut_index`.
    pub fn new(
        cut_index: u64,
        last_version: u64,
        slots: Range<usize>,
        created_ms: u64,
    ) -> SnapshotCut {
        assert!(slots.end <= SLOT_COUNT && slots.start < slots.end);
        let mut sealed = Vec::with_capacity(SNAPSHOT_FRAME_BYTES);
        sealed.extend_from_slice(&SNAPSHOT_MAGIC.to_le_bytes());
        sealed.extend_from_slice(&SNAPSHOT_FORMAT.to_le_bytes());
        sealed.extend_from_slice(&cut_index.to_le_bytes());
        sealed.extend_from_slice(&last_version.to_le_bytes());
        sealed.extend_from_slice(&created_ms.to_le_bytes());
        let crc = crc32c::crc32c(&sealed);
        sealed.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(sealed.len(), SNAPSHOT_HEADER_BYTES);
        SnapshotCut {
            cut_index,
            next_slot: slots.start,
            slots,
            done: vec![0; SLOT_COUNT / 64],
            frame: Vec::new(),
            sealed,
            entries: 0,
            frames: 0,
        }
    }

    fn is_done(&self, slot: usize) -> bool {
        self.done[slot / 64] & (1 << (slot % 64)) != 0
    }

    fn serialize_slot(
        &mut self,
        store: &Store,
        slot: usize,
        tenant_name: &dyn Fn(TenantId) -> String,
    ) {
        assert!(self.slots.contains(&slot) && !self.is_done(slot));
        self.done[slot / 64] |= 1 << (slot % 64);
        let frame = &mut self.frame;
        let mut entries = 0;
        store.for_each_entry_in_slot(
            slot as Slot,
            |tenant, key, value, version, expires_at_ms| {
                LoggedOp::Put {
                    tenant: &tenant_name(tenant),
                    slot: slot as Slot,
                    key,
                    value,
                    version,
                    expires_at_ms,
                }
                .encode(frame);
                entries += 1;
            },
        );
        self.entries += entries;
        if self.frame.len() >= SNAPSHOT_FRAME_BYTES {
            self.seal_frame();
        }
    }

    fn seal_frame(&mut self) {
        if self.frame.is_empty() {
            return;
        }
        let length = u32::try_from(self.frame.len()).expect("frame under 4 GiB");
        self.sealed.extend_from_slice(&length.to_le_bytes());
        self.sealed
            .extend_from_slice(&crc32c::crc32c(&self.frame).to_le_bytes());
        self.sealed.append(&mut self.frame);
        self.frames += 1;
    }

    /// Copy-on-write: call before any write to `slot` while the snapshot
    /// runs. Serialises the slot as it is now if the snapshot has not yet.
    pub fn before_write(
        &mut self,
        store: &Store,
        slot: Slot,
        tenant_name: &dyn Fn(TenantId) -> String,
    ) {
        let slot = usize::from(slot);
        if self.slots.contains(&slot) && !self.is_done(slot) {
            self.serialize_slot(store, slot, tenant_name);
        }
    }

    /// Before a write that touches every slot (FLUSHDB): serialise all.
    pub fn before_write_everywhere(
        &mut self,
        store: &Store,
        tenant_name: &dyn Fn(TenantId) -> String,
    ) {
        while !self.advance(store, usize::MAX, tenant_name) {}
    }

    /// Serialises up to `max_slots` more slots in order. True when all are done.
    pub fn advance(
        &mut self,
        store: &Store,
        max_slots: usize,
        tenant_name: &dyn Fn(TenantId) -> String,
    ) -> bool {
        let mut serialized = 0;
        while self.next_slot < self.slots.end && serialized < max_slots {
            let slot = self.next_slot;
            self.next_slot += 1;
            if !self.is_done(slot) {
                self.serialize_slot(store, slot, tenant_name);
                serialized += 1;
            }
        }
        self.next_slot >= self.slots.end
    }

    /// Bytes ready to be written (sealed frames), leaving the open frame.
    pub fn take_ready_bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.sealed)
    }

    /// Ends the snapshot: the last bytes to write (open frame and trailer),
    /// and the number of entries. Every slot must be done.
    pub fn finish(mut self) -> (Vec<u8>, u64) {
        assert!(
            self.next_slot >= self.slots.end,
            "finish before every slot is serialised"
        );
        self.seal_frame();
        let mut trailer = Vec::with_capacity(16);
        trailer.extend_from_slice(&self.entries.to_le_bytes());
        trailer.extend_from_slice(&self.frames.to_le_bytes());
        self.sealed.extend_from_slice(&TRAILER_MARKER.to_le_bytes());
        self.sealed.extend_from_slice(&trailer);
        self.sealed
            .extend_from_slice(&crc32c::crc32c(&trailer).to_le_bytes());
        (self.sealed, self.entries)
    }
}

/// What a loaded snapshot said about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// WAL index it covers up to.
    pub cut_index: u64,
    /// Highest version handed out before the cut.
    pub last_version: u64,
    /// Entries loaded.
    pub entries: u64,
}

/// Why a snapshot could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("snapshot {path} is unreadable at byte {offset}: {reason}; refusing to start")]
pub struct SnapshotError {
    /// The file.
    pub path: PathBuf,
    /// Where.
    pub offset: u64,
    /// What.
    pub reason: String,
}

/// Reads a snapshot file, calling `apply` with every entry (a `Put`).
pub fn load(
    path: &Path,
    mut apply: impl FnMut(LoggedOp<'_>) -> Result<(), String>,
) -> Result<SnapshotInfo, SnapshotError> {
    let mut offset = 0u64;
    let fail = |offset: u64, reason: String| SnapshotError {
        path: path.to_owned(),
        offset,
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(0, e.to_string()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    reader
        .read_exact(&mut header)
        .map_err(|e| fail(0, e.to_string()))?;
    let u32_at =
        |bytes: &[u8], at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
    let u64_at =
        |bytes: &[u8], at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
    if u32_at(&header, 0) != SNAPSHOT_MAGIC || u32_at(&header, 4) != SNAPSHOT_FORMAT {
        return Err(fail(0, "not a TinkerDB snapshot of format 1".into()));
    }
    if u32_at(&header, 32) != crc32c::crc32c(&header[..32]) {
        return Err(fail(0, "header checksum mismatch".into()));
    }
    let cut_index = u64_at(&header, 8);
    let last_version = u64_at(&header, 16);
    if last_version > crate::store::MAX_VERSION {
        return Err(fail(
            0,
            format!("version counter {last_version} out of range"),
        ));
    }
    offset += SNAPSHOT_HEADER_BYTES as u64;
    let mut entries = 0u64;
    let mut frames = 0u64;
    let mut payload = Vec::new();
    loop {
        let mut frame_header = [0u8; 8];
        reader
            .read_exact(&mut frame_header)
            .map_err(|e| fail(offset, format!("truncated ({e})")))?;
        let length = u32_at(&frame_header, 0);
        if length == TRAILER_MARKER {
            // The marker is followed by entries u64 | frames u64 | crc u32;
            // the first 4 of those bytes were read with the frame header.
            let mut rest = [0u8; 16];
            reader
                .read_exact(&mut rest)
                .map_err(|e| fail(offset, format!("truncated trailer ({e})")))?;
            let mut all = Vec::with_capacity(20);
            all.extend_from_slice(&frame_header[4..8]);
            all.extend_from_slice(&rest);
            let (body, crc) = all.split_at(16);
            if u32_at(crc, 0) != crc32c::crc32c(body) {
                return Err(fail(offset, "trailer checksum mismatch".into()));
            }
            if u64_at(body, 0) != entries || u64_at(body, 8) != frames {
                return Err(fail(
                    offset,
                    "trailer counts do not match the frames".into(),
                ));
            }
            let mut extra = [0u8; 1];
            if reader
                .read(&mut extra)
                .map_err(|e| fail(offset, e.to_string()))?
                != 0
            {
                return Err(fail(offset, "bytes after the trailer".into()));
            }
            return Ok(SnapshotInfo {
                cut_index,
                last_version,
                entries,
            });
        }
        let length = length as usize;
        if length > SNAPSHOT_MAX_FRAME_BYTES {
            return Err(fail(
                offset,
                format!("frame of {length} bytes is over the limit"),
            ));
        }
        payload.resize(length, 0);
        reader
            .read_exact(&mut payload)
            .map_err(|e| fail(offset, format!("truncated frame ({e})")))?;
        if u32_at(&frame_header, 4) != crc32c::crc32c(&payload) {
            return Err(fail(offset, "frame checksum mismatch".into()));
        }
        let mut at = 0;
        while at < payload.len() {
            let (op, used) =
                LoggedOp::decode(&payload[at..]).map_err(|e| fail(offset, e.to_string()))?;
            if !matches!(op, LoggedOp::Put { .. }) {
                return Err(fail(offset, "a snapshot holds only entries".into()));
            }
            apply(op).map_err(|reason| fail(offset, reason))?;
            at += used;
            entries += 1;
        }
        frames += 1;
        offset += 8 + length as u64;
    }
}

/// The newest complete snapshot in `dir` (by cut index), if any. Leftover
/// `.tmp` files from an interrupted snapshot are deleted.
pub fn newest(dir: &Path) -> std::io::Result<Option<(u64, PathBuf)>> {
    let mut newest = None;
    if !dir.exists() {
        return Ok(None);
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with("snapshot-") && name.ends_with(".tmp") {
            std::fs::remove_file(&path)?;
            continue;
        }
        let Some(cut) = name
            .strip_prefix("snapshot-")
            .and_then(|n| n.strip_suffix(".snap"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if newest.as_ref().is_none_or(|(best, _)| cut > *best) {
            newest = Some((cut, path));
        }
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SetOptions;

    fn name(tenant: TenantId) -> String {
        format!("t{tenant}")
    }

    /// A header whose version counter is out of range is corruption: a
    /// store restored from it would hand out wrapped versions.
    #[test]
    fn a_version_counter_out_of_range_is_refused() {
        let store = Store::new();
        let mut cut = SnapshotCut::new(3, u64::MAX, 0..SLOT_COUNT, 0);
        while !cut.advance(&store, 4096, &name) {}
        let mut bytes = cut.take_ready_bytes();
        bytes.extend(cut.finish().0);
        let path =
            std::env::temp_dir().join(format!("tinkerdb-snap-version-{}", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let error = load(&path, |_| Ok(())).unwrap_err().to_string();
        let _ = std::fs::remove_file(&path);
        assert!(error.contains("out of range"), "{error}");
    }

    #[test]
    fn copy_on_write_cut_captures_the_state_at_the_cut() {
        let mut store = Store::new();
        for i in 0..2000u32 {
            let key = format!("k{i}");
            let slot = crate::slot::hash_slot("t1", key.as_bytes());
            store
                .set(1, slot, key.as_bytes(), b"before", SetOptions::default(), 0)
                .unwrap();
        }
        let mut cut = SnapshotCut::new(77, store.last_version(), 0..SLOT_COUNT, 0);
        let mut bytes = Vec::new();
        // Interleave background progress with writes: each write first
        // preserves its slot.
        for i in 0..2000u32 {
            if i % 100 == 0 {
                cut.advance(&store, 500, &name);
                bytes.extend(cut.take_ready_bytes());
            }
            let key = format!("k{i}");
            let slot = crate::slot::hash_slot("t1", key.as_bytes());
            cut.before_write(&store, slot, &name);
            store
                .set(1, slot, key.as_bytes(), b"after", SetOptions::default(), 0)
                .unwrap();
        }
        while !cut.advance(&store, 1000, &name) {}
        let (tail, entries) = cut.finish();
        bytes.extend(tail);
        assert_eq!(entries, 2000);
        let path = std::env::temp_dir().join(format!("tinkerdb-snap-{}", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let mut seen = 0;
        let info = load(&path, |op| {
            let LoggedOp::Put { tenant, value, .. } = op else {
                unreachable!()
            };
            assert_eq!(
                (tenant, value),
                ("t1", &b"before"[..]),
                "a value written after the cut leaked in"
            );
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((info.cut_index, info.entries, seen), (77, 2000, 2000));
        // Any damage is detected.
        for at in [0usize, 40, bytes.len() / 2, bytes.len() - 3] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            std::fs::write(&path, &damaged).unwrap();
            assert!(
                load(&path, |_| Ok(())).is_err(),
                "damage at {at} not detected"
            );
        }
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(load(&path, |_| Ok(())).is_err(), "truncation not detected");
        let _ = std::fs::remove_file(&path);
    }
}
