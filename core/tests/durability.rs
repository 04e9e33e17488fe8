//! Durability against a real node: kill -9 and restart, loaded crash cycles,
//! fsync failure, corruption, snapshots. Each test uses real files, the real
//! io_uring WAL and a real SIGKILL.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fresh_dir, start_expecting_failure, TestNode};
use tinkerdb_client::{Client, ClientConfig, ErrorCode, SetCondition, SetOptions};

async fn client(node: &TestNode, tenant: &str) -> Client {
    let config = ClientConfig::new(node.addr.to_string())
        .tenant(tenant)
        // Generous: a busy machine may be slow; no test here expects a
        // timeout (a crash closes the connections at once).
        .request_timeout(Duration::from_secs(60));
    Client::connect(config).await.unwrap()
}

/// Per core, `(WAL bytes written, WAL flushes)` from the admin API.
fn wal_progress(node: &TestNode) -> Vec<(u64, u64)> {
    let status = tinkerdb_client::admin::request(
        &node.admin_addr.to_string(),
        "GET",
        "/v1/node",
        None,
        Duration::from_secs(60),
    )
    .unwrap();
    status["per_core"]
        .as_array()
        .unwrap()
        .iter()
        .map(|core| {
            (
                core["wal_bytes"].as_u64().unwrap(),
                core["wal_fsyncs"].as_u64().unwrap(),
            )
        })
        .collect()
}

const TENANTS: &str = "[[tenants]]\nname = \"acme\"\n";

