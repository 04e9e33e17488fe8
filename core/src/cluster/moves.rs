//! Moving a range from one core of a node to another at runtime (cluster
//! mode), without restarting the node and without the range's other
//! replicas noticing more than a short pause of this one.
//!
//! A range's replica on a node is its Raft state (vote, log, snapshots)
//! and the store rebuilt from it. A move hands that state over whole, as a
//! restart would find it: the source core stops the replica, exports its
//! log from the core's shared log ([`CoreLog::export_range`]), the target
//! core imports it into its own shared log and hard-links the snapshot
//! files, then starts the group there, which rebuilds the store from the
//! snapshot and the log like any restarted replica. The replica keeps its
//! identity (node id) and its vote, so Raft sees a member that was away
//! for a moment; nothing is re-replicated over the network.
//!
//! # Steps (the admin plane drives them, `POST /v1/ranges/{range}/move`)
//! 1. [`export`] on the source core: claim the move (at most one per range),
//!    park the range's new requests (`CoreContext::begin_move`), hand its
//!    leadership to another voter, wait (bounded) for its requests and
//!    peer calls in flight, shut the group down, export its log.
//! 2. [`import`] on the target core: import the log (durable), link the
//!    snapshots, commit the move (only if the source has not given up),
//!    record the new placement durably (the node's `PLACEMENT` file), switch
//!    the route (`SlotMap::set_core`), start the group, release the
//!    requests parked here meanwhile. A placement that cannot be recorded
//!    abandons the move once the old one is recorded again, or stops the
//!    node if even that fails (a disk that fails a write is not retried).
//! 3. [`settle`] on the source core: if the route switched, drop the old
//!    log and snapshots and send the parked requests on to the new core;
//!    otherwise start the group here again (the move is abandoned, its
//!    log was never touched). If step 3 is never asked for (the admin
//!    call failed), the source settles by itself after [`MOVE_TIMEOUT`].
//!
//! # Invariants
//! - At most one copy of a replica runs: the source's group is shut down
//!   before its log is exported, and it starts again only if the move is
//!   abandoned, which the target's commit excludes: the per-range
//!   [`MoveClaims`](crate::slots::MoveClaims) word goes from *claimed* to *committed* (target) or to
//!   *free* (source giving up), never both.
//! - A crash at any point leaves one core owning the range: the placement
//!   file is durable before the route switches, the source drops its copy
//!   only after the switch, and at start a core drops the log of any range
//!   the placement gives another core (`cluster::start_replicas`).
//! - Requests are never lost or run twice: parked requests run after the
//!   move, wherever the range is; a request in flight when the group stops
//!   is waited for (up to [`MOVE_DRAIN_TIMEOUT`]), and one still running
//!   then fails like any request whose replica stopped.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tinkerdb_replication::group;

use crate::coord::context::CoreContext;
use crate::shard::Shard;
use crate::slots::{CoreId, GiveUp, RangeId};

/// Longest a source core waits for step 3 before settling by itself.
pub const MOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest the source waits for the range's requests in flight before it
/// stops the group (a write waiting for a quorum that cannot form would
/// otherwise hold the move forever).
pub const MOVE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Test hook: `TINKERDB_FAILPOINT_MOVE_EXIT_AT=imported` (the target
/// holds the range's log, the placement is unchanged) or `=placed` (the
/// placement names the target, the source still holds its copy) ends the
/// process at that point of step 2, as a crash would (no shutdown: the
/// cores stop where they are; what is durable is what was synced).
/// Crash tests only.
pub const FAILPOINT_MOVE_EXIT_AT: &str = "TINKERDB_FAILPOINT_MOVE_EXIT_AT";

fn exit_point(point: &str) {
    if std::env::var(FAILPOINT_MOVE_EXIT_AT).is_ok_and(|at| at == point) {
        tracing::error!(point, "failpoint: exiting in the middle of a range move");
        std::process::exit(86);
    }
}

/// Longest the source waits for openraft to let go of a stopped group's
/// log store (its tasks end after `shutdown` returns) before it gives the
/// move up.
pub const MOVE_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a waiting step looks again.
const MOVE_POLL: Duration = Duration::from_millis(5);

/// What the source hands the target.
#[derive(Debug)]
pub struct Exported {
    /// The range's log, as [`CoreLog::export_range`] wrote it.
    pub log: Vec<u8>,
    /// The range's snapshot directory on the source core.
    pub snapshots: PathBuf,
}

/// Why a move step did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    /// A standalone node's ranges do not move.
    #[error("this node is standalone: its ranges stay on their cores")]
    Standalone,
    /// The request names a range or core that does not exist, a move to
    /// where the range is, or a range already moving.
    #[error("{0}")]
    Refused(String),
    /// The move failed; the message says where the range is.
    #[error("{0}")]
    Failed(String),
}

