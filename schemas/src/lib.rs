//! TinkerDB wire formats: the flatbuffers schema of the client protocol, the
//! Rust code `flatc` generates from it, and the length-prefixed frame codec.
//!
//! # Layout
//! - `tinkerdb.fbs` (beside this crate's `Cargo.toml`): the schema, the source
//!   of truth. `regenerate.sh` rebuilds [`wire`] from it with flatc 25.12.19.
//! - [`wire`]: the generated tables, unions and enums (committed, never edited).
//! - [`frame`]: how flatbuffers travel on a byte stream (4-byte length prefix)
//!   and the protocol constants both ends agree on.
//!
//! # Invariants
//! - This crate knows nothing of the node, the storage or the network: it is
//!   the contract between a client and a node, shared by both.
//! - The committed generated code matches the schema (checked by the test
//!   `generated_code_is_fresh`).
//!
//! The protocol itself is described in `docs/protocol.md`.

#[allow(
    unsafe_code,
    missing_docs,
    clippy::all,
    clippy::pedantic,
    mismatched_lifetime_syntaxes,
    non_camel_case_types
)]
#[rustfmt::skip]
#[path = "generated/tinkerdb_generated.rs"]
mod generated;

/// The generated flatbuffers types of the client protocol (namespace
/// `tinkerdb.wire` in the schema).
pub mod wire {
    pub use crate::generated::tinkerdb::wire::*;
}

pub mod frame;

pub use frame::{FrameError, FRAME_HEADER_BYTES, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
