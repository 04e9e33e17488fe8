//! Requests to frames, and response frames to owned values.

use std::time::Duration;

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, WIPOffset};
use tinkerdb_schemas::frame::{decode_response, write_frame};
use tinkerdb_schemas::wire;

use crate::client::{ExpireCondition, RenameKind, SetCondition, Value, WriteResult};
use crate::error::{ClientError, Route, ShardOwner};

/// A request, borrowing its keys and values from the caller.
#[derive(Debug, Clone)]
pub enum Request<'a> {
    /// Handshake.
    Hello {
        /// Tenant name.
        tenant: &'a str,
        /// Free text.
        client_name: &'a str,
        /// Cluster mode: reads may answer from the replica reached, without
        /// the read index (possibly behind the latest writes).
        stale_reads: bool,
        /// User to authenticate as (empty: none; protocol version 2).
        user: &'a str,
        /// Its password (empty: none).
        password: &'a str,
    },
    /// Round trip.
    Ping,
    /// Read a key.
    Get {
        /// Key.
        key: &'a [u8],
    },
    /// Write a key.
    Set {
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
        /// TTL in ms, 0 = none.
        ttl_ms: u64,
        /// Condition.
        condition: SetCondition,
    },
    /// Compare-and-set.
    CompareAndSet {
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
        /// Version expected, 0 = must not exist.
        expected_version: u64,
        /// TTL in ms, 0 = none.
        ttl_ms: u64,
    },
    /// Delete keys.
    Delete {
        /// Keys.
        keys: &'a [&'a [u8]],
    },
    /// Count existing keys.
    Exists {
        /// Keys.
        keys: &'a [&'a [u8]],
    },
    /// Read keys.
    MGet {
        /// Keys.
        keys: &'a [&'a [u8]],
    },
    /// Write keys.
    MSet {
        /// Pairs.
        entries: &'a [(&'a [u8], &'a [u8])],
    },
    /// Keys matching a glob.
    Keys {
        /// Pattern.
        pattern: &'a [u8],
    },
    /// Scan step.
    Scan {
        /// Cursor.
        cursor: u64,
        /// Prefix.
        prefix: &'a [u8],
        /// Pattern.
        pattern: &'a [u8],
        /// Count hint.
        count: u32,
    },
    /// Tenant key count.
    Count,
    /// Snapshot the node.
    Snapshot,
    /// Add to a key's integer value.
    IncrBy {
        /// Key.
        key: &'a [u8],
        /// Increment.
        by: i64,
    },
    /// Set (at_unix_ms > 0) or remove (0) a key's expiry.
    Expire {
        /// Key.
        key: &'a [u8],
        /// Unix ms, 0 = remove.
        at_unix_ms: u64,
        /// When it applies.
        condition: ExpireCondition,
    },
    /// Rename or copy a key.
    Rename {
        /// Source.
        from: &'a [u8],
        /// Destination.
        to: &'a [u8],
        /// How.
        kind: RenameKind,
    },
    /// Write keys only if none exists.
    MSetIfAbsent {
        /// Pairs.
        entries: &'a [(&'a [u8], &'a [u8])],
    },
}

/// An answer, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// The request failed.
    Error {
        /// Code.
        code: wire::ErrorCode,
        /// Message.
        message: String,
        /// With `WrongShard`: where the key's shard is now.
        owner: Option<ShardOwner>,
    },
    /// Handshake accepted.
    HelloOk {
        /// Tenant bound.
        tenant: String,
        /// Node's cores.
        cores: u32,
        /// The answering node's id (0: standalone).
        node_id: u64,
        /// Cluster mode: every registered member's id and client address.
        nodes: Vec<(u64, String)>,
        /// Node's largest key.
        max_key_bytes: u32,
        /// Node's largest value.
        max_value_bytes: u32,
    },
    /// Answer to Ping.
    Pong,
    /// Answer to Get.
    Value(Option<Value>),
    /// Answer to Set / CompareAndSet.
    Written(WriteResult),
    /// Answer to Delete / Exists / Count.
    Count(u64),
    /// Answer to MGet.
    Values(Vec<Option<Value>>),
    /// Answer to MSet.
    Versions(Vec<u64>),
    /// Answer to Keys.
    Keys(Vec<Bytes>),
    /// Answer to Scan.
    Scanned {
        /// Next cursor (0 = done).
        cursor: u64,
        /// Keys.
        keys: Vec<Bytes>,
    },
    /// Answer to Snapshot.
    Snapshotted {
        /// Entries written.
        keys: u64,
        /// Bytes written.
        bytes: u64,
    },
    /// Answer to IncrBy.
    Integer(i64),
}