/// Step 1, on the source core: stops the range's replica here and exports
/// its log for core `target`.
pub async fn export(
    context: &Rc<CoreContext>,
    range: RangeId,
    target: CoreId,
) -> Result<Exported, MoveError> {
    let core = context.core;
    let Some(replication) = context.replication.get() else {
        return Err(MoveError::Standalone);
    };
    let claims = &replication.move_claims;
    if range >= context.slot_map.ranges() {
        return Err(MoveError::Refused(format!(
            "range {range} does not exist (this node has ranges 0..{})",
            context.slot_map.ranges()
        )));
    }
    if target >= context.slot_map.cores() {
        return Err(MoveError::Refused(format!(
            "core {target} does not exist (this node has cores 0..{})",
            context.slot_map.cores()
        )));
    }
    if !context.hosts(range) || target == core {
        return Err(MoveError::Refused(format!(
            "range {range} is not on core {core}, or moves to it"
        )));
    }
    let Some(replica) = context.replica(range) else {
        return Err(MoveError::Failed(format!(
            "range {range}'s replica is not running on core {core}"
        )));
    };
    if !claims.claim(range, target) {
        return Err(MoveError::Refused(format!(
            "a move of range {range} is under way already"
        )));
    }
    let Some(move_id) = context.begin_move(range, true) else {
        claims.give_up(range);
        return Err(MoveError::Refused(format!(
            "a move of range {range} is under way already"
        )));
    };
    // From here on, new requests for the range park until `settle`.
    spawn_watchdog(context, range, move_id);
    let started = Instant::now();
    if let Some(leader) =
        group::hand_off_leadership(&replica.raft, replica.group, group::ELECTION_TIMEOUT_MAX).await
    {
        tracing::info!(
            core,
            range,
            to = leader,
            "leadership handed off before a move"
        );
    }
    let drained_by = Instant::now() + MOVE_DRAIN_TIMEOUT;
    while replica.in_flight.get() > 0 && Instant::now() < drained_by {
        glommio::timer::sleep(MOVE_POLL).await;
    }
    // No peer call reaches the group after this; those under way (a
    // write forwarded here, a read index) finish first.
    replication.groups.remove(replica.group);
    let calls_by = Instant::now() + MOVE_DRAIN_TIMEOUT;
    while replication.groups.calls_in_flight(replica.group) > 0 && Instant::now() < calls_by {
        glommio::timer::sleep(MOVE_POLL).await;
    }
    if let Err(error) = replica.raft.shutdown().await {
        tracing::warn!(core, range, %error, "Raft group did not shut down cleanly for a move");
    }
    context.remove_replica(range);
    drop(replica);
    // openraft drops the log store as its tasks end: wait for that.
    let mut exported = replication.log.export_range(range as u64).await;
    let released_by = Instant::now() + MOVE_RELEASE_TIMEOUT;
    while exported
        .as_ref()
        .is_err_and(|error| error.to_string().contains("still open"))
        && Instant::now() < released_by
    {
        glommio::timer::sleep(MOVE_POLL).await;
        exported = replication.log.export_range(range as u64).await;
    }
    match exported {
        Ok(log) => {
            tracing::info!(
                core,
                range,
                target,
                log_bytes = log.len(),
                stopped_ms = started.elapsed().as_millis() as u64,
                "range stopped and exported for a move"
            );
            Ok(Exported {
                log,
                snapshots: super::snapshot_dir(context, range),
            })
        }
        Err(error) => {
            // Nothing left this core: the move is abandoned.
            settle(context, range).await;
            Err(MoveError::Failed(format!(
                "cannot export range {range}'s log (it stays on core {core}): {error}"
            )))
        }
    }
}

