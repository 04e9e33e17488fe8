//! Starting a node: one pinned glommio executor per core, the channels
//! between them, and a client listener on every core.
//!
//! Start-up order matters and is:
//! 1. validate the config, create the data directory;
//! 2. build the read-only tables every core shares (slot map, tenants) and
//!    one channel per ordered pair of cores;
//! 3. start core 0, which binds the client address (port 0 becomes a real
//!    port here), then the other cores, which bind the same address with
//!    `SO_REUSEPORT` so the kernel spreads connections over them;
//! 4. once every core has bound and connected its channels, start the
//!    admin plane (its own tokio thread, reaching the cores only through
//!    one bounded channel each) and report ready.
//!
//! It stops when a core fails (the whole node stops: a core's slots cannot
//! be served elsewhere) or, gracefully, when [`NodeStopper::stop`] is
//! called (see [`crate::shutdown`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};

use crate::config::NodeConfig;
use crate::coord::context::{now_ms, CoreContext, CoreMessage};
use crate::coord::dispatch::serve_peer;
use crate::coord::snapshots::drive_snapshots;
use crate::frontend::fbs::serve_connection;
use crate::net::listener::PortSharing;
use crate::net::tls::ClientStream;
use crate::shard::recovery::recover_core;
use crate::shard::{Journal, Shard};
use crate::shutdown::{stop_signal, CoreStopSignals, StopSignal};
use crate::slots::{CoreId, MoveClaims, SlotMap};
use crate::tenants::{CoreTenants, TenantRegistry};
use tinkerdb_admin::tenants_file::{self, TenantSpec};
use tinkerdb_admin::users::Users;
use tinkerdb_admin::{CoreInbox, NodeFacts, NodeHandle};

use crate::coord::quotas::apply_quotas;
use crate::frontend::admin::serve_admin;

/// Memory each executor registers with io_uring for its I/O buffers. Kept
/// small: the default `ulimit -l` here is 8 MiB for the whole process.
pub const IO_MEMORY_BYTES_PER_CORE: usize = 1 << 20;

/// Scheduler shares of the snapshot task queue (requests have 1000).
pub const SNAPSHOT_SHARES: usize = 100;

/// How often each core removes expired keys (active expiry).
pub const ACTIVE_EXPIRY_INTERVAL: Duration = Duration::from_millis(100);

/// Most expiry-queue items one core looks at per tick (bounds the pause).
pub const ACTIVE_EXPIRY_MAX_ITEMS_PER_TICK: usize = 10_000;

/// How often each core calls the hook of [`release_freed_memory_with`].
pub const FREED_MEMORY_RELEASE_INTERVAL: Duration = Duration::from_secs(1);

/// The hook each core calls every [`FREED_MEMORY_RELEASE_INTERVAL`].
static FREED_MEMORY_RELEASE: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Has every core call `release` on its own thread every
/// [`FREED_MEMORY_RELEASE_INTERVAL`], so that memory a core freed goes
/// back to the kernel even while the core is quiet. The allocator is the
/// binary's choice (`tinkerdb` uses mimalloc, which otherwise purges only
/// from inside a later allocation of the same thread), so the binary
/// provides the hook; without one, cores do nothing of the kind. The first
/// hook set stays.
pub fn release_freed_memory_with(release: fn()) {
    let _ = FREED_MEMORY_RELEASE.set(release);
}

/// What a started node tells its caller.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The bound client address (the real port if 0 was asked).
    pub client_addr: SocketAddr,
    /// The client address others are told: `advertise_listen`, or the
    /// bound one.
    pub advertised_client: String,
    /// The bound Redis-protocol address, if enabled.
    pub resp_addr: Option<SocketAddr>,
    /// Number of cores serving.
    pub cores: usize,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The durability mode, as configured (`sync`, `interval`, `none`).
    pub durability: String,
    /// The bound admin address, if the admin plane runs.
    pub admin_addr: Option<SocketAddr>,
    /// Starts a graceful shutdown of this node.
    pub stopper: NodeStopper,
    /// The node's TLS (`[tls]`), to reload its certificates (SIGHUP).
    pub tls: Option<crate::net::tls::TlsSettings>,
    /// Cluster mode: the node's range layout (which nodes hold each range).
    pub layout: Option<Arc<crate::cluster::layout::RangeLayout>>,
}

/// The client address others are told (`advertise_listen`, else `bound`).
fn advertised_client(config: &NodeConfig, bound: SocketAddr) -> String {
    match &config.advertise_listen {
        Some(addr) => addr.to_string(),
        None => bound.to_string(),
    }
}

