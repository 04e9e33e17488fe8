//! `tinker`: the TinkerDB command-line client.
//!
//! `tinker [--addr HOST:PORT] [--tenant T] COMMAND ...` runs one command;
//! without a command it reads commands line by line (an interactive prompt
//! on a terminal). Exit status: 0 success, 1 "no such key" or a condition not
//! met, 2 an error. `tinker ping`, the health probe, exits 0 when the node
//! answered and 1 when it did not (unreachable, not ready, any error).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tinkerdb_client::admin::{self, AdminError};
use tinkerdb_client::{Client, ClientConfig, ClientError, ScanOptions, SetCondition, SetOptions};

#[derive(Parser, Debug)]
#[command(name = "tinker", version, about = "TinkerDB command-line client")]
struct Args {
    /// Node address, or several of one cluster separated by commas
    /// (`a:7379,b:7379`): tried in turn when one cannot be reached.
    #[arg(long, default_value = "127.0.0.1:7379", env = "TINKER_ADDR")]
    addr: String,
    /// Tenant.
    #[arg(long, default_value = "default", env = "TINKER_TENANT")]
    tenant: String,
    /// Request timeout in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Cluster mode: reads answer from the node reached without asking the
    /// shard's leader (may miss the latest writes; works without a quorum).
    #[arg(long)]
    stale_reads: bool,
    /// The node's admin API address (for `cluster`, `user`, `tenant`).
    #[arg(long, default_value = "127.0.0.1:7380", env = "TINKER_ADMIN")]
    admin: String,
    /// User to authenticate as (a node with authentication on); the data
    /// connection then acts for the user's tenant.
    #[arg(long, env = "TINKER_USER", requires = "password")]
    user: Option<String>,
    /// The user's password (prefer the TINKER_PASSWORD environment
    /// variable: a command line is visible to other local users).
    #[arg(
        long,
        env = "TINKER_PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    password: Option<String>,
    /// A bearer token for the admin API (`tinker token create`), used there
    /// instead of --user and its password (prefer TINKER_TOKEN).
    #[arg(long, env = "TINKER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Speak TLS to the node (its `[tls]` table), trusting --cacert.
    #[arg(long, requires = "cacert")]
    tls: bool,
    /// PEM file of the CA the node's certificate chains to.
    #[arg(long, env = "TINKER_CACERT")]
    cacert: Option<std::path::PathBuf>,
    /// PEM client certificate, for nodes that ask for one (with --key).
    #[arg(long, requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// PEM key of --cert.
    #[arg(long, requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// The name to expect in the node's certificate (default: the host of
    /// --addr).
    #[arg(long)]
    sni: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a key.
    Set {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// Expire after this many milliseconds.
        #[arg(long)]
        ttl_ms: Option<u64>,
        /// Only if the key does not exist.
        #[arg(long, conflicts_with = "xx")]
        nx: bool,
        /// Only if the key exists.
        #[arg(long)]
        xx: bool,
    },
    /// Read a key (exit status 1 if missing).
    Get {
        /// Key.
        key: String,
        /// Also print version and TTL.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Delete keys; prints how many existed.
    Del {
        /// Keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Count how many of the keys exist.
    Exists {
        /// Keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Keys matching a glob pattern (default `*`).
    Keys {
        /// Pattern.
        #[arg(default_value = "*")]
        pattern: String,
    },
    /// Scan keys with a cursor; with --all, to the end.
    Scan {
        /// Cursor from a previous scan (0 starts).
        #[arg(long, default_value_t = 0)]
        cursor: u64,
        /// Only keys with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only keys matching this glob.
        #[arg(long = "match", default_value = "")]
        pattern: String,
        /// Keys per step.
        #[arg(long, default_value_t = 0)]
        count: u32,
        /// Follow the cursor to the end.
        #[arg(long)]
        all: bool,
    },
    /// Read several keys.
    Mget {
        /// Keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Write several keys: KEY VALUE [KEY VALUE ...].
    Mset {
        /// Alternating keys and values.
        #[arg(required = true, num_args = 2..)]
        pairs: Vec<String>,
    },
    /// Compare-and-set: write only if the key's version is EXPECTED (0: absent).
    Cas {
        /// Key.
        key: String,
        /// Expected version.
        expected: u64,
        /// New value.
        value: String,
    },
    /// Number of keys of the tenant.
    Count,
    /// Snapshot every core of the node now (waits until installed).
    Snapshot,
    /// Round trip to the node; a health probe. Exit status 0: the node
    /// answered (ready); 1: it did not within --timeout-ms (unreachable,
    /// refused, not serving yet, or an error).
    Ping {
        /// Give up after this many milliseconds (connecting included).
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Cluster status and membership, through the admin API (--admin).
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// The node's users, through the admin API (--admin; a cluster_admin
    /// user when authentication is on).
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// The node's tenants and their quotas, through the admin API.
    Tenant {
        #[command(subcommand)]
        action: TenantAction,
    },
    /// Users' roles: an access level (read, write, admin) on one tenant,
    /// and cluster-admin, through the admin API.
    Role {
        #[command(subcommand)]
        action: RoleAction,
    },
    /// Bearer tokens for the admin API (`--token`), through the admin API.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Subcommand, Debug)]
enum RoleAction {
    /// Every user's roles.
    List,
    /// Give a user a role: `read`, `write` or `admin` on a tenant (its one
    /// tenant: the grant replaces its tenant and access), or
    /// `cluster-admin`. Its open connections are cut off.
    Grant {
        /// The user.
        user: String,
        /// read, write, admin or cluster-admin.
        role: String,
        /// The tenant of a read, write or admin role.
        #[arg(long)]
        on_tenant: Option<String>,
    },
    /// Take `cluster-admin` from a user (tenant access is changed by
    /// granting another level; a user with none is disabled: `tinker user
    /// disable`).
    Revoke {
        /// The user.
        user: String,
        /// cluster-admin.
        role: String,
    },
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Issue a token for the --user given (with its password: a token
    /// cannot issue tokens); prints it once.
    Create {
        /// Its life, seconds (default 3600, at most 30 days).
        #[arg(long)]
        ttl_seconds: Option<u64>,
    },
    /// Revoke every token of the authenticated user on this node.
    Revoke,
}

#[derive(Subcommand, Debug)]
enum UserAction {
    /// Users with their tenant and rights (never passwords).
    List,
    /// Create a user.
    Add {
        /// Its name.
        name: String,
        /// Its password (only its Argon2id hash is kept; prefer the
        /// TINKER_NEW_PASSWORD environment variable: a command line is
        /// visible to other local users).
        #[arg(long, env = "TINKER_NEW_PASSWORD", hide_env_values = true)]
        new_password: String,
        /// The tenant its connections act for.
        #[arg(long, default_value = "default")]
        for_tenant: String,
        /// May use the admin API and change users.
        #[arg(long)]
        cluster_admin: bool,
        /// What it may do in its tenant: read, write or admin (write and
        /// flushes).
        #[arg(long, default_value = "write")]
        access: String,
    },
    /// Give a user a new password (its open connections are cut off).
    Passwd {
        /// The user.
        name: String,
        /// The new password (or TINKER_NEW_PASSWORD).
        #[arg(long, env = "TINKER_NEW_PASSWORD", hide_env_values = true)]
        new_password: String,
    },
    /// Let a user authenticate again.
    Enable {
        /// The user.
        name: String,
    },
    /// Stop a user from authenticating (its connections are cut off).
    Disable {
        /// The user.
        name: String,
    },
    /// Delete a user (its connections are cut off).
    Delete {
        /// The user.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum TenantAction {
    /// Tenants with their quotas and usage.
    List,
    /// Create a tenant.
    Create {
        /// Its name.
        name: String,
        /// Most keys (default: unlimited).
        #[arg(long)]
        max_keys: Option<u64>,
        /// Most key + value bytes (default: unlimited).
        #[arg(long)]
        max_bytes: Option<u64>,
    },
    /// Set a tenant's quotas (absent: unlimited).
    Quota {
        /// The tenant.
        name: String,
        /// Most keys.
        #[arg(long)]
        max_keys: Option<u64>,
        /// Most key + value bytes.
        #[arg(long)]
        max_bytes: Option<u64>,
    },
    /// Delete a tenant (refused while users act for it, or while it holds
    /// keys unless --force, which removes them); open connections bound to
    /// it are refused from then on.
    Delete {
        /// Its name.
        name: String,
        /// Remove its keys too.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterAction {
    /// Nodes (health), shards (leader, term, indexes, follower lag).
    Status {
        /// Print the raw JSON of /v1/cluster.
        #[arg(long)]
        json: bool,
    },
    /// Add a running node (started with --join or empty) to every shard.
    Add {
        /// Its node id.
        id: u64,
        /// Its Raft address for core 0 (HOST:PORT).
        raft: String,
    },
    /// Remove a node from every shard (then it can be stopped).
    Remove {
        /// Its node id.
        id: u64,
    },
    /// Move a range (shard) of the node reached by --admin to another of
    /// its cores, without a restart.
    Move {
        /// The range (shard id).
        range: usize,
        /// The core to host it.
        #[arg(long)]
        to_core: usize,
    },
}

/// What a command's outcome means for the exit status.
enum Outcome {
    Done,
    /// Missing key or condition not met (status 1).
    Negative,
}

#[derive(Parser, Debug)]
#[command(name = "", no_binary_name = true, disable_help_flag = false)]
struct Line {
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let admin = AdminTarget {
        addr: args.admin.clone(),
        credentials: args
            .user
            .clone()
            .zip(args.password.clone())
            .map(|(user, password)| admin::Credentials { user, password }),
        token: args.token.clone(),
        tls: client_tls(&args),
    };
    if let Some(
        command @ (Command::Cluster { .. }
        | Command::User { .. }
        | Command::Tenant { .. }
        | Command::Role { .. }
        | Command::Token { .. }),
    ) = args.command
    {
        // Admin API only: no data connection needed.
        return match admin.run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("(error) {error}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(Command::Ping { timeout_ms }) = args.command {
        return runtime.block_on(ping(&args, Duration::from_millis(timeout_ms)));
    }
    runtime.block_on(async move {
        let mut config = client_config(&args.addr)
            .tenant(&args.tenant)
            .connections(1)
            .stale_reads(args.stale_reads)
            .request_timeout(Duration::from_millis(args.timeout_ms));
        config.credentials = admin.credentials.clone();
        config.tls = client_tls(&args);
        let client = match Client::connect(config).await {
            Ok(client) => client,
            Err(error) => {
                eprintln!("(error) {error}");
                return ExitCode::from(2);
            }
        };
        match args.command {
            Some(command) => match run(&client, command, false).await {
                Ok(Outcome::Done) => ExitCode::SUCCESS,
                Ok(Outcome::Negative) => ExitCode::from(1),
                Err(error) => {
                    eprintln!("(error) {error}");
                    ExitCode::from(2)
                }
            },
            None => interactive(&client, &args.addr, &admin).await,
        }
    })
}

/// The TLS settings of `--tls` (none without it).
fn client_tls(args: &Args) -> Option<tinkerdb_client::ClientTls> {
    let ca_file = args.cacert.clone().filter(|_| args.tls)?;
    Some(tinkerdb_client::ClientTls {
        ca_file,
        server_name: args.sni.clone(),
        client_cert: args.cert.clone().zip(args.key.clone()),
    })
}

/// The client configuration for `--addr`: its first address, the others
/// as seeds.
fn client_config(addr: &str) -> ClientConfig {
    let mut addrs = addr.split(',').map(str::trim).filter(|a| !a.is_empty());
    let first = addrs.next().unwrap_or(addr);
    ClientConfig::new(first).seeds(addrs)
}

/// `tinker ping`: 0 if the node answers within `timeout` (connecting
/// included), 1 otherwise (for health checks: never 2).
async fn ping(args: &Args, timeout: Duration) -> ExitCode {
    let mut config = client_config(&args.addr)
        .tenant(&args.tenant)
        .connections(1)
        .request_timeout(timeout);
    config.connect_timeout = timeout;
    config.credentials = args
        .user
        .clone()
        .zip(args.password.clone())
        .map(|(user, password)| admin::Credentials { user, password });
    config.tls = client_tls(args);
    let attempt = async {
        let client = Client::connect(config).await?;
        client.ping().await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(elapsed)) => {
            println!("PONG ({} us)", elapsed.as_micros());
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => {
            eprintln!("(error) {}: {error}", args.addr);
            ExitCode::from(1)
        }
        Err(_) => {
            eprintln!("(error) {}: no answer within {timeout:?}", args.addr);
            ExitCode::from(1)
        }
    }
}

async fn interactive(client: &Client, addr: &str, admin: &AdminTarget) -> ExitCode {
    let stdin = std::io::stdin();
    let on_terminal = stdin.is_terminal();
    let prompt = format!("{addr} [{}]> ", client.tenant());
    let mut lines = stdin.lock().lines();
    loop {
        if on_terminal {
            print!("{prompt}");
            let _ = std::io::stdout().flush();
        }
        let Some(Ok(line)) = lines.next() else {
            return ExitCode::SUCCESS;
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "quit" || line == "exit" {
            return ExitCode::SUCCESS;
        }
        let Some(words) = shlex::split(line) else {
            println!("(error) unbalanced quotes");
            continue;
        };
        match Line::try_parse_from(words) {
            Ok(Line {
                command:
                    command @ (Command::Cluster { .. }
                    | Command::User { .. }
                    | Command::Tenant { .. }
                    | Command::Role { .. }
                    | Command::Token { .. }),
            }) => {
                if let Err(error) = admin.run(command) {
                    println!("(error) {error}");
                }
            }
            Ok(parsed) => {
                if let Err(error) = run(client, parsed.command, true).await {
                    println!("(error) {error}");
                }
            }
            Err(error) => println!("{}", error.to_string().trim_end()),
        }
    }
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn run(client: &Client, command: Command, interactive: bool) -> Result<Outcome, ClientError> {
    // Negative answers go to stderr in one-shot mode (scripts read stdout),
    // to stdout at the prompt.
    let negative = |message: &str| {
        if interactive {
            println!("{message}");
        } else {
            eprintln!("{message}");
        }
        Outcome::Negative
    };
    Ok(match command {
        Command::Set {
            key,
            value,
            ttl_ms,
            nx,
            xx,
        } => {
            let condition = match (nx, xx) {
                (true, _) => SetCondition::IfAbsent,
                (_, true) => SetCondition::IfPresent,
                _ => SetCondition::Always,
            };
            let options = SetOptions {
                ttl: ttl_ms.map(Duration::from_millis),
                condition,
            };
            let result = client.set_with(&key, &value, options).await?;
            if result.applied {
                println!("OK (version {})", result.version);
                Outcome::Done
            } else if nx {
                negative(&format!(
                    "(not set) key exists (version {})",
                    result.version
                ))
            } else {
                negative("(not set) key does not exist")
            }
        }
        Command::Get { key, verbose } => match client.get(&key).await? {
            Some(value) => {
                println!("{}", show(&value.value));
                if verbose {
                    let ttl = value
                        .ttl
                        .map_or("none".to_owned(), |ttl| format!("{} ms", ttl.as_millis()));
                    println!("(version {}, ttl {ttl})", value.version);
                }
                Outcome::Done
            }
            None => negative(&format!("(nil) key {key:?} not found")),
        },
        Command::Del { keys } => {
            println!("{}", client.delete(&keys).await?);
            Outcome::Done
        }
        Command::Exists { keys } => {
            println!("{}", client.exists(&keys).await?);
            Outcome::Done
        }
        Command::Keys { pattern } => {
            let mut keys = client.keys(&pattern).await?;
            keys.sort();
            for key in keys {
                println!("{}", show(&key));
            }
            Outcome::Done
        }
        Command::Scan {
            cursor,
            prefix,
            pattern,
            count,
            all,
        } => {
            let options = ScanOptions {
                prefix: prefix.into_bytes(),
                pattern: pattern.into_bytes(),
                count,
            };
            if all {
                for key in client.scan_all(&options).await? {
                    println!("{}", show(&key));
                }
            } else {
                let page = client.scan(cursor, &options).await?;
                println!("cursor {}", page.cursor);
                for key in page.keys {
                    println!("{}", show(&key));
                }
            }
            Outcome::Done
        }
        Command::Mget { keys } => {
            for value in client.mget(&keys).await? {
                match value {
                    Some(value) => println!("{}", show(&value.value)),
                    None => println!("(nil)"),
                }
            }
            Outcome::Done
        }
        Command::Mset { pairs } => {
            if pairs.len() % 2 != 0 {
                return Err(ClientError::InvalidRequest(
                    "mset takes KEY VALUE pairs".into(),
                ));
            }
            let entries: Vec<(&str, &str)> = pairs
                .chunks(2)
                .map(|pair| (pair[0].as_str(), pair[1].as_str()))
                .collect();
            let versions = client.mset(&entries).await?;
            println!("OK ({} keys)", versions.len());
            Outcome::Done
        }
        Command::Cas {
            key,
            expected,
            value,
        } => {
            let result = client.compare_and_set(&key, expected, &value, None).await?;
            if result.applied {
                println!("OK (version {})", result.version);
                Outcome::Done
            } else {
                negative(&format!("(not set) current version is {}", result.version))
            }
        }
        Command::Count => {
            println!("{}", client.count().await?);
            Outcome::Done
        }
        Command::Snapshot => {
            let (keys, bytes) = client.snapshot().await?;
            println!("OK ({keys} keys, {bytes} bytes)");
            Outcome::Done
        }
        Command::Ping { .. } => {
            let elapsed = client.ping().await?;
            println!("PONG ({} us)", elapsed.as_micros());
            Outcome::Done
        }
        // Handled before a data connection is made (main, interactive).
        Command::Cluster { .. }
        | Command::User { .. }
        | Command::Tenant { .. }
        | Command::Role { .. }
        | Command::Token { .. } => {
            return Err(ClientError::InvalidRequest(
                "cluster, user and tenant commands go to the admin API (--admin)".into(),
            ))
        }
    })
}

/// Admin requests of `tinker cluster` wait this long (adding a node waits
/// until it has caught up).
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(70);

/// Where the admin API is, and who to be there.
struct AdminTarget {
    addr: String,
    credentials: Option<admin::Credentials>,
    /// `--token`: used for admin requests instead of the credentials.
    token: Option<String>,
    /// `--tls`: the admin port serves TLS with the node's certificate.
    tls: Option<tinkerdb_client::ClientTls>,
}

impl AdminTarget {
    /// How admin requests authenticate: the token if given, else the user.
    fn auth(&self) -> Option<admin::AdminAuth> {
        match (&self.token, &self.credentials) {
            (Some(token), _) => Some(admin::AdminAuth::Bearer(admin::BearerToken(token.clone()))),
            (None, Some(credentials)) => Some(admin::AdminAuth::Basic(credentials.clone())),
            (None, None) => None,
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, AdminError> {
        admin::request_as(
            &self.addr,
            method,
            path,
            body,
            CLUSTER_TIMEOUT,
            self.auth().as_ref(),
            self.tls.as_ref(),
        )
    }

    /// Runs an admin command (`cluster`, `user`, `tenant`).
    fn run(&self, command: Command) -> Result<(), AdminError> {
        match command {
            Command::Cluster { action } => cluster(self, action),
            Command::User { action } => users(self, action),
            Command::Role { action } => roles(self, action),
            Command::Token { action } => tokens(self, action),
            Command::Tenant { action } => tenants(self, action),
            other => unreachable!("not an admin command: {other:?}"),
        }
    }
}

fn users(admin: &AdminTarget, action: UserAction) -> Result<(), AdminError> {
    let change = |name: &str, body: serde_json::Value| {
        let path = format!("/v1/users/{name}");
        admin.call("PUT", &path, Some(&body)).map(|_| ())
    };
    match action {
        UserAction::List => {
            let users = admin.call("GET", "/v1/users", None)?;
            println!(
                "{:<24} {:<24} {:<8} {:<8} CLUSTER-ADMIN",
                "USER", "TENANT", "ACCESS", "ENABLED"
            );
            for user in users.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<24} {:<8} {:<8} {}",
                    opt(&user["name"]),
                    opt(&user["tenant"]),
                    opt(&user["access"]),
                    opt(&user["enabled"]),
                    opt(&user["cluster_admin"])
                );
            }
        }
        UserAction::Add {
            name,
            new_password,
            for_tenant,
            cluster_admin,
            access,
        } => {
            let body = serde_json::json!({
                "name": name, "password": new_password, "tenant": for_tenant,
                "cluster_admin": cluster_admin, "access": access,
            });
            admin.call("POST", "/v1/users", Some(&body))?;
            println!("user {name} created (tenant {for_tenant})");
        }
        UserAction::Passwd { name, new_password } => {
            change(&name, serde_json::json!({ "password": new_password }))?;
            println!("user {name} has a new password");
        }
        UserAction::Enable { name } => {
            change(&name, serde_json::json!({ "enabled": true }))?;
            println!("user {name} enabled");
        }
        UserAction::Disable { name } => {
            change(&name, serde_json::json!({ "enabled": false }))?;
            println!("user {name} disabled");
        }
        UserAction::Delete { name } => {
            admin.call("DELETE", &format!("/v1/users/{name}"), None)?;
            println!("user {name} deleted");
        }
    }
    Ok(())
}

fn roles(admin: &AdminTarget, action: RoleAction) -> Result<(), AdminError> {
    let change = |user: &str, body: serde_json::Value| {
        admin
            .call("PUT", &format!("/v1/users/{user}"), Some(&body))
            .map(|_| ())
    };
    let refuse = |message: String| AdminError::Api {
        status: 400,
        code: "invalid_argument".into(),
        message,
    };
    match action {
        RoleAction::List => {
            let users = admin.call("GET", "/v1/users", None)?;
            println!("{:<24} ROLES", "USER");
            for user in users.as_array().into_iter().flatten() {
                let mut roles = vec![format!(
                    "{} on {}",
                    opt(&user["access"]),
                    opt(&user["tenant"])
                )];
                if user["cluster_admin"] == true {
                    roles.push("cluster-admin".into());
                }
                if user["enabled"] == false {
                    roles.push("(disabled)".into());
                }
                println!("{:<24} {}", opt(&user["name"]), roles.join(", "));
            }
        }
        RoleAction::Grant {
            user,
            role,
            on_tenant,
        } => match (role.as_str(), on_tenant) {
            ("cluster-admin", None) => {
                change(&user, serde_json::json!({ "cluster_admin": true }))?;
                println!("user {user} is a cluster admin");
            }
            ("read" | "write" | "admin", Some(tenant)) => {
                change(
                    &user,
                    serde_json::json!({ "tenant": tenant, "access": role }),
                )?;
                println!("user {user} has {role} access to tenant {tenant}");
            }
            ("read" | "write" | "admin", None) => {
                return Err(refuse(format!("a {role} role needs --on-tenant")))
            }
            ("cluster-admin", Some(_)) => {
                return Err(refuse(
                    "cluster-admin is cluster-wide: no --on-tenant".into(),
                ))
            }
            (other, _) => {
                return Err(refuse(format!(
                    "no role {other:?}: read, write, admin or cluster-admin"
                )))
            }
        },
        RoleAction::Revoke { user, role } => match role.as_str() {
            "cluster-admin" => {
                change(&user, serde_json::json!({ "cluster_admin": false }))?;
                println!("user {user} is no longer a cluster admin");
            }
            other => {
                return Err(refuse(format!(
                    "only cluster-admin is revoked; change {other:?} access by granting \
                     another level, or disable the user"
                )))
            }
        },
    }
    Ok(())
}

fn tokens(admin: &AdminTarget, action: TokenAction) -> Result<(), AdminError> {
    match action {
        TokenAction::Create { ttl_seconds } => {
            // Only a password issues tokens: --user's, even with a token
            // in the environment.
            let with_password = AdminTarget {
                addr: admin.addr.clone(),
                credentials: admin.credentials.clone(),
                token: admin
                    .credentials
                    .is_none()
                    .then(|| admin.token.clone())
                    .flatten(),
                tls: admin.tls.clone(),
            };
            let body = serde_json::json!({ "ttl_seconds": ttl_seconds });
            let issued = with_password.call("POST", "/v1/tokens", Some(&body))?;
            // The token alone on stdout (for TINKER_TOKEN=$(...)); the
            // rest on stderr.
            println!("{}", opt(&issued["token"]));
            eprintln!(
                "token for {} (expires at Unix ms {}); send it with --token or TINKER_TOKEN",
                opt(&issued["user"]),
                opt(&issued["expires_unix_ms"])
            );
        }
        TokenAction::Revoke => {
            let revoked = admin.call("DELETE", "/v1/tokens", None)?;
            println!("{} token(s) revoked", opt(&revoked["revoked"]));
        }
    }
    Ok(())
}

fn tenants(admin: &AdminTarget, action: TenantAction) -> Result<(), AdminError> {
    match action {
        TenantAction::List => {
            let tenants = admin.call("GET", "/v1/tenants", None)?;
            println!(
                "{:<24} {:>12} {:>14} {:>12} {:>14}",
                "TENANT", "KEYS", "BYTES", "MAX-KEYS", "MAX-BYTES"
            );
            for tenant in tenants["tenants"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:>12} {:>14} {:>12} {:>14}",
                    opt(&tenant["name"]),
                    opt(&tenant["usage"]["keys"]),
                    opt(&tenant["usage"]["bytes"]),
                    opt(&tenant["quota"]["max_keys"]),
                    opt(&tenant["quota"]["max_bytes"])
                );
            }
        }
        TenantAction::Create {
            name,
            max_keys,
            max_bytes,
        } => {
            let body =
                serde_json::json!({ "name": name, "max_keys": max_keys, "max_bytes": max_bytes });
            admin.call("POST", "/v1/tenants", Some(&body))?;
            println!("tenant {name} created");
        }
        TenantAction::Delete { name, force } => {
            let path = format!("/v1/tenants/{name}?force={force}");
            let deleted = admin.call("DELETE", &path, None)?;
            println!(
                "tenant {name} deleted ({} keys removed)",
                opt(&deleted["keys_removed"])
            );
        }
        TenantAction::Quota {
            name,
            max_keys,
            max_bytes,
        } => {
            let body = serde_json::json!({ "max_keys": max_keys, "max_bytes": max_bytes });
            admin.call("PUT", &format!("/v1/tenants/{name}/quota"), Some(&body))?;
            println!(
                "tenant {name}: max_keys {}, max_bytes {}",
                opt(&body["max_keys"]),
                opt(&body["max_bytes"])
            );
        }
    }
    Ok(())
}

fn cluster(admin: &AdminTarget, action: ClusterAction) -> Result<(), AdminError> {
    match action {
        ClusterAction::Status { json } => {
            let status = admin.call("GET", "/v1/cluster", None)?;
            if json {
                println!("{status:#}");
            } else {
                print!("{}", format_cluster_status(&status));
            }
        }
        ClusterAction::Add { id, raft } => {
            let node = admin.call("GET", "/v1/node", None)?;
            let body = serde_json::json!({ "id": id, "raft": raft, "cores": node["cores"] });
            let answer = admin.call("POST", "/v1/cluster/nodes", Some(&body))?;
            println!("node {id} added; voters per shard: {}", answer["voters"]);
        }
        ClusterAction::Remove { id } => {
            let path = format!("/v1/cluster/nodes/{id}");
            let answer = admin.call("DELETE", &path, None)?;
            println!("node {id} removed; voters per shard: {}", answer["voters"]);
        }
        ClusterAction::Move { range, to_core } => {
            let path = format!("/v1/ranges/{range}/move");
            let body = serde_json::json!({ "core": to_core });
            let answer = admin.call("POST", &path, Some(&body))?;
            println!(
                "range {range} moved from core {} to core {} in {} ms ({} bytes of log)",
                answer["from_core"], answer["to_core"], answer["elapsed_ms"], answer["log_bytes"]
            );
        }
    }
    Ok(())
}

fn opt(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The text table of `tinker cluster status`.
fn format_cluster_status(status: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let empty = Vec::new();
    let nodes = status["nodes"].as_array().unwrap_or(&empty);
    let shards = status["shards"].as_array().unwrap_or(&empty);
    let me = nodes
        .iter()
        .find(|node| node["is_self"] == true)
        .map_or("-".to_owned(), |node| opt(&node["id"]));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster: {} mode, {} nodes, {} shards (as node {me} sees it)\n",
        opt(&status["mode"]),
        nodes.len(),
        shards.len()
    );
    let _ = writeln!(
        out,
        "{:<6}{:<9}{:<9}{:<24}{:>11}{:>10}",
        "NODE", "ROLE", "HEALTH", "ADDRESS", "LAST SEEN", "RTT"
    );
    for node in nodes {
        let (seen, rtt) = if node["is_self"] == true {
            ("self".to_owned(), "-".to_owned())
        } else {
            (
                node["last_seen_ms"]
                    .as_u64()
                    .map_or("never".to_owned(), |ms| format!("{ms} ms")),
                node["rtt_us"]
                    .as_u64()
                    .map_or("-".to_owned(), |us| format!("{:.2} ms", us as f64 / 1e3)),
            )
        };
        let _ = writeln!(
            out,
            "{:<6}{:<9}{:<9}{:<24}{:>11}{:>10}",
            opt(&node["id"]),
            opt(&node["role"]),
            opt(&node["state"]),
            opt(&node["address"]),
            seen,
            rtt
        );
        if let Some(error) = node["last_error"].as_str() {
            let _ = writeln!(out, "      last probe failed: {error}");
        }
        let registered = &node["registered"];
        if registered.is_object() {
            let _ = writeln!(
                out,
                "      serves clients at {}, RESP at {}, admin at {}; {} cores, version {}",
                opt(&registered["client"]),
                opt(&registered["resp"]),
                opt(&registered["admin"]),
                opt(&registered["cores"]),
                opt(&registered["version"]),
            );
        }
    }
    let metadata = &status["metadata"];
    if metadata.is_object() {
        let ids = |list: &serde_json::Value| {
            list.as_array()
                .unwrap_or(&empty)
                .iter()
                .map(opt)
                .collect::<Vec<_>>()
                .join(",")
        };
        let _ = writeln!(
            out,
            "\nmetadata group: leader {}, term {}, voters [{}], learners [{}], applied {}, \
             role here {}; nodes registered [{}]",
            opt(&metadata["leader"]),
            opt(&metadata["term"]),
            ids(&metadata["voters"]),
            ids(&metadata["learners"]),
            opt(&metadata["applied_index"]),
            opt(&metadata["role"]),
            ids(&metadata["registered_nodes"]),
        );
    }
    let _ = writeln!(
        out,
        "\n{:<7}{:<6}{:<13}{:<7}{:<8}{:<6}{:<11}{:>10}{:>10}{:>10}  LAG (node: entries behind the leader)",
        "SHARD", "CORE", "SLOTS", "EPOCH", "LEADER", "TERM", "ROLE HERE", "COMMITTED", "APPLIED", "SNAPSHOT"
    );
    for shard in shards {
        let slots = format!(
            "{}-{}",
            opt(&shard["slots"]["start"]),
            opt(&shard["slots"]["end"])
        );
        let followers = shard["followers"].as_array().unwrap_or(&empty);
        let lag = if followers.is_empty() {
            if shard["role"] == "Leader" {
                "-".to_owned()
            } else {
                "known by the leader's node".to_owned()
            }
        } else {
            followers
                .iter()
                .map(|f| format!("{}: {}", opt(&f["node"]), opt(&f["lag"])))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // A hibernating group: idle, no heartbeats (docs/replication.md).
        let lag = if shard["asleep"] == true {
            format!("{lag} (asleep)")
        } else {
            lag
        };
        let _ = writeln!(
            out,
            "{:<7}{:<6}{:<13}{:<7}{:<8}{:<6}{:<11}{:>10}{:>10}{:>10}  {lag}",
            opt(&shard["id"]),
            opt(&shard["core"]),
            slots,
            opt(&shard["epoch"]),
            opt(&shard["leader"]),
            opt(&shard["term"]),
            opt(&shard["role"]),
            opt(&shard["committed_index"]),
            opt(&shard["applied_index"]),
            opt(&shard["snapshot_index"]),
        );
    }
    // A node of a cluster with more nodes than replicas holds some ranges
    // only: the others, as the metadata's range table has them.
    let here: Vec<&serde_json::Value> = shards.iter().map(|shard| &shard["id"]).collect();
    let elsewhere: Vec<&serde_json::Value> = status["metadata"]["ranges"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter(|range| !here.contains(&&range["id"]))
        .collect();
    if !elsewhere.is_empty() {
        let _ = writeln!(
            out,
            "
ranges held by other nodes (the metadata's range table):
{:<7}{:<7}{:<8}{:<6}VOTERS",
            "RANGE", "EPOCH", "LEADER", "TERM"
        );
        for range in elsewhere {
            let voters = range["voters"].as_array().unwrap_or(&empty);
            let voters: Vec<String> = voters.iter().map(opt).collect();
            let _ = writeln!(
                out,
                "{:<7}{:<7}{:<8}{:<6}{}",
                opt(&range["id"]),
                opt(&range["epoch"]),
                opt(&range["leader"]),
                opt(&range["term"]),
                voters.join(",")
            );
        }
    }
    out
}
