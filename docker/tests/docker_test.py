#!/usr/bin/env python3
"""Container tests of docker/Dockerfile and docker/compose.yaml (real containers).

Run through docker/tests/run.sh, which builds the image and cleans up. Every
check prints one line; the first failure raises and the process exits 1.
Environment (set by run.sh): IMAGE, PROJECT, SUBNET, PORT_PREFIX, TINKER,
COMPOSE (the compose command, e.g. "docker compose" or "docker-compose"),
ONLY (image|compose, optional).
"""

import json
import os
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE = os.environ.get("IMAGE", "tinkerdb:local")
PROJECT = os.environ.get("PROJECT", "tdbtest")
SUBNET = os.environ.get("SUBNET", "172.31.239")
PREFIX = os.environ.get("PORT_PREFIX", "4")
TINKER = os.environ.get("TINKER", os.path.join(ROOT, "target/release/tinker"))
COMPOSE = os.environ.get("COMPOSE", "docker-compose").split()
COMPOSE_FILE = os.path.join(ROOT, "docker/compose.yaml")
SECCOMP = os.path.join(ROOT, "docker/seccomp.json")
MEMLOCK = os.environ.get("MEMLOCK", "-1")
T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


class Failure(Exception):
    pass


# Failures recorded without stopping the run (the later tests do not depend on them).
FAILURES = []


def check_soft(cond, msg):
    if cond:
        log(f"ok: {msg}")
    else:
        log(f"FAIL (run goes on): {msg}")
        FAILURES.append(msg)


def check(cond, msg):
    if not cond:
        raise Failure(msg)
    log(f"ok: {msg}")


def sh(*args, check_rc=True, timeout=120, env=None, capture=True, cwd=None):
    proc = subprocess.run(
        list(args), capture_output=capture, text=True, timeout=timeout, env=env, cwd=cwd
    )
    if check_rc and proc.returncode != 0:
        raise Failure(
            f"command failed ({proc.returncode}): {' '.join(args)}\n{proc.stdout}{proc.stderr}"
        )
    return proc


def docker(*args, **kw):
    return sh("docker", *args, **kw)


def inspect(container, fmt):
    return docker("inspect", "-f", fmt, container).stdout.strip()