type KeyOffsets<'b> =
    WIPOffset<flatbuffers::Vector<'b, flatbuffers::ForwardsUOffset<wire::Key<'b>>>>;

fn key_vector<'b>(builder: &mut FlatBufferBuilder<'b>, keys: &[&[u8]]) -> KeyOffsets<'b> {
    let tables: Vec<_> = keys
        .iter()
        .map(|key| {
            let bytes = builder.create_vector(key);
            wire::Key::create(builder, &wire::KeyArgs { bytes: Some(bytes) })
        })
        .collect();
    builder.create_vector(&tables)
}

type KeyValueOffsets<'b> =
    WIPOffset<flatbuffers::Vector<'b, flatbuffers::ForwardsUOffset<wire::KeyValue<'b>>>>;

fn key_value_vector<'b>(
    builder: &mut FlatBufferBuilder<'b>,
    entries: &[(&[u8], &[u8])],
) -> KeyValueOffsets<'b> {
    let tables: Vec<_> = entries
        .iter()
        .map(|(key, value)| {
            let key = builder.create_vector(key);
            let value = builder.create_vector(value);
            wire::KeyValue::create(
                builder,
                &wire::KeyValueArgs {
                    key: Some(key),
                    value: Some(value),
                },
            )
        })
        .collect();
    builder.create_vector(&tables)
}

/// Appends `request` as one frame to `out`.
pub fn encode_request(
    builder: &mut FlatBufferBuilder<'_>,
    request_id: u64,
    request: &Request<'_>,
    out: &mut Vec<u8>,
) {
    encode_routed_request(builder, request_id, request, None, out);
}

