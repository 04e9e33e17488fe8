//! Node configuration: one serde struct, read from a TOML file (`--config`),
//! overridden by command-line flags, checked by [`NodeConfig::validate`]
//! before anything starts. `docs/config.sample.toml` lists every key with its
//! default; keep the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tinkerdb_replication::transport::PeerAddr;

/// The tenant every node has, used when a client's Hello names none.
pub const DEFAULT_TENANT: &str = "default";

/// Longest tenant name, in bytes.
pub const MAX_TENANT_NAME_BYTES: usize = 64;

/// Everything a node needs to start.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Address of the client (flatbuffers) protocol. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The client address this node tells others (`HOST:PORT`), when it
    /// differs from `listen` (a container binds 0.0.0.0:7379 and is reached
    /// as node1:7379). Absent: the bound `listen` address.
    pub advertise_listen: Option<PeerAddr>,
    /// Address of the Redis-protocol (RESP) listener.
    pub resp_listen: SocketAddr,
    /// Serve the Redis protocol at all.
    pub resp_enabled: bool,
    /// Address of the admin plane: HTTP API, `/metrics`, dashboard.
    pub admin_listen: SocketAddr,
    /// Serve the admin plane at all.
    pub admin_enabled: bool,
    /// Directory for the node's files (the WAL and snapshots once durability
    /// lands); created if missing.
    pub data_dir: PathBuf,
    /// Executors (cores) to run; 0 means one per CPU the process may use.
    pub cores: usize,
    /// When a write is acknowledged: `sync` (after fdatasync, default),
    /// `interval` (at once; flushed every `flush_interval_ms`), `none`
    /// (memory only: no WAL, no snapshots, nothing survives a restart).
    pub durability: Durability,
    /// Flush period of `interval` durability.
    pub flush_interval_ms: u64,
    /// Take a snapshot once a core's WAL has grown this much since the last.
    pub snapshot_after_wal_bytes: u64,
    /// Size limits on requests and queues.
    pub limits: Limits,
    /// Tenants and their quotas. `default` is added if not listed.
    pub tenants: Vec<TenantConfig>,
    /// Cluster mode (Raft replication); absent: a standalone node.
    pub cluster: Option<ClusterConfig>,
    /// Raft tuning for cluster mode.
    pub raft: RaftTuning,
    /// Most time a graceful shutdown (SIGTERM, SIGINT) may take: handing
    /// off Raft leadership, answering what is in flight, closing
    /// connections, syncing the WAL. Past it the node exits anyway.
    pub shutdown_timeout_ms: u64,
    /// Databases per tenant (Redis's SELECT 0 to `databases - 1`), 1-256.
    /// Every node of a cluster must use the same count.
    pub databases: u16,
    /// Cluster mode: ranges (Raft groups) each core hosts, 1 to
    /// `slots::MAX_RANGES_PER_CORE`; the slots split into `cores x
    /// ranges_per_core` ranges. Every node of a cluster must use the same
    /// value, fixed for a data directory (its NODE file). A standalone node
    /// hosts one range per core.
    pub ranges_per_core: usize,
    /// Cluster mode: replicas of each range (odd, 1 to
    /// [`MAX_REPLICATION_FACTOR`]). A cluster of at most this many seed
    /// nodes replicates every range on every node; a larger one places each
    /// range's replicas on this many of them (`cluster::layout`), so a node
    /// holds a share of the data and forwards requests for the rest. Fixed
    /// for a data directory (its `RANGES` file).
    pub replication_factor: usize,
    /// Authentication: off by default (any client that reaches a port acts
    /// for any tenant, as before); see docs/security.md.
    pub auth: AuthConfig,
    /// OpenTelemetry tracing: off unless `otlp_endpoint` is set; see
    /// docs/observability.md.
    pub tracing: TracingConfig,
    /// TLS on every listener (flatbuffers, RESP, admin; the peer port
    /// with mutual TLS in a cluster): TLS only when set; absent: plain TCP.
    /// See docs/security.md.
    pub tls: Option<TlsConfig>,
}

/// OpenTelemetry tracing (`telemetry`): spans of sampled requests,
/// exported with OTLP over HTTP/protobuf.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Where spans are POSTed, e.g. `http://127.0.0.1:4318/v1/traces` (an
    /// OpenTelemetry collector's OTLP/HTTP receiver; the path is used as
    /// given). Absent: no tracing at all.
    pub otlp_endpoint: Option<String>,
    /// The share of client requests (pipelines) traced from the front end,
    /// 0.0 to 1.0. A request that arrives with a sampled trace context
    /// (another node's) is always traced.
    pub sample_ratio: f64,
    /// The `service.name` resource attribute of this node's spans.
    pub service_name: String,
}

