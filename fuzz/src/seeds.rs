//! Seed inputs for every target, built with the project's own encoders
//! (the client's request encoder, the node's reply encoder, the peer
//! transport, openraft's messages through `network::encode`, the log
//! store, the WAL format, `LoggedOp` and `SnapshotCut`). They include the
//! inputs of the bugs fuzzing found earlier, so those stay covered: a run
//! starts by executing every seed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use flatbuffers::FlatBufferBuilder;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    VoteRequest, VoteResponse,
};
use openraft::{EntryPayload, StoredMembership};
use tinkerdb_client::codec::{encode_request, Request};
use tinkerdb_client::SetCondition;
use tinkerdb_replication::group::{GroupError, MemberChange};
use tinkerdb_replication::log_store::{encode_entry_for_fuzzing, RECORD_KIND_RANGE_ENTRY};
use tinkerdb_replication::network::encode;
use tinkerdb_replication::transport::{encode_peer_frame, PeerCall};
use tinkerdb_replication::{Command, Entry, LogId, Membership, Node, PutCondition, Response, Vote};
use tinkerdb_schemas::wire::PeerCallKind;
use tinkerdb_storage::log_op::{LoggedOp, RECORD_KIND_KV};
use tinkerdb_storage::snapshot::SnapshotCut;
use tinkerdb_storage::store::MAX_VERSION;
use tinkerdb_storage::wal_format::{
    encode_batch, encode_record, encode_truncation, BLOCK_BYTES, WAL_FORMAT_VERSION,
};
use tinkerdb_storage::{hash_slot, Store, SLOT_COUNT};

use crate::fix::fix_snapshot_checksums;
use crate::{MODE_COMPACT, MODE_FIX_CHECKSUMS, MODE_FIX_COUNTS};

/// Every target's seeds, by target name.
pub fn all() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    vec![
        ("client_frame", client_frame()),
        ("resp_stream", resp_stream()),
        ("peer_frame", peer_frame()),
        ("peer_payload", peer_payload()),
        (
            "raft_command",
            commands().iter().map(encode_command).collect(),
        ),
        ("raft_log_entry", raft_log_entry()),
        ("wal_segment", wal_segment()),
        ("logged_ops", logged_ops()),
        ("snapshot_load", snapshot_load()),
    ]
}

/// Writes every target's seeds as `<dir>/<target>/seed-NNN` (replacing
/// earlier seeds, leaving the files the fuzzer added).
pub fn write_all(dir: &Path) -> std::io::Result<usize> {
    let mut written = 0;
    for (target, seeds) in all() {
        let target_dir = dir.join(target);
        std::fs::create_dir_all(&target_dir)?;
        for (n, seed) in seeds.iter().enumerate() {
            std::fs::write(target_dir.join(format!("seed-{n:03}")), seed)?;
            written += 1;
        }
    }
    Ok(written)
}

// ---- client frames ----

fn request_body(id: u64, request: &Request<'_>) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let mut out = Vec::new();
    encode_request(&mut builder, id, request, &mut out);
    out.split_off(tinkerdb_schemas::FRAME_HEADER_BYTES)
}

