//! Power loss, not just a crash: the node runs on XFS on a loop device, the
//! filesystem is shut down with `xfs_io -x -c shutdown` (writes not yet on
//! stable storage are lost, as in a power cut), the process is killed, the
//! filesystem remounted (XFS replays its log) and the node restarted.
//!
//! Needs root, `losetup` and xfsprogs (`.ci/run` installs them). The
//! negative control shows the check can fail: with acknowledgements before
//! the WAL reaches the disk, acknowledged writes are lost and detected.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::TestNode;
use tinkerdb_client::{Client, ClientConfig};

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("{program} is needed for the power-cut test (xfsprogs, util-linux): {error}")
        });
    assert!(
        output.status.success(),
        "{program} {args:?} failed (the power-cut test needs root and loop devices): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// An XFS filesystem on a loop device, mounted on a temporary directory.
struct XfsDisk {
    image: PathBuf,
    device: String,
    mount: PathBuf,
}

impl XfsDisk {
    fn new(name: &str) -> XfsDisk {
        let base = std::env::temp_dir().join(format!("tinkerdb-xfs-{name}-{}", std::process::id()));
        let image = base.with_extension("img");
        let mount = base.with_extension("mnt");
        std::fs::create_dir_all(&mount).unwrap();
        run("truncate", &["-s", "600M", image.to_str().unwrap()]);
        let device = run("losetup", &["-f", "--show", image.to_str().unwrap()]);
        run("mkfs.xfs", &["-q", "-f", &device]);
        run("mount", &[&device, mount.to_str().unwrap()]);
        XfsDisk {
            image,
            device,
            mount,
        }
    }

    /// Power cut: from now on nothing reaches the disk; what is not on
    /// stable storage yet is lost.
    fn power_cut(&self) {
        run(
            "xfs_io",
            &["-x", "-c", "shutdown", self.mount.to_str().unwrap()],
        );
    }

    /// Power back on: unmount and mount again (XFS replays its log). The
    /// killed process's io_uring instances are torn down by the kernel
    /// after the process is gone (in a worker), holding its files open a
    /// little longer: `umount` says "target is busy" until then.
    fn remount(&self) {
        let mount = self.mount.to_str().unwrap();
        for _ in 0..100 {
            let busy = Command::new("umount")
                .arg(mount)
                .output()
                .is_ok_and(|output| {
                    !output.status.success()
                        && String::from_utf8_lossy(&output.stderr).contains("busy")
                });
            if !busy {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if run("findmnt", &["-n", "-o", "TARGET", "--target", mount]) == mount {
            run("umount", &[mount]);
        }
        run("mount", &[&self.device, self.mount.to_str().unwrap()]);
    }

    fn data_dir(&self) -> PathBuf {
        self.mount.join("node")
    }
}

impl Drop for XfsDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).output();
        let _ = Command::new("losetup").args(["-d", &self.device]).output();
        let _ = std::fs::remove_file(&self.image);
        let _ = std::fs::remove_dir(&self.mount);
    }
}

/// Writes `count` keys (16 at a time), returns the keys acknowledged.
async fn write_keys(node: &TestNode, count: usize) -> Vec<String> {
    let client = Client::connect(
        ClientConfig::new(node.addr.to_string()).request_timeout(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    let mut acknowledged = Vec::new();
    let indexes: Vec<usize> = (0..count).collect();
    for chunk in indexes.chunks(16) {
        let writes = chunk.iter().map(|&i| {
            let client = client.clone();
            async move { (i, client.set(format!("key{i}"), format!("value{i}")).await) }
        });
        for (i, result) in futures_join(writes).await {
            result.unwrap();
            acknowledged.push(format!("key{i}"));
        }
    }
    acknowledged
}

async fn futures_join<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

/// Cuts power under `config`, restarts, returns how many acknowledged keys
/// are missing.
async fn lost_after_power_cut(disk: &XfsDisk, config: &str) -> (usize, usize) {
    lost_after_power_cut_with(disk, config, &[]).await
}

/// [`lost_after_power_cut`] with extra node arguments (cluster mode).
async fn lost_after_power_cut_with(
    disk: &XfsDisk,
    config: &str,
    args: &[String],
) -> (usize, usize) {
    let dir: &Path = &disk.data_dir();
    let node = TestNode::start_with_args(2, config, dir, &[], args);
    let acknowledged = write_keys(&node, 2000).await;
    disk.power_cut();
    let dir = node.crash();
    disk.remount();
    if !args.is_empty() {
        assert!(
            dir.join("data/core-0/raft-log").is_dir(),
            "the node did not keep a shared Raft log: not in cluster mode?"
        );
    }
    let node = TestNode::start_with_args(2, config, &dir, &[], args);
    let client = Client::connect(ClientConfig::new(node.addr.to_string()))
        .await
        .unwrap();
    let mut missing = 0;
    for key in &acknowledged {
        if client.get(key).await.unwrap().is_none() {
            missing += 1;
        }
    }
    drop(node);
    (acknowledged.len(), missing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_power_cut() {
    let disk = XfsDisk::new("sync");
    let (acknowledged, missing) = lost_after_power_cut(&disk, "durability = \"sync\"\n").await;
    assert_eq!(acknowledged, 2000);
    assert_eq!(
        missing, 0,
        "{missing} of {acknowledged} acknowledged writes lost in a power cut"
    );
}

/// Cluster mode: a one-voter cluster's writes are acknowledged once
/// committed, i.e. once the core's shared Raft log (`core-N/raft-log`) holds
/// them durably; a power cut loses none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_replicated_writes_survive_a_power_cut() {
    let disk = XfsDisk::new("raft");
    let raft_port = common::free_port_block(1);
    let args = [
        "--node-id".to_string(),
        "1".to_string(),
        "--peers".to_string(),
        format!("1=127.0.0.1:{raft_port}"),
    ];
    let (acknowledged, missing) =
        lost_after_power_cut_with(&disk, "durability = \"sync\"\n", &args).await;
    assert_eq!(acknowledged, 2000);
    assert_eq!(
        missing, 0,
        "{missing} of {acknowledged} acknowledged replicated writes lost in a power cut"
    );
}

/// Negative control: acknowledging before the WAL is on disk loses
/// acknowledged writes, and this test sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_power_cut_test_catches_early_acknowledgements() {
    let disk = XfsDisk::new("interval");
    let config = "durability = \"interval\"\nflush_interval_ms = 10000\n";
    let (acknowledged, missing) = lost_after_power_cut(&disk, config).await;
    assert_eq!(acknowledged, 2000);
    eprintln!("negative control: {missing} of {acknowledged} early-acknowledged writes lost in the power cut");
    assert!(
        missing > 0,
        "acknowledging before the disk lost nothing: the test cannot fail"
    );
}
