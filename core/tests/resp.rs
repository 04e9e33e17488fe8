//! The Redis protocol listener, driven by the `redis` crate and by
//! `redis-cli` (Debian's redis-tools) against a real node.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Instant;

use common::TestNode;
use redis::{Commands, Value};

fn connect(node: &TestNode) -> redis::Connection {
    redis::Client::open(format!("redis://{}/", node.resp_addr))
        .unwrap()
        .get_connection()
        .unwrap()
}

#[test]
fn string_commands_behave_like_redis() {
    let node = TestNode::start(2);
    let mut redis = connect(&node);
    let pong: String = redis::cmd("PING").query(&mut redis).unwrap();
    assert_eq!(pong, "PONG");
    let echo: String = redis::cmd("ECHO").arg("hi").query(&mut redis).unwrap();
    assert_eq!(echo, "hi");
    let _: () = redis.set("k", "v").unwrap();
    assert_eq!(
        redis.get::<_, Option<String>>("k").unwrap().as_deref(),
        Some("v")
    );
    assert_eq!(redis.get::<_, Option<String>>("missing").unwrap(), None);
    // SET options.
    let nx: Option<String> = redis::cmd("SET")
        .arg("k")
        .arg("w")
        .arg("NX")
        .query(&mut redis)
        .unwrap();
    assert_eq!(nx, None);
    let xx: Option<String> = redis::cmd("SET")
        .arg("k")
        .arg("w")
        .arg("XX")
        .arg("GET")
        .query(&mut redis)
        .unwrap();
    assert_eq!(xx.as_deref(), Some("v"));
    // The time left is checked against the time measured since before the
    // SET was sent, not a fixed margin: a busy machine may take seconds.
    let sent = Instant::now();
    let _: () = redis::cmd("SET")
        .arg("t")
        .arg("1")
        .arg("EX")
        .arg(100)
        .query(&mut redis)
        .unwrap();
    let ttl: i64 = redis.ttl("t").unwrap();
    // TTL is in whole seconds (rounded either way): one second of slack.
    let elapsed = sent.elapsed().as_secs() as i64;
    assert!(
        (99 - elapsed..=100).contains(&ttl),
        "{ttl} after {elapsed} s"
    );
    let _: () = redis::cmd("SET")
        .arg("t")
        .arg("2")
        .arg("KEEPTTL")
        .query(&mut redis)
        .unwrap();
    let pttl: i64 = redis.pttl("t").unwrap();
    let elapsed = sent.elapsed().as_millis() as i64;
    // KEEPTTL kept the deadline of the first SET (the server's clock has
    // millisecond granularity).
    assert!(
        (100_000 - elapsed - 5..=100_000).contains(&pttl),
        "{pttl} after {elapsed} ms"
    );
    assert_eq!(redis.ttl::<_, i64>("k").unwrap(), -1);
    assert_eq!(redis.ttl::<_, i64>("missing").unwrap(), -2);
    assert_eq!(redis.persist::<_, i64>("t").unwrap(), 1);
    assert_eq!(redis.ttl::<_, i64>("t").unwrap(), -1);
    assert_eq!(redis.expire::<_, i64>("t", 50).unwrap(), 1);
    assert_eq!(redis.expire::<_, i64>("missing", 50).unwrap(), 0);
    let bad: redis::RedisResult<()> = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .arg("EX")
        .arg(0)
        .query(&mut redis);
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("invalid expire time in 'set' command"));
    let syntax: redis::RedisResult<()> = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .arg("NX")
        .arg("XX")
        .query(&mut redis);
    assert!(syntax.unwrap_err().to_string().contains("syntax error"));
    // Counters, append, lengths.
    assert_eq!(redis.incr::<_, _, i64>("n", 1).unwrap(), 1);
    assert_eq!(
        redis::cmd("INCRBY")
            .arg("n")
            .arg(41)
            .query::<i64>(&mut redis)
            .unwrap(),
        42
    );
    assert_eq!(
        redis::cmd("DECR")
            .arg("n")
            .query::<i64>(&mut redis)
            .unwrap(),
        41
    );
    assert_eq!(
        redis::cmd("DECRBY")
            .arg("n")
            .arg(50)
            .query::<i64>(&mut redis)
            .unwrap(),
        -9
    );
    let not_integer: redis::RedisResult<i64> = redis::cmd("INCR").arg("k").query(&mut redis);
    assert!(not_integer
        .unwrap_err()
        .to_string()
        .contains("value is not an integer or out of range"));
    let _: () = redis.set("big", i64::MAX).unwrap();
    let overflow: redis::RedisResult<i64> = redis::cmd("INCR").arg("big").query(&mut redis);
    assert!(overflow
        .unwrap_err()
        .to_string()
        .contains("increment or decrement would overflow"));
    assert_eq!(redis.append::<_, _, i64>("s", "abc").unwrap(), 3);
    assert_eq!(redis.append::<_, _, i64>("s", "de").unwrap(), 5);
    assert_eq!(
        redis::cmd("STRLEN")
            .arg("s")
            .query::<i64>(&mut redis)
            .unwrap(),
        5
    );
    assert_eq!(
        redis::cmd("GETDEL")
            .arg("s")
            .query::<Option<String>>(&mut redis)
            .unwrap()
            .as_deref(),
        Some("abcde")
    );
    assert_eq!(redis.exists::<_, i64>("s").unwrap(), 0);
    assert_eq!(
        redis::cmd("SETNX")
            .arg("s")
            .arg("1")
            .query::<i64>(&mut redis)
            .unwrap(),
        1
    );
    assert_eq!(
        redis::cmd("SETNX")
            .arg("s")
            .arg("2")
            .query::<i64>(&mut redis)
            .unwrap(),
        0
    );
}