/// Default of [`TracingConfig::sample_ratio`]: one request in a hundred.
pub const DEFAULT_TRACE_SAMPLE_RATIO: f64 = 0.01;

impl Default for TracingConfig {
    fn default() -> TracingConfig {
        TracingConfig {
            otlp_endpoint: None,
            sample_ratio: DEFAULT_TRACE_SAMPLE_RATIO,
            service_name: "tinkerdb".to_owned(),
        }
    }
}

/// TLS on every listener (`net::tls`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The node's certificate chain, PEM (its own certificate first).
    pub cert_file: PathBuf,
    /// The certificate's private key, PEM.
    pub key_file: PathBuf,
    /// The CA client certificates must chain to (needed unless
    /// `client_certs = "no"`), PEM.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Whether clients present a certificate: `no` (default), `optional`,
    /// `required` (Redis's `tls-auth-clients`).
    #[serde(default)]
    pub client_certs: ClientCerts,
    /// Longest a client may take to finish its TLS handshake before the
    /// node closes the connection.
    #[serde(default = "default_tls_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// In a cluster: the names (DNS names or IP addresses) a node's
    /// certificate may carry. A peer connection's dialer must present a
    /// certificate of `ca_file`'s CA naming one of them; a certificate of
    /// that CA made for anything else (a client's) is refused. Needed,
    /// with `ca_file`, on a cluster node with `[tls]`.
    #[serde(default)]
    pub peer_names: Vec<String>,
}

/// Default of [`TlsConfig::handshake_timeout_ms`].
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

fn default_tls_handshake_timeout_ms() -> u64 {
    DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS
}

/// Whether TLS clients present a certificate.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientCerts {
    /// Not asked for.
    #[default]
    No,
    /// Checked against `ca_file` when presented.
    Optional,
    /// Required and checked against `ca_file`.
    Required,
}

/// Who may talk to the node (docs/security.md).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Every client must authenticate: RESP `AUTH`/`HELLO ... AUTH`, the
    /// flatbuffers `Hello`'s user and password, the admin API's HTTP basic
    /// auth (a `cluster_admin` user). Needs at least one enabled
    /// `cluster_admin` user.
    pub enabled: bool,
    /// Users known at start (more are made with the admin API or `ACL
    /// SETUSER` and kept in the data directory's `users.json`). Each has a
    /// `password_hash` made by `tinkerdb --hash-password`, never a password.
    pub users: Vec<tinkerdb_admin::users::UserSpec>,
}

/// How a node's Raft groups snapshot and compact their logs.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    /// A group snapshots its shard after this many log entries since its
    /// last snapshot, then purges the log before it.
    pub snapshot_every_entries: u64,
    /// Entries kept below a snapshot, so that a follower a little behind
    /// catches up by log rather than by a whole snapshot.
    pub logs_kept_after_snapshot: u64,
    /// A group with no traffic for this long stops its Raft timers (no
    /// heartbeats, no election timers) until a request or a dead leader
    /// wakes it (`replication::hibernate`). 0: never.
    pub hibernate_after_ms: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            snapshot_every_entries: tinkerdb_replication::group::SNAPSHOT_EVERY_ENTRIES,
            logs_kept_after_snapshot: tinkerdb_replication::group::LOGS_KEPT_AFTER_SNAPSHOT,
            hibernate_after_ms: tinkerdb_replication::hibernate::HIBERNATE_AFTER.as_millis() as u64,
        }
    }
}

/// A node's place in a cluster (see docs/replication.md).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id (one of `nodes`).
    pub node_id: u64,
    /// Every node of the cluster, this one included. A joining node lists
    /// only itself.
    pub nodes: Vec<ClusterNodeConfig>,
    /// Join a running cluster through this member's admin address
    /// (`HOST:PORT`) instead of starting one from `nodes`: the node starts
    /// its groups empty and asks that member to add it.
    #[serde(default)]
    pub join: Option<String>,
    /// Where this node binds its one Raft listener (every core's peer
    /// connections arrive there), e.g. `0.0.0.0:7390` in a container. Absent: this
    /// node's own entry in `nodes`, resolved at start. The node's entry in
    /// `nodes` stays what its peers are told and dial (its advertised Raft
    /// address).
    #[serde(default)]
    pub raft_listen: Option<SocketAddr>,
}

