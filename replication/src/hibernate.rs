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
//! A leader waits [`LEADER_SLEEP_MARGIN`] longer than that: its followers
//! go quiet from the same events (the entries it sends them), so they fall
//! asleep first and never sit awake, election timer running, behind a
//! leader that stopped its heartbeats.
//!
//! A follower's timers run only while its lease is fresh: it heard from a
//! leader ([`heard_from_leader`], every AppendEntries) within
//! [`FOLLOWER_LEASE`], or its leader is unknown or its node is down. A
//! follower woken by a request after a long sleep therefore does not call
//! an election at once (openraft would: the last heartbeat it saw is
//! seconds old); it forwards the request, which wakes the leader, whose
//! heartbeats restart the follower's timers. Measured before this rule: the
//! first write after an idle spell took 4.5 s on 3 real nodes (the woken
//! follower deposed the sleeping leader, then the leader's own follower
//! timed out again).
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

use openraft::{RaftMetrics, ServerState};
use openraft_rt::WatchReceiver;

use crate::group::{CoreGroups, GroupRaft};
use crate::health::HealthTable;
use crate::state_machine::Applier;
use crate::{NodeId, TypeConfig};

/// How long a group must be quiet before it sleeps.
pub const HIBERNATE_AFTER: Duration = Duration::from_secs(3);
/// How often a core looks at its groups.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How much longer than its followers a leader stays awake when quiet.
pub const LEADER_SLEEP_MARGIN: Duration = Duration::from_secs(1);
/// A follower that heard from a leader this recently keeps its timers
/// running (past the longest election timeout, so openraft's own timer
/// decides a failover of a busy group, as without hibernation).
pub const FOLLOWER_LEASE: Duration = Duration::from_millis(
    crate::group::ELECTION_TIMEOUT_MAX.as_millis() as u64 + CHECK_INTERVAL.as_millis() as u64,
);

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
    /// When each group of this core last received AppendEntries (entries
    /// or a heartbeat) from a leader.
    static HEARD: RefCell<HashMap<u64, Instant>> = RefCell::new(HashMap::new());
}

/// Records that `group` (on this core) just received AppendEntries from a
/// leader: its lease is fresh. Called by the peer handler on every one.
pub fn heard_from_leader(group: u64) {
    let now = Instant::now();
    HEARD.with(|heard| heard.borrow_mut().insert(group, now));
}

/// Wakes `group` (running on this core) now: it stays awake for at least
/// [`HIBERNATE_AFTER`]; a leader's timers run again at once (it may need a
/// heartbeat round to confirm its lease), a follower's once it hears from
/// its leader (module doc). Cheap when it is awake (on every write's path):
/// the checker turns the ticker off only together with marking the group
/// asleep, so only then is it turned on.
pub fn wake<A: Applier>(raft: &GroupRaft<A>, group: u64) {
    WOKEN.with(|woken| woken.borrow_mut().insert(group, Instant::now()));
    if ASLEEP.with(|asleep| asleep.borrow_mut().remove(&group)) {
        let leads = raft.metrics().borrow_watched().state == ServerState::Leader;
        if leads {
            raft.runtime_config().tick(true);
        }
    }
}

/// Whether a follower's timers may run: its lease is fresh, or it has no
/// leader to wait for (unknown, or its node down).
fn follower_may_tick(group: u64, leader: Option<NodeId>, me: NodeId, health: &HealthTable) -> bool {
    let heard_lately = HEARD.with(|heard| {
        heard
            .borrow()
            .get(&group)
            .is_some_and(|at| at.elapsed() < FOLLOWER_LEASE)
    });
    heard_lately || leader.is_none_or(|leader| leader == me || !health.is_up(leader))
}

/// Whether `group` should sleep now (module doc), from its metrics.
fn should_sleep(
    metrics: &RaftMetrics<TypeConfig>,
    me: NodeId,
    health: &HealthTable,
    quiet: bool,
) -> bool {
    if !quiet {
        return false;
    }
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
            let metrics = raft.metrics();
            let metrics = metrics.borrow_watched();
            let last_log_index = metrics.last_log_index;
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
            let quiet_for = match metrics.state {
                ServerState::Leader => hibernate_after + LEADER_SLEEP_MARGIN,
                _ => hibernate_after,
            };
            let quiet = now.duration_since(watch.active_at) >= quiet_for;
            let sleep = should_sleep(&metrics, me, &health, quiet);
            let tick = !sleep
                && (metrics.state != ServerState::Follower
                    || follower_may_tick(group, metrics.current_leader, me, &health));
            drop(metrics);
            // Told every time (openraft ignores a repeated value): one
            // source of truth with `ASLEEP`, which `wake` relies on.
            raft.runtime_config().tick(tick);
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
