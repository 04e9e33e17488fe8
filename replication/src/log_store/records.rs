//! The records of a core's shared Raft log, byte by byte: what
//! [`super::CoreLog`] appends to the WAL and reads back at recovery.
//!
//! Every record starts with the range it belongs to, so one ordered stream
//! carries every range of the core. Kinds (the WAL record's `kind`; kind 1
//! is the key-value path's `RECORD_KIND_KV`, kind 2 the per-group entry of
//! the format before the shared log, refused at recovery):
//!
//! | kind | record | payload after `range: u64` |
//! |---|---|---|
//! | 3 | [`RECORD_KIND_RANGE_ENTRY`] | one entry (below) |
//! | 4 | [`RECORD_KIND_RANGE_STATE`] | the range's state (below), replacing the previous one |
//! | 5 | [`RECORD_KIND_RANGE_TRUNCATE`] | format 1, flag (1: keep through an index), index: entries after it are void |
//! | 6 | [`RECORD_KIND_RANGE_DROPPED`] | format 1: everything before it of this range is void |
//!
//! # Entry (little-endian)
//!
//! | field | size |
//! |---|---|
//! | format: 1 | 1 |
//! | log id: term, leader node id, index | 8 + 8 + 8 |
//! | payload: 0 blank, 1 command, 2 membership | 1 |
//! | command: [`crate::command`]'s encoding | n |
//! | membership: config count, then per config its voter count and ids | 4 + (4 + 8n)... |
//! | membership: node count, then per node id, address length, address | 4 + (8 + 4 + n)... |
//!
//! # State
//!
//! | field | size |
//! |---|---|
//! | format: 1 | 1 |
//! | flags: 1 vote, 2 vote committed, 4 committed id, 8 purged id | 1 |
//! | vote: term, node id | 8 + 8 |
//! | committed log id: term, node id, index | 24 |
//! | last purged log id: term, node id, index | 24 |
//!
//! Absent fields are zeros. An explicit encoding rather than serde: it is on
//! disk for as long as the record is live, so it must not change when
//! openraft (an alpha) or a serde format changes the shape of its types.
//! Decoding checks every length; an encoded entry is decoded again before it
//! is written (a pair check), so nothing is written that cannot be read.

use std::collections::{BTreeMap, BTreeSet};

use openraft::EntryPayload;

use crate::codec::{put_bytes_u32, put_u32, put_u64, DecodeError, Reader};
use crate::command::{Command, MAX_COMMAND_BYTES};
use crate::{Entry, LogId, Membership, Node, NodeId, Vote};
use tinkerdb_storage::wal_format::{BATCH_HEADER_BYTES, MAX_BATCH_BYTES, RECORD_HEADER_BYTES};

/// A range's id: the unit of data and replication (one Raft group).
pub type RangeId = u64;

/// The record kind of the per-group Raft entry written before the shared
/// log existed (one WAL directory per group); recovery refuses it.
pub const LEGACY_RECORD_KIND_GROUP_ENTRY: u32 = 2;
/// WAL record kind of a range's log entry.
pub const RECORD_KIND_RANGE_ENTRY: u32 = 3;
/// WAL record kind of a range's state (vote, committed id, purge point).
pub const RECORD_KIND_RANGE_STATE: u32 = 4;
/// WAL record kind of a range's truncation (entries after a point are void).
pub const RECORD_KIND_RANGE_TRUNCATE: u32 = 5;
/// WAL record kind of a dropped range (all it wrote before is void).
pub const RECORD_KIND_RANGE_DROPPED: u32 = 6;

/// Largest encoded entry: a command at its limit plus the envelope, or a
/// membership of any sane size.
pub const MAX_ENTRY_BYTES: usize = MAX_COMMAND_BYTES + (64 << 10);

/// The range id in front of every record.
const RANGE_PREFIX_BYTES: usize = 8;

// An entry record must fit one WAL batch with its headers (and the
// record's 8-byte padding), or `Wal::append` would panic.
const _: () = assert!(
    RANGE_PREFIX_BYTES + MAX_ENTRY_BYTES + RECORD_HEADER_BYTES + 8 + BATCH_HEADER_BYTES
        <= MAX_BATCH_BYTES
);

