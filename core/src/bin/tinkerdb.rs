//! `tinkerdb`: runs one TinkerDB node. With no arguments it serves the
//! client protocol on 127.0.0.1:7379 with one core per CPU and its data in
//! ./tinkerdb-data.

/// mimalloc rather than glibc's malloc: a node makes many small, short-lived
/// allocations per request (frames, commands, Raft entries), and a profile
/// of a cluster leader under 100 clients spent about 15% of its CPU in
/// glibc's malloc and free (docs/PERFORMANCE.md). Built without transparent
/// huge pages (the workspace's `no_thp` feature): with them every range's
/// few KB of start-up state held a 2 MiB page (3.2 MiB per range, 1.66x
/// Redis's memory per key at 100k keys; docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hands this thread's freed pages back to the kernel: mimalloc's
/// `mi_collect(false)` frees the thread's empty pages and purges the
/// freed memory whose purge delay (1 s by default) has passed.
///
/// Why a core calls it (`node::release_freed_memory_with`): mimalloc
/// purges only from inside a later `malloc` or `free` of the same thread,
/// so a core that went quiet after a burst (a bulk load, a flood of
/// connections whose buffers were freed) kept the burst's freed pages
/// resident for as long as it stayed quiet: about 8% of the RSS of 100k
/// keys. Setting the purge delay to 0 instead fixed that but cost a busy
/// node 15% of its CPU per replicated write, the pages it freed being
/// faulted in again a moment later (docs/PERFORMANCE.md, "Issue 18").
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: mi_collect only walks the calling thread's own heap and the
    // arenas' purge lists; it takes no pointer from the caller.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use clap::{Parser, ValueEnum};
use tinkerdb_core::config::{Durability, NodeConfig};
use tinkerdb_core::node::NodeStopper;
use tinkerdb_replication::transport::PeerAddr;

