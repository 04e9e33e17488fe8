//! What a node answers a peer that sends nonsense: a call for a range
//! (group) this node does not host, and a Raft call whose payload does not
//! decode, each get a typed refusal on the same connection, and the node
//! goes on serving its group.

mod common;

use std::time::Duration;

use common::*;
use openraft_rt::AsyncRuntime;
use tinkerdb_replication::transport::{PeerCall, PeerClient, TransportError};
use tinkerdb_replication::{GlommioRuntime, Response};
use tinkerdb_schemas::wire::PeerCallKind;

#[test]
fn a_call_for_an_unknown_range_or_with_garbage_is_refused_and_the_node_goes_on() {
    let addrs = free_addrs(1);
    let base = fresh_dir("bad-peer");
    let node = start_node(1, &addrs, base.join("node-1"));
    assert!(matches!(
        node.write(put("k", "v")),
        Ok(Response::Put { .. })
    ));
    let addr = addrs[&1];
    let answers = GlommioRuntime::new(1).block_on(async move {
        let client = PeerClient::new(addr, GROUP, None);
        let deadline = Duration::from_secs(10);
        let unknown = client
            .call(
                PeerCall {
                    group: 999,
                    kind: PeerCallKind::AppendEntries,
                    payload: vec![1, 2, 3],
                },
                deadline,
            )
            .await;
        let garbage = client
            .call(
                PeerCall {
                    group: GROUP,
                    kind: PeerCallKind::AppendEntries,
                    payload: vec![0xff; 7],
                },
                deadline,
            )
            .await;
        // The same connection still carries a good call.
        let ping = client
            .call(
                PeerCall {
                    group: 0,
                    kind: PeerCallKind::Ping,
                    payload: Vec::new(),
                },
                deadline,
            )
            .await;
        (unknown, garbage, ping)
    });
    let (unknown, garbage, ping) = answers;
    assert!(
        matches!(&unknown, Err(TransportError::Refused(_, reason)) if reason.contains("no group 999")),
        "{unknown:?}"
    );
    assert!(
        matches!(&garbage, Err(TransportError::Refused(..))),
        "{garbage:?}"
    );
    assert_eq!(ping, Ok(Vec::new()));
    assert!(matches!(
        node.write(put("k2", "v2")),
        Ok(Response::Put { .. })
    ));
    assert_eq!(node.read("k").unwrap(), Some(b"v".to_vec()));
    node.stop();
    let _ = std::fs::remove_dir_all(&base);
}
