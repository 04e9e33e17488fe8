//! A RESP connection's byte stream, parsed as `resp.rs`'s connection loop
//! parses it: `parse_command` over the unread bytes after every read, with
//! the node's default limits (`max_args = 2 * max_keys_per_request + 16`,
//! bulk strings up to `max_frame_bytes`, a command over `max_frame_bytes +
//! RESP_MAX_INLINE_BYTES` closes the connection), stopping at a broken
//! stream or QUIT.
//!
//! The first input byte picks how the rest is cut into reads. Checks:
//! every `used` is within the buffer and non-zero (the loop would spin or
//! panic otherwise); commands have arguments within the limits; the same
//! stream cut into reads differently yields exactly the same commands and
//! errors; each multibulk command, encoded again as a client would, parses
//! back to the same arguments and length.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tinkerdb_core::config::Limits;
use tinkerdb_core::frontend::resp::{parse_command, Parsed, RESP_MAX_INLINE_BYTES};

#[derive(Debug, PartialEq)]
enum Event {
    /// A command, and whether it came as a multibulk.
    Command(Vec<Bytes>, bool),
    Broken(String),
    TooLong,
}

struct Loop {
    max_args: usize,
    max_bulk_bytes: usize,
    max_command_bytes: usize,
}

impl Loop {
    fn new(limits: &Limits) -> Loop {
        Loop {
            max_args: 2 * limits.max_keys_per_request + 16,
            max_bulk_bytes: limits.max_frame_bytes,
            max_command_bytes: limits.max_frame_bytes + RESP_MAX_INLINE_BYTES,
        }
    }

    /// Feeds `stream` in reads of the given sizes; what the loop does.
    fn drive(&self, stream: &[u8], mut reads: impl FnMut() -> usize) -> Vec<Event> {
        let mut events = Vec::new();
        let mut buffer: Vec<u8> = Vec::new();
        let mut fed = 0;
        while fed < stream.len() {
            let read = reads().clamp(1, stream.len() - fed);
            buffer.extend_from_slice(&stream[fed..fed + read]);
            fed += read;
            loop {
                match parse_command(&buffer, self.max_args, self.max_bulk_bytes) {
                    Parsed::Command(args, used) => {
                        assert!(
                            used > 0 && used <= buffer.len(),
                            "used {used} of {}",
                            buffer.len()
                        );
                        assert!(!args.is_empty(), "a command without a name");
                        let multibulk = buffer[0] == b'*';
                        if multibulk {
                            assert!(args.len() <= self.max_args, "{} arguments", args.len());
                            for arg in &args {
                                assert!(arg.len() <= self.max_bulk_bytes);
                            }
                        } else {
                            assert!(used <= RESP_MAX_INLINE_BYTES + 1, "inline line of {used}");
                        }
                        let quit = args[0].eq_ignore_ascii_case(b"QUIT");
                        buffer.drain(..used);
                        events.push(Event::Command(args, multibulk));
                        if quit {
                            return events;
                        }
                    }
                    Parsed::Skip(used) => {
                        assert!(
                            used > 0 && used <= buffer.len(),
                            "skip {used} of {}",
                            buffer.len()
                        );
                        buffer.drain(..used);
                    }
                    Parsed::Incomplete => break,
                    Parsed::Broken(message) => {
                        events.push(Event::Broken(message));
                        return events;
                    }
                }
            }
            if buffer.len() > self.max_command_bytes {
                events.push(Event::TooLong);
                return events;
            }
        }
        events
    }
}

/// A client's encoding of `args` as a multibulk.
fn multibulk(args: &[Bytes]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let (cut, stream) = tinkerdb_fuzz::mode_and_rest(data);
    let connection = Loop::new(&Limits::default());
    // All at once, then in reads of 1..=(cut % 64 + 1) bytes (a small
    // xorshift seeded by the first byte), byte by byte when it is 0.
    let whole = connection.drive(stream, || usize::MAX);
    let mut state = u32::from(cut) | 0x9e37_7900;
    let chunked = connection.drive(stream, || {
        if cut == 0 {
            return 1;
        }
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        1 + (state as usize) % (usize::from(cut) % 64 + 1)
    });
    assert_eq!(
        whole, chunked,
        "the commands depend on how the stream was read"
    );
    for event in &whole {
        if let Event::Command(args, _) = event {
            if args.len() > connection.max_args {
                continue; // An inline command: its words are not bounded by max_args.
            }
            let encoded = multibulk(args);
            match parse_command(&encoded, connection.max_args, connection.max_bulk_bytes) {
                Parsed::Command(again, used) => {
                    assert_eq!(&again, args, "a command reads back different");
                    assert_eq!(used, encoded.len());
                }
                other => panic!("a re-encoded command does not parse: {other:?}"),
            }
        }
    }
});