/// [`encode_request`] with the route the client believes the request's
/// keys have (checked by the node: `ErrorCode::StaleRoute` when stale).
pub fn encode_routed_request(
    builder: &mut FlatBufferBuilder<'_>,
    request_id: u64,
    request: &Request<'_>,
    route: Option<Route>,
    out: &mut Vec<u8>,
) {
    builder.reset();
    let (request_type, body) = match *request {
        Request::Hello {
            tenant,
            client_name,
            stale_reads,
            user,
            password,
        } => {
            let tenant = builder.create_string(tenant);
            let client_name = builder.create_string(client_name);
            // Absent (not empty) when not authenticating.
            let user = (!user.is_empty()).then(|| builder.create_string(user));
            let password = (!password.is_empty()).then(|| builder.create_string(password));
            let table = wire::Hello::create(
                builder,
                &wire::HelloArgs {
                    protocol_version: tinkerdb_schemas::PROTOCOL_VERSION,
                    tenant: Some(tenant),
                    client_name: Some(client_name),
                    read_consistency: if stale_reads {
                        wire::ReadConsistency::Stale
                    } else {
                        wire::ReadConsistency::Linearizable
                    },
                    user,
                    password,
                },
            );
            (wire::Request::Hello, table.as_union_value())
        }
        Request::Ping => (
            wire::Request::Ping,
            wire::Ping::create(builder, &wire::PingArgs {}).as_union_value(),
        ),
        Request::Get { key } => {
            let key = builder.create_vector(key);
            let table = wire::Get::create(builder, &wire::GetArgs { key: Some(key) });
            (wire::Request::Get, table.as_union_value())
        }
        Request::Set {
            key,
            value,
            ttl_ms,
            condition,
        } => {
            let key = builder.create_vector(key);
            let value = builder.create_vector(value);
            let condition = match condition {
                SetCondition::Always => wire::SetCondition::Always,
                SetCondition::IfAbsent => wire::SetCondition::IfAbsent,
                SetCondition::IfPresent => wire::SetCondition::IfPresent,
            };
            let table = wire::Set::create(
                builder,
                &wire::SetArgs {
                    key: Some(key),
                    value: Some(value),
                    ttl_ms,
                    condition,
                },
            );
            (wire::Request::Set, table.as_union_value())
        }
        Request::CompareAndSet {
            key,
            value,
            expected_version,
            ttl_ms,
        } => {
            let key = builder.create_vector(key);
            let value = builder.create_vector(value);
            let table = wire::CompareAndSet::create(
                builder,
                &wire::CompareAndSetArgs {
                    key: Some(key),
                    value: Some(value),
                    expected_version,
                    ttl_ms,
                },
            );
            (wire::Request::CompareAndSet, table.as_union_value())
        }
        Request::Delete { keys } => {
            let keys = key_vector(builder, keys);
            let table = wire::Delete::create(builder, &wire::DeleteArgs { keys: Some(keys) });
            (wire::Request::Delete, table.as_union_value())
        }
        Request::Exists { keys } => {
            let keys = key_vector(builder, keys);
            let table = wire::Exists::create(builder, &wire::ExistsArgs { keys: Some(keys) });
            (wire::Request::Exists, table.as_union_value())
        }
        Request::MGet { keys } => {
            let keys = key_vector(builder, keys);
            let table = wire::MGet::create(builder, &wire::MGetArgs { keys: Some(keys) });
            (wire::Request::MGet, table.as_union_value())
        }
        Request::MSet { entries } => {
            let entries = key_value_vector(builder, entries);
            let table = wire::MSet::create(
                builder,
                &wire::MSetArgs {
                    entries: Some(entries),
                },
            );
            (wire::Request::MSet, table.as_union_value())
        }
        Request::Keys { pattern } => {
            let pattern = builder.create_vector(pattern);
            let table = wire::Keys::create(
                builder,
                &wire::KeysArgs {
                    pattern: Some(pattern),
                },
            );
            (wire::Request::Keys, table.as_union_value())
        }
        Request::Scan {
            cursor,
            prefix,
            pattern,
            count,
        } => {
            let prefix = builder.create_vector(prefix);
            let pattern = builder.create_vector(pattern);
            let table = wire::Scan::create(
                builder,
                &wire::ScanArgs {
                    cursor,
                    prefix: Some(prefix),
                    pattern: Some(pattern),
                    count,
                },
            );
            (wire::Request::Scan, table.as_union_value())
        }
        Request::Count => (
            wire::Request::Count,
            wire::Count::create(builder, &wire::CountArgs {}).as_union_value(),
        ),
        Request::Snapshot => (
            wire::Request::Snapshot,
            wire::Snapshot::create(builder, &wire::SnapshotArgs {}).as_union_value(),
        ),
        Request::IncrBy { key, by } => {
            let key = builder.create_vector(key);
            let table = wire::IncrBy::create(builder, &wire::IncrByArgs { key: Some(key), by });
            (wire::Request::IncrBy, table.as_union_value())
        }
        Request::Expire {
            key,
            at_unix_ms,
            condition,
        } => {
            let key = builder.create_vector(key);
            let condition = match condition {
                ExpireCondition::Always => wire::ExpireCondition::Always,
                ExpireCondition::IfNone => wire::ExpireCondition::IfNone,
                ExpireCondition::IfSome => wire::ExpireCondition::IfSome,
                ExpireCondition::IfLater => wire::ExpireCondition::IfLater,
                ExpireCondition::IfEarlier => wire::ExpireCondition::IfEarlier,
            };
            let table = wire::Expire::create(
                builder,
                &wire::ExpireArgs {
                    key: Some(key),
                    at_unix_ms,
                    condition,
                },
            );
            (wire::Request::Expire, table.as_union_value())
        }
        Request::Rename { from, to, kind } => {
            let from = builder.create_vector(from);
            let to = builder.create_vector(to);
            let kind = match kind {
                RenameKind::Rename => wire::RenameKind::Rename,
                RenameKind::RenameIfAbsent => wire::RenameKind::RenameIfAbsent,
                RenameKind::Copy => wire::RenameKind::Copy,
                RenameKind::CopyReplace => wire::RenameKind::CopyReplace,
            };
            let table = wire::Rename::create(
                builder,
                &wire::RenameArgs {
                    from: Some(from),
                    to: Some(to),
                    kind,
                },
            );
            (wire::Request::Rename, table.as_union_value())
        }
        Request::MSetIfAbsent { entries } => {
            let entries = key_value_vector(builder, entries);
            let table = wire::MSetIfAbsent::create(
                builder,
                &wire::MSetIfAbsentArgs {
                    entries: Some(entries),
                },
            );
            (wire::Request::MSetIfAbsent, table.as_union_value())
        }
    };
    let route = route.map(|route| {
        wire::Route::create(
            builder,
            &wire::RouteArgs {
                range: route.range,
                epoch: route.epoch,
            },
        )
    });
    let frame = wire::RequestFrame::create(
        builder,
        &wire::RequestFrameArgs {
            request_id,
            request_type,
            request: Some(body),
            route,
        },
    );
    builder.finish_minimal(frame);
    write_frame(out, builder.finished_data());
}

