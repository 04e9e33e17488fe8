//! The admin plane against a real node: the HTTP API, its errors, tenants
//! created at runtime, `/metrics`, the live series and the OpenAPI document.

mod common;

use std::time::{Duration, Instant};

use common::TestNode;
use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::Value;

fn http() -> Client {
    // Generous: a busy machine (CI) may be slow to answer; no test here
    // expects a timeout.
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn url(node: &TestNode, path: &str) -> String {
    format!("http://{}{path}", node.admin_addr)
}

/// GET `path`: status and JSON body.
fn get(node: &TestNode, path: &str) -> (StatusCode, Value) {
    let response = http().get(url(node, path)).send().unwrap();
    (response.status(), response.json().unwrap())
}

fn put(
    node: &TestNode,
    path: &str,
    body: impl Into<reqwest::blocking::Body>,
) -> (StatusCode, Value) {
    let response = http().put(url(node, path)).body(body).send().unwrap();
    (response.status(), response.json().unwrap())
}

fn post_json(node: &TestNode, path: &str, body: &Value) -> (StatusCode, Value) {
    let response = http().post(url(node, path)).json(body).send().unwrap();
    (response.status(), response.json().unwrap())
}

fn delete(node: &TestNode, path: &str) -> (StatusCode, Value) {
    let response = http().delete(url(node, path)).send().unwrap();
    (response.status(), response.json().unwrap())
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

#[test]
fn keys_status_and_errors_over_http() {
    let node =
        TestNode::start_with_config(2, "[limits]\nmax_value_bytes = 1024\nmax_key_bytes = 64\n");
    assert_eq!(
        get(&node, "/health"),
        (StatusCode::OK, serde_json::json!({"status": "ok"}))
    );
    assert_eq!(get(&node, "/ready").0, StatusCode::OK);

    // A key with characters that need encoding in a path.
    let key_path = "/v1/tenants/default/keys/user%2F42%20name";
    let (status, written) = put(&node, key_path, "hello");
    assert_eq!(status, StatusCode::OK, "{written}");
    let version = written["version"].as_u64().unwrap();
    let (status, read) = get(&node, key_path);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["key"], "user/42 name");
    assert_eq!(read["value"], "hello");
    assert_eq!(read["encoding"], "utf8");
    assert_eq!(read["version"].as_u64(), Some(version));
    assert!(read["ttl_ms"].is_null());

    // Binary values come back as base64; a TTL is reported as time left
    // (checked against the time measured since before the PUT, so a busy
    // machine does not fail it).
    let sent = Instant::now();
    put(
        &node,
        "/v1/tenants/default/keys/bin?ttl_ms=60000",
        vec![0xff, 0x00, 0x01],
    );
    let (_, read) = get(&node, "/v1/tenants/default/keys/bin");
    let elapsed = sent.elapsed().as_millis() as u64;
    assert_eq!(read["encoding"], "base64");
    assert_eq!(read["value"], "/wAB");
    let ttl = read["ttl_ms"].as_u64().unwrap();
    assert!(
        ttl + elapsed + 5 >= 60_000 && ttl <= 60_000,
        "{ttl} ms left after {elapsed} ms"
    );

    // The key written over HTTP is the same key the Redis protocol sees.
    let mut redis = redis::Client::open(format!("redis://{}/", node.resp_addr))
        .unwrap()
        .get_connection()
        .unwrap();
    let seen: String = redis::cmd("GET")
        .arg("user/42 name")
        .query(&mut redis)
        .unwrap();
    assert_eq!(seen, "hello");

    assert_eq!(
        delete(&node, key_path),
        (StatusCode::OK, serde_json::json!({"deleted": true}))
    );
    assert_eq!(
        delete(&node, key_path),
        (StatusCode::OK, serde_json::json!({"deleted": false}))
    );
    let (status, body) = get(&node, key_path);
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "key_not_found")
    );

    // Errors: typed, JSON, and nothing written.
    let (status, body) = get(&node, "/v1/tenants/nobody/keys/a");
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "unknown_tenant")
    );
    let (status, body) = put(&node, "/v1/tenants/default/keys/big", vec![b'x'; 1025]);
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large")
    );
    let (status, body) = put(&node, "/v1/tenants/default/keys/big", vec![b'x'; 1 << 20]);
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large")
    );
    let (status, body) = get(&node, "/v1/tenants/default/keys/big");
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "key_not_found")
    );
    let long_key = "k".repeat(65);
    let (status, body) = put(&node, &format!("/v1/tenants/default/keys/{long_key}"), "v");
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "key_too_large")
    );
    let (status, body) = put(&node, "/v1/tenants/default/keys/a?ttl_ms=soon", "v");
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    let (status, body) = get(&node, "/v1/tenants/default/keys?cursor=banana");
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    let (status, body) = get(&node, "/v1/tenants/default/keys?limit=0");
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    let (status, body) = get(&node, "/v1/no/such/route");
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );

    // Node status adds up over the cores.
    let (status, node_status) = get(&node, "/v1/node");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(node_status["cores"], 2);
    assert_eq!(node_status["durability"], "sync");
    assert_eq!(node_status["listen"]["clients"], node.addr.to_string());
    assert_eq!(node_status["keys"], 1, "{node_status}");
    let per_core = node_status["per_core"].as_array().unwrap();
    assert_eq!(
        per_core[0]["slots"],
        serde_json::json!({"start": 0, "end": 8191})
    );
    assert_eq!(
        per_core[1]["slots"],
        serde_json::json!({"start": 8192, "end": 16383})
    );
    let (_, cluster) = get(&node, "/v1/cluster");
    assert_eq!(cluster["mode"], "standalone");
    assert_eq!(cluster["shards"].as_array().unwrap().len(), 2);
}