/// This node's record in the cluster metadata (`cluster::meta`): the
/// addresses it serves at as others can dial them. An address bound to
/// every interface (`0.0.0.0`, `::`) is given with the host of the node's
/// advertised Raft address instead; the client address is
/// `advertise_listen` when set.
fn node_record(
    config: &NodeConfig,
    cluster: &crate::config::ClusterConfig,
    client: SocketAddr,
    resp: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    cores: usize,
) -> crate::cluster::meta::NodeRecord {
    let raft = cluster.me().raft.clone();
    let reachable = |bound: SocketAddr| match bound.ip().is_unspecified() {
        true => crate::net::host_port(raft.host(), bound.port()),
        false => bound.to_string(),
    };
    crate::cluster::meta::NodeRecord {
        id: cluster.node_id,
        raft: raft.to_string(),
        client: match &config.advertise_listen {
            Some(addr) => addr.to_string(),
            None => reachable(client),
        },
        resp: resp.map(reachable),
        admin: admin.map(reachable),
        cores: cores as u32,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Runs a node until its cores stop. Calls `on_ready` once every core is
/// serving. Returns `Ok` after a graceful shutdown ([`NodeInfo::stopper`]),
/// an error if a core failed or the shutdown overran
/// `shutdown_timeout_ms`.
pub fn run(mut config: NodeConfig, on_ready: impl FnOnce(&NodeInfo)) -> anyhow::Result<()> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let _lock = lock_data_dir(&config.data_dir)?;
    // The CPUs this process may use (its affinity: `docker --cpuset-cpus`,
    // `taskset`, systemd `CPUAffinity`), not every CPU online.
    let cpus: Vec<usize> = crate::platform::allowed_cpus()
        .or_else(|| {
            glommio::CpuSet::online()
                .ok()
                .map(|set| set.into_iter().map(|location| location.cpu).collect())
        })
        .unwrap_or_default();
    let cores = match config.cores {
        // One per usable CPU, and no more than the cgroup's CPU quota
        // (`docker --cpus`) gives time for.
        0 => {
            let quota = crate::platform::cpu_quota().unwrap_or(usize::MAX);
            cpus.len().min(quota).max(1)
        }
        cores => cores,
    };
    // Before any executor: a clear message rather than glommio's panic.
    crate::platform::check(cores, IO_MEMORY_BYTES_PER_CORE)?;
    if let Some(cluster) = &mut config.cluster {
        // Resolved once, here, before the cores start (a host name in
        // --peers binds where it resolves unless --raft-listen says).
        let bind = cluster.raft_bind()?;
        cluster.raft_listen = Some(bind);
    }
    refuse_shared_ports(&config)?;
    check_node_file(
        &config.data_dir,
        cores,
        config.databases,
        config.ranges_per_core,
    )?;
    let slot_map = Arc::new(SlotMap::placed(cores, config.ranges_per_core));
    // Cluster mode: ranges moved at runtime stay where they were moved.
    if config.cluster.is_some() {
        slot_map
            .load_placement(&config.data_dir)
            .map_err(|error| anyhow!("{error}"))?;
    }
    // Cluster mode: which nodes replicate each range (fixed at the
    // cluster's creation, recorded in the data directory); the ranges
    // other nodes hold are forwarded there.
    let node_cluster = match &config.cluster {
        Some(cluster) => {
            let seeds: Vec<u64> = match cluster.join {
                Some(_) => Vec::new(),
                None => cluster.nodes.iter().map(|node| node.id).collect(),
            };
            // Raft state from before layouts: every range was on every node.
            let has_raft_state = (0..cores).any(|core| {
                let core_dir = config.data_dir.join(format!("core-{core}"));
                core_dir.join(crate::cluster::CORE_LOG_DIR).exists()
            });
            let layout = crate::cluster::layout::RangeLayout::load_or_plan(
                &config.data_dir,
                &seeds,
                slot_map.ranges(),
                config.replication_factor,
                has_raft_state,
            )?;
            for range in 0..slot_map.ranges() {
                if !layout.replicates(cluster.node_id, range) {
                    slot_map.set_remote(range);
                }
            }
            // Where the ranges this node does not hold are.
            let remote: Vec<Vec<u64>> = (0..slot_map.ranges())
                .map(|range| match slot_map.is_remote(range) {
                    true => layout.replicas_of(range).unwrap_or_default().to_vec(),
                    false => Vec::new(),
                })
                .collect();
            let remote = crate::coord::forward::RangeReplicas::new(remote);
            Some(Arc::new(crate::cluster::NodeCluster {
                move_claims: Arc::new(MoveClaims::new(slot_map.ranges())),
                layout: Arc::new(layout),
                remote_ranges: Arc::new(remote),
            }))
        }
        None => None,
    };
    // The config's tenants, then those created or changed at runtime.
    let configured = config
        .tenants
        .iter()
        .map(|tenant| TenantSpec {
            name: tenant.name.clone(),
            max_keys: tenant.max_keys,
            max_bytes: tenant.max_bytes,
            deleted: false,
        })
        .collect();
    let tenant_specs = tenants_file::merge(configured, tenants_file::load(&config.data_dir)?);
    let tenants = Arc::new(TenantRegistry::with_tombstones(
        crate::frontend::admin::tenant_quotas(&tenant_specs),
        config.databases,
    ));
    // The config's users, then those made at runtime (users.json).
    let users = Arc::new(Users::open(
        config.auth.enabled,
        config.auth.users.clone(),
        Some(&config.data_dir),
    )?);
    // Loaded before any core starts: a bad certificate fails the start.
    let tls = config
        .tls
        .as_ref()
        .map(|tls| crate::net::tls::TlsSettings::load(tls, config.cluster.is_some()))
        .transpose()?;
    if !users.enabled() {
        tracing::warn!(
            "authentication is off: anyone who reaches this node's ports can read and write \
             every tenant and change the cluster (set [auth] enabled = true; docs/security.md)"
        );
    }
    // Bound now so a taken port fails the start before any core runs.
    let admin_listener = match config.admin_enabled {
        true => Some(tinkerdb_admin::bind(config.admin_listen)?),
        false => None,
    };
    let (admin_senders, mut admin_inboxes): (Vec<_>, Vec<_>) =
        (0..cores).map(|_| tinkerdb_admin::core_channel()).unzip();

    // channels[from][to]: one bounded SPSC channel per ordered pair of cores.
    let mut outbound: Vec<Vec<Option<SharedSender<CoreMessage>>>> =
        (0..cores).map(|_| Vec::new()).collect();
    let mut inbound: Vec<Vec<SharedReceiver<CoreMessage>>> =
        (0..cores).map(|_| Vec::new()).collect();
    for (from, senders) in outbound.iter_mut().enumerate() {
        for (to, receivers) in inbound.iter_mut().enumerate() {
            if from == to {
                senders.push(None);
            } else {
                let (sender, receiver) =
                    shared_channel::new_bounded(config.limits.core_channel_capacity);
                senders.push(Some(sender));
                receivers.push(receiver);
            }
        }
    }

    // Cluster mode: core 0 accepts every peer connection on the node's one
    // Raft address and hands each to the core hosting its range.
    let mut peer_sockets: Vec<Option<crate::cluster::PeerSocketEnds>> = match config.cluster {
        Some(_) => crate::cluster::handoff_channels(cores)
            .into_iter()
            .map(Some)
            .collect(),
        None => (0..cores).map(|_| None).collect(),
    };
    let (bound_tx, bound_rx) = mpsc::channel::<anyhow::Result<BoundAddrs>>();
    let (drain_trigger, drain) = stop_signal();
    let (exit_trigger, exit) = stop_signal();
    let (events_tx, events_rx) = mpsc::channel::<CoreEvent>();
    refuse_address_in_use(config.listen, "clients")?;
    if config.resp_enabled {
        refuse_address_in_use(config.resp_listen, "the Redis protocol")?;
    }
    let mut addrs = BoundAddrs {
        client: config.listen,
        resp: config.resp_enabled.then_some(config.resp_listen),
    };
    let directory = Arc::new(crate::coord::context::NodeDirectory::new(
        config.cluster.as_ref().map_or(0, |cluster| cluster.node_id),
    ));
    let mut handles = Vec::with_capacity(cores);
    for (core, (senders, receivers)) in outbound.into_iter().zip(inbound).enumerate() {
        // Pin each core to its own CPU when there are enough CPUs.
        let placement = match cpus.get(core) {
            Some(&cpu) if cores <= cpus.len() => Placement::Fixed(cpu),
            _ => Placement::Unbound,
        };
        let core_setup = CoreSetup {
            core,
            addrs,
            slot_map: slot_map.clone(),
            node_cluster: node_cluster.clone(),
            tenants: tenants.clone(),
            users: users.clone(),
            tls: tls.clone(),
            config: config.clone(),
            senders,
            receivers,
            peer_sockets: peer_sockets[core].take(),
            bound: bound_tx.clone(),
            events: events_tx.clone(),
            admin_inbox: admin_listener.is_some().then(|| admin_inboxes.remove(0)),
            admin_addr: admin_listener
                .as_ref()
                .and_then(|listener| listener.local_addr().ok()),
            directory: directory.clone(),
            stop: CoreStopSignals {
                drain: drain.clone(),
                exit: exit.clone(),
            },
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("tinkerdb-core-{core}"))
            .io_memory(IO_MEMORY_BYTES_PER_CORE)
            .spawn({
                let stopped = events_tx.clone();
                move || async move {
                    let mut notice = StopNotice {
                        core,
                        outcome: None,
                        stopped,
                    };
                    let outcome = run_core(core_setup).await;
                    notice.outcome =
                        Some(outcome.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")));
                    outcome
                }
            })
            .map_err(|error| anyhow!("cannot start executor of core {core}: {error}"))?;
        handles.push(handle);
        if core == 0 {
            // Later cores bind the address core 0 actually got.
            addrs = bound_rx
                .recv()
                .context("core 0 stopped during start-up")??;
        }
    }
    for core in 1..cores {
        bound_rx
            .recv()
            .with_context(|| format!("core {core} stopped during start-up"))??;
    }
    let stopper = NodeStopper {
        requests: events_tx.clone(),
    };
    drop(events_tx);
    let mut serving = 0;
    while serving < cores {
        match events_rx
            .recv()
            .context("every core stopped during start-up")?
        {
            CoreEvent::Serving => serving += 1,
            CoreEvent::Stopped(core, outcome) => {
                return Err(anyhow!(
                    "core {core} stopped during start-up: {}",
                    outcome.err().unwrap_or_default()
                ));
            }
            // Asked before the node was ready: nothing to drain yet, but
            // stop once it is (the request is not lost).
            CoreEvent::StopRequested => stopper.stop(),
            CoreEvent::Drained(_) => unreachable!("no core drains before a stop"),
        }
    }
    let durability = format!("{:?}", config.durability).to_lowercase();
    let admin = match admin_listener {
        Some(listener) => {
            let facts = NodeFacts {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                cores,
                durability: durability.clone(),
                data_dir: config.data_dir.clone(),
                client_addr: addrs.client,
                advertised_client: advertised_client(&config, addrs.client),
                resp_addr: addrs.resp,
                core_slots: (0..cores)
                    .map(|core| {
                        let slots = slot_map.home_slot_range(core);
                        (slots.start as u32, slots.end as u32 - 1)
                    })
                    .collect(),
                started_unix_ms: now_ms(),
                max_key_bytes: config.limits.max_key_bytes,
                max_value_bytes: config.limits.max_value_bytes,
                databases: config.databases,
                ranges_per_core: config.ranges_per_core,
                cluster: config.cluster.is_some(),
            };
            let handle = NodeHandle::new(facts, admin_senders, tenant_specs, users.clone());
            let admin_tls = tls.clone().map(|tls| {
                std::sync::Arc::new(tls) as std::sync::Arc<dyn tinkerdb_admin::tls::ServerTls>
            });
            Some(tinkerdb_admin::start(listener, handle, admin_tls)?)
        }
        None => None,
    };
    if let Some(cluster) = &config.cluster {
        if let Some(seed) = &cluster.join {
            let own_admin = admin.as_ref().map(|admin| admin.addr);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("a runtime for the join")?
                .block_on(crate::cluster::join(
                    seed,
                    cluster,
                    cores,
                    config.databases,
                    config.ranges_per_core,
                    own_admin,
                    config
                        .tls
                        .as_ref()
                        .and_then(crate::cluster::admin_client_tls),
                ))?;
        }
    }
    on_ready(&NodeInfo {
        client_addr: addrs.client,
        advertised_client: advertised_client(&config, addrs.client),
        resp_addr: addrs.resp,
        cores,
        data_dir: config.data_dir.clone(),
        durability,
        admin_addr: admin.as_ref().map(|admin| admin.addr),
        stopper,
        tls: tls.clone(),
        layout: node_cluster.as_ref().map(|cluster| cluster.layout.clone()),
    });
    let shutdown_timeout = Duration::from_millis(config.shutdown_timeout_ms);
    // Set once a graceful shutdown has begun: its deadline, and progress.
    let mut stopping: Option<Instant> = None;
    let (mut drained, mut stopped) = (0, 0);
    loop {
        let event = match stopping {
            None => events_rx.recv().context("every core stopped")?,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match events_rx.recv_timeout(left) {
                    Ok(event) => event,
                    Err(_) => {
                        tracing::warn!(
                            drained,
                            stopped,
                            cores,
                            "shutdown overran shutdown_timeout_ms: exiting anyway"
                        );
                        return Err(anyhow!(
                            "shutdown did not finish within {shutdown_timeout:?}"
                        ));
                    }
                }
            }
        };
        match event {
            CoreEvent::StopRequested if stopping.is_none() => {
                tracing::info!(timeout_ms = config.shutdown_timeout_ms, "shutting down");
                stopping = Some(Instant::now() + shutdown_timeout);
                drain_trigger.trip();
            }
            CoreEvent::StopRequested => {}
            CoreEvent::Drained(core) => {
                tracing::debug!(core, "core drained");
                drained += 1;
                if drained == cores {
                    exit_trigger.trip();
                }
            }
            CoreEvent::Stopped(_, Ok(())) if stopping.is_some() => {
                stopped += 1;
                if stopped == cores {
                    for handle in handles {
                        let _ = handle.join();
                    }
                    tracing::info!("shut down");
                    return Ok(());
                }
            }
            // A core never stops on its own: if one does (an error or a
            // panic), its slots are gone, so the whole node stops rather
            // than limp on.
            CoreEvent::Stopped(core, outcome) => {
                drop(handles);
                return match outcome {
                    Ok(()) => Err(anyhow!("core {core} stopped")),
                    Err(error) => Err(anyhow!("core {core} failed: {error}")),
                };
            }
            CoreEvent::Serving => unreachable!("every core reported serving once"),
        }
    }
}

/// Asks a running node to shut down gracefully (cloneable, `Send`: the
/// binary's signal thread holds one).
#[derive(Debug, Clone)]
pub struct NodeStopper {
    requests: mpsc::Sender<CoreEvent>,
}

impl NodeStopper {
    /// Starts a graceful shutdown; [`run`] returns `Ok` once
    /// it is done. Calling it again has no further effect.
    pub fn stop(&self) {
        let _ = self.requests.send(CoreEvent::StopRequested);
    }
}

/// What a core (or a [`NodeStopper`]) tells the main thread.
enum CoreEvent {
    /// Recovered, connected to the other cores, accepting clients.
    Serving,
    /// A graceful shutdown is asked for.
    StopRequested,
    /// Shutdown phase 1 is done on this core: no connection left, WAL synced.
    Drained(CoreId),
    /// Its thread ended (an error, or `Err("panicked")`).
    Stopped(CoreId, Result<(), String>),
}

/// Tells the main thread when a core's thread ends, however it ends.
struct StopNotice {
    core: CoreId,
    outcome: Option<Result<(), String>>,
    stopped: mpsc::Sender<CoreEvent>,
}

impl Drop for StopNotice {
    fn drop(&mut self) {
        let outcome = self
            .outcome
            .take()
            .unwrap_or_else(|| Err("panicked".into()));
        let _ = self.stopped.send(CoreEvent::Stopped(self.core, outcome));
    }
}

/// Takes an exclusive lock on `<data_dir>/LOCK` for the life of the node,
/// so two nodes never write the same files.
fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.try_lock().map_err(|_| {
        anyhow!(
            "data directory {} is in use by another tinkerdb process",
            data_dir.display()
        )
    })?;
    Ok(file)
}

