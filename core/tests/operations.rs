//! Every operation, through the Rust client, against a real node.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use common::TestNode;
use tinkerdb_client::{Client, ClientConfig, ErrorCode, ScanOptions, SetCondition, SetOptions};

/// Generous request timeout: on a busy machine (CI, the other core loaded)
/// a debug build may take seconds to answer; no test here expects a timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn client(node: &TestNode) -> Client {
    Client::connect(ClientConfig::new(node.addr.to_string()).request_timeout(REQUEST_TIMEOUT))
        .await
        .unwrap()
}

#[tokio::test]
async fn get_set_delete_exists_and_versions() {
    let node = TestNode::start(2);
    let client = client(&node).await;
    assert_eq!(client.get("missing").await.unwrap(), None);
    let v1 = client.set("k", "one").await.unwrap();
    let read = client.get("k").await.unwrap().unwrap();
    assert_eq!(
        (&read.value[..], read.version, read.ttl),
        (&b"one"[..], v1, None)
    );
    let v2 = client.set("k", "two").await.unwrap();
    assert!(v2 > v1, "versions grow");
    assert_eq!(client.exists(&["k", "missing", "k"]).await.unwrap(), 2);
    assert_eq!(client.delete(&["k", "missing"]).await.unwrap(), 1);
    assert_eq!(client.get("k").await.unwrap(), None);
    // Empty keys and binary keys and values are fine.
    client.set("", [0u8, 255, 10]).await.unwrap();
    assert_eq!(
        &client.get("").await.unwrap().unwrap().value[..],
        &[0u8, 255, 10]
    );
    // A round trip time, not a timeout: any sane value (a busy machine may
    // take a while).
    assert!(client.ping().await.unwrap() < REQUEST_TIMEOUT);
}

#[tokio::test]
async fn conditional_sets_and_compare_and_set() {
    let node = TestNode::start(2);
    let client = client(&node).await;
    let nx = |condition| SetOptions {
        ttl: None,
        condition,
    };
    let xx = client
        .set_with("c", "v", nx(SetCondition::IfPresent))
        .await
        .unwrap();
    assert!(!xx.applied);
    assert_eq!(client.get("c").await.unwrap(), None);
    let first = client
        .set_with("c", "v", nx(SetCondition::IfAbsent))
        .await
        .unwrap();
    assert!(first.applied);
    let again = client
        .set_with("c", "w", nx(SetCondition::IfAbsent))
        .await
        .unwrap();
    assert_eq!((again.applied, again.version), (false, first.version));
    let stale = client
        .compare_and_set("c", first.version + 1000, "x", None)
        .await
        .unwrap();
    assert_eq!((stale.applied, stale.version), (false, first.version));
    let swapped = client
        .compare_and_set("c", first.version, "x", None)
        .await
        .unwrap();
    assert!(swapped.applied);
    assert_eq!(&client.get("c").await.unwrap().unwrap().value[..], b"x");
    // Expected version 0 means "must not exist".
    assert!(
        !client
            .compare_and_set("c", 0, "y", None)
            .await
            .unwrap()
            .applied
    );
    assert!(
        client
            .compare_and_set("fresh", 0, "y", None)
            .await
            .unwrap()
            .applied
    );
}

#[tokio::test]
async fn mget_mset_keep_order_across_cores() {
    let node = TestNode::start(2);
    let client = client(&node).await;
    let entries: Vec<(String, String)> = (0..200)
        .map(|i| (format!("m{i}"), format!("value-{i}")))
        .collect();
    let versions = client.mset(&entries).await.unwrap();
    assert_eq!(versions.len(), 200);
    assert!(versions.iter().all(|&v| v > 0));
    let mut keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
    keys.insert(7, "absent".into());
    let values = client.mget(&keys).await.unwrap();
    assert_eq!(values.len(), 201);
    for (key, value) in keys.iter().zip(values) {
        match key.as_str() {
            "absent" => assert_eq!(value, None),
            key => assert_eq!(value.unwrap().value, format!("value-{}", &key[1..])),
        }
    }
    assert_eq!(client.count().await.unwrap(), 200);
}