const ENTRY_FORMAT: u8 = 1;
const PAYLOAD_BLANK: u8 = 0;
const PAYLOAD_COMMAND: u8 = 1;
const PAYLOAD_MEMBERSHIP: u8 = 2;

const META_FORMAT: u8 = 1;
const STATE_BYTES: usize = 1 + 1 + 16 + 24 + 24;
const META_HAS_VOTE: u8 = 1;
const META_VOTE_COMMITTED: u8 = 2;
const META_HAS_COMMITTED: u8 = 4;
const META_HAS_PURGED: u8 = 8;

const MARKER_FORMAT: u8 = 1;
const TRUNCATE_KEEPS: u8 = 1;

/// A range's durable state besides its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct RangeState {
    pub(super) vote: Option<Vote>,
    pub(super) committed: Option<LogId>,
    pub(super) purged: Option<LogId>,
}

/// One record of the shared log, decoded.
#[derive(Debug)]
pub(super) enum LogRecord {
    Entry {
        range: RangeId,
        entry: Entry,
    },
    State {
        range: RangeId,
        state: RangeState,
    },
    /// Entries after `keep_through` (all of them for `None`) are void.
    Truncate {
        range: RangeId,
        keep_through: Option<u64>,
    },
    Dropped {
        range: RangeId,
    },
}

/// Appends the payload of an entry record to `out`, or leaves `out` as it
/// was and says why the entry cannot be stored.
pub(super) fn encode_entry_record(
    range: RangeId,
    entry: &Entry,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let start = out.len();
    put_u64(out, range);
    encode_entry(entry, out).inspect_err(|_| out.truncate(start))
}

/// The payload of a state record.
pub(super) fn encode_state_record(range: RangeId, state: &RangeState) -> Vec<u8> {
    let mut out = Vec::with_capacity(RANGE_PREFIX_BYTES + STATE_BYTES);
    put_u64(&mut out, range);
    out.extend_from_slice(&encode_state(state));
    // Pair check: what we write reads back as what we meant.
    assert_eq!(
        decode_state(&out[RANGE_PREFIX_BYTES..]).expect("fresh state decodes"),
        *state
    );
    out
}

/// The payload of a truncation record.
pub(super) fn encode_truncate_record(range: RangeId, keep_through: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(RANGE_PREFIX_BYTES + 10);
    put_u64(&mut out, range);
    out.push(MARKER_FORMAT);
    out.push(if keep_through.is_some() {
        TRUNCATE_KEEPS
    } else {
        0
    });
    put_u64(&mut out, keep_through.unwrap_or(0));
    out
}

/// The payload of a dropped-range record.
pub(super) fn encode_dropped_record(range: RangeId) -> Vec<u8> {
    let mut out = Vec::with_capacity(RANGE_PREFIX_BYTES + 1);
    put_u64(&mut out, range);
    out.push(MARKER_FORMAT);
    out
}

/// Decodes a record of the shared log from its WAL kind and payload.
pub(super) fn decode_record(kind: u32, payload: &[u8]) -> Result<LogRecord, DecodeError> {
    let mut reader = Reader::new(payload, "shared Raft log record");
    let range = reader.u64()?;
    let record = match kind {
        RECORD_KIND_RANGE_ENTRY => LogRecord::Entry {
            range,
            entry: decode_entry_from(&mut reader)?,
        },
        RECORD_KIND_RANGE_STATE => LogRecord::State {
            range,
            state: decode_state_from(&mut reader)?,
        },
        RECORD_KIND_RANGE_TRUNCATE => {
            marker_format(&mut reader)?;
            let flags = reader.u8()?;
            if flags & !TRUNCATE_KEEPS != 0 {
                return Err(reader.error(format!("unknown truncation flags {flags:#x}")));
            }
            let index = reader.u64()?;
            LogRecord::Truncate {
                range,
                keep_through: (flags & TRUNCATE_KEEPS != 0).then_some(index),
            }
        }
        RECORD_KIND_RANGE_DROPPED => {
            marker_format(&mut reader)?;
            LogRecord::Dropped { range }
        }
        other => {
            return Err(reader.error(format!(
                "record kind {other} is not a shared Raft log record"
            )))
        }
    };
    reader.finish()?;
    Ok(record)
}

