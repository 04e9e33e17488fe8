//! Checksum fixing and layout helpers for the checksummed formats.
//!
//! Each fixer walks the bytes the way the decoder will and rewrites every
//! CRC-32C it finds a place for, so mutations of the fields behind the
//! checksums reach the parsers. They never fail: whatever does not parse
//! far enough to hold a checksum is left as it is (and the decoder refuses
//! it, which is tested too).

use tinkerdb_storage::log_op::LoggedOp;
use tinkerdb_storage::snapshot::SNAPSHOT_HEADER_BYTES;
use tinkerdb_storage::wal_format::{
    record_bytes, BATCH_HEADER_BYTES, BATCH_MAGIC, BLOCK_BYTES, RECORD_HEADER_BYTES,
};

/// Most blocks a compact WAL input is laid out into (bounds memory and time).
pub const MAX_COMPACT_BLOCKS: usize = 64;

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// Lays out a compact WAL input as a segment image: the input is a
/// sequence of batches (header and body) without their padding; each one
/// is copied to the next block boundary, its length taken from its header
/// (`body_bytes`, clipped to what is left). An all-zero header becomes an
/// empty block (a gap), so gaps and torn tails can be expressed too.
pub fn compact_to_segment(compact: &[u8]) -> Vec<u8> {
    let mut segment = Vec::new();
    let mut at = 0;
    while at < compact.len() && segment.len() < MAX_COMPACT_BLOCKS * BLOCK_BYTES {
        let rest = &compact[at..];
        let take = if rest.len() < BATCH_HEADER_BYTES {
            rest.len()
        } else {
            let body_bytes = u32_at(rest, 8) as usize;
            BATCH_HEADER_BYTES
                .saturating_add(body_bytes)
                .min(rest.len())
                .min(MAX_COMPACT_BLOCKS * BLOCK_BYTES)
        };
        let start = segment.len();
        segment.extend_from_slice(&rest[..take]);
        let end = start + take.div_ceil(BLOCK_BYTES).max(1) * BLOCK_BYTES;
        segment.resize(end, 0);
        at += take;
    }
    segment
}

/// Recomputes, in place, every record CRC and batch header CRC of a WAL
/// segment image: at each block boundary holding the batch magic, the
/// records of its body that fit, then the header.
pub fn fix_wal_checksums(segment: &mut [u8]) {
    let mut offset = 0;
    while offset + BATCH_HEADER_BYTES <= segment.len() {
        if u32_at(segment, offset) != BATCH_MAGIC {
            offset += BLOCK_BYTES;
            continue;
        }
        let body_bytes = u32_at(segment, offset + 8) as usize;
        let body_start = offset + BATCH_HEADER_BYTES;
        let body_end = body_start.saturating_add(body_bytes).min(segment.len());
        let mut at = body_start;
        while at + RECORD_HEADER_BYTES <= body_end {
            let payload_bytes = u32_at(segment, at) as usize;
            let frame = record_bytes(payload_bytes);
            if frame > body_end - at {
                break;
            }
            let crc = crc32c::crc32c(&segment[at + 8..at + RECORD_HEADER_BYTES + payload_bytes]);
            put_u32(segment, at + 4, crc);
            at += frame;
        }
        let crc = crc32c::crc32c(&segment[offset + 8..offset + BATCH_HEADER_BYTES]);
        put_u32(segment, offset + 4, crc);
        let padded = BATCH_HEADER_BYTES
            .saturating_add(body_bytes)
            .div_ceil(BLOCK_BYTES)
            .saturating_mul(BLOCK_BYTES);
        offset = offset.saturating_add(padded.max(BLOCK_BYTES));
    }
}

/// Recomputes, in place, a snapshot file's header CRC, each frame's CRC
/// and the trailer's CRC; with `fix_counts`, the trailer's entry and
/// frame counts are first set to what the frames hold (entries counted by
/// decoding each frame's operations as `snapshot::load` does).
pub fn fix_snapshot_checksums(file: &mut [u8], fix_counts: bool) {
    if file.len() < SNAPSHOT_HEADER_BYTES {
        return;
    }
    let crc = crc32c::crc32c(&file[..32]);
    put_u32(file, 32, crc);
    let mut at = SNAPSHOT_HEADER_BYTES;
    let (mut entries, mut frames) = (0u64, 0u64);
    while at + 8 <= file.len() {
        let length = u32_at(file, at);
        if length == u32::MAX {
            // Trailer: marker | entries u64 | frames u64 | crc u32.
            if at + 24 > file.len() {
                return;
            }
            if fix_counts {
                file[at + 4..at + 12].copy_from_slice(&entries.to_le_bytes());
                file[at + 12..at + 20].copy_from_slice(&frames.to_le_bytes());
            }
            let crc = crc32c::crc32c(&file[at + 4..at + 20]);
            put_u32(file, at + 20, crc);
            return;
        }
        let length = length as usize;
        let Some(end) = (at + 8)
            .checked_add(length)
            .filter(|&end| end <= file.len())
        else {
            return;
        };
        let crc = crc32c::crc32c(&file[at + 8..end]);
        put_u32(file, at + 4, crc);
        let payload = &file[at + 8..end];
        let mut used = 0;
        while used < payload.len() {
            match LoggedOp::decode(&payload[used..]) {
                Ok((_, n)) => {
                    used += n;
                    entries += 1;
                }
                Err(_) => break,
            }
        }
        frames += 1;
        at = end;
    }
}
