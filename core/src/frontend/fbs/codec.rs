//! The client protocol on the node side: frame bodies decoded into
//! [`Command`]s, and [`Reply`]s encoded into response frames.
//!
//! Decoding checks everything the schema cannot (sizes against [`Limits`],
//! counts, ranges) so that what reaches a shard is always valid; any failure
//! becomes a typed [`ProtocolError`] answered to the client. Keys and values
//! stay zero-copy slices of the frame's `Bytes` until a shard stores them.

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, WIPOffset};
use tinkerdb_schemas::frame::{decode_request, write_frame};
use tinkerdb_schemas::wire::{self, ErrorCode};
use tinkerdb_storage::{WriteCondition, SLOT_COUNT};

use crate::config::Limits;
use crate::coord::request::{Command, Reply};
use crate::coord::routes::Route;
use crate::error::ProtocolError;
use crate::shard::{ExpireCondition, MoveKind, ValueRead};

/// Decodes one frame body. On error, the request id is given when the frame
/// was readable enough to have one (0 otherwise).
pub fn decode_command(
    frame: &Bytes,
    limits: &Limits,
) -> Result<(u64, Command), (u64, ProtocolError)> {
    decode_routed_command(frame, limits).map(|(request_id, command, _)| (request_id, command))
}

/// [`decode_command`], with the route the request carries, if any.
pub fn decode_routed_command(
    frame: &Bytes,
    limits: &Limits,
) -> Result<(u64, Command, Option<Route>), (u64, ProtocolError)> {
    let request = decode_request(frame).map_err(|error| {
        (
            tinkerdb_schemas::frame::request_id_of_malformed(frame).unwrap_or(0),
            ProtocolError::new(ErrorCode::MalformedFrame, error.to_string()),
        )
    })?;
    let request_id = request.request_id();
    let route = request.route().map(|route| Route {
        range: route.range(),
        epoch: route.epoch(),
    });
    command_of(request, frame, limits)
        .map(|command| (request_id, command, route))
        .map_err(|error| (request_id, error))
}

