//! Writes every fuzz target's seed corpus, built with the project's own
//! encoders (`tinkerdb_fuzz::seeds`), to `$TINKERDB_FUZZ_SEEDS/<target>/`
//! (default `fuzz/corpus`), then exits.
//!
//! A libFuzzer binary like the targets, so `cargo fuzz build` builds it
//! with them at no extra cost; it does its work in libFuzzer's init hook
//! and never fuzzes. `scripts/fuzz.sh` runs it before fuzzing.

#![no_main]
// The init hook exits, so what the macro puts after it is unreachable.
#![allow(unreachable_code)]

libfuzzer_sys::fuzz_target!(
    init: {
        let dir = std::env::var_os("TINKERDB_FUZZ_SEEDS").unwrap_or_else(|| "fuzz/corpus".into());
        match tinkerdb_fuzz::seeds::write_all(std::path::Path::new(&dir)) {
            Ok(count) => {
                println!("gen_seeds: wrote {count} seeds under {}", std::path::Path::new(&dir).display());
                std::process::exit(0);
            }
            Err(error) => {
                eprintln!("gen_seeds: cannot write seeds under {}: {error}", std::path::Path::new(&dir).display());
                std::process::exit(1);
            }
        }
    },
    |_data: &[u8]| {}
);
