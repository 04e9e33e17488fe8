//! Front ends: each turns its wire form into a decoded request and a
//! session for the coordinator (`crate::coord`), and the answer back.
//!
//! - [`fbs`]: the flatbuffers client protocol (`docs/protocol.md`).
//! - [`resp`]: the Redis protocol, RESP2 and RESP3
//!   (`docs/redis-compatibility.md`).
//! - [`acl`]: RESP's `ACL` command over the node's users.
//! - [`admin`]: each core's side of the admin plane (the HTTP API and the
//!   dashboard live in the `tinkerdb-admin` crate).

pub mod acl;
pub mod admin;
pub mod fbs;
pub mod resp;