#[test]
fn multi_key_commands_scan_and_tenants() {
    let node = TestNode::start_with_config(2, "databases = 4\n[[tenants]]\nname = \"acme\"\n");
    let mut redis = connect(&node);
    let pairs: Vec<(String, String)> = (0..300)
        .map(|i| (format!("key:{i}"), i.to_string()))
        .collect();
    let _: () = redis.mset(&pairs).unwrap();
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg("key:1")
        .arg("nope")
        .arg("key:299")
        .query(&mut redis)
        .unwrap();
    assert_eq!(values, [Some("1".into()), None, Some("299".into())]);
    assert_eq!(
        redis::cmd("EXISTS")
            .arg("key:1")
            .arg("key:1")
            .arg("nope")
            .query::<i64>(&mut redis)
            .unwrap(),
        2
    );
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut redis).unwrap(), 300);
    let mut keys: Vec<String> = redis.keys("key:1?").unwrap();
    keys.sort();
    assert_eq!(keys.len(), 10);
    // SCAN in small steps visits every key once.
    let mut cursor = 0u64;
    let mut seen = std::collections::HashSet::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("key:*")
            .arg("COUNT")
            .arg(20)
            .query(&mut redis)
            .unwrap();
        for key in batch {
            assert!(seen.insert(key), "duplicate");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen.len(), 300);
    let invalid: redis::RedisResult<Value> = redis::cmd("SCAN").arg("abc").query(&mut redis);
    assert!(invalid.unwrap_err().to_string().contains("invalid cursor"));
    assert_eq!(
        redis::cmd("UNLINK")
            .arg("key:1")
            .arg("key:2")
            .arg("nope")
            .query::<i64>(&mut redis)
            .unwrap(),
        2
    );
    // SELECT n is database n of the connection's tenant; AUTH names a
    // tenant (its database 0).
    let _: () = redis::cmd("SELECT").arg(1).query(&mut redis).unwrap();
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut redis).unwrap(), 0);
    let _: () = redis.set("key:5", "db1").unwrap();
    for out_of_range in ["4", "-1", "256"] {
        let refused: redis::RedisResult<()> =
            redis::cmd("SELECT").arg(out_of_range).query(&mut redis);
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .contains("DB index is out of range"),
            "SELECT {out_of_range}"
        );
    }
    let _: () = redis::cmd("AUTH")
        .arg("acme")
        .arg("any")
        .query(&mut redis)
        .unwrap();
    assert_eq!(redis.get::<_, Option<String>>("key:5").unwrap(), None);
    // acme's database 1 is not default's.
    let _: () = redis::cmd("SELECT").arg(1).query(&mut redis).unwrap();
    assert_eq!(redis.get::<_, Option<String>>("key:5").unwrap(), None);
    let _: () = redis.set("acme:1", "kept").unwrap();
    let wrong: redis::RedisResult<()> = redis::cmd("AUTH").arg("ghost").arg("pw").query(&mut redis);
    assert!(wrong.unwrap_err().to_string().contains("WRONGPASS"));
    let _: () = redis::cmd("AUTH")
        .arg("default")
        .arg("any")
        .query(&mut redis)
        .unwrap();
    assert_eq!(
        redis.get::<_, Option<String>>("key:5").unwrap().as_deref(),
        Some("5")
    );
    let info: String = redis::cmd("INFO")
        .arg("keyspace")
        .query(&mut redis)
        .unwrap();
    assert!(
        info.contains("db0:keys=298,") && info.contains("db1:keys=1,"),
        "{info}"
    );
    // FLUSHDB empties only the selected database.
    let _: () = redis::cmd("FLUSHDB").query(&mut redis).unwrap();
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut redis).unwrap(), 0);
    let _: () = redis::cmd("SELECT").arg(1).query(&mut redis).unwrap();
    assert_eq!(
        redis.get::<_, Option<String>>("key:5").unwrap().as_deref(),
        Some("db1")
    );
    // FLUSHALL empties every database of the tenant, never another's.
    let _: () = redis::cmd("SELECT").arg(0).query(&mut redis).unwrap();
    let _: () = redis.set("key:6", "again").unwrap();
    let _: () = redis::cmd("FLUSHALL").query(&mut redis).unwrap();
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut redis).unwrap(), 0);
    let _: () = redis::cmd("SELECT").arg(1).query(&mut redis).unwrap();
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut redis).unwrap(), 0);
    let _: () = redis::cmd("AUTH")
        .arg("acme")
        .arg("any")
        .query(&mut redis)
        .unwrap();
    let _: () = redis::cmd("SELECT").arg(1).query(&mut redis).unwrap();
    assert_eq!(
        redis.get::<_, Option<String>>("acme:1").unwrap().as_deref(),
        Some("kept")
    );
}