fn client_frame() -> Vec<Vec<u8>> {
    let keys: [&[u8]; 3] = [b"a", b"user:1", b""];
    let entries: [(&[u8], &[u8]); 2] = [(b"k1", b"v1"), (b"k2", b"")];
    let requests = [
        Request::Hello {
            tenant: "acme",
            client_name: "fuzz",
            stale_reads: true,
            user: "",
            password: "",
        },
        Request::Hello {
            tenant: "",
            client_name: "",
            stale_reads: false,
            user: "alice",
            password: "secret",
        },
        Request::Ping,
        Request::Get { key: b"key" },
        Request::Set {
            key: b"key",
            value: b"value",
            ttl_ms: 1500,
            condition: SetCondition::IfAbsent,
        },
        Request::Set {
            key: b"k",
            value: b"",
            ttl_ms: 0,
            condition: SetCondition::IfPresent,
        },
        Request::CompareAndSet {
            key: b"key",
            value: b"v2",
            expected_version: 7,
            ttl_ms: 0,
        },
        Request::Delete { keys: &keys },
        Request::Exists { keys: &keys[..1] },
        Request::MGet { keys: &keys },
        Request::MSet { entries: &entries },
        Request::Keys { pattern: b"user:*" },
        Request::Scan {
            cursor: 17,
            prefix: b"user:",
            pattern: b"*[0-9]",
            count: 50,
        },
        Request::Scan {
            cursor: SLOT_COUNT as u64,
            prefix: b"",
            pattern: b"",
            count: 0,
        },
        Request::Count,
        Request::Snapshot,
        Request::IncrBy {
            key: b"n",
            by: i64::MIN,
        },
        Request::Expire {
            key: b"key",
            at_unix_ms: 1_700_000_000_000,
            condition: tinkerdb_client::ExpireCondition::IfLater,
        },
        Request::Rename {
            from: b"a",
            to: b"b",
            kind: tinkerdb_client::RenameKind::CopyReplace,
        },
        Request::MSetIfAbsent { entries: &entries },
    ];
    let mut seeds: Vec<Vec<u8>> = requests
        .iter()
        .enumerate()
        .map(|(n, request)| request_body(n as u64 + 1, request))
        .collect();
    // An unknown operation (the request id must still be answered).
    let mut unknown = request_body(99, &Request::Ping);
    if let Some(at) = unknown
        .iter()
        .position(|&b| b == tinkerdb_schemas::wire::Request::Ping.0)
    {
        unknown[at] = 200;
    }
    seeds.push(unknown);
    seeds
}

// ---- RESP ----

fn resp_stream() -> Vec<Vec<u8>> {
    let streams: [&[u8]; 10] = [
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n",
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n",
        b"set k \"two words\" EX 10\r\nget k\r\n",
        b"PING\r\n\r\n*0\r\n*-1\r\nQUIT\r\nPING\r\n",
        b"*5\r\n$4\r\nMSET\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$0\r\n\r\n",
        b"*1\r\n$-5\r\n",
        b"*99999999999\r\n",
        b"*1\r\nx3\r\n",
        b"hello 'unbalanced\r\n",
        b"*2\r\n$4\r\nECHO\r\n$10\r\n0123456789\r\n",
    ];
    let mut seeds = Vec::new();
    for (n, stream) in streams.iter().enumerate() {
        // The first byte picks how the stream is cut into reads.
        let mut seed = vec![n as u8 * 7];
        seed.extend_from_slice(stream);
        seeds.push(seed);
    }
    seeds
}

// ---- Raft and peers ----

fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
    LogId {
        leader_id: openraft::impls::leader_id_adv::LeaderId { term, node_id },
        index,
    }
}

fn vote(term: u64, node_id: u64, committed: bool) -> Vote {
    openraft::impls::Vote {
        leader_id: openraft::impls::leader_id_adv::LeaderId { term, node_id },
        committed,
    }
}

fn node(addr: &str) -> Node {
    Node {
        addr: addr.to_owned(),
    }
}

fn commands() -> Vec<Command> {
    vec![
        Command::Put {
            tenant: "acme".into(),
            key: b"user:1".to_vec(),
            value: b"hello".to_vec(),
            expires_at_unix_ms: Some(1_700_000_000_000),
        },
        Command::Put {
            tenant: String::new(),
            key: Vec::new(),
            value: Vec::new(),
            expires_at_unix_ms: None,
        },
        Command::Delete {
            tenant: "default".into(),
            key: b"k".to_vec(),
        },
        Command::PutIf {
            tenant: "acme".into(),
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            expires_at_unix_ms: Some(9),
            condition: PutCondition::IfVersion(42),
            at_unix_ms: 1_700_000_000_000,
        },
        Command::PutIf {
            tenant: "acme".into(),
            key: b"k".to_vec(),
            value: Vec::new(),
            expires_at_unix_ms: None,
            condition: PutCondition::IfAbsent,
            at_unix_ms: 0,
        },
        Command::PutIf {
            tenant: "t".into(),
            key: b"k".to_vec(),
            value: b"x".to_vec(),
            expires_at_unix_ms: None,
            condition: PutCondition::IfPresent,
            at_unix_ms: 5,
        },
        Command::Ops {
            tenant: "acme".into(),
            at_unix_ms: 1_700_000_000_000,
            payload: ops_payload(),
            trace: None,
        },
        Command::Meta {
            at_unix_ms: 1_700_000_000_000,
            payload: br#"{"register_node":{"id":2,"raft":"10.0.0.2:7390","client":"10.0.0.2:7379","resp":null,"admin":"10.0.0.2:7380","cores":2,"version":"0.1.0"}}"#.to_vec(),
        },
        Command::Meta {
            at_unix_ms: 1,
            payload: br#"{"users":[{"delete":"alice"}]}"#.to_vec(),
        },
    ]
}

