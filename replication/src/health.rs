//! Health checks of the peer nodes: each core pings its peers' same core
//! over the Raft transport and remembers when each last answered.
//!
//! Why a probe of its own rather than Raft's heartbeats: heartbeats only
//! flow from a group's leader, so a node that leads nothing would know
//! nothing of its peers, and the probe measures the very connection Raft
//! traffic uses (a cut link or a stalled peer core shows up here).
//!
//! A peer is `up` when it answered within [`PEER_DOWN_AFTER`], `down`
//! otherwise, `unknown` before its first probe completes. The table is
//! reported through `/v1/cluster` and `tinker cluster status`, and a peer
//! going down (or coming back) is logged once, where openraft would warn
//! of every failed heartbeat (its heartbeat warnings are off by default).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tinkerdb_schemas::wire::PeerCallKind;

use crate::network::Peers;
use crate::transport::PeerCall;
use crate::NodeId;

/// How often each core pings each peer.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long a ping may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A peer silent this long is reported `down` (several probes, so one
/// slow answer on a loaded machine does not flap it).
pub const PEER_DOWN_AFTER: Duration = Duration::from_secs(2);

/// What this core knows of one peer's health.
#[derive(Debug, Clone, Default)]
pub struct PeerHealth {
    /// When it last answered a ping.
    pub last_answer: Option<Instant>,
    /// Round trip of that answer.
    pub last_rtt: Option<Duration>,
    /// Why the last ping failed, if it did.
    pub last_error: Option<String>,
}

/// A peer's health as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHealthReport {
    /// The peer.
    pub node_id: NodeId,
    /// Its Raft address (this core's).
    pub addr: String,
    /// `up`, `down` or `unknown`.
    pub state: &'static str,
    /// Milliseconds since it last answered.
    pub last_seen_ms: Option<u64>,
    /// Round trip of the last answer, microseconds.
    pub rtt_us: Option<u64>,
    /// Why the last ping failed, if it did.
    pub last_error: Option<String>,
}

/// The health table of one core.
#[derive(Default)]
pub struct HealthTable {
    peers: RefCell<BTreeMap<NodeId, PeerHealth>>,
}

impl HealthTable {
    /// Whether `node` answered a probe within [`PEER_DOWN_AFTER`].
    pub fn is_up(&self, node: NodeId) -> bool {
        self.peers.borrow().get(&node).is_some_and(|health| {
            health
                .last_answer
                .is_some_and(|at| at.elapsed() <= PEER_DOWN_AFTER)
        })
    }

    /// The health of each of `members` (other than this node) now.
    pub fn report(&self, peers: &Peers, members: &[(NodeId, String)]) -> Vec<PeerHealthReport> {
        let table = self.peers.borrow();
        members
            .iter()
            .filter_map(|(id, addr)| Some((*id, peers.get_or_add(*id, addr).ok()?)))
            .map(|(id, client)| {
                let health = table.get(&id).cloned().unwrap_or_default();
                let age = health.last_answer.map(|at| at.elapsed());
                let state = match (age, &health.last_error) {
                    (Some(age), _) if age <= PEER_DOWN_AFTER => "up",
                    (None, None) => "unknown",
                    _ => "down",
                };
                PeerHealthReport {
                    node_id: id,
                    addr: client.addr().to_string(),
                    state,
                    last_seen_ms: age.map(|age| age.as_millis() as u64),
                    rtt_us: health.last_rtt.map(|rtt| rtt.as_micros() as u64),
                    last_error: health.last_error,
                }
            })
            .collect()
    }
}

/// Pings every member `members()` names (the other nodes of this core's
/// groups, with their addresses) every [`PROBE_INTERVAL`], forever (a task
/// per core). Members that joined later are probed as soon as a membership
/// names them; removed ones are no longer probed.
pub async fn probe_peers(
    peers: Rc<Peers>,
    table: Rc<HealthTable>,
    members: impl Fn() -> Vec<(NodeId, String)> + 'static,
) {
    // Each peer's state as last logged: a change is logged once (a peer
    // going down, coming back), not every probe.
    let mut logged: BTreeMap<NodeId, &'static str> = BTreeMap::new();
    loop {
        let current = members();
        for report in table.report(&peers, &current) {
            let before = logged.insert(report.node_id, report.state);
            match (before, report.state) {
                (Some("up"), "down") => tracing::warn!(
                    peer = report.node_id,
                    addr = %report.addr,
                    last_error = report.last_error.as_deref().unwrap_or(""),
                    "peer down: no answer to health probes for {PEER_DOWN_AFTER:?}"
                ),
                (Some("down"), "up") => {
                    tracing::info!(peer = report.node_id, addr = %report.addr, "peer up again")
                }
                _ => {}
            }
        }
        let clients = current
            .into_iter()
            .filter_map(|(id, addr)| Some((id, peers.get_or_add(id, &addr).ok()?)));
        for (id, client) in clients {
            let table = table.clone();
            // One task per ping: a peer that does not answer never delays
            // the probes of the others.
            glommio::spawn_local(async move {
                let started = Instant::now();
                let call = PeerCall {
                    group: 0,
                    kind: PeerCallKind::Ping,
                    payload: Vec::new(),
                };
                let outcome = client.call(call, PROBE_TIMEOUT).await;
                let mut peers = table.peers.borrow_mut();
                let health = peers.entry(id).or_default();
                match outcome {
                    Ok(_) => {
                        health.last_answer = Some(Instant::now());
                        health.last_rtt = Some(started.elapsed());
                        health.last_error = None;
                    }
                    Err(error) => health.last_error = Some(error.to_string()),
                }
            })
            .detach();
        }
        glommio::timer::sleep(PROBE_INTERVAL).await;
    }
}