/// Databases are keyspaces of their own on disk too, and share their
/// tenant's quota: a crash keeps database 3's keys apart from database 0's,
/// and a tenant of 4 keys cannot hold more by spreading them over databases.
#[test]
fn databases_survive_a_crash_and_share_the_tenant_quota() {
    let config = "[[tenants]]\nname = \"small\"\nmax_keys = 4\n";
    let node = TestNode::start_with_config(2, config);
    let mut redis = connect(&node);
    let _: () = redis.set("k", "db0").unwrap();
    let _: () = redis::cmd("SELECT").arg(3).query(&mut redis).unwrap();
    let _: () = redis.set("k", "db3").unwrap();
    let _: () = redis.set("only3", "x").unwrap();
    let _: () = redis::cmd("AUTH")
        .arg("small")
        .arg("pw")
        .query(&mut redis)
        .unwrap();
    let mut refused = 0;
    for database in 0..4 {
        let _: () = redis::cmd("SELECT")
            .arg(database)
            .query(&mut redis)
            .unwrap();
        for key in ["a", "b"] {
            let written: redis::RedisResult<()> = redis.set(key, "v");
            if let Err(error) = written {
                assert!(error.to_string().contains("quota"), "{error}");
                refused += 1;
            }
        }
    }
    // 8 writes of new keys against a quota of 4 keys split over 2 cores:
    // at least 4 are refused (a core's share can refuse a little early).
    assert!(refused >= 4, "refused {refused}");
    // Multi-key writes of database 3, each one WAL record: RENAME and
    // MSETNX of keys on one shard (found through the slot map).
    let map = tinkerdb_core::slots::SlotMap::contiguous(2);
    let core_of = |key: &str| map.owner(tinkerdb_storage::hash_slot("default/3", key.as_bytes()));
    let same: Vec<String> = (0..)
        .map(|n| format!("g{n}"))
        .filter(|key| core_of(key) == core_of("only3"))
        .take(3)
        .collect();
    let _: () = redis::cmd("AUTH")
        .arg("default")
        .arg("pw")
        .query(&mut redis)
        .unwrap();
    let _: () = redis::cmd("SELECT").arg(3).query(&mut redis).unwrap();
    let _: () = redis::cmd("RENAME")
        .arg("only3")
        .arg(&same[0])
        .query(&mut redis)
        .unwrap();
    let written: i64 = redis::cmd("MSETNX")
        .arg(&same[1])
        .arg("one")
        .arg(&same[2])
        .arg("two")
        .query(&mut redis)
        .unwrap();
    assert_eq!(written, 1);
    let dir = node.crash();
    let node = TestNode::start_in(2, config, &dir, &[]);
    let mut redis = connect(&node);
    assert_eq!(
        redis.get::<_, Option<String>>("k").unwrap().as_deref(),
        Some("db0")
    );
    assert_eq!(redis.get::<_, Option<String>>("only3").unwrap(), None);
    let _: () = redis::cmd("SELECT").arg(3).query(&mut redis).unwrap();
    assert_eq!(
        redis.get::<_, Option<String>>("k").unwrap().as_deref(),
        Some("db3")
    );
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg("only3")
        .arg(&same[0])
        .arg(&same[1])
        .arg(&same[2])
        .query(&mut redis)
        .unwrap();
    assert_eq!(
        values,
        [
            None,
            Some("x".into()),
            Some("one".into()),
            Some("two".into())
        ]
    );
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut redis).unwrap(), 4);
    let _: () = redis::cmd("AUTH")
        .arg("small")
        .arg("pw")
        .query(&mut redis)
        .unwrap();
    let mut total = 0;
    for database in 0..4 {
        let _: () = redis::cmd("SELECT")
            .arg(database)
            .query(&mut redis)
            .unwrap();
        total += redis::cmd("DBSIZE").query::<i64>(&mut redis).unwrap();
    }
    assert_eq!(total, 8 - refused);
    assert!(total <= 4);
}