fn command_of(
    request: wire::RequestFrame<'_>,
    frame: &Bytes,
    limits: &Limits,
) -> Result<Command, ProtocolError> {
    let bytes_of = |vector| bytes_in_frame(frame, vector);
    let key_of = |vector| checked_key(bytes_in_frame(frame, vector), limits);
    let value_of = |vector| checked_value(bytes_in_frame(frame, vector), limits);
    let keys_of = |keys: Option<KeyVector<'_>>| checked_keys(frame, keys, limits);
    let entries_of = |entries: Option<KeyValueVector<'_>>| checked_entries(frame, entries, limits);
    let missing = || {
        ProtocolError::new(
            ErrorCode::MalformedFrame,
            "request union type without a body",
        )
    };
    let command = match request.request_type() {
        wire::Request::Hello => {
            let hello = request.request_as_hello().ok_or_else(missing)?;
            Command::Hello {
                protocol_version: hello.protocol_version(),
                tenant: hello.tenant().unwrap_or_default().to_owned(),
                client_name: hello.client_name().unwrap_or_default().to_owned(),
                stale_reads: hello.read_consistency() == wire::ReadConsistency::Stale,
                user: hello.user().unwrap_or_default().to_owned(),
                password: crate::coord::request::Password(
                    hello.password().unwrap_or_default().to_owned(),
                ),
            }
        }
        wire::Request::Ping => Command::Ping,
        wire::Request::Get => {
            let get = request.request_as_get().ok_or_else(missing)?;
            Command::Get {
                key: key_of(get.key())?,
            }
        }
        wire::Request::Set => {
            let set = request.request_as_set().ok_or_else(missing)?;
            let condition = match set.condition() {
                wire::SetCondition::Always => WriteCondition::Always,
                wire::SetCondition::IfAbsent => WriteCondition::IfAbsent,
                wire::SetCondition::IfPresent => WriteCondition::IfPresent,
                other => {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidArgument,
                        format!("unknown set condition {}", other.0),
                    ))
                }
            };
            Command::Set {
                key: key_of(set.key())?,
                value: value_of(set.value())?,
                ttl_ms: set.ttl_ms(),
                condition,
            }
        }
        wire::Request::CompareAndSet => {
            let cas = request.request_as_compare_and_set().ok_or_else(missing)?;
            Command::Set {
                key: key_of(cas.key())?,
                value: value_of(cas.value())?,
                ttl_ms: cas.ttl_ms(),
                condition: WriteCondition::IfVersion(cas.expected_version()),
            }
        }
        wire::Request::Delete => Command::Delete {
            keys: keys_of(request.request_as_delete().ok_or_else(missing)?.keys())?,
        },
        wire::Request::Exists => Command::Exists {
            keys: keys_of(request.request_as_exists().ok_or_else(missing)?.keys())?,
        },
        wire::Request::MGet => Command::MGet {
            keys: keys_of(request.request_as_mget().ok_or_else(missing)?.keys())?,
        },
        wire::Request::MSet => Command::MSet {
            entries: entries_of(request.request_as_mset().ok_or_else(missing)?.entries())?,
        },
        wire::Request::Keys => Command::Keys {
            pattern: bytes_of(request.request_as_keys().ok_or_else(missing)?.pattern()),
        },
        wire::Request::Scan => {
            let scan = request.request_as_scan().ok_or_else(missing)?;
            let cursor = scan.cursor();
            if cursor >= SLOT_COUNT as u64 {
                return Err(ProtocolError::new(
                    ErrorCode::InvalidArgument,
                    format!("scan cursor {cursor} is out of range 0..{SLOT_COUNT}"),
                ));
            }
            let count = match scan.count() as usize {
                0 => limits.scan_count_default,
                count => count.min(limits.scan_count_max),
            };
            Command::Scan {
                cursor: cursor as u32,
                prefix: bytes_of(scan.prefix()),
                pattern: bytes_of(scan.pattern()),
                count,
            }
        }
        wire::Request::Count => Command::Count,
        wire::Request::Snapshot => Command::Snapshot,
        wire::Request::IncrBy => {
            let incr = request.request_as_incr_by().ok_or_else(missing)?;
            Command::IncrBy {
                key: key_of(incr.key())?,
                by: incr.by(),
            }
        }
        wire::Request::Expire => {
            let expire = request.request_as_expire().ok_or_else(missing)?;
            let condition = match expire.condition() {
                wire::ExpireCondition::Always => ExpireCondition::Always,
                wire::ExpireCondition::IfNone => ExpireCondition::IfNone,
                wire::ExpireCondition::IfSome => ExpireCondition::IfSome,
                wire::ExpireCondition::IfLater => ExpireCondition::IfLater,
                wire::ExpireCondition::IfEarlier => ExpireCondition::IfEarlier,
                other => {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidArgument,
                        format!("unknown expire condition {}", other.0),
                    ))
                }
            };
            Command::Expire {
                key: key_of(expire.key())?,
                at_ms: (expire.at_unix_ms() > 0).then_some(expire.at_unix_ms()),
                condition,
            }
        }
        wire::Request::Rename => {
            let rename = request.request_as_rename().ok_or_else(missing)?;
            let how = match rename.kind() {
                wire::RenameKind::Rename => MoveKind::Rename,
                wire::RenameKind::RenameIfAbsent => MoveKind::RenameIfAbsent,
                wire::RenameKind::Copy => MoveKind::Copy { replace: false },
                wire::RenameKind::CopyReplace => MoveKind::Copy { replace: true },
                other => {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidArgument,
                        format!("unknown rename kind {}", other.0),
                    ))
                }
            };
            Command::Rename {
                from: key_of(rename.from())?,
                to: key_of(rename.to())?,
                how,
            }
        }
        wire::Request::MSetIfAbsent => Command::MSetIfAbsent {
            entries: entries_of(
                request
                    .request_as_mset_if_absent()
                    .ok_or_else(missing)?
                    .entries(),
            )?,
        },
        other => {
            return Err(ProtocolError::new(
                ErrorCode::UnknownOperation,
                format!("unknown operation {}", other.0),
            ))
        }
    };
    Ok(command)
}

type KeyVector<'a> = flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<wire::Key<'a>>>;
type KeyValueVector<'a> = flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<wire::KeyValue<'a>>>;

