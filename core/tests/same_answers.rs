//! One table of Redis-protocol commands, the same test body, two fixtures:
//! a standalone node, and a 3-node cluster (two cores per node, so two Raft
//! groups) where every write goes through node 3 and every read through
//! node 1. Both must give the same answers, byte for byte: the cluster
//! applies each write with the same code as the standalone node, through
//! Raft (`core/src/shard/write_op.rs`), and its reads are linearizable.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestNode;
use redis::Value;

const CORES: usize = 2;

/// A command's answer, shown the way redis-cli would (enough to compare).
fn show(value: &Value) -> String {
    match value {
        Value::Nil => "(nil)".into(),
        Value::Int(number) => format!(":{number}"),
        Value::BulkString(bytes) => format!("{:?}", String::from_utf8_lossy(bytes)),
        Value::SimpleString(text) => text.clone(),
        Value::Okay => "OK".into(),
        Value::Array(items) => {
            format!("[{}]", items.iter().map(show).collect::<Vec<_>>().join(","))
        }
        Value::ServerError(error) => {
            format!("{} {}", error.code(), error.details().unwrap_or_default())
        }
        other => format!("{other:?}"),
    }
}

fn run(connection: &mut redis::Connection, args: &[&str]) -> String {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    match command.query::<Value>(connection) {
        Ok(value) => show(&value),
        Err(error) => match error.code() {
            Some(code) => format!("{code} {}", error.detail().unwrap_or_default()),
            None => panic!("{args:?}: {error}"),
        },
    }
}

/// Where a command goes: writes to the writer, reads to the reader.
#[derive(Clone, Copy)]
enum Via {
    Writer,
    Reader,
}