/// The operations of a pipeline, encoded as the node proposes them.
fn ops_payload() -> Vec<u8> {
    use tinkerdb_core::shard::write_op::{encode_ops, WriteOp};
    let requests = ops_requests();
    let ops: Vec<WriteOp> = requests
        .iter()
        .filter_map(WriteOp::of_request)
        .map(|(_, op)| op)
        .collect();
    assert_eq!(ops.len(), requests.len());
    encode_ops(&ops)
}

fn ops_requests() -> Vec<tinkerdb_core::shard::ShardRequest> {
    use bytes::Bytes;
    use tinkerdb_core::shard::{ShardRequest, SlotKey, Update};
    let key = |text: &'static str| SlotKey {
        slot: tinkerdb_storage::hash_slot("acme", text.as_bytes()),
        key: Bytes::from_static(text.as_bytes()),
    };
    vec![
        ShardRequest::Set {
            tenant: 0,
            key: key("a"),
            value: Bytes::from_static(b"1"),
            options: Default::default(),
        },
        ShardRequest::Update {
            tenant: 0,
            key: key("n"),
            update: Update::IncrBy(5),
        },
        ShardRequest::Update {
            tenant: 0,
            key: key("n"),
            update: Update::Expire {
                at_ms: Some(1_700_000_000_000),
                condition: tinkerdb_core::shard::ExpireCondition::IfLater,
            },
        },
        ShardRequest::Delete {
            tenant: 0,
            keys: vec![key("a"), key("b")],
        },
        ShardRequest::Flush { tenant: 0 },
    ]
}

fn encode_command(command: &Command) -> Vec<u8> {
    let mut bytes = Vec::new();
    command.encode(&mut bytes).expect("seed commands are valid");
    bytes
}

fn memberships() -> Vec<Membership> {
    let nodes = BTreeMap::from([
        (1, node("10.0.0.1:7000")),
        (2, node("10.0.0.2:7000")),
        (3, node("h3:1")),
        (9, node("learner:1")),
    ]);
    vec![
        Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes.clone()).expect("valid"),
        Membership::new(
            vec![BTreeSet::from([1, 2]), BTreeSet::from([1, 2, 3])],
            nodes.clone(),
        )
        .expect("valid"),
        // The joint membership of the bug fuzzing found: postcard can carry
        // its second config as empty (see `log_store::check_storable`).
        Membership::new(vec![BTreeSet::from([1]), BTreeSet::from([1, 2])], nodes).expect("valid"),
        Membership::default(),
    ]
}

fn entries() -> Vec<Entry> {
    let mut entries = vec![Entry {
        log_id: log_id(1, 2, 0),
        payload: EntryPayload::Blank,
    }];
    for (n, command) in commands().into_iter().enumerate() {
        entries.push(Entry {
            log_id: log_id(3, 1, 7 + n as u64),
            payload: EntryPayload::Normal(command),
        });
    }
    for (n, membership) in memberships().into_iter().enumerate() {
        entries.push(Entry {
            log_id: log_id(4, 1, 20 + n as u64),
            payload: EntryPayload::Membership(membership),
        });
    }
    entries
}

fn raft_log_entry() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = entries()
        .iter()
        .map(|entry| {
            let mut bytes = Vec::new();
            encode_entry_for_fuzzing(entry, &mut bytes).expect("seed entries store");
            bytes
        })
        .collect();
    // Metadata records (the WAL's save_meta): format 1 | flags | vote term,
    // node | committed log id | purged log id.
    for flags in [0u8, 1 | 2, 1 | 4 | 8, 15] {
        let mut meta = vec![1, flags];
        for word in [5u64, 2, 5, 2, 40, 3, 1, 30] {
            meta.extend_from_slice(&word.to_le_bytes());
        }
        seeds.push(meta);
    }
    seeds
}

