#!/usr/bin/env python3
"""Tests of ansible/ (the tinkerdb role, site.yml, rolling-restart.yml,
upgrade.yml) on three systemd containers standing in for VMs.

Run through ansible/tests/run.sh, which makes the host image, copies the
binaries and cleans up. Every check prints one line; the first failure raises
and the process exits 1 (with the tail of the playbook output that failed).
Environment (set by run.sh): HOST_IMAGE, TINKERDB_ANSIBLE_PREFIX, SUBNET,
PORT_PREFIX, WORK (a scratch directory), TINKERDB_ANSIBLE_BIN (the copied
tinkerdb and tinker).
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE_DIR = os.path.join(ROOT, "ansible")
INVENTORY = os.path.join(ANSIBLE_DIR, "inventories/test/hosts.yml")
IMAGE = os.environ["HOST_IMAGE"]
PREFIX = os.environ.get("TINKERDB_ANSIBLE_PREFIX", "tdbans")
SUBNET = os.environ.get("SUBNET", "172.31.237")
PORT_PREFIX = os.environ.get("PORT_PREFIX", "3")
WORK = os.environ["WORK"]
BIN = os.environ["TINKERDB_ANSIBLE_BIN"]
TINKER = os.path.join(BIN, "tinker")
NETWORK = f"{PREFIX}-net"
NODES = (1, 2, 3)
SECCOMP = os.path.join(ROOT, "docker/seccomp.json")
T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)
    log(f"ok: {msg}")


def sh(*args, check_rc=True, timeout=120, env=None, cwd=None):
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd)
    if check_rc and proc.returncode != 0:
        raise Failure(f"command failed ({proc.returncode}): {' '.join(args)}\n"
                      f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc


def docker(*args, **kw):
    return sh("docker", *args, **kw)


def container(n):
    return f"{PREFIX}-node{n}"


def dexec(n, *args, **kw):
    return docker("exec", container(n), *args, **kw)


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


def client_addr(n):
    return f"127.0.0.1:{PORT_PREFIX}{n}379"


def tinker(*args, addr, timeout=30):
    return sh(TINKER, "--addr", addr, *args, check_rc=False, timeout=timeout)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------ the hosts --

RUN_MODE = []


def start_hosts():
    docker("network", "create", "--subnet", f"{SUBNET}.0/24",
           "--label", f"tinkerdb-ansible-test={PREFIX}", NETWORK)
    # systemd as PID 1: /run and /run/lock on tmpfs, the host's cgroup tree
    # (cgroup v1 or v2; with cgroupns=host) writable. --privileged gives every
    # capability; an engine that lacks one itself (here: a daemon without
    # CAP_SYS_RESOURCE) cannot start a privileged container, so then the
    # containers get every capability but that one, and the project's
    # seccomp profile (Docker's default plus io_uring).
    common = ["--detach", "--tmpfs", "/run", "--tmpfs", "/run/lock",
              "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
              "--label", f"tinkerdb-ansible-test={PREFIX}", "--network", NETWORK,
              "--stop-timeout", "20"]
    modes = [("privileged", ["--privileged"]),
             ("all capabilities but SYS_RESOURCE, seccomp docker/seccomp.json",
              ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
               "--security-opt", f"seccomp={SECCOMP}"])]
    for n in NODES:
        name = container(n)
        node_args = ["--name", name, "--hostname", f"node{n}", "--network-alias", f"node{n}",
                     "--ip", f"{SUBNET}.{10 + n}", "-p", f"{client_addr(n)}:7379",
                     # The data directory on a volume (not the overlay), removed with the container.
                     "-v", "/var/lib/tinkerdb"]
        for label, extra in (modes if not RUN_MODE else [m for m in modes if m[0] == RUN_MODE[0]]):
            proc = docker("run", *common, *node_args, *extra, IMAGE, check_rc=False)
            if proc.returncode == 0:
                if not RUN_MODE:
                    RUN_MODE.append(label)
                    log(f"info: host containers run with: {label}")
                break
            docker("rm", "-f", "-v", name, check_rc=False)
            why = proc.stderr.strip().splitlines()[0].replace("docker: Error response from daemon: ", "")
            log(f"info: {label} failed: {why[:200]}")
        else:
            raise Failure(f"cannot start {name}")

    def booted(n):
        out = dexec(n, "systemctl", "is-system-running", check_rc=False).stdout.strip()
        if out == "degraded":
            failed = dexec(n, "systemctl", "--failed", "--no-legend", check_rc=False).stdout
            raise Failure(f"node{n}: systemd degraded: {failed}")
        return out == "running"

    start = time.monotonic()
    for n in NODES:
        wait_for(f"systemd in node{n}", lambda n=n: booted(n), timeout=60)
    check(True, f"hosts: 3 systemd containers booted in {time.monotonic() - start:.1f}s ({IMAGE})")


# --------------------------------------------------------------- ansible --

RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")
RESULT = re.compile(r"^(ok|changed|failed|fatal|skipping): \[([^\]\s]+)")


def playbook(name, *extra, timeout=420):
    """Runs a playbook from ansible/ with the test inventory; returns
    (recap {host: (ok, changed, unreachable, failed)}, output, seconds)."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ANSIBLE_DIR, "ansible.cfg"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", PYTHONUNBUFFERED="1")
    start = time.monotonic()
    args = ["ansible-playbook", "-i", INVENTORY, name, *extra]
    proc = sh(*args, check_rc=False, timeout=timeout, env=env, cwd=ANSIBLE_DIR)
    took = time.monotonic() - start
    out = proc.stdout + proc.stderr
    path = os.path.join(WORK, f"{name}.{int(time.time() * 1000)}.log")
    with open(path, "w") as f:
        f.write(out)
    if proc.returncode != 0:
        raise Failure(f"ansible-playbook {name} {' '.join(extra)} failed ({proc.returncode}) "
                      f"after {took:.0f}s:\n{out[-6000:]}")
    recap = {}
    for line in out.splitlines():
        m = RECAP.match(line)
        if m:
            recap[m.group(1)] = tuple(int(m.group(i)) for i in range(2, 6))
    if sorted(recap) != ["node1", "node2", "node3"]:
        raise Failure(f"{name}: no play recap for the 3 hosts:\n{out[-3000:]}")
    return recap, out, took