/// Step 2, on the target core: takes the range in and starts it here.
/// Answers once the route points here (the move is done whatever the
/// source does next) or the move was abandoned here.
pub async fn import(
    context: &Rc<CoreContext>,
    range: RangeId,
    exported: Exported,
) -> Result<(), MoveError> {
    let core = context.core;
    let Some(replication) = context.replication.get() else {
        return Err(MoveError::Standalone);
    };
    let claims = &replication.move_claims;
    if range >= context.slot_map.ranges() || context.hosts(range) {
        return Err(MoveError::Refused(format!(
            "range {range} cannot move to core {core}: it is there already, or does not exist"
        )));
    }
    // A leftover of an earlier move that stopped half-way.
    if replication.log.holds_range(range as u64) {
        forget_range(context, range)
            .await
            .map_err(MoveError::Failed)?;
    }
    let snapshots = super::snapshot_dir(context, range);
    let taken_in = async {
        link_snapshots(&exported.snapshots, &snapshots)
            .map_err(|error| format!("cannot link the snapshots: {error}"))?;
        replication
            .log
            .import_range(range as u64, &exported.log)
            .await
            .map_err(|error| format!("cannot import the log: {error}"))
    };
    if let Err(reason) = taken_in.await {
        let _ = forget_range(context, range).await;
        return Err(MoveError::Failed(format!(
            "range {range} stays where it was: {reason}"
        )));
    }
    exit_point("imported");
    if !claims.commit(range, core) {
        let _ = forget_range(context, range).await;
        return Err(MoveError::Failed(format!(
            "range {range} stays where it was: the source core gave the move up (it waited over {MOVE_TIMEOUT:?})"
        )));
    }
    // The placement is durable before the route switches (module doc).
    context.add_shard(range, fresh_shard(context, range));
    context.begin_move(range, false);
    let previous = context.slot_map.core_of(range);
    if let Err(error) = context
        .slot_map
        .save_placement_with(&replication.data_dir, range, core)
    {
        // The file may or may not name this core now (a failed rename or
        // directory sync). Record the old placement again before the
        // source may start the range again; if even that fails, the disk
        // decides which copy a restart uses, and both must still be the
        // same: the node stops here, before the source runs the range
        // again (as after a failed fsync, nothing is retried).
        if let Err(again) = context.slot_map.save_placement(&replication.data_dir) {
            tracing::error!(range, %error, %again, "cannot record the placement of a range move; stopping the node");
            std::process::exit(1);
        }
        context.remove_shard(range);
        context.end_move(range);
        claims.uncommit(range, core);
        let _ = forget_range(context, range).await;
        return Err(MoveError::Failed(format!(
            "range {range} stays where it was: cannot record the placement: {error}"
        )));
    }
    context.slot_map.set_core(range, core);
    exit_point("placed");
    claims.finish(range);
    let outcome = match super::start_range(context, range, None).await {
        Ok(replica) => {
            context.set_replica(replica);
            Ok(())
        }
        // The range is here now, but its replica did not start: its
        // requests get `unavailable` until the node restarts it.
        Err(error) => Err(MoveError::Failed(format!(
            "range {range} moved to core {core} but its group did not start: {error}"
        ))),
    };
    context.end_move(range);
    tracing::info!(
        core,
        range,
        from = previous,
        ok = outcome.is_ok(),
        "range moved in"
    );
    outcome
}