/// Peer call payloads as `(kind, is_answer, payload)`.
fn peer_payloads() -> Vec<(PeerCallKind, bool, Vec<u8>)> {
    let leader = vote(5, 1, true);
    let all = entries();
    let append = AppendEntriesRequest::<tinkerdb_replication::TypeConfig> {
        vote: leader,
        prev_log_id: Some(log_id(4, 1, 6)),
        entries: all.clone(),
        leader_commit: Some(log_id(4, 1, 6)),
    };
    let heartbeat = AppendEntriesRequest::<tinkerdb_replication::TypeConfig> {
        vote: leader,
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    let snapshot = crate::peer::SnapshotCall {
        vote: leader,
        meta: openraft::storage::SnapshotMeta {
            last_log_id: Some(log_id(4, 1, 21)),
            last_membership: StoredMembership::new(Some(log_id(4, 1, 20)), memberships().remove(0)),
        },
        data: snapshot_file(&[("default", b"k", b"v", 3, None)]),
    };
    use PeerCallKind as K;
    let mut payloads = vec![
        (K::AppendEntries, false, encode(&append)),
        (K::AppendEntries, false, encode(&heartbeat)),
        (
            K::AppendEntries,
            true,
            encode(&AppendEntriesResponse::<tinkerdb_replication::TypeConfig>::Success),
        ),
        (
            K::AppendEntries,
            true,
            encode(
                &AppendEntriesResponse::<tinkerdb_replication::TypeConfig>::PartialSuccess(Some(
                    log_id(4, 1, 3),
                )),
            ),
        ),
        (
            K::AppendEntries,
            true,
            encode(&AppendEntriesResponse::<tinkerdb_replication::TypeConfig>::Conflict),
        ),
        (
            K::AppendEntries,
            true,
            encode(
                &AppendEntriesResponse::<tinkerdb_replication::TypeConfig>::HigherVote(vote(
                    9, 3, false,
                )),
            ),
        ),
        (
            K::Vote,
            false,
            encode(&VoteRequest::<tinkerdb_replication::TypeConfig>::new(
                vote(6, 2, false),
                Some(log_id(5, 1, 30)),
            )),
        ),
        (
            K::Vote,
            true,
            encode(&VoteResponse::<tinkerdb_replication::TypeConfig>::new(
                vote(6, 2, false),
                Some(log_id(5, 1, 30)),
                true,
            )),
        ),
        (K::InstallSnapshot, false, encode(&snapshot)),
        (
            K::InstallSnapshot,
            true,
            encode(&SnapshotResponse::<tinkerdb_replication::TypeConfig>::new(
                leader,
            )),
        ),
        (
            K::TransferLeader,
            false,
            encode(
                &TransferLeaderRequest::<tinkerdb_replication::TypeConfig>::new(
                    leader,
                    2,
                    Some(log_id(5, 1, 30)),
                ),
            ),
        ),
        (K::TransferLeader, true, encode(&Ok::<(), ()>(()))),
        (
            K::ChangeMembership,
            false,
            encode(&MemberChange::Add {
                id: 4,
                addr: "10.0.0.4:7000".into(),
            }),
        ),
        (
            K::ChangeMembership,
            false,
            encode(&MemberChange::Remove { id: 2 }),
        ),
        (
            K::ChangeMembership,
            true,
            encode(&Ok::<Vec<u64>, GroupError>(vec![1, 2, 3])),
        ),
        (
            K::ChangeMembership,
            true,
            encode(&Err::<Vec<u64>, GroupError>(GroupError::Refused {
                group: 1,
                reason: "no voter left".into(),
            })),
        ),
        (K::ReadIndex, false, Vec::new()),
        (K::ReadIndex, true, encode(&41u64)),
        (K::Ping, false, Vec::new()),
    ];
    for command in commands() {
        payloads.push((K::ForwardWrite, false, encode(&command)));
    }
    for answer in [
        Ok(Response::Put { version: 3 }),
        Ok(Response::Delete { existed: true }),
        Ok(Response::PutIf {
            applied: false,
            version: 9,
        }),
        Ok(Response::Empty),
        Ok(Response::Refused {
            code: 9,
            message: "quota".into(),
        }),
        Err(GroupError::Unavailable {
            group: 2,
            waited_ms: 5000,
            reason: "no leader".into(),
        }),
        Err(GroupError::Indeterminate {
            group: 2,
            reason: "leader changed".into(),
        }),
        Err(GroupError::Stopped {
            group: 2,
            reason: "disk".into(),
        }),
    ] {
        payloads.push((K::ForwardWrite, true, encode(&answer)));
    }
    // Forwarded requests and their answers (`coord::forward`).
    use tinkerdb_core::shard::remote::{self, RemoteAnswer, RemoteReply, RemoteRequest};
    for request in crate::peer::forwardable_requests() {
        let wire = RemoteRequest::of_request(&request, &|_| std::sync::Arc::from("default"))
            .expect("forwardable");
        payloads.push((K::Execute, false, remote::encode_request(&wire)));
    }
    let answers = [
        (false, vec![RemoteAnswer::Count(2)]),
        (false, vec![RemoteAnswer::Value(None)]),
        (
            false,
            vec![RemoteAnswer::Scanned {
                keys: vec![b"k".to_vec()],
                next_slot: 16384,
            }],
        ),
        (
            true,
            vec![
                RemoteAnswer::Value(None),
                RemoteAnswer::Count(1),
                RemoteAnswer::Value(None),
            ],
        ),
        (
            false,
            vec![RemoteAnswer::Error {
                code: 5,
                message: "no tenant".into(),
            }],
        ),
    ];
    for (batch, answers) in answers {
        let reply = RemoteReply {
            batch,
            answers,
            leader: Some(2),
        };
        payloads.push((K::Execute, true, remote::encode_reply(&reply)));
    }
    payloads
}

fn peer_payload() -> Vec<Vec<u8>> {
    peer_payloads()
        .into_iter()
        .map(|(kind, is_answer, payload)| {
            let mut seed = vec![kind.0 | if is_answer { 0x10 } else { 0 }];
            seed.extend_from_slice(&payload);
            seed
        })
        .collect()
}

fn peer_frame() -> Vec<Vec<u8>> {
    let mut builder = FlatBufferBuilder::new();
    let mut seeds = Vec::new();
    let mut stream = Vec::new();
    for (n, (kind, is_answer, payload)) in peer_payloads().into_iter().enumerate() {
        let call = PeerCall {
            group: n as u64 % 3,
            kind,
            payload,
        };
        let error = (n % 5 == 4).then_some("no group 7 on this core");
        let mut frame = Vec::new();
        encode_peer_frame(
            &mut builder,
            n as u64 + 1,
            &call,
            is_answer,
            error,
            &mut frame,
        );
        if n < 6 {
            stream.extend_from_slice(&frame);
        }
        seeds.push(frame);
    }
    // Several frames on one connection, as `read_frames` takes them.
    seeds.push(stream);
    seeds
}

// ---- storage ----

type SeedEntry<'a> = (&'a str, &'a [u8], &'a [u8], u64, Option<u64>);

