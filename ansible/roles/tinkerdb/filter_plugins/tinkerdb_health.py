"""Filters of the tinkerdb role: what is wrong with a node's /v1/cluster view.

    {{ view | tinkerdb_cluster_problems(expected_ids, max_lag, max_ack_ms) }}

returns a list of short sentences, empty when the view (one node's GET
/v1/cluster, docs/http-api.md) shows a healthy, caught-up cluster: raft mode,
exactly the expected voters, all up; every shard with a leader; on each shard
this node leads, every other voter at most max_lag log entries behind and,
unless the group sleeps (hibernation: no heartbeats while idle), acknowledged
within max_ack_ms.

    {{ uri_loop_results | tinkerdb_cluster_report(expected_ids, max_lag, max_ack_ms) }}

gives {node: its problems} for a failure message.
"""

from __future__ import annotations


def tinkerdb_cluster_problems(view, expected_ids, max_lag=100, max_ack_ms=5000):
    if not isinstance(view, dict) or not view:
        return ["no answer from /v1/cluster"]
    if view.get("mode") != "raft":
        return [f"mode is {view.get('mode')!r}, not raft (a standalone node?)"]
    problems = []
    expected = sorted(int(i) for i in expected_ids)
    nodes = view.get("nodes") or []
    ids = sorted(int(n.get("id", 0)) for n in nodes)
    if ids != expected:
        problems.append(f"members {ids}, expected {expected}")
    for node in nodes:
        if node.get("state") != "up":
            problems.append(f"node {node.get('id')} is {node.get('state')} ({node.get('last_error')})")
        if node.get("role") != "voter":
            problems.append(f"node {node.get('id')} is a {node.get('role')}, not a voter")
    shards = view.get("shards") or []
    if not shards:
        problems.append("no shards")
    for shard in shards:
        sid = shard.get("id")
        if shard.get("leader") is None:
            problems.append(f"shard {sid} has no leader")
            continue
        if shard.get("applied_index") is not None and shard.get("committed_index") is not None:
            behind = int(shard["committed_index"]) - int(shard["applied_index"])
            if behind > int(max_lag):
                problems.append(f"shard {sid}: {behind} committed entries not yet applied here")
        if str(shard.get("role", "")).lower() != "leader":
            continue
        followers = {int(f.get("node", 0)): f for f in shard.get("followers") or []}
        voters = [int(v) for v in shard.get("replicas") or []]
        for voter in voters:
            if voter == int(shard["leader"]):
                continue
            follower = followers.get(voter)
            if follower is None:
                problems.append(f"shard {sid}: the leader has no progress for node {voter}")
                continue
            lag = follower.get("lag")
            if lag is None or int(lag) > int(max_lag):
                problems.append(f"shard {sid}: node {voter} is {lag} entries behind (max {max_lag})")
            ack = follower.get("last_ack_ms")
            # A sleeping group sends no heartbeats: its acknowledgements age
            # while all is well (the nodes' health probes are checked above).
            if shard.get("asleep"):
                continue
            if ack is None or int(ack) > int(max_ack_ms):
                problems.append(f"shard {sid}: node {voter} last acknowledged {ack} ms ago")
    return problems


def tinkerdb_cluster_report(results, expected_ids, max_lag=100, max_ack_ms=5000):
    """{node: its problems} from the registered results of a uri loop over
    the nodes (item: the node asked); a node that did not answer has the
    error instead."""
    report = {}
    for result in results or []:
        if isinstance(result.get("json"), dict):
            report[result.get("item")] = tinkerdb_cluster_problems(
                result["json"], expected_ids, max_lag, max_ack_ms) or ["healthy"]
        else:
            report[result.get("item")] = [f"no answer: {result.get('msg', 'unknown error')}"]
    return report


class FilterModule:
    """The role's filters."""

    def filters(self):
        return {
            "tinkerdb_cluster_problems": tinkerdb_cluster_problems,
            "tinkerdb_cluster_report": tinkerdb_cluster_report,
        }
