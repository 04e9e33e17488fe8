//! A group's state machine: the committed commands applied to the shard's
//! data, through the [`Applier`] the node implements over its store.
//!
//! The state machine is *transient*: applied commands change memory only.
//! Durability comes from the Raft log (in the core's WAL) plus the newest
//! snapshot on disk ([`crate::snapshot_store`]). After a restart openraft
//! installs that snapshot (if any) and re-applies the committed log after
//! it, which rebuilds exactly the state every replica agreed on.
//!
//! Snapshots are incremental and never pause the core: when openraft asks
//! for one (the snapshot policy in [`crate::group::raft_config`]), the
//! applier fixes a cut of the data as it is at the last applied entry, and
//! the builder streams it to disk a few slots at a time, yielding between
//! steps, while later entries keep being applied (copy-on-write of a slot
//! on its first change after the cut). The snapshot is durable before
//! openraft is told of it; openraft then purges the log entries it covers.
//! Snapshots also serve a follower too far behind for the log
//! (`install_snapshot`).
//!
//! Invariant: commands are applied in log order, once each per process
//! lifetime, and the answer of each is sent to its proposer (if it is on
//! this node) right after it is applied. A snapshot is on disk before
//! `build_snapshot` or `install_snapshot` returns.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use futures::StreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::EntryPayload;

use crate::snapshot_store::{self, SnapshotWriter, StoredSnapshot};
use crate::{Command, LogId, Response, TypeConfig};

/// What applying commands does to a shard's data. Implemented by the node
/// over its store; deterministic: the same commands in the same order give
/// the same data and answers on every replica.
///
/// Snapshots are incremental: [`Applier::begin_snapshot`] fixes a cut (the
/// data as it is now) and [`Applier::snapshot_step`] serialises it a bounded
/// piece at a time while later commands keep being applied; the applier
/// must keep each piece as it was at the cut (TinkerDB's store copies a
/// slot on its first write after the cut, `tinkerdb_storage::snapshot`).
pub trait Applier: 'static {
    /// Applies one committed command.
    fn apply(&mut self, command: &Command) -> Response;
    /// Starts a snapshot of the data as it is now, the state after log
    /// index `last_index`. Refused while one is in progress.
    fn begin_snapshot(&mut self, last_index: u64) -> Result<(), String>;
    /// The next bytes of the snapshot in progress, and whether they are
    /// the last (then [`Applier::finish_snapshot`] ends it). Bounded work:
    /// the core yields between steps.
    fn snapshot_step(&mut self) -> (Vec<u8>, bool);
    /// Ends the snapshot in progress; answers its closing bytes.
    fn finish_snapshot(&mut self) -> Vec<u8>;
    /// Drops the snapshot in progress (its file could not be written).
    fn abort_snapshot(&mut self);
    /// Replaces all data with that of a snapshot's data file. A snapshot
    /// in progress must still describe its cut afterwards.
    fn restore(&mut self, data_file: &Path) -> Result<(), String>;
    /// The group's membership that this replica applies is the one at log
    /// index `log_index` (applied from the log or installed with a
    /// snapshot). Replays after a restart report older ones again.
    fn membership_applied(&mut self, log_index: u64) {
        let _ = log_index;
    }
}

/// The snapshot half of an [`Applier`] whose data is small enough to copy
/// whole at the cut (test appliers, tools): one step answers the copy.
#[derive(Debug, Default)]
pub struct WholeCopy {
    /// `Some` while a snapshot is in progress: the copy not yet streamed.
    in_progress: Option<Vec<u8>>,
}

impl WholeCopy {
    /// Starts a snapshot with the data copied at the cut.
    pub fn begin(&mut self, copy: Vec<u8>) -> Result<(), String> {
        if self.in_progress.is_some() {
            return Err("a snapshot is already in progress".into());
        }
        self.in_progress = Some(copy);
        Ok(())
    }

    /// The whole copy, as the one and last step.
    pub fn step(&mut self) -> (Vec<u8>, bool) {
        let copy = self.in_progress.as_mut().map(std::mem::take);
        (copy.unwrap_or_default(), true)
    }

    /// Ends the snapshot (no closing bytes).
    pub fn finish(&mut self) -> Vec<u8> {
        self.in_progress = None;
        Vec::new()
    }
}

/// One group's state machine.
pub struct StateMachine<A: Applier> {
    applier: Rc<RefCell<A>>,
    last_applied: Option<LogId>,
    membership: StoredMembershipOf<TypeConfig>,
    snapshot_dir: PathBuf,
    /// The newest snapshot on disk, shared with the builders.
    current: Rc<RefCell<Option<StoredSnapshot>>>,
}

impl<A: Applier> StateMachine<A> {
    /// A state machine applying to `applier` (shared with the node's
    /// reads), keeping its snapshots in `snapshot_dir`; finds and checks
    /// the newest snapshot there (which openraft installs at start).
    pub fn open(applier: Rc<RefCell<A>>, snapshot_dir: &Path) -> io::Result<StateMachine<A>> {
        std::fs::create_dir_all(snapshot_dir)?;
        let current = snapshot_store::newest(snapshot_dir)?;
        Ok(StateMachine {
            applier,
            last_applied: None,
            membership: StoredMembershipOf::<TypeConfig>::default(),
            snapshot_dir: snapshot_dir.to_owned(),
            current: Rc::new(RefCell::new(current)),
        })
    }
}

