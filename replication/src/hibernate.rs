//! Hibernating idle groups: a group with no traffic stops its Raft timers,
//! so a core can host many idle ranges for almost nothing.
//!
//! # Why
//!
//! A running group ticks: its leader sends heartbeats to every follower
//! ([`crate::group::HEARTBEAT_INTERVAL`]), its followers run election
//! timers. Measured (`perf raft-groups`), that costs about a third of a
//! percent of a core per group, 64 idle groups a quarter of a core: 256
//! ranges per core would take the whole core doing nothing. TiKV calls the
//! cure *hibernate regions*; this is the same idea on openraft's runtime
//! switch (`raft.runtime_config().tick(false)` parks the group's ticker:
//! no heartbeats, no election timers, no wake-ups).
//!
//! # The rule
//!
//! Each core runs one [`run`] task that looks at its groups every
//! [`CHECK_INTERVAL`]. A group sleeps when, for [`HIBERNATE_AFTER`], its log
//! did not grow and nobody woke it ([`wake`]), and:
//! - as leader: every voter has every entry (nothing to replicate) and every
//!   other voter's node answers health probes;
//! - as follower: it knows its leader and the leader's node answers health
//!   probes ([`crate::health`]).
//!
//! Anything else keeps it awake or wakes it at the next check: a candidate,
//! a learner, an unknown leader, a leader's node that stops answering
//! probes (the followers then time out and elect, as they would without
//! hibernation, [`crate::health::PEER_DOWN_AFTER`] later), a lagging
//! follower, a new entry. A write, a read barrier or a membership change
//! wakes its group at once ([`wake`]), before it asks openraft anything:
//! a leader that slept may need a heartbeat round to confirm its lease.
//!
//! # Safety
//!
//! Timers only drive liveness; Raft's safety never depends on them. A
//! sleeping group still appends, replicates, votes and commits when asked.
//! The price is failover time in an idle group: its followers notice a dead
//! leader through the health probes (about [`crate::health::PEER_DOWN_AFTER`]
//! plus an election timeout) instead of a missed heartbeat.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use openraft_rt::WatchReceiver;

use crate::group::{CoreGroups, GroupRaft};
use crate::health::HealthTable;
use crate::state_machine::Applier;
use crate::NodeId;

/// How long a group must be quiet before it sleeps.
pub const HIBERNATE_AFTER: Duration = Duration::from_secs(3);
/// How often a core looks at its groups.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// What the core's checker remembers of one group.
struct Watch {
    last_log_index: Option<u64>,
    /// When the log last grew or the group was woken.
    active_at: Instant,
    asleep: bool,
}

thread_local! {
    /// When each group of this core (thread) was last woken by a request.
    /// Per thread because a group lives on one core: [`wake`] and [`run`]
    /// of one group always run on the same thread.
    static WOKEN: RefCell<HashMap<u64, Instant>> = RefCell::new(HashMap::new());
    /// The groups of this core the checker put to sleep.
    static ASLEEP: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// Wakes `group` (running on this core) now: its timers run again and it
/// stays awake for at least [`HIBERNATE_AFTER`]. Cheap when it is awake
/// (on every write's path): the checker turns the ticker off only
/// together with marking the group asleep, so only then is it turned on.
pub fn wake<A: Applier>(raft: &GroupRaft<A>, group: u64) {
    WOKEN.with(|woken| woken.borrow_mut().insert(group, Instant::now()));
    if ASLEEP.with(|asleep| asleep.borrow_mut().remove(&group)) {
        raft.runtime_config().tick(true);
    }
}

/// Whether `group` should sleep now (module doc), from its metrics.
fn should_sleep<A: Applier>(
    raft: &GroupRaft<A>,
    me: NodeId,
    health: &HealthTable,
    quiet: bool,
) -> bool {
    if !quiet {
        return false;
    }
    let metrics = raft.metrics();
    let metrics = metrics.borrow_watched();
    let voters: Vec<NodeId> = metrics.membership_config.voter_ids().collect();
    match metrics.state {
        ServerState::Leader => {
            let Some(replication) = &metrics.replication else {
                return false;
            };
            let last = metrics.last_log_index;
            voters.iter().filter(|id| **id != me).all(|id| {
                replication
                    .get(id)
                    .is_some_and(|matched| matched.map(|log_id| log_id.index) == last)
                    && health.is_up(*id)
            })
        }
        ServerState::Follower => metrics
            .current_leader
            .is_some_and(|leader| leader != me && health.is_up(leader)),
        _ => false,
    }
}

/// Looks at the core's groups every [`CHECK_INTERVAL`] and puts the quiet
/// ones to sleep or wakes them (module doc). One task per core, until the
/// executor stops. `hibernate_after`: [`HIBERNATE_AFTER`] unless a test or
/// a benchmark wants another.
pub async fn run<A: Applier>(
    groups: Rc<CoreGroups<A>>,
    health: Rc<HealthTable>,
    me: NodeId,
    hibernate_after: Duration,
) {
    let mut watches: HashMap<u64, Watch> = HashMap::new();
    loop {
        glommio::timer::sleep(CHECK_INTERVAL).await;
        let now = Instant::now();
        let all = groups.all();
        for (group, raft) in &all {
            let (group, raft) = (*group, raft);
            let last_log_index = raft.metrics().borrow_watched().last_log_index;
            let woken_at = WOKEN.with(|woken| woken.borrow().get(&group).copied());
            let watch = watches.entry(group).or_insert(Watch {
                last_log_index,
                active_at: now,
                asleep: false,
            });
            if watch.last_log_index != last_log_index {
                watch.last_log_index = last_log_index;
                watch.active_at = now;
            }
            if let Some(woken_at) = woken_at.filter(|at| *at > watch.active_at) {
                watch.active_at = woken_at;
            }
            let quiet = now.duration_since(watch.active_at) >= hibernate_after;
            let sleep = should_sleep(raft, me, &health, quiet);
            // Told every time (openraft ignores a repeated value): one
            // source of truth with `ASLEEP`, which `wake` relies on.
            raft.runtime_config().tick(!sleep);
            ASLEEP.with(|asleep| {
                let mut asleep = asleep.borrow_mut();
                if sleep {
                    asleep.insert(group);
                } else {
                    asleep.remove(&group);
                }
            });
            if sleep != watch.asleep {
                tracing::debug!(group, asleep = sleep, "group hibernation changed");
                watch.asleep = sleep;
            }
        }
        let live: HashSet<u64> = all.into_iter().map(|(group, _)| group).collect();
        watches.retain(|group, _| live.contains(group));
    }
}

/// Whether `group` (on this core) sleeps now, as the checker last decided.
pub fn is_asleep(group: u64) -> bool {
    ASLEEP.with(|asleep| asleep.borrow().contains(&group))
}
