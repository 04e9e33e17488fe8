//! Requests that may touch several shards (DEL, EXISTS, MGET, MSET, SCAN,
//! KEYS, DBSIZE, snapshots), fanned out to every owner at once and
//! gathered; and the replies every front end shares.

use std::sync::Arc;

use bytes::Bytes;
use tinkerdb_schemas::wire::ErrorCode;
use tinkerdb_storage::{
    hash_slot, Expiry, SetOptions, StoreError, TenantId, WriteCondition, SLOT_COUNT,
};

use crate::coord::context::{now_ms, CoreContext};
use crate::coord::request::{Command, Reply};
use crate::coord::session::Session;
use crate::error::ProtocolError;
use crate::shard::{
    KeyFilter, ShardReply, ShardRequest, SlotKey, Update, UpdateError, UpdateOutcome,
};
use crate::slots::RangeId;

pub(crate) fn set_options(condition: WriteCondition, ttl_ms: u64) -> SetOptions {
    SetOptions {
        condition,
        expiry: match ttl_ms {
            0 => Expiry::Never,
            ttl_ms => Expiry::AtMs(now_ms().saturating_add(ttl_ms)),
        },
    }
}

/// The error of a write refused because the core's storage failed.
pub(crate) fn storage_failed(reason: &str) -> ProtocolError {
    ProtocolError::new(ErrorCode::StorageFailed, reason.to_owned())
}

/// Turns a shard's answer to a one-shard request ([`one_shard_request`])
/// into the client's reply.
pub(crate) fn single_key_reply(reply: ShardReply, session: &Session) -> Reply {
    let error = |code: ErrorCode, message: &str| Reply::Error(ProtocolError::new(code, message));
    match reply {
        ShardReply::Value(value) => Reply::Value(value),
        ShardReply::Written(Ok(outcome)) => Reply::Written(outcome),
        ShardReply::Written(Err(error)) => Reply::Error(quota_error(&error, session)),
        ShardReply::Count(count) => Reply::Count(count),
        ShardReply::Updated(Ok(UpdateOutcome::Integer(value))) => Reply::Integer(value),
        ShardReply::Updated(Ok(UpdateOutcome::Existed(done))) => Reply::Count(u64::from(done)),
        ShardReply::Updated(Err(UpdateError::Quota(error))) => {
            Reply::Error(quota_error(&error, session))
        }
        ShardReply::Updated(Err(UpdateError::NotAnInteger)) => error(
            ErrorCode::NotAnInteger,
            "the value is not a decimal 64-bit integer",
        ),
        ShardReply::Updated(Err(UpdateError::Overflow)) => {
            error(ErrorCode::NotAnInteger, "the increment would overflow")
        }
        ShardReply::Updated(Err(UpdateError::NoSuchKey)) => {
            error(ErrorCode::NoSuchKey, "the key to rename does not exist")
        }
        ShardReply::Updated(Err(UpdateError::SameObject)) => error(
            ErrorCode::InvalidArgument,
            "source and destination are the same key",
        ),
        ShardReply::Refused(reason) => Reply::Error(storage_failed(&reason)),
        ShardReply::Error(error) => Reply::Error(error),
        other => unreachable!("a one-shard request answered with {other:?}"),
    }
}

/// The keys of an atomic multi-key request with their slots, and the slot
/// that names their shard; `CrossShard` when they span shards.
fn keys_of_one_shard(
    context: &CoreContext,
    session: &Session,
    keys: Vec<Bytes>,
) -> Result<(u16, Vec<SlotKey>), ProtocolError> {
    let keys: Vec<SlotKey> = keys
        .into_iter()
        .map(|key| SlotKey {
            slot: hash_slot(&session.tenant_name, &key),
            key,
        })
        .collect();
    let first = keys.first().expect("at least one key").slot;
    let owner = context.slot_map.owner(first);
    if keys
        .iter()
        .any(|key| context.slot_map.owner(key.slot) != owner)
    {
        return Err(ProtocolError::new(
            ErrorCode::CrossShard,
            "the keys live on different shards (atomic multi-key requests across shards need transactions, not built yet)",
        ));
    }
    Ok((first, keys))
}