fn marker_format(reader: &mut Reader<'_>) -> Result<(), DecodeError> {
    match reader.u8()? {
        MARKER_FORMAT => Ok(()),
        other => Err(reader.error(format!("unknown marker format {other}"))),
    }
}

fn put_log_id(out: &mut Vec<u8>, log_id: Option<&LogId>) {
    let (term, node_id, index) = log_id.map_or((0, 0, 0), |id| {
        (id.leader_id.term, id.leader_id.node_id, id.index)
    });
    put_u64(out, term);
    put_u64(out, node_id);
    put_u64(out, index);
}

fn read_log_id(reader: &mut Reader<'_>) -> Result<LogId, DecodeError> {
    let term = reader.u64()?;
    let node_id = reader.u64()?;
    let index = reader.u64()?;
    Ok(LogId {
        leader_id: openraft::impls::leader_id_adv::LeaderId { term, node_id },
        index,
    })
}

/// Exact bytes of [`encode_entry`]'s output.
pub(super) fn encoded_entry_len(entry: &Entry) -> usize {
    let envelope = 1 + 24 + 1;
    envelope
        + match &entry.payload {
            EntryPayload::Blank => 0,
            EntryPayload::Normal(command) => command.encoded_len(),
            EntryPayload::Membership(membership) => {
                let configs: usize = membership
                    .get_joint_config()
                    .iter()
                    .map(|config| 4 + 8 * config.len())
                    .sum();
                let nodes: usize = membership
                    .nodes()
                    .map(|(_, node)| 8 + 4 + node.addr.len())
                    .sum();
                4 + configs + 4 + nodes
            }
        }
}

/// Encodes one entry as a record body (layout in the module doc).
fn encode_entry(entry: &Entry, out: &mut Vec<u8>) -> Result<(), String> {
    let length = encoded_entry_len(entry);
    if length > MAX_ENTRY_BYTES {
        return Err(format!(
            "log entry {} of {length} bytes over the limit of {MAX_ENTRY_BYTES}",
            entry.log_id
        ));
    }
    let start = out.len();
    out.push(ENTRY_FORMAT);
    put_log_id(out, Some(&entry.log_id));
    match &entry.payload {
        EntryPayload::Blank => out.push(PAYLOAD_BLANK),
        EntryPayload::Normal(command) => {
            out.push(PAYLOAD_COMMAND);
            command.encode(out).map_err(|error| error.to_string())?;
        }
        EntryPayload::Membership(membership) => {
            out.push(PAYLOAD_MEMBERSHIP);
            let configs = membership.get_joint_config();
            put_u32(out, configs.len() as u32);
            for config in configs {
                put_u32(out, config.len() as u32);
                for node_id in config {
                    put_u64(out, *node_id);
                }
            }
            let nodes: Vec<(&NodeId, &Node)> = membership.nodes().collect();
            put_u32(out, nodes.len() as u32);
            for (node_id, node) in nodes {
                put_u64(out, *node_id);
                put_bytes_u32(out, node.addr.as_bytes());
            }
        }
    }
    assert_eq!(out.len() - start, length, "encoded_entry_len is exact");
    // Pair check: never write what `open` could not read back (a membership
    // openraft accepted from a peer but `Membership::new` refuses would
    // leave a log the node cannot restart from).
    if let Err(error) = decode_entry(&out[start..]) {
        out.truncate(start);
        return Err(format!(
            "log entry {} would not read back: {error}",
            entry.log_id
        ));
    }
    Ok(())
}

/// Whether `entry` can be stored and read back (the checks `append`
/// makes), for refusing an entry from a peer with a typed error before
/// openraft takes it: a storage error inside openraft would stop the group.
/// A membership is encoded and decoded (its decoder has rules of its own);
/// a command must pass its limits (then it always encodes and decodes), and
/// every entry must fit; `append` checks every entry again.
pub fn check_storable(entry: &Entry) -> Result<(), String> {
    match &entry.payload {
        EntryPayload::Membership(_) => {
            encode_entry(entry, &mut Vec::with_capacity(encoded_entry_len(entry)))
        }
        EntryPayload::Normal(command) if command.validate().is_err() => Err(format!(
            "log entry {}: {}",
            entry.log_id,
            command.validate().expect_err("checked")
        )),
        _ if encoded_entry_len(entry) > MAX_ENTRY_BYTES => Err(format!(
            "log entry {} over the limit of {MAX_ENTRY_BYTES} bytes",
            entry.log_id
        )),
        _ => Ok(()),
    }
}

