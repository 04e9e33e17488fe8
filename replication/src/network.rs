//! openraft's network on TinkerDB's peer transport ([`crate::transport`]).
//!
//! Every group on a core shares the core's [`Peers`] (one [`PeerClient`] per
//! peer node), so a node pair has one connection per core whatever the
//! number of groups. A call names its group; the receiving core hands it to
//! that group's `Raft` ([`serve_raft_call`]).
//!
//! The RPC bodies are openraft's own request and response types encoded
//! with `postcard` (serde) inside the flatbuffers `PeerFrame`: openraft's
//! messages are generic over the type config and change between releases,
//! and mirroring each in a flatbuffers table would duplicate them for no
//! gain; the frame around them (group, call kind, call id, errors) is
//! flatbuffers like every other TinkerDB message.
//!
//! Errors: a peer that cannot be reached, times out or is cut off maps to
//! openraft's `Unreachable` (openraft backs off, then retries); a call the
//! peer could not run maps to `Network`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tinkerdb_schemas::wire::PeerCallKind;

use crate::peer_tls::PeerTls;
use crate::transport::{PeerAddr, PeerCall, PeerClient, TransportError};
use crate::{NodeId, TypeConfig};

/// This core's clients of its peer nodes, by node id. Starts from the
/// seed list and grows as memberships name new nodes (a node that joined
/// later is reached at the address its membership entry gives).
pub struct Peers {
    /// TLS on every connection, when the node has it.
    tls: Option<PeerTls>,
    /// The range every connection's hello names (one this core hosts);
    /// the peer hands the connection to its core that hosts it.
    hello_range: u64,
    clients: RefCell<HashMap<NodeId, Rc<PeerClient>>>,
}

impl Peers {
    /// Peers from `(node id, the node's Raft address)` (an IP:PORT or a
    /// [`PeerAddr`] naming a host), whose connections are for the ranges
    /// of `hello_range`'s core and speak TLS when `tls` is given.
    pub fn new<A: Into<PeerAddr>>(
        hello_range: u64,
        peers: impl IntoIterator<Item = (NodeId, A)>,
        tls: Option<PeerTls>,
    ) -> Peers {
        let peers = peers.into_iter().map(|(id, addr)| (id, addr, hello_range));
        Peers::with_hellos(hello_range, peers, tls)
    }

    /// Peers from `(node id, Raft address, hello range)`: each connection's
    /// hello names a range of its own, one that peer hosts (a node that
    /// replicates only some ranges refuses a hello naming another). Nodes
    /// added later ([`Self::get_or_add`]) get `default_hello`.
    pub fn with_hellos<A: Into<PeerAddr>>(
        default_hello: u64,
        peers: impl IntoIterator<Item = (NodeId, A, u64)>,
        tls: Option<PeerTls>,
    ) -> Peers {
        let hello_range = default_hello;
        let clients = peers
            .into_iter()
            .map(|(id, addr, hello)| {
                let client = PeerClient::new(addr, hello, tls.clone());
                (id, Rc::new(client))
            })
            .collect();
        Peers {
            tls,
            hello_range,
            clients: RefCell::new(clients),
        }
    }

    /// The client of node `id`, if it is known.
    pub fn get(&self, id: NodeId) -> Option<Rc<PeerClient>> {
        self.clients.borrow().get(&id).cloned()
    }

    /// The client of node `id`, made for `addr` (`host:port`, as a
    /// membership names it) if none exists yet. A known node keeps its
    /// client: a node id names one address for the cluster's lifetime (a
    /// host name in it is resolved on every connection attempt, so the
    /// host may change IP). Fails only on text that is not `HOST:PORT`.
    pub fn get_or_add(&self, id: NodeId, addr: &str) -> Result<Rc<PeerClient>, String> {
        if let Some(client) = self.get(id) {
            return Ok(client);
        }
        let addr = PeerAddr::parse(addr).map_err(|error| format!("node {id}'s address {error}"))?;
        let client = Rc::new(PeerClient::new(addr, self.hello_range, self.tls.clone()));
        self.clients.borrow_mut().insert(id, client.clone());
        Ok(client)
    }
}

/// Encodes a message for the wire.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    postcard::to_allocvec(message).expect("openraft messages serialize")
}

/// Decodes a message from the wire.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|error| format!("undecodable message: {error}"))
}

/// A snapshot on the wire: its metadata and its bytes.
#[derive(Serialize, serde::Deserialize)]
struct SnapshotCall {
    vote: crate::Vote,
    meta: SnapshotMetaOf<TypeConfig>,
    data: Vec<u8>,
}

