//! Taking snapshots on a core: the driver task, the on-demand request, and
//! installing the file.
//!
//! One driver task per core runs in a low-priority task queue (glommio
//! shares), so serialising a snapshot only uses time the core's requests
//! leave over. It starts a snapshot when asked ([`snapshot`], from a client's
//! Snapshot request or RESP SAVE) or when the WAL has grown by
//! `snapshot_after_wal_bytes` since the last one. The cut itself and the
//! copy-on-write are in `tinkerdb_storage::snapshot` and `shard::Journal`.

use std::rc::Rc;
use std::time::Duration;

use futures_channel::oneshot;
use futures_lite::AsyncWriteExt;
use glommio::io::{DmaFile, DmaStreamWriterBuilder};
use tinkerdb_storage::snapshot::snapshot_file_name;
use tinkerdb_storage::wal::{sync_dir, PurgeHandle};

use crate::coord::context::{now_ms, CoreContext};
use crate::shard::ShardReply;

/// How often the driver checks whether the WAL has grown enough.
pub const SNAPSHOT_TRIGGER_CHECK_INTERVAL: Duration = Duration::from_millis(100);

type Waiter = oneshot::Sender<Result<(u64, u64), String>>;

/// Requests for a snapshot of this core.
#[derive(Default)]
pub struct SnapshotState {
    requested: bool,
    waiters: Vec<Waiter>,
    /// Cut index of the last snapshot installed (0: none yet).
    pub last_cut: u64,
    /// The last snapshot installed since start.
    pub last: Option<InstalledSnapshot>,
}

/// A snapshot this core installed.
#[derive(Debug, Clone, Copy)]
pub struct InstalledSnapshot {
    /// When, Unix milliseconds.
    pub unix_ms: u64,
    /// Entries written.
    pub entries: u64,
    /// File size.
    pub bytes: u64,
}

/// Asks this core for a snapshot and waits until one that starts after the
/// request is installed. Answers entries and bytes written.
pub async fn snapshot(context: &CoreContext) -> ShardReply {
    if context.wal.is_none() {
        return ShardReply::Snapshotted(Err("durability is none: snapshots need a WAL".into()));
    }
    let (done, wait) = oneshot::channel();
    {
        let mut state = context.snapshots.borrow_mut();
        state.requested = true;
        state.waiters.push(done);
    }
    ShardReply::Snapshotted(
        wait.await
            .unwrap_or_else(|_| Err("the snapshot driver stopped".into())),
    )
}

/// Runs snapshots for this core until the process ends.
pub async fn drive_snapshots(context: Rc<CoreContext>, after_wal_bytes: u64) {
    let Some(wal) = context.wal.clone() else {
        return;
    };
    loop {
        glommio::timer::sleep(SNAPSHOT_TRIGGER_CHECK_INTERVAL).await;
        let waiters = {
            let mut state = context.snapshots.borrow_mut();
            if !state.requested && wal.bytes_since_snapshot() < after_wal_bytes {
                continue;
            }
            state.requested = false;
            std::mem::take(&mut state.waiters)
        };
        let result = take_snapshot(&context).await;
        match &result {
            Ok((entries, bytes)) => {
                tracing::info!(core = context.core, entries, bytes, "snapshot installed")
            }
            Err(error) => tracing::error!(core = context.core, %error, "snapshot failed"),
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

async fn take_snapshot(context: &CoreContext) -> Result<(u64, u64), String> {
    let cut = context
        .standalone_shard()
        .borrow_mut()
        .begin_snapshot(now_ms())?;
    let result = write_snapshot(context, cut).await;
    if result.is_err() {
        context.standalone_shard().borrow_mut().abort_snapshot();
        let _ = std::fs::remove_file(temp_path(context, cut));
    }
    result
}

fn temp_path(context: &CoreContext, cut: u64) -> std::path::PathBuf {
    context
        .core_dir
        .join(format!("{}.tmp", snapshot_file_name(cut)))
}

async fn write_snapshot(context: &CoreContext, cut: u64) -> Result<(u64, u64), String> {
    let io = |what: &'static str| move |error: std::io::Error| format!("snapshot {what}: {error}");
    let temp = temp_path(context, cut);
    let file = DmaFile::create(&temp)
        .await
        .map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
    let mut writer = DmaStreamWriterBuilder::new(file)
        .with_buffer_size(1 << 20)
        .build();
    loop {
        let (bytes, done) = context.standalone_shard().borrow_mut().snapshot_step();
        if !bytes.is_empty() {
            writer.write_all(&bytes).await.map_err(io("write"))?;
        }
        if done {
            break;
        }
        glommio::yield_if_needed().await;
    }
    let (tail, entries) = context.standalone_shard().borrow_mut().finish_snapshot();
    writer.write_all(&tail).await.map_err(io("write"))?;
    let bytes = writer.current_pos();
    writer
        .sync()
        .await
        .map_err(|e| format!("snapshot fdatasync: {e}"))?;
    writer.close().await.map_err(io("close"))?;
    let path = context.core_dir.join(snapshot_file_name(cut));
    std::fs::rename(&temp, &path).map_err(io("rename"))?;
    sync_dir(&context.core_dir).map_err(io("directory fsync"))?;
    // The new snapshot covers everything up to the cut: older snapshots and
    // WAL segments wholly before it are no longer needed.
    for entry in std::fs::read_dir(&context.core_dir)
        .map_err(io("listing"))?
        .flatten()
    {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("snapshot-")
            && name.ends_with(".snap")
            && name < path.file_name().and_then(|n| n.to_str()).unwrap_or("")
        {
            std::fs::remove_file(entry.path()).map_err(io("removing an old snapshot"))?;
        }
    }
    PurgeHandle::new(context.core_dir.join("wal"))
        .purge_up_to(cut)
        .map_err(io("purging WAL segments"))?;
    if let Some(wal) = &context.wal {
        wal.reset_snapshot_counter();
    }
    let mut state = context.snapshots.borrow_mut();
    state.last_cut = cut;
    state.last = Some(InstalledSnapshot {
        unix_ms: now_ms(),
        entries,
        bytes,
    });
    Ok((entries, bytes))
}