#[test]
fn scan_pages_return_every_key_exactly_once() {
    let node = TestNode::start(2);
    for i in 0..300 {
        put(&node, &format!("/v1/tenants/default/keys/scan:{i:03}"), "v");
        put(
            &node,
            &format!("/v1/tenants/default/keys/other:{i:03}"),
            "v",
        );
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let (status, page) = get(
            &node,
            &format!("/v1/tenants/default/keys?prefix=scan:&limit=50&cursor={cursor}"),
        );
        assert_eq!(status, StatusCode::OK, "{page}");
        let keys = page["keys"].as_array().unwrap();
        assert!(
            keys.len() <= 50 + 10,
            "a page holds about the limit: {}",
            keys.len()
        );
        seen.extend(keys.iter().map(|key| key.as_str().unwrap().to_owned()));
        pages += 1;
        match page["cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
        assert!(pages < 100, "the scan must end");
    }
    seen.sort();
    let expected: Vec<String> = (0..300).map(|i| format!("scan:{i:03}")).collect();
    assert_eq!(seen, expected);
    assert!(pages >= 6, "{pages} pages for 300 keys at 50 per page");
}

#[test]
fn tenants_created_at_runtime_survive_a_restart_with_their_quota() {
    let node = TestNode::start(2);
    let (status, created) = post_json(
        &node,
        "/v1/tenants",
        &serde_json::json!({"name": "team-a", "max_keys": 3}),
    );
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["quota"]["max_keys"], 3);
    let (status, body) = post_json(&node, "/v1/tenants", &serde_json::json!({"name": "team-a"}));
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "tenant_exists")
    );
    let (status, body) = post_json(
        &node,
        "/v1/tenants",
        &serde_json::json!({"name": "bad name"}),
    );
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    let (status, body) = post_json(&node, "/v1/tenants", &serde_json::json!({"nom": "x"}));
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );

    // The quota is enforced node-wide (its shares sum to 3 over the cores),
    // so a 4th key is refused.
    let mut refused = 0;
    for i in 0..4 {
        let (status, body) = put(&node, &format!("/v1/tenants/team-a/keys/k{i}"), "v");
        if status != StatusCode::OK {
            assert_eq!(error_code(&body), "quota_exceeded");
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            refused += 1;
        }
    }
    assert!(refused >= 1, "a 4th key must be refused");
    // The same tenant works over the Redis protocol at once.
    let mut redis = redis::Client::open(format!("redis://{}/", node.resp_addr))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("AUTH")
        .arg("team-a")
        .arg("x")
        .query(&mut redis)
        .unwrap();
    let keys: u64 = redis::cmd("DBSIZE").query(&mut redis).unwrap();
    assert_eq!(keys, 4 - refused);
    drop(redis);

    let dir = node.crash();
    let node = TestNode::start_in(2, "", &dir, &[]);
    let (_, list) = get(&node, "/v1/tenants");
    let team = list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|tenant| tenant["name"] == "team-a")
        .unwrap_or_else(|| panic!("team-a lost in the restart: {list}"))
        .clone();
    assert_eq!(team["quota"]["max_keys"], 3);
    assert_eq!(team["usage"]["keys"], 4 - refused);
    let (status, _) = put(&node, "/v1/tenants/team-a/keys/k9", "v");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // Raising the quota lets writes in; the change survives too.
    let response = http()
        .put(url(&node, "/v1/tenants/team-a/quota"))
        .json(&serde_json::json!({"max_keys": 100}))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        put(&node, "/v1/tenants/team-a/keys/k9", "v").0,
        StatusCode::OK
    );
    let response = http()
        .put(url(&node, "/v1/tenants/nobody/quota"))
        .json(&serde_json::json!({"max_keys": 1}))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let (status, body) = put(&node, "/v1/tenants/team-a/quota", "not json");
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
}

