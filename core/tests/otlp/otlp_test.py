#!/usr/bin/env python3
"""Tracing end to end: a 3-node TinkerDB cluster exports its spans with
OTLP over HTTP/protobuf to a receiver in this test, which decodes them
with PyPI's opentelemetry-proto (docs/observability.md).

Checks that one RESP SET, sent to one node, yields spans on that node (the
front end's root span, the proposal) and an apply span on every node (the
leader and both followers), all under one trace id; that the trace of a
request is joined across nodes through the Raft entry (every apply span
is a child of the proposal); that no password, key or value ever
reaches the exporter; and that the password is in no line the nodes log
(their own crates at debug).

Run by scripts/test.sh (TINKERDB_BIN: the node binary; default
target/debug/tinkerdb). Every wait is bounded; on failure it prints the
nodes' output and the spans it got.
"""
import base64
import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

BIN = os.environ.get("TINKERDB_BIN", "target/debug/tinkerdb")
READY_TIMEOUT_S = 120
SPANS_TIMEOUT_S = 30
PASSWORD = "otlp-secret-password-7"
KEY = b"traced-key-1234"
VALUE = b"traced-value-5678"


class Sink:
    """An OTLP/HTTP receiver: keeps every span and every raw body."""

    def __init__(self):
        self.lock = threading.Lock()
        self.spans = []
        self.bodies = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    body = gzip.decompress(body)
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                found = []
                for resource_spans in request.resource_spans:
                    resource = {kv.key: kv.value.string_value
                                for kv in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            found.append({
                                "node": resource.get("service.instance.id"),
                                "service": resource.get("service.name"),
                                "name": span.name,
                                "trace": span.trace_id.hex(),
                                "span": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "attributes": {kv.key: str(kv.value).strip()
                                               for kv in span.attributes},
                            })
                with sink.lock:
                    sink.bodies.append(body)
                    sink.spans.extend(found)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}/v1/traces"

    def snapshot(self):
        with self.lock:
            return list(self.spans), list(self.bodies)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, node_id, config, peers, root):
        self.node_id = node_id
        self.dir = os.path.join(root, f"node{node_id}")
        os.makedirs(self.dir)
        config_path = os.path.join(self.dir, "node.toml")
        with open(config_path, "w") as f:
            f.write(config)
        self.out = ""
        self.err = ""
        self.lock = threading.Lock()
        self.child = subprocess.Popen(
            [BIN, "--node-id", str(node_id), "--peers", peers, "--cores", "2",
             "--listen", "127.0.0.1:0", "--resp-listen", "127.0.0.1:0",
             "--admin-listen", "127.0.0.1:0", "--data-dir", os.path.join(self.dir, "data"),
             "--config", config_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, errors="replace", bufsize=1,
            # The node's own crates at debug: the password must not be in
            # any line they write.
            env={**os.environ, "RUST_LOG": "info,openraft=error,tinkerdb_core=debug,tinkerdb_admin=debug"})
        threading.Thread(target=self._read, args=(self.child.stdout, "out"), daemon=True).start()
        threading.Thread(target=self._read, args=(self.child.stderr, "err"), daemon=True).start()

    def _read(self, stream, which):
        for line in stream:
            with self.lock:
                setattr(self, which, getattr(self, which) + line)

    def wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            with self.lock:
                out = self.out
            resp = re.search(r"Redis protocol on (\S+)", out)
            admin = re.search(r"Admin API and dashboard on http://(\S+?)/", out)
            if resp and admin:
                self.resp, self.admin = resp.group(1), admin.group(1)
                return
            if self.child.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"node {self.node_id} not ready:\n{self.out}\n{self.err[-3000:]}")

    def stop(self):
        if self.child.poll() is None:
            self.child.terminate()
            try:
                self.child.wait(15)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait(5)