def wait_for(what, fn, timeout, interval=0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as err:  # noqa: BLE001 -- retried until the deadline
            last = err
        time.sleep(interval)
    raise Failure(f"timed out after {timeout}s waiting for {what} (last error: {last})")


def wait_healthy(container, timeout=90):
    start = time.monotonic()

    def healthy():
        state = inspect(container, "{{.State.Status}} {{.State.Health.Status}}")
        if state.startswith("exited") or state.startswith("dead"):
            logs = docker("logs", "--tail", "30", container, check_rc=False)
            raise Failure(f"{container} exited while waiting for health:\n{logs.stdout}{logs.stderr}")
        return state == "running healthy"

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy():
            return time.monotonic() - start
        time.sleep(0.5)
    logs = docker("logs", "--tail", "30", container, check_rc=False)
    raise Failure(f"{container} not healthy after {timeout}s:\n{logs.stdout}{logs.stderr}")


def http_json(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def rclient(port, timeout=8):
    return redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=timeout, socket_connect_timeout=3,
        decode_responses=True,
    )


def tinker(*args, addr=None, admin=None, timeout=30):
    cmd = [TINKER]
    if addr:
        cmd += ["--addr", addr]
    if admin:
        cmd += ["--admin", admin]
    return sh(*cmd, *args, check_rc=False, timeout=timeout)


# ---------------------------------------------------------------- image --


def test_image():
    name = f"{PROJECT}-single"
    ports = {7379: f"{PREFIX}0379", 7380: f"{PREFIX}0380", 7381: f"{PREFIX}0381"}
    args = ["run", "-d", "--name", name, "--ulimit", f"memlock={MEMLOCK}:{MEMLOCK}",
            "--security-opt", f"seccomp={SECCOMP}"]
    for inner, outer in ports.items():
        args += ["-p", f"127.0.0.1:{outer}:{inner}"]
    docker(*args, IMAGE, "--cores", "2")
    took = wait_healthy(name)
    check(True, f"image: container healthy (tinker ping) after {took:.1f}s")
    user = docker("exec", name, "id", "-u").stdout.strip()
    check(user == "10001", f"image: the node runs as non-root uid {user}")
    pid1 = docker("exec", name, "cat", "/proc/1/comm").stdout.strip()
    check(pid1 == "tinkerdb", f"image: PID 1 is the node itself ({pid1})")

    r = rclient(int(ports[7381]))
    check(r.ping() is True, "image: redis PING on 7381")
    check(r.set("docker:redis", "hello") is True, "image: redis SET on 7381")
    check(r.get("docker:redis") == "hello", "image: redis GET on 7381")
    addr = f"127.0.0.1:{ports[7379]}"
    out = tinker("set", "docker:tinker", "world", addr=addr)
    check(out.returncode == 0 and out.stdout.startswith("OK"), f"image: tinker set on 7379 ({out.stdout.strip()})")
    out = tinker("get", "docker:tinker", addr=addr)
    check(out.returncode == 0 and out.stdout.strip() == "world", "image: tinker get on 7379")
    check(r.get("docker:tinker") == "world", "image: a key set by tinker is read through Redis")
    node = http_json(f"http://127.0.0.1:{ports[7380]}/v1/node")
    check(isinstance(node, dict) and node.get("cores") == 2, f"image: GET /v1/node on 7380 ({json.dumps(node)[:120]})")
    with urllib.request.urlopen(f"http://127.0.0.1:{ports[7380]}/", timeout=5) as resp:
        page = resp.read().decode()
    check(resp.status == 200 and "<html" in page.lower(), "image: dashboard page served on 7380")

    start = time.monotonic()
    docker("stop", name, timeout=30)
    took = time.monotonic() - start
    code = inspect(name, "{{.State.ExitCode}}")
    check(code == "0", f"image: docker stop -> exit code {code}")
    check(took < 8, f"image: docker stop took {took:.1f}s (graceful, no SIGKILL at 10 s)")

    # The data volume: a restarted container keeps its data.
    docker("start", name)
    wait_healthy(name)
    check(rclient(int(ports[7381])).get("docker:redis") == "hello", "image: data kept across a container restart (volume)")
    docker("rm", "-f", "-v", name)

    # io_uring blocked by seccomp: the node must fail fast.
    blocked = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"{PROJECT}-seccomp-default.json")
    with open(SECCOMP) as f:
        profile = json.load(f)
    for rule in profile["syscalls"]:
        rule["names"] = [n for n in rule["names"] if not n.startswith("io_uring")]
    with open(blocked, "w") as f:
        json.dump(profile, f)
    expect_default_blocks = int(docker("version", "-f", "{{.Server.Version}}").stdout.split(".")[0]) >= 25
    cases = [("Docker 25+ default seccomp profile (docker/seccomp.json without io_uring)", ["--security-opt", f"seccomp={blocked}"], True),
             ("this engine's built-in default seccomp profile", [], expect_default_blocks)]
    for label, extra, must_fail in cases:
        name = f"{PROJECT}-seccomp"
        start = time.monotonic()
        docker("run", "-d", "--name", name, "--ulimit", f"memlock={MEMLOCK}:{MEMLOCK}", *extra, IMAGE, "--cores", "1")
        try:
            def exited():
                return inspect(name, "{{.State.Status}}") == "exited"
            try:
                wait_for(f"{name} to exit", exited, timeout=20 if must_fail else 8, interval=0.2)
                ran = False
            except Failure:
                ran = True
            took = time.monotonic() - start
            code = inspect(name, "{{.State.ExitCode}}")
            logs = docker("logs", name, check_rc=False)
            first = (logs.stderr.strip().splitlines() or [""])[0]
            if not must_fail:
                log(f"info: {label}: node {'kept running' if ran else 'exited ' + code} "
                    f"(the engine is {docker('version', '-f', '{{.Server.Version}}').stdout.strip()}; "
                    f"it still allows io_uring); first stderr line: {first[:200]!r}")
                continue
            state = "still running" if ran else f"exit {code}"
            check_soft(not ran and code != "0",
                       f"image: with {label} the node fails fast ({state} after {took:.1f}s)")
            if ran:
                log(f"info: what it printed: {(logs.stdout + logs.stderr).strip()[-600:]!r}")
            if first.startswith("io_uring is unavailable:"):
                check(True, f"image: it says why: {first[:200]!r}")
            else:
                log(f"info: no start-up probe line yet; stderr was: {logs.stderr.strip()[:600]!r}")
        finally:
            docker("rm", "-f", "-v", name, check_rc=False)
    os.unlink(blocked)