/// The one-shard request `command` stands for (single-key commands, and
/// atomic multi-key ones whose keys share a shard), with the slot that
/// names its shard: what every front end batches per destination.
/// `Err(command)` for a command that fans out ([`execute_multi`]).
#[allow(clippy::result_large_err)]
pub fn one_shard_request(
    context: &CoreContext,
    session: &Session,
    command: Command,
) -> Result<Result<(u16, ShardRequest), ProtocolError>, Command> {
    let tenant = session.tenant;
    let single = |key: Bytes| {
        let slot = hash_slot(&session.tenant_name, &key);
        (slot, SlotKey { slot, key })
    };
    let request = match command {
        Command::Get { key } => {
            let (slot, key) = single(key);
            (slot, ShardRequest::Get { tenant, key })
        }
        Command::Set {
            key,
            value,
            ttl_ms,
            condition,
        } => {
            let (slot, key) = single(key);
            let options = set_options(condition, ttl_ms);
            (
                slot,
                ShardRequest::Set {
                    tenant,
                    key,
                    value,
                    options,
                },
            )
        }
        Command::IncrBy { key, by } => {
            let (slot, key) = single(key);
            let update = Update::IncrBy(by);
            (
                slot,
                ShardRequest::Update {
                    tenant,
                    key,
                    update,
                },
            )
        }
        Command::Expire {
            key,
            at_ms,
            condition,
        } => {
            let (slot, key) = single(key);
            let update = Update::Expire { at_ms, condition };
            (
                slot,
                ShardRequest::Update {
                    tenant,
                    key,
                    update,
                },
            )
        }
        Command::Rename { from, to, how } => {
            let (slot, mut keys) = match keys_of_one_shard(context, session, vec![from, to]) {
                Ok(found) => found,
                Err(error) => return Ok(Err(error)),
            };
            let to = keys.pop().expect("two keys");
            let from = keys.pop().expect("two keys");
            let request = ShardRequest::Move {
                tenant,
                from,
                to,
                how,
            };
            (slot, request)
        }
        Command::MSetIfAbsent { entries } => {
            let (keys, values): (Vec<Bytes>, Vec<Bytes>) = entries.into_iter().unzip();
            let (slot, keys) = match keys_of_one_shard(context, session, keys) {
                Ok(found) => found,
                Err(error) => return Ok(Err(error)),
            };
            let entries = keys.into_iter().zip(values).collect();
            (slot, ShardRequest::SetManyIfAbsent { tenant, entries })
        }
        other => return Err(other),
    };
    Ok(Ok(request))
}

pub(crate) fn quota_error(error: &StoreError, session: &Session) -> ProtocolError {
    let name = &*session.tenant_name;
    let message = match error {
        StoreError::KeyQuotaExceeded { max_keys, .. } => {
            format!("tenant {name:?} reached its key quota (this range's share: {max_keys} keys)")
        }
        StoreError::ByteQuotaExceeded { max_bytes, .. } => {
            format!(
                "tenant {name:?} reached its byte quota (this range's share: {max_bytes} bytes)"
            )
        }
    };
    ProtocolError::new(ErrorCode::QuotaExceeded, message)
}

/// The error a shard answered instead of the reply its request asks for.
/// Only an error can stand there (a refusal, a routing or Raft error): any
/// other reply is a bug, asserted.
pub(crate) fn unexpected(reply: &ShardReply) -> ProtocolError {
    match reply {
        ShardReply::Error(error) => error.clone(),
        ShardReply::Refused(reason) => storage_failed(reason),
        other => unreachable!("a shard answered {other:?} to a request that cannot get it"),
    }
}

