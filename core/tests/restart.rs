//! Restarts against a real node: a crash loop on the same ports with pooled
//! clients of every protocol connected, graceful shutdown on SIGTERM, and
//! reads that never show what a crash takes back (recorded histories
//! across `kill -9`, checked for linearizability, with negative controls).

mod common;
#[path = "../../replication/tests/common/register.rs"]
mod register;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fresh_dir, NodePorts, TestNode};
use register::{linearizable, Action, Op, UNKNOWN};
use tinkerdb_client::{Client, ClientConfig};

/// Crash cycles of the crash loop (the issue asks for at least 20).
const CRASH_LOOP_CYCLES: usize = 20;
/// Bound on one restart, from spawning the process to its ready line. The
/// target is 2 s (figures are printed); the bound is looser so that a
/// loaded machine does not fail the test, and far below the ~60 s
/// TIME_WAIT that used to block the ports.
const RESTART_READY_BOUND: Duration = Duration::from_secs(10);

fn client_config(addr: std::net::SocketAddr) -> ClientConfig {
    ClientConfig::new(addr.to_string())
        .connections(4)
        .request_timeout(Duration::from_secs(5))
}

/// `(last acknowledged, highest attempted)` counter per key.
type Acked = Arc<Mutex<HashMap<String, (u64, u64)>>>;

/// Notes an attempt at writing the next counter of `key`; returns it.
fn attempt(acked: &Acked, key: &str) -> u64 {
    let mut map = acked.lock().unwrap();
    let entry = map.entry(key.to_owned()).or_insert((0, 0));
    entry.1 += 1;
    entry.1
}

fn acknowledge(acked: &Acked, key: &str, value: u64) {
    let mut map = acked.lock().unwrap();
    let entry = map.get_mut(key).unwrap();
    entry.0 = entry.0.max(value);
}

/// Every key holds its last acknowledged counter or a later attempt.
async fn check_acknowledged(client: &Client, acked: &Acked, cycle: usize) -> usize {
    let expected = acked.lock().unwrap().clone();
    for (key, (acknowledged, attempted)) in &expected {
        let found: u64 = client.get(key).await.unwrap().map_or(0, |value| {
            std::str::from_utf8(&value.value).unwrap().parse().unwrap()
        });
        assert!(
            found >= *acknowledged && found <= *attempted,
            "cycle {cycle}: {key} holds {found}, acknowledged {acknowledged}, attempted up to {attempted}"
        );
    }
    expected.len()
}

/// `SET key value` for each pair, as one RESP pipeline.
fn resp_sets(pairs: &[(String, String)]) -> Vec<u8> {
    let mut request = Vec::new();
    for (key, value) in pairs {
        request.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                key.len(),
                value.len()
            )
            .as_bytes(),
        );
    }
    request
}

/// RESP writer: pipelines of `SET` on one connection, reconnecting when the
/// node goes away. Runs until `stop`.
fn resp_writer(port: u16, acked: Acked, stop: Arc<AtomicBool>) -> usize {
    let mut acknowledged = 0;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        'connection: while !stop.load(Ordering::Relaxed) {
            round += 1;
            let batch: Vec<(String, u64)> = (0..16)
                .map(|i| {
                    let key = format!("resp-{}", (round * 16 + i) % 40);
                    let value = attempt(&acked, &key);
                    (key, value)
                })
                .collect();
            let pairs: Vec<(String, String)> = batch
                .iter()
                .map(|(key, value)| (key.clone(), value.to_string()))
                .collect();
            if writer.write_all(&resp_sets(&pairs)).is_err() {
                break;
            }
            for (key, value) in &batch {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(n) if n > 0 && line == "+OK\r\n" => {
                        acknowledge(&acked, key, *value);
                        acknowledged += 1;
                    }
                    _ => break 'connection,
                }
            }
        }
    }
    acknowledged
}