#[tokio::test]
async fn keys_and_scan_see_every_key_once() {
    let node = TestNode::start(2);
    let client = client(&node).await;
    let mut all = BTreeSet::new();
    for chunk in (0..5000).collect::<Vec<_>>().chunks(500) {
        let entries: Vec<(String, &str)> = chunk
            .iter()
            .map(|i| {
                (
                    if i % 2 == 0 {
                        format!("user:{i}")
                    } else {
                        format!("item:{i}")
                    },
                    "x",
                )
            })
            .collect();
        all.extend(entries.iter().map(|(k, _)| k.clone()));
        client.mset(&entries).await.unwrap();
    }
    // A full scan in small steps returns each key exactly once.
    let mut seen = Vec::new();
    let mut cursor = 0;
    let mut steps = 0;
    loop {
        let page = client
            .scan(
                cursor,
                &ScanOptions {
                    count: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(
            page.keys.len() <= 100 + 200,
            "a step ends on a slot boundary, near count"
        );
        seen.extend(
            page.keys
                .into_iter()
                .map(|k| String::from_utf8(k.to_vec()).unwrap()),
        );
        steps += 1;
        if page.cursor == 0 {
            break;
        }
        cursor = page.cursor;
    }
    assert!(steps > 10, "the scan took many steps ({steps})");
    assert_eq!(seen.len(), all.len(), "no duplicates");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), all);

    let prefixed = client
        .scan_all(&ScanOptions {
            prefix: b"user:".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(prefixed.len(), 2500);
    let matched = client
        .scan_all(&ScanOptions {
            pattern: b"item:1?".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let matched: HashSet<_> = matched
        .iter()
        .map(|k| String::from_utf8(k.to_vec()).unwrap())
        .collect();
    assert_eq!(
        matched,
        (11..20).step_by(2).map(|i| format!("item:{i}")).collect()
    );

    let keys = client.keys("user:1*").await.unwrap();
    let expected = all.iter().filter(|k| k.starts_with("user:1")).count();
    assert_eq!(keys.len(), expected);
    assert_eq!(client.keys("*").await.unwrap().len(), 5000);
}

#[tokio::test]
async fn keys_refuses_results_over_the_limit() {
    let node = TestNode::start_with_config(2, "[limits]\nmax_keys_result = 10\n");
    let client = client(&node).await;
    let entries: Vec<(String, &str)> = (0..11).map(|i| (format!("k{i}"), "v")).collect();
    client.mset(&entries).await.unwrap();
    assert_eq!(client.keys("k1*").await.unwrap().len(), 2);
    let error = client.keys("*").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::ResultTooLarge));
}

#[tokio::test]
async fn ttl_expires_lazily_and_actively() {
    let node = TestNode::start(2);
    let client = client(&node).await;
    let ttl = |ms| SetOptions {
        ttl: Some(Duration::from_millis(ms)),
        condition: SetCondition::Always,
    };
    // What a read may assert depends on when it ran: the key must still be
    // there only if the read came back before its TTL could have passed
    // (measured from before the write was sent). A busy machine may take
    // longer, and then the key may already be gone.
    const SHORT: Duration = Duration::from_millis(500);
    // The server's clock has millisecond granularity.
    const SLACK: Duration = Duration::from_millis(5);
    let short_sent = Instant::now();
    client
        .set_with("short", "v", ttl(SHORT.as_millis() as u64))
        .await
        .unwrap();
    let read = client.get("short").await.unwrap();
    let elapsed = short_sent.elapsed();
    match read {
        Some(read) => {
            let left = read.ttl.expect("a key written with a TTL reports one");
            assert!(left <= SHORT, "{left:?} left of {SHORT:?}");
            assert!(
                left + elapsed + SLACK >= SHORT,
                "{left:?} left of {SHORT:?} after {elapsed:?}"
            );
        }
        None => assert!(
            elapsed + SLACK >= SHORT,
            "a key with a {SHORT:?} TTL was gone after {elapsed:?}"
        ),
    }
    const LONG: Duration = Duration::from_secs(600);
    let long_sent = Instant::now();
    client
        .set_with("long", "v", ttl(LONG.as_millis() as u64))
        .await
        .unwrap();
    let long_ttl = client.get("long").await.unwrap().unwrap().ttl.unwrap();
    let elapsed = long_sent.elapsed();
    assert!(long_ttl <= LONG, "{long_ttl:?}");
    assert!(
        long_ttl + elapsed + SLACK >= LONG,
        "{long_ttl:?} left of {LONG:?} after {elapsed:?}"
    );
    // Lazy: invisible once due (and never later than generously after).
    let gone = tokio::time::timeout(Duration::from_secs(60), async {
        while client.get("short").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "key still readable long after its TTL");
    let vanished = short_sent.elapsed();
    assert!(
        vanished + SLACK >= SHORT,
        "the key vanished {vanished:?} after it was written, before its TTL"
    );
    // Active: removed from the count without being read again.
    for i in 0..100 {
        client
            .set_with(format!("burst{i}"), "v", ttl(100))
            .await
            .unwrap();
    }
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        while client.count().await.unwrap() != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "expired keys not removed in the background"
    );
    // A plain SET clears a TTL.
    client.set_with("k", "v", ttl(100_000)).await.unwrap();
    client.set("k", "w").await.unwrap();
    assert_eq!(client.get("k").await.unwrap().unwrap().ttl, None);
}

#[tokio::test]
async fn pipelining_many_requests_on_one_connection() {
    let node = TestNode::start(2);
    let client = Client::connect(
        ClientConfig::new(node.addr.to_string())
            .connections(1)
            .request_timeout(REQUEST_TIMEOUT),
    )
    .await
    .unwrap();
    let writes = (0..2000).map(|i| {
        let client = client.clone();
        async move { client.set(format!("p{i}"), format!("{i}")).await }
    });
    let results = futures_join_all(writes).await;
    assert!(results.iter().all(Result::is_ok));
    let reads = (0..2000).map(|i| {
        let client = client.clone();
        async move { (i, client.get(format!("p{i}")).await.unwrap().unwrap().value) }
    });
    for (i, value) in futures_join_all(reads).await {
        assert_eq!(value, format!("{i}"));
    }
}

/// Runs futures concurrently on the test's runtime (tokio tasks).
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_from_many_connections_loses_no_update() {
    const CLIENTS: usize = 120;
    const INCREMENTS_PER_CLIENT: usize = 25;
    const COUNTERS: usize = 4;
    let node = TestNode::start(2);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let config = ClientConfig::new(node.addr.to_string())
            .connections(1)
            .request_timeout(REQUEST_TIMEOUT);
        clients.push(Client::connect(config).await.unwrap());
    }
    let tasks = clients
        .into_iter()
        .enumerate()
        .map(|(n, client)| async move {
            let mut conflicts = 0u64;
            for i in 0..INCREMENTS_PER_CLIENT {
                let key = format!("counter{}", (n + i) % COUNTERS);
                loop {
                    let (current, version) = match client.get(&key).await.unwrap() {
                        Some(value) => (
                            std::str::from_utf8(&value.value)
                                .unwrap()
                                .parse::<u64>()
                                .unwrap(),
                            value.version,
                        ),
                        None => (0, 0),
                    };
                    let result = client
                        .compare_and_set(&key, version, (current + 1).to_string(), None)
                        .await
                        .unwrap();
                    if result.applied {
                        break;
                    }
                    conflicts += 1;
                }
            }
            conflicts
        });
    let conflicts: u64 = futures_join_all(tasks).await.into_iter().sum();
    let check = client(&node).await;
    let mut total = 0;
    for counter in 0..COUNTERS {
        let value = check
            .get(format!("counter{counter}"))
            .await
            .unwrap()
            .unwrap();
        total += std::str::from_utf8(&value.value)
            .unwrap()
            .parse::<usize>()
            .unwrap();
    }
    assert_eq!(total, CLIENTS * INCREMENTS_PER_CLIENT, "lost updates");
    assert!(conflicts > 0, "the test must actually contend");
}

/// A request may carry the route its client believes (range, epoch): a
/// current one runs; one naming another range than its key's, or another
/// epoch, gets `StaleRoute` with the current route and changes nothing; a
/// range that does not exist is an invalid argument.
#[tokio::test]
async fn a_routed_request_runs_only_on_a_current_route() {
    use tinkerdb_client::{ClientError, Route};
    let node = TestNode::start(2);
    let client = client(&node).await;
    // Learn the key's route from the answer to a guess.
    let guess = Route { range: 0, epoch: 7 };
    let learned = match client.set_routed("routed", "v1", guess).await {
        Err(ClientError::StaleRoute { owner, message }) => {
            assert!(
                message.contains("not 7") || message.contains("not in range 0"),
                "{message}"
            );
            owner
        }
        other => panic!("a guessed route: {other:?}"),
    };
    assert_eq!(
        learned.epoch, 0,
        "a standalone node's ranges stay at epoch 0"
    );
    assert_eq!(client.get("routed").await.unwrap(), None, "nothing applied");
    // The learned route works, for writes and reads.
    let route = learned.route();
    client.set_routed("routed", "v2", route).await.unwrap();
    let read = client.get_routed("routed", route).await.unwrap().unwrap();
    assert_eq!(read.value, "v2");
    // The other range, or an old epoch: refused with the current route.
    let other = Route {
        range: 1 - route.range,
        epoch: 0,
    };
    match client.get_routed("routed", other).await {
        Err(ClientError::StaleRoute { owner, .. }) => assert_eq!(owner.route(), route),
        other => panic!("the other range: {other:?}"),
    }
    let old = Route { epoch: 3, ..route };
    assert!(matches!(
        client.set_routed("routed", "v3", old).await,
        Err(ClientError::StaleRoute { .. })
    ));
    assert_eq!(client.get("routed").await.unwrap().unwrap().value, "v2");
    // A range the node does not have.
    let nowhere = Route { range: 9, epoch: 0 };
    let error = client.get_routed("routed", nowhere).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::InvalidArgument));
}