#[test]
fn hello_client_info_and_unknown_commands() {
    let node = TestNode::start(1);
    let mut redis = connect(&node);
    let hello: Value = redis::cmd("HELLO").arg(2).query(&mut redis).unwrap();
    assert!(format!("{hello:?}").contains("tinkerdb"));
    let noproto: redis::RedisResult<Value> = redis::cmd("HELLO").arg(4).query(&mut redis);
    assert!(noproto
        .unwrap_err()
        .to_string()
        .contains("unsupported protocol version"));
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("tester")
        .query(&mut redis)
        .unwrap();
    let name: String = redis::cmd("CLIENT")
        .arg("GETNAME")
        .query(&mut redis)
        .unwrap();
    assert_eq!(name, "tester");
    let info: String = redis::cmd("CLIENT").arg("INFO").query(&mut redis).unwrap();
    assert!(info.contains("name=tester"));
    let server_info: String = redis::cmd("INFO").query(&mut redis).unwrap();
    assert!(server_info.contains("redis_version:"));
    let unknown: redis::RedisResult<()> = redis::cmd("FOOBAR").arg("x").query(&mut redis);
    assert!(unknown
        .unwrap_err()
        .to_string()
        .contains("unknown command 'FOOBAR', with args beginning with: 'x'"));
    let arity: redis::RedisResult<()> = redis::cmd("GET").query(&mut redis);
    assert!(arity
        .unwrap_err()
        .to_string()
        .contains("wrong number of arguments for 'get' command"));
    // The connection survived every error.
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut redis).unwrap(),
        "PONG"
    );
}