/// HTTP writer: PUTs over one keep-alive client, until `stop`.
fn http_writer(port: u16, acked: Acked, stop: Arc<AtomicBool>) -> usize {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut acknowledged = 0;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("http-{}", n % 20);
        let value = attempt(&acked, &key);
        let url = format!("http://127.0.0.1:{port}/v1/tenants/default/keys/{key}");
        match client.put(url).body(value.to_string()).send() {
            Ok(response) if response.status().is_success() => {
                acknowledge(&acked, &key, value);
                acknowledged += 1;
            }
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    acknowledged
}

/// The crash loop: a node serving pooled, pipelining clients of
/// every protocol is killed with SIGKILL and started again at once on the
/// same ports, 20 times. Every restart must bind (the TIME_WAIT sockets of
/// its accepted connections used to block the ports for ~60 s) and be ready
/// quickly, and no acknowledged write may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_restarts_on_the_same_ports_at_once_and_loses_no_acknowledged_write() {
    let ports = NodePorts::free();
    let dir = fresh_dir();
    let config = "snapshot_after_wal_bytes = 1048576\n";
    let acked: Acked = Arc::default();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut ready_ms = Vec::new();
    let mut acknowledged = 0usize;
    let mut checked = 0usize;
    // One pooled client for the whole loop: it redials a broken connection.
    let mut pooled: Option<Client> = None;
    for cycle in 0..=CRASH_LOOP_CYCLES {
        let spawned = Instant::now();
        let node = TestNode::spawn(2, config, &dir, &[], &[], Some(ports))
            .wait_ready()
            .unwrap_or_else(|| panic!("cycle {cycle}: the node did not restart on its ports"));
        let ready = spawned.elapsed();
        assert!(
            ready < RESTART_READY_BOUND,
            "cycle {cycle}: ready after {ready:?}"
        );
        ready_ms.push(ready.as_millis() as u64);
        let client = match &pooled {
            Some(client) => client.clone(),
            None => {
                let client = Client::connect(client_config(node.addr)).await.unwrap();
                pooled = Some(client.clone());
                client
            }
        };
        checked += check_acknowledged(&client, &acked, cycle).await;
        if cycle == CRASH_LOOP_CYCLES {
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        // Flatbuffers: 8 writers sharing the pooled client, so requests
        // pipeline on its 4 connections.
        let mut writers = Vec::new();
        for writer in 0..8 {
            let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let mut done = 0usize;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("fb-{writer}-{}", n % 25);
                    let value = attempt(&acked, &key);
                    match client.set(&key, value.to_string()).await {
                        Ok(_) => {
                            acknowledge(&acked, &key, value);
                            done += 1;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
                done
            }));
        }
        let resp = {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || resp_writer(ports.resp, acked, stop))
        };
        let http = {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || http_writer(ports.admin, acked, stop))
        };
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(150 + seed % 350)).await;
        let kept = node.crash();
        assert_eq!(kept, dir);
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            acknowledged += writer.await.unwrap();
        }
        acknowledged += resp.join().unwrap();
        acknowledged += http.join().unwrap();
    }
    let mut sorted = ready_ms.clone();
    sorted.sort_unstable();
    eprintln!(
        "crash loop: {CRASH_LOOP_CYCLES} kill -9 cycles on fixed ports, every restart bound at once; \
         ready after median {} ms, max {} ms; {acknowledged} writes acknowledged over \
         flatbuffers, RESP and HTTP, {checked} key checks, 0 lost",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
    assert!(acknowledged > 0 && checked > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `SET key value` for each pair on a raw RESP connection without
/// reading the answers (a pipeline in flight).
fn resp_send_sets(stream: &mut TcpStream, pairs: &[(String, String)]) {
    stream.write_all(&resp_sets(pairs)).unwrap();
}

/// Reads everything until the node closes the connection.
fn read_to_close(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answers = String::new();
    stream.read_to_string(&mut answers).unwrap();
    answers
}

/// Holds every WAL flush this long, so writes are applied but not yet
/// acknowledged when the test acts.
const SLOW_FLUSH: (&str, &str) = ("TINKERDB_FAILPOINT_WAL_FLUSH_DELAY_MS", "300");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_what_is_in_flight_then_exits_0_and_keeps_it() {
    let dir = fresh_dir();
    let mut node = TestNode::start_in(2, "", &dir, &[SLOW_FLUSH]);
    // In flight at the signal: a RESP pipeline and concurrent client writes,
    // every one waiting for its (slow) WAL flush.
    let pairs: Vec<(String, String)> = (0..50)
        .map(|i| (format!("resp-{i}"), format!("v{i}")))
        .collect();
    let mut resp = TcpStream::connect(node.resp_addr).unwrap();
    resp_send_sets(&mut resp, &pairs);
    let client = Client::connect(client_config(node.addr)).await.unwrap();
    let writes: Vec<_> = (0..20)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.set(format!("fb-{i}"), format!("w{i}")).await })
        })
        .collect();
    // Let the requests reach the node (the flush holds their answers).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let signalled = Instant::now();
    node.signal("TERM");
    let answers = read_to_close(&mut resp);
    assert_eq!(
        answers,
        "+OK\r\n".repeat(pairs.len()),
        "every pipelined SET is answered before the connection closes"
    );
    for (i, write) in writes.into_iter().enumerate() {
        let outcome = write.await.unwrap();
        assert!(outcome.is_ok(), "fb-{i}: {outcome:?}");
    }
    let status = node
        .wait_exit(Duration::from_secs(10))
        .expect("the node exits after SIGTERM");
    let took = signalled.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "graceful shutdown exits 0: {status:?}"
    );
    let dir = node.into_dir();

    let node = TestNode::start_in(2, "", &dir, &[]);
    let client = Client::connect(client_config(node.addr)).await.unwrap();
    for (key, value) in &pairs {
        assert_eq!(
            client.get(key).await.unwrap().unwrap().value,
            value.as_bytes()
        );
    }
    for i in 0..20 {
        let value = client.get(format!("fb-{i}")).await.unwrap().unwrap();
        assert_eq!(value.value, format!("w{i}").as_bytes());
    }
    eprintln!(
        "SIGTERM with 70 writes in flight (300 ms flushes): all answered, exit 0 after {took:?}, all kept"
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_new_requests_get_shutting_down_and_a_second_signal_exits_at_once() {
    let dir = fresh_dir();
    // Flushes so slow that the drain cannot finish before the second signal.
    let mut node = TestNode::start_in(
        1,
        "shutdown_timeout_ms = 30000\n",
        &dir,
        &[("TINKERDB_FAILPOINT_WAL_FLUSH_DELAY_MS", "20000")],
    );
    let client = Client::connect(client_config(node.addr).request_timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    let pending = {
        let client = client.clone();
        tokio::spawn(async move { client.set("held", "v").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    node.signal("TERM");
    // The listener closes: new connections are refused, soon.
    let refused = common::eventually(Duration::from_secs(5), || {
        TcpStream::connect(node.addr).is_err()
    });
    assert!(refused, "the client listener still accepts after SIGTERM");
    assert!(node.is_running(), "the drain waits for the held write");
    let signalled = Instant::now();
    node.signal("TERM");
    let status = node
        .wait_exit(Duration::from_secs(5))
        .expect("a second signal exits at once");
    assert_eq!(status.code(), Some(128 + 15), "{status:?}");
    eprintln!(
        "second SIGTERM: exited {:?} after {:?}",
        status.code(),
        signalled.elapsed()
    );
    // The held write was never acknowledged.
    assert!(pending.await.unwrap().is_err());
    let _ = node.into_dir();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Keys of the recorded-history test; each takes at most
/// `register::MAX_OPS - CLIENTS` operations (the checker's bound).
const HISTORY_KEYS: usize = 24;
const HISTORY_CLIENTS: usize = 6;
const HISTORY_CRASHES: usize = 10;

/// One client's view of a key: the value it last saw and its version,
/// for compare-and-set.
#[derive(Clone, Copy)]
struct Seen {
    value: u64,
    version: u64,
}

/// Concurrent clients write, read and compare-and-set a few keys while the
/// node is killed with SIGKILL and restarted ten times; every operation is
/// recorded with call and return times (a monotonic clock of this process,
/// which outlives the node). Each key's whole history, across the crashes,
/// must be linearizable: a read that returned a value a crash then took back
/// would show up as a value appearing and vanishing. Flushes are slowed to
/// 20 ms so writes spend a long time applied but not yet durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_across_kill_9_are_linearizable() {
    let ports = NodePorts::free();
    let dir = fresh_dir();
    let clock = Instant::now();
    let now = move || clock.elapsed().as_nanos();
    let history: Arc<Mutex<Vec<Vec<Op>>>> = Arc::new(Mutex::new(vec![Vec::new(); HISTORY_KEYS]));
    let full = register::MAX_OPS - HISTORY_CLIENTS;
    let flush_delay = [("TINKERDB_FAILPOINT_WAL_FLUSH_DELAY_MS", "20")];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut cycles = 0;
    while cycles <= HISTORY_CRASHES {
        let node = TestNode::start_on(1, "", &dir, &flush_delay, &[], Some(ports));
        if cycles == HISTORY_CRASHES {
            // A last look: every key read once more after the last crash.
            let client = Client::connect(client_config(node.addr)).await.unwrap();
            for key in 0..HISTORY_KEYS {
                let invoked = now();
                let value = client.get(format!("k{key}")).await.unwrap();
                let read = value.map(|v| std::str::from_utf8(&v.value).unwrap().parse().unwrap());
                let mut history = history.lock().unwrap();
                if history[key].len() < register::MAX_OPS {
                    history[key].push(Op::read(read, invoked, now()));
                }
            }
            drop(node);
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for id in 0..HISTORY_CLIENTS {
            let client = Client::connect(client_config(node.addr).connections(1))
                .await
                .unwrap();
            let (history, stop) = (history.clone(), stop.clone());
            let mut seed = next() | 1;
            clients.push(tokio::spawn(async move {
                let mut random = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                let mut seen: HashMap<usize, Seen> = HashMap::new();
                let mut counter = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = (random() % HISTORY_KEYS as u64) as usize;
                    if history.lock().unwrap()[key].len() >= full {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    }
                    counter += 1;
                    let value = (cycles as u64) << 48 | (id as u64) << 32 | counter;
                    let name = format!("k{key}");
                    let invoked = now();
                    let op = match (random() % 3, seen.get(&key).copied()) {
                        (0, _) => match client.get(&name).await {
                            Ok(read) => {
                                let read = read.map(|v| {
                                    let value =
                                        std::str::from_utf8(&v.value).unwrap().parse().unwrap();
                                    seen.insert(
                                        key,
                                        Seen {
                                            value,
                                            version: v.version,
                                        },
                                    );
                                    value
                                });
                                Op::read(read, invoked, now())
                            }
                            // A failed read says nothing: not recorded.
                            Err(_) => break,
                        },
                        (1, Some(expected)) => {
                            let outcome = client
                                .compare_and_set(&name, expected.version, value.to_string(), None)
                                .await;
                            let (applied, returned) = match &outcome {
                                Ok(result) => (result.applied, now()),
                                Err(_) => (false, UNKNOWN),
                            };
                            if let Ok(result) = &outcome {
                                if result.applied {
                                    seen.insert(
                                        key,
                                        Seen {
                                            value,
                                            version: result.version,
                                        },
                                    );
                                }
                            }
                            Op {
                                action: Action::CompareAndSet {
                                    expected: Some(expected.value),
                                    new: value,
                                    applied,
                                },
                                invoked,
                                returned,
                            }
                        }
                        _ => {
                            let outcome = client.set(&name, value.to_string()).await;
                            if let Ok(version) = &outcome {
                                seen.insert(
                                    key,
                                    Seen {
                                        value,
                                        version: *version,
                                    },
                                );
                            }
                            Op::write(
                                value,
                                invoked,
                                if outcome.is_ok() { now() } else { UNKNOWN },
                            )
                        }
                    };
                    let failed = op.returned == UNKNOWN;
                    history.lock().unwrap()[key].push(op);
                    if failed {
                        break; // The node is gone: this client is done.
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300 + next() % 400)).await;
        let _ = node.crash();
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.await.unwrap();
        }
        cycles += 1;
    }
    let history = history.lock().unwrap().clone();
    let total: usize = history.iter().map(Vec::len).sum();
    let unknown = history
        .iter()
        .flatten()
        .filter(|op| op.returned == UNKNOWN)
        .count();
    let cas = history
        .iter()
        .flatten()
        .filter(|op| matches!(op.action, Action::CompareAndSet { .. }))
        .count();
    for (key, ops) in history.iter().enumerate() {
        assert!(
            linearizable(ops),
            "key k{key} is not linearizable across crashes: {ops:#?}"
        );
    }
    assert!(total >= 200, "too few operations recorded: {total}");
    eprintln!(
        "{total} operations ({cas} compare-and-sets, {unknown} with unknown outcome) on \
         {HISTORY_KEYS} keys by {HISTORY_CLIENTS} clients across {HISTORY_CRASHES} kill -9 \
         restarts: linearizable"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The durable-read wait, shown by its absence: a write is held in an
/// unflushed WAL batch (flushes delayed 2 s), another connection reads the
/// key, the node is killed, restarted, and the key read again. With the
/// wait, the first read does not answer before the crash (it waits for the
/// flush), and the history is linearizable; with the failpoint that skips
/// the wait (the negative control) the read returns the doomed value, which
/// then vanishes, and the checker must flag that history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_never_shows_a_write_that_a_crash_takes_back() {
    async fn scenario(skip_wait: bool) -> Vec<Op> {
        let clock = Instant::now();
        let now = || clock.elapsed().as_nanos();
        let dir = fresh_dir();
        let mut env = vec![("TINKERDB_FAILPOINT_WAL_FLUSH_DELAY_MS", "2000")];
        if skip_wait {
            env.push(("TINKERDB_FAILPOINT_READS_SKIP_DURABLE_WAIT", "1"));
        }
        let node = TestNode::start_in(1, "", &dir, &env);
        let config = client_config(node.addr)
            .connections(1)
            .request_timeout(Duration::from_secs(10));
        let writer = Client::connect(config.clone()).await.unwrap();
        let reader = Client::connect(config).await.unwrap();
        let mut ops = Vec::new();
        let invoked = now();
        let write = tokio::spawn(async move { writer.set("doomed", "1").await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let read_invoked = now();
        let read = tokio::time::timeout(Duration::from_millis(500), reader.get("doomed")).await;
        ops.push(match read {
            Ok(Ok(value)) => Op::read(
                value.map(|v| std::str::from_utf8(&v.value).unwrap().parse().unwrap()),
                read_invoked,
                now(),
            ),
            // No answer before the crash: outcome unknown, not recorded.
            _ => Op::read(None, read_invoked, UNKNOWN),
        });
        let dir = node.crash();
        let written = write.await.unwrap();
        assert!(
            written.is_err(),
            "a write in an unflushed batch is not acknowledged"
        );
        ops.push(Op::write(1, invoked, UNKNOWN));
        let node = TestNode::start_in(1, "", &dir, &[]);
        let reader = Client::connect(client_config(node.addr)).await.unwrap();
        let after_invoked = now();
        let after = reader.get("doomed").await.unwrap();
        ops.push(Op::read(
            after.map(|v| std::str::from_utf8(&v.value).unwrap().parse().unwrap()),
            after_invoked,
            now(),
        ));
        drop(node);
        let _ = std::fs::remove_dir_all(&dir);
        // A read with no answer is dropped, as the checker takes only
        // answered reads.
        ops.retain(|op| !(matches!(op.action, Action::Read(_)) && op.returned == UNKNOWN));
        ops
    }
    let with_wait = scenario(false).await;
    assert!(linearizable(&with_wait), "{with_wait:#?}");
    let without_wait = scenario(true).await;
    assert!(
        matches!(without_wait[0].action, Action::Read(Some(1))),
        "the negative control's read saw the unflushed write: {without_wait:#?}"
    );
    assert!(
        !linearizable(&without_wait),
        "the checker missed a read of a write the crash took back: {without_wait:#?}"
    );
    eprintln!(
        "durable reads: with the wait the read of an unflushed write does not answer before the \
         crash; without it (negative control) it returned the value the crash took back, flagged"
    );
}
