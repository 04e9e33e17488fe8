//! A client request frame body (the bytes after the length prefix), as the
//! node's connection loop hands it to `protocol::decode_command`.
//!
//! Checks: the partial request-id reader agrees with the full decoder;
//! every accepted command is within the limits; tighter limits only turn
//! an accepted command into a size/count error; an accepted command,
//! encoded again by the client's encoder, decodes to the same command; the
//! node's reply encoder (for the error, or for a reply made from the
//! command) produces a frame the client decodes to the same answer. The
//! client's response decoder also sees the raw bytes.

#![no_main]

use std::time::Duration;

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use libfuzzer_sys::fuzz_target;
use tinkerdb_client::client::{ExpireCondition, RenameKind, SetCondition, Value, WriteResult};
use tinkerdb_client::codec::{self, encode_request, Request, Response};
use tinkerdb_core::config::Limits;
use tinkerdb_core::coord::request::{Command, Reply};
use tinkerdb_core::frontend::fbs::codec::{decode_command, encode_reply};
use tinkerdb_core::shard::{ExpireCondition as ShardExpire, MoveKind, ValueRead};
use tinkerdb_schemas::frame::{decode_request, peek_frame, request_id_of_malformed};
use tinkerdb_schemas::wire::ErrorCode;
use tinkerdb_schemas::{FRAME_HEADER_BYTES, PROTOCOL_VERSION};
use tinkerdb_storage::{WriteCondition, WriteOutcome, SLOT_COUNT};

const NOW_MS: u64 = 1_700_000_000_000;

fn tight_limits() -> Limits {
    Limits {
        max_key_bytes: 8,
        max_value_bytes: 16,
        max_keys_per_request: 3,
        scan_count_default: 2,
        scan_count_max: 5,
        ..Limits::default()
    }
}

fn check_within(command: &Command, limits: &Limits) {
    let key_ok = |key: &Bytes| assert!(key.len() <= limits.max_key_bytes, "key over the limit");
    let value_ok = |v: &Bytes| assert!(v.len() <= limits.max_value_bytes, "value over the limit");
    let count_ok = |n: usize| assert!((1..=limits.max_keys_per_request).contains(&n), "{n} keys");
    match command {
        Command::Get { key } => key_ok(key),
        Command::Set { key, value, .. } => {
            key_ok(key);
            value_ok(value);
        }
        Command::Delete { keys } | Command::Exists { keys } | Command::MGet { keys } => {
            count_ok(keys.len());
            keys.iter().for_each(key_ok);
        }
        Command::MSet { entries } | Command::MSetIfAbsent { entries } => {
            count_ok(entries.len());
            for (key, value) in entries {
                key_ok(key);
                value_ok(value);
            }
        }
        Command::IncrBy { key, .. } | Command::Expire { key, .. } => key_ok(key),
        Command::Rename { from, to, .. } => {
            key_ok(from);
            key_ok(to);
        }
        Command::Scan { cursor, count, .. } => {
            assert!((*cursor as usize) < SLOT_COUNT, "cursor out of range");
            assert!(
                (1..=limits.scan_count_max).contains(count),
                "scan count {count}"
            );
        }
        _ => {}
    }
}