/// Raw bytes: exact replies, RESP3 nulls, pipelining, protocol errors.
#[test]
fn raw_replies_are_byte_exact() {
    let node = TestNode::start(2);
    let mut stream = TcpStream::connect(node.resp_addr).unwrap();
    let mut send_and_expect = |request: &[u8], expected: &[u8]| {
        stream.write_all(request).unwrap();
        let mut reply = vec![0u8; expected.len()];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&reply),
            String::from_utf8_lossy(expected)
        );
    };
    send_and_expect(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n", b"+OK\r\n");
    send_and_expect(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n", b"$1\r\n1\r\n");
    send_and_expect(b"*2\r\n$3\r\nGET\r\n$1\r\nz\r\n", b"$-1\r\n");
    send_and_expect(b"PING\r\n", b"+PONG\r\n");
    // A pipeline of 100 commands on keys of both cores, answered in order.
    let mut pipeline = Vec::new();
    let mut expected = Vec::new();
    for i in 0..100 {
        let key = format!("p{i}");
        pipeline
            .extend(format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$1\r\nx\r\n", key.len()).bytes());
        pipeline.extend(format!("*2\r\n$4\r\nINCR\r\n${}\r\n{key}c\r\n", key.len() + 1).bytes());
        expected.extend(b"+OK\r\n:1\r\n");
    }
    send_and_expect(&pipeline, &expected);
    send_and_expect(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n", b"%7\r\n");
    let mut rest = [0u8; 512];
    let _ = stream.read(&mut rest).unwrap();
    let mut stream3 = stream;
    stream3
        .write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nz\r\n")
        .unwrap();
    let mut null = [0u8; 3];
    stream3.read_exact(&mut null).unwrap();
    assert_eq!(&null, b"_\r\n");
    // Protocol errors: an error, then the connection is closed.
    for bad in [
        &b"*99999999999\r\n"[..],
        b"*1\r\n$999999999999\r\n",
        b"*1\r\n+x\r\n",
    ] {
        let mut stream = TcpStream::connect(node.resp_addr).unwrap();
        stream.write_all(bad).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("-ERR Protocol error"), "{reply:?}");
    }
}

#[test]
fn large_values_and_long_pipelines_grow_the_buffer() {
    let node = TestNode::start(2);
    let mut redis = connect(&node);
    for size in [8 << 10, 100 << 10, 3 << 20] {
        let value = vec![b'v'; size];
        let _: () = redis.set("big", &value).unwrap();
        let read: Vec<u8> = redis.get("big").unwrap();
        assert_eq!(read.len(), size);
    }
    let mut pipe = redis::pipe();
    for i in 0..3000 {
        pipe.set(format!("k{i}"), vec![b'x'; 100]).ignore();
    }
    let _: () = pipe.query(&mut redis).unwrap();
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut redis).unwrap(), 3001);
}

#[test]
fn redis_cli_works_including_error_paths() {
    let node = TestNode::start(2);
    let cli = |args: &[&str]| {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &node.resp_addr.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli (Debian package redis-tools) must be installed");
        (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            output.status.success(),
        )
    };
    assert_eq!(cli(&["set", "greeting", "hello"]), ("OK\n".into(), true));
    assert_eq!(cli(&["get", "greeting"]).0, "hello\n");
    assert_eq!(cli(&["incr", "counter"]).0, "1\n");
    assert_eq!(cli(&["dbsize"]).0, "2\n");
    assert!(cli(&["get", "greeting", "extra"])
        .0
        .contains("wrong number of arguments"));
    assert!(cli(&["nosuchcommand"])
        .0
        .contains("unknown command 'nosuchcommand'"));
    assert!(cli(&["incr", "greeting"]).0.contains("not an integer"));
    assert!(cli(&["ping"]).0.contains("PONG"));
}