/// The table: command, where it goes, the expected answer. `TTL_n` stands
/// for a TTL between n - 10 and n seconds (time passes between commands).
const TABLE: &[(&[&str], Via, &str)] = &[
    (&["SET", "k1", "v1"], Via::Writer, "OK"),
    (&["GET", "k1"], Via::Reader, "\"v1\""),
    (&["SET", "k1", "v2", "NX"], Via::Writer, "(nil)"),
    (&["SET", "k1", "v3", "XX", "GET"], Via::Writer, "\"v1\""),
    (&["GET", "k1"], Via::Reader, "\"v3\""),
    (&["SETNX", "k1", "x"], Via::Writer, ":0"),
    (&["SETNX", "k2", "x"], Via::Writer, ":1"),
    (&["INCR", "n"], Via::Writer, ":1"),
    (&["INCRBY", "n", "41"], Via::Writer, ":42"),
    (&["DECR", "n"], Via::Writer, ":41"),
    (&["DECRBY", "n", "1"], Via::Writer, ":40"),
    (&["GET", "n"], Via::Reader, "\"40\""),
    (
        &["INCR", "k1"],
        Via::Writer,
        "ERR value is not an integer or out of range",
    ),
    (
        &["INCRBY", "n", "9223372036854775807"],
        Via::Writer,
        "ERR increment or decrement would overflow",
    ),
    (&["APPEND", "k2", "yz"], Via::Writer, ":3"),
    (&["GET", "k2"], Via::Reader, "\"xyz\""),
    (&["STRLEN", "k2"], Via::Reader, ":3"),
    (&["GETDEL", "k2"], Via::Writer, "\"xyz\""),
    (&["GET", "k2"], Via::Reader, "(nil)"),
    (&["GETDEL", "k2"], Via::Writer, "(nil)"),
    (&["EXPIRE", "k1", "1000"], Via::Writer, ":1"),
    (&["TTL", "k1"], Via::Reader, "TTL_1000"),
    (&["PERSIST", "k1"], Via::Writer, ":1"),
    (&["TTL", "k1"], Via::Reader, ":-1"),
    (&["PERSIST", "k1"], Via::Writer, ":0"),
    (&["EXPIRE", "missing", "10"], Via::Writer, ":0"),
    (&["PEXPIRE", "n", "0"], Via::Writer, ":1"),
    (&["GET", "n"], Via::Reader, "(nil)"),
    (&["SET", "t", "1", "EX", "1000"], Via::Writer, "OK"),
    (&["SET", "t", "2", "KEEPTTL"], Via::Writer, "OK"),
    (&["TTL", "t"], Via::Reader, "TTL_1000"),
    (&["SET", "t", "3"], Via::Writer, "OK"),
    (&["TTL", "t"], Via::Reader, ":-1"),
    (&["MSET", "a", "1", "b", "2", "c", "3"], Via::Writer, "OK"),
    (
        &["MGET", "a", "b", "c", "missing"],
        Via::Reader,
        "[\"1\",\"2\",\"3\",(nil)]",
    ),
    (&["EXISTS", "a", "b", "missing", "a"], Via::Reader, ":3"),
    (&["DEL", "a", "b", "missing"], Via::Writer, ":2"),
    (&["UNLINK", "c"], Via::Writer, ":1"),
    (&["DBSIZE"], Via::Reader, ":2"),
    (&["KEYS", "k*"], Via::Reader, "[\"k1\"]"),
    (&["FLUSHDB"], Via::Writer, "OK"),
    (&["DBSIZE"], Via::Reader, ":0"),
    (&["GET", "k1"], Via::Reader, "(nil)"),
    (&["TIME"], Via::Reader, "TIME"),
    // Commands added on the one write path (each one operation).
    (&["GETSET", "gs", "a"], Via::Writer, "(nil)"),
    (&["GETSET", "gs", "b"], Via::Writer, "\"a\""),
    (&["SETEX", "se", "1000", "v"], Via::Writer, "OK"),
    (&["TTL", "se"], Via::Reader, "TTL_1000"),
    (
        &["SETEX", "se", "0", "v"],
        Via::Writer,
        "ERR invalid expire time in 'setex' command",
    ),
    (&["PSETEX", "pse", "1000000", "v"], Via::Writer, "OK"),
    (&["TTL", "pse"], Via::Reader, "TTL_1000"),
    (&["EXPIRE", "se", "2000", "NX"], Via::Writer, ":0"),
    (&["EXPIRE", "se", "2000", "GT"], Via::Writer, ":1"),
    (&["TTL", "se"], Via::Reader, "TTL_2000"),
    (&["EXPIRE", "se", "500", "GT"], Via::Writer, ":0"),
    (&["EXPIRE", "se", "500", "XX", "LT"], Via::Writer, ":1"),
    (&["TTL", "se"], Via::Reader, "TTL_500"),
    (&["EXPIRE", "gs", "500", "XX"], Via::Writer, ":0"),
    (&["EXPIRE", "gs", "500", "GT"], Via::Writer, ":0"),
    (&["EXPIRE", "gs", "500", "XX", "LT"], Via::Writer, ":0"),
    (&["EXPIRE", "gs", "500", "LT"], Via::Writer, ":1"),
    (
        &["EXPIRE", "gs", "5", "NX", "XX"],
        Via::Writer,
        "ERR NX and XX, GT or LT options at the same time are not compatible",
    ),
    (
        &["EXPIRE", "gs", "5", "GT", "LT"],
        Via::Writer,
        "ERR GT and LT options at the same time are not compatible",
    ),
    (
        &["EXPIRE", "gs", "5", "YY"],
        Via::Writer,
        "ERR Unsupported option YY",
    ),
    (&["EXPIREAT", "gs", "4102444800"], Via::Writer, ":1"),
    (&["EXPIRETIME", "gs"], Via::Reader, ":4102444800"),
    (&["PEXPIRETIME", "gs"], Via::Reader, ":4102444800000"),
    (&["EXPIRETIME", "missing"], Via::Reader, ":-2"),
    (&["EXPIRETIME", "pse"], Via::Reader, "EXPIRETIME_NEAR"),
    (&["PEXPIREAT", "gs", "1"], Via::Writer, ":1"),
    (&["GET", "gs"], Via::Reader, "(nil)"),
    (&["SET", "ge", "v"], Via::Writer, "OK"),
    (&["EXPIRETIME", "ge"], Via::Reader, ":-1"),
    (&["GETEX", "ge", "EX", "1000"], Via::Writer, "\"v\""),
    (&["TTL", "ge"], Via::Reader, "TTL_1000"),
    (&["GETEX", "ge", "PERSIST"], Via::Writer, "\"v\""),
    (&["TTL", "ge"], Via::Reader, ":-1"),
    (&["GETEX", "ge"], Via::Reader, "\"v\""),
    (&["GETEX", "missing", "EX", "5"], Via::Writer, "(nil)"),
    (
        &["GETEX", "ge", "EX", "0"],
        Via::Writer,
        "ERR invalid expire time in 'getex' command",
    ),
    (&["GETEX", "ge", "FOO"], Via::Writer, "ERR syntax error"),
    (&["SETRANGE", "sr", "3", "abc"], Via::Writer, ":6"),
    (&["GET", "sr"], Via::Reader, "\"\\0\\0\\0abc\""),
    (&["SETRANGE", "sr", "1", "XY"], Via::Writer, ":6"),
    (&["GETRANGE", "sr", "1", "2"], Via::Reader, "\"XY\""),
    (&["GETRANGE", "sr", "-3", "-1"], Via::Reader, "\"abc\""),
    (&["GETRANGE", "sr", "5", "100"], Via::Reader, "\"c\""),
    (&["GETRANGE", "sr", "4", "2"], Via::Reader, "\"\""),
    (&["GETRANGE", "missing", "0", "-1"], Via::Reader, "\"\""),
    (
        &["SETRANGE", "sr", "-1", "x"],
        Via::Writer,
        "ERR offset is out of range",
    ),
    (&["SETRANGE", "empty", "5", ""], Via::Writer, ":0"),
    (&["EXISTS", "empty"], Via::Reader, ":0"),
    (&["INCRBYFLOAT", "f", "10.5"], Via::Writer, "\"10.5\""),
    (&["INCRBYFLOAT", "f", "0.1"], Via::Writer, "\"10.6\""),
    (&["INCRBYFLOAT", "f", "-5.6"], Via::Writer, "\"5\""),
    (&["INCRBY", "f", "1"], Via::Writer, ":6"),
    (
        &["INCRBYFLOAT", "f", "abc"],
        Via::Writer,
        "ERR value is not a valid float",
    ),
    (
        &["INCRBYFLOAT", "sr", "1"],
        Via::Writer,
        "ERR value is not a valid float",
    ),
    (&["DBSIZE"], Via::Reader, ":5"),
    (&["FLUSHALL"], Via::Writer, "OK"),
    (&["DBSIZE"], Via::Reader, ":0"),
    // ta, t1, t4, td, te and t5 live on core 0's shard (checked by
    // `table_keys_share_a_shard`), tb on core 1's: one-shard commands are
    // atomic there, and refused across shards.
    (
        &["MSETNX", "ta", "1", "tb", "2"],
        Via::Writer,
        "CROSSSLOT Keys in request don't hash to the same shard (atomic multi-key commands across shards need transactions, not built yet)",
    ),
    (
        &["RENAME", "ta", "tb"],
        Via::Writer,
        "CROSSSLOT Keys in request don't hash to the same shard (atomic multi-key commands across shards need transactions, not built yet)",
    ),
    (&["MSETNX", "ta", "1", "t1", "2"], Via::Writer, ":1"),
    (&["MSETNX", "t1", "x", "t4", "3"], Via::Writer, ":0"),
    (
        &["MGET", "ta", "t1", "t4"],
        Via::Reader,
        "[\"1\",\"2\",(nil)]",
    ),
    (&["MSETNX", "ta"], Via::Writer, "ERR wrong number of arguments for 'msetnx' command"),
    (&["PEXPIRE", "ta", "100000000"], Via::Writer, ":1"),
    (&["RENAME", "ta", "t4"], Via::Writer, "OK"),
    (&["EXISTS", "ta"], Via::Reader, ":0"),
    (&["GET", "t4"], Via::Reader, "\"1\""),
    (&["TTL", "t4"], Via::Reader, "TTL_100000"),
    (&["RENAME", "ta", "td"], Via::Writer, "ERR no such key"),
    (&["RENAMENX", "t4", "t1"], Via::Writer, ":0"),
    (&["RENAMENX", "t4", "td"], Via::Writer, ":1"),
    (&["RENAME", "td", "td"], Via::Writer, "OK"),
    (&["COPY", "td", "t1"], Via::Writer, ":0"),
    (&["COPY", "td", "t1", "REPLACE"], Via::Writer, ":1"),
    (&["GET", "t1"], Via::Reader, "\"1\""),
    (&["TTL", "t1"], Via::Reader, "TTL_100000"),
    (
        &["COPY", "td", "td"],
        Via::Writer,
        "ERR source and destination objects are the same",
    ),
    (&["COPY", "t5", "te"], Via::Writer, ":0"),
    (&["COPY", "td", "te", "BOGUS"], Via::Writer, "ERR syntax error"),
    (&["DBSIZE"], Via::Reader, ":2"),
    (&["RANDOMKEY"], Via::Reader, "ONE_OF t1 td"),
    (&["DEL", "t1", "td"], Via::Writer, ":2"),
    (&["RANDOMKEY"], Via::Reader, "(nil)"),
    (&["INFO", "keyspace"], Via::Reader, "INFO Keyspace"),
    (&["INFO", "server", "cpu"], Via::Reader, "INFO Server CPU"),
    (&["INFO", "nosuchsection"], Via::Reader, "INFO"),
    // Databases: each connection selects its own (the writer's and the
    // reader's are apart), both go to database 2 here.
    (&["SET", "d", "zero"], Via::Writer, "OK"),
    (&["SELECT", "2"], Via::Writer, "OK"),
    (&["SELECT", "2"], Via::Reader, "OK"),
    (&["GET", "d"], Via::Reader, "(nil)"),
    (&["SET", "d", "two"], Via::Writer, "OK"),
    (&["INCR", "n2"], Via::Writer, ":1"),
    (&["GET", "d"], Via::Reader, "\"two\""),
    (&["DBSIZE"], Via::Reader, ":2"),
    (&["SELECT", "16"], Via::Reader, "ERR DB index is out of range"),
    (&["FLUSHDB"], Via::Writer, "OK"),
    (&["DBSIZE"], Via::Reader, ":0"),
    (&["SELECT", "0"], Via::Writer, "OK"),
    (&["SELECT", "0"], Via::Reader, "OK"),
    (&["GET", "d"], Via::Reader, "\"zero\""),
    (&["FLUSHALL", "SYNC"], Via::Writer, "OK"),
    (&["DBSIZE"], Via::Reader, ":0"),
];