/// Step 3, on the source core: ends the move here. Answers whether the
/// range moved (its copy here is gone) or stays (started again here).
pub async fn settle(context: &Rc<CoreContext>, range: RangeId) -> bool {
    let core = context.core;
    let Some(replication) = context.replication.get() else {
        return false;
    };
    let claims = &replication.move_claims;
    if !context.start_settling(range) {
        // Not moving from here, or settled by another call right now.
        return context.slot_map.core_of(range) != core;
    }
    let moved = loop {
        match claims.give_up(range) {
            GiveUp::Given => break false,
            GiveUp::Free => break context.slot_map.core_of(range) != core,
            // The target is recording the placement: its route switch
            // (or its retreat) follows at once.
            GiveUp::Committed => glommio::timer::sleep(MOVE_POLL).await,
        }
    };
    if moved {
        context.remove_shard(range);
        if let Err(error) = forget_range(context, range).await {
            // The copy stays on disk; the next start drops it.
            tracing::warn!(core, range, %error, "cannot drop the log of a range that moved away");
        }
        context.end_move(range);
        tracing::info!(core, range, "range moved away");
        return true;
    }
    // Abandoned: the range starts again here, from its log, into a fresh
    // store (the old one already holds what the log will apply again).
    context.remove_shard(range);
    context.add_shard(range, fresh_shard(context, range));
    match super::start_range(context, range, None).await {
        Ok(replica) => context.set_replica(replica),
        Err(error) => {
            tracing::error!(core, range, %error, "an abandoned move could not restart the range")
        }
    }
    context.end_move(range);
    tracing::info!(core, range, "range move abandoned; it stays");
    false
}

/// Settles the move of `range` by itself if nobody asks within
/// [`MOVE_TIMEOUT`].
fn spawn_watchdog(context: &Rc<CoreContext>, range: RangeId, move_id: u64) {
    let context = context.clone();
    glommio::spawn_local(async move {
        glommio::timer::sleep(MOVE_TIMEOUT).await;
        // Only this move, and only while it still leaves this core.
        if context.is_leaving(range, move_id) {
            tracing::warn!(
                core = context.core,
                range,
                "a move was not settled in time; settling it"
            );
            settle(&context, range).await;
        }
    })
    .detach();
}

/// A new, empty shard for `range` on `context`'s core (its group fills it
/// from the snapshot and the log), with its share of every tenant's quota
/// set as on every other replica (a replica without them would accept
/// writes the others refuse).
fn fresh_shard(context: &CoreContext, range: RangeId) -> Shard {
    let mut shard = Shard::new(
        range,
        context.slot_map.clone(),
        tinkerdb_storage::Store::default(),
        crate::shard::Journal::new(None, context.tenants.clone()),
    );
    crate::coord::quotas::set_range_quotas(context, range, &mut shard, &context.tenants.get());
    shard
}

/// Drops everything of `range` this core's log and snapshot directory hold.
pub async fn forget_range(context: &CoreContext, range: RangeId) -> Result<(), String> {
    let replication = context
        .replication
        .get()
        .expect("cluster mode: the core's replication is set");
    replication
        .log
        .drop_range(range as u64)
        .await
        .map_err(|error| format!("cannot drop range {range}'s log: {error}"))?;
    let snapshots = super::snapshot_dir(context, range);
    match std::fs::remove_dir_all(&snapshots) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(format!("cannot remove {}: {error}", snapshots.display())),
    }
}

/// Hard-links every finished snapshot file of `from` into `to` (made
/// afresh), then syncs `to`: both directories name the same immutable
/// files, so the source keeps a whole copy until it drops its own.
fn link_snapshots(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(to) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    std::fs::create_dir_all(to)?;
    let entries = match std::fs::read_dir(from) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".tmp") {
            continue; // an unfinished snapshot: never read
        }
        let target = to.join(&name);
        match std::fs::hard_link(entry.path(), &target) {
            Ok(()) => {}
            // An older snapshot the store deleted meanwhile (only the
            // newest pair matters; a pair missing a file is ignored).
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => {
                // Another file system: a copy (synced) does as well.
                std::fs::copy(entry.path(), &target)?;
                std::fs::File::open(&target)?.sync_all()?;
            }
        }
    }
    std::fs::File::open(to)?.sync_all()?;
    // The directory's own name, in the core's directory.
    match to.parent() {
        Some(parent) => std::fs::File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}
