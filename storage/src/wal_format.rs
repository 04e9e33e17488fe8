//! The WAL's byte layout, as pure functions (no I/O), so every torn write and
//! bit flip can be tested exhaustively. `docs/storage-format.md` describes
//! the same layout for humans; keep the two in step.
//!
//! A segment is a file of [`SEGMENT_BYTES`], zero-filled when created. Each
//! flush (group commit) appends one *batch* at a [`BLOCK_BYTES`]-aligned
//! offset, padded with zeros to the next block: no flush ever rewrites a
//! byte an earlier flush made durable, so a torn flush can only damage its
//! own batch.
//!
//! ```text
//! batch  = header(40) record* zero-padding-to-4096
//! header = magic u32 "TWAL" | header_crc u32 | body_bytes u32 | record_count u32
//!          | first_index u64 | format_version u32 | flags u32 (0, or 1: truncation marker)
//!          | acked_through u64
//! record = payload_bytes u32 | crc u32 | index u64 | kind u32 | payload | pad to 8
//! ```
//! `header_crc` is CRC-32C of header bytes 8..40; a record's `crc` covers
//! its bytes 8.. (index, kind, payload). All integers are little-endian.
//!
//! `acked_through` is the highest index the writer had seen durable when it
//! issued the batch. Several flushes may be in flight at once (O_DSYNC
//! writes at queue depth > 1), so after a crash a later batch can be on disk
//! while an earlier one is torn or missing. Recovery uses `acked_through` to
//! tell that (never acknowledged: cut) from damage to an acknowledged batch
//! (corruption: refuse to start).
//!
//! `format_version` is [`WAL_FORMAT_VERSION`] in every batch written now; 0
//! in batches written before the field had a meaning (the same layout).
//! A batch whose header checks but whose version is newer is refused as
//! such ([`BatchError::NewerFormat`]), never taken for a torn write: a
//! downgraded binary must not cut a newer one's log as a torn tail.
//!
//! A *truncation marker* is a batch with flag 1 and no records: "the log
//! continues at `first_index`; every record at or after it written before
//! this marker is void". Truncating a suffix (Raft) is thus an append too.

/// The batch layout this code writes (the header's `format_version`). It
/// reads this one and 0 (batches written before the field was a version).
pub const WAL_FORMAT_VERSION: u32 = 1;

/// Size of a WAL segment file.
pub const SEGMENT_BYTES: u64 = 16 << 20;

/// Alignment and granularity of every write (O_DIRECT block).
pub const BLOCK_BYTES: usize = 4096;

/// Bytes of a batch header.
pub const BATCH_HEADER_BYTES: usize = 40;

/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: usize = 20;

/// "TWAL" read as a little-endian u32.
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"TWAL");

/// Largest batch one flush writes; larger backlogs take several flushes.
/// A record larger than this (minus headers) cannot be logged.
pub const MAX_BATCH_BYTES: usize = 8 << 20;

const _: () = assert!((SEGMENT_BYTES as usize).is_multiple_of(BLOCK_BYTES));
const _: () = assert!(
    MAX_BATCH_BYTES.is_multiple_of(BLOCK_BYTES) && (MAX_BATCH_BYTES as u64) < SEGMENT_BYTES
);

/// One log record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Dense, strictly increasing log index.
    pub index: u64,
    /// What the payload holds (1: a key-value operation).
    pub kind: u32,
    /// The bytes.
    pub payload: Vec<u8>,
}

fn padded8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// Bytes a record takes in a batch.
pub fn record_bytes(payload_len: usize) -> usize {
    padded8(RECORD_HEADER_BYTES + payload_len)
}