def task_blocks(out, task):
    """For each 'TASK [... task]' header of the output, in order: the hosts of
    its result lines (delegated results count for the host they ran for)."""
    blocks, current = [], None
    for line in out.splitlines():
        if line.startswith("TASK [") or line.startswith("PLAY [") or line.startswith("RUNNING HANDLER ["):
            current = None
            if line.startswith("TASK [") and line.split("]")[0].endswith(task):
                current = []
                blocks.append(current)
            continue
        m = RESULT.match(line)
        if current is not None and m and m.group(1) != "skipping":
            if m.group(2) not in current:
                current.append(m.group(2))
    return blocks


def sequence(out, tasks):
    """(task, host) pairs in output order, for the given task names."""
    seq, current = [], None
    for line in out.splitlines():
        if line.startswith(("TASK [", "PLAY [", "RUNNING HANDLER [")):
            current = None
            for t in tasks:
                if line.startswith("TASK [") and line.split("]")[0].endswith(t):
                    current = t
            continue
        m = RESULT.match(line)
        if current and m and m.group(1) != "skipping":
            pair = (current, m.group(2))
            if not seq or seq[-1] != pair:
                seq.append(pair)
    return seq


WAIT_CLUSTER = "Wait until every node sees a healthy, caught-up cluster"


def check_serial(out, what):
    """With serial: 1, each node is restarted in its own batch, node1, node2,
    node3, and the cluster (that node included) is healthy and caught up
    before the next node is restarted."""
    restarts = task_blocks(out, "Restart the node")
    check(restarts == [["node1"], ["node2"], ["node3"]],
          f"{what}: restarts were one node per batch, in order: {restarts}")
    seq = sequence(out, ["Restart the node", WAIT_CLUSTER])
    at = [i for i, (task, _) in enumerate(seq) if task == "Restart the node"]
    ok = len(at) == 3 and all(
        i + 1 < len(seq) and seq[i + 1] == (WAIT_CLUSTER, seq[i][1]) and (k == 2 or at[k + 1] > i + 1)
        for k, i in enumerate(at))
    check(ok, f"{what}: each node caught up (cluster check) before the next restart: "
              f"{[f'{t.split()[0]}:{h}' for t, h in seq]}")


# ---------------------------------------------------------- node state --


def cluster_view(n):
    out = dexec(n, "tinker", "cluster", "status", "--json", check_rc=False, timeout=30)
    if out.returncode != 0:
        raise Failure(f"node{n}: tinker cluster status: {out.stdout}{out.stderr}")
    return json.loads(out.stdout)


def main_pid(n):
    return int(dexec(n, "systemctl", "show", "-p", "MainPID", "--value", "tinkerdb").stdout.strip())


