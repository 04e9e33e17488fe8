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
        let data_dir = data_dir.to_owned();
        std::fs::create_dir_all(&data_dir).unwrap();
        let config_path = data_dir.join("node.toml");
        std::fs::write(&config_path, config_toml).unwrap();
        let binary = option_env!("CARGO_BIN_EXE_tinkerdb")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_binary("tinkerdb"));
        let mut child = Command::new(binary)
            .args(["--listen", "127.0.0.1:0", "--resp-listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0"])
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
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        let mut resp_addr = None;
        let admin_addr = loop {
            let line = lines
                .next()
                .expect("tinkerdb exited before it was ready")
                .expect("read tinkerdb stdout");
            if let Some(rest) = line.split("clients on ").nth(1) {
                addr = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
            }
            if let Some(rest) = line.strip_prefix("Redis protocol on ") {
                resp_addr = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
            }
            if let Some(rest) = line.strip_prefix("Admin API and dashboard on http://") {
                break rest.split('/').next().unwrap().parse().unwrap();
            }
        };
        // Cluster mode serves no Redis protocol (yet): no address then.
        let resp_addr = resp_addr.unwrap_or_else(|| "0.0.0.0:0".parse().unwrap());
        let addr = addr.expect("the ready line comes first");
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        TestNode {
            child,
            addr,
            resp_addr,
            admin_addr,
            data_dir,
        }
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