/// Appends a record frame to `body`.
pub fn encode_record(body: &mut Vec<u8>, index: u64, kind: u32, payload: &[u8]) {
    let start = body.len();
    let payload_len = u32::try_from(payload.len()).expect("record payload over 4 GiB");
    body.extend_from_slice(&payload_len.to_le_bytes());
    body.extend_from_slice(&[0; 4]);
    body.extend_from_slice(&index.to_le_bytes());
    body.extend_from_slice(&kind.to_le_bytes());
    body.extend_from_slice(payload);
    let crc = crc32c::crc32c(&body[start + 8..]);
    body[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    body.resize(start + record_bytes(payload.len()), 0);
}

/// Flag of a truncation marker batch.
pub const FLAG_TRUNCATION: u32 = 1;

/// Builds a truncation marker: the log continues at `next_index`.
pub fn encode_truncation(
    out: &mut Vec<u8>,
    next_index: u64,
    format_version: u32,
    acked_through: u64,
) {
    encode_batch_with_flags(
        out,
        next_index,
        0,
        &[],
        format_version,
        FLAG_TRUNCATION,
        acked_through,
    );
}

/// Builds a whole batch (header + records + padding) from encoded records.
pub fn encode_batch(
    out: &mut Vec<u8>,
    first_index: u64,
    record_count: u32,
    body: &[u8],
    format_version: u32,
    acked_through: u64,
) {
    encode_batch_with_flags(
        out,
        first_index,
        record_count,
        body,
        format_version,
        0,
        acked_through,
    );
}

fn encode_batch_with_flags(
    out: &mut Vec<u8>,
    first_index: u64,
    record_count: u32,
    body: &[u8],
    format_version: u32,
    flags: u32,
    acked_through: u64,
) {
    let start = out.len();
    assert_eq!(start % BLOCK_BYTES, 0, "a batch starts on a block boundary");
    let body_bytes = u32::try_from(body.len()).expect("batch over 4 GiB");
    out.extend_from_slice(&BATCH_MAGIC.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&body_bytes.to_le_bytes());
    out.extend_from_slice(&record_count.to_le_bytes());
    out.extend_from_slice(&first_index.to_le_bytes());
    out.extend_from_slice(&format_version.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&acked_through.to_le_bytes());
    let header_crc = crc32c::crc32c(&out[start + 8..start + BATCH_HEADER_BYTES]);
    out[start + 4..start + 8].copy_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(body);
    let end = start + (BATCH_HEADER_BYTES + body.len()).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
    out.resize(end, 0);
}

/// A batch read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Offset of the batch in its segment.
    pub offset: usize,
    /// Bytes it takes, padding included.
    pub padded_bytes: usize,
    /// Its records, in index order.
    pub records: Vec<Record>,
    /// A truncation marker: the log continues at `first_index`.
    pub truncation: bool,
    /// The batch's first index (for a marker: where the log continues).
    pub first_index: u64,
    /// The highest index durable when this batch was issued.
    pub acked_through: u64,
}

/// Why a batch could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// All zeros: nothing was ever written here (the end of the log).
    Empty,
    /// Something is there but it is not a valid batch.
    Invalid(String),
    /// A batch whose header checks, in a format newer than this code reads
    /// (its `format_version`).
    NewerFormat(u32),
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the batch at `offset` of a segment's bytes.
pub fn decode_batch(segment: &[u8], offset: usize) -> Result<Batch, BatchError> {
    assert_eq!(offset % BLOCK_BYTES, 0);
    let Some(header) = segment.get(offset..offset + BATCH_HEADER_BYTES) else {
        return Err(BatchError::Empty);
    };
    if header.iter().all(|&b| b == 0) {
        return Err(BatchError::Empty);
    }
    let invalid = |why: &str| Err(BatchError::Invalid(why.to_owned()));
    if u32_at(header, 0) != BATCH_MAGIC {
        return invalid("bad batch magic");
    }
    if u32_at(header, 4) != crc32c::crc32c(&header[8..]) {
        return invalid("batch header checksum mismatch");
    }
    let body_bytes = u32_at(header, 8) as usize;
    let record_count = u32_at(header, 12) as usize;
    let first_index = u64_at(header, 16);
    let format_version = u32_at(header, 24);
    if format_version > WAL_FORMAT_VERSION {
        return Err(BatchError::NewerFormat(format_version));
    }
    let flags = u32_at(header, 28);
    if flags > FLAG_TRUNCATION
        || (flags == FLAG_TRUNCATION && (body_bytes != 0 || record_count != 0))
    {
        return invalid("bad batch flags");
    }
    if first_index.checked_add(record_count as u64).is_none() {
        return invalid("batch index range overflows");
    }
    if BATCH_HEADER_BYTES + body_bytes > MAX_BATCH_BYTES {
        return invalid("batch length out of range");
    }
    let body_start = offset + BATCH_HEADER_BYTES;
    let Some(body) = segment.get(body_start..body_start + body_bytes) else {
        return invalid("batch runs past the end of the segment");
    };
    let mut records = Vec::with_capacity(record_count.min(body_bytes / RECORD_HEADER_BYTES + 1));
    let mut at = 0;
    while at < body.len() {
        if body.len() - at < RECORD_HEADER_BYTES {
            return invalid("truncated record header");
        }
        let payload_bytes = u32_at(body, at) as usize;
        let frame = record_bytes(payload_bytes);
        if at + frame > body.len() {
            return invalid("record runs past the batch");
        }
        let covered = &body[at + 8..at + RECORD_HEADER_BYTES + payload_bytes];
        if u32_at(body, at + 4) != crc32c::crc32c(covered) {
            return invalid("record checksum mismatch");
        }
        let index = u64_at(body, at + 8);
        if first_index.checked_add(records.len() as u64) != Some(index) {
            return invalid("record index out of sequence");
        }
        records.push(Record {
            index,
            kind: u32_at(body, at + 16),
            payload: body[at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + payload_bytes]
                .to_vec(),
        });
        at += frame;
    }
    if records.len() != record_count {
        return invalid("record count mismatch");
    }
    Ok(Batch {
        offset,
        padded_bytes: (BATCH_HEADER_BYTES + body_bytes).div_ceil(BLOCK_BYTES) * BLOCK_BYTES,
        records,
        truncation: flags == FLAG_TRUNCATION,
        first_index,
        acked_through: u64_at(header, 32),
    })
}

