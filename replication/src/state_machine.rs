//! A group's state machine: the committed commands applied to the shard's
//! data, through the [`Applier`] the node implements over its store.
//!
//! The state machine is *transient*: applied commands change memory only.
//! Durability comes from the Raft log (in the core's WAL) and the committed
//! log id the log store saves: after a restart openraft re-applies the log
//! from the start (or from the installed snapshot) up to the committed
//! index, which rebuilds exactly the state every replica agreed on.
//! Snapshots are built in memory from the applier's dump; they serve a
//! follower that fell behind (`install_snapshot`), and since the log is not
//! purged yet (the snapshot policy is `Never` in [`crate::group`]) a restart
//! never depends on one.
//!
//! Invariant: commands are applied in log order, once each per process
//! lifetime, and the answer of each is sent to its proposer (if it is on
//! this node) right after it is applied.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use futures::StreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::EntryPayload;

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
    current: Option<SnapshotOf<TypeConfig, Vec<u8>>>,
}

impl<A: Applier> StateMachine<A> {
    /// A state machine applying to `applier` (shared with the node's reads).
    pub fn new(applier: Rc<RefCell<A>>) -> StateMachine<A> {
        StateMachine {
            applier,
            last_applied: None,
            membership: StoredMembershipOf::<TypeConfig>::default(),
            current: None,
        }
    }
}

/// Builds a snapshot from a dump taken when it was asked for.
pub struct SnapshotBuilder {
    snapshot: Option<SnapshotOf<TypeConfig, Vec<u8>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        self.snapshot
            .take()
            .ok_or_else(|| io::Error::other("a snapshot builder builds once"))
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
        let snapshot = SnapshotOf::<TypeConfig, Vec<u8>> {
            meta,
            snapshot: data,
        };
        self.current = Some(snapshot.clone());
        SnapshotBuilder {
            snapshot: Some(snapshot),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        self.applier
            .borrow_mut()
            .restore(&snapshot)
            .map_err(io::Error::other)?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.current = Some(SnapshotOf::<TypeConfig, Vec<u8>> {
            meta: meta.clone(),
            snapshot,
        });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        Ok(self.current.clone())
    }
}