#[derive(Parser, Debug)]
#[command(
    name = "tinkerdb",
    version,
    about = "TinkerDB node: a thread-per-core key-value server"
)]
struct Args {
    /// TOML configuration file (see docs/config.sample.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Client protocol address to bind [default: 127.0.0.1:7379].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The client address others are told, HOST:PORT, when it differs from
    /// --listen (bind 0.0.0.0:7379, advertise node1:7379) [default: --listen].
    #[arg(long)]
    advertise_listen: Option<PeerAddr>,
    /// Redis-protocol (RESP) address [default: 127.0.0.1:7381].
    #[arg(long)]
    resp_listen: Option<SocketAddr>,
    /// Do not serve the Redis protocol.
    #[arg(long, conflicts_with = "resp_listen")]
    no_resp: bool,
    /// Admin HTTP API, metrics and dashboard address [default: 127.0.0.1:7380].
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Do not serve the admin plane.
    #[arg(long, conflicts_with = "admin_listen")]
    no_admin: bool,
    /// Data directory [default: ./tinkerdb-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Cores (executors) to run; 0 = one per CPU [default: 0].
    #[arg(long)]
    cores: Option<usize>,
    /// Cluster mode: replicas of each range, odd [default: 3]; a cluster of
    /// more seed nodes places each range on this many of them.
    #[arg(long)]
    replication_factor: Option<usize>,
    /// When writes are acknowledged [default: sync].
    #[arg(long, value_enum)]
    durability: Option<Durability>,
    /// Cluster mode: this node's id (with --peers, or --join and --raft-listen).
    #[arg(long)]
    node_id: Option<u64>,
    /// Cluster mode: every node as ID=HOST:PORT (its Raft address: one
    /// port per node), this node included. HOST is an IP or a host
    /// name (`1=node1:7390,2=node2:7390`), resolved again whenever a peer
    /// is reconnected; this node's own entry is what its peers dial.
    #[arg(long, requires = "node_id", conflicts_with = "join")]
    peers: Option<String>,
    /// Join a running cluster through a member's admin address (HOST:PORT,
    /// as in `Admin API ... on http://HOST:PORT/`); needs --node-id and
    /// --raft-listen.
    #[arg(long, requires_all = ["node_id", "raft_listen"])]
    join: Option<String>,
    /// Where this node binds its Raft listener (one port), e.g.
    /// 0.0.0.0:7390 [with --peers, default: this node's --peers entry].
    #[arg(long)]
    raft_listen: Option<SocketAddr>,
    /// The Raft address peers are told and dial, HOST:PORT. With
    /// --join [default: --raft-listen]; with --peers it must be this node's
    /// --peers entry (that is what the other nodes dial).
    #[arg(long)]
    advertise_raft: Option<PeerAddr>,
    /// Log line format (logs go to stderr; level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Print the Argon2id hash of a password read from stdin (its first
    /// line), for a config file's `[[auth.users]] password_hash`, and exit.
    #[arg(long)]
    hash_password: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    tinkerdb_core::node::release_freed_memory_with(release_freed_memory);
    let args = Args::parse();
    if args.hash_password {
        let mut password = String::new();
        std::io::stdin().read_line(&mut password)?;
        let password = password.trim_end_matches(['\r', '\n']);
        let hash = tinkerdb_admin::users::hash_password(password.as_bytes())
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        println!("{hash}");
        return Ok(());
    }
    let log_filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // glommio logs an ERROR when a filesystem lacks io_uring polled I/O
        // (it falls back on its own): not an error of ours. openraft logs
        // every vote and election at info: warn is enough by default; and
        // it warns of every failed heartbeat to a dead peer (10 a second
        // per group): the health probes log that peer once instead
        // (`tinkerdb_replication::health`).
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "info,glommio::reactor=off,openraft=warn,openraft::core::heartbeat=error",
            )
        });
    let mut config = match &args.config {
        Some(path) => NodeConfig::from_file(path)?,
        None => NodeConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(resp_listen) = args.resp_listen {
        config.resp_listen = resp_listen;
    }
    if args.no_resp {
        config.resp_enabled = false;
    }
    if let Some(admin_listen) = args.admin_listen {
        config.admin_listen = admin_listen;
    }
    if args.no_admin {
        config.admin_enabled = false;
    }
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    if let Some(durability) = args.durability {
        config.durability = durability;
    }
    if let Some(cores) = args.cores {
        config.cores = cores;
    }
    if let Some(factor) = args.replication_factor {
        config.replication_factor = factor;
    }
    if let Some(advertise) = args.advertise_listen {
        config.advertise_listen = Some(advertise);
    }
    match (args.node_id, &args.peers, &args.join, args.raft_listen) {
        (Some(node_id), Some(peers), None, raft_listen) => {
            let mut cluster = tinkerdb_core::config::ClusterConfig::from_flags(node_id, peers)?;
            if raft_listen.is_some() {
                cluster.raft_listen = raft_listen;
            }
            if let Some(advertise) = &args.advertise_raft {
                let own = cluster.nodes.iter().find(|node| node.id == node_id);
                if own.is_some_and(|own| &own.raft != advertise) {
                    anyhow::bail!(
                        "--advertise-raft {advertise} differs from this node's --peers entry: \
                         the other nodes dial what --peers says, so list {node_id}={advertise} there"
                    );
                }
            }
            config.cluster = Some(cluster);
        }
        (Some(node_id), None, Some(join), Some(raft)) => {
            config.cluster = Some(tinkerdb_core::config::ClusterConfig::joining(
                node_id,
                raft,
                args.advertise_raft.clone(),
                join.clone(),
            ));
        }
        (Some(_), None, None, _) => {
            anyhow::bail!("--node-id needs --peers (start a cluster) or --join (join one)")
        }
        (None, ..) if args.raft_listen.is_some() || args.advertise_raft.is_some() => {
            anyhow::bail!("--raft-listen and --advertise-raft need cluster mode (--node-id)")
        }
        _ => {}
    }
    let cluster = config.cluster.clone();
    let ranges_per_core = config.ranges_per_core;
    // Logs (and traces) start once the configuration is read: its
    // [tracing] table says whether spans are exported. Errors before this
    // point end `main` with their message.
    let instance = match &cluster {
        Some(cluster) => format!("node-{}", cluster.node_id),
        None => "standalone".to_owned(),
    };
    let telemetry = tinkerdb_core::telemetry::init(&config.tracing, &instance)?;
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::Layer;
        let logs = match args.log_format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .boxed(),
        };
        let traces = telemetry.as_ref().map(|telemetry| {
            tracing_opentelemetry::layer()
                .with_tracer(telemetry.tracer())
                .with_filter(tracing_subscriber::filter::filter_fn(
                    tinkerdb_core::telemetry::only_traced_spans,
                ))
        });
        tracing_subscriber::registry()
            .with(logs.with_filter(log_filter))
            .with(traces)
            .init();
    }
    if let Some(endpoint) = &config.tracing.otlp_endpoint {
        // Never a password of the URL's (http://user:pass@host/...).
        let endpoint = match endpoint.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((_, host)) if !host.contains('/') || rest.find('@') < rest.find('/') => {
                    format!("{scheme}://***@{host}")
                }
                _ => endpoint.clone(),
            },
            None => endpoint.clone(),
        };
        tracing::info!(
            %endpoint,
            sample_ratio = config.tracing.sample_ratio,
            "tracing: exporting spans of sampled requests (OTLP/HTTP)"
        );
    }
    let tls_on = config.tls.is_some();
    let (stopper, reloader) = watch_signals()?;
    let outcome = tinkerdb_core::node::run(config, |info| {
        let _ = stopper.set(info.stopper.clone());
        if let Some(tls) = &info.tls {
            let _ = reloader.set(tls.clone());
        }
        // Tests and scripts read this line: keep its shape.
        println!(
            "TinkerDB {} ready: clients on {} (cores: {}, durability: {}, data dir: {})",
            env!("CARGO_PKG_VERSION"),
            info.client_addr,
            info.cores,
            info.durability,
            info.data_dir.display()
        );
        if let Some(resp_addr) = info.resp_addr {
            println!(
                "Redis protocol on {resp_addr} (redis-cli -p {})",
                resp_addr.port()
            );
        }
        if let Some(admin_addr) = info.admin_addr {
            let scheme = if tls_on { "https" } else { "http" };
            println!(
                "Admin API and dashboard on {scheme}://{admin_addr}/ (metrics: {scheme}://{admin_addr}/metrics)"
            );
        }
        if let Some(cluster) = &cluster {
            let ranges = info.cores * ranges_per_core;
            let partial = info.layout.as_ref().filter(|layout| !layout.is_full());
            match (&cluster.join, partial) {
                (Some(join), _) => println!(
                    "Cluster node {}: joined through {join}; {ranges} ranges (Raft groups), each \
                     replicated on every node",
                    cluster.node_id
                ),
                (None, Some(layout)) => println!(
                    "Cluster node {} of {}: {ranges} ranges (Raft groups), each replicated on \
                     {} of the {} nodes; the others' are forwarded",
                    cluster.node_id,
                    cluster.nodes.len(),
                    layout.replication_factor,
                    cluster.nodes.len()
                ),
                (None, None) => println!(
                    "Cluster node {} of {}: {ranges} ranges (Raft groups), each replicated on \
                     every node",
                    cluster.node_id,
                    cluster.nodes.len()
                ),
            }
        }
        println!("Try it: tinker --addr {} set hello world", info.client_addr);
        tracing::info!(
            client_addr = %info.client_addr,
            advertised = %info.advertised_client,
            cores = info.cores,
            "node ready"
        );
    });
    // The spans of the last requests leave before the process does.
    if let Some(telemetry) = &telemetry {
        telemetry.shutdown();
    }
    match outcome {
        // What the machine lacks (io_uring, locked memory): the message
        // alone, its first line stable (`io_uring is unavailable: ...`).
        Err(error) if error.is::<tinkerdb_core::platform::PlatformError>() => {
            eprintln!("{error}");
            std::process::exit(1);
        }
        other => other,
    }
}