/// The table's one-shard keys share core 0's shard, and `tb` is on core 1's.
#[test]
fn table_keys_share_a_shard() {
    let map = tinkerdb_core::slots::SlotMap::contiguous(CORES);
    let core = |key: &str| map.owner(tinkerdb_storage::hash_slot("default", key.as_bytes()));
    for key in ["ta", "t1", "t4", "td", "te", "t5"] {
        assert_eq!(core(key), 0, "{key}");
    }
    assert_eq!(core("tb"), 1);
}

/// Runs the table through `writer` and `reader`; returns every answer.
fn run_table(writer: &mut redis::Connection, reader: &mut redis::Connection) -> Vec<String> {
    let mut answers = Vec::new();
    for (args, via, expected) in TABLE {
        let connection = match via {
            Via::Writer => &mut *writer,
            Via::Reader => &mut *reader,
        };
        let answer = run(connection, args);
        let number = || -> i64 {
            answer
                .strip_prefix(':')
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{args:?}: {answer}"))
        };
        if let Some(ttl) = expected.strip_prefix("TTL_") {
            let ttl: i64 = ttl.parse().unwrap();
            assert!((ttl - 10..=ttl).contains(&number()), "{args:?}: {answer}");
            // Compared between the fixtures by its pattern: time passes.
            answers.push(expected.to_string());
            continue;
        } else if *expected == "TIME" {
            // Two bulk strings: Unix seconds and microseconds.
            let parts: Vec<&str> = answer.trim_matches(['[', ']']).split(',').collect();
            assert_eq!(parts.len(), 2, "{answer}");
            let seconds: u64 = parts[0].trim_matches('"').parse().unwrap();
            let micros: u64 = parts[1].trim_matches('"').parse().unwrap();
            assert!(seconds > 1_700_000_000 && micros < 1_000_000, "{answer}");
            answers.push("TIME".into());
            continue;
        } else if let Some(choices) = expected.strip_prefix("ONE_OF ") {
            let key = answer.trim_matches('"');
            assert!(choices.split(' ').any(|c| c == key), "{args:?}: {answer}");
            answers.push(expected.to_string());
            continue;
        } else if let Some(sections) = expected.strip_prefix("INFO") {
            // Exactly the sections asked for, in Redis's order.
            let headers: Vec<&str> = answer
                .trim_matches('"')
                .split("\\r\\n")
                .filter_map(|line| line.strip_prefix("# "))
                .collect();
            let wanted: Vec<&str> = sections.split_whitespace().collect();
            assert_eq!(headers, wanted, "{args:?}: {answer}");
            answers.push(expected.to_string());
            continue;
        } else if *expected == "EXPIRETIME_NEAR" {
            // PSETEX 1,000,000 ms from about now.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let at = number();
            assert!((now + 990..=now + 1001).contains(&at), "{args:?}: {answer}");
            answers.push(expected.to_string());
            continue;
        } else {
            assert_eq!(answer, *expected, "{args:?}");
        }
        answers.push(answer);
    }
    answers
}