def hash_password(password):
    done = subprocess.run([BIN, "--hash-password"], input=password + "\n",
                          capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


def admin_get(node, path):
    request = urllib.request.Request(f"http://{node.admin}{path}")
    token = base64.b64encode(f"root:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def resp_call(sock, *args):
    command = f"*{len(args)}\r\n".encode()
    for arg in args:
        arg = arg if isinstance(arg, bytes) else arg.encode()
        command += f"${len(arg)}\r\n".encode() + arg + b"\r\n"
    sock.sendall(command)
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError("connection closed")
        reply += chunk
    return reply


def eventually(timeout_s, check):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def main():
    sink = Sink()
    root = tempfile.mkdtemp(prefix="tinkerdb-otlp-test-")
    nodes = []
    try:
        password_hash = hash_password(PASSWORD)
        config = f"""
[tracing]
otlp_endpoint = "{sink.endpoint}"
sample_ratio = 1.0

[auth]
enabled = true

[[auth.users]]
name = "root"
password_hash = "{password_hash}"
cluster_admin = true
"""
        ports = [free_port() for _ in range(3)]
        peers = ",".join(f"{i + 1}=127.0.0.1:{port}" for i, port in enumerate(ports))
        nodes = [Node(i + 1, config, peers, root) for i in range(3)]
        for node in nodes:
            node.wait_ready()

        def leaders_everywhere():
            try:
                return all(all(isinstance(shard.get("leader"), int)
                               for shard in admin_get(node, "/v1/cluster")["shards"])
                           for node in nodes)
            except OSError:
                return False

        assert eventually(60, leaders_everywhere), "no leaders"

        # One SET through node 1, after AUTH (its own traced pipeline).
        with socket.create_connection(tuple(nodes[0].resp.rsplit(":", 1)), timeout=20) as sock:
            assert resp_call(sock, "AUTH", "root", PASSWORD) == b"+OK\r\n"
            assert resp_call(sock, "SET", KEY, VALUE) == b"+OK\r\n"

        def the_set_trace():
            spans, _ = sink.snapshot()
            roots = [s for s in spans if s["name"] == "resp.pipeline"
                     and s["attributes"].get("command", "").find("SET") >= 0]
            for root_span in roots:
                trace = [s for s in spans if s["trace"] == root_span["trace"]]
                applied_on = {s["node"] for s in trace if s["name"] == "raft.apply"}
                if applied_on == {"node-1", "node-2", "node-3"}:
                    return root_span, trace
            return None

        assert eventually(SPANS_TIMEOUT_S, lambda: the_set_trace() is not None), \
            f"no trace of the SET with an apply span on every node; spans: {sink.snapshot()[0]}"
        root_span, trace = the_set_trace()
        names = {s["name"] for s in trace}
        print(f"the SET's trace {root_span['trace']}: "
              + ", ".join(sorted(f"{s['name']}@{s['node']}" for s in trace)))
        assert root_span["node"] == "node-1", root_span
        assert root_span["parent"] == "", "the front end's span is the trace's root"
        assert root_span["service"] == "tinkerdb"
        assert "raft.propose" in names, names
        by_id = {s["span"]: s for s in trace}
        for span in trace:
            if span is not root_span:
                assert span["parent"] in by_id, f"{span} has a parent outside the trace"
        # Every apply span hangs under the proposal (the entry carried it).
        propose_ids = {s["span"] for s in trace if s["name"] == "raft.propose"}
        for span in trace:
            if span["name"] == "raft.apply":
                assert span["parent"] in propose_ids, span

        # Nothing secret or private leaves the node: not the password
        # (AUTH's pipeline was traced too), not the key, not the value.
        spans, bodies = sink.snapshot()
        assert any(s["name"] == "resp.pipeline" and "AUTH" in s["attributes"].get("command", "")
                   for s in spans), "the AUTH pipeline was traced"
        for body in bodies:
            for secret in (PASSWORD.encode(), KEY, VALUE):
                assert secret not in body, f"{secret!r} reached the exporter"
        for node in nodes:
            with node.lock:
                logged = node.out + node.err
            assert PASSWORD not in logged, f"node {node.node_id} logged the password"
        print(f"OK: {len(spans)} spans from {len({s['node'] for s in spans})} nodes, "
              f"{len(bodies)} exports, no password, key or value in any; "
              f"no password in {sum(len(n.err.splitlines()) for n in nodes)} log lines")
    except BaseException:
        for node in nodes:
            print(f"--- node {node.node_id} stdout ---\n{node.out}\n"
                  f"--- node {node.node_id} stderr (tail) ---\n{node.err[-4000:]}", file=sys.stderr)
        raise
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