def start_monotonic(n):
    return int(dexec(n, "systemctl", "show", "-p", "ExecMainStartTimestampMonotonic", "--value",
                     "tinkerdb").stdout.strip())


def running_sha256(n):
    return dexec(n, "sh", "-c", f"sha256sum /proc/{main_pid(n)}/exe").stdout.split()[0]


def check_graceful(what):
    """Every stop so far was graceful: SIGTERM, exit 0 well within
    TimeoutStopSec, never killed."""
    for n in NODES:
        journal = dexec(n, "journalctl", "-u", "tinkerdb", "--no-pager", "-o", "cat").stdout
        stops = journal.count("Stopping tinkerdb.service")
        clean = journal.count("tinkerdb.service: Deactivated successfully")
        bad = [line for line in journal.splitlines()
               if "tinkerdb.service: Failed" in line or "timed out" in line or "Killing process" in line
               or "code=exited, status=" in line]
        check(stops >= 1 and clean == stops and not bad,
              f"{what}: node{n} stopped {stops}x, each gracefully (exit 0, no SIGKILL){' ' + str(bad[:2]) if bad else ''}")


def check_healthy(what):
    for n in NODES:
        ping = dexec(n, "tinker", "ping", check_rc=False)
        check(ping.returncode == 0, f"{what}: node{n} answers tinker ping ({ping.stdout.strip()})")
    view = cluster_view(1)
    nodes = {x["id"]: (x["state"], x["role"]) for x in view["nodes"]}
    leaders = {s["id"]: s["leader"] for s in view["shards"]}
    check(view["mode"] == "raft" and nodes == {1: ("up", "voter"), 2: ("up", "voter"), 3: ("up", "voter")}
          and leaders and None not in leaders.values(),
          f"{what}: 3 voters up, every shard led: leaders {leaders}")


# ---------------------------------------------------------------- writer --


class Writer:
    """Writes keys through the nodes' published client ports with the `tinker`
    CLI, round robin, in a thread; on an error it tries the next node (the
    write is retried as is, same key and value). Only acknowledged writes are
    recorded. Bounded in count and time."""

    def __init__(self, phase, max_writes=4000, max_seconds=240, pace=0.005):
        self.phase = phase
        self.max_writes, self.max_seconds, self.pace = max_writes, max_seconds, pace
        self.acked = {}
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
            key, value = f"{self.phase}:{i}", f"v{i}"
            for attempt in range(6):
                n = NODES[(i + attempt) % len(NODES)]
                try:
                    out = tinker("--timeout-ms", "6000", "set", key, value, addr=client_addr(n), timeout=15)
                    if out.returncode == 0:
                        self.acked[key] = value
                        break
                except Exception:  # noqa: BLE001 -- an unacknowledged write
                    pass
                self.errors += 1
                time.sleep(0.2)
            i += 1
            time.sleep(self.pace)

    def stop(self):
        self.stop_flag.set()
        self.thread.join(60)
        return self


def verify(acked, what, timeout=60):
    """Every acknowledged write is readable (linearizable reads) through each node."""
    keys = sorted(acked)
    for n in NODES:
        def all_there(n=n):
            for i in range(0, len(keys), 200):
                chunk = keys[i:i + 200]
                out = tinker("--timeout-ms", "10000", "mget", *chunk, addr=client_addr(n))
                if out.returncode != 0:
                    raise Failure(f"node{n}: mget failed: {(out.stdout + out.stderr).strip()[:200]}")
                got = out.stdout.splitlines()
                missing = [k for k, v in zip(chunk, got) if v != acked[k]]
                if missing or len(got) != len(chunk):
                    raise Failure(f"node{n}: {len(missing)} acked writes missing, e.g. {missing[:3]}")
            return True
        wait_for(f"{what} on node{n}", all_there, timeout)
    check(True, f"{what}: all {len(keys)} acknowledged writes readable (linearizable) on node1..3")


# ----------------------------------------------------------------- tests --


