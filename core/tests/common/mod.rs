//! Test harness: starts a real `tinkerdb` process on a free loopback port
//! and stops it when dropped. Shared by the core and client test binaries.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a binary of this workspace, next to the test executable's folder.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A running node.
pub struct TestNode {
    child: Child,
    /// Client protocol address.
    pub addr: SocketAddr,
    /// Redis-protocol address.
    pub resp_addr: SocketAddr,
    /// Admin plane (HTTP) address.
    pub admin_addr: SocketAddr,
    data_dir: PathBuf,
}

impl TestNode {
    /// A node with `cores` cores and default configuration.
    pub fn start(cores: usize) -> TestNode {
        TestNode::start_with_config(cores, "")
    }

    /// A node with `cores` cores and the given TOML configuration.
    pub fn start_with_config(cores: usize, config_toml: &str) -> TestNode {
        TestNode::start_in(cores, config_toml, &fresh_dir(), &[])
    }

    /// The node's process id.
    #[allow(dead_code)] // not every test binary looks at the process
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the node with SIGKILL (a crash: nothing is flushed or closed)
    /// and returns its directory, kept for a restart.
    pub fn crash(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::take(&mut self.data_dir);
        std::mem::forget(self);
        dir
    }

    /// A node on `data_dir` (new or left by [`TestNode::crash`]), with extra
    /// environment variables (failpoints).
    pub fn start_in(
        cores: usize,
        config_toml: &str,
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
    ) -> TestNode {
        TestNode::start_with_args(cores, config_toml, data_dir, env, &[])
    }

    /// [`TestNode::start_in`] with extra command-line arguments (cluster
    /// mode: `--node-id`, `--peers`).
    pub fn start_with_args(
        cores: usize,
        config_toml: &str,
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
        extra_args: &[String],
    ) -> TestNode {
        TestNode::start_on(cores, config_toml, data_dir, env, extra_args, None)
    }

    /// [`TestNode::start_with_args`] on fixed ports (`None`: ports the
    /// kernel picks), for tests that restart a node on the same ports.
    pub fn start_on(
        cores: usize,
        config_toml: &str,
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
        extra_args: &[String],
        ports: Option<NodePorts>,
    ) -> TestNode {
        TestNode::spawn(cores, config_toml, data_dir, env, extra_args, ports)
            .wait_ready()
            .expect("tinkerdb exited before it was ready")
    }

    /// Starts the process; [`Starting::wait_ready`] waits for its ready lines.
    pub fn spawn(
        cores: usize,
        config_toml: &str,
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
        extra_args: &[String],
        ports: Option<NodePorts>,
    ) -> Starting {
        let data_dir = data_dir.to_owned();
        std::fs::create_dir_all(&data_dir).unwrap();
        let config_path = data_dir.join("node.toml");
        std::fs::write(&config_path, config_toml).unwrap();
        let binary = option_env!("CARGO_BIN_EXE_tinkerdb")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_binary("tinkerdb"));
        let [client, resp, admin] = ports.map_or([0; 3], |p| [p.client, p.resp, p.admin]);
        let child = Command::new(binary)
            .args(["--listen", &format!("127.0.0.1:{client}")])
            .args(["--resp-listen", &format!("127.0.0.1:{resp}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(extra_args)
            .args(["--cores", &cores.to_string()])
            .arg("--data-dir")
            .arg(data_dir.join("data"))
            .arg("--config")
            .arg(&config_path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,openraft=error".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tinkerdb");
        Starting { child, data_dir }
    }
}

/// A cluster of `count` nodes (ids 1 to `count`) of `cores` cores each,
/// all with `config_toml`, each with its own Raft port on loopback (listed
/// in `--peers` for all), started one after another; the nodes and their
/// Raft ports, in id order.
pub fn start_cluster(count: usize, cores: usize, config_toml: &str) -> (Vec<TestNode>, Vec<u16>) {
    let ports: Vec<u16> = (0..count).map(|_| free_port_block(1)).collect();
    let peers = ports
        .iter()
        .enumerate()
        .map(|(index, port)| format!("{}=127.0.0.1:{port}", index + 1))
        .collect::<Vec<_>>()
        .join(",");
    let nodes = (1..=count)
        .map(|id| {
            let args = ["--node-id", &id.to_string(), "--peers", &peers].map(String::from);
            TestNode::start_with_args(cores, config_toml, &fresh_dir(), &[], &args)
        })
        .collect();
    (nodes, ports)
}

/// Waits (at most 60 s) until every node's cluster status, as `status`
/// fetches it (`None`: not available yet), shows a leader for every shard.
pub fn wait_for_leaders(
    nodes: &[TestNode],
    status: impl Fn(&TestNode) -> Option<serde_json::Value>,
) -> bool {
    eventually(Duration::from_secs(60), || {
        nodes.iter().all(|node| {
            status(node).is_some_and(|status| {
                status["shards"]
                    .as_array()
                    .is_some_and(|shards| shards.iter().all(|shard| shard["leader"].is_u64()))
            })
        })
    })
}

/// Longest a node may take to print its ready lines (recovery, a join)
/// before the test fails: generous for a loaded machine, but bounded.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A node process started, not yet known to be ready.
pub struct Starting {
    child: Child,
    data_dir: PathBuf,
}

impl Starting {
    /// Waits for the ready lines; `None` if the process exited first (its
    /// stderr, inherited, says why), having reaped it.
    pub fn wait_ready(mut self) -> Option<TestNode> {
        let stdout = self.child.stdout.take().unwrap();
        // Lines arrive through a thread, so that a node that never gets
        // ready fails the test after READY_TIMEOUT instead of hanging it.
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if sender.send(line).is_err() {
                    return; // Keeps draining stdout until the receiver goes.
                }
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut addr = None;
        let mut resp_addr = None;
        let admin_addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!("tinkerdb was not ready within {READY_TIMEOUT:?}");
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.child.wait();
                    return None;
                }
            };
            let line = line.expect("read tinkerdb stdout");
            if let Some(rest) = line.split("clients on ").nth(1) {
                addr = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
            }
            if let Some(rest) = line.strip_prefix("Redis protocol on ") {
                resp_addr = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
            }
            if let Some(rest) = line
                .strip_prefix("Admin API and dashboard on http://")
                .or_else(|| line.strip_prefix("Admin API and dashboard on https://"))
            {
                break rest.split('/').next().unwrap().parse().unwrap();
            }
        };
        // Cluster mode serves no Redis protocol (yet): no address then.
        let resp_addr = resp_addr.unwrap_or_else(|| "0.0.0.0:0".parse().unwrap());
        let addr = addr.expect("the ready line comes first");
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Some(TestNode {
            child: self.child,
            addr,
            resp_addr,
            admin_addr,
            data_dir: self.data_dir,
        })
    }
}