/// `<data_dir>/NODE` records the core count the data was written with: a
/// key's range and core follow from the slot map, so a data directory can
/// only be reopened with the same number of cores and ranges per core
/// (moving ranges comes later).
fn check_node_file(
    data_dir: &std::path::Path,
    cores: usize,
    databases: u16,
    ranges_per_core: usize,
) -> anyhow::Result<()> {
    let path = data_dir.join("NODE");
    // A database count other than the default is part of the data: WAL
    // records and Raft entries name `tenant/n`, which a smaller count would
    // no longer resolve. (Written only when not the default, so data
    // directories from before databases existed still match.)
    let databases_line = if databases == crate::tenants::DEFAULT_DATABASES {
        String::new()
    } else {
        format!("databases = {databases}\n")
    };
    // Likewise written only when not 1.
    let ranges_line = if ranges_per_core == 1 {
        String::new()
    } else {
        format!("ranges_per_core = {ranges_per_core}\n")
    };
    let expected = format!("format = 1\ncores = {cores}\n{databases_line}{ranges_line}");
    match std::fs::read_to_string(&path) {
        Ok(text) if text == expected => Ok(()),
        Ok(text) => Err(anyhow!(
            "data directory {} was written by a node with different settings ({}); start with the same --cores, databases and ranges_per_core (databases = 16 and ranges_per_core = 1 unless listed)",
            data_dir.display(),
            text.trim().replace('\n', ", ")
        )),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            // Whole or not at all, and durable (found by the power-cut test).
            let temp = data_dir.join("NODE.tmp");
            let mut file = std::fs::File::create(&temp).with_context(|| format!("cannot write {}", temp.display()))?;
            std::io::Write::write_all(&mut file, expected.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temp, &path).with_context(|| format!("cannot write {}", path.display()))?;
            tinkerdb_storage::wal::sync_dir(data_dir)?;
            Ok(())
        }
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Fails when two of this node's listeners would share a port. The cores
/// bind the client and RESP ports with `SO_REUSEPORT`, so such a clash does
/// not fail to bind: the kernel silently hands one listener's connections
/// to the other (seen when core c listened for Raft on the Raft port + c:
/// `--listen` on a 2-core node's Raft port + 1 started, and clients
/// reached core 1's Raft listener). Port 0 (any free port)
/// never clashes.
fn refuse_shared_ports(config: &NodeConfig) -> anyhow::Result<()> {
    let mut listeners = vec![(config.listen, "clients (--listen)".to_string())];
    if config.resp_enabled {
        listeners.push((
            config.resp_listen,
            "the Redis protocol (--resp-listen)".into(),
        ));
    }
    if config.admin_enabled {
        listeners.push((config.admin_listen, "the admin API (--admin-listen)".into()));
    }
    if let Some(raft) = config
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.raft_listen)
    {
        listeners.push((
            raft,
            "Raft (--raft-listen or this node's --peers entry)".into(),
        ));
    }
    let overlap = |a: SocketAddr, b: SocketAddr| {
        a.port() == b.port()
            && a.port() != 0
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    for (index, (addr, what)) in listeners.iter().enumerate() {
        if let Some((other, other_what)) = listeners[index + 1..]
            .iter()
            .find(|(other, _)| overlap(*addr, *other))
        {
            anyhow::bail!(
                "{what} on {addr} and {other_what} on {other} would share port {}: give each listener its own port",
                addr.port()
            );
        }
    }
    Ok(())
}

/// Fails if another process already listens on `addr`. Needed because the
/// cores bind with `SO_REUSEPORT`: without this check a second node on the
/// same port would start and silently share its connections with the first.
/// The probe binds without listening (`listener::probe_port_is_free`), so
/// neither the TIME_WAIT connections a crashed node left behind nor a
/// client connecting at that instant are affected.
fn refuse_address_in_use(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    crate::net::listener::retry_while_in_use(|| crate::net::listener::probe_port_is_free(addr))
        .with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// The listening addresses of a core (all cores share core 0's).
#[derive(Debug, Clone, Copy)]
struct BoundAddrs {
    client: SocketAddr,
    resp: Option<SocketAddr>,
}

/// What one core needs to start, moved into its thread.
struct CoreSetup {
    core: CoreId,
    addrs: BoundAddrs,
    slot_map: Arc<SlotMap>,
    /// Cluster mode: what the cores share (range moves, the range layout,
    /// where the ranges other nodes hold are).
    node_cluster: Option<Arc<crate::cluster::NodeCluster>>,
    tenants: Arc<TenantRegistry>,
    /// The node's users (shared by every core and the admin plane).
    users: Arc<Users>,
    /// TLS on the client listeners (`[tls]`), loaded once.
    tls: Option<crate::net::tls::TlsSettings>,
    config: NodeConfig,
    senders: Vec<Option<SharedSender<CoreMessage>>>,
    receivers: Vec<SharedReceiver<CoreMessage>>,
    /// Cluster mode: this core's end of the peer-connection hand-off.
    peer_sockets: Option<crate::cluster::PeerSocketEnds>,
    /// Told the bound address (or why binding failed) first thing.
    bound: mpsc::Sender<anyhow::Result<BoundAddrs>>,
    /// Told once the core is connected to the others and serving.
    events: mpsc::Sender<CoreEvent>,
    /// This core's admin channel, if the admin plane runs.
    admin_inbox: Option<CoreInbox>,
    /// Where the admin plane listens, if it runs (for the node's record
    /// in the cluster metadata).
    admin_addr: Option<SocketAddr>,
    /// Where the cluster's members serve clients (one for the node).
    directory: Arc<crate::coord::context::NodeDirectory>,
    /// The shutdown's two phases.
    stop: CoreStopSignals,
}

async fn run_core(setup: CoreSetup) -> anyhow::Result<()> {
    let core = setup.core;
    let bind = |addr: SocketAddr, what: &str| {
        crate::net::listener::bind(addr, PortSharing::AllCores)
            .and_then(|listener| Ok((listener.local_addr()?, listener)))
            .map_err(|error| anyhow!("core {core} cannot listen for {what} on {addr}: {error}"))
    };
    let bound = bind(setup.addrs.client, "clients").and_then(|client| {
        let resp = match setup.addrs.resp {
            Some(addr) => Some(bind(addr, "the Redis protocol")?),
            None => None,
        };
        Ok((client, resp))
    });
    let ((client_addr, listener), resp) = match bound {
        Ok(bound) => bound,
        Err(error) => {
            let _ = setup.bound.send(Err(anyhow!("{error}")));
            return Err(error);
        }
    };
    // Report before connecting the channels: connecting waits for the other
    // cores, which are started only once core 0's addresses are known.
    let _ = setup.bound.send(Ok(BoundAddrs {
        client: client_addr,
        resp: resp.as_ref().map(|(addr, _)| *addr),
    }));

    // A channel's two ends wait for each other while connecting: start
    // connecting the receiving ends first so no two cores wait in a cycle.
    let inbound_connecting: Vec<_> = setup
        .receivers
        .into_iter()
        .map(|receiver| glommio::spawn_local(receiver.connect()))
        .collect();
    let mut peers = Vec::with_capacity(setup.senders.len());
    for sender in setup.senders {
        peers.push(match sender {
            Some(sender) => Some(sender.connect().await),
            None => None,
        });
    }
    // Recover this core's keys (snapshot, then WAL) before serving. Cores
    // recover in parallel; clients that connect meanwhile wait in the
    // listen backlog.
    let core_dir = setup.config.data_dir.join(format!("core-{core}"));
    let mode = setup.config.durability_mode();
    let started = std::time::Instant::now();
    let recovered = if setup.config.cluster.is_some() {
        // Cluster mode: the Raft log (core-N/raft-log) is the durable copy; the
        // group re-applies it into an empty store when it starts.
        std::fs::create_dir_all(&core_dir)
            .with_context(|| format!("cannot create {}", core_dir.display()))?;
        crate::shard::recovery::RecoveredCore::empty()
    } else {
        recover_core(&core_dir, &setup.tenants, mode)
            .with_context(|| format!("core {core} cannot recover from {}", core_dir.display()))?
    };
    let (wal, writer) = match recovered.wal {
        Some(wal) => {
            tracing::info!(
                core,
                snapshot_cut = recovered.snapshot_cut,
                snapshot_entries = recovered.snapshot_entries,
                wal_records_replayed = wal.replayed,
                torn_tail_cut = wal.torn_tail_cut,
                keys = recovered.store.key_count(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "recovered"
            );
            (Some(wal.wal), Some(wal.writer))
        }
        None => (None, None),
    };
    let core_tenants = Rc::new(CoreTenants::new(setup.tenants.clone()));
    // One shard per range the core hosts. Standalone: one, over the
    // recovered store and the core's WAL; cluster mode: each range's store
    // starts empty and its group re-applies its log into it.
    let mut recovered_store = Some(recovered.store);
    let shards = setup
        .slot_map
        .ranges_of(core)
        .into_iter()
        .map(|range| {
            let store = recovered_store.take().unwrap_or_default();
            let journal = Journal::new(wal.clone(), core_tenants.clone());
            Shard::new(range, setup.slot_map.clone(), store, journal)
        })
        .collect();
    let context = CoreContext::new_rc(
        core,
        setup.slot_map.clone(),
        core_tenants,
        setup.users.clone(),
        setup.config.limits.clone(),
        shards,
        wal,
        core_dir,
        peers,
        setup.directory.clone(),
    );
    if let Some(writer) = writer {
        glommio::spawn_local(writer.run()).detach();
        // Snapshots only get the time requests leave over.
        let background = glommio::executor().create_task_queue(
            glommio::Shares::Static(SNAPSHOT_SHARES),
            glommio::Latency::NotImportant,
            "snapshots",
        );
        let driver = drive_snapshots(context.clone(), setup.config.snapshot_after_wal_bytes);
        glommio::spawn_local_into(driver, background)
            .map_err(|error| anyhow!("cannot start the snapshot task: {error}"))?
            .detach();
    }
    apply_quotas(&context, &setup.tenants);
    if let Some(cluster) = &setup.config.cluster {
        let peer_sockets = setup
            .peer_sockets
            .expect("cluster mode makes the hand-off channels");
        let node_cluster = setup
            .node_cluster
            .clone()
            .expect("cluster mode makes the node's cluster share");
        crate::cluster::start_replicas(
            &context,
            &setup.config,
            &node_cluster,
            peer_sockets,
            setup.tls.as_ref().and_then(|tls| tls.peers()),
            node_record(
                &setup.config,
                cluster,
                client_addr,
                resp.as_ref().map(|(addr, _)| *addr),
                setup.admin_addr,
                setup.slot_map.cores(),
            ),
        )
        .await?;
    }
    for connecting in inbound_connecting {
        let inbound = connecting.await;
        glommio::spawn_local(serve_peer(context.clone(), inbound)).detach();
    }
    glommio::spawn_local(active_expiry(context.clone())).detach();
    if let Some(&release) = FREED_MEMORY_RELEASE.get() {
        glommio::spawn_local(release_freed_memory_periodically(release)).detach();
    }
    if let Some(inbox) = setup.admin_inbox {
        glommio::spawn_local(serve_admin(context.clone(), inbox)).detach();
    }
    let _ = setup.events.send(CoreEvent::Serving);
    tracing::debug!(core, %client_addr, "core serving");
    let stop = setup.stop;
    let resp_accepting = resp.map(|(_, resp_listener)| {
        let accepting = accept_loop(
            context.clone(),
            resp_listener,
            Protocol::Resp,
            setup.tls.clone(),
            stop.drain.clone(),
        );
        glommio::spawn_local(accepting)
    });
    accept_loop(
        context.clone(),
        listener,
        Protocol::Flatbuffers,
        setup.tls.clone(),
        stop.drain.clone(),
    )
    .await;
    if let Some(accepting) = resp_accepting {
        accepting.await;
    }
    drain_core(
        &context,
        Duration::from_millis(setup.config.shutdown_timeout_ms),
    )
    .await;
    let _ = setup.events.send(CoreEvent::Drained(core));
    stop.exit.tripped().await;
    for replica in context.replicas() {
        if let Err(error) = replica.raft.shutdown().await {
            tracing::warn!(core, group = replica.group, %error, "Raft group did not shut down cleanly");
        }
    }
    if let Some(meta) = crate::cluster::meta::on_this_core() {
        if let Err(error) = meta.raft.shutdown().await {
            tracing::warn!(core, %error, "the metadata group did not shut down cleanly");
        }
    }
    tracing::debug!(core, "core stopped");
    Ok(())
}

/// Pause between looks at the open connections while a core drains.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// Shutdown phase 1 on one core, once its listeners are closed: hand its
/// group's leadership to another voter, wait until its connections have
/// answered what they read and closed (each watches the drain signal
/// itself), then sync the WAL. Bounded by `timeout`; logs what it did.
async fn drain_core(context: &CoreContext, timeout: Duration) {
    let core = context.core;
    let deadline = Instant::now() + timeout;
    for replica in context.replicas() {
        let handed_to = tinkerdb_replication::group::hand_off_leadership(
            &replica.raft,
            replica.group,
            tinkerdb_replication::group::ELECTION_TIMEOUT_MAX,
        )
        .await;
        if let Some(leader) = handed_to {
            tracing::info!(
                core,
                group = replica.group,
                to = leader,
                "leadership handed off"
            );
        }
    }
    if let Some(meta) = crate::cluster::meta::on_this_core() {
        let handed_to = tinkerdb_replication::group::hand_off_leadership(
            &meta.raft,
            crate::cluster::meta::META_GROUP,
            tinkerdb_replication::group::ELECTION_TIMEOUT_MAX,
        )
        .await;
        if let Some(leader) = handed_to {
            tracing::info!(core, to = leader, "metadata leadership handed off");
        }
    }
    let open = || context.stats.connections_open.get();
    while open() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(DRAIN_POLL).await;
    }
    if open() > 0 {
        tracing::warn!(
            core,
            connections = open(),
            "connections still open at the shutdown deadline"
        );
    }
    if let Some(wal) = &context.wal {
        // Interval durability: the writes acknowledged since the last flush.
        let last = wal.last_index();
        match wal.wait_durable(last).await {
            Ok(()) => tracing::info!(core, wal_index = last, "WAL synced"),
            Err(error) => tracing::warn!(core, %error, "WAL could not be synced"),
        }
    }
}

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Flatbuffers,
    Resp,
}

/// Accepts connections until `drain` is tripped (then drops the listener:
/// new connections are refused by the kernel). With `tls`, each connection
/// runs its TLS handshake in its own task first (bounded by the handshake
/// timeout), so a slow or silent client never holds the loop.
async fn accept_loop(
    context: Rc<CoreContext>,
    listener: TcpListener,
    protocol: Protocol,
    tls: Option<crate::net::tls::TlsSettings>,
    drain: StopSignal,
) {
    let core = context.core;

    let max_connections = context.limits.max_connections_per_core as u64;
    loop {
        let accepted = futures_lite::future::or(
            async {
                drain.tripped().await;
                None
            },
            async { Some(listener.accept().await) },
        )
        .await;
        let Some(accepted) = accepted else {
            return;
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(error) => {
                // Out of file descriptors and the like: wait and go on.
                tracing::warn!(core, %error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let stats = &context.stats;
        stats
            .connections_total
            .set(stats.connections_total.get() + 1);
        if stats.connections_open.get() >= max_connections {
            glommio::spawn_local(refuse_connection(stream, protocol)).detach();
            continue;
        }
        let _ = stream.set_nodelay(true);
        stats.connections_open.set(stats.connections_open.get() + 1);
        let context = context.clone();
        let connection_id =
            stats.connections_total.get() * context.slot_map.cores() as u64 + core as u64;
        let drain = drain.clone();
        let tls = tls.clone();
        glommio::spawn_local(async move {
            let stream = match tls {
                None => ClientStream::Plain(stream),
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => stream,
                    Err(error) => {
                        tracing::debug!(core, %error, "TLS handshake failed");
                        let open = &context.stats.connections_open;
                        open.set(open.get() - 1);
                        return;
                    }
                },
            };
            match protocol {
                Protocol::Flatbuffers => serve_connection(context.clone(), stream, drain).await,
                Protocol::Resp => {
                    crate::frontend::resp::serve_resp_connection(
                        context.clone(),
                        stream,
                        connection_id,
                        drain,
                    )
                    .await
                }
            }
            let open = &context.stats.connections_open;
            open.set(open.get() - 1);
        })
        .detach();
    }
}

/// Answers a connection over the limit with one error (`Busy`, or Redis's
/// "max number of clients reached"), then closes it.
async fn refuse_connection(mut stream: glommio::net::TcpStream, protocol: Protocol) {
    use futures_lite::AsyncWriteExt;
    if protocol == Protocol::Resp {
        let _ = stream
            .write_all(b"-ERR max number of clients reached\r\n")
            .await;
        let _ = stream.close().await;
        return;
    }
    let error = crate::error::ProtocolError::new(
        tinkerdb_schemas::wire::ErrorCode::Busy,
        "too many connections on this core (max_connections_per_core)",
    );
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    let mut out = Vec::new();
    let limits = crate::config::Limits::default();
    crate::frontend::fbs::codec::encode_reply(
        &mut builder,
        0,
        &crate::coord::request::Reply::Error(error),
        &limits,
        0,
        &mut out,
    );
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}

async fn active_expiry(context: Rc<CoreContext>) {
    loop {
        glommio::timer::sleep(ACTIVE_EXPIRY_INTERVAL).await;
        let now = now_ms();
        for shard in context.shards() {
            shard
                .borrow_mut()
                .store_mut()
                .expire_due(now, ACTIVE_EXPIRY_MAX_ITEMS_PER_TICK);
        }
    }
}

/// Calls `release` every [`FREED_MEMORY_RELEASE_INTERVAL`], forever (the
/// core's executor ends with the node).
async fn release_freed_memory_periodically(release: fn()) {
    loop {
        glommio::timer::sleep(FREED_MEMORY_RELEASE_INTERVAL).await;
        release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_file_refuses_another_core_database_or_range_count() {
        let dir = std::env::temp_dir().join(format!("tinkerdb-node-file-{}", std::process::id()));
        let default_databases = crate::tenants::DEFAULT_DATABASES;
        std::fs::create_dir_all(&dir).unwrap();
        // A directory from before databases existed: format and cores only.
        std::fs::write(dir.join("NODE"), "format = 1\ncores = 2\n").unwrap();
        check_node_file(&dir, 2, default_databases, 1).expect("the defaults match");
        let fewer = check_node_file(&dir, 2, 4, 1).unwrap_err().to_string();
        assert!(fewer.contains("databases"), "{fewer}");
        assert!(check_node_file(&dir, 3, default_databases, 1).is_err());
        assert!(check_node_file(&dir, 2, default_databases, 2).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        check_node_file(&dir, 2, 4, 3).expect("a fresh directory records 4 and 3");
        check_node_file(&dir, 2, 4, 3).expect("and accepts them again");
        assert!(check_node_file(&dir, 2, default_databases, 3).is_err());
        assert!(check_node_file(&dir, 2, 4, 1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
