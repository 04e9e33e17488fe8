//! A first program against a running node (`cargo run --release --bin tinkerdb`):
//!
//! ```sh
//! cargo run --example quickstart -p tinkerdb-client -- 127.0.0.1:7379
//! ```

use std::time::Duration;

use tinkerdb_client::{Client, ClientConfig, SetCondition, SetOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7379".into());
    let client = Client::connect(ClientConfig::new(addr)).await?;

    // Plain writes and reads; every write returns the key's new version.
    let version = client.set("user:1:name", "Ada").await?;
    let value = client.get("user:1:name").await?.expect("just written");
    println!("user:1:name = {:?} (version {version})", value.value);

    // A key that expires, and a write that only happens if the key is new.
    let session = SetOptions {
        ttl: Some(Duration::from_secs(30)),
        condition: SetCondition::IfAbsent,
    };
    let created = client.set_with("session:42", "token", session).await?;
    println!("session created: {}", created.applied);

    // Read-modify-write without lost updates: compare-and-set on the version.
    loop {
        let current = client.get("visits").await?;
        let (count, version) = match &current {
            Some(value) => (
                std::str::from_utf8(&value.value)?.parse::<u64>()?,
                value.version,
            ),
            None => (0, 0),
        };
        let result = client
            .compare_and_set("visits", version, (count + 1).to_string(), None)
            .await?;
        if result.applied {
            println!("visits = {}", count + 1);
            break;
        }
    }

    // Many keys at once, and a cursor scan by prefix.
    client
        .mset(&[("user:2:name", "Grace"), ("user:3:name", "Barbara")])
        .await?;
    let names = client
        .mget(&["user:1:name", "user:2:name", "user:9:name"])
        .await?;
    println!("found {} of 3 users", names.iter().flatten().count());
    let users = client
        .scan_all(&tinkerdb_client::ScanOptions {
            prefix: b"user:".to_vec(),
            ..Default::default()
        })
        .await?;
    println!(
        "{} user keys, {} keys in the tenant",
        users.len(),
        client.count().await?
    );
    Ok(())
}
