//! [`Client`]: the public API over a small pool of pipelined connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::codec::{Request, Response};
use crate::connection::{Connection, HelloInfo};
use crate::error::{ClientError, Route};

/// How to reach a node and how patient to be.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of the node's client protocol: the first address tried.
    pub addr: String,
    /// More addresses of the same cluster, tried in turn when the ones
    /// before cannot be reached (`tinker --addr a,b,c`). The client also
    /// learns every member's address from the node it reaches
    /// (`HelloOk.nodes`), so one seed is enough while that node is up.
    pub seeds: Vec<String>,
    /// Tenant to bind every connection to.
    pub tenant: String,
    /// Name shown in the node's logs.
    pub client_name: String,
    /// Connections in the pool; requests are spread over them in turn.
    pub connections: usize,
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for any one answer.
    pub request_timeout: Duration,
    /// Cluster mode: let reads answer from the node reached without asking
    /// the shard's leader (faster, available without a quorum, but possibly
    /// behind the latest writes). Off: reads are linearizable.
    pub stale_reads: bool,
    /// User and password for a node with authentication on (the session
    /// then acts for the user's tenant: leave `tenant` as `default` or set
    /// it to that tenant). Sent in the clear over plain TCP.
    pub credentials: Option<crate::admin::Credentials>,
    /// TLS, for a node with a `[tls]` table; `None`: plain TCP.
    pub tls: Option<crate::tls::ClientTls>,
}

impl ClientConfig {
    /// Defaults for `addr`: tenant `default`, 2 connections, 5 s timeouts.
    pub fn new(addr: impl Into<String>) -> ClientConfig {
        ClientConfig {
            addr: addr.into(),
            seeds: Vec::new(),
            tenant: "default".into(),
            client_name: "tinkerdb-client".into(),
            connections: 2,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            stale_reads: false,
            credentials: None,
            tls: None,
        }
    }

    /// The same with more seed addresses (see [`ClientConfig::seeds`]).
    pub fn seeds(mut self, seeds: impl IntoIterator<Item = impl Into<String>>) -> ClientConfig {
        self.seeds.extend(seeds.into_iter().map(Into::into));
        self
    }

    /// The same over TLS.
    pub fn tls(mut self, tls: crate::tls::ClientTls) -> ClientConfig {
        self.tls = Some(tls);
        self
    }

    /// The same, authenticating as `user` with `password`.
    pub fn credentials(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> ClientConfig {
        self.credentials = Some(crate::admin::Credentials {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// The same with stale reads allowed (see [`ClientConfig::stale_reads`]).
    pub fn stale_reads(mut self, allowed: bool) -> ClientConfig {
        self.stale_reads = allowed;
        self
    }

    /// The same with another tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> ClientConfig {
        self.tenant = tenant.into();
        self
    }

    /// The same with another pool size (at least 1).
    pub fn connections(mut self, connections: usize) -> ClientConfig {
        self.connections = connections.max(1);
        self
    }

    /// The same with another request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> ClientConfig {
        self.request_timeout = timeout;
        self
    }
}

/// A stored value with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The bytes.
    pub value: Bytes,
    /// Version, for [`Client::compare_and_set`].
    pub version: u64,
    /// Time left to live, if the key expires.
    pub ttl: Option<Duration>,
}

/// Outcome of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteResult {
    /// False when the condition was not met (nothing written).
    pub applied: bool,
    /// New version if applied; else the current one (0: key absent).
    pub version: u64,
}

/// When a SET applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetCondition {
    /// Always.
    #[default]
    Always,
    /// Only if the key does not exist (NX).
    IfAbsent,
    /// Only if the key exists (XX).
    IfPresent,
}

/// When [`Client::expire_at`] applies (Redis 7's EXPIRE options; no
/// expiry counts as an infinitely late one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpireCondition {
    /// Always.
    #[default]
    Always,
    /// NX: the key has no expiry.
    IfNone,
    /// XX: the key has an expiry.
    IfSome,
    /// GT: the new expiry is later.
    IfLater,
    /// LT: the new expiry is earlier.
    IfEarlier,
}

