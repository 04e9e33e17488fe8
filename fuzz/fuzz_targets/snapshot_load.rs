//! A snapshot file (`storage/src/snapshot.rs`) loaded into a real `Store`
//! with `snapshot::load`, as recovery and a Raft snapshot install do
//! (`core/src/recovery.rs`, `core/src/cluster.rs` `ShardApplier::restore`:
//! each entry restored, then `raise_last_version` from the header). The
//! input is written to a temporary file, as the loader reads files.
//!
//! The first byte is the mode: bit 0 recomputes the header, frame and
//! trailer CRCs before loading, bit 1 also sets the trailer's entry and
//! frame counts to what the frames hold (`tinkerdb_fuzz::fix`), so the
//! fuzzer reaches the entries and successful loads.
//!
//! Checks on a successful load: the entry count is the number of entries
//! applied; the store holds exactly what a plain map says; a new snapshot
//! of that store written by `SnapshotCut` loads back to the same content,
//! cut index and version counter.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use tinkerdb_fuzz::fix::fix_snapshot_checksums;
use tinkerdb_fuzz::store_model::{apply, assert_store_matches, Model, ModelEntry, Tenants};
use tinkerdb_fuzz::{MODE_FIX_CHECKSUMS, MODE_FIX_COUNTS};
use tinkerdb_storage::log_op::LoggedOp;
use tinkerdb_storage::snapshot::{self, SnapshotCut, SnapshotInfo};
use tinkerdb_storage::{Slot, Store};

struct Loaded {
    info: SnapshotInfo,
    store: Store,
    tenants: Tenants,
    model: Model,
    slots: BTreeSet<Slot>,
    applied: u64,
}

fn path(which: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tinkerdb-fuzz-{}-{which}.snap", std::process::id()))
}

/// Loads `bytes` as recovery does (every tenant name is known).
fn load(bytes: &[u8], which: &str) -> Option<Loaded> {
    let file = path(which);
    std::fs::write(&file, bytes).expect("write the temporary snapshot");
    let mut store = Store::new();
    let mut tenants = Tenants::default();
    let mut model = Model::new();
    let mut slots = BTreeSet::new();
    let mut applied = 0;
    let result = snapshot::load(&file, |op| {
        assert!(
            matches!(op, LoggedOp::Put { .. }),
            "load passed on a {op:?}"
        );
        if let LoggedOp::Put { slot, .. } = op {
            slots.insert(slot);
        }
        apply(&mut store, &mut tenants, &mut model, &op);
        applied += 1;
        Ok(())
    });
    let _ = std::fs::remove_file(&file);
    let info = match result {
        Ok(info) => info,
        Err(_) => return None,
    };
    store.raise_last_version(info.last_version);
    Some(Loaded {
        info,
        store,
        tenants,
        model,
        slots,
        applied,
    })
}

fn by_name(loaded: &Loaded) -> BTreeMap<(String, Slot, Vec<u8>), ModelEntry> {
    loaded
        .model
        .iter()
        .map(|((tenant, slot, key), entry)| {
            (
                (loaded.tenants.name(*tenant), *slot, key.clone()),
                entry.clone(),
            )
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let (mode, rest) = tinkerdb_fuzz::mode_and_rest(data);
    let mut file = rest.to_vec();
    if mode & (MODE_FIX_CHECKSUMS | MODE_FIX_COUNTS) != 0 {
        fix_snapshot_checksums(&mut file, mode & MODE_FIX_COUNTS != 0);
    }
    let Some(loaded) = load(&file, "in") else {
        return;
    };
    assert_eq!(loaded.info.entries, loaded.applied, "entries counted");
    assert!(loaded.store.last_version() >= loaded.info.last_version);
    assert_store_matches(&loaded.store, &loaded.tenants, &loaded.model, &loaded.slots);

    // Round trip: snapshot the loaded store and load that.
    let first = loaded.slots.first().copied().unwrap_or(0) as usize;
    let last = loaded.slots.last().copied().unwrap_or(0) as usize;
    let name = |tenant| loaded.tenants.name(tenant);
    let mut cut = SnapshotCut::new(
        loaded.info.cut_index,
        loaded.store.last_version(),
        first..last + 1,
        0,
    );
    while !cut.advance(&loaded.store, usize::MAX, &name) {}
    let mut bytes = cut.take_ready_bytes();
    bytes.extend(cut.finish().0);
    let again = load(&bytes, "again").expect("a snapshot written from a loaded store loads");
    assert_eq!(again.info.cut_index, loaded.info.cut_index);
    assert_eq!(again.info.last_version, loaded.store.last_version());
    assert_eq!(again.info.entries, loaded.model.len() as u64);
    assert_eq!(
        by_name(&again),
        by_name(&loaded),
        "a snapshot reads back different"
    );
});