/// Builds the network clients of one group.
pub struct NetworkFactory {
    group: u64,
    peers: Rc<Peers>,
}

impl NetworkFactory {
    /// The factory of `group`, over the core's peers.
    pub fn new(group: u64, peers: Rc<Peers>) -> NetworkFactory {
        NetworkFactory { group, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, node: &crate::Node) -> GroupNetwork {
        let client = match self.peers.get_or_add(target, &node.addr) {
            Ok(client) => Some(client),
            Err(reason) => {
                tracing::warn!(target, %reason, "cannot reach a member");
                None
            }
        };
        GroupNetwork {
            group: self.group,
            target,
            client,
        }
    }
}

/// One group's channel to one peer.
pub struct GroupNetwork {
    group: u64,
    target: NodeId,
    client: Option<Rc<PeerClient>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Reason(String);

fn unreachable<E: From<Unreachable<TypeConfig>> + From<NetworkError<TypeConfig>>>(
    error: TransportError,
) -> E {
    match error {
        TransportError::Refused(_, reason) => NetworkError::new(&Reason(reason)).into(),
        other => Unreachable::new(&Reason(other.to_string())).into(),
    }
}

impl GroupNetwork {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: PeerCallKind,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, TransportError> {
        let Some(client) = &self.client else {
            return Err(TransportError::Refused(
                "0.0.0.0:0".parse().expect("valid"),
                format!("node {} is not a known peer", self.target),
            ));
        };
        let payload = client
            .call(
                PeerCall {
                    group: self.group,
                    kind,
                    payload: encode(request),
                },
                option.soft_ttl(),
            )
            .await?;
        decode(&payload).map_err(|reason| TransportError::Refused(client.addr().clone(), reason))
    }
}

impl RaftNetworkV2<TypeConfig> for GroupNetwork {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(PeerCallKind::AppendEntries, &rpc, &option)
            .await
            .map_err(unreachable)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(PeerCallKind::Vote, &rpc, &option)
            .await
            .map_err(unreachable)
    }

    async fn full_snapshot(
        &mut self,
        vote: crate::Vote,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let call = SnapshotCall {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        self.call(PeerCallKind::InstallSnapshot, &call, &option)
            .await
            .map_err(unreachable)
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(PeerCallKind::TransferLeader, &request, &option)
            .await
            .map_err(unreachable)
    }
}

/// Runs one Raft call received from a peer on `raft` (the group's handle on
/// this core) and encodes the answer.
pub async fn serve_raft_call<SM>(
    raft: &openraft::Raft<TypeConfig, SM>,
    kind: PeerCallKind,
    payload: &[u8],
) -> Result<Vec<u8>, String>
where
    SM: openraft::storage::RaftStateMachine<TypeConfig, SnapshotData = Vec<u8>>,
{
    match kind {
        PeerCallKind::AppendEntries => {
            let request: AppendEntriesRequest<TypeConfig> = decode(payload)?;
            // Refuse what the log store could not store or read back (a
            // membership its decoder refuses, a command over the size
            // limit) before openraft takes it: a storage error would stop
            // the group.
            for entry in &request.entries {
                crate::log_store::check_storable(entry)
                    .map_err(|reason| format!("refused: {reason}"))?;
            }
            let response = raft
                .append_entries(request)
                .await
                .map_err(|error| error.to_string())?;
            Ok(encode(&response))
        }
        PeerCallKind::Vote => {
            let request: VoteRequest<TypeConfig> = decode(payload)?;
            let response = raft
                .vote(request)
                .await
                .map_err(|error| error.to_string())?;
            Ok(encode(&response))
        }
        PeerCallKind::InstallSnapshot => {
            let call: SnapshotCall = decode(payload)?;
            let snapshot = SnapshotOf::<TypeConfig, Vec<u8>> {
                meta: call.meta,
                snapshot: call.data,
            };
            let response = raft
                .install_full_snapshot(call.vote, snapshot)
                .await
                .map_err(|error| error.to_string())?;
            Ok(encode(&response))
        }
        PeerCallKind::TransferLeader => {
            let request: TransferLeaderRequest<TypeConfig> = decode(payload)?;
            let response = raft
                .handle_transfer_leader(request)
                .await
                .map_err(|error| error.to_string())?;
            Ok(encode(&response))
        }
        other => Err(format!("not a Raft call: {other:?}")),
    }
}