/// Resident memory of a process, KiB.
fn resident_kib(pid: u32) -> u64 {
    tinkerdb_core::platform::process_resident_bytes(pid) / 1024
}

/// Memory a node freed goes back to the kernel while the node is idle:
/// 100 MiB of values written then deleted leave the resident set near
/// where it started within seconds, with no request after the deletes to
/// prompt the allocator (each core releases freed memory once a second,
/// `node::release_freed_memory_with`; mimalloc alone purges only inside a
/// later allocation of the same thread, and kept it all).
#[tokio::test]
async fn memory_freed_goes_back_to_the_kernel_while_idle() {
    const BATCHES: usize = 1_000;
    const KEYS_PER_BATCH: usize = 100;
    let node = TestNode::start_with_config(1, "durability = \"none\"\n");
    let client = client(&node).await;
    let before = resident_kib(node.pid());
    let value = vec![7u8; 1024];
    let keys_of = |batch: usize| -> Vec<String> {
        (0..KEYS_PER_BATCH)
            .map(|i| format!("freed-{batch}-{i}"))
            .collect()
    };
    for batch in 0..BATCHES {
        let entries: Vec<(String, &[u8])> = keys_of(batch)
            .into_iter()
            .map(|key| (key, &value[..]))
            .collect();
        client.mset(&entries).await.unwrap();
    }
    let loaded = resident_kib(node.pid());
    let grown = loaded.saturating_sub(before);
    assert!(
        grown > 80 << 10,
        "100 MiB of values grew the node by {grown} KiB"
    );
    for batch in 0..BATCHES {
        let deleted = client.delete(&keys_of(batch)).await.unwrap();
        assert_eq!(deleted, KEYS_PER_BATCH as u64);
    }
    let mut now = loaded;
    let released = common::eventually(Duration::from_secs(10), || {
        now = resident_kib(node.pid());
        now < before + grown / 4
    });
    assert!(
        released,
        "resident {before} KiB at start, {loaded} KiB loaded, still {now} KiB 10 s after the deletes"
    );
}