/// What [`Client::rename_with`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameKind {
    /// RENAME: overwrite the destination.
    Rename,
    /// RENAMENX: only if the destination does not exist.
    RenameIfAbsent,
    /// COPY: keep the source; only if the destination does not exist.
    Copy,
    /// COPY ... REPLACE: keep the source, overwrite the destination.
    CopyReplace,
}

/// Options of [`Client::set_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// Expire after this long (None: never; rounded to milliseconds).
    pub ttl: Option<Duration>,
    /// When to apply.
    pub condition: SetCondition,
}

/// Options of [`Client::scan`].
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Only keys with this prefix.
    pub prefix: Vec<u8>,
    /// Only keys matching this glob.
    pub pattern: Vec<u8>,
    /// Keys wanted per step (0: node default).
    pub count: u32,
}

/// One step of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// Pass to the next [`Client::scan`]; 0 when the scan is complete.
    pub cursor: u64,
    /// Keys of this step.
    pub keys: Vec<Bytes>,
}

/// A TinkerDB client: cheap to clone, safe to share.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    pool: Vec<tokio::sync::Mutex<Option<Arc<Connection>>>>,
    next: AtomicUsize,
    hello: HelloInfo,
    addresses: Addresses,
}

/// Where the client may reach its cluster: the address that answered last
/// first, then the config's address and seeds, then members learned from
/// handshakes (`HelloOk.nodes`). A connection that breaks is opened again
/// at the first of them that answers; requests already sent on it fail
/// (their outcome unknown), the next ones go to the new node, which routes
/// them like any other.
#[derive(Debug)]
struct Addresses {
    known: std::sync::Mutex<Vec<String>>,
}

impl Addresses {
    fn new(config: &ClientConfig) -> Addresses {
        let mut known = vec![config.addr.clone()];
        for seed in &config.seeds {
            if !known.contains(seed) {
                known.push(seed.clone());
            }
        }
        Addresses {
            known: std::sync::Mutex::new(known),
        }
    }

    fn list(&self) -> Vec<String> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// `addr` answered, announcing `members`: it goes first, new members
    /// last.
    fn answered(&self, addr: &str, members: &[(u64, String)]) {
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        known.retain(|known| known != addr);
        known.insert(0, addr.to_owned());
        for (_, member) in members {
            if !known.contains(member) {
                known.push(member.clone());
            }
        }
    }

    /// Opens a connection at the first address that answers: an address
    /// that cannot be reached, or whose node does not finish the handshake
    /// in time, passes to the next; any other failure (a refused
    /// handshake: unknown tenant, wrong password) is the answer.
    async fn open_any(
        &self,
        config: &ClientConfig,
    ) -> Result<(Connection, HelloInfo), ClientError> {
        let mut unreachable = None;
        for addr in self.list() {
            match open(config, &addr).await {
                Ok((connection, hello)) => {
                    self.answered(&addr, &hello.nodes);
                    return Ok((connection, hello));
                }
                Err(error @ (ClientError::Connection { .. } | ClientError::Timeout(_))) => {
                    unreachable = Some(error)
                }
                Err(other) => return Err(other),
            }
        }
        Err(unreachable.expect("the config's address is always known"))
    }
}

fn ttl_ms(ttl: Option<Duration>) -> u64 {
    // A TTL under 1 ms would mean "no TTL" on the wire: round it up.
    ttl.map_or(0, |ttl| (ttl.as_millis() as u64).max(1))
}

