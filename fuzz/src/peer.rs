//! A peer call's payload decoded as the receiving node decodes it
//! (`group.rs` `call_handler`, `network.rs` `serve_raft_call`, and the
//! callers' decoding of answers), each one round-tripped.

use std::fmt::Debug;

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::SnapshotMetaOf;
use openraft::EntryPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tinkerdb_core::shard::remote::{RemoteOp, RemoteReply, RemoteRequest};
use tinkerdb_core::shard::write_op::WriteOp;
use tinkerdb_core::shard::ShardRequest;
use tinkerdb_replication::group::{GroupError, MemberChange};
use tinkerdb_replication::log_store::{
    check_storable, decode_entry_for_fuzzing, encode_entry_for_fuzzing,
};
use tinkerdb_replication::network::{decode, encode};
use tinkerdb_replication::{Command, Entry, NodeId, Response, TypeConfig, Vote};
use tinkerdb_schemas::wire::PeerCallKind;

/// The InstallSnapshot request. Mirrors `network.rs`'s private
/// `SnapshotCall` field for field: postcard is positional, so the same
/// types in the same order read the same bytes. Keep the two in step.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotCall {
    /// The leader's vote.
    pub vote: Vote,
    /// The snapshot's metadata.
    pub meta: SnapshotMetaOf<TypeConfig>,
    /// The snapshot file's bytes (the storage crate's snapshot format).
    pub data: Vec<u8>,
}

/// Decodes `payload` as a `T`; if it decodes, encodes it, decodes that
/// and encodes again: the second decoding must succeed and both
/// encodings must be equal (decode and encode agree).
pub fn round_trip<T: Serialize + DeserializeOwned>(payload: &[u8]) -> Option<T> {
    let first: T = decode(payload).ok()?;
    let bytes = encode(&first);
    let second: T = decode(&bytes)
        .unwrap_or_else(|error| panic!("a re-encoded message does not decode: {error}"));
    assert_eq!(
        encode(&second),
        bytes,
        "encoding is not stable across a round trip"
    );
    Some(second)
}

/// [`round_trip`], also comparing the two decoded values.
pub fn round_trip_eq<T: Serialize + DeserializeOwned + PartialEq + Debug>(
    payload: &[u8],
) -> Option<T> {
    let first: T = decode(payload).ok()?;
    let second: T = round_trip(payload).expect("decoded once");
    assert_eq!(first, second, "a message reads back different");
    Some(second)
}

/// The entries of an AppendEntries the way the receiver handles them:
/// a membership entry that cannot be stored is refused (as
/// `serve_raft_call` does); commands and blanks must always be storable
/// (`serve_raft_call` relies on it); what is stored reads back equal.
pub fn check_entries(entries: &[Entry]) {
    for entry in entries {
        let storable = check_storable(entry);
        match &entry.payload {
            EntryPayload::Membership(_) if storable.is_err() => continue,
            _ => storable.unwrap_or_else(|error| {
                panic!("an entry the receiver would append cannot be stored: {error}")
            }),
        }
        let mut bytes = Vec::new();
        encode_entry_for_fuzzing(entry, &mut bytes).expect("checked storable");
        let back = decode_entry_for_fuzzing(&bytes).expect("a stored entry reads back");
        assert_eq!(&back, entry, "a stored entry reads back different");
    }
}

