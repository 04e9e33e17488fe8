//! A pipeline mixing single-key and multi-key requests on the same keys,
//! written in one go: every answer must reflect the requests before it, in
//! the order the client sent them, whichever core owns each key.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::TestNode;
use flatbuffers::FlatBufferBuilder;
use tinkerdb_client::codec::{decode, encode_request, Request, Response};
use tinkerdb_client::SetCondition;

#[test]
fn pipelined_requests_apply_in_order() {
    let node = TestNode::start(2);
    let mut stream = TcpStream::connect(node.addr).unwrap();
    let mut builder = FlatBufferBuilder::new();
    let mut out = Vec::new();
    fn set<'a>(key: &'a [u8], value: &'a [u8]) -> Request<'a> {
        Request::Set {
            key,
            value,
            ttl_ms: 0,
            condition: SetCondition::Always,
        }
    }
    // 16 keys: both cores of a 2-core node own some of them.
    let keys: Vec<Vec<u8>> = (0..16).map(|i| format!("order{i}").into_bytes()).collect();
    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let values: Vec<Vec<u8>> = (0..20u8).map(|round| vec![b'a' + round; 3]).collect();
    let multi: Vec<(&[u8], &[u8])> = keys.iter().map(|key| (*key, &b"multi"[..])).collect();
    let mut requests = vec![Request::Hello {
        tenant: "",
        client_name: "order-test",
        stale_reads: false,
        user: "",
        password: "",
    }];
    for value in &values {
        requests.extend(keys.iter().map(|key| set(key, value)));
        requests.push(Request::MGet { keys: &keys });
        requests.push(Request::MSet { entries: &multi });
        requests.extend(keys.iter().map(|key| Request::Get { key }));
    }
    for (id, request) in requests.iter().enumerate() {
        encode_request(&mut builder, id as u64 + 1, request, &mut out);
    }
    stream.write_all(&out).unwrap();
    let mut answers = Vec::new();
    for _ in 0..requests.len() {
        let mut header = [0u8; 4];
        stream.read_exact(&mut header).unwrap();
        let mut body = vec![0u8; u32::from_le_bytes(header) as usize];
        stream.read_exact(&mut body).unwrap();
        answers.push(decode(&body).unwrap());
    }
    for (position, (id, answer)) in answers.iter().enumerate() {
        assert_eq!(*id, position as u64 + 1, "answers carry their request ids");
        match (&requests[position], answer) {
            (Request::MGet { .. }, Response::Values(values)) => {
                // Just after this round's SETs, before its MSET.
                let expected = &requests[position - 1];
                let Request::Set { value, .. } = expected else {
                    panic!()
                };
                for read in values {
                    assert_eq!(&read.as_ref().unwrap().value[..], *value);
                }
            }
            (Request::Get { .. }, Response::Value(read)) => {
                assert_eq!(
                    &read.as_ref().unwrap().value[..],
                    b"multi",
                    "GET after MSET sees it"
                );
            }
            (_, Response::Error { code, message, .. }) => panic!("error {code:?}: {message}"),
            _ => {}
        }
    }
}
