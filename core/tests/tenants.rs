//! Tenants: disjoint keyspaces and quotas, against a real node.

mod common;

use common::TestNode;
use tinkerdb_client::{Client, ClientConfig, ErrorCode, ScanOptions};

const CONFIG: &str = r#"
[[tenants]]
name = "alpha"
[[tenants]]
name = "beta"
[[tenants]]
name = "small"
max_keys = 100
[[tenants]]
name = "tiny-bytes"
max_bytes = 2000
"#;

async fn tenant_client(node: &TestNode, tenant: &str) -> Client {
    Client::connect(ClientConfig::new(node.addr.to_string()).tenant(tenant))
        .await
        .unwrap()
}

/// A Hello naming `tenant/n` binds database n of the tenant: the same
/// keyspace RESP's SELECT n reaches.
#[tokio::test]
async fn hello_with_tenant_slash_n_binds_that_database_the_one_resp_selects() {
    let node = TestNode::start_with_config(2, CONFIG);
    let alpha3 = tenant_client(&node, "alpha/3").await;
    let alpha = tenant_client(&node, "alpha").await;
    alpha3.set("k", "three").await.unwrap();
    assert_eq!(alpha.get("k").await.unwrap(), None);
    assert_eq!(alpha3.count().await.unwrap(), 1);
    let mut redis = redis::Client::open(format!("redis://{}/", node.resp_addr))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("AUTH")
        .arg("alpha")
        .arg("pw")
        .query(&mut redis)
        .unwrap();
    let _: () = redis::cmd("SELECT").arg(3).query(&mut redis).unwrap();
    let value: Option<String> = redis::cmd("GET").arg("k").query(&mut redis).unwrap();
    assert_eq!(value.as_deref(), Some("three"));
    for name in ["alpha/16", "alpha/0", "ghost/1"] {
        let refused = Client::connect(ClientConfig::new(node.addr.to_string()).tenant(name)).await;
        assert_eq!(
            refused.err().and_then(|error| error.code()),
            Some(tinkerdb_client::ErrorCode::UnknownTenant),
            "{name}"
        );
    }
}

#[tokio::test]
async fn no_operation_crosses_tenants() {
    let node = TestNode::start_with_config(2, CONFIG);
    let alpha = tenant_client(&node, "alpha").await;
    let beta = tenant_client(&node, "beta").await;
    let default = tenant_client(&node, "default").await;
    let keys: Vec<String> = (0..50).map(|i| format!("shared{i}")).collect();
    let entries: Vec<(String, &str)> = keys.iter().map(|k| (k.clone(), "alpha")).collect();
    alpha.mset(&entries).await.unwrap();
    alpha.set("only-alpha", "a").await.unwrap();
    beta.set("shared0", "beta").await.unwrap();

    assert_eq!(
        &alpha.get("shared0").await.unwrap().unwrap().value[..],
        b"alpha"
    );
    assert_eq!(
        &beta.get("shared0").await.unwrap().unwrap().value[..],
        b"beta"
    );
    assert_eq!(beta.get("only-alpha").await.unwrap(), None);
    assert_eq!(default.get("shared0").await.unwrap(), None);
    assert_eq!(beta.exists(&keys).await.unwrap(), 1);
    assert_eq!(
        beta.mget(&keys[..3])
            .await
            .unwrap()
            .iter()
            .filter(|v| v.is_some())
            .count(),
        1
    );
    assert_eq!(beta.keys("*").await.unwrap().len(), 1);
    assert_eq!(
        beta.scan_all(&ScanOptions::default()).await.unwrap().len(),
        1
    );
    assert_eq!(default.keys("*").await.unwrap().len(), 0);
    assert_eq!(alpha.count().await.unwrap(), 51);
    assert_eq!(beta.count().await.unwrap(), 1);
    // Deleting in one tenant leaves the other's key alone.
    assert_eq!(beta.delete(&keys).await.unwrap(), 1);
    assert_eq!(alpha.exists(&keys).await.unwrap(), 50);
    assert!(
        beta.compare_and_set("only-alpha", 0, "b", None)
            .await
            .unwrap()
            .applied
    );
    assert_eq!(
        &alpha.get("only-alpha").await.unwrap().unwrap().value[..],
        b"a"
    );
}

#[tokio::test]
async fn unknown_tenant_is_refused_at_handshake() {
    let node = TestNode::start_with_config(2, CONFIG);
    let error = Client::connect(ClientConfig::new(node.addr.to_string()).tenant("nobody"))
        .await
        .err()
        .expect("unknown tenant accepted");
    assert_eq!(error.code(), Some(ErrorCode::UnknownTenant));
}