/// The three listening ports of a node.
#[derive(Debug, Clone, Copy)]
pub struct NodePorts {
    /// Flatbuffers clients.
    pub client: u16,
    /// Redis protocol.
    pub resp: u16,
    /// Admin plane (HTTP).
    pub admin: u16,
}

/// The first of `count` consecutive loopback ports free now. Taken below
/// Linux's ephemeral range (32768 and up), where the kernel gives no
/// client socket a port between this choice and the node's bind, and from
/// a counter shared by the tests of this process, which run in parallel.
pub fn free_port_block(count: u16) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20_000 + (std::process::id() % 1_000) as u16 * 10;
    loop {
        let base = start + NEXT.fetch_add(count + 1, Ordering::Relaxed) % 2_000;
        let all_free =
            (0..count).all(|c| std::net::TcpListener::bind(("127.0.0.1", base + c)).is_ok());
        if all_free {
            return base;
        }
    }
}

impl NodePorts {
    /// Three free ports.
    pub fn free() -> NodePorts {
        let base = free_port_block(3);
        NodePorts {
            client: base,
            resp: base + 1,
            admin: base + 2,
        }
    }
}

impl TestNode {
    /// Sends `signal` (e.g. "TERM") to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit (at most `timeout`); its exit status,
    /// `None` if it is still running. Keeps the data directory.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The node's test directory (its data under `data/`).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Gives up the handle without killing the process's files: returns the
    /// data directory (the process must have exited).
    pub fn into_dir(mut self) -> PathBuf {
        assert!(!self.is_running(), "the node is still running");
        let dir = std::mem::take(&mut self.data_dir);
        std::mem::forget(self);
        dir
    }

    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A new, empty directory for a node's files.
pub fn fresh_dir() -> PathBuf {
    let unique = format!(
        "tinkerdb-test-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ rand_seed()
    );
    std::env::temp_dir().join(unique)
}

/// Starts the node binary on `data_dir` and returns its exit output (for
/// nodes expected to refuse to start).
pub fn start_expecting_failure(cores: usize, data_dir: &std::path::Path) -> std::process::Output {
    let binary = option_env!("CARGO_BIN_EXE_tinkerdb")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_binary("tinkerdb"));
    Command::new(binary)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--no-resp",
            "--no-admin",
            "--cores",
            &cores.to_string(),
        ])
        .arg("--data-dir")
        .arg(data_dir.join("data"))
        .output()
        .expect("run tinkerdb")
}

fn rand_seed() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u8(0);
    u128::from(hasher.finish())
}

/// Polls `check` until it is true or `timeout` passes (for effects with no
/// event to wait on, such as background expiry).
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    check()
}

/// A tokio runtime on the test's thread, for the async Rust client.
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