/// Groups keys by owning range, remembering each key's position.
fn group_by_range(
    context: &CoreContext,
    session: &Session,
    keys: Vec<Bytes>,
) -> Vec<(RangeId, Vec<usize>, Vec<SlotKey>)> {
    let mut groups: Vec<(Vec<usize>, Vec<SlotKey>)> =
        vec![(Vec::new(), Vec::new()); context.slot_map.ranges()];
    for (index, key) in keys.into_iter().enumerate() {
        let slot = hash_slot(&session.tenant_name, &key);
        let (indexes, slot_keys) = &mut groups[context.slot_map.owner(slot)];
        indexes.push(index);
        slot_keys.push(SlotKey { slot, key });
    }
    groups
        .into_iter()
        .enumerate()
        .filter(|(_, (indexes, _))| !indexes.is_empty())
        .map(|(range, (indexes, keys))| (range, indexes, keys))
        .collect()
}

/// Sends one request per range, then waits for all (so cores work at once).
async fn fan_out(
    context: &CoreContext,
    session: &Session,
    requests: Vec<(RangeId, ShardRequest)>,
) -> Result<Vec<ShardReply>, ProtocolError> {
    // Every part is allowed before any is sent: a refusal never leaves a
    // multi-key write half done.
    for (_, request) in &requests {
        session.may_run(request)?;
    }
    let mut dispatched = Vec::with_capacity(requests.len());
    for (range, request) in requests {
        dispatched.push(context.dispatch(range, session.reading(request)).await?);
    }
    let mut replies = Vec::with_capacity(dispatched.len());
    let mut refused = None;
    for pending in dispatched {
        match pending.reply().await? {
            ShardReply::Refused(reason) => refused = Some(storage_failed(&reason)),
            ShardReply::Error(error) => refused = Some(error),
            reply => replies.push(reply),
        }
    }
    match refused {
        Some(error) => Err(error),
        None => Ok(replies),
    }
}

/// Empties keyspaces `keyspaces` (tenant databases) on every range, in
/// range order; the keys removed. What FLUSHDB, FLUSHALL and deleting a
/// tenant do (the caller checks the rights).
pub(crate) async fn flush_keyspaces(
    context: &CoreContext,
    keyspaces: &[TenantId],
) -> Result<u64, ProtocolError> {
    let mut removed = 0;
    let mut failed = None;
    for range in 0..context.slot_map.ranges() {
        let flushes = keyspaces
            .iter()
            .map(|&tenant| ShardRequest::Flush { tenant })
            .collect();
        match context.call(range, ShardRequest::Batch(flushes)).await {
            Ok(ShardReply::Batch(replies)) => {
                for reply in replies {
                    match reply {
                        ShardReply::Count(count) => removed += count,
                        ShardReply::Error(error) => failed = Some(error),
                        ShardReply::Refused(reason) => failed = Some(storage_failed(&reason)),
                        other => failed = Some(unexpected(&other)),
                    }
                }
            }
            Ok(other) => failed = Some(unexpected(&other)),
            Err(error) => failed = Some(error),
        }
    }
    match failed {
        Some(error) => Err(error),
        None => Ok(removed),
    }
}