# -------------------------------------------------------------- compose --


def compose(*args, timeout=180):
    env = dict(os.environ, TINKERDB_IMAGE=IMAGE, TINKERDB_SUBNET=SUBNET,
               TINKERDB_PORT_PREFIX=PREFIX, TINKERDB_MEMLOCK=MEMLOCK)
    # From docker/, as documented: Compose v1 opens ./seccomp.json relative to
    # the working directory.
    return sh(*COMPOSE, "-p", PROJECT, "-f", COMPOSE_FILE, *args, env=env, timeout=timeout,
              cwd=os.path.dirname(COMPOSE_FILE))


NODES = (1, 2, 3)


def resp_port(n):
    return int(f"{PREFIX}{n}381")


def admin_addr(n):
    return f"127.0.0.1:{PREFIX}{n}380"


def client_addr(n):
    return f"127.0.0.1:{PREFIX}{n}379"


def container(n):
    # -a: a killed or stopped container too (Compose v2+ lists only running ones).
    return compose("ps", "-a", "-q", f"node{n}").stdout.strip()


def compose_up():
    start = time.monotonic()
    if "--wait" in " ".join(COMPOSE_WAIT):
        compose("up", "-d", "--wait", timeout=240)
    else:
        compose("up", "-d", timeout=240)
        for n in NODES:
            wait_healthy(container(n))
    return time.monotonic() - start


def cluster_status(n):
    return http_json(f"http://{admin_addr(n)}/v1/cluster")


def leaders(n=1):
    return {s["id"]: s["leader"] for s in cluster_status(n)["shards"]}


def wait_leaders(nodes, timeout=90):
    """Every shard has a leader among `nodes`, and every node of `nodes` agrees."""
    def ok():
        seen = [leaders(n) for n in nodes]
        first = seen[0]
        return (all(s == first for s in seen) and first
                and all(l in nodes for l in first.values()) and first)
    return wait_for(f"leaders on nodes {nodes}", ok, timeout)


def wait_caught_up(node, timeout=60):
    """On every shard's leader, `node` is a follower 0 entries behind."""
    def ok():
        for shard in cluster_status(1)["shards"]:
            leader = shard["leader"]
            if leader == node:
                continue
            view = next(s for s in cluster_status(leader)["shards"] if s["id"] == shard["id"])
            lag = [f["lag"] for f in view["followers"] if f["node"] == node]
            if lag != [0]:
                return False
        return True
    start = time.monotonic()
    wait_for(f"node {node} to catch up (lag 0 on every shard)", ok, timeout)
    return time.monotonic() - start


