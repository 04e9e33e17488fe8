//! Shared pieces of TinkerDB's fuzz targets (`fuzz_targets/`, one per
//! decoder of untrusted bytes; docs/fuzzing.md says what each covers).
//!
//! - [`fix`]: the checksum-fixing modes. WAL batches and snapshot files are
//!   checksummed; a fuzzer almost never guesses a CRC-32C, so without help
//!   it only ever tests the checksum comparison. The first input byte of
//!   those targets selects a mode in which the target recomputes every CRC
//!   (and, for snapshots, the trailer's counts) before decoding.
//! - [`peer`]: decoding (and round-tripping) each peer call's payload, as
//!   the receiving node does, shared by the `peer_frame` and
//!   `peer_payload` targets.
//! - [`store_model`]: applying logged operations to a real `Store` the way
//!   recovery does, next to a plain map that says what the store must hold.
//! - [`seeds`]: seed inputs built with the project's own encoders (the
//!   `gen_seeds` binary writes them to `fuzz/corpus/<target>/`).

pub mod fix;
pub mod peer;
pub mod seeds;
pub mod store_model;

/// Splits off the mode byte of a target whose first byte selects a mode.
pub fn mode_and_rest(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&mode, rest)) => (mode, rest),
        None => (0, data),
    }
}

/// Mode bit: recompute checksums before decoding.
pub const MODE_FIX_CHECKSUMS: u8 = 1;
/// Mode bit (WAL): the input is batches without their block padding;
/// the target lays each out at the next block boundary (see [`fix`]).
pub const MODE_COMPACT: u8 = 2;
/// Mode bit (snapshot): also rewrite the trailer's entry and frame counts
/// to what the frames hold, so the fuzzer reaches a successful load.
pub const MODE_FIX_COUNTS: u8 = 2;
