//! `tinkerdb-bench`: the load generator of TinkerDB's perf suite.
//!
//! `tinkerdb-bench run ...` drives one target (TinkerDB or Redis) with a
//! workload and prints one JSON result line; `tinkerdb-bench report FILE`
//! reads such lines (from `perf/run`, which alternates targets A B A B) and
//! prints the comparison table: medians, min-max spread, TinkerDB/peer ratio.
//!
//! Two loop disciplines:
//! - closed loop (default): each connection sends a batch of `--pipeline`
//!   requests as soon as the previous batch is answered;
//! - open loop (`--rate`): batches leave on a fixed schedule and latency is
//!   measured from the *intended* send time, so a server stall shows up in
//!   the latency of every request that should have been sent during it
//!   (no coordinated omission).

mod driver;
mod report;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;

use driver::{Answer, Connection, Target};
use workload::{Distribution, Mix, Op, Workload};

#[derive(Parser, Debug)]
#[command(name = "tinkerdb-bench", about = "TinkerDB load generator")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one workload against one target; print a JSON result line.
    Run(RunArgs),
    /// Summarise JSON result lines into a comparison table.
    Report {
        /// File of JSON lines written by `run`.
        results: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum TargetKind {
    Tinkerdb,
    Redis,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    /// Server kind.
    #[arg(long, value_enum)]
    target: TargetKind,
    /// Server address, or several separated by commas (a cluster's nodes:
    /// connection c goes to address c mod their count).
    #[arg(long)]
    addr: String,
    /// A label for the report (e.g. "memory", "sync").
    #[arg(long, default_value = "default")]
    label: String,
    /// TinkerDB tenant.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Requests per batch on each connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Operation mix.
    #[arg(long, value_enum, default_value_t = Mix::Set)]
    mix: Mix,
    /// Key distribution.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    distribution: Distribution,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Unmeasured seconds before.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// Open loop: total requests per second (0: closed loop).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Write every key once before measuring (default: when the mix reads).
    #[arg(long)]
    preload: Option<bool>,
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Authenticate as this user (with TINKERDB_BENCH_PASSWORD): TinkerDB's
    /// Hello, or RESP's AUTH user password.
    #[arg(long, requires = "password")]
    user: Option<String>,
    /// The user's password.
    #[arg(
        long,
        env = "TINKERDB_BENCH_PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    password: Option<String>,
    /// The server's process id: report its CPU time (user + system, every
    /// thread, from `/proc/PID/stat`) per answered operation over the
    /// measured window. Repeat for a server of several processes (a
    /// cluster on one machine).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
}

/// One run's figures (one JSON line).
#[derive(Debug, Serialize, serde::Deserialize, Clone)]
pub struct RunResult {
    /// Target kind.
    pub target: String,
    /// Free label.
    pub label: String,
    /// Mix.
    pub mix: String,
    /// Distribution.
    pub distribution: String,
    /// Connections.
    pub connections: usize,
    /// Pipeline depth.
    pub pipeline: usize,
    /// Value size.
    pub value_bytes: usize,
    /// Keys.
    pub keys: u64,
    /// Open-loop rate (0: closed loop).
    pub rate: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Answers counted.
    pub ops: u64,
    /// Error answers.
    pub errors: u64,
    /// Throughput.
    pub ops_per_second: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    /// p99.
    pub p99_us: u64,
    /// p99.9.
    pub p999_us: u64,
    /// max.
    pub max_us: u64,
    /// Server CPU time (user + system) per answered operation over the
    /// measured window, microseconds (absent without `--server-pid`).
    #[serde(default)]
    pub server_cpu_us_per_op: Option<f64>,
    /// Machine and commit, so every figure says where it came from.
    pub machine: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Command::Run(run_args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(run_args.threads.max(1))
                .enable_all()
                .build()?;
            let result = runtime.block_on(run(run_args))?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        Command::Report { results } => report::print(&results),
    }
}

fn login_of(args: &RunArgs) -> Option<(&str, &str)> {
    args.user.as_deref().zip(args.password.as_deref())
}

fn target_of(args: &RunArgs) -> Target {
    match args.target {
        TargetKind::Tinkerdb => Target::TinkerDb {
            tenant: args.tenant.clone(),
        },
        TargetKind::Redis => Target::Redis,
    }
}

/// The address connection `connection` opens (`--addr` lists one or more).
fn addr_of(args: &RunArgs, connection: u64) -> &str {
    let addrs: Vec<&str> = args.addr.split(',').map(str::trim).collect();
    addrs[connection as usize % addrs.len()]
}

async fn preload(args: &RunArgs) -> anyhow::Result<()> {
    const DEPTH: u64 = 256;
    let value = vec![b'v'; args.value_bytes];
    let connections = args.connections.clamp(1, 16) as u64;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let args = args.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut connection =
                Connection::open(addr_of(&args, c), target_of(&args), login_of(&args)).await?;
            let mut n = c;
            while n < args.keys {
                let mut batch = 0;
                while batch < DEPTH && n < args.keys {
                    connection.queue(Op::Set(n), &value);
                    n += connections;
                    batch += 1;
                }
                connection.flush().await?;
                for _ in 0..batch {
                    if connection.read_answer().await? == Answer::Error {
                        anyhow::bail!("preload write refused");
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<RunResult> {
    if args.preload.unwrap_or(args.mix.needs_preload()) {
        preload(&args).await.context("preload")?;
    }
    let value: Arc<[u8]> = vec![b'x'; args.value_bytes].into();
    let start = Instant::now() + Duration::from_millis(100);
    let measure_from = start + Duration::from_secs_f64(args.warmup_seconds);
    let end = measure_from + Duration::from_secs_f64(args.seconds);
    // Open loop: each connection sends one batch per interval.
    let batch_interval = (args.rate > 0).then(|| {
        let batches_per_second = args.rate as f64 / (args.connections * args.pipeline) as f64;
        Duration::from_secs_f64(1.0 / batches_per_second)
    });
    let cpu_window = (!args.server_pids.is_empty()).then(|| {
        let pids = args.server_pids.clone();
        tokio::spawn(server_cpu_between(pids, measure_from, end))
    });
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let args = args.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut errors = 0u64;
            let mut connection =
                Connection::open(addr_of(&args, c as u64), target_of(&args), login_of(&args))
                    .await?;
            let mut workload = Workload::new(args.mix, args.distribution, args.keys, c as u64 + 1);
            // Spread the connections' schedules over one interval.
            let mut intended = start
                + batch_interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(c as f64 / args.connections as f64)
                });
            tokio::time::sleep_until(start.into()).await;
            loop {
                if let Some(interval) = batch_interval {
                    tokio::time::sleep_until(intended.into()).await;
                    intended += interval;
                }
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                // Latency counts from when the batch should have left.
                let from = match batch_interval {
                    Some(interval) => intended - interval,
                    None => sent,
                };
                for _ in 0..args.pipeline {
                    connection.queue(workload.next_op(), &value);
                }
                connection.flush().await?;
                for _ in 0..args.pipeline {
                    let answer = connection.read_answer().await?;
                    if from >= measure_from {
                        let micros = from.elapsed().as_micros().max(1) as u64;
                        histogram.saturating_record(micros);
                        if answer == Answer::Error {
                            errors += 1;
                        }
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
    let server_cpu_us_per_op = match cpu_window {
        Some(task) => Some(task.await?? * 1e6 / ops.max(1) as f64),
        None => None,
    };
    Ok(RunResult {
        target: format!("{:?}", args.target).to_lowercase(),
        label: args.label.clone(),
        mix: format!("{:?}", args.mix).to_lowercase(),
        distribution: format!("{:?}", args.distribution).to_lowercase(),
        connections: args.connections,
        pipeline: args.pipeline,
        value_bytes: args.value_bytes,
        keys: args.keys,
        rate: args.rate,
        seconds: args.seconds,
        ops,
        errors,
        ops_per_second: ops as f64 / args.seconds,
        p50_us: histogram.value_at_quantile(0.50),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
        server_cpu_us_per_op,
        machine: std::env::var("BENCH_MACHINE").unwrap_or_default(),
    })
}

/// CPU seconds (user + system, all threads) the processes `pids` used from
/// `from` to `to`, read from `/proc/PID/stat` (fields 14 and 15, in clock
/// ticks: 10 ms at the usual 100 Hz, so a window of seconds is accurate to
/// a fraction of a percent).
async fn server_cpu_between(pids: Vec<u32>, from: Instant, to: Instant) -> anyhow::Result<f64> {
    fn cpu_ticks(pids: &[u32]) -> anyhow::Result<u64> {
        let mut total = 0;
        for pid in pids {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .with_context(|| format!("server process {pid}"))?;
            // The command name (field 2) may hold spaces: count from its ')'.
            let after_name = &stat[stat.rfind(')').context("malformed /proc stat")? + 2..];
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            // Fields 14 and 15 of the line are the 12th and 13th after the name.
            total += fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        }
        Ok(total)
    }
    // USER_HZ: the unit of these fields is fixed at 100 by Linux's ABI on
    // every architecture this runs on (what `getconf CLK_TCK` prints).
    let ticks_per_second = 100.0;
    tokio::time::sleep_until(from.into()).await;
    let before = cpu_ticks(&pids)?;
    tokio::time::sleep_until(to.into()).await;
    let after = cpu_ticks(&pids)?;
    Ok(after.saturating_sub(before) as f64 / ticks_per_second)
}