class Load:
    """A bounded write load through the given nodes' client ports (the `tinker`
    CLI), in a thread."""

    def __init__(self, phase, nodes, max_writes=400, max_seconds=40, pace=0.01):
        self.phase, self.nodes = phase, list(nodes)
        self.max_writes, self.max_seconds, self.pace = max_writes, max_seconds, pace
        self.acked = {}
        self.ack_times = []
        self.errors = 0
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def run(self):
        end = time.monotonic() + self.max_seconds
        i = 0
        while i < self.max_writes and time.monotonic() < end and not self.stop_flag.is_set():
            n = self.nodes[i % len(self.nodes)]
            key, value = f"{self.phase}:{i}", f"v{i}"
            try:
                out = tinker("--timeout-ms", "6000", "set", key, value, addr=client_addr(n), timeout=15)
                if out.returncode == 0:
                    self.acked[key] = value
                    self.ack_times.append(time.monotonic())
                else:
                    self.errors += 1
            except Exception:  # noqa: BLE001 -- an unacknowledged write
                self.errors += 1
            i += 1
            time.sleep(self.pace)

    def stop(self):
        self.stop_flag.set()
        self.thread.join(60)
        return self

    def acked_after(self, instant):
        return sum(1 for t in self.ack_times if t > instant)


def verify(acked, nodes, what, timeout=60):
    """Every acknowledged write is readable (linearizable reads) through each node."""
    keys = sorted(acked)
    for n in nodes:
        def all_there():
            for i in range(0, len(keys), 200):
                chunk = keys[i:i + 200]
                out = tinker("--timeout-ms", "10000", "mget", *chunk, addr=client_addr(n))
                if out.returncode != 0:
                    raise Failure(f"node {n}: mget failed: {(out.stdout + out.stderr).strip()[:200]}")
                got = out.stdout.splitlines()
                missing = [k for k, v in zip(chunk, got) if v != acked[k]]
                if missing or len(got) != len(chunk):
                    raise Failure(f"node {n}: {len(missing)} acked writes missing, e.g. {missing[:3]}")
            return True
        wait_for(f"{what} on node {n}", all_there, timeout)
    check(True, f"cluster: {what}: all {len(keys)} acknowledged writes readable on nodes {list(nodes)}")