/// The node's TLS, to reload on SIGHUP once the node is ready.
type TlsReloader = Arc<OnceLock<tinkerdb_core::net::tls::TlsSettings>>;

/// SIGTERM and SIGINT: the first starts a graceful shutdown once the node
/// is ready (before that there is nothing to drain: it exits at once); a
/// second exits at once, with status 128 + the signal's number as a shell
/// reports a killed process. SIGHUP reloads the TLS certificates (a node
/// without `[tls]` ignores it).
fn watch_signals() -> anyhow::Result<(Arc<OnceLock<NodeStopper>>, TlsReloader)> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let stopper: Arc<OnceLock<NodeStopper>> = Arc::default();
    let reloader: TlsReloader = Arc::default();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let watched = stopper.clone();
    let tls = reloader.clone();
    std::thread::Builder::new()
        .name("tinkerdb-signals".into())
        .spawn(move || {
            let mut asked = false;
            for signal in signals.forever() {
                if signal == SIGHUP {
                    match tls.get().map(|tls| tls.reload()) {
                        None => tracing::info!("SIGHUP: no [tls] to reload"),
                        Some(Ok(())) => {}
                        Some(Err(error)) => tracing::error!(
                            error = format!("{error:#}"),
                            "SIGHUP: certificates not reloaded (the old ones stay)"
                        ),
                    }
                    continue;
                }
                match watched.get() {
                    Some(stopper) if !asked => {
                        asked = true;
                        tracing::info!(
                            signal,
                            "stop signal: shutting down gracefully (a second one exits at once)"
                        );
                        stopper.stop();
                    }
                    _ => {
                        tracing::warn!(signal, "stop signal: exiting at once");
                        std::process::exit(128 + signal);
                    }
                }
            }
        })?;
    Ok((stopper, reloader))
}