def test_site():
    recap, out, took = playbook("site.yml")
    check(all(r[3] == 0 and r[2] == 0 for r in recap.values()) and all(r[1] > 0 for r in recap.values()),
          f"site.yml: new 3-node cluster deployed in {took:.1f}s (changed per host "
          f"{ {h: r[1] for h, r in recap.items()} })")
    starts = task_blocks(out, "Start the service and enable it at boot")
    check(len(starts) == 1 and sorted(starts[0]) == ["node1", "node2", "node3"],
          f"site.yml: all nodes started by one task, in parallel ({starts})")
    check_healthy("site.yml")
    for n in NODES:
        user = dexec(n, "stat", "-c", "%U", f"/proc/{main_pid(n)}").stdout.strip()
        check(user == "tinkerdb", f"site.yml: node{n} runs as user {user}")
    unit = dexec(1, "systemctl", "show", "tinkerdb", "-p", "LimitMEMLOCK", "-p", "LimitNOFILE",
                 "-p", "Restart", "-p", "KillSignal", "-p", "TimeoutStopUSec", "-p", "UnitFileState").stdout
    props = dict(line.split("=", 1) for line in unit.split())
    check(props["Restart"] == "on-failure" and props["KillSignal"] == "15"
          and props["TimeoutStopUSec"] == "15s" and props["UnitFileState"] == "enabled",
          f"site.yml: unit Restart={props['Restart']} KillSignal={props['KillSignal']} "
          f"TimeoutStopSec={props['TimeoutStopUSec']} ({props['UnitFileState']})")
    limits = dexec(1, "cat", f"/proc/{main_pid(1)}/limits").stdout
    memlock = next(line for line in limits.splitlines() if line.startswith("Max locked memory")).split()[3:5]
    nofile = next(line for line in limits.splitlines() if line.startswith("Max open files")).split()[3:5]
    engine_hard = docker("run", "--rm", "--entrypoint", "sh", IMAGE, "-c", "ulimit -Hl").stdout.strip()
    if memlock == ["unlimited", "unlimited"]:
        check(True, "memlock: LimitMEMLOCK=infinity took effect: the node runs with unlimited locked memory")
    else:
        # systemd cannot raise a hard limit without CAP_SYS_RESOURCE: it sets
        # the closest it can (its own hard limit) and starts the unit anyway.
        check(props["LimitMEMLOCK"] in ("infinity", "18446744073709551615") and RUN_MODE[0] != "privileged"
              and int(memlock[0]) >= 512 * 1024,
              f"memlock: unit asks LimitMEMLOCK={props['LimitMEMLOCK']}; without CAP_SYS_RESOURCE "
              f"systemd capped it at the container's hard limit: soft/hard {memlock} bytes "
              f"(engine default {engine_hard} KiB), enough for the node (>= 512 KiB)")
    log(f"info: node1 limits: memlock {memlock}, nofile {nofile} (unit asks LimitNOFILE={props['LimitNOFILE']})")


def test_idempotent():
    recap, _, took = playbook("site.yml")
    changed = {h: r[1] for h, r in recap.items()}
    check(all(c == 0 for c in changed.values()), f"site.yml again: changed=0 on every host in {took:.1f}s ({changed})")


def test_rolling_restart():
    pids = {n: main_pid(n) for n in NODES}
    writer = Writer("rolling").start()
    time.sleep(2)
    before = len(writer.acked)
    recap, out, took = playbook("rolling-restart.yml")
    after = len(writer.acked)
    time.sleep(1)
    writer.stop()
    check(all(r[3] == 0 and r[1] >= 1 for r in recap.values()),
          f"rolling-restart.yml: passed in {took:.1f}s")
    new = {n: main_pid(n) for n in NODES}
    check(all(new[n] != pids[n] for n in NODES), f"rolling restart: every node restarted (pids {pids} -> {new})")
    check_serial(out, "rolling restart")
    starts = [start_monotonic(n) for n in NODES]
    check(starts == sorted(starts) and min(b - a for a, b in zip(starts, starts[1:])) > 1_000_000,
          f"rolling restart: nodes started at distinct times, in order "
          f"(+{(starts[1] - starts[0]) / 1e6:.1f}s, +{(starts[2] - starts[1]) / 1e6:.1f}s)")
    check(after - before > 20, f"rolling restart: the writer went on during the play ({after - before} writes "
          f"acknowledged during it, {writer.errors} failed attempts, retried)")
    check_healthy("after the rolling restart")
    check_graceful("rolling restart")
    verify(writer.acked, "rolling restart")
    return writer.acked


def test_config_change():
    """A config change through site.yml: the changed, running nodes are
    restarted one at a time. (Left in place: upgrade.yml does not template
    the config, and nothing after it runs site.yml.)"""
    pids = {n: main_pid(n) for n in NODES}
    recap, out, took = playbook("site.yml", "-e", "tinkerdb_flush_interval_ms=20")
    check(all(r[3] == 0 for r in recap.values()), f"site.yml with a config change: passed in {took:.1f}s")
    new = {n: main_pid(n) for n in NODES}
    check(all(new[n] != pids[n] for n in NODES), "config change: every node restarted onto it")
    check_serial(out, "config change")
    conf = dexec(2, "cat", "/etc/tinkerdb/tinkerdb.toml").stdout
    check("flush_interval_ms = 20" in conf, "config change: the config file has it")