def test_compose():
    took = compose_up()
    check(True, f"cluster: up, 3 nodes healthy, in {took:.1f}s ({' '.join(COMPOSE_WAIT)})")
    for n in NODES:
        c = container(n)
        ulimit = docker("exec", c, "sh", "-c", "ulimit -l").stdout.strip()
        want = "unlimited" if MEMLOCK == "-1" else str(int(MEMLOCK) // 1024)
        check(ulimit == want, f"cluster: node {n} memlock ulimit {ulimit} (KiB)")
    lead = wait_leaders(list(NODES))
    check(True, f"cluster: leaders per shard {lead}")
    with urllib.request.urlopen(f"http://{admin_addr(1)}/", timeout=5) as resp:
        check(resp.status == 200 and "<html" in resp.read().decode().lower(),
              f"cluster: dashboard on http://{admin_addr(1)}/")
    status = tinker("cluster", "status", admin=admin_addr(2))
    check(status.returncode == 0 and "raft mode, 3 nodes" in status.stdout,
          "cluster: tinker cluster status through a published admin port")

    acked = {}
    # Write through node 1, read through node 3 (linearizable on a replica).
    out = tinker("set", "compose:greeting", "hello", addr=client_addr(1))
    check(out.returncode == 0, "cluster: tinker set through node 1")
    out = tinker("get", "compose:greeting", addr=client_addr(3))
    check(out.stdout.strip() == "hello", "cluster: tinker get through node 3 sees it at once")
    acked["compose:greeting"] = "hello"
    # The Redis protocol on every node: write through node 2, read through 1 and 3.
    check(rclient(resp_port(2)).set("compose:redis", "via-resp") is True,
          "cluster: redis SET through node 2")
    for n in (1, 3):
        check(rclient(resp_port(n)).get("compose:redis") == "via-resp",
              f"cluster: redis GET through node {n} sees it at once")
    check(rclient(resp_port(3)).incrby("compose:counter", 5) == 5
          and rclient(resp_port(1)).incrby("compose:counter", 5) == 10,
          "cluster: redis INCRBY through nodes 3 and 1 (applied once, in order)")
    acked["compose:redis"] = "via-resp"
    acked["compose:counter"] = "10"
    for i in range(30):
        out = tinker("set", f"rw:{i}", f"x{i}", addr=client_addr(1))
        if out.returncode != 0:
            raise Failure(f"write rw:{i} through node 1 failed: {out.stdout}{out.stderr}")
        acked[f"rw:{i}"] = f"x{i}"
        out = tinker("get", f"rw:{i}", addr=client_addr(3))
        if out.stdout.strip() != f"x{i}":
            raise Failure(f"read through node 3 of rw:{i} written through node 1 missed it: {out.stdout}")
    check(True, "cluster: 30 writes through node 1, each read at once through node 3")

    # Kill the leader of shard 0 under load.
    victim = leaders()[0]
    others = [n for n in NODES if n != victim]
    load = Load("kill", others, max_writes=500, max_seconds=40).start()
    time.sleep(2)
    t_kill = time.monotonic()
    docker("kill", container(victim))
    log(f"killed node {victim} (leader of shard 0)")
    new = wait_leaders(others, timeout=30)
    log(f"new leaders {new} after {time.monotonic() - t_kill:.1f}s")
    time.sleep(3)
    after = load.acked_after(t_kill)
    check(after > 20, f"cluster: writes go on through nodes {others} after the kill ({after} acked since)")
    t_restart = time.monotonic()
    docker("start", container(victim))
    wait_healthy(container(victim))
    load.stop()
    log(f"node {victim} restarted and healthy in {time.monotonic() - t_restart:.1f}s; load: "
        f"{len(load.acked)} acked, {load.errors} errors")
    acked.update(load.acked)
    took = wait_caught_up(victim)
    check(True, f"cluster: node {victim} lag 0 on every shard's leader {took:.1f}s after healthy")
    verify(acked, [victim], f"node {victim} caught up after docker kill + docker start")
    wait_leaders(list(NODES))

    # Partition: disconnect a node (a shard leader) from the network under load.
    victim = leaders()[1]
    others = [n for n in NODES if n != victim]
    net = f"{PROJECT}_tinkerdb"
    c = container(victim)
    ip = inspect(c, "{{(index .NetworkSettings.Networks \"" + net + "\").IPAddress}}")
    load = Load("part", others, max_writes=500, max_seconds=40).start()
    time.sleep(2)
    t_cut = time.monotonic()
    docker("network", "disconnect", net, c)
    log(f"partitioned node {victim} ({ip}, leader of shard 1)")
    wait_leaders(others, timeout=30)
    log(f"majority {others} elected leaders for every shard in {time.monotonic() - t_cut:.1f}s")
    # Inside the isolated container (loopback only): no write, no linearizable read.
    t = time.monotonic()
    w = docker("exec", c, "tinker", "--timeout-ms", "8000", "set", "part:isolated", "no", check_rc=False, timeout=30)
    check(w.returncode != 0, f"cluster: the isolated node refuses a write in {time.monotonic() - t:.1f}s "
          f"(exit {w.returncode}: {(w.stdout + w.stderr).strip()[:120]})")
    t = time.monotonic()
    rd = docker("exec", c, "tinker", "--timeout-ms", "8000", "get", "compose:greeting", check_rc=False, timeout=30)
    check(rd.returncode == 2, f"cluster: the isolated node serves no linearizable read in {time.monotonic() - t:.1f}s "
          f"(exit {rd.returncode}: {(rd.stdout + rd.stderr).strip()[:120]})")
    after = load.acked_after(t_cut)
    check(after > 20, f"cluster: the majority goes on writing during the partition ({after} acked since)")
    docker("network", "connect", "--ip", ip, net, c)
    log(f"reconnected node {victim}")
    load.stop()
    log(f"load: {len(load.acked)} acked, {load.errors} errors")
    acked.update(load.acked)
    wait_healthy(c)
    took = wait_caught_up(victim)
    check(True, f"cluster: node {victim} lag 0 on every shard's leader {took:.1f}s after reconnect")
    verify(acked, list(NODES), "after the partition heals")
    wait_leaders(list(NODES))

    # Pause a leader briefly, then unpause.
    victim = leaders()[0]
    others = [n for n in NODES if n != victim]
    load = Load("pause", others, max_writes=400, max_seconds=30).start()
    time.sleep(1)
    t_pause = time.monotonic()
    docker("pause", container(victim))
    t_paused = time.monotonic()
    log(f"paused node {victim} (leader of shard 0; docker pause took {t_paused - t_pause:.1f}s)")
    time.sleep(4)
    t_unpause = time.monotonic()
    during = load.acked_after(t_paused)
    check(during > 10, f"cluster: writes go on while node {victim} is paused ({during} acked in {t_unpause - t_paused:.1f}s)")
    docker("unpause", container(victim))
    t_unpaused = time.monotonic()
    log(f"unpaused node {victim} ({t_unpaused - t_paused:.1f}s after the pause took effect)")
    time.sleep(2)
    after = load.acked_after(t_unpaused)
    load.stop()
    log(f"load: {len(load.acked)} acked, {load.errors} errors")
    check(after > 0 or len(load.acked) + load.errors >= load.max_writes,
          f"cluster: writes go on after node {victim} is unpaused ({after} acked since)")
    acked.update(load.acked)
    took = wait_caught_up(victim)
    check(True, f"cluster: node {victim} lag 0 on every shard's leader {took:.1f}s after unpause")
    verify(acked, list(NODES), f"after pause/unpause of node {victim}")

    # down (no -v) then up: the volumes keep the data.
    ids = {n: container(n) for n in NODES}
    t = time.monotonic()
    compose("stop", timeout=120)
    codes = {n: inspect(c, "{{.State.ExitCode}}") for n, c in ids.items()}
    check(all(code == "0" for code in codes.values()),
          f"cluster: compose stop: every node exits 0 (SIGTERM, hand-off) in {time.monotonic() - t:.1f}s {codes}")
    compose("down", timeout=120)
    took = compose_up()
    log(f"compose up again in {took:.1f}s")
    wait_leaders(list(NODES))
    verify(acked, list(NODES), "after down + up (named volumes)")


def main():
    global COMPOSE_WAIT
    COMPOSE_WAIT = COMPOSE + (["up", "--wait"] if COMPOSE[:2] == ["docker", "compose"] else ["up", "(then polling health)"])
    only = os.environ.get("ONLY", "")
    try:
        if only in ("", "image"):
            log("== image ==")
            t = time.monotonic()
            test_image()
            log(f"== image: passed in {time.monotonic() - t:.1f}s ==")
        if only in ("", "compose"):
            log("== compose cluster ==")
            t = time.monotonic()
            try:
                test_compose()
            except Exception:
                for n in NODES:
                    try:
                        c = container(n)
                        out = docker("logs", "--tail", "15", c, check_rc=False)
                        log(f"node {n} ({inspect(c, '{{.State.Status}}')}), last log lines:\n"
                            f"{out.stdout}{out.stderr}")
                    except Exception as err:  # noqa: BLE001 -- diagnostics only
                        log(f"node {n}: no logs ({err})")
                raise
            log(f"== compose cluster: passed in {time.monotonic() - t:.1f}s ==")
    except Failure as err:
        log(f"FAIL: {err}")
        return 1
    except Exception:  # noqa: BLE001 -- an unexpected error is a failure too
        log(f"FAIL: unexpected error:\n{traceback.format_exc()}")
        return 1
    if FAILURES:
        log(f"{len(FAILURES)} check(s) failed: " + "; ".join(FAILURES))
        return 1
    log("all docker tests passed")
    return 0


COMPOSE_WAIT = []

if __name__ == "__main__":
    sys.exit(main())