fn value_of(result: wire::GetResult<'_>) -> Option<Value> {
    result.found().then(|| Value {
        value: Bytes::copy_from_slice(result.value().map(|v| v.bytes()).unwrap_or_default()),
        version: result.version(),
        ttl: (result.ttl_ms() > 0).then(|| Duration::from_millis(result.ttl_ms())),
    })
}

fn keys_of(
    keys: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<wire::Key<'_>>>>,
) -> Vec<Bytes> {
    keys.map(|keys| {
        keys.iter()
            .map(|key| Bytes::copy_from_slice(key.bytes().map(|b| b.bytes()).unwrap_or_default()))
            .collect()
    })
    .unwrap_or_default()
}

/// Decodes one response frame body into its request id and answer.
pub fn decode(body: &[u8]) -> Result<(u64, Response), ClientError> {
    let frame = decode_response(body).map_err(|error| ClientError::Protocol(error.to_string()))?;
    let missing = || ClientError::Protocol("response union type without a body".into());
    let response = match frame.response_type() {
        wire::Response::Error => {
            let error = frame.response_as_error().ok_or_else(missing)?;
            Response::Error {
                code: error.code(),
                message: error.message().unwrap_or_default().to_owned(),
                owner: error.owner().map(|owner| ShardOwner {
                    slot: owner.slot(),
                    core: owner.core(),
                    node: owner.node(),
                    address: owner.address().unwrap_or_default().to_owned(),
                    range: owner.range(),
                    epoch: owner.epoch(),
                }),
            }
        }
        wire::Response::HelloOk => {
            let hello = frame.response_as_hello_ok().ok_or_else(missing)?;
            let limits = hello.limits();
            Response::HelloOk {
                tenant: hello.tenant().unwrap_or_default().to_owned(),
                cores: hello.cores(),
                node_id: hello.node_id(),
                nodes: hello
                    .nodes()
                    .map(|nodes| {
                        nodes
                            .iter()
                            .filter_map(|node| {
                                Some((node.node_id(), node.client_addr()?.to_owned()))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                max_key_bytes: limits.map_or(u32::MAX, |l| l.max_key_bytes()),
                max_value_bytes: limits.map_or(u32::MAX, |l| l.max_value_bytes()),
            }
        }
        wire::Response::Pong => Response::Pong,
        wire::Response::GetResult => Response::Value(value_of(
            frame.response_as_get_result().ok_or_else(missing)?,
        )),
        wire::Response::SetResult => {
            let result = frame.response_as_set_result().ok_or_else(missing)?;
            Response::Written(WriteResult {
                applied: result.applied(),
                version: result.version(),
            })
        }
        wire::Response::CountResult => Response::Count(
            frame
                .response_as_count_result()
                .ok_or_else(missing)?
                .count(),
        ),
        wire::Response::MGetResult => {
            let values = frame
                .response_as_mget_result()
                .ok_or_else(missing)?
                .values();
            Response::Values(
                values
                    .map(|v| v.iter().map(value_of).collect())
                    .unwrap_or_default(),
            )
        }
        wire::Response::MSetResult => {
            let versions = frame
                .response_as_mset_result()
                .ok_or_else(missing)?
                .versions();
            Response::Versions(versions.map(|v| v.iter().collect()).unwrap_or_default())
        }
        wire::Response::KeysResult => Response::Keys(keys_of(
            frame.response_as_keys_result().ok_or_else(missing)?.keys(),
        )),
        wire::Response::ScanResult => {
            let scan = frame.response_as_scan_result().ok_or_else(missing)?;
            Response::Scanned {
                cursor: scan.cursor(),
                keys: keys_of(scan.keys()),
            }
        }
        wire::Response::IntegerResult => Response::Integer(
            frame
                .response_as_integer_result()
                .ok_or_else(missing)?
                .value(),
        ),
        wire::Response::SnapshotResult => {
            let result = frame.response_as_snapshot_result().ok_or_else(missing)?;
            Response::Snapshotted {
                keys: result.keys(),
                bytes: result.bytes(),
            }
        }
        other => {
            return Err(ClientError::Protocol(format!(
                "unknown response type {}",
                other.0
            )))
        }
    };
    Ok((frame.request_id(), response))
}