/// A snapshot file written by `SnapshotCut` from a store holding `entries`.
fn snapshot_file(entries: &[SeedEntry<'_>]) -> Vec<u8> {
    let mut store = Store::new();
    let names: Vec<&str> = {
        let mut names: Vec<&str> = entries.iter().map(|e| e.0).collect();
        names.sort();
        names.dedup();
        names
    };
    let mut last = 0;
    for &(tenant, key, value, version, expiry) in entries {
        let id = names.iter().position(|n| *n == tenant).expect("named") as u32;
        store.restore(id, hash_slot(tenant, key), key, value, version, expiry);
        last = last.max(version);
    }
    let name = |id: u32| names[id as usize].to_owned();
    let mut cut = SnapshotCut::new(
        12,
        store.last_version().max(last),
        0..SLOT_COUNT,
        1_700_000_000_000,
    );
    while !cut.advance(&store, 1024, &name) {}
    let mut bytes = cut.take_ready_bytes();
    bytes.extend(cut.finish().0);
    bytes
}

fn put<'a>(
    tenant: &'a str,
    key: &'a [u8],
    value: &'a [u8],
    version: u64,
    expiry: Option<u64>,
) -> LoggedOp<'a> {
    LoggedOp::Put {
        tenant,
        slot: hash_slot(tenant, key),
        key,
        value,
        version,
        expires_at_ms: expiry,
    }
}