#[tokio::test]
async fn everything_acknowledged_survives_kill_9_with_and_without_snapshots() {
    let dir = fresh_dir();
    let node = TestNode::start_in(2, TENANTS, &dir, &[]);
    let default = client(&node, "default").await;
    let acme = client(&node, "acme").await;
    let mut versions = HashMap::new();
    for i in 0..300 {
        versions.insert(
            format!("k{i}"),
            default.set(format!("k{i}"), format!("v{i}")).await.unwrap(),
        );
    }
    const TTL: Duration = Duration::from_secs(3600);
    let ttl = SetOptions {
        ttl: Some(TTL),
        condition: SetCondition::Always,
    };
    let ttl_sent = Instant::now();
    default.set_with("with-ttl", "t", ttl).await.unwrap();
    acme.set("k1", "acme's").await.unwrap();
    // A snapshot in the middle: recovery = snapshot + the WAL after it.
    let (entries, _) = default.snapshot().await.unwrap();
    assert_eq!(entries, 302);
    for i in 0..100 {
        versions.insert(
            format!("k{i}"),
            default.set(format!("k{i}"), format!("w{i}")).await.unwrap(),
        );
    }
    assert_eq!(default.delete(&["k299", "k298"]).await.unwrap(), 2);
    let mut redis = redis::Client::open(format!("redis://{}/", node.resp_addr))
        .unwrap()
        .get_connection()
        .unwrap();
    let counter: i64 = redis::cmd("INCRBY")
        .arg("counter")
        .arg(41)
        .query(&mut redis)
        .unwrap();
    assert_eq!(counter, 41);
    let dir = node.crash();

    let node = TestNode::start_in(2, TENANTS, &dir, &[]);
    let default = client(&node, "default").await;
    for i in 0..298 {
        let value = default
            .get(format!("k{i}"))
            .await
            .unwrap()
            .expect("acknowledged key lost");
        let expected = if i < 100 {
            format!("w{i}")
        } else {
            format!("v{i}")
        };
        assert_eq!(value.value, expected);
        assert_eq!(
            value.version,
            versions[&format!("k{i}")],
            "versions survive"
        );
    }
    assert_eq!(default.get("k299").await.unwrap(), None, "deletes survive");
    let ttl_left = default.get("with-ttl").await.unwrap().unwrap().ttl.unwrap();
    // The deadline, not the duration, survives: what is left is the TTL
    // less the time since the write (however long the restart took), with
    // the server's millisecond granularity as slack.
    let elapsed = ttl_sent.elapsed();
    assert!(
        ttl_left <= TTL && ttl_left + elapsed + Duration::from_millis(5) >= TTL,
        "TTL deadlines survive: {ttl_left:?} left {elapsed:?} after the write"
    );
    assert_eq!(
        &client(&node, "acme")
            .await
            .get("k1")
            .await
            .unwrap()
            .unwrap()
            .value[..],
        b"acme's"
    );
    let mut redis = redis::Client::open(format!("redis://{}/", node.resp_addr))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(
        redis::cmd("INCR")
            .arg("counter")
            .query::<i64>(&mut redis)
            .unwrap(),
        42
    );
    // New writes get versions above everything before the crash.
    assert!(default.set("k0", "later").await.unwrap() > versions["k0"]);
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writers hammer the node while it is killed at a random moment; after each
/// restart every key holds its last acknowledged value or a later attempt
/// that was in flight, never an older one. TINKERDB_CRASH_CYCLES sets the
/// number of cycles (3 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_write() {
    let cycles: usize = std::env::var("TINKERDB_CRASH_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    const WRITERS: usize = 8;
    let dir = fresh_dir();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    // key -> (last acknowledged counter, highest attempted counter)
    let acknowledged: Arc<Mutex<HashMap<String, (u64, u64)>>> = Arc::default();
    let mut checked = 0usize;
    for cycle in 0..cycles {
        let node = TestNode::start_in(2, "snapshot_after_wal_bytes = 1048576\n", &dir, &[]);
        // Verify the previous cycle's acknowledgements.
        let reader = client(&node, "default").await;
        let expected = acknowledged.lock().unwrap().clone();
        for (key, (acked, attempted)) in expected {
            let value = reader.get(&key).await.unwrap();
            let found: u64 = value.map_or(0, |v| {
                std::str::from_utf8(&v.value).unwrap().parse().unwrap()
            });
            assert!(
                found >= acked && found <= attempted,
                "cycle {cycle}: {key} holds {found}, acknowledged {acked}, attempted up to {attempted}"
            );
            checked += 1;
        }
        // Restart the counters from what the node holds now.
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let client = client(&node, "default").await;
            let stop = stop.clone();
            let acknowledged = acknowledged.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("w{writer}-{}", n % 50);
                    let value = {
                        let mut map = acknowledged.lock().unwrap();
                        let entry = map.entry(key.clone()).or_insert((0, 0));
                        entry.1 += 1;
                        entry.1
                    };
                    match client.set(&key, value.to_string()).await {
                        Ok(_) => {
                            let mut map = acknowledged.lock().unwrap();
                            let entry = map.get_mut(&key).unwrap();
                            entry.0 = entry.0.max(value);
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(200 + seed % 600)).await;
        let kept = node.crash();
        assert_eq!(kept, dir);
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            let _ = task.await;
        }
    }
    let node = TestNode::start_in(2, "", &dir, &[]);
    let reader = client(&node, "default").await;
    let expected = acknowledged.lock().unwrap().clone();
    for (key, (acked, attempted)) in expected {
        let found: u64 = reader.get(&key).await.unwrap().map_or(0, |v| {
            std::str::from_utf8(&v.value).unwrap().parse().unwrap()
        });
        assert!(
            found >= acked && found <= attempted,
            "{key}: {found} not in {acked}..={attempted}"
        );
        checked += 1;
    }
    assert!(checked > 0);
    eprintln!(
        "crash test: {cycles} kill -9 cycles, {checked} key checks, 0 acknowledged writes lost"
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn after_an_fsync_failure_no_write_is_acknowledged() {
    let dir = fresh_dir();
    let failpoint = [("TINKERDB_FAILPOINT_WAL_FSYNC_FAIL_AFTER", "20")];
    let node = TestNode::start_in(1, "", &dir, &failpoint);
    let client = client(&node, "default").await;
    let mut acknowledged = Vec::new();
    let mut first_failure = None;
    for i in 0..100 {
        match client.set(format!("k{i}"), "v").await {
            Ok(_) => {
                assert!(
                    first_failure.is_none(),
                    "write {i} acknowledged after the failure at {first_failure:?}"
                );
                acknowledged.push(i);
            }
            Err(error) => {
                assert_eq!(error.code(), Some(ErrorCode::StorageFailed), "{error}");
                first_failure.get_or_insert(i);
            }
        }
    }
    assert_eq!(
        acknowledged.len(),
        20,
        "one flush per write here, 20 allowed"
    );
    // Reads still work on a poisoned core.
    assert!(client.get("k0").await.unwrap().is_some());
    let dir = node.crash();
    let node = TestNode::start_in(1, "", &dir, &[]);
    let client = self::client(&node, "default").await;
    for i in acknowledged {
        assert!(
            client.get(format!("k{i}")).await.unwrap().is_some(),
            "acknowledged k{i} lost"
        );
    }
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_damaged_wal_stops_the_node_with_file_and_offset() {
    let dir = fresh_dir();
    let node = TestNode::start_in(1, "", &dir, &[]);
    let client = client(&node, "default").await;
    for i in 0..10 {
        client.set(format!("k{i}"), vec![b'x'; 5000]).await.unwrap();
    }
    let dir = node.crash();
    let segment = dir.join("data/core-0/wal/00000000000000000001.wal");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[8192 + 100] ^= 0x40; // inside the second of ten batches
    std::fs::write(&segment, &bytes).unwrap();
    let output = start_expecting_failure(1, &dir);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("corruption") && stderr.contains("offset 8192") && stderr.contains(".wal"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_data_dir_cannot_be_reopened_with_other_cores_or_twice() {
    let dir = fresh_dir();
    let node = TestNode::start_in(2, "", &dir, &[]);
    let output = start_expecting_failure(2, &dir);
    assert!(String::from_utf8_lossy(&output.stderr).contains("in use by another tinkerdb process"));
    let dir = node.crash();
    let output = start_expecting_failure(1, &dir);
    assert!(String::from_utf8_lossy(&output.stderr).contains("start with the same --cores"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn interval_durability_acknowledges_at_once_and_still_recovers() {
    let dir = fresh_dir();
    let config = "durability = \"interval\"\nflush_interval_ms = 5\n";
    let node = TestNode::start_in(2, config, &dir, &[]);
    let client = client(&node, "default").await;
    for i in 0..200 {
        client.set(format!("k{i}"), "v").await.unwrap();
    }
    // Crash only once the interval flusher has written everything: no
    // flush on any core for a whole second (200 flush intervals) after
    // the writes, rather than a fixed pause that a busy machine may
    // overrun. (The WAL's durable index is not exposed, so settling is the
    // observable sign.)
    let mut progress = wal_progress(&node);
    let mut quiet_since = Instant::now();
    let settled = common::eventually(Duration::from_secs(60), || {
        let now = wal_progress(&node);
        if now != progress {
            progress = now;
            quiet_since = Instant::now();
        }
        quiet_since.elapsed() >= Duration::from_secs(1)
            && progress
                .iter()
                .all(|&(bytes, flushes)| bytes > 0 && flushes > 0)
    });
    assert!(settled, "the interval flusher never settled: {progress:?}");
    let dir = node.crash();
    let node = TestNode::start_in(2, config, &dir, &[]);
    assert_eq!(
        self::client(&node, "default").await.count().await.unwrap(),
        200
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