/// Decodes a call's (or an answer's) payload as the node does for `kind`,
/// round-tripping it; the entries of an AppendEntries go through
/// [`check_entries`].
pub fn check_payload(kind: PeerCallKind, is_answer: bool, payload: &[u8]) {
    use PeerCallKind as K;
    match (kind, is_answer) {
        (K::AppendEntries, false) => {
            if let Some(request) = round_trip::<AppendEntriesRequest<TypeConfig>>(payload) {
                let first: AppendEntriesRequest<TypeConfig> = decode(payload).expect("decoded");
                assert_eq!(
                    first.entries, request.entries,
                    "entries read back different"
                );
                check_entries(&request.entries);
            }
        }
        (K::AppendEntries, true) => {
            round_trip_eq::<AppendEntriesResponse<TypeConfig>>(payload);
        }
        (K::Vote, false) => {
            round_trip_eq::<VoteRequest<TypeConfig>>(payload);
        }
        (K::Vote, true) => {
            round_trip_eq::<VoteResponse<TypeConfig>>(payload);
        }
        (K::InstallSnapshot, false) => {
            round_trip_eq::<SnapshotCall>(payload);
        }
        (K::InstallSnapshot, true) => {
            round_trip_eq::<SnapshotResponse<TypeConfig>>(payload);
        }
        (K::TransferLeader, false) => {
            round_trip_eq::<TransferLeaderRequest<TypeConfig>>(payload);
        }
        (K::TransferLeader, true) => {
            round_trip::<TransferLeaderResponse<TypeConfig>>(payload);
        }
        (K::ForwardWrite, false) => {
            if let Some(command) = round_trip_eq::<Command>(payload) {
                command.validate().expect("a decoded command is valid");
            }
        }
        (K::ForwardWrite, true) => {
            round_trip_eq::<Result<Response, GroupError>>(payload);
        }
        (K::ChangeMembership, false) => {
            round_trip_eq::<MemberChange>(payload);
        }
        (K::ChangeMembership, true) => {
            round_trip_eq::<Result<Vec<NodeId>, GroupError>>(payload);
        }
        (K::ReadIndex, true) => {
            round_trip_eq::<u64>(payload);
        }
        // A request forwarded for a range the sender does not hold, run
        // by the receiver as its own (`coord::forward::serve_forwarded`):
        // decoding and resolving it never panics. (No equality check: an
        // INCRBYFLOAT increment may be NaN.)
        (K::Execute, false) => {
            if let Some(request) = round_trip::<RemoteRequest>(payload) {
                let _ = request.into_request(&tenant_id);
            }
        }
        // Its answer, fitted to each kind of request the sender may have
        // sent: a reply that does not fit is an error, never a panic.
        (K::Execute, true) => {
            if let Some(reply) = round_trip_eq::<RemoteReply>(payload) {
                for request in forwardable_requests() {
                    let _ = reply.clone().into_reply(&request);
                }
            }
        }
        // A hello carries the peer protocol version, its answer a core.
        (K::Hello, _) => {
            round_trip_eq::<u32>(payload);
        }
        // ReadIndex and Ping calls carry nothing; other kinds are refused.
        _ => {}
    }
}

/// The receiving node's tenants, for forwarded requests: `default` only.
fn tenant_id(name: &str) -> Option<tinkerdb_storage::TenantId> {
    (name == "default").then_some(0)
}

/// One request of each kind a node forwards, as the sender holds it.
pub fn forwardable_requests() -> Vec<ShardRequest> {
    let get = |stale| RemoteOp::Get {
        tenant: "default".into(),
        key: b"k".to_vec(),
        stale,
    };
    let delete = || RemoteOp::Write {
        tenant: "default".into(),
        op: WriteOp::Delete {
            keys: vec![b"k".to_vec()],
        },
    };
    let single = vec![
        get(false),
        get(true),
        RemoteOp::GetMany {
            tenant: "default".into(),
            keys: vec![b"k".to_vec(), b"l".to_vec()],
            max_bytes: 1 << 20,
            stale: false,
        },
        RemoteOp::Exists {
            tenant: "default".into(),
            keys: vec![b"k".to_vec()],
            stale: false,
        },
        RemoteOp::Scan {
            tenant: "default".into(),
            start_slot: 0,
            prefix: Vec::new(),
            pattern: Vec::new(),
            max_keys: 10,
            stale: false,
        },
        RemoteOp::Usage {
            tenant: "default".into(),
            stale: false,
        },
        delete(),
        RemoteOp::Write {
            tenant: "default".into(),
            op: WriteOp::IncrBy {
                key: b"n".to_vec(),
                by: 1,
            },
        },
    ];
    let mut requests: Vec<RemoteRequest> = single
        .into_iter()
        .map(|op| RemoteRequest {
            batch: false,
            ops: vec![op],
        })
        .collect();
    requests.push(RemoteRequest {
        batch: true,
        ops: vec![get(false), delete(), get(true)],
    });
    requests
        .into_iter()
        .map(|request| request.into_request(&tenant_id).expect("a valid request"))
        .collect()
}