#[tokio::test]
async fn key_quota_is_enforced_and_frees_on_delete() {
    let node = TestNode::start_with_config(2, CONFIG);
    let small = tenant_client(&node, "small").await;
    let mut written = Vec::new();
    let mut refused = 0;
    for i in 0..200 {
        let key = format!("q{i}");
        match small.set(&key, "v").await {
            Ok(_) => written.push(key),
            Err(error) => {
                assert_eq!(error.code(), Some(ErrorCode::QuotaExceeded), "{error}");
                refused += 1;
            }
        }
    }
    // Each of 2 cores enforces half of 100: never more than 100 keys, and
    // with keys spread by hash, nearly all of them.
    assert!(
        written.len() <= 100,
        "{} keys written over a quota of 100",
        written.len()
    );
    assert!(written.len() >= 90, "only {} keys written", written.len());
    assert_eq!(refused, 200 - written.len());
    assert_eq!(small.count().await.unwrap(), written.len() as u64);
    // Overwriting an existing key is not a new key.
    small.set(&written[0], "again").await.unwrap();
    // Other tenants are unaffected.
    tenant_client(&node, "alpha")
        .await
        .set("q-extra", "v")
        .await
        .unwrap();
    // Deleting frees room.
    small.delete(&written[..10]).await.unwrap();
    let mut rewritten = 0;
    for i in 0..200 {
        if small.set(format!("q{i}"), "v").await.is_ok() {
            rewritten += 1;
        }
    }
    assert!(rewritten >= written.len() - 10);
}

#[tokio::test]
async fn byte_quota_is_enforced() {
    let node = TestNode::start_with_config(2, CONFIG);
    let client = tenant_client(&node, "tiny-bytes").await;
    // Each core's share is 1000 bytes: a 1200-byte value fits nowhere.
    let error = client.set("big", vec![b'x'; 1200]).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::QuotaExceeded));
    assert_eq!(client.get("big").await.unwrap(), None);
    let mut total = 0;
    for i in 0..40 {
        if client.set(format!("b{i}"), vec![b'x'; 98]).await.is_ok() {
            total += 100;
        }
    }
    assert!(
        (1600..=2000).contains(&total),
        "{total} bytes stored under a 2000-byte quota"
    );
}

/// `tinker tenant delete`: refused with keys unless --force; then the name
/// is unknown, open connections bound to it are refused, and a restart
/// after a crash (kill -9) replays the WAL past the deleted tenant's
/// records; created again, it is empty.
#[test]
fn a_tenant_is_deleted_its_sessions_refused_and_it_stays_deleted_across_a_crash() {
    let node = TestNode::start_with_config(2, CONFIG);
    let tinker = |node: &TestNode, args: &[&str]| {
        let output = std::process::Command::new(common::workspace_binary("tinker"))
            .args(["--admin", &node.admin_addr.to_string()])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        )
    };
    let (status, _, stderr) = tinker(&node, &["tenant", "create", "doomed"]);
    assert_eq!(status, Some(0), "{stderr}");
    let runtime = common::client_runtime();
    let doomed = runtime.block_on(async {
        let doomed = tenant_client(&node, "doomed").await;
        for i in 0..50 {
            doomed.set(format!("k{i}"), "v").await.unwrap();
        }
        // A key in another database of it, too.
        let doomed7 = tenant_client(&node, "doomed/7").await;
        doomed7.set("elsewhere", "v").await.unwrap();
        doomed
    });
    let mut redis = redis::Client::open(format!("redis://{}/", node.resp_addr))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("AUTH")
        .arg("doomed")
        .arg("pw")
        .query(&mut redis)
        .unwrap();
    let (status, _, stderr) = tinker(&node, &["tenant", "delete", "doomed"]);
    assert_eq!(status, Some(2));
    assert!(stderr.contains("tenant_not_empty"), "{stderr}");
    let (status, _, stderr) = tinker(&node, &["tenant", "delete", "default"]);
    assert_eq!(status, Some(2));
    assert!(stderr.contains("cannot be deleted"), "{stderr}");
    let (status, stdout, stderr) = tinker(&node, &["tenant", "delete", "doomed", "--force"]);
    assert_eq!(status, Some(0), "{stderr}");
    assert_eq!(stdout, "tenant doomed deleted (51 keys removed)");
    let (_, listed, _) = tinker(&node, &["tenant", "list"]);
    assert!(!listed.contains("doomed"), "{listed}");
    // Open sessions bound to it: refused, on both protocols.
    let refused: redis::RedisResult<Option<String>> = redis::cmd("GET").arg("k1").query(&mut redis);
    assert!(refused
        .unwrap_err()
        .to_string()
        .contains("tenant doomed was deleted"),);
    runtime.block_on(async {
        let error = doomed.set("k", "v").await.unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::UnknownTenant), "{error}");
        let refused =
            Client::connect(ClientConfig::new(node.addr.to_string()).tenant("doomed")).await;
        assert_eq!(
            refused.err().and_then(|error| error.code()),
            Some(ErrorCode::UnknownTenant)
        );
    });
    // A crash: the WAL still holds the deleted tenant's writes; recovery
    // skips them and the tenant stays deleted.
    let dir = node.crash();
    let node = TestNode::start_in(2, CONFIG, &dir, &[]);
    let (_, listed, _) = tinker(&node, &["tenant", "list"]);
    assert!(!listed.contains("doomed"), "{listed}");
    // Created again: empty, in every database.
    let (status, _, stderr) = tinker(&node, &["tenant", "create", "doomed"]);
    assert_eq!(status, Some(0), "{stderr}");
    runtime.block_on(async {
        let again = tenant_client(&node, "doomed").await;
        assert_eq!(again.count().await.unwrap(), 0);
        assert_eq!(again.get("k1").await.unwrap(), None);
        let again7 = tenant_client(&node, "doomed/7").await;
        assert_eq!(again7.get("elsewhere").await.unwrap(), None);
        again.set("fresh", "v").await.unwrap();
    });
}