/// The flatbuffers operations that mirror Redis commands (IncrBy, Expire,
/// Rename, MSetIfAbsent), through the Rust client: writes through
/// `writer`'s node, reads through `reader`'s. Returns every answer, shown
/// as text (TTLs as a bound), after checking each against its expectation.
fn run_flatbuffers_table(writer: &TestNode, reader: &TestNode) -> Vec<String> {
    use tinkerdb_client::{Client, ClientConfig, ClientError, ExpireCondition, RenameKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let connect = |node: &TestNode| {
            let config =
                ClientConfig::new(node.addr.to_string()).request_timeout(Duration::from_secs(30));
            Client::connect(config)
        };
        let (writer, reader) = (
            connect(writer).await.unwrap(),
            connect(reader).await.unwrap(),
        );
        let mut answers = Vec::new();
        let mut check = |what: &str, answer: String, expected: &str| {
            assert_eq!(answer, expected, "{what}");
            answers.push(answer);
        };
        fn code<T>(result: Result<T, ClientError>) -> String {
            match result {
                Ok(_) => "ok".to_string(),
                Err(error) => format!("{:?}", error.code()),
            }
        }
        let now = std::time::SystemTime::now();
        let secs = |n: u64| now + Duration::from_secs(n);
        writer.set("f1", "5").await.unwrap();
        check(
            "incr",
            format!("{:?}", writer.incr_by("f1", 10).await),
            "Ok(15)",
        );
        check(
            "decr",
            format!("{:?}", writer.incr_by("f1", -20).await),
            "Ok(-5)",
        );
        check(
            "new",
            format!("{:?}", writer.incr_by("fnew", 1).await),
            "Ok(1)",
        );
        writer.set("fs", "abc").await.unwrap();
        check(
            "nan",
            code(writer.incr_by("fs", 1).await),
            "Some(NotAnInteger)",
        );
        check(
            "overflow",
            code(writer.incr_by("f1", i64::MIN).await),
            "Some(NotAnInteger)",
        );
        let expire = |key: &'static str, at, condition| writer.expire_at(key, at, condition);
        check(
            "expire",
            format!(
                "{:?}",
                expire("f1", secs(100), ExpireCondition::Always).await
            ),
            "Ok(true)",
        );
        let ttl = reader
            .get("f1")
            .await
            .unwrap()
            .unwrap()
            .ttl
            .unwrap()
            .as_secs();
        check(
            "ttl",
            format!("ttl {}", (90..=100).contains(&ttl)),
            "ttl true",
        );
        check(
            "nx",
            format!(
                "{:?}",
                expire("f1", secs(200), ExpireCondition::IfNone).await
            ),
            "Ok(false)",
        );
        check(
            "gt",
            format!(
                "{:?}",
                expire("f1", secs(200), ExpireCondition::IfLater).await
            ),
            "Ok(true)",
        );
        check(
            "lt",
            format!(
                "{:?}",
                expire("f1", secs(300), ExpireCondition::IfEarlier).await
            ),
            "Ok(false)",
        );
        check(
            "persist",
            format!("{:?}", writer.persist("f1").await),
            "Ok(true)",
        );
        check(
            "persist again",
            format!("{:?}", writer.persist("f1").await),
            "Ok(false)",
        );
        check(
            "missing",
            format!(
                "{:?}",
                expire("nokey", secs(9), ExpireCondition::Always).await
            ),
            "Ok(false)",
        );
        check(
            "past",
            format!(
                "{:?}",
                expire(
                    "fnew",
                    secs(0) - Duration::from_secs(5),
                    ExpireCondition::Always
                )
                .await
            ),
            "Ok(true)",
        );
        check(
            "deleted",
            format!("{:?}", reader.get("fnew").await.map(|v| v.is_some())),
            "Ok(false)",
        );
        // ta, t1, t4 and td live on core 0's shard, tb on core 1's (see
        // `table_keys_share_a_shard`).
        check(
            "rename missing",
            code(writer.rename("ta", "t1").await),
            "Some(NoSuchKey)",
        );
        writer.set("ta", "v").await.unwrap();
        check(
            "renamenx",
            format!(
                "{:?}",
                writer
                    .rename_with("ta", "t1", RenameKind::RenameIfAbsent)
                    .await
            ),
            "Ok(true)",
        );
        check(
            "copy",
            format!(
                "{:?}",
                writer.rename_with("t1", "t4", RenameKind::Copy).await
            ),
            "Ok(true)",
        );
        check(
            "copy again",
            format!(
                "{:?}",
                writer.rename_with("t1", "t4", RenameKind::Copy).await
            ),
            "Ok(false)",
        );
        check(
            "copy replace",
            format!(
                "{:?}",
                writer
                    .rename_with("t1", "t4", RenameKind::CopyReplace)
                    .await
            ),
            "Ok(true)",
        );
        check(
            "copy self",
            code(writer.rename_with("t1", "t1", RenameKind::Copy).await),
            "Some(InvalidArgument)",
        );
        check(
            "cross",
            code(writer.rename("t1", "tb").await),
            "Some(CrossShard)",
        );
        check(
            "moved",
            format!(
                "{:?}",
                reader
                    .mget(&["ta", "t1", "t4"])
                    .await
                    .map(|v| v.iter().map(Option::is_some).collect::<Vec<_>>())
            ),
            "Ok([false, true, true])",
        );
        check(
            "msetnx",
            format!(
                "{:?}",
                writer.mset_if_absent(&[("ta", "1"), ("td", "2")]).await
            ),
            "Ok(true)",
        );
        check(
            "msetnx again",
            format!(
                "{:?}",
                writer.mset_if_absent(&[("td", "x"), ("t5", "y")]).await
            ),
            "Ok(false)",
        );
        check(
            "msetnx cross",
            code(writer.mset_if_absent(&[("t5", "1"), ("tb", "2")]).await),
            "Some(CrossShard)",
        );
        // With the pipeline's four counters, run before.
        check("count", format!("{:?}", reader.count().await), "Ok(10)");
        let keys = ["f1", "fs", "t1", "t4", "ta", "td"];
        check(
            "cleanup",
            format!("{:?}", writer.delete(&keys).await),
            "Ok(6)",
        );
        answers
    })
}