/// MSet's and MSetIfAbsent's entries: present, not too many, each key and
/// value within the limits.
fn checked_entries(
    frame: &Bytes,
    entries: Option<KeyValueVector<'_>>,
    limits: &Limits,
) -> Result<Vec<(Bytes, Bytes)>, ProtocolError> {
    let entries = entries
        .ok_or_else(|| ProtocolError::new(ErrorCode::InvalidArgument, "no entries given"))?;
    check_key_count(entries.len(), limits)?;
    entries
        .iter()
        .map(|entry| {
            Ok((
                checked_key(bytes_in_frame(frame, entry.key()), limits)?,
                checked_value(bytes_in_frame(frame, entry.value()), limits)?,
            ))
        })
        .collect()
}

/// A byte vector of the frame as a zero-copy `Bytes` (absent: empty).
fn bytes_in_frame(frame: &Bytes, vector: Option<flatbuffers::Vector<'_, u8>>) -> Bytes {
    match vector {
        Some(vector) => frame.slice_ref(vector.bytes()),
        None => Bytes::new(),
    }
}

fn checked_key(key: Bytes, limits: &Limits) -> Result<Bytes, ProtocolError> {
    if key.len() > limits.max_key_bytes {
        return Err(ProtocolError::new(
            ErrorCode::KeyTooLarge,
            format!(
                "key of {} bytes exceeds max_key_bytes {}",
                key.len(),
                limits.max_key_bytes
            ),
        ));
    }
    Ok(key)
}

fn checked_value(value: Bytes, limits: &Limits) -> Result<Bytes, ProtocolError> {
    if value.len() > limits.max_value_bytes {
        return Err(ProtocolError::new(
            ErrorCode::ValueTooLarge,
            format!(
                "value of {} bytes exceeds max_value_bytes {}",
                value.len(),
                limits.max_value_bytes
            ),
        ));
    }
    Ok(value)
}

fn checked_keys(
    frame: &Bytes,
    keys: Option<KeyVector<'_>>,
    limits: &Limits,
) -> Result<Vec<Bytes>, ProtocolError> {
    let keys =
        keys.ok_or_else(|| ProtocolError::new(ErrorCode::InvalidArgument, "no keys given"))?;
    check_key_count(keys.len(), limits)?;
    keys.iter()
        .map(|key| checked_key(bytes_in_frame(frame, key.bytes()), limits))
        .collect()
}

fn check_key_count(count: usize, limits: &Limits) -> Result<(), ProtocolError> {
    if count == 0 {
        return Err(ProtocolError::new(
            ErrorCode::InvalidArgument,
            "no keys given",
        ));
    }
    if count > limits.max_keys_per_request {
        return Err(ProtocolError::new(
            ErrorCode::TooManyKeys,
            format!(
                "{count} keys exceed max_keys_per_request {}",
                limits.max_keys_per_request
            ),
        ));
    }
    Ok(())
}

