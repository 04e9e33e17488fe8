//! A key-value WAL record's payload (`storage/src/log_op.rs`): logged
//! operations back to back, replayed into a real `Store` as recovery does
//! (`core/src/recovery.rs`: decode, apply at time 0, stop at the first
//! operation that does not decode, which recovery reports as corruption).
//!
//! Checks: each decoded operation re-encodes to exactly the bytes it came
//! from (a Flush to its canonical form, slot 0 and no key) and decodes
//! back equal; applying them leaves the store holding exactly what a
//! plain map says (entries, versions, expiries, key and byte counts, a
//! version counter at or above every version held).

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use tinkerdb_fuzz::store_model::{apply, assert_store_matches, Model, Tenants};
use tinkerdb_storage::log_op::LoggedOp;
use tinkerdb_storage::Store;

fuzz_target!(|data: &[u8]| {
    let mut store = Store::new();
    let mut tenants = Tenants::default();
    let mut model = Model::new();
    let mut slots = BTreeSet::new();
    let mut at = 0;
    while at < data.len() {
        let Ok((op, used)) = LoggedOp::decode(&data[at..]) else {
            break;
        };
        assert!(used > 0 && used <= data.len() - at);
        let mut bytes = Vec::new();
        op.encode(&mut bytes);
        let (again, again_used) = LoggedOp::decode(&bytes).expect("a re-encoded operation decodes");
        assert_eq!(again_used, bytes.len());
        assert_eq!(again, op, "an operation reads back different");
        if !matches!(op, LoggedOp::Flush { .. }) {
            assert_eq!(
                &bytes[..],
                &data[at..at + used],
                "the encoding is not canonical"
            );
        }
        match op {
            LoggedOp::Put { slot, .. }
            | LoggedOp::Delete { slot, .. }
            | LoggedOp::Expire { slot, .. } => {
                slots.insert(slot);
            }
            LoggedOp::Flush { .. } => {}
        }
        apply(&mut store, &mut tenants, &mut model, &op);
        at += used;
    }
    assert_store_matches(&store, &tenants, &model, &slots);
});
