//! Async Rust client for TinkerDB (tokio), and the `tinker` command-line tool.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tinkerdb_client::ClientError> {
//! use tinkerdb_client::{Client, ClientConfig};
//! let client = Client::connect(ClientConfig::new("127.0.0.1:7379")).await?;
//! let version = client.set("greeting", "hello").await?;
//! let value = client.get("greeting").await?.expect("just written");
//! assert_eq!(value.version, version);
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`client`]: [`Client`], the public API: a pool of connections, each
//!   request with a timeout, typed errors.
//! - [`connection`]: one pipelined connection: a writer task batching frames,
//!   a reader task matching answers to requests by id.
//! - [`codec`]: requests to frames, frames to [`codec::Response`].
//! - [`error`]: the error type, [`ClientError`].
//! - [`tls`]: TLS for connections to a node with a `[tls]` table.
//! - [`admin`]: a small blocking client of a node's admin HTTP API (cluster
//!   status and membership, for `tinker cluster` and joining nodes).
//!
//! # Invariants
//! - A request gets exactly one outcome: its answer, a timeout, or the error
//!   that broke its connection; a broken connection is replaced on next use,
//!   at the first address that answers: the last one that did, the
//!   configured address and seeds, then the cluster members the nodes
//!   announced (`HelloOk.nodes`). A request is never resent on its own (a
//!   write whose connection broke may or may not have been applied).
//! - `Client` is cheap to clone and safe to share between tasks.

pub mod admin;
pub mod client;
pub mod codec;
pub mod connection;
pub mod error;
pub mod tls;

pub use client::{
    Client, ClientConfig, ExpireCondition, RenameKind, ScanOptions, ScanPage, SetCondition,
    SetOptions, Value, WriteResult,
};
pub use error::{ClientError, Route, ShardOwner};
pub use tinkerdb_schemas::wire::ErrorCode;
pub use tls::ClientTls;
