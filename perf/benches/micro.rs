#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Microbenchmarks of the hot paths: frame encode/decode, slot hashing, the
//! store's set/get, glob matching. `cargo bench -p tinkerdb-perf`.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use flatbuffers::FlatBufferBuilder;
use tinkerdb_client::codec::{encode_request, Request};
use tinkerdb_client::SetCondition;
use tinkerdb_core::config::Limits;
use tinkerdb_core::coord::request::Reply;
use tinkerdb_core::frontend::fbs::codec::{decode_command, encode_reply};
use tinkerdb_core::shard::ValueRead;
use tinkerdb_storage::glob::glob_match;
use tinkerdb_storage::{hash_slot, SetOptions, Store};

fn frames(c: &mut Criterion) {
    let value = vec![b'x'; 100];
    let request = Request::Set {
        key: b"key:000000123456",
        value: &value,
        ttl_ms: 0,
        condition: SetCondition::Always,
    };
    let mut builder = FlatBufferBuilder::new();
    let mut out = Vec::new();
    c.bench_function("encode SET request (100 B value)", |b| {
        b.iter(|| {
            out.clear();
            encode_request(&mut builder, 7, black_box(&request), &mut out);
        })
    });
    out.clear();
    encode_request(&mut builder, 7, &request, &mut out);
    let body = Bytes::copy_from_slice(&out[4..]);
    let limits = Limits::default();
    c.bench_function("decode+validate SET request", |b| {
        b.iter(|| decode_command(black_box(&body), &limits).unwrap())
    });
    let reply = Reply::Value(Some(ValueRead {
        value: Bytes::from(value.clone()),
        version: 9,
        expires_at_ms: None,
    }));
    let mut server_builder = FlatBufferBuilder::new();
    c.bench_function("encode GET reply (100 B value)", |b| {
        b.iter(|| {
            out.clear();
            encode_reply(
                &mut server_builder,
                7,
                black_box(&reply),
                &limits,
                0,
                &mut out,
            );
        })
    });
}

fn store(c: &mut Criterion) {
    let keys: Vec<Vec<u8>> = (0..100_000)
        .map(|i| format!("key:{i:012}").into_bytes())
        .collect();
    let slots: Vec<u16> = keys.iter().map(|key| hash_slot("default", key)).collect();
    c.bench_function("hash_slot", |b| {
        b.iter(|| hash_slot("default", black_box(&keys[42])))
    });
    let mut store = Store::new();
    let value = [b'v'; 100];
    for (key, &slot) in keys.iter().zip(&slots) {
        store
            .set(0, slot, key, &value, SetOptions::default(), 0)
            .unwrap();
    }
    let mut i = 0usize;
    c.bench_function("store get (100k keys)", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(store.get(0, slots[i], &keys[i], 0));
        })
    });
    c.bench_function("store set overwrite (100k keys)", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            store
                .set(0, slots[i], &keys[i], &value, SetOptions::default(), 0)
                .unwrap();
        })
    });
    c.bench_function("glob user:*:name", |b| {
        b.iter(|| glob_match(black_box(b"user:*:name"), black_box(b"user:123456:name")))
    });
}

fn wal(c: &mut Criterion) {
    use tinkerdb_storage::log_op::LoggedOp;
    use tinkerdb_storage::wal_format::{decode_batch, encode_batch, encode_record};
    let value = [b'v'; 100];
    let mut payload = Vec::new();
    c.bench_function("WAL: encode a Put (100 B value)", |b| {
        b.iter(|| {
            payload.clear();
            LoggedOp::Put {
                tenant: "default",
                slot: 42,
                key: b"key:000000123456",
                value: &value,
                version: 7,
                expires_at_ms: None,
            }
            .encode(&mut payload);
        })
    });
    let mut body = Vec::new();
    c.bench_function("WAL: frame 32 records + batch (CRC-32C)", |b| {
        b.iter(|| {
            body.clear();
            for index in 1..=32 {
                encode_record(&mut body, index, 1, black_box(&payload));
            }
            let mut image = Vec::with_capacity(8192);
            encode_batch(&mut image, 1, 32, &body, 0, 0);
            image
        })
    });
    let mut image = Vec::new();
    encode_batch(&mut image, 1, 32, &body, 0, 0);
    c.bench_function("WAL: verify and decode a 32-record batch", |b| {
        b.iter(|| decode_batch(black_box(&image), 0).unwrap())
    });
}

criterion_group!(benches, frames, store, wal);
criterion_main!(benches);