/// A pipeline of writes and reads of a few keys, answered in order: 200
/// INCRs over 4 keys with a GET after every tenth, in one pipeline.
fn run_pipeline(writer: &mut redis::Connection) -> Vec<String> {
    let mut pipeline = redis::pipe();
    for i in 0..200 {
        pipeline.cmd("INCR").arg(format!("p{}", i % 4));
        if i % 10 == 9 {
            pipeline.cmd("GET").arg(format!("p{}", i % 4));
        }
    }
    let values: Vec<Value> = pipeline.query(writer).unwrap();
    let answers: Vec<String> = values.iter().map(show).collect();
    // Every INCR saw the ones before it, and every GET the INCR before it.
    let mut counts = [0i64; 4];
    let mut expected = Vec::new();
    for i in 0..200 {
        counts[i % 4] += 1;
        expected.push(format!(":{}", counts[i % 4]));
        if i % 10 == 9 {
            expected.push(format!("\"{}\"", counts[i % 4]));
        }
    }
    assert_eq!(answers, expected);
    answers
}

fn connect(node: &TestNode) -> redis::Connection {
    let client = redis::Client::open(format!("redis://{}/", node.resp_addr)).unwrap();
    let connection = client.get_connection().unwrap();
    connection
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    connection
}

fn three_node_cluster() -> Vec<TestNode> {
    let ports: Vec<u16> = (0..3).map(|_| common::free_port_block(1)).collect();
    let peers = (1..=3)
        .map(|id| format!("{id}=127.0.0.1:{}", ports[id - 1]))
        .collect::<Vec<_>>()
        .join(",");
    let starting: Vec<_> = (1..=3)
        .map(|id| {
            let args = vec![
                "--node-id".to_string(),
                id.to_string(),
                "--peers".to_string(),
                peers.clone(),
            ];
            TestNode::spawn(CORES, "", &common::fresh_dir(), &[], &args, None)
        })
        .collect();
    starting
        .into_iter()
        .map(|node| {
            node.wait_ready()
                .expect("a cluster node exited before it was ready")
        })
        .collect()
}