/// Encodes `reply` as one response frame appended to `out`. `builder` is
/// reused between calls to avoid allocating.
pub fn encode_reply(
    builder: &mut FlatBufferBuilder<'static>,
    request_id: u64,
    reply: &Reply,
    limits: &Limits,
    now_ms: u64,
    out: &mut Vec<u8>,
) {
    builder.reset();
    let (response_type, response) = match reply {
        Reply::Error(error) => {
            let message = builder.create_string(&error.message);
            let owner = error.owner.as_ref().map(|owner| {
                let address = builder.create_string(&owner.address);
                wire::ShardOwner::create(
                    builder,
                    &wire::ShardOwnerArgs {
                        slot: owner.slot,
                        core: owner.core as u32,
                        node: owner.node,
                        address: Some(address),
                        range: owner.range as u32,
                        epoch: owner.epoch,
                    },
                )
            });
            let table = wire::Error::create(
                builder,
                &wire::ErrorArgs {
                    code: error.code,
                    message: Some(message),
                    owner,
                },
            );
            (wire::Response::Error, table.as_union_value())
        }
        Reply::HelloOk {
            tenant,
            cores,
            node_id,
            nodes,
        } => {
            let nodes: Vec<_> = nodes
                .iter()
                .map(|(id, client)| {
                    let client_addr = builder.create_string(client);
                    wire::NodeAddress::create(
                        builder,
                        &wire::NodeAddressArgs {
                            node_id: *id,
                            client_addr: Some(client_addr),
                        },
                    )
                })
                .collect();
            let nodes = builder.create_vector(&nodes);
            let server_version = builder.create_string(env!("CARGO_PKG_VERSION"));
            let tenant = builder.create_string(tenant);
            let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            let limits = wire::Limits::create(
                builder,
                &wire::LimitsArgs {
                    max_frame_bytes: to_u32(limits.max_frame_bytes),
                    max_key_bytes: to_u32(limits.max_key_bytes),
                    max_value_bytes: to_u32(limits.max_value_bytes),
                    max_keys_per_request: to_u32(limits.max_keys_per_request),
                },
            );
            let table = wire::HelloOk::create(
                builder,
                &wire::HelloOkArgs {
                    protocol_version: tinkerdb_schemas::PROTOCOL_VERSION,
                    server_version: Some(server_version),
                    tenant: Some(tenant),
                    cores: *cores,
                    limits: Some(limits),
                    node_id: *node_id,
                    nodes: Some(nodes),
                },
            );
            (wire::Response::HelloOk, table.as_union_value())
        }
        Reply::Pong => {
            let table = wire::Pong::create(builder, &wire::PongArgs {});
            (wire::Response::Pong, table.as_union_value())
        }
        Reply::Value(value) => {
            let table = get_result(builder, value.as_ref(), now_ms);
            (wire::Response::GetResult, table.as_union_value())
        }
        Reply::Written(outcome) => {
            let table = wire::SetResult::create(
                builder,
                &wire::SetResultArgs {
                    applied: outcome.applied,
                    version: outcome.version,
                },
            );
            (wire::Response::SetResult, table.as_union_value())
        }
        Reply::Count(count) => {
            let table =
                wire::CountResult::create(builder, &wire::CountResultArgs { count: *count });
            (wire::Response::CountResult, table.as_union_value())
        }
        Reply::Integer(value) => {
            let table =
                wire::IntegerResult::create(builder, &wire::IntegerResultArgs { value: *value });
            (wire::Response::IntegerResult, table.as_union_value())
        }
        Reply::Values(values) => {
            let tables: Vec<_> = values
                .iter()
                .map(|value| get_result(builder, value.as_ref(), now_ms))
                .collect();
            let values = builder.create_vector(&tables);
            let table = wire::MGetResult::create(
                builder,
                &wire::MGetResultArgs {
                    values: Some(values),
                },
            );
            (wire::Response::MGetResult, table.as_union_value())
        }
        Reply::Versions(versions) => {
            let versions = builder.create_vector(versions);
            let table = wire::MSetResult::create(
                builder,
                &wire::MSetResultArgs {
                    versions: Some(versions),
                },
            );
            (wire::Response::MSetResult, table.as_union_value())
        }
        Reply::Keys(keys) => {
            let keys = key_vector(builder, keys);
            let table =
                wire::KeysResult::create(builder, &wire::KeysResultArgs { keys: Some(keys) });
            (wire::Response::KeysResult, table.as_union_value())
        }
        Reply::Scanned { cursor, keys } => {
            let keys = key_vector(builder, keys);
            let table = wire::ScanResult::create(
                builder,
                &wire::ScanResultArgs {
                    cursor: *cursor,
                    keys: Some(keys),
                },
            );
            (wire::Response::ScanResult, table.as_union_value())
        }
        Reply::Snapshotted { keys, bytes } => {
            let table = wire::SnapshotResult::create(
                builder,
                &wire::SnapshotResultArgs {
                    keys: *keys,
                    bytes: *bytes,
                },
            );
            (wire::Response::SnapshotResult, table.as_union_value())
        }
    };
    let frame = wire::ResponseFrame::create(
        builder,
        &wire::ResponseFrameArgs {
            request_id,
            response_type,
            response: Some(response),
        },
    );
    builder.finish_minimal(frame);
    write_frame(out, builder.finished_data());
}

fn get_result<'b>(
    builder: &mut FlatBufferBuilder<'b>,
    value: Option<&ValueRead>,
    now_ms: u64,
) -> WIPOffset<wire::GetResult<'b>> {
    let args = match value {
        None => wire::GetResultArgs::default(),
        Some(read) => wire::GetResultArgs {
            found: true,
            value: Some(builder.create_vector(&read.value[..])),
            version: read.version,
            // A key that is still readable has at least 1 ms to live.
            ttl_ms: read
                .expires_at_ms
                .map_or(0, |at| at.saturating_sub(now_ms).max(1)),
        },
    };
    wire::GetResult::create(builder, &args)
}

