//! One peer call's payload, without the frame around it, so the fuzzer
//! spends its effort on openraft's messages (postcard, `network::decode`)
//! and TinkerDB's own: the first byte's low 4 bits are the call kind
//! (`PeerCallKind`), bit 4 says it is an answer; the rest is the payload.
//! See `tinkerdb_fuzz::peer::check_payload` for the checks (round trips,
//! and AppendEntries entries stored and read back as the log store does).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tinkerdb_schemas::wire::PeerCallKind;

fuzz_target!(|data: &[u8]| {
    let (selector, payload) = tinkerdb_fuzz::mode_and_rest(data);
    let kind = PeerCallKind(selector & 0x0f);
    let is_answer = selector & 0x10 != 0;
    tinkerdb_fuzz::peer::check_payload(kind, is_answer, payload);
});