/// Sum of every sample of `name` whose labels contain `labels`.
fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.starts_with(name)
                && matches!(line.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
                && line.contains(labels)
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn metrics_and_live_series_follow_traffic() {
    let node = TestNode::start(2);
    let mut redis = redis::Client::open(format!("redis://{}/", node.resp_addr))
        .unwrap()
        .get_connection()
        .unwrap();
    let load = |redis: &mut redis::Connection| {
        for i in 0..1000 {
            let _: () = redis::cmd("SET")
                .arg(format!("m{i}"))
                .arg("v")
                .query(redis)
                .unwrap();
        }
    };
    load(&mut redis);
    // Two refusals of one kind: counted by their code.
    for _ in 0..2 {
        let refused: redis::RedisResult<i64> = redis::cmd("INCR").arg("m0").query(&mut redis);
        assert!(refused.is_err());
    }
    // A tenant with quotas, so the quota gauges exist.
    let quota = serde_json::json!({"name": "capped", "max_keys": 10, "max_bytes": 1000});
    assert_eq!(
        post_json(&node, "/v1/tenants", &quota).0,
        StatusCode::CREATED
    );
    let response = http().get(url(&node, "/metrics")).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().unwrap();
    assert!(
        metric_sum(&text, "tinkerdb_requests_total", "") >= 1000.0,
        "{text}"
    );
    assert!(metric_sum(&text, "tinkerdb_request_duration_seconds_count", "") >= 1000.0);
    assert!(
        metric_sum(
            &text,
            "tinkerdb_request_duration_seconds_bucket",
            "le=\"+Inf\""
        ) >= 1000.0
    );
    assert!(
        metric_sum(
            &text,
            "tinkerdb_tenant_requests_total",
            "tenant=\"default\""
        ) >= 1000.0
    );
    assert_eq!(metric_sum(&text, "tinkerdb_keys", ""), 1000.0);
    assert!(metric_sum(&text, "tinkerdb_wal_fsyncs_total", "") > 0.0);
    assert!(metric_sum(&text, "tinkerdb_wal_fsync_duration_seconds_count", "") > 0.0);
    assert!(metric_sum(&text, "tinkerdb_wal_written_bytes_total", "") >= 4096.0);
    assert_eq!(metric_sum(&text, "tinkerdb_wal_poisoned", ""), 0.0);
    assert_eq!(metric_sum(&text, "tinkerdb_cores", ""), 2.0);
    // Counted by their Redis prefix (with the client library's own
    // refused CLIENT SETINFO at connect).
    assert!(
        metric_sum(
            &text,
            "tinkerdb_request_errors_by_code_total",
            "code=\"ERR\""
        ) >= 2.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "tinkerdb_request_errors_by_code_total", ""),
        metric_sum(&text, "tinkerdb_request_errors_total", "")
    );
    // Resident memory in bytes: more than the 1 MiB of io_uring buffers
    // each core pins, less than the machine.
    let resident = metric_sum(&text, "tinkerdb_resident_memory_bytes", "");
    assert!((2.0 * 1048576.0..64e9).contains(&resident), "{resident}");
    // Prometheus conventions: counters end in _total, and every family has
    // HELP and TYPE lines.
    for line in text.lines().filter(|line| line.starts_with("# TYPE")) {
        let mut parts = line.split(' ').skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
    }

    // Every metric the sample Grafana dashboard queries exists.
    let grafana = include_str!("../../docs/monitoring/grafana-dashboard.json");
    let mut queried = 0;
    for word in grafana.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("tinkerdb_") {
            assert!(
                text.contains(&format!("\n{word}")),
                "Grafana queries {word}, /metrics lacks it"
            );
            queried += 1;
        }
    }
    assert!(queried >= 10);

    // The live series shows the traffic within a few seconds.
    let moved = common::eventually(Duration::from_secs(60), || {
        load(&mut redis);
        let (_, live) = get(&node, "/v1/stats/live");
        live["samples"].as_array().unwrap().iter().any(|sample| {
            sample["node"]["ops_per_sec"].as_f64().unwrap() > 0.0
                && sample["node"]["p99_us"].as_u64().unwrap() > 0
        })
    });
    assert!(moved, "no sample showed the traffic");
    let asked = Instant::now();
    let (_, live) = get(&node, "/v1/stats/live");
    let samples = live["samples"].as_array().unwrap();
    let last = samples.last().unwrap()["seq"].as_u64().unwrap();
    let (_, newer) = get(&node, &format!("/v1/stats/live?since={last}"));
    // Only samples after `last`, in order: the ones taken between the two
    // requests, however long they took on a busy machine. Ticks are at
    // least a second apart; a sample lands up to REPORT_TIMEOUT (0.8 s)
    // after its tick, hence the bound.
    let between = asked.elapsed().as_secs();
    let newer = newer["samples"].as_array().unwrap();
    assert!(
        newer.len() as u64 <= between + 2,
        "{} samples in {between} s",
        newer.len()
    );
    for (n, sample) in newer.iter().enumerate() {
        assert_eq!(
            sample["seq"].as_u64(),
            Some(last + 1 + n as u64),
            "{sample}"
        );
    }
    assert_eq!(samples[0]["cores"].as_array().unwrap().len(), 2);
}