/// Makes `stored` the current snapshot unless a newer one already is.
fn keep_newest(current: &RefCell<Option<StoredSnapshot>>, stored: StoredSnapshot) {
    let mut current = current.borrow_mut();
    let newer = current
        .as_ref()
        .is_none_or(|old| old.meta.last_log_id <= stored.meta.last_log_id);
    if newer {
        *current = Some(stored);
    }
}

/// Writes the snapshot whose cut was fixed when openraft asked for it.
pub struct SnapshotBuilder<A: Applier> {
    applier: Rc<RefCell<A>>,
    /// The cut's metadata; `None` once built.
    meta: Option<SnapshotMetaOf<TypeConfig>>,
    /// Why the cut could not be taken, reported by `build_snapshot`.
    refused: Option<String>,
    snapshot_dir: PathBuf,
    current: Rc<RefCell<Option<StoredSnapshot>>>,
}

impl<A: Applier> SnapshotBuilder<A> {
    async fn write_steps(&self, writer: &mut SnapshotWriter) -> io::Result<()> {
        loop {
            let (bytes, done) = self.applier.borrow_mut().snapshot_step();
            writer.write(&bytes).await?;
            if done {
                break;
            }
            // Let requests and Raft messages run between steps.
            glommio::yield_if_needed().await;
        }
        let tail = self.applier.borrow_mut().finish_snapshot();
        writer.write(&tail).await
    }
}

impl<A: Applier> RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder<A> {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        if let Some(reason) = self.refused.take() {
            return Err(io::Error::other(reason));
        }
        let meta = self
            .meta
            .take()
            .ok_or_else(|| io::Error::other("a snapshot builder builds once"))?;
        let started = Instant::now();
        let mut writer = match SnapshotWriter::create(&self.snapshot_dir, &meta).await {
            Ok(writer) => writer,
            Err(error) => {
                self.applier.borrow_mut().abort_snapshot();
                return Err(error);
            }
        };
        if let Err(error) = self.write_steps(&mut writer).await {
            self.applier.borrow_mut().abort_snapshot();
            writer.abandon().await;
            return Err(error);
        }
        let stored = writer.commit(&meta).await?;
        tracing::info!(
            last_log_index = ?meta.last_log_id.map(|log_id| log_id.index),
            bytes = stored.data_bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        keep_newest(&self.current, stored);
        // openraft keeps only the metadata of a snapshot it asked to build
        // (`BuildSnapshotDone(snap.meta)` in its state machine worker); a
        // snapshot's data reaches a follower through `get_current_snapshot`,
        // which reads the file. So the data is not read back here: that
        // would be a second copy of the whole shard in memory for nothing.
        Ok(SnapshotOf::<TypeConfig, Vec<u8>> {
            meta,
            snapshot: Vec::new(),
        })
    }
}

impl<A: Applier> RaftStateMachine<TypeConfig> for StateMachine<A> {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder<A>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembershipOf<TypeConfig>), io::Error> {
        if let Some(log_id) = self.membership.log_id() {
            self.applier.borrow_mut().membership_applied(log_id.index);
        }
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin,
    {
        while let Some(next) = entries.next().await {
            let (entry, responder) = next?;
            self.last_applied = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Blank => Response::Empty,
                EntryPayload::Normal(command) => self.applier.borrow_mut().apply(command),
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembershipOf::<TypeConfig>::new(
                        Some(entry.log_id),
                        membership.clone(),
                    );
                    self.applier
                        .borrow_mut()
                        .membership_applied(entry.log_id.index);
                    Response::Empty
                }
            };
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder<A> {
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
        };
        // The cut is the state right now: everything applied, nothing more.
        let last_index = self.last_applied.map_or(0, |log_id| log_id.index);
        let refused = self.applier.borrow_mut().begin_snapshot(last_index).err();
        SnapshotBuilder {
            applier: self.applier.clone(),
            meta: Some(meta),
            refused,
            snapshot_dir: self.snapshot_dir.clone(),
            current: self.current.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        // At start openraft installs the snapshot it read from us: it is on
        // disk already. Any other (one sent by the leader) is made durable
        // before the log it replaces can be purged.
        let stored = self.current.borrow().clone();
        let stored = match stored {
            Some(stored) if stored.meta.last_log_id == meta.last_log_id => stored,
            _ => {
                let stored =
                    snapshot_store::write_whole(&self.snapshot_dir, meta, &snapshot).await?;
                keep_newest(&self.current, stored.clone());
                stored
            }
        };
        self.applier
            .borrow_mut()
            .restore(&stored.data_path)
            .map_err(io::Error::other)?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        if let Some(log_id) = self.membership.log_id() {
            self.applier.borrow_mut().membership_applied(log_id.index);
        }
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        // A newer snapshot may replace (and delete) the current one while
        // it is read: then read the newer one.
        let mut attempts = 0;
        loop {
            let Some(stored) = self.current.borrow().clone() else {
                return Ok(None);
            };
            match snapshot_store::read_data(&stored).await {
                Ok(data) => {
                    return Ok(Some(SnapshotOf::<TypeConfig, Vec<u8>> {
                        meta: stored.meta,
                        snapshot: data,
                    }))
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound && attempts < 3 => {
                    attempts += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
}