impl Client {
    /// Opens the pool's connections; fails if the node is unreachable or the
    /// tenant unknown.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let mut pool = Vec::with_capacity(config.connections.max(1));
        let mut hello = None;
        let addresses = Addresses::new(&config);
        for _ in 0..config.connections.max(1) {
            let (connection, info) = addresses.open_any(&config).await?;
            hello = Some(info);
            pool.push(tokio::sync::Mutex::new(Some(Arc::new(connection))));
        }
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                pool,
                next: AtomicUsize::new(0),
                hello: hello.expect("at least one connection"),
                addresses,
            }),
        })
    }

    /// The addresses this client may reach its cluster at, the one that
    /// answered last first (its config's, then those the cluster
    /// announced).
    pub fn known_addresses(&self) -> Vec<String> {
        self.inner.addresses.list()
    }

    /// The id of the node the client first connected to (0: standalone).
    pub fn node_id(&self) -> u64 {
        self.inner.hello.node_id
    }

    /// Tenant the client is bound to, as the node confirmed it.
    pub fn tenant(&self) -> &str {
        &self.inner.hello.tenant
    }

    /// Cores of the node, as it announced them.
    pub fn node_cores(&self) -> u32 {
        self.inner.hello.cores
    }

    async fn connection(&self) -> Result<Arc<Connection>, ClientError> {
        let index = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.pool.len();
        let mut slot = self.inner.pool[index].lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| !c.is_broken()) {
            return Ok(connection.clone());
        }
        let (connection, _) = self.inner.addresses.open_any(&self.inner.config).await?;
        let connection = Arc::new(connection);
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn call(&self, request: Request<'_>) -> Result<Response, ClientError> {
        self.call_routed(request, None).await
    }

    async fn call_routed(
        &self,
        request: Request<'_>,
        route: Option<Route>,
    ) -> Result<Response, ClientError> {
        let connection = self.connection().await?;
        match connection
            .call_routed(&request, route, self.inner.config.request_timeout)
            .await?
        {
            Response::Error {
                code,
                message,
                owner,
            } => Err(ClientError::from_server(code, message, owner)),
            response => Ok(response),
        }
    }

    /// Round trip to the node; returns how long it took.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let started = std::time::Instant::now();
        match self.call(Request::Ping).await? {
            Response::Pong => Ok(started.elapsed()),
            other => Err(unexpected(other)),
        }
    }

    /// The value of `key`, or `None`.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Value>, ClientError> {
        self.get_via(key.as_ref(), None).await
    }

    async fn get_via(
        &self,
        key: &[u8],
        route: Option<Route>,
    ) -> Result<Option<Value>, ClientError> {
        match self.call_routed(Request::Get { key }, route).await? {
            Response::Value(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    /// [`Self::get`], sent with the route the client believes `key` has:
    /// [`ClientError::StaleRoute`] (with the current route) when it is not
    /// current. For clients that cache ranges.
    pub async fn get_routed(
        &self,
        key: impl AsRef<[u8]>,
        route: Route,
    ) -> Result<Option<Value>, ClientError> {
        self.get_via(key.as_ref(), Some(route)).await
    }

    /// [`Self::set`], sent with the route the client believes `key` has
    /// (see [`Self::get_routed`]).
    pub async fn set_routed(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        route: Route,
    ) -> Result<u64, ClientError> {
        let options = SetOptions::default();
        let written = self.set_via(key.as_ref(), value.as_ref(), options, Some(route));
        Ok(written.await?.version)
    }

    /// Writes `value` under `key`; returns the new version.
    pub async fn set(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<u64, ClientError> {
        Ok(self
            .set_with(key, value, SetOptions::default())
            .await?
            .version)
    }

    /// Writes with a TTL and/or a condition.
    pub async fn set_with(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        options: SetOptions,
    ) -> Result<WriteResult, ClientError> {
        self.set_via(key.as_ref(), value.as_ref(), options, None)
            .await
    }

    async fn set_via(
        &self,
        key: &[u8],
        value: &[u8],
        options: SetOptions,
        route: Option<Route>,
    ) -> Result<WriteResult, ClientError> {
        let request = Request::Set {
            key,
            value,
            ttl_ms: ttl_ms(options.ttl),
            condition: options.condition,
        };
        match self.call_routed(request, route).await? {
            Response::Written(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Writes only if the key's version is `expected_version` (0: the key
    /// must not exist).
    pub async fn compare_and_set(
        &self,
        key: impl AsRef<[u8]>,
        expected_version: u64,
        value: impl AsRef<[u8]>,
        ttl: Option<Duration>,
    ) -> Result<WriteResult, ClientError> {
        let request = Request::CompareAndSet {
            key: key.as_ref(),
            value: value.as_ref(),
            expected_version,
            ttl_ms: ttl_ms(ttl),
        };
        match self.call(request).await? {
            Response::Written(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Adds `by` to the key's value read as a decimal integer (a missing key
    /// counts as 0) and returns the new value; the TTL is kept (Redis
    /// INCRBY). `ErrorCode::NotAnInteger` for another value or an overflow.
    pub async fn incr_by(&self, key: impl AsRef<[u8]>, by: i64) -> Result<i64, ClientError> {
        let request = Request::IncrBy {
            key: key.as_ref(),
            by,
        };
        match self.call(request).await? {
            Response::Integer(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    /// Sets the key's expiry to `at` when `condition` holds; a time in the
    /// past deletes the key. Whether it changed anything (false: no such
    /// key, or the condition failed).
    pub async fn expire_at(
        &self,
        key: impl AsRef<[u8]>,
        at: std::time::SystemTime,
        condition: ExpireCondition,
    ) -> Result<bool, ClientError> {
        // At least 1 ms: 0 on the wire means "remove the expiry".
        let at_unix_ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| (since.as_millis() as u64).max(1));
        self.expire_request(key.as_ref(), at_unix_ms, condition)
            .await
    }

    /// Removes the key's expiry; whether it had one (Redis PERSIST).
    pub async fn persist(&self, key: impl AsRef<[u8]>) -> Result<bool, ClientError> {
        self.expire_request(key.as_ref(), 0, ExpireCondition::Always)
            .await
    }

    async fn expire_request(
        &self,
        key: &[u8],
        at_unix_ms: u64,
        condition: ExpireCondition,
    ) -> Result<bool, ClientError> {
        let request = Request::Expire {
            key,
            at_unix_ms,
            condition,
        };
        Ok(self.count_of(request).await? == 1)
    }

    /// Renames `from` to `to`, value and expiry, atomically (Redis RENAME).
    /// Both keys must live on one shard (`ErrorCode::CrossShard`); a
    /// missing `from` is `ErrorCode::NoSuchKey`.
    pub async fn rename(
        &self,
        from: impl AsRef<[u8]>,
        to: impl AsRef<[u8]>,
    ) -> Result<(), ClientError> {
        self.rename_with(from, to, RenameKind::Rename)
            .await
            .map(drop)
    }

    /// Renames or copies as `kind` says; whether it did (see
    /// [`RenameKind`]).
    pub async fn rename_with(
        &self,
        from: impl AsRef<[u8]>,
        to: impl AsRef<[u8]>,
        kind: RenameKind,
    ) -> Result<bool, ClientError> {
        let request = Request::Rename {
            from: from.as_ref(),
            to: to.as_ref(),
            kind,
        };
        Ok(self.count_of(request).await? == 1)
    }

    /// Writes every entry only if none of the keys exists, atomically
    /// (Redis MSETNX); whether it wrote. All keys must live on one shard
    /// (`ErrorCode::CrossShard`).
    pub async fn mset_if_absent<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        entries: &[(K, V)],
    ) -> Result<bool, ClientError> {
        let entries: Vec<(&[u8], &[u8])> = entries
            .iter()
            .map(|(key, value)| (key.as_ref(), value.as_ref()))
            .collect();
        Ok(self
            .count_of(Request::MSetIfAbsent { entries: &entries })
            .await?
            == 1)
    }

    /// Deletes keys; returns how many existed.
    pub async fn delete<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<u64, ClientError> {
        let keys: Vec<&[u8]> = keys.iter().map(AsRef::as_ref).collect();
        self.count_of(Request::Delete { keys: &keys }).await
    }

    /// How many of the keys exist.
    pub async fn exists<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<u64, ClientError> {
        let keys: Vec<&[u8]> = keys.iter().map(AsRef::as_ref).collect();
        self.count_of(Request::Exists { keys: &keys }).await
    }

    /// Number of keys of the tenant on the node.
    pub async fn count(&self) -> Result<u64, ClientError> {
        self.count_of(Request::Count).await
    }

    async fn count_of(&self, request: Request<'_>) -> Result<u64, ClientError> {
        match self.call(request).await? {
            Response::Count(count) => Ok(count),
            other => Err(unexpected(other)),
        }
    }

    /// Values of several keys, in order.
    pub async fn mget<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<Value>>, ClientError> {
        let keys: Vec<&[u8]> = keys.iter().map(AsRef::as_ref).collect();
        match self.call(Request::MGet { keys: &keys }).await? {
            Response::Values(values) => Ok(values),
            other => Err(unexpected(other)),
        }
    }

    /// Writes several keys (each atomically, not all together); returns
    /// their new versions in order.
    pub async fn mset<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        entries: &[(K, V)],
    ) -> Result<Vec<u64>, ClientError> {
        let entries: Vec<(&[u8], &[u8])> = entries
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        match self.call(Request::MSet { entries: &entries }).await? {
            Response::Versions(versions) => Ok(versions),
            other => Err(unexpected(other)),
        }
    }

    /// Every key matching a glob (fails with `ResultTooLarge` past the
    /// node's `max_keys_result`: use [`Client::scan`] then).
    pub async fn keys(&self, pattern: impl AsRef<[u8]>) -> Result<Vec<Bytes>, ClientError> {
        match self
            .call(Request::Keys {
                pattern: pattern.as_ref(),
            })
            .await?
        {
            Response::Keys(keys) => Ok(keys),
            other => Err(unexpected(other)),
        }
    }

    /// One scan step from `cursor` (0 starts a scan).
    pub async fn scan(&self, cursor: u64, options: &ScanOptions) -> Result<ScanPage, ClientError> {
        let request = Request::Scan {
            cursor,
            prefix: &options.prefix,
            pattern: &options.pattern,
            count: options.count,
        };
        match self.call(request).await? {
            Response::Scanned { cursor, keys } => Ok(ScanPage { cursor, keys }),
            other => Err(unexpected(other)),
        }
    }

    /// Snapshots every core of the node now and waits until the files are
    /// installed; returns (entries, bytes) written.
    pub async fn snapshot(&self) -> Result<(u64, u64), ClientError> {
        match self.call(Request::Snapshot).await? {
            Response::Snapshotted { keys, bytes } => Ok((keys, bytes)),
            other => Err(unexpected(other)),
        }
    }

    /// Runs a whole scan, step by step, and returns every key found.
    pub async fn scan_all(&self, options: &ScanOptions) -> Result<Vec<Bytes>, ClientError> {
        let mut keys = Vec::new();
        let mut cursor = 0;
        loop {
            let page = self.scan(cursor, options).await?;
            keys.extend(page.keys);
            if page.cursor == 0 {
                return Ok(keys);
            }
            cursor = page.cursor;
        }
    }
}

async fn open(config: &ClientConfig, addr: &str) -> Result<(Connection, HelloInfo), ClientError> {
    let credentials = config
        .credentials
        .as_ref()
        .map(|credentials| (credentials.user.as_str(), credentials.password.as_str()));
    // A user acts for its own tenant: `default` (the config's default)
    // means "whatever the user's is".
    let tenant = match (&credentials, config.tenant.as_str()) {
        (Some(_), "default") => "",
        (_, tenant) => tenant,
    };
    Connection::open(
        addr,
        tenant,
        &config.client_name,
        config.stale_reads,
        credentials,
        config.tls.as_ref(),
        config.connect_timeout,
        config.request_timeout,
    )
    .await
}

fn unexpected(response: Response) -> ClientError {
    ClientError::Protocol(format!("unexpected answer {response:?}"))
}