/// Requests that may touch several cores: run to completion.
pub(crate) async fn execute_multi(
    context: &CoreContext,
    session: &Session,
    command: Command,
) -> Result<Reply, ProtocolError> {
    let tenant = session.tenant;
    // Access: `fan_out` and the one-shard call below check each shard
    // request with `Session::may_run` before sending any.
    match command {
        Command::Delete { keys } => {
            let requests = group_by_range(context, session, keys)
                .into_iter()
                .map(|(range, _, keys)| (range, ShardRequest::Delete { tenant, keys }))
                .collect();
            sum_counts(fan_out(context, session, requests).await?)
        }
        Command::Exists { keys } => {
            let requests = group_by_range(context, session, keys)
                .into_iter()
                .map(|(range, _, keys)| (range, ShardRequest::Exists { tenant, keys }))
                .collect();
            sum_counts(fan_out(context, session, requests).await?)
        }
        Command::Count => {
            let requests = (0..context.slot_map.ranges())
                .map(|range| (range, ShardRequest::Usage { tenant }))
                .collect();
            let mut total = 0;
            for reply in fan_out(context, session, requests).await? {
                match reply {
                    ShardReply::Usage(usage) => total += usage.keys,
                    other => return Err(unexpected(&other)),
                }
            }
            Ok(Reply::Count(total))
        }
        Command::MGet { keys } => {
            let key_count = keys.len();
            let groups = group_by_range(context, session, keys);
            let (positions, requests): (Vec<_>, Vec<_>) = groups
                .into_iter()
                .map(|(range, indexes, keys)| {
                    let max_bytes = context.limits.max_response_bytes;
                    let request = ShardRequest::GetMany {
                        tenant,
                        keys,
                        max_bytes,
                    };
                    (indexes, (range, request))
                })
                .unzip();
            let mut values = vec![None; key_count];
            let mut bytes = 0;
            for (indexes, reply) in positions
                .into_iter()
                .zip(fan_out(context, session, requests).await?)
            {
                let found = match reply {
                    ShardReply::Values(found) => found,
                    ShardReply::TooLarge(partial) => {
                        bytes += partial;
                        continue;
                    }
                    other => return Err(unexpected(&other)),
                };
                bytes += found.iter().flatten().map(|v| v.value.len()).sum::<usize>();
                for (index, value) in indexes.into_iter().zip(found) {
                    values[index] = value;
                }
            }
            let limit = context.limits.max_response_bytes;
            if bytes > limit {
                return Err(ProtocolError::new(
                    ErrorCode::ResultTooLarge,
                    format!("the values exceed max_response_bytes ({limit}): ask for fewer keys"),
                ));
            }
            Ok(Reply::Values(values))
        }
        Command::MSet { entries } => {
            let key_count = entries.len();
            let (keys, mut values): (Vec<Bytes>, Vec<Bytes>) = entries.into_iter().unzip();
            let groups = group_by_range(context, session, keys);
            let (positions, requests): (Vec<_>, Vec<_>) = groups
                .into_iter()
                .map(|(range, indexes, keys)| {
                    let entries = indexes
                        .iter()
                        .zip(keys)
                        .map(|(&index, key)| (key, std::mem::take(&mut values[index])))
                        .collect();
                    (indexes, (range, ShardRequest::SetMany { tenant, entries }))
                })
                .unzip();
            let mut versions = vec![0; key_count];
            let mut written = 0;
            let mut refused = None;
            for (indexes, reply) in positions
                .into_iter()
                .zip(fan_out(context, session, requests).await?)
            {
                let ShardReply::WrittenMany(done, error) = reply else {
                    return Err(unexpected(&reply));
                };
                written += done.len();
                for (index, version) in indexes.into_iter().zip(done) {
                    versions[index] = version;
                }
                refused = refused.or(error);
            }
            match refused {
                None => Ok(Reply::Versions(versions)),
                Some(error) => {
                    let mut error = quota_error(&error, session);
                    error.message = format!(
                        "{}; {written} of {key_count} keys were written",
                        error.message
                    );
                    Err(error)
                }
            }
        }
        Command::Scan {
            cursor,
            prefix,
            pattern,
            count,
        } => {
            let filter = Arc::new(KeyFilter { prefix, pattern });
            let (keys, next) = scan(context, session, cursor, filter, count).await?;
            Ok(Reply::Scanned {
                cursor: if next as usize >= SLOT_COUNT {
                    0
                } else {
                    u64::from(next)
                },
                keys,
            })
        }
        Command::Keys { pattern } => {
            let filter = Arc::new(KeyFilter {
                prefix: Bytes::new(),
                pattern,
            });
            let limit = context.limits.max_keys_result;
            let mut keys = Vec::new();
            let mut key_bytes = 0;
            let mut cursor = 0;
            while (cursor as usize) < SLOT_COUNT {
                let (found, next) = scan(
                    context,
                    session,
                    cursor,
                    filter.clone(),
                    limit + 1 - keys.len(),
                )
                .await?;
                key_bytes += found.iter().map(Bytes::len).sum::<usize>();
                keys.extend(found);
                if key_bytes > context.limits.max_response_bytes {
                    return Err(ProtocolError::new(
                        ErrorCode::ResultTooLarge,
                        format!(
                            "the keys exceed max_response_bytes ({}): use SCAN",
                            context.limits.max_response_bytes
                        ),
                    ));
                }
                if keys.len() > limit {
                    return Err(ProtocolError::new(
                        ErrorCode::ResultTooLarge,
                        format!("more than max_keys_result ({limit}) keys match: use SCAN"),
                    ));
                }
                cursor = next;
                // Between steps, let the core serve others: KEYS never stalls it.
                glommio::yield_if_needed().await;
            }
            Ok(Reply::Keys(keys))
        }
        Command::Snapshot => {
            let requests = (0..context.slot_map.ranges())
                .map(|range| (range, ShardRequest::Snapshot))
                .collect();
            let (mut keys, mut bytes) = (0, 0);
            for reply in fan_out(context, session, requests).await? {
                match reply {
                    ShardReply::Snapshotted(Ok((entries, size))) => {
                        keys += entries;
                        bytes += size;
                    }
                    ShardReply::Snapshotted(Err(reason)) => {
                        return Err(ProtocolError::new(
                            ErrorCode::StorageFailed,
                            format!("snapshot failed: {reason}"),
                        ))
                    }
                    other => return Err(unexpected(&other)),
                }
            }
            Ok(Reply::Snapshotted { keys, bytes })
        }
        other @ (Command::Hello { .. } | Command::Ping) => {
            unreachable!("the front end answers session commands itself: {other:?}")
        }
        // One-shard commands, on their own (a front end batches them
        // instead when it can).
        command => match one_shard_request(context, session, command) {
            Ok(Ok((slot, request))) => {
                session.may_run(&request)?;
                let owner = context.slot_map.owner(slot);
                let reply = context.call(owner, session.reading(request)).await?;
                Ok(single_key_reply(reply, session))
            }
            Ok(Err(error)) => Err(error),
            Err(command) => unreachable!("every other command is matched above: {command:?}"),
        },
    }
}

