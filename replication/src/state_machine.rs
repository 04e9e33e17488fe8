//! A group's state machine: the committed commands applied to the shard's
//! data, through the [`Applier`] the node implements over its store.
//!
//! The state machine is *transient*: applied commands change memory only.
//! Durability comes from the Raft log (in the core's WAL) plus the newest
//! snapshot on disk ([`crate::snapshot_store`]). After a restart openraft
//! installs that snapshot (if any) and re-applies the committed log after
//! it, which rebuilds exactly the state every replica agreed on.
//!
//! Snapshots are built from the applier's dump (a copy of the shard's keys
//! taken in one step on the core: it pauses the core for the time the copy
//! takes, about 100 ms per million small keys), written durably before
//! openraft is told of them, and then let the log store purge the entries
//! they cover (the snapshot policy in [`crate::group::raft_config`]). They
//! also serve a follower too far behind for the log (`install_snapshot`).
//!
//! Invariant: commands are applied in log order, once each per process
//! lifetime, and the answer of each is sent to its proposer (if it is on
//! this node) right after it is applied. A snapshot is on disk before
//! `build_snapshot` or `install_snapshot` returns.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use futures::StreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::EntryPayload;

use crate::snapshot_store::{self, StoredSnapshot};
use crate::{Command, LogId, Response, TypeConfig};

/// What applying commands does to a shard's data. Implemented by the node
/// over its store; deterministic: the same commands in the same order give
/// the same data and answers on every replica.
pub trait Applier: 'static {
    /// Applies one committed command.
    fn apply(&mut self, command: &Command) -> Response;
    /// Every key of the group, encoded, for a snapshot.
    fn dump(&self) -> Vec<u8>;
    /// Replaces every key of the group with those of a dump.
    fn restore(&mut self, dump: &[u8]) -> Result<(), String>;
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

/// Writes a snapshot taken when it was asked for.
pub struct SnapshotBuilder {
    snapshot: Option<SnapshotOf<TypeConfig, Vec<u8>>>,
    snapshot_dir: PathBuf,
    current: Rc<RefCell<Option<StoredSnapshot>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        let snapshot = self
            .snapshot
            .take()
            .ok_or_else(|| io::Error::other("a snapshot builder builds once"))?;
        let stored =
            snapshot_store::write(&self.snapshot_dir, &snapshot.meta, &snapshot.snapshot).await?;
        keep_newest(&self.current, stored);
        Ok(snapshot)
    }
}

impl<A: Applier> RaftStateMachine<TypeConfig> for StateMachine<A> {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembershipOf<TypeConfig>), io::Error> {
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
                    Response::Empty
                }
            };
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
        };
        let data = self.applier.borrow().dump();
        SnapshotBuilder {
            snapshot: Some(SnapshotOf::<TypeConfig, Vec<u8>> {
                meta,
                snapshot: data,
            }),
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
        let already_stored = self
            .current
            .borrow()
            .as_ref()
            .is_some_and(|stored| stored.meta.last_log_id == meta.last_log_id);
        if !already_stored {
            let stored = snapshot_store::write(&self.snapshot_dir, meta, &snapshot).await?;
            keep_newest(&self.current, stored);
        }
        self.applier
            .borrow_mut()
            .restore(&snapshot)
            .map_err(io::Error::other)?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        let Some(path) = self.current.borrow().as_ref().map(|s| s.path.clone()) else {
            return Ok(None);
        };
        let (meta, snapshot) = snapshot_store::read(&path).await?;
        Ok(Some(SnapshotOf::<TypeConfig, Vec<u8>> { meta, snapshot }))
    }
}