/// Waits until every group has a leader (the first writes would otherwise
/// wait out an election inside the table's commands, which is fine, but
/// makes a slow machine's failure harder to read).
fn wait_for_leaders(node: &TestNode) {
    let url = format!("http://{}/v1/cluster", node.admin_addr);
    let ready = common::eventually(Duration::from_secs(60), || {
        let Ok(response) = reqwest::blocking::get(&url) else {
            return false;
        };
        let Ok(body) = response.json::<serde_json::Value>() else {
            return false;
        };
        body["shards"].as_array().is_some_and(|shards| {
            shards.len() == CORES && shards.iter().all(|shard| shard["leader"].is_u64())
        })
    });
    assert!(ready, "the groups elected no leaders within 60 s");
}

#[test]
fn standalone_and_cluster_give_the_same_answers() {
    let standalone = TestNode::start(CORES);
    let mut writer = connect(&standalone);
    let mut reader = connect(&standalone);
    let standalone_answers = (
        run_table(&mut writer, &mut reader),
        run_pipeline(&mut writer),
        run_flatbuffers_table(&standalone, &standalone),
    );
    drop(standalone);

    let cluster = three_node_cluster();
    wait_for_leaders(&cluster[0]);
    let mut writer = connect(&cluster[2]);
    let mut reader = connect(&cluster[0]);
    let cluster_answers = (
        run_table(&mut writer, &mut reader),
        run_pipeline(&mut writer),
        run_flatbuffers_table(&cluster[2], &cluster[0]),
    );
    assert_eq!(cluster_answers, standalone_answers);

    // Every replica applied the same writes: node 2 answers the pipeline's
    // counters too, linearizably and (after READONLY) from its own replica.
    let mut other = connect(&cluster[1]);
    let linearizable: Vec<String> = (0..4)
        .map(|i| run(&mut other, &["GET", &format!("p{i}")]))
        .collect();
    assert_eq!(linearizable, vec!["\"50\""; 4]);
    assert_eq!(run(&mut other, &["READONLY"]), "OK");
    let settled = common::eventually(Duration::from_secs(30), || {
        (0..4).all(|i| run(&mut other, &["GET", &format!("p{i}")]) == "\"50\"")
    });
    assert!(
        settled,
        "node 2's replica never caught up with the pipeline"
    );
    assert_eq!(run(&mut other, &["READWRITE"]), "OK");
}

#[test]
fn redis_cli_works_against_a_follower_of_a_cluster() {
    let cluster = three_node_cluster();
    wait_for_leaders(&cluster[0]);
    let cli = |node: &TestNode, args: &[&str]| -> String {
        let output = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &node.resp_addr.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli (Debian's redis-tools) is installed by scripts/test.sh");
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    // Whoever leads each group, some keys' leaders are elsewhere: write 20
    // keys through each node, read all 60 through every node.
    let mut written = BTreeMap::new();
    for (index, node) in cluster.iter().enumerate() {
        for i in 0..20 {
            let key = format!("cli:{index}:{i}");
            let value = format!("v{index}-{i}");
            assert_eq!(cli(node, &["SET", &key, &value]), "OK");
            written.insert(key, value);
        }
    }
    for node in &cluster {
        for (key, value) in &written {
            assert_eq!(&cli(node, &["GET", key]), value);
        }
        assert_eq!(cli(node, &["DBSIZE"]), "60");
    }
    assert_eq!(cli(&cluster[1], &["INCRBY", "cli:n", "5"]), "5");
    assert_eq!(cli(&cluster[2], &["INCRBY", "cli:n", "5"]), "10");
}