def test_refuses_unhealthy():
    """A node down: rolling-restart.yml touches nothing and says why; site.yml
    starts the stopped node again."""
    dexec(3, "systemctl", "stop", "tinkerdb")
    pids = {n: main_pid(n) for n in (1, 2)}
    try:
        playbook("rolling-restart.yml", "-e", "tinkerdb_wait_retries=5", "-e", "tinkerdb_wait_delay=1",
                 timeout=120)
        raise Failure("rolling-restart.yml with node3 stopped did not fail")
    except Failure as err:
        text = str(err)
        if "did not fail" in text:
            raise
    check(all(main_pid(n) == pids[n] for n in (1, 2)),
          "node3 stopped: rolling-restart.yml fails its health check before touching any node")
    check("node 3 is down" in text, "node3 stopped: the failure says which node is down: "
          + (re.search(r"node 3 is down[^;'\"]*", text).group(0) if "node 3 is down" in text else text[-400:]))
    recap, _, took = playbook("site.yml")
    check(recap["node3"][1] >= 1 and recap["node1"][1] == 0,
          f"site.yml starts the stopped node again ({took:.1f}s; changed node1..3: "
          f"{[recap[h][1] for h in ('node1', 'node2', 'node3')]})")
    check_healthy("after site.yml")


def test_upgrade(acked):
    old = os.path.join(BIN, "tinkerdb")
    old_sum = sha256(old)
    new = os.path.join(WORK, "tinkerdb-next")
    shutil.copyfile(old, new)
    with open(new, "ab") as f:
        f.write(b"\0tinkerdb-ansible-test upgrade marker\n")
    os.chmod(new, 0o755)
    new_sum = sha256(new)
    for n in NODES:
        check(running_sha256(n) == old_sum, f"upgrade: before, node{n} runs the old binary {old_sum[:12]}")
    # A wrong checksum: nothing is touched.
    env_args = ["-e", f"tinkerdb_binary_src={new}"]
    try:
        playbook("upgrade.yml", *env_args, "-e", f"tinkerdb_binary_sha256={'0' * 64}", timeout=120)
        raise Failure("upgrade.yml with a wrong checksum did not fail")
    except Failure as err:
        if "did not fail" in str(err):
            raise
    check(all(running_sha256(n) == old_sum and
              dexec(n, "sha256sum", "/usr/local/bin/tinkerdb").stdout.split()[0] == old_sum for n in NODES),
          "upgrade: a wrong checksum fails the play before any node is touched")
    writer = Writer("upgrade", max_seconds=200).start()
    recap, out, took = playbook("upgrade.yml", *env_args, "-e", f"tinkerdb_binary_sha256={new_sum}")
    writer.stop()
    check(all(r[3] == 0 for r in recap.values()), f"upgrade.yml: passed in {took:.1f}s")
    for n in NODES:
        on_disk = dexec(n, "sha256sum", "/usr/local/bin/tinkerdb").stdout.split()[0]
        running = running_sha256(n)
        check(on_disk == new_sum and running == new_sum,
              f"upgrade: node{n} has and runs the new binary {new_sum[:12]}")
    check_serial(out, "upgrade")
    check_healthy("after the upgrade")
    verify({**acked, **writer.acked}, "upgrade (and the rolling restart's)")
    recap, _, took = playbook("upgrade.yml", *env_args, "-e", f"tinkerdb_binary_sha256={new_sum}")
    changed = {h: r[1] for h, r in recap.items()}
    check(all(c == 0 for c in changed.values()), f"upgrade.yml again: nothing to do, changed=0 ({changed}) in {took:.1f}s")


def main():
    failed = False
    try:
        start_hosts()
        test_site()
        test_idempotent()
        acked = test_rolling_restart()
        test_refuses_unhealthy()
        test_config_change()
        test_upgrade(acked)
    except Exception as err:  # noqa: BLE001 -- report, then exit 1
        failed = True
        log(f"FAIL: {err}")
        if not isinstance(err, Failure):
            traceback.print_exc()
        for n in NODES:
            logs = dexec(n, "journalctl", "-u", "tinkerdb", "--no-pager", "-n", "15", check_rc=False)
            log(f"node{n} journal (tail):\n{logs.stdout}{logs.stderr}")
    log(f"{'FAILED' if failed else 'passed'} in {time.monotonic() - T0:.1f}s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