fn key_vector<'b>(
    builder: &mut FlatBufferBuilder<'b>,
    keys: &[Bytes],
) -> WIPOffset<flatbuffers::Vector<'b, flatbuffers::ForwardsUOffset<wire::Key<'b>>>> {
    let tables: Vec<_> = keys
        .iter()
        .map(|key| {
            let bytes = builder.create_vector(&key[..]);
            wire::Key::create(builder, &wire::KeyArgs { bytes: Some(bytes) })
        })
        .collect();
    builder.create_vector(&tables)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame_with(
        build: impl FnOnce(
            &mut FlatBufferBuilder<'static>,
        ) -> (wire::Request, WIPOffset<flatbuffers::UnionWIPOffset>),
    ) -> Bytes {
        let mut builder = FlatBufferBuilder::new();
        let (request_type, request) = build(&mut builder);
        let frame = wire::RequestFrame::create(
            &mut builder,
            &wire::RequestFrameArgs {
                request_id: 42,
                request_type,
                request: Some(request),
                route: None,
            },
        );
        builder.finish_minimal(frame);
        Bytes::copy_from_slice(builder.finished_data())
    }

    #[test]
    fn decodes_set_zero_copy_and_checks_sizes() {
        let limits = Limits {
            max_key_bytes: 4,
            ..Limits::default()
        };
        let frame = frame_with(|b| {
            let key = b.create_vector(b"key");
            let value = b.create_vector(b"value");
            let set = wire::Set::create(
                b,
                &wire::SetArgs {
                    key: Some(key),
                    value: Some(value),
                    ttl_ms: 5,
                    condition: wire::SetCondition::IfAbsent,
                },
            );
            (wire::Request::Set, set.as_union_value())
        });
        let (id, command) = decode_command(&frame, &limits).unwrap();
        assert_eq!(id, 42);
        assert_eq!(
            command,
            Command::Set {
                key: Bytes::from_static(b"key"),
                value: Bytes::from_static(b"value"),
                ttl_ms: 5,
                condition: WriteCondition::IfAbsent
            }
        );
        let long_key = frame_with(|b| {
            let key = b.create_vector(b"longkey");
            let get = wire::Get::create(b, &wire::GetArgs { key: Some(key) });
            (wire::Request::Get, get.as_union_value())
        });
        let (id, error) = decode_command(&long_key, &limits).unwrap_err();
        assert_eq!((id, error.code), (42, ErrorCode::KeyTooLarge));
    }

    #[test]
    fn unknown_operation_keeps_request_id() {
        let frame = frame_with(|b| {
            let ping = wire::Ping::create(b, &wire::PingArgs {});
            (wire::Request(200), ping.as_union_value())
        });
        let (id, error) = decode_command(&frame, &Limits::default()).unwrap_err();
        assert_eq!((id, error.code), (42, ErrorCode::UnknownOperation));
    }

    proptest! {
        // Frame bodies come from the network: any bytes decode to a command
        // or a typed error, never a panic.
        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_command(&Bytes::from(body), &Limits::default());
        }

        // Valid frames with one byte flipped: decode or error, never panic.
        #[test]
        fn corrupted_frames_never_panic(index in any::<prop::sample::Index>(), bit in 0u8..8) {
            let frame = frame_with(|b| {
                let key = b.create_vector(b"some-key");
                let value = b.create_vector(b"some-value");
                let entry = wire::KeyValue::create(b, &wire::KeyValueArgs { key: Some(key), value: Some(value) });
                let entries = b.create_vector(&[entry, entry]);
                let mset = wire::MSet::create(b, &wire::MSetArgs { entries: Some(entries) });
                (wire::Request::MSet, mset.as_union_value())
            });
            let mut bytes = frame.to_vec();
            let at = index.index(bytes.len());
            bytes[at] ^= 1 << bit;
            let _ = decode_command(&Bytes::from(bytes), &Limits::default());
        }
    }
}