/// Scans from slot `cursor` until `count` keys are found or every range
/// that owns the following slots has taken one bounded step.
async fn scan(
    context: &CoreContext,
    session: &Session,
    mut cursor: u32,
    filter: Arc<KeyFilter>,
    count: usize,
) -> Result<(Vec<Bytes>, u32), ProtocolError> {
    let mut keys = Vec::new();
    let mut steps = 0;
    while (cursor as usize) < SLOT_COUNT && keys.len() < count && steps < context.slot_map.ranges()
    {
        let owner = context.slot_map.owner(cursor as u16);
        let request = ShardRequest::Scan {
            tenant: session.tenant,
            start_slot: cursor,
            filter: filter.clone(),
            max_keys: count - keys.len(),
        };
        match context.call(owner, session.reading(request)).await? {
            ShardReply::Scanned {
                keys: found,
                next_slot,
            } => {
                assert!(next_slot > cursor, "a scan step always advances");
                keys.extend(found);
                cursor = next_slot;
            }
            other => return Err(unexpected(&other)),
        }
        steps += 1;
    }
    Ok((keys, cursor))
}

fn sum_counts(replies: Vec<ShardReply>) -> Result<Reply, ProtocolError> {
    let mut total = 0;
    for reply in replies {
        match reply {
            ShardReply::Count(count) => total += count,
            other => return Err(unexpected(&other)),
        }
    }
    Ok(Reply::Count(total))
}