/// How a segment's readable content ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEnd {
    /// Zeros from this offset on: the clean end of the log.
    Clean(usize),
    /// No valid batch at this offset (torn, or never written) but valid
    /// batches after it, the highest of which says every index up to
    /// `acked_through` was durable when it was issued. The caller decides:
    /// if the missing batch's indexes are at most `acked_through`, data that
    /// was acknowledged is damaged (corruption); otherwise these are flushes
    /// cut short by a crash, never acknowledged.
    GapBeforeValid {
        /// Offset of the missing or invalid batch.
        offset: usize,
        /// What was wrong.
        reason: String,
        /// Highest `acked_through` among the valid batches after it.
        acked_through: u64,
    },
    /// An invalid batch at this offset and no valid batch after it: a flush
    /// torn by a crash, never acknowledged. Safe to cut here.
    TornTail(usize),
    /// A batch written by a newer TinkerDB at this offset: refuse to start.
    NewerFormat {
        /// Offset of the batch.
        offset: usize,
        /// Its `format_version`.
        version: u32,
    },
}

/// Reads every batch of a segment, in order, and says how it ends.
pub fn scan_segment(segment: &[u8]) -> (Vec<Batch>, SegmentEnd) {
    let mut batches = Vec::new();
    let mut offset = 0;
    loop {
        let reason = match decode_batch(segment, offset) {
            Ok(batch) => {
                offset += batch.padded_bytes;
                batches.push(batch);
                continue;
            }
            Err(BatchError::Empty) => "a batch is missing".to_owned(),
            Err(BatchError::Invalid(reason)) => reason,
            Err(BatchError::NewerFormat(version)) => {
                return (batches, SegmentEnd::NewerFormat { offset, version });
            }
        };
        // Is anything valid written further on?
        let mut acked_through = None::<u64>;
        let mut probe = offset + BLOCK_BYTES;
        while probe + BATCH_HEADER_BYTES <= segment.len() {
            if let Ok(later) = decode_batch(segment, probe) {
                acked_through = Some(acked_through.unwrap_or(0).max(later.acked_through));
            }
            probe += BLOCK_BYTES;
        }
        let empty = matches!(decode_batch(segment, offset), Err(BatchError::Empty));
        let end = match acked_through {
            Some(acked_through) => SegmentEnd::GapBeforeValid {
                offset,
                reason,
                acked_through,
            },
            None if empty => SegmentEnd::Clean(offset),
            None => SegmentEnd::TornTail(offset),
        };
        return (batches, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A segment image holding `batches` batches of `per_batch` records.
    fn segment_with(batches: usize, per_batch: usize, payload: usize) -> (Vec<u8>, Vec<usize>) {
        let mut segment = Vec::new();
        let mut ends = Vec::new();
        let mut index = 1;
        for _ in 0..batches {
            let mut body = Vec::new();
            for _ in 0..per_batch {
                encode_record(&mut body, index, 1, &vec![(index % 251) as u8; payload]);
                index += 1;
            }
            // Acknowledged through the previous batch, as after a serial writer.
            let first = index - per_batch as u64;
            encode_batch(&mut segment, first, per_batch as u32, &body, 0, first - 1);
            ends.push(segment.len());
        }
        segment.resize(segment.len() + 4 * BLOCK_BYTES, 0);
        (segment, ends)
    }

    /// Found by fuzzing: a checksum-valid batch starting at `u64::MAX` with
    /// two records overflowed `first_index + records.len()`.
    #[test]
    fn a_batch_whose_indexes_overflow_is_corruption() {
        let mut body = Vec::new();
        encode_record(&mut body, u64::MAX, 1, b"a");
        encode_record(&mut body, 0, 1, b"b");
        let mut segment = Vec::new();
        encode_batch(&mut segment, u64::MAX, 2, &body, 0, 0);
        segment.resize(segment.len() + BLOCK_BYTES, 0);
        match decode_batch(&segment, 0) {
            Err(BatchError::Invalid(why)) => assert!(why.contains("overflows"), "{why}"),
            other => panic!("accepted: {:?}", other.map(|batch| batch.records.len())),
        }
    }

    #[test]
    fn round_trip() {
        let (segment, _) = segment_with(3, 5, 100);
        let (batches, end) = scan_segment(&segment);
        assert_eq!(batches.len(), 3);
        assert_eq!(end, SegmentEnd::Clean(3 * BLOCK_BYTES));
        let indexes: Vec<u64> = batches
            .iter()
            .flat_map(|b| b.records.iter().map(|r| r.index))
            .collect();
        assert_eq!(indexes, (1..=15).collect::<Vec<_>>());
        assert_eq!(batches[2].records[4].payload, vec![15u8; 100]);
    }

    #[test]
    fn every_truncation_of_the_last_batch_is_a_torn_tail() {
        let (segment, ends) = segment_with(3, 4, 300);
        let last_start = ends[1];
        for cut in last_start..ends[2] {
            let mut torn = segment.clone();
            torn[cut..].fill(0);
            let (batches, end) = scan_segment(&torn);
            // Only the whole last batch may be lost: it was never acknowledged.
            if cut == last_start {
                assert_eq!(end, SegmentEnd::Clean(last_start));
            } else if batches.len() == 3 {
                // The cut fell in padding: the batch is whole.
                assert!(cut >= last_start + BATCH_HEADER_BYTES);
            } else {
                assert_eq!(end, SegmentEnd::TornTail(last_start), "cut at {cut}");
                assert_eq!(batches.len(), 2);
            }
        }
    }

    proptest! {
        // Any single bit flip in the last batch is detected (torn tail) and
        // never yields a wrong record; a flip in an earlier batch is
        // corruption, never skipped.
        #[test]
        fn every_bit_flip_is_detected(byte in 0usize..(3 * BLOCK_BYTES), bit in 0u8..8) {
            let (segment, ends) = segment_with(3, 4, 300);
            let mut flipped = segment.clone();
            flipped[byte] ^= 1 << bit;
            let (batches, end) = scan_segment(&flipped);
            let batch_of_byte = ends.iter().position(|&e| byte < e).unwrap();
            let used = decode_batch(&segment, batch_of_byte * BLOCK_BYTES).unwrap();
            let in_used_bytes = byte - batch_of_byte * BLOCK_BYTES < BATCH_HEADER_BYTES
                + used.records.iter().map(|r| record_bytes(r.payload.len())).sum::<usize>();
            if !in_used_bytes {
                // Padding: ignored by design.
                prop_assert_eq!(batches.len(), 3);
            } else if batch_of_byte == 2 {
                prop_assert_eq!(end, SegmentEnd::TornTail(2 * BLOCK_BYTES));
                prop_assert_eq!(batches.len(), 2);
            } else {
                // A later batch says this one was acknowledged: corruption.
                let first_of_batch = (batch_of_byte * 4 + 1) as u64;
                let is_corrupt = matches!(end, SegmentEnd::GapBeforeValid { offset, acked_through, .. }
                    if offset == batch_of_byte * BLOCK_BYTES && acked_through >= first_of_batch);
                prop_assert!(is_corrupt, "{:?}", end);
            }
            // Whatever was read back is exactly what was written.
            for batch in &batches {
                for record in &batch.records {
                    prop_assert_eq!(&record.payload, &vec![(record.index % 251) as u8; 300]);
                }
            }
        }
    }
}
