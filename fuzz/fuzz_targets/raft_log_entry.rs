//! A Raft log record body (`replication/src/log_store/records.rs`): decoded
//! as an entry and as a range's state, the two bodies `CoreLog::open` reads
//! back from disk (after each record's range id).
//!
//! Entry: what decodes can be stored again (`check_storable`), encodes to
//! bytes that decode equal, encoding is stable, and the entry's serde form
//! (as AppendEntries carries it) round-trips. Metadata: decode-then-encode
//! is a fixed point.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tinkerdb_replication::log_store::{
    check_storable, decode_entry_for_fuzzing, encode_entry_for_fuzzing, reencode_meta_for_fuzzing,
};
use tinkerdb_replication::network::{decode, encode};
use tinkerdb_replication::Entry;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = decode_entry_for_fuzzing(data) {
        check_storable(&entry).expect("an entry read from the log can be stored again");
        let mut bytes = Vec::new();
        encode_entry_for_fuzzing(&entry, &mut bytes).expect("storable");
        let again = decode_entry_for_fuzzing(&bytes).expect("a re-encoded entry decodes");
        assert_eq!(again, entry, "an entry reads back different");
        let mut bytes_again = Vec::new();
        encode_entry_for_fuzzing(&again, &mut bytes_again).expect("storable");
        assert_eq!(bytes_again, bytes, "encoding is not stable");
        let wire = encode(&entry);
        let back: Entry = decode(&wire).expect("the serde form decodes");
        assert_eq!(back, entry, "the serde form reads back different");
    }
    if let Ok(meta) = reencode_meta_for_fuzzing(data) {
        assert_eq!(
            reencode_meta_for_fuzzing(&meta),
            Ok(meta.clone()),
            "metadata is not a fixed point"
        );
    }
});