fn encode_ops(ops: &[LoggedOp<'_>]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for op in ops {
        op.encode(&mut bytes);
    }
    bytes
}

fn logged_ops() -> Vec<Vec<u8>> {
    let slot = hash_slot("acme", b"k");
    vec![
        encode_ops(&[
            put("acme", b"k", b"value", 9, Some(5)),
            put("default", b"", b"", 1, None),
            LoggedOp::Expire {
                tenant: "acme",
                slot,
                key: b"k",
                expires_at_ms: None,
            },
            LoggedOp::Delete {
                tenant: "acme",
                slot,
                key: b"k",
            },
            LoggedOp::Flush { tenant: "default" },
        ]),
        encode_ops(&[
            put("t", b"a", b"1", 3, Some(0)),
            LoggedOp::Expire {
                tenant: "t",
                slot: hash_slot("t", b"a"),
                key: b"a",
                expires_at_ms: Some(0),
            },
        ]),
        // The versions of the bug fuzzing found (refused, out of range),
        // and the top of the range (accepted).
        encode_ops(&[put("t", b"k", b"v", MAX_VERSION + 1, None)]),
        encode_ops(&[put("t", b"k", b"v", u64::MAX, None)]),
        encode_ops(&[put("t", b"k", b"v", 0, None)]),
        encode_ops(&[put("t", b"k", b"v", MAX_VERSION, None)]),
        // Found by this fuzzing (fixed): a restore after the counter
        // reached MAX_VERSION panicked.
        encode_ops(&[
            put("t", b"k", b"v", MAX_VERSION, None),
            put("t", b"j", b"w", 1, None),
        ]),
        encode_ops(&[
            put("t", b"a", b"1", MAX_VERSION - 1, None),
            put("t", b"b", b"2", 1, None),
            put("t", b"c", b"3", 1, None),
        ]),
    ]
}

fn wal_segment() -> Vec<Vec<u8>> {
    let ops = logged_ops();
    // Shared Raft log entry records: the range id, then the entry.
    let entry_bytes: Vec<Vec<u8>> = raft_log_entry()
        .into_iter()
        .enumerate()
        .map(|(range, entry)| [(range as u64).to_le_bytes().to_vec(), entry].concat())
        .collect();
    // A segment of three batches, then zeros, as the WAL writes it.
    let mut segment = Vec::new();
    let mut compact = Vec::new();
    let mut index = 1u64;
    for batch in 0..3usize {
        let mut body = Vec::new();
        let count = batch + 1;
        for n in 0..count {
            let (kind, payload) = if n % 2 == 0 {
                (RECORD_KIND_KV, &ops[(batch + n) % 2])
            } else {
                (
                    RECORD_KIND_RANGE_ENTRY,
                    &entry_bytes[(batch + n) % entry_bytes.len()],
                )
            };
            encode_record(&mut body, index + n as u64, kind, payload);
        }
        let start = segment.len();
        encode_batch(
            &mut segment,
            index,
            count as u32,
            &body,
            WAL_FORMAT_VERSION,
            index - 1,
        );
        compact.extend_from_slice(&segment[start..start + 40 + body.len()]);
        index += count as u64;
    }
    let start = segment.len();
    encode_truncation(&mut segment, 3, WAL_FORMAT_VERSION, index - 1);
    compact.extend_from_slice(&segment[start..start + 40]);
    segment.resize(segment.len() + BLOCK_BYTES, 0);

    let with_mode = |mode: u8, bytes: &[u8]| {
        let mut seed = vec![mode];
        seed.extend_from_slice(bytes);
        seed
    };
    let mut seeds = vec![
        with_mode(0, &segment),
        with_mode(MODE_COMPACT, &compact),
        with_mode(MODE_COMPACT | MODE_FIX_CHECKSUMS, &compact),
    ];
    // A torn tail: the last batch cut short (never acknowledged).
    let mut torn = compact.clone();
    torn.truncate(compact.len() - 50);
    seeds.push(with_mode(MODE_COMPACT, &torn));
    // A gap: the first batch missing, later ones say it was acknowledged.
    let mut gap = vec![0u8; 40];
    gap.extend_from_slice(&compact[40 + 28..]);
    seeds.push(with_mode(MODE_COMPACT | MODE_FIX_CHECKSUMS, &gap));
    // The bug fuzzing found: a checksum-valid batch at u64::MAX with two
    // records overflowed `first_index + records.len()`.
    let mut body = Vec::new();
    encode_record(&mut body, u64::MAX, 1, b"a");
    encode_record(&mut body, 0, 1, b"b");
    let mut overflow = Vec::new();
    encode_batch(&mut overflow, u64::MAX, 2, &body, 0, 0);
    seeds.push(with_mode(0, &overflow));
    seeds.push(with_mode(MODE_COMPACT, &overflow[..40 + body.len()]));
    seeds
}

