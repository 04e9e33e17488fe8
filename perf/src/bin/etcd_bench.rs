//! `etcd-bench`: the etcd peer of the replication benchmarks. Closed loop:
//! `--clients` tasks, each with one put (or linearizable get) in flight,
//! over `--connections` gRPC channels to the cluster's endpoints, like
//! etcd's own `benchmark put --clients N --conns M`. Prints one JSON line
//! in the shape of `tinkerdb-bench run`, so `tinkerdb-bench report` reads
//! both.
//!
//! Built only with `--features etcd` (needs protoc): `perf/run-cluster`.

use std::time::{Duration, Instant};

use clap::Parser;
use etcd_client::Client;
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
struct Args {
    /// Comma-separated endpoints (host:port).
    #[arg(long)]
    endpoints: String,
    /// Concurrent clients (requests in flight).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// gRPC connections shared by the clients.
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// `put` or `get` (linearizable).
    #[arg(long, default_value = "put")]
    mix: String,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Value size.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Unmeasured seconds before.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// Report label.
    #[arg(long, default_value = "cluster")]
    label: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let endpoints: Vec<String> = args.endpoints.split(',').map(str::to_owned).collect();
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(Client::connect(&endpoints, None).await?);
    }
    let start = Instant::now() + Duration::from_millis(100);
    let measure_from = start + Duration::from_secs_f64(args.warmup_seconds);
    let end = measure_from + Duration::from_secs_f64(args.seconds);
    let value = vec![b'x'; args.value_bytes];
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut kv = channels[c % channels.len()].kv_client();
        let value = value.clone();
        let mix = args.mix.clone();
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut errors = 0u64;
            let mut n = (c as u64).wrapping_mul(2_654_435_761) % keys;
            tokio::time::sleep_until(start.into()).await;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                n = (n + 7919) % keys;
                let key = format!("key:{n:012}");
                let outcome = if mix == "get" {
                    kv.get(key, None).await.map(drop)
                } else {
                    kv.put(key, value.clone(), None).await.map(drop)
                };
                if sent >= measure_from {
                    histogram.saturating_record(sent.elapsed().as_micros().max(1) as u64);
                    if outcome.is_err() {
                        errors += 1;
                    }
                }
            }
            anyhow::Ok((histogram, errors))
        }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for task in tasks {
        let (h, e) = task.await??;
        histogram.add(&h)?;
        errors += e;
    }
    let ops = histogram.len();
    let line = serde_json::json!({
        "target": "etcd", "label": args.label, "mix": args.mix, "distribution": "uniform",
        "connections": args.clients, "pipeline": 1, "value_bytes": args.value_bytes,
        "keys": args.keys, "rate": 0, "seconds": args.seconds, "ops": ops, "errors": errors,
        "ops_per_second": ops as f64 / args.seconds,
        "p50_us": histogram.value_at_quantile(0.5), "p99_us": histogram.value_at_quantile(0.99),
        "p999_us": histogram.value_at_quantile(0.999), "max_us": histogram.max(),
        "machine": std::env::var("BENCH_MACHINE").unwrap_or_default(),
    });
    println!("{line}");
    Ok(())
}