/// The command as the client would send it: its request frame (with prefix).
fn encode_command(id: u64, command: &Command) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let mut out = Vec::new();
    let mut send = |request: Request<'_>| encode_request(&mut builder, id, &request, &mut out);
    match command {
        Command::Hello {
            tenant,
            client_name,
            stale_reads,
            user,
            password,
            ..
        } => send(Request::Hello {
            tenant,
            client_name,
            stale_reads: *stale_reads,
            user,
            password: &password.0,
        }),
        Command::Ping => send(Request::Ping),
        Command::Get { key } => send(Request::Get { key }),
        Command::Set {
            key,
            value,
            ttl_ms,
            condition,
        } => send(match condition {
            WriteCondition::IfVersion(expected_version) => Request::CompareAndSet {
                key,
                value,
                expected_version: *expected_version,
                ttl_ms: *ttl_ms,
            },
            other => Request::Set {
                key,
                value,
                ttl_ms: *ttl_ms,
                condition: match other {
                    WriteCondition::Always => SetCondition::Always,
                    WriteCondition::IfAbsent => SetCondition::IfAbsent,
                    WriteCondition::IfPresent => SetCondition::IfPresent,
                    WriteCondition::IfVersion(_) => unreachable!(),
                },
            },
        }),
        Command::Delete { keys } | Command::Exists { keys } | Command::MGet { keys } => {
            let keys: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
            send(match command {
                Command::Delete { .. } => Request::Delete { keys: &keys },
                Command::Exists { .. } => Request::Exists { keys: &keys },
                _ => Request::MGet { keys: &keys },
            })
        }
        Command::MSet { entries } => {
            let entries: Vec<(&[u8], &[u8])> =
                entries.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            send(Request::MSet { entries: &entries })
        }
        Command::Keys { pattern } => send(Request::Keys { pattern }),
        Command::Scan {
            cursor,
            prefix,
            pattern,
            count,
        } => send(Request::Scan {
            cursor: u64::from(*cursor),
            prefix,
            pattern,
            count: u32::try_from(*count).expect("clamped to scan_count_max"),
        }),
        Command::Count => send(Request::Count),
        Command::Snapshot => send(Request::Snapshot),
        Command::IncrBy { key, by } => send(Request::IncrBy { key, by: *by }),
        Command::Expire {
            key,
            at_ms,
            condition,
        } => send(Request::Expire {
            key,
            at_unix_ms: at_ms.unwrap_or(0),
            condition: match condition {
                ShardExpire::Always => ExpireCondition::Always,
                ShardExpire::IfNone => ExpireCondition::IfNone,
                ShardExpire::IfSome => ExpireCondition::IfSome,
                ShardExpire::IfLater => ExpireCondition::IfLater,
                ShardExpire::IfEarlier => ExpireCondition::IfEarlier,
                ShardExpire::IfSomeAndEarlier => unreachable!("not on the wire"),
            },
        }),
        Command::Rename { from, to, how } => send(Request::Rename {
            from,
            to,
            kind: match how {
                MoveKind::Rename => RenameKind::Rename,
                MoveKind::RenameIfAbsent => RenameKind::RenameIfAbsent,
                MoveKind::Copy { replace: false } => RenameKind::Copy,
                MoveKind::Copy { replace: true } => RenameKind::CopyReplace,
            },
        }),
        Command::MSetIfAbsent { entries } => {
            let entries: Vec<(&[u8], &[u8])> =
                entries.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            send(Request::MSetIfAbsent { entries: &entries })
        }
    }
    out
}

/// A reply made from the command's own fields, and what the client must
/// decode it to.
fn reply_for(id: u64, command: &Command, limits: &Limits) -> (Reply, Response) {
    let value_read = |value: &Bytes, version: u64| {
        let expires_at_ms = (version % 3 == 0).then_some(NOW_MS + version % 5000);
        let read = ValueRead {
            value: value.clone(),
            version,
            expires_at_ms,
        };
        let client = Value {
            value: value.clone(),
            version,
            ttl: expires_at_ms.map(|at| Duration::from_millis((at - NOW_MS).max(1))),
        };
        (read, client)
    };
    match command {
        Command::Hello { tenant, .. } => {
            // The cluster's members, made of the fuzzed bytes too: any
            // text must come back as sent.
            let nodes = vec![(id, tenant.clone()), (id.wrapping_add(1), String::new())];
            (
                Reply::HelloOk {
                    tenant: tenant.clone(),
                    cores: id as u32,
                    node_id: id,
                    nodes: std::sync::Arc::new(nodes.clone()),
                },
                Response::HelloOk {
                    tenant: tenant.clone(),
                    cores: id as u32,
                    node_id: id,
                    nodes,
                    max_key_bytes: limits.max_key_bytes as u32,
                    max_value_bytes: limits.max_value_bytes as u32,
                },
            )
        }
        Command::Ping => (Reply::Pong, Response::Pong),
        Command::Get { key } => {
            let (read, client) = value_read(key, id);
            (Reply::Value(Some(read)), Response::Value(Some(client)))
        }
        Command::Set { key, .. } => {
            let outcome = WriteOutcome {
                applied: key.len() % 2 == 0,
                version: id,
            };
            (
                Reply::Written(outcome),
                Response::Written(WriteResult {
                    applied: outcome.applied,
                    version: outcome.version,
                }),
            )
        }
        Command::Delete { keys } | Command::Exists { keys } => (
            Reply::Count(keys.len() as u64),
            Response::Count(keys.len() as u64),
        ),
        Command::IncrBy { by, .. } => (Reply::Integer(*by), Response::Integer(*by)),
        Command::Expire { key, .. } | Command::Rename { from: key, .. } => (
            Reply::Count(key.len() as u64 % 2),
            Response::Count(key.len() as u64 % 2),
        ),
        Command::MSetIfAbsent { entries } => (
            Reply::Count(entries.len() as u64 % 2),
            Response::Count(entries.len() as u64 % 2),
        ),
        Command::MGet { keys } => {
            let (reads, clients) = keys
                .iter()
                .enumerate()
                .map(|(n, key)| {
                    if n % 2 == 1 {
                        return (None, None);
                    }
                    let (read, client) = value_read(key, key.len() as u64 + 1);
                    (Some(read), Some(client))
                })
                .unzip();
            (Reply::Values(reads), Response::Values(clients))
        }
        Command::MSet { entries } => {
            let versions: Vec<u64> = (1..=entries.len() as u64)
                .map(|n| n.wrapping_add(id))
                .collect();
            (
                Reply::Versions(versions.clone()),
                Response::Versions(versions),
            )
        }
        Command::Keys { pattern } => (
            Reply::Keys(vec![pattern.clone()]),
            Response::Keys(vec![pattern.clone()]),
        ),
        Command::Scan {
            cursor,
            prefix,
            pattern,
            ..
        } => (
            Reply::Scanned {
                cursor: u64::from(*cursor),
                keys: vec![prefix.clone(), pattern.clone()],
            },
            Response::Scanned {
                cursor: u64::from(*cursor),
                keys: vec![prefix.clone(), pattern.clone()],
            },
        ),
        Command::Count => (Reply::Count(id), Response::Count(id)),
        Command::Snapshot => (
            Reply::Snapshotted {
                keys: id,
                bytes: id.wrapping_mul(3),
            },
            Response::Snapshotted {
                keys: id,
                bytes: id.wrapping_mul(3),
            },
        ),
    }
}