fn snapshot_load() -> Vec<Vec<u8>> {
    let with_mode = |mode: u8, bytes: &[u8]| {
        let mut seed = vec![mode];
        seed.extend_from_slice(bytes);
        seed
    };
    let one = snapshot_file(&[
        ("default", b"k", b"v", 3, None),
        ("acme", b"user:1", b"hello", 7, Some(1_700_000_000_000)),
        ("acme", b"user:2", b"", 8, Some(0)),
        ("db1", b"", b"x", 2, None),
    ]);
    let empty = snapshot_file(&[]);
    let mut seeds = vec![
        with_mode(0, &one),
        with_mode(0, &empty),
        with_mode(MODE_FIX_CHECKSUMS | MODE_FIX_COUNTS, &one),
    ];
    // Several frames (the writer seals one per 256 KiB, too big for a
    // seed): assembled by hand, checksums and counts fixed.
    let mut frames = one[..36].to_vec();
    let at_max = [
        put("t", b"k", b"v", MAX_VERSION, None),
        put("t", b"j", b"w", 1, None),
    ];
    for ops in [
        vec![
            put("a", b"k1", b"v1", 4, None),
            put("b", b"k2", b"v2", 5, Some(10)),
        ],
        vec![],
        vec![put("a", b"k1", b"again", 6, None)],
    ] {
        let payload = encode_ops(&ops);
        frames.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frames.extend_from_slice(&[0; 4]);
        frames.extend_from_slice(&payload);
    }
    frames.extend_from_slice(&u32::MAX.to_le_bytes());
    frames.extend_from_slice(&[0; 20]);
    fix_snapshot_checksums(&mut frames, true);
    seeds.push(with_mode(0, &frames));
    seeds.push(with_mode(MODE_FIX_CHECKSUMS | MODE_FIX_COUNTS, &frames));
    // Found by this fuzzing (fixed): an entry at MAX_VERSION, then
    // another, panicked the restore.
    let mut file = one[..36].to_vec();
    let payload = encode_ops(&at_max);
    file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    file.extend_from_slice(&[0; 4]);
    file.extend_from_slice(&payload);
    file.extend_from_slice(&u32::MAX.to_le_bytes());
    file.extend_from_slice(&[0; 20]);
    fix_snapshot_checksums(&mut file, true);
    seeds.push(with_mode(0, &file));
    // The header's version counter out of range (the bug fuzzing found)
    // and at the top of the range.
    for last_version in [MAX_VERSION + 1, u64::MAX, MAX_VERSION] {
        let mut file = empty.clone();
        file[16..24].copy_from_slice(&last_version.to_le_bytes());
        fix_snapshot_checksums(&mut file, false);
        seeds.push(with_mode(0, &file));
    }
    // An entry at the top of the version range.
    seeds.push(with_mode(
        0,
        &snapshot_file(&[("t", b"k", b"v", MAX_VERSION, None)]),
    ));
    seeds
}
