//! A replicated command (`replication/src/command.rs`), the bytes a log
//! entry or a forwarded write carries. Decode, then: it validates, it
//! encodes to exactly `encoded_len` bytes, it decodes back equal, the
//! encoding is the input itself (except the ignored version field of an
//! IfAbsent/IfPresent condition, written as 0), and its serde form (inside
//! openraft's messages) round-trips too. An `Ops` command's payload goes
//! through the node's operation decoder (`core/src/write_op.rs`): what
//! decodes re-encodes to the same operations and turns into shard requests
//! without a panic. A `Meta` command goes through the cluster metadata's
//! state machine (`core/src/cluster/meta.rs`): applied or refused, never a
//! panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tinkerdb_core::shard::write_op::{decode_ops, encode_ops};
use tinkerdb_replication::network::{decode, encode};
use tinkerdb_replication::state_machine::Applier;
use tinkerdb_replication::{Command, PutCondition};

fuzz_target!(|data: &[u8]| {
    let Ok(command) = Command::decode(data) else {
        return;
    };
    command.validate().expect("a decoded command is valid");
    let mut bytes = Vec::new();
    command.encode(&mut bytes).expect("valid commands encode");
    assert_eq!(bytes.len(), command.encoded_len());
    let again = Command::decode(&bytes).expect("a re-encoded command decodes");
    assert_eq!(again, command, "a command reads back different");
    let version_ignored = matches!(
        command,
        Command::PutIf {
            condition: PutCondition::IfAbsent | PutCondition::IfPresent,
            ..
        }
    );
    if !version_ignored {
        assert_eq!(bytes, data, "the encoding is not canonical");
    }
    let wire = encode(&command);
    let back: Command = decode(&wire).expect("the serde form decodes");
    assert_eq!(back, command);
    let _ = command.to_string();
    if let Command::Meta { .. } = &command {
        use tinkerdb_core::cluster::meta::{MetaApplier, MetaState};
        let state = std::rc::Rc::new(std::cell::RefCell::new(MetaState::new()));
        let _ = MetaApplier::new(state, Default::default()).apply(&command);
    }
    if let Command::Ops { payload, .. } = &command {
        if let Ok(ops) = decode_ops(payload) {
            // Compared as bytes: an f64 increment may be NaN (not equal to itself).
            let bytes = encode_ops(&ops);
            let again = decode_ops(&bytes).expect("re-encoded operations decode");
            assert_eq!(encode_ops(&again), bytes, "operations read back different");
            for op in ops {
                let _ = op.into_request(0, "t");
            }
        }
    }
});