#[test]
fn snapshot_over_http_is_reported_per_core() {
    let node = TestNode::start(2);
    for i in 0..100 {
        put(&node, &format!("/v1/tenants/default/keys/s{i}"), "value");
    }
    let response = http().post(url(&node, "/v1/snapshot")).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().unwrap();
    assert_eq!(body["entries"], 100, "{body}");
    let (_, status) = get(&node, "/v1/node");
    for core in status["per_core"].as_array().unwrap() {
        assert!(
            core["last_snapshot"]["unix_ms"].as_u64().unwrap() > 0,
            "{status}"
        );
    }
}

#[test]
fn the_openapi_document_is_served_and_current() {
    let node = TestNode::start(1);
    let served = http()
        .get(url(&node, "/v1/openapi.json"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(served, tinkerdb_admin::api::openapi_json());
    let doc: Value = serde_json::from_str(&served).unwrap();
    for path in [
        "/health",
        "/ready",
        "/metrics",
        "/v1/node",
        "/v1/cluster",
        "/v1/tenants",
        "/v1/tenants/{tenant}/quota",
        "/v1/tenants/{tenant}/keys",
        "/v1/tenants/{tenant}/keys/{key}",
        "/v1/snapshot",
        "/v1/stats/live",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    // The dashboard is served from the binary.
    let page = http().get(url(&node, "/")).send().unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().unwrap().contains("TinkerDB"));
}

#[test]
fn a_taken_admin_port_refuses_to_start() {
    let node = TestNode::start(1);
    let output = std::process::Command::new(common::workspace_binary("tinkerdb"))
        .args(["--listen", "127.0.0.1:0", "--no-resp", "--cores", "1"])
        .args(["--admin-listen", &node.admin_addr.to_string()])
        .arg("--data-dir")
        .arg(common::fresh_dir())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot listen for the admin API"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