/// The entry decoder (the body of a [`RECORD_KIND_RANGE_ENTRY`] record),
/// public only for the fuzz targets (`fuzz/`) and tests.
pub fn decode_entry_for_fuzzing(bytes: &[u8]) -> Result<Entry, DecodeError> {
    decode_entry(bytes)
}

/// The entry record encoder, public only for the fuzz targets and tests.
pub fn encode_entry_for_fuzzing(entry: &Entry, out: &mut Vec<u8>) -> Result<(), String> {
    encode_entry(entry, out)
}

/// A range's state (the body of a [`RECORD_KIND_RANGE_STATE`] record)
/// decoded and encoded again, public only for the fuzz targets and tests
/// (the state type itself is private).
pub fn reencode_meta_for_fuzzing(bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
    decode_state(bytes).map(|state| encode_state(&state))
}

/// Any record of the shared log decoded (kind and payload as the WAL holds
/// them), public only for the fuzz targets: an error, never a panic.
pub fn decode_record_for_fuzzing(kind: u32, payload: &[u8]) -> Result<(), DecodeError> {
    decode_record(kind, payload).map(|_| ())
}

/// Decodes a record body into an entry.
fn decode_entry(bytes: &[u8]) -> Result<Entry, DecodeError> {
    let mut reader = Reader::new(bytes, "Raft log entry");
    let entry = decode_entry_from(&mut reader)?;
    reader.finish()?;
    Ok(entry)
}

fn decode_entry_from(reader: &mut Reader<'_>) -> Result<Entry, DecodeError> {
    let format = reader.u8()?;
    if format != ENTRY_FORMAT {
        return Err(reader.error(format!("unknown entry format {format}")));
    }
    let log_id = read_log_id(reader)?;
    let payload = match reader.u8()? {
        PAYLOAD_BLANK => EntryPayload::Blank,
        PAYLOAD_COMMAND => EntryPayload::Normal(Command::decode_from(reader)?),
        PAYLOAD_MEMBERSHIP => {
            let config_count = reader.count(4)?;
            let mut configs = Vec::with_capacity(config_count);
            for _ in 0..config_count {
                let voter_count = reader.count(8)?;
                let mut voters = BTreeSet::new();
                for _ in 0..voter_count {
                    voters.insert(reader.u64()?);
                }
                configs.push(voters);
            }
            let node_count = reader.count(12)?;
            let mut nodes = BTreeMap::new();
            for _ in 0..node_count {
                let node_id = reader.u64()?;
                let addr = reader.bytes_u32()?;
                let addr = reader.utf8(addr)?;
                nodes.insert(node_id, Node { addr });
            }
            let membership = Membership::new(configs, nodes)
                .map_err(|error| reader.error(format!("invalid membership: {error}")))?;
            EntryPayload::Membership(membership)
        }
        other => return Err(reader.error(format!("unknown payload kind {other}"))),
    };
    Ok(Entry { log_id, payload })
}

fn encode_state(meta: &RangeState) -> Vec<u8> {
    let mut out = Vec::with_capacity(STATE_BYTES);
    out.push(META_FORMAT);
    let mut flags = 0;
    if let Some(vote) = &meta.vote {
        flags |= META_HAS_VOTE;
        if vote.committed {
            flags |= META_VOTE_COMMITTED;
        }
    }
    if meta.committed.is_some() {
        flags |= META_HAS_COMMITTED;
    }
    if meta.purged.is_some() {
        flags |= META_HAS_PURGED;
    }
    out.push(flags);
    let (term, node_id) = meta
        .vote
        .map_or((0, 0), |vote| (vote.leader_id.term, vote.leader_id.node_id));
    put_u64(&mut out, term);
    put_u64(&mut out, node_id);
    put_log_id(&mut out, meta.committed.as_ref());
    put_log_id(&mut out, meta.purged.as_ref());
    assert_eq!(out.len(), STATE_BYTES);
    out
}

