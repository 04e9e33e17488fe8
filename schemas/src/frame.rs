//! Framing: every message is a 4-byte little-endian length followed by that
//! many bytes holding one flatbuffer (a `RequestFrame` or a `ResponseFrame`).
//!
//! The length counts only the flatbuffer, not the 4 header bytes. A reader
//! must check the length against its `max_frame_bytes` before buffering the
//! body: that check is what keeps a hostile length from costing memory.

use crate::wire;

/// The protocol version a client sends in `Hello` and a node answers with.
/// Version 2 added the Hello's `user` and `password`.
pub const PROTOCOL_VERSION: u32 = 2;

/// The oldest version a node still accepts (a version-1 Hello has no
/// credentials: it is refused `Unauthenticated` by a node that requires
/// them, and served as before by one that does not).
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// Size of the length prefix in front of every frame.
pub const FRAME_HEADER_BYTES: usize = 4;

/// Deepest table nesting a verifier accepts; our schema nests at most 4 deep.
pub const VERIFIER_MAX_DEPTH: usize = 16;

/// Most tables a verifier walks in one frame: bounds the work a hostile frame
/// can cause. A frame holds at most one table per key plus a few more.
pub const VERIFIER_MAX_TABLES: usize = 1 << 20;

/// Why bytes could not be taken as a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces more than the reader's limit. The stream
    /// cannot be resynchronised after this: the connection must be closed.
    TooLarge {
        /// Announced body length.
        length_bytes: usize,
        /// The reader's limit.
        max_frame_bytes: usize,
    },
    /// The body is not a valid flatbuffer of the expected root type.
    Malformed(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge {
                length_bytes,
                max_frame_bytes,
            } => write!(
                f,
                "frame of {length_bytes} bytes exceeds max_frame_bytes {max_frame_bytes}"
            ),
            FrameError::Malformed(why) => write!(f, "malformed frame: {why}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Looks at the front of `buffer` for one whole frame.
///
/// Returns `Ok(Some(body_len))` when the header and the whole body are
/// present (the body is `buffer[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body_len]`),
/// `Ok(None)` when more bytes are needed, and an error when the announced
/// length is over `max_frame_bytes`.
pub fn peek_frame(buffer: &[u8], max_frame_bytes: usize) -> Result<Option<usize>, FrameError> {
    let Some(header) = buffer.first_chunk::<FRAME_HEADER_BYTES>() else {
        return Ok(None);
    };
    let length_bytes = u32::from_le_bytes(*header) as usize;
    if length_bytes > max_frame_bytes {
        return Err(FrameError::TooLarge {
            length_bytes,
            max_frame_bytes,
        });
    }
    if buffer.len() - FRAME_HEADER_BYTES < length_bytes {
        return Ok(None);
    }
    Ok(Some(length_bytes))
}

/// Appends `body` to `out` as one frame (length prefix, then the bytes).
pub fn write_frame(out: &mut Vec<u8>, body: &[u8]) {
    let length = u32::try_from(body.len()).expect("frame body over 4 GiB");
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(body);
}

fn verifier_options() -> flatbuffers::VerifierOptions {
    flatbuffers::VerifierOptions {
        max_depth: VERIFIER_MAX_DEPTH,
        max_tables: VERIFIER_MAX_TABLES,
        ..Default::default()
    }
}

/// Verifies and opens a request body (the bytes after the length prefix).
pub fn decode_request(body: &[u8]) -> Result<wire::RequestFrame<'_>, FrameError> {
    flatbuffers::root_with_opts::<wire::RequestFrame>(&verifier_options(), body)
        .map_err(|error| FrameError::Malformed(error.to_string()))
}

/// The `request_id` of a request body that failed [`decode_request`], when
/// the body's root table and that one field verify on their own (a frame
/// whose operation is missing, of an unknown shape or malformed): the node
/// answers the error with the request's id, so a pipelining client can tell
/// which request failed. `None` when even that much does not verify.
pub fn request_id_of_malformed(body: &[u8]) -> Option<u64> {
    /// The root table of a `RequestFrame`, verified for `request_id` only.
    struct RequestIdOnly;
    impl flatbuffers::Verifiable for RequestIdOnly {
        fn run_verifier(
            verifier: &mut flatbuffers::Verifier,
            position: usize,
        ) -> Result<(), flatbuffers::InvalidFlatbuffer> {
            verifier
                .visit_table(position)?
                .visit_field::<u64>("request_id", wire::RequestFrame::VT_REQUEST_ID, false)?
                .finish();
            Ok(())
        }
    }
    let options = verifier_options();
    let mut verifier = flatbuffers::Verifier::new(&options, body);
    <flatbuffers::ForwardsUOffset<RequestIdOnly> as flatbuffers::Verifiable>::run_verifier(
        &mut verifier,
        0,
    )
    .ok()?;
    // Verified: the offsets below are in bounds; read them checked anyway.
    let u32_at = |at: usize| Some(u32::from_le_bytes(*body.get(at..)?.first_chunk()?));
    let table = u32_at(0)? as usize;
    // A table starts with a signed offset back to its vtable.
    let back = i32::from_le_bytes(*body.get(table..)?.first_chunk()?);
    let vtable = usize::try_from(table as i64 - i64::from(back)).ok()?;
    let slot = vtable + wire::RequestFrame::VT_REQUEST_ID as usize;
    let vtable_bytes = u16::from_le_bytes(*body.get(vtable..)?.first_chunk()?) as usize;
    if slot + 2 > vtable + vtable_bytes {
        return Some(0); // The field is absent: its default.
    }
    let field = u16::from_le_bytes(*body.get(slot..)?.first_chunk()?) as usize;
    if field == 0 {
        return Some(0);
    }
    Some(u64::from_le_bytes(
        *body.get(table + field..)?.first_chunk()?,
    ))
}

/// Verifies and opens a response body (the bytes after the length prefix).
pub fn decode_response(body: &[u8]) -> Result<wire::ResponseFrame<'_>, FrameError> {
    flatbuffers::root_with_opts::<wire::ResponseFrame>(&verifier_options(), body)
        .map_err(|error| FrameError::Malformed(error.to_string()))
}

/// Verifies and opens a node-to-node frame body.
pub fn decode_peer_frame(body: &[u8]) -> Result<wire::PeerFrame<'_>, FrameError> {
    flatbuffers::root_with_opts::<wire::PeerFrame>(&verifier_options(), body)
        .map_err(|error| FrameError::Malformed(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frame_round_trip_and_partial_reads() {
        let mut out = Vec::new();
        write_frame(&mut out, b"hello");
        assert_eq!(out.len(), FRAME_HEADER_BYTES + 5);
        for cut in 0..out.len() {
            assert_eq!(peek_frame(&out[..cut], 1024), Ok(None), "cut at {cut}");
        }
        assert_eq!(peek_frame(&out, 1024), Ok(Some(5)));
        assert!(matches!(
            peek_frame(&out, 4),
            Err(FrameError::TooLarge {
                length_bytes: 5,
                ..
            })
        ));
    }

    proptest! {
        // The decoders see bytes straight from the network: any input must
        // give a value or an error, never a panic.
        #[test]
        fn decoders_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
            let _ = peek_frame(&bytes, 256);
        }
    }
}
