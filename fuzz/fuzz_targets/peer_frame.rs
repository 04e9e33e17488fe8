//! A peer connection's byte stream, read as `transport.rs`'s `read_frames`
//! reads it: `peek_frame` with `MAX_PEER_FRAME_BYTES`, then `decode_peer`
//! on each body, until the stream ends or a frame is refused (the
//! connection is then closed). Each decoded frame is encoded again with
//! `encode_peer_frame` and must decode to the same frame; its payload is
//! decoded as the node decodes that call's (or answer's) payload
//! (`tinkerdb_fuzz::peer::check_payload`).

#![no_main]

use flatbuffers::FlatBufferBuilder;
use libfuzzer_sys::fuzz_target;
use tinkerdb_replication::transport::{decode_peer, encode_peer_frame, MAX_PEER_FRAME_BYTES};
use tinkerdb_schemas::frame::peek_frame;
use tinkerdb_schemas::FRAME_HEADER_BYTES;

fuzz_target!(|data: &[u8]| {
    let mut builder = FlatBufferBuilder::new();
    let mut buffer = data;
    while let Ok(Some(length)) = peek_frame(buffer, MAX_PEER_FRAME_BYTES) {
        let end = FRAME_HEADER_BYTES + length;
        assert!(end <= buffer.len());
        let Ok(frame) = decode_peer(&buffer[FRAME_HEADER_BYTES..end]) else {
            return;
        };
        let mut encoded = Vec::new();
        encode_peer_frame(
            &mut builder,
            frame.call_id,
            &frame.call,
            frame.is_answer,
            frame.error.as_deref(),
            &mut encoded,
        );
        let again_length = peek_frame(&encoded, MAX_PEER_FRAME_BYTES)
            .expect("under the limit")
            .expect("whole");
        assert_eq!(FRAME_HEADER_BYTES + again_length, encoded.len());
        let again =
            decode_peer(&encoded[FRAME_HEADER_BYTES..]).expect("a re-encoded frame decodes");
        assert_eq!(again, frame, "a frame reads back different");
        tinkerdb_fuzz::peer::check_payload(frame.call.kind, frame.is_answer, &frame.call.payload);
        buffer = &buffer[end..];
    }
});