/// One node of a cluster.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterNodeConfig {
    /// Node id (unique, at least 1).
    pub id: u64,
    /// The node's Raft address as its peers dial it, `HOST:PORT` (an IP
    /// or a host name, resolved again on every reconnection); one port
    /// whatever the node's core count.
    pub raft: PeerAddr,
}

impl ClusterConfig {
    /// Parses `--peers`: `ID=HOST:PORT,ID=HOST:PORT,...` (every node, this
    /// one included; the address is the node's Raft address, an IP or a
    /// host name). Nothing is resolved here.
    pub fn from_flags(node_id: u64, peers: &str) -> Result<ClusterConfig, ConfigError> {
        let nodes = peers
            .split(',')
            .filter(|part| !part.trim().is_empty())
            .map(|part| {
                let (id, addr) = part.trim().split_once('=').ok_or_else(|| {
                    ConfigError::Invalid(format!("--peers: {part:?} is not ID=HOST:PORT"))
                })?;
                Ok(ClusterNodeConfig {
                    id: id.parse().map_err(|_| {
                        ConfigError::Invalid(format!("--peers: {id:?} is not a node id"))
                    })?,
                    raft: PeerAddr::parse(addr)
                        .map_err(|error| ConfigError::Invalid(format!("--peers: {error}")))?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(ClusterConfig {
            node_id,
            nodes,
            join: None,
            raft_listen: None,
        })
    }

    /// `--join ADMIN_ADDR --raft-listen ADDR [--advertise-raft HOST:PORT]`:
    /// a node joining a running cluster, bound on `raft_listen` and reached
    /// by its peers at `advertise` (default: `raft_listen`).
    pub fn joining(
        node_id: u64,
        raft_listen: SocketAddr,
        advertise: Option<PeerAddr>,
        join: String,
    ) -> ClusterConfig {
        ClusterConfig {
            node_id,
            nodes: vec![ClusterNodeConfig {
                id: node_id,
                raft: advertise.unwrap_or_else(|| raft_listen.into()),
            }],
            join: Some(join),
            raft_listen: Some(raft_listen),
        }
    }

    /// This node's entry: its advertised Raft address.
    pub fn me(&self) -> &ClusterNodeConfig {
        self.nodes
            .iter()
            .find(|node| node.id == self.node_id)
            .expect("validated: node_id is one of the nodes")
    }

    /// The address the node binds for Raft: `raft_listen`, or this node's
    /// own entry resolved now (blocking: call before the cores start).
    pub fn raft_bind(&self) -> Result<SocketAddr, ConfigError> {
        if let Some(addr) = self.raft_listen {
            return Ok(addr);
        }
        self.me().raft.resolve_blocking().map_err(|error| {
            ConfigError::Invalid(format!(
                "cluster: cannot bind this node's Raft address: {error} \
                 (give --raft-listen, e.g. 0.0.0.0:{})",
                self.me().raft.port()
            ))
        })
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: "127.0.0.1:7379".parse().expect("valid address"),
            advertise_listen: None,
            resp_listen: "127.0.0.1:7381".parse().expect("valid address"),
            resp_enabled: true,
            admin_listen: "127.0.0.1:7380".parse().expect("valid address"),
            admin_enabled: true,
            data_dir: PathBuf::from("./tinkerdb-data"),
            cores: 0,
            durability: Durability::Sync,
            flush_interval_ms: 10,
            snapshot_after_wal_bytes: 64 << 20,
            limits: Limits::default(),
            tenants: vec![TenantConfig::unlimited(DEFAULT_TENANT)],
            cluster: None,
            raft: RaftTuning::default(),
            shutdown_timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS,
            databases: crate::tenants::DEFAULT_DATABASES,
            ranges_per_core: 1,
            replication_factor: DEFAULT_REPLICATION_FACTOR,
            auth: AuthConfig::default(),
            tracing: TracingConfig::default(),
            tls: None,
        }
    }
}

/// Default of [`NodeConfig::replication_factor`]: survives one node down.
pub const DEFAULT_REPLICATION_FACTOR: usize = 3;

/// Largest [`NodeConfig::replication_factor`]: every write waits for a
/// majority, and more copies buy little beyond surviving three failures.
pub const MAX_REPLICATION_FACTOR: usize = 7;

/// Default of [`NodeConfig::shutdown_timeout_ms`]: room for a leadership
/// hand-off and the slowest in-flight answer, well inside the 10 s that
/// Docker and systemd give before SIGKILL.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 5_000;

/// Durability mode (see `docs/durability.md`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledge a write once its WAL record is on disk (group commit).
    Sync,
    /// Acknowledge at once; flush the WAL every `flush_interval_ms`.
    Interval,
    /// Memory only.
    None,
}

impl NodeConfig {
    /// The WAL's mode, or `None` for memory only.
    pub fn durability_mode(&self) -> Option<tinkerdb_storage::wal::DurabilityMode> {
        use tinkerdb_storage::wal::DurabilityMode;
        match self.durability {
            Durability::Sync => Some(DurabilityMode::Sync),
            Durability::Interval => Some(DurabilityMode::Interval(
                std::time::Duration::from_millis(self.flush_interval_ms),
            )),
            Durability::None => None,
        }
    }
}

/// Named limits. Every request size, batch and queue is bounded by one of
/// these; exceeding one gives the client a typed error, never a hang.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest frame (request) body a client may send.
    pub max_frame_bytes: usize,
    /// Longest key.
    pub max_key_bytes: usize,
    /// Longest value.
    pub max_value_bytes: usize,
    /// Most keys in one multi-key request (MGET, MSET, DELETE, EXISTS).
    pub max_keys_per_request: usize,
    /// Most keys one KEYS request may return (use SCAN beyond that).
    pub max_keys_result: usize,
    /// Largest answer (MGET values, KEYS keys) a request may produce.
    pub max_response_bytes: usize,
    /// Keys a SCAN step returns when the request says 0.
    pub scan_count_default: usize,
    /// Most keys a SCAN step returns, whatever the request says.
    pub scan_count_max: usize,
    /// Open client connections per core; more are answered `Busy` and closed.
    pub max_connections_per_core: usize,
    /// Requests in flight between each pair of cores; senders wait when full.
    pub core_channel_capacity: usize,
    /// Requests one connection may have read but not yet answered; reading
    /// pauses until answers are written.
    pub max_pipelined_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 8 << 20,
            max_key_bytes: 16 << 10,
            max_value_bytes: 4 << 20,
            max_keys_per_request: 10_000,
            max_keys_result: 100_000,
            max_response_bytes: 64 << 20,
            scan_count_default: 100,
            scan_count_max: 10_000,
            max_connections_per_core: 10_000,
            core_channel_capacity: 1024,
            max_pipelined_requests: 1024,
        }
    }
}

