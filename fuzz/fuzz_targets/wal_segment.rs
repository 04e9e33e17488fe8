//! A WAL segment image (`storage/src/wal_format.rs`): `decode_batch` at
//! every block boundary and `scan_segment` over the whole, as recovery
//! reads a segment; the records' payloads are decoded as their kind says
//! (kind 1: `LoggedOp`s back to back, as the key-value replay does; kind
//! 2: Raft log entries).
//!
//! The first byte is the mode: bit 0 recomputes every CRC before decoding
//! (`tinkerdb_fuzz::fix::fix_wal_checksums`), bit 1 reads the rest as
//! batches without their block padding and lays them out on block
//! boundaries (`compact_to_segment`), so small inputs make real segments.
//!
//! Checks: each decoded batch is consistent (dense indexes from
//! `first_index`, padded size, markers without records) and re-encodes
//! with `encode_batch`/`encode_truncation` to the same header bytes and a
//! batch that decodes equal; `scan_segment`'s batches are exactly the
//! chain of batches from offset 0, and its verdict on the end (clean, torn
//! tail, gap before valid batches with the highest `acked_through`) agrees
//! with decoding every later block.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tinkerdb_fuzz::fix::{compact_to_segment, fix_wal_checksums};
use tinkerdb_fuzz::{MODE_COMPACT, MODE_FIX_CHECKSUMS};
use tinkerdb_storage::log_op::{LoggedOp, RECORD_KIND_KV};
use tinkerdb_storage::wal_format::{
    decode_batch, encode_batch, encode_record, encode_truncation, scan_segment, Batch, BatchError,
    SegmentEnd, BATCH_HEADER_BYTES, BLOCK_BYTES,
};

/// Re-encodes `batch` (read at its offset of `segment`) and checks it.
fn check_batch(segment: &[u8], batch: &Batch) {
    let offset = batch.offset;
    let header = &segment[offset..offset + BATCH_HEADER_BYTES];
    let body_bytes = u32::from_le_bytes(header[8..12].try_into().unwrap()) as usize;
    assert_eq!(
        batch.padded_bytes,
        (BATCH_HEADER_BYTES + body_bytes).div_ceil(BLOCK_BYTES) * BLOCK_BYTES
    );
    for (n, record) in batch.records.iter().enumerate() {
        assert_eq!(
            Some(record.index),
            batch.first_index.checked_add(n as u64),
            "index order"
        );
    }
    assert!(
        !batch.truncation || batch.records.is_empty(),
        "a marker with records"
    );
    let format_version = u32::from_le_bytes(header[24..28].try_into().unwrap());
    let mut encoded = Vec::new();
    if batch.truncation {
        encode_truncation(
            &mut encoded,
            batch.first_index,
            format_version,
            batch.acked_through,
        );
    } else {
        let mut body = Vec::new();
        for record in &batch.records {
            encode_record(&mut body, record.index, record.kind, &record.payload);
        }
        let count = batch.records.len() as u32;
        encode_batch(
            &mut encoded,
            batch.first_index,
            count,
            &body,
            format_version,
            batch.acked_through,
        );
    }
    assert_eq!(
        &encoded[..BATCH_HEADER_BYTES],
        header,
        "the header re-encodes differently"
    );
    assert_eq!(encoded.len(), batch.padded_bytes);
    let again = decode_batch(&encoded, 0).expect("a re-encoded batch decodes");
    assert_eq!(
        Batch { offset, ..again },
        *batch,
        "a batch reads back different"
    );
}

fn check_payloads(batch: &Batch) {
    for record in &batch.records {
        match record.kind {
            RECORD_KIND_KV => {
                let mut at = 0;
                while at < record.payload.len() {
                    match LoggedOp::decode(&record.payload[at..]) {
                        Ok((_, used)) => {
                            assert!(used > 0 && used <= record.payload.len() - at);
                            at += used;
                        }
                        Err(_) => break,
                    }
                }
            }
            _ => {
                // Any other kind as a shared Raft log record: an error, never a panic.
                let _ = tinkerdb_replication::log_store::decode_record_for_fuzzing(
                    record.kind,
                    &record.payload,
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (mode, rest) = tinkerdb_fuzz::mode_and_rest(data);
    let mut segment = if mode & MODE_COMPACT != 0 {
        compact_to_segment(rest)
    } else {
        rest.to_vec()
    };
    if mode & MODE_FIX_CHECKSUMS != 0 {
        fix_wal_checksums(&mut segment);
    }

    // Every block boundary on its own.
    let mut decoded = Vec::new();
    let mut offset = 0;
    while offset + BATCH_HEADER_BYTES <= segment.len() {
        let result = decode_batch(&segment, offset);
        if let Ok(batch) = &result {
            assert_eq!(batch.offset, offset);
            check_batch(&segment, batch);
            check_payloads(batch);
        }
        decoded.push((offset, result));
        offset += BLOCK_BYTES;
    }
    let at = |offset: usize| -> Result<Batch, BatchError> {
        match decoded.iter().find(|(o, _)| *o == offset) {
            Some((_, result)) => result.clone(),
            None => decode_batch(&segment, offset),
        }
    };

    // The whole segment.
    let (batches, end) = scan_segment(&segment);
    let mut expected_offset = 0;
    for batch in &batches {
        assert_eq!(
            batch.offset, expected_offset,
            "scan_segment skipped or overlapped"
        );
        assert_eq!(at(batch.offset).as_ref(), Ok(batch));
        expected_offset += batch.padded_bytes;
    }
    let end_offset = match &end {
        SegmentEnd::Clean(o) | SegmentEnd::TornTail(o) => *o,
        SegmentEnd::GapBeforeValid { offset, .. } | SegmentEnd::NewerFormat { offset, .. } => {
            *offset
        }
    };
    assert_eq!(
        end_offset, expected_offset,
        "the end is not where the batches stop"
    );
    assert!(
        at(end_offset).is_err(),
        "a valid batch where the segment ends"
    );
    let later_acked = decoded
        .iter()
        .filter(|(o, _)| *o > end_offset)
        .filter_map(|(_, result)| result.as_ref().ok().map(|b| b.acked_through))
        .max();
    match end {
        SegmentEnd::Clean(_) => {
            assert_eq!(at(end_offset), Err(BatchError::Empty));
            assert_eq!(later_acked, None, "clean, but valid batches follow");
        }
        SegmentEnd::TornTail(_) => {
            assert!(matches!(at(end_offset), Err(BatchError::Invalid(_))));
            assert_eq!(later_acked, None, "a torn tail, but valid batches follow");
        }
        SegmentEnd::GapBeforeValid { acked_through, .. } => {
            assert_eq!(Some(acked_through), later_acked, "the gap's acked_through");
        }
        SegmentEnd::NewerFormat { version, .. } => {
            assert_eq!(at(end_offset), Err(BatchError::NewerFormat(version)));
        }
    }
});
