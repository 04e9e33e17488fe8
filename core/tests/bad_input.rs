//! Bad input over raw sockets: every case gets a typed error (or, where the
//! stream cannot be followed, a typed error and a close), and the node keeps
//! serving everyone else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::TestNode;
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use tinkerdb_schemas::frame::{decode_response, write_frame};
use tinkerdb_schemas::wire::{self, ErrorCode};
use tinkerdb_schemas::PROTOCOL_VERSION;

struct Raw {
    stream: TcpStream,
}

type Body = (wire::Request, WIPOffset<UnionWIPOffset>);

fn frame(request_id: u64, build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> Body) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let (request_type, request) = build(&mut builder);
    let root = wire::RequestFrame::create(
        &mut builder,
        &wire::RequestFrameArgs {
            request_id,
            request_type,
            request: Some(request),
            route: None,
        },
    );
    builder.finish_minimal(root);
    let mut out = Vec::new();
    write_frame(&mut out, builder.finished_data());
    out
}

fn hello(version: u32, tenant: &str) -> impl FnOnce(&mut FlatBufferBuilder<'static>) -> Body + '_ {
    move |b| {
        let tenant = b.create_string(tenant);
        let table = wire::Hello::create(
            b,
            &wire::HelloArgs {
                protocol_version: version,
                tenant: Some(tenant),
                client_name: None,
                ..Default::default()
            },
        );
        (wire::Request::Hello, table.as_union_value())
    }
}

fn ping(b: &mut FlatBufferBuilder<'static>) -> Body {
    (
        wire::Request::Ping,
        wire::Ping::create(b, &wire::PingArgs {}).as_union_value(),
    )
}

fn get(key: Vec<u8>) -> impl FnOnce(&mut FlatBufferBuilder<'static>) -> Body {
    move |b| {
        let key = b.create_vector(&key);
        (
            wire::Request::Get,
            wire::Get::create(b, &wire::GetArgs { key: Some(key) }).as_union_value(),
        )
    }
}

/// A response: request id, response type and, for errors, the code.
#[derive(Debug, PartialEq)]
struct Answer {
    request_id: u64,
    kind: wire::Response,
    error: Option<ErrorCode>,
}

impl Raw {
    fn connect(node: &TestNode) -> Raw {
        let stream = TcpStream::connect(node.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw { stream }
    }

    fn handshaken(node: &TestNode) -> Raw {
        let mut raw = Raw::connect(node);
        raw.send(&frame(1, hello(PROTOCOL_VERSION, "")));
        assert_eq!(raw.answer().kind, wire::Response::HelloOk);
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one answer; `None` if the node closed the connection.
    fn try_answer(&mut self) -> Option<Answer> {
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header).ok()?;
        let mut body = vec![0u8; u32::from_le_bytes(header) as usize];
        self.stream.read_exact(&mut body).unwrap();
        let response = decode_response(&body).expect("node sent a valid frame");
        Some(Answer {
            request_id: response.request_id(),
            kind: response.response_type(),
            error: response.response_as_error().map(|e| e.code()),
        })
    }

    fn answer(&mut self) -> Answer {
        self.try_answer().expect("connection closed")
    }

    fn assert_closed(&mut self) {
        let mut byte = [0u8; 1];
        assert_eq!(
            self.stream.read(&mut byte).unwrap_or(0),
            0,
            "connection still open"
        );
    }
}

fn error(request_id: u64, code: ErrorCode) -> Answer {
    Answer {
        request_id,
        kind: wire::Response::Error,
        error: Some(code),
    }
}

#[test]
fn handshake_errors_are_typed_and_recoverable() {
    let node = TestNode::start(2);
    let mut raw = Raw::connect(&node);
    raw.send(&frame(5, ping));
    assert_eq!(raw.answer(), error(5, ErrorCode::HandshakeRequired));
    raw.send(&frame(6, hello(99, "")));
    assert_eq!(raw.answer(), error(6, ErrorCode::UnsupportedVersion));
    raw.send(&frame(7, hello(PROTOCOL_VERSION, "no-such-tenant")));
    assert_eq!(raw.answer(), error(7, ErrorCode::UnknownTenant));
    raw.send(&frame(8, hello(PROTOCOL_VERSION, "default")));
    assert_eq!(raw.answer().kind, wire::Response::HelloOk);
    raw.send(&frame(9, hello(PROTOCOL_VERSION, "default")));
    assert_eq!(raw.answer(), error(9, ErrorCode::InvalidArgument));
    raw.send(&frame(10, ping));
    assert_eq!(raw.answer().kind, wire::Response::Pong);
}

#[test]
fn malformed_frames_get_an_error_and_the_connection_survives() {
    let node = TestNode::start(2);
    let mut raw = Raw::handshaken(&node);
    let mut garbage = Vec::new();
    write_frame(&mut garbage, b"this is not a flatbuffer at all");
    raw.send(&garbage);
    assert_eq!(raw.answer(), error(0, ErrorCode::MalformedFrame));
    let mut empty = Vec::new();
    write_frame(&mut empty, b"");
    raw.send(&empty);
    assert_eq!(raw.answer(), error(0, ErrorCode::MalformedFrame));
    // The union's type is set but its member table is missing: the root
    // table verifies, so the error carries the request's id.
    let mut builder = FlatBufferBuilder::new();
    let root = wire::RequestFrame::create(
        &mut builder,
        &wire::RequestFrameArgs {
            request_id: 5,
            request_type: wire::Request::Get,
            request: None,
            route: None,
        },
    );
    builder.finish_minimal(root);
    let mut missing_member = Vec::new();
    write_frame(&mut missing_member, builder.finished_data());
    raw.send(&missing_member);
    assert_eq!(raw.answer(), error(5, ErrorCode::MalformedFrame));
    raw.send(&frame(3, |b| {
        let table = wire::Ping::create(b, &wire::PingArgs {});
        (wire::Request(200), table.as_union_value())
    }));
    assert_eq!(raw.answer(), error(3, ErrorCode::UnknownOperation));
    raw.send(&frame(4, ping));
    assert_eq!(raw.answer().kind, wire::Response::Pong);
}

#[test]
fn oversized_keys_values_and_key_lists_are_refused() {
    let node = TestNode::start_with_config(
        2,
        "[limits]\nmax_key_bytes = 100\nmax_value_bytes = 1000\nmax_keys_per_request = 5\nmax_frame_bytes = 10000\n",
    );
    let mut raw = Raw::handshaken(&node);
    raw.send(&frame(2, get(vec![b'k'; 101])));
    assert_eq!(raw.answer(), error(2, ErrorCode::KeyTooLarge));
    raw.send(&frame(3, |b| {
        let key = b.create_vector(b"k");
        let value = b.create_vector(&[0u8; 1001]);
        let set = wire::Set::create(
            b,
            &wire::SetArgs {
                key: Some(key),
                value: Some(value),
                ttl_ms: 0,
                condition: wire::SetCondition::Always,
            },
        );
        (wire::Request::Set, set.as_union_value())
    }));
    assert_eq!(raw.answer(), error(3, ErrorCode::ValueTooLarge));
    raw.send(&frame(4, |b| {
        let keys: Vec<_> = (0..6)
            .map(|i| {
                let bytes = b.create_vector(&[i as u8]);
                wire::Key::create(b, &wire::KeyArgs { bytes: Some(bytes) })
            })
            .collect();
        let keys = b.create_vector(&keys);
        (
            wire::Request::MGet,
            wire::MGet::create(b, &wire::MGetArgs { keys: Some(keys) }).as_union_value(),
        )
    }));
    assert_eq!(raw.answer(), error(4, ErrorCode::TooManyKeys));
    raw.send(&frame(5, |b| {
        let keys = b.create_vector::<WIPOffset<wire::Key>>(&[]);
        (
            wire::Request::Delete,
            wire::Delete::create(b, &wire::DeleteArgs { keys: Some(keys) }).as_union_value(),
        )
    }));
    assert_eq!(raw.answer(), error(5, ErrorCode::InvalidArgument));
    raw.send(&frame(6, |b| {
        let table = wire::Scan::create(
            b,
            &wire::ScanArgs {
                cursor: 1 << 40,
                ..Default::default()
            },
        );
        (wire::Request::Scan, table.as_union_value())
    }));
    assert_eq!(raw.answer(), error(6, ErrorCode::InvalidArgument));
    raw.send(&frame(7, ping));
    assert_eq!(raw.answer().kind, wire::Response::Pong);
}

#[test]
fn an_oversized_frame_gets_an_error_then_a_close() {
    let node = TestNode::start_with_config(
        2,
        "[limits]\nmax_key_bytes = 100\nmax_value_bytes = 1000\nmax_frame_bytes = 10000\n",
    );
    let mut raw = Raw::handshaken(&node);
    raw.send(&20_000u32.to_le_bytes());
    assert_eq!(raw.answer(), error(0, ErrorCode::FrameTooLarge));
    raw.assert_closed();
    // A hostile length of 4 GiB costs the node nothing either.
    let mut raw = Raw::handshaken(&node);
    raw.send(&u32::MAX.to_le_bytes());
    assert_eq!(raw.answer(), error(0, ErrorCode::FrameTooLarge));
    raw.assert_closed();
    let mut raw = Raw::handshaken(&node);
    raw.send(&frame(2, ping));
    assert_eq!(raw.answer().kind, wire::Response::Pong);
}

#[test]
fn truncated_frames_and_random_bytes_never_hurt_the_node() {
    let mut node = TestNode::start(2);
    let whole = frame(2, get(b"key".to_vec()));
    for cut in 1..whole.len() {
        let mut raw = Raw::handshaken(&node);
        raw.send(&whole[..cut]);
        drop(raw);
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..200 {
        let mut raw = Raw::connect(&node);
        if round % 2 == 0 {
            raw.send(&frame(1, hello(PROTOCOL_VERSION, "")));
        }
        let mut bytes = Vec::new();
        for _ in 0..(64 + round) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.push(seed as u8);
        }
        // Small length prefixes, so the body is parsed rather than refused.
        bytes[..4].copy_from_slice(&((round % 60) as u32).to_le_bytes());
        raw.send(&bytes);
        raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
        while raw.try_answer().is_some() {}
    }
    assert!(node.is_running());
    let mut raw = Raw::handshaken(&node);
    raw.send(&frame(9, ping));
    assert_eq!(
        raw.answer(),
        Answer {
            request_id: 9,
            kind: wire::Response::Pong,
            error: None
        }
    );
}

#[test]
fn answers_over_max_response_bytes_are_refused() {
    let node = TestNode::start_with_config(2, "[limits]\nmax_value_bytes = 100000\nmax_response_bytes = 250000\nmax_frame_bytes = 1000000\n");
    let mut raw = Raw::handshaken(&node);
    for i in 0..4u8 {
        raw.send(&frame(10 + u64::from(i), |b| {
            let key = b.create_vector(&[i]);
            let value = b.create_vector(&[7u8; 90_000]);
            let set = wire::Set::create(
                b,
                &wire::SetArgs {
                    key: Some(key),
                    value: Some(value),
                    ttl_ms: 0,
                    condition: wire::SetCondition::Always,
                },
            );
            (wire::Request::Set, set.as_union_value())
        }));
        assert_eq!(raw.answer().kind, wire::Response::SetResult);
    }
    raw.send(&frame(20, |b| {
        let keys: Vec<_> = (0..4u8)
            .map(|i| {
                let bytes = b.create_vector(&[i]);
                wire::Key::create(b, &wire::KeyArgs { bytes: Some(bytes) })
            })
            .collect();
        let keys = b.create_vector(&keys);
        (
            wire::Request::MGet,
            wire::MGet::create(b, &wire::MGetArgs { keys: Some(keys) }).as_union_value(),
        )
    }));
    assert_eq!(raw.answer(), error(20, ErrorCode::ResultTooLarge));
}

#[test]
fn a_second_node_on_the_same_port_refuses_to_start() {
    let node = TestNode::start(1);
    let output = std::process::Command::new(common::workspace_binary("tinkerdb"))
        .args([
            "--listen",
            &node.addr.to_string(),
            "--no-resp",
            "--no-admin",
            "--cores",
            "1",
        ])
        .arg("--data-dir")
        .arg(std::env::temp_dir().join(format!("tinkerdb-second-{}", std::process::id())))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot listen for clients"));
}

#[test]
fn connections_over_the_limit_are_told_busy() {
    let node = TestNode::start_with_config(1, "[limits]\nmax_connections_per_core = 2\n");
    let _first = Raw::handshaken(&node);
    let _second = Raw::handshaken(&node);
    let mut third = Raw::connect(&node);
    assert_eq!(third.answer(), error(0, ErrorCode::Busy));
    third.assert_closed();
}