/// Encodes `reply` with the node's encoder; the client must decode it to
/// `(id, expected)`.
fn check_reply(id: u64, reply: &Reply, expected: Response, limits: &Limits) {
    let mut builder = FlatBufferBuilder::new();
    let mut out = Vec::new();
    encode_reply(&mut builder, id, reply, limits, NOW_MS, &mut out);
    let body_len = peek_frame(&out, usize::MAX)
        .expect("no limit")
        .expect("a whole frame");
    assert_eq!(
        FRAME_HEADER_BYTES + body_len,
        out.len(),
        "one frame exactly"
    );
    let decoded = codec::decode(&out[FRAME_HEADER_BYTES..]).expect("the client decodes a reply");
    assert_eq!(
        decoded,
        (id, expected),
        "the client reads a different reply"
    );
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(Some(body_len)) = peek_frame(data, limits.max_frame_bytes) {
        assert!(FRAME_HEADER_BYTES + body_len <= data.len());
    }
    // The client decodes the node's bytes with the same care.
    let _ = codec::decode(data);

    let full_id = decode_request(data)
        .ok()
        .map(|request| request.request_id());
    if let Some(id) = full_id {
        assert_eq!(
            request_id_of_malformed(data),
            Some(id),
            "the partial request-id reader disagrees with the decoder"
        );
    }
    let frame = Bytes::copy_from_slice(data);
    let decoded = decode_command(&frame, &limits);
    let tight = tight_limits();
    let tight_decoded = decode_command(&frame, &tight);
    match (&decoded, &tight_decoded) {
        (Ok(_), Ok((_, tight_command))) => check_within(tight_command, &tight),
        (Ok(_), Err((_, error))) => assert!(
            matches!(
                error.code,
                ErrorCode::KeyTooLarge | ErrorCode::ValueTooLarge | ErrorCode::TooManyKeys
            ),
            "tighter limits refused with {:?}: {}",
            error.code,
            error.message
        ),
        (Err(loose), Ok(_)) => panic!("refused under the default limits only: {loose:?}"),
        (Err(loose), Err(tight)) => assert_eq!(loose.0, tight.0, "request ids differ"),
    }
    match decoded {
        Ok((id, command)) => {
            assert_eq!(Some(id), full_id);
            check_within(&command, &limits);
            // Round trip through the client's encoder.
            let encoded = encode_command(id, &command);
            let body = Bytes::copy_from_slice(&encoded[FRAME_HEADER_BYTES..]);
            let again = decode_command(&body, &limits).expect("a re-encoded command decodes");
            let expected = match command.clone() {
                Command::Hello {
                    tenant,
                    client_name,
                    stale_reads,
                    user,
                    password,
                    ..
                } => Command::Hello {
                    protocol_version: PROTOCOL_VERSION,
                    tenant,
                    client_name,
                    stale_reads,
                    user,
                    password,
                },
                other => other,
            };
            assert_eq!(again, (id, expected), "a command reads back different");
            let (reply, response) = reply_for(id, &command, &limits);
            check_reply(id, &reply, response, &limits);
        }
        Err((id, error)) => {
            if let Some(full) = full_id {
                assert_eq!(id, full, "an error answered with another request id");
            }
            let expected = Response::Error {
                code: error.code,
                message: error.message.clone(),
                owner: None,
            };
            check_reply(id, &Reply::Error(error), expected, &limits);
        }
    }
});