/// One tenant and its node-wide quotas.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Name clients give in Hello: 1-64 bytes of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// Most keys the tenant may hold on this node (absent: unlimited).
    #[serde(default)]
    pub max_keys: Option<u64>,
    /// Most key + value bytes the tenant may hold (absent: unlimited).
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

impl TenantConfig {
    /// A tenant with no quotas.
    pub fn unlimited(name: &str) -> TenantConfig {
        TenantConfig {
            name: name.to_owned(),
            max_keys: None,
            max_bytes: None,
        }
    }
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this struct.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Reads a TOML file; keys it does not give keep their defaults.
    pub fn from_file(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Checks every value; adds the `default` tenant if missing.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let invalid = |why: String| Err(ConfigError::Invalid(why));
        let limits = &self.limits;
        for (name, value) in [
            ("max_frame_bytes", limits.max_frame_bytes),
            ("max_key_bytes", limits.max_key_bytes),
            ("max_value_bytes", limits.max_value_bytes),
            ("max_keys_per_request", limits.max_keys_per_request),
            ("max_keys_result", limits.max_keys_result),
            ("max_response_bytes", limits.max_response_bytes),
            ("scan_count_default", limits.scan_count_default),
            ("scan_count_max", limits.scan_count_max),
            ("max_connections_per_core", limits.max_connections_per_core),
            ("core_channel_capacity", limits.core_channel_capacity),
            ("max_pipelined_requests", limits.max_pipelined_requests),
        ] {
            if value == 0 {
                return invalid(format!("limits.{name} must be at least 1"));
            }
        }
        if self.shutdown_timeout_ms == 0 {
            return invalid("shutdown_timeout_ms must be at least 1".into());
        }
        if !(1..=256).contains(&self.databases) {
            return invalid(format!(
                "databases must be 1 to 256 (a database number is 8 bits), not {}",
                self.databases
            ));
        }
        if limits.max_frame_bytes > u32::MAX as usize {
            return invalid("limits.max_frame_bytes must fit in 32 bits".into());
        }
        if limits.max_key_bytes + limits.max_value_bytes + 1024 > limits.max_frame_bytes {
            return invalid(format!(
                "limits.max_frame_bytes ({}) must exceed max_key_bytes + max_value_bytes + 1024",
                limits.max_frame_bytes
            ));
        }
        if limits.max_response_bytes < limits.max_value_bytes + 1024 {
            return invalid("limits.max_response_bytes must exceed max_value_bytes + 1024".into());
        }
        if limits.scan_count_default > limits.scan_count_max {
            return invalid("limits.scan_count_default must not exceed scan_count_max".into());
        }
        if !(1..=crate::slots::MAX_RANGES_PER_CORE).contains(&self.ranges_per_core) {
            return invalid(format!(
                "ranges_per_core must be 1 to {}, not {}",
                crate::slots::MAX_RANGES_PER_CORE,
                self.ranges_per_core
            ));
        }
        if self.ranges_per_core != 1 && self.cluster.is_none() {
            return invalid(
                "ranges_per_core other than 1 needs cluster mode (a standalone core's WAL \
                 and snapshots hold one range)"
                    .into(),
            );
        }
        let factor = self.replication_factor;
        if !(1..=MAX_REPLICATION_FACTOR).contains(&factor) || factor.is_multiple_of(2) {
            return invalid(format!(
                "replication_factor must be odd and 1 to {MAX_REPLICATION_FACTOR}, not {factor} \
                 (2f + 1 replicas survive f failures; an even count survives no more than the \
                 odd count below it)"
            ));
        }
        if self.raft.snapshot_every_entries == 0 {
            return invalid("raft.snapshot_every_entries must be at least 1".into());
        }
        if let Some(cluster) = &self.cluster {
            let mut ids: Vec<u64> = cluster.nodes.iter().map(|node| node.id).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() != cluster.nodes.len() || ids.first() == Some(&0) {
                return invalid("cluster.nodes: node ids must be unique and at least 1".into());
            }
            if cluster.join.is_some() && cluster.nodes.len() != 1 {
                return invalid(
                    "cluster.join: a joining node lists only itself in cluster.nodes".into(),
                );
            }
            if !ids.contains(&cluster.node_id) {
                return invalid(format!(
                    "cluster.node_id {} is not one of cluster.nodes",
                    cluster.node_id
                ));
            }
            if let Some(listen) = cluster.raft_listen {
                if listen.port() == 0 {
                    return invalid("cluster.raft_listen needs a fixed port, not 0".into());
                }
            }
            if self.durability != Durability::Sync {
                return invalid(
                    "cluster mode needs durability = \"sync\": a Raft vote or log entry \
                     must be on disk before it is acknowledged"
                        .into(),
                );
            }
        }
        if !self
            .tenants
            .iter()
            .any(|tenant| tenant.name == DEFAULT_TENANT)
        {
            self.tenants
                .insert(0, TenantConfig::unlimited(DEFAULT_TENANT));
        }
        let mut seen = std::collections::HashSet::new();
        for tenant in &self.tenants {
            let name = &tenant.name;
            let well_formed = !name.is_empty()
                && name.len() <= MAX_TENANT_NAME_BYTES
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
            if !well_formed {
                return invalid(format!(
                    "tenant name {name:?} must be 1-{MAX_TENANT_NAME_BYTES} bytes of [A-Za-z0-9_.-]"
                ));
            }
            if !seen.insert(name) {
                return invalid(format!("tenant {name:?} is listed twice"));
            }
        }
        if !(0.0..=1.0).contains(&self.tracing.sample_ratio) {
            return invalid(format!(
                "tracing.sample_ratio {} is not between 0.0 and 1.0",
                self.tracing.sample_ratio
            ));
        }
        if let Some(endpoint) = &self.tracing.otlp_endpoint {
            if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
                return invalid(format!(
                    "tracing.otlp_endpoint {endpoint:?} is not an http:// or https:// URL"
                ));
            }
            if endpoint.starts_with("https://") {
                return invalid(
                    "tracing.otlp_endpoint: https is not supported (the exporter is built \
                     without TLS); send to a collector on this host or network over http"
                        .into(),
                );
            }
        }
        if let Some(tls) = &self.tls {
            if tls.client_certs != ClientCerts::No && tls.ca_file.is_none() {
                return invalid("tls.client_certs other than \"no\" needs tls.ca_file".into());
            }
            if self.cluster.is_some() && (tls.ca_file.is_none() || tls.peer_names.is_empty()) {
                return invalid(
                    "a cluster node with [tls] needs tls.ca_file and tls.peer_names (the names \
                     its nodes' certificates carry): peers speak mutual TLS"
                        .into(),
                );
            }
            if tls.handshake_timeout_ms == 0 {
                return invalid("tls.handshake_timeout_ms must be at least 1".into());
            }
        }
        let mut users = std::collections::HashSet::new();
        for user in &self.auth.users {
            if let Err(error) = tinkerdb_admin::users::check_user(user) {
                return invalid(format!("auth.users: {error}"));
            }
            if !users.insert(&user.name) {
                return invalid(format!("user {:?} is listed twice", user.name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_sample_parses_to_defaults() {
        let mut config = NodeConfig::default();
        config.validate().unwrap();
        let sample = include_str!("../../docs/config.sample.toml");
        let mut parsed: NodeConfig = toml::from_str(sample).unwrap();
        parsed.validate().unwrap();
        // The sample documents the defaults, plus one example tenant.
        assert_eq!(parsed.limits, Limits::default());
        assert_eq!(parsed.listen, config.listen);
        assert_eq!(parsed.data_dir, config.data_dir);
        assert_eq!(parsed.tenants[0], TenantConfig::unlimited(DEFAULT_TENANT));
        assert_eq!(parsed.raft, RaftTuning::default());
    }

    #[test]
    fn peers_take_host_names_and_bind_apart() {
        let cluster =
            ClusterConfig::from_flags(2, "1=node1:7390, 2=10.0.0.2:7390,3=node3:7390").unwrap();
        assert_eq!(cluster.nodes.len(), 3);
        assert_eq!(cluster.nodes[0].raft.host(), "node1");
        assert_eq!(
            cluster.me().raft.literal(),
            Some("10.0.0.2:7390".parse().unwrap())
        );
        // An IP entry binds where it says; a name binds where it resolves.
        assert_eq!(
            cluster.raft_bind().unwrap(),
            "10.0.0.2:7390".parse().unwrap()
        );
        let local = ClusterConfig::from_flags(1, "1=localhost:7390").unwrap();
        assert!(local.raft_bind().unwrap().ip().is_loopback());
        for bad in ["1=node1", "x=node1:7390", "1=node 1:7390", "1:node1:7390"] {
            assert!(ClusterConfig::from_flags(1, bad).is_err(), "{bad}");
        }
        let joining = ClusterConfig::joining(
            4,
            "0.0.0.0:7390".parse().unwrap(),
            Some(PeerAddr::parse("node4:7390").unwrap()),
            "node1:7380".into(),
        );
        assert_eq!(joining.me().raft.to_string(), "node4:7390");
        assert_eq!(
            joining.raft_bind().unwrap(),
            "0.0.0.0:7390".parse().unwrap()
        );
        let by_default =
            ClusterConfig::joining(4, "127.0.0.1:7390".parse().unwrap(), None, "x:1".into());
        assert_eq!(by_default.me().raft.to_string(), "127.0.0.1:7390");
    }

    #[test]
    fn cluster_toml_with_names_and_advertised_addresses() {
        let text = r#"
            advertise_listen = "node1:7379"
            [cluster]
            node_id = 1
            raft_listen = "0.0.0.0:7390"
            nodes = [{ id = 1, raft = "node1:7390" }, { id = 2, raft = "node2:7390" }]
        "#;
        let mut config: NodeConfig = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.advertise_listen.unwrap().to_string(), "node1:7379");
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.raft_listen, Some("0.0.0.0:7390".parse().unwrap()));
        assert_eq!(cluster.nodes[1].raft.to_string(), "node2:7390");
        let bad = "[cluster]\nnode_id = 1\nnodes = [{ id = 1, raft = \"node1\" }]";
        assert!(toml::from_str::<NodeConfig>(bad).is_err());
    }

    #[test]
    fn rejects_bad_values() {
        let bad = [
            "cores = 1\nbogus = 2",
            "[limits]\nmax_key_bytes = 0",
            "[limits]\nmax_frame_bytes = 100",
            "[[tenants]]\nname = \"has space\"",
            "[[tenants]]\nname = \"a\"\n[[tenants]]\nname = \"a\"",
        ];
        for text in bad {
            let parsed: Result<NodeConfig, _> = toml::from_str(text);
            let rejected = match parsed {
                Err(_) => true,
                Ok(mut config) => config.validate().is_err(),
            };
            assert!(rejected, "accepted: {text}");
        }
    }
}