fn decode_state(bytes: &[u8]) -> Result<RangeState, DecodeError> {
    let mut reader = Reader::new(bytes, "Raft range state");
    let state = decode_state_from(&mut reader)?;
    reader.finish()?;
    Ok(state)
}

fn decode_state_from(reader: &mut Reader<'_>) -> Result<RangeState, DecodeError> {
    let format = reader.u8()?;
    if format != META_FORMAT {
        return Err(reader.error(format!("unknown metadata format {format}")));
    }
    let flags = reader.u8()?;
    if flags & !(META_HAS_VOTE | META_VOTE_COMMITTED | META_HAS_COMMITTED | META_HAS_PURGED) != 0 {
        return Err(reader.error(format!("unknown metadata flags {flags:#x}")));
    }
    let term = reader.u64()?;
    let node_id = reader.u64()?;
    let committed = read_log_id(reader)?;
    let purged = read_log_id(reader)?;
    Ok(RangeState {
        vote: (flags & META_HAS_VOTE != 0).then_some(openraft::impls::Vote {
            leader_id: openraft::impls::leader_id_adv::LeaderId { term, node_id },
            committed: flags & META_VOTE_COMMITTED != 0,
        }),
        committed: (flags & META_HAS_COMMITTED != 0).then_some(committed),
        purged: (flags & META_HAS_PURGED != 0).then_some(purged),
    })
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;

    use super::*;

    fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
        LogId {
            leader_id: openraft::impls::leader_id_adv::LeaderId { term, node_id },
            index,
        }
    }

    #[test]
    fn entries_round_trip_and_damage_is_an_error() {
        let membership = Membership::new(
            vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([3, 4])],
            BTreeMap::from([
                (
                    1,
                    Node {
                        addr: "10.0.0.1:7000".into(),
                    },
                ),
                (
                    2,
                    Node {
                        addr: "10.0.0.2:7000".into(),
                    },
                ),
                (
                    3,
                    Node {
                        addr: "10.0.0.3:7000".into(),
                    },
                ),
                (
                    4,
                    Node {
                        addr: "h4:1".into(),
                    },
                ),
                (
                    9,
                    Node {
                        addr: "learner:1".into(),
                    },
                ),
            ]),
        )
        .unwrap();
        let entries = [
            Entry::new_blank(log_id(1, 2, 0)),
            Entry::new_normal(
                log_id(3, 1, 7),
                Command::Put {
                    tenant: "t".into(),
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    expires_at_unix_ms: Some(99),
                },
            ),
            Entry::new_membership(log_id(4, 1, 8), membership),
            Entry::new_membership(log_id(4, 1, 9), Membership::default()),
        ];
        for entry in entries {
            let mut bytes = Vec::new();
            encode_entry(&entry, &mut bytes).unwrap();
            assert_eq!(decode_entry(&bytes).unwrap(), entry);
            for cut in 0..bytes.len() {
                assert!(decode_entry(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    /// Found by fuzzing: openraft deserializes (from a peer's
    /// AppendEntries) a joint membership whose second config is empty,
    /// which `Membership::new` refuses when the log is read back. It must
    /// be refused before it is stored.
    /// A peer's entry whose command is over the size limit (serde accepts
    /// it) is refused before openraft takes it: `append` would fail, and a
    /// storage error stops the group.
    #[test]
    fn an_oversized_command_from_a_peer_is_refused_before_it_is_stored() {
        let entry = |bytes: usize| {
            Entry::new_normal(
                log_id(2, 1, 5),
                Command::Put {
                    tenant: "t".into(),
                    key: b"k".to_vec(),
                    value: vec![0; bytes],
                    expires_at_unix_ms: None,
                },
            )
        };
        assert!(check_storable(&entry(1 << 20)).is_ok());
        let refusal = check_storable(&entry(MAX_COMMAND_BYTES)).unwrap_err();
        assert!(refusal.contains("over the limit"), "{refusal}");
    }

    #[test]
    fn a_membership_that_would_not_read_back_is_refused_before_it_is_stored() {
        let nodes = BTreeMap::from([(1, Node::new("a:1")), (2, Node::new("b:1"))]);
        let joint = Membership::new(
            vec![BTreeSet::from([1]), BTreeSet::from([1, 2])],
            nodes.clone(),
        )
        .unwrap();
        let entry = Entry::new_membership(log_id(2, 1, 5), joint);
        // The peer's bytes, as openraft's serde would decode them.
        let mut bytes = postcard::to_allocvec(&entry).unwrap();
        let good: Entry = postcard::from_bytes(&bytes).unwrap();
        assert!(check_storable(&good).is_ok());
        // Rewrite the second config ({1, 2}: count 2, ids 1 and 2) as empty.
        let pattern = [2u8, 1, 2];
        let at = bytes
            .windows(pattern.len())
            .position(|window| window == pattern)
            .expect("the second config in postcard form");
        bytes.splice(at..at + pattern.len(), [0u8]);
        let hostile: Entry = postcard::from_bytes(&bytes).expect("serde accepts it");
        let EntryPayload::Membership(membership) = &hostile.payload else {
            panic!("still a membership entry");
        };
        assert!(membership.get_joint_config()[1].is_empty());
        let refusal = check_storable(&hostile).unwrap_err();
        assert!(refusal.contains("would not read back"), "{refusal}");
        let mut out = Vec::new();
        assert!(encode_entry(&hostile, &mut out).is_err());
        assert!(out.is_empty(), "nothing is left to write");
    }

    #[test]
    fn metadata_round_trips() {
        let vote = openraft::impls::Vote {
            leader_id: openraft::impls::leader_id_adv::LeaderId {
                term: 5,
                node_id: 2,
            },
            committed: true,
        };
        for meta in [
            RangeState::default(),
            RangeState {
                vote: Some(vote),
                committed: Some(log_id(5, 2, 40)),
                purged: Some(log_id(4, 1, 30)),
            },
        ] {
            assert_eq!(decode_state(&encode_state(&meta)).unwrap(), meta);
        }
        let mut bytes = encode_state(&RangeState::default());
        bytes[1] = 0x80;
        assert!(decode_state(&bytes).is_err());
    }

    #[test]
    fn records_round_trip_and_damage_is_an_error() {
        let entry = Entry::new_blank(log_id(2, 1, 9));
        let mut bytes = Vec::new();
        encode_entry_record(7, &entry, &mut bytes).unwrap();
        let state = RangeState {
            purged: Some(log_id(1, 1, 3)),
            ..RangeState::default()
        };
        let cases = [
            (RECORD_KIND_RANGE_ENTRY, bytes),
            (RECORD_KIND_RANGE_STATE, encode_state_record(7, &state)),
            (
                RECORD_KIND_RANGE_TRUNCATE,
                encode_truncate_record(7, Some(8)),
            ),
            (RECORD_KIND_RANGE_TRUNCATE, encode_truncate_record(7, None)),
            (RECORD_KIND_RANGE_DROPPED, encode_dropped_record(7)),
        ];
        for (kind, bytes) in cases {
            let record = decode_record(kind, &bytes).unwrap();
            match record {
                LogRecord::Entry { range, entry: back } => {
                    assert_eq!((range, back), (7, entry.clone()))
                }
                LogRecord::State { range, state: back } => assert_eq!((range, back), (7, state)),
                LogRecord::Truncate {
                    range,
                    keep_through,
                } => {
                    assert_eq!(range, 7);
                    assert!(matches!(keep_through, Some(8) | None));
                }
                LogRecord::Dropped { range } => assert_eq!(range, 7),
            }
            for cut in 0..bytes.len() {
                assert!(
                    decode_record(kind, &bytes[..cut]).is_err(),
                    "kind {kind} cut at {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(
                decode_record(kind, &longer).is_err(),
                "kind {kind} with a byte more"
            );
        }
        assert!(decode_record(LEGACY_RECORD_KIND_GROUP_ENTRY, &[0; 40]).is_err());
    }
}
