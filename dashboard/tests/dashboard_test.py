#!/usr/bin/env python3
"""Browser test of the TinkerDB dashboard.

Starts a real node (durability none, every port 0), puts it under load with
redis-benchmark on its Redis port, opens the dashboard in headless Chromium
(Debian's /usr/bin/chromium driven by PyPI's playwright, sync API), and checks
that the live charts move, the cards render, the key console works end to
end, and that the dashboard shows the outage banner when the node goes away
and recovers when it comes back. Saves screenshots to output/.

    python3 -m pip install -r dashboard/tests/requirements.txt
    TINKERDB_BIN=target/debug/tinkerdb python3 dashboard/tests/dashboard_test.py

The playwright wheel carries its own driver; the test uses Debian's Chromium
and downloads no browser (never run `playwright install` for it).

Environment: TINKERDB_BIN (default ../../target/debug/tinkerdb, relative to
this directory; a relative TINKERDB_BIN is taken relative to the current
directory), CHROMIUM_BIN (default /usr/bin/chromium).

Makes 27 checks, prints "ok N - ..." for each one that passes and stops at the
first one that fails ("not ok N - ..." and the reason). Ends with a
"dashboard: N passed, N failed" line; exits 0 when every check passed, 1
otherwise. Every process it starts (nodes, redis-benchmark, the playwright
driver and Chromium) is stopped when it exits, whatever happens.

Waits poll with generous timeouts rather than sleeping for fixed times, so
that the test also passes on a busy machine.
"""

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import sync_playwright

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.abspath(os.environ.get("TINKERDB_BIN") or os.path.join(HERE, "../../target/debug/tinkerdb"))
CHROMIUM = os.environ.get("CHROMIUM_BIN") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OUTPUT = os.path.join(HERE, "output")
TOTAL_CHECKS = 27
OVERALL_TIMEOUT_S = 300  # the whole test; about 40 s on an idle machine
READY_TIMEOUT_S = 60  # a node printing its ready lines
HTTP_TIMEOUT_S = 15
TENANT = "default"
KEY = "browser-test-key"
VALUE = "hello from chromium"

STARTED = time.monotonic()


class TestFailure(Exception):
    pass


class State:
    nodes = []
    bench = None
    dirs = []
    page = None
    browser = None
    passed = 0
    finishing = False
    problems = []  # page errors and unexpected console errors
    allowed_console_errors = []  # regexes for errors expected in the current step


S = State()


def log(message):
    print(f"[{time.monotonic() - STARTED:5.1f} s] {message}", flush=True)


def _detail(detail):
    return detail() if callable(detail) else detail


def check(condition, what, detail=None):
    """One of the 27 checks: prints ok / not ok, raises on failure."""
    number = S.passed + 1
    if not condition:
        log(f"not ok {number} - {what}")
        failure = TestFailure(f"{what}: {_detail(detail)}" if detail is not None else what)
        failure.reported = True
        raise failure
    S.passed = number
    log(f"ok {number} - {what}")


def tail(text, lines=40):
    return "\n".join(text.split("\n")[-lines:])


def host_port(address):
    i = address.rfind(":")
    return address[:i].strip("[]"), address[i + 1 :]


# ------------------------------------------------------------------ processes


def descendants(root=None):
    """Pids of every live descendant of root (default: this process)."""
    root = os.getpid() if root is None else root
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 2 and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_descendants():
    """Last resort: SIGKILL everything this process started that still runs.
    Snapshots the whole tree first, so that no grandchild escapes by being
    reparented when its parent dies."""
    pids = descendants()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return pids


class Node:
    def __init__(self, child):
        self.child = child
        self.stdout = ""
        self.stderr = ""
        self.exited = None
        self.stopping = False
        self.lock = threading.Lock()
        self.version = self.clients = self.resp = self.admin = None

    def read_stdout(self):
        for line in self.child.stdout:
            with self.lock:
                self.stdout += line
        code = self.child.wait()
        self.exited = code
        if not self.stopping:
            log(f"node exited unexpectedly ({describe_exit(code)})")

    def read_stderr(self):
        for line in self.child.stderr:
            with self.lock:
                self.stderr += line
                if len(self.stderr) > 400_000:
                    self.stderr = self.stderr[-200_000:]


def describe_exit(code):
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def start_node(admin="127.0.0.1:0"):
    """Starts a node; returns once it printed its three ready lines."""
    data_dir = tempfile.mkdtemp(prefix="tinkerdb-dashboard-test-")
    S.dirs.append(data_dir)
    args = ["--data-dir", data_dir, "--listen", "127.0.0.1:0", "--resp-listen", "127.0.0.1:0",
            "--admin-listen", admin, "--durability", "none"]
    log(f"starting {BIN} {' '.join(args)}")
    try:
        child = subprocess.Popen([BIN, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1)
    except OSError as e:
        raise TestFailure(f"the node could not be started ({e}); build it with cargo build, or set TINKERDB_BIN")
    node = Node(child)
    S.nodes.append(node)
    threading.Thread(target=node.read_stdout, daemon=True).start()
    threading.Thread(target=node.read_stderr, daemon=True).start()

    def fail(why):
        with node.lock:
            out, err = node.stdout, node.stderr
        return TestFailure(f"the node {why}\n--- its stdout ---\n{out}\n--- its stderr (last lines) ---\n{tail(err)}")

    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        with node.lock:
            out = node.stdout
        ready = re.search(r"TinkerDB (\S+) ready: clients on (\S+)", out)
        resp = re.search(r"Redis protocol on (\S+)", out)
        admin_line = re.search(r"Admin API and dashboard on http://(\S+?)/?(\s|$)", out)
        if ready and resp and admin_line:
            node.version, node.clients = ready.group(1), ready.group(2)
            node.resp, node.admin = resp.group(1), admin_line.group(1)
            log(f"node {node.version} ready: clients {node.clients}, redis {node.resp}, admin http://{node.admin}/")
            return node
        if child.poll() is not None:
            time.sleep(0.2)  # let the reader threads collect the last output
            raise fail(f"exited ({describe_exit(child.returncode)}) before it was ready")
        if time.monotonic() > deadline:
            raise fail(f"did not print its ready lines within {READY_TIMEOUT_S} s")
        time.sleep(0.05)


def stop_process(child, grace_s=3.0):
    if child is None or child.poll() is not None:
        return
    try:
        child.terminate()
        child.wait(grace_s)
    except subprocess.TimeoutExpired:
        child.kill()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            pass
    except OSError:
        pass


def stop_node(node):
    node.stopping = True
    stop_process(node.child)


class Bench:
    def __init__(self, child):
        self.child = child
        self.stderr = ""

    def read_stderr(self):
        for line in self.child.stderr:
            self.stderr = (self.stderr + line)[-10_000:]


def start_benchmark(resp):
    host, port = host_port(resp)
    args = ["-h", host, "-p", port, "-t", "set,get", "-n", "100000000", "-c", "4", "-P", "4", "-r", "10000", "-q"]
    log(f"starting redis-benchmark {' '.join(args)}")
    try:
        child = subprocess.Popen(["redis-benchmark", *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, errors="replace")
    except OSError as e:
        raise TestFailure(f"could not start redis-benchmark ({e}); it comes with redis-tools")
    S.bench = Bench(child)
    threading.Thread(target=S.bench.read_stderr, daemon=True).start()
    return S.bench


# ------------------------------------------------------------------ HTTP

# Straight to the node, whatever http_proxy says.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def api(node, path, method="GET", data=None):
    """Returns (status, body): body is parsed JSON, or the text if it is not JSON."""
    request = urllib.request.Request(f"http://{node.admin}{path}", method=method, data=data)
    try:
        with _opener.open(request, timeout=HTTP_TIMEOUT_S) as res:
            status, raw = res.status, res.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = text
    return status, body


def key_path(tenant, key):
    return f"/v1/tenants/{urllib.parse.quote(tenant, safe='')}/keys/{urllib.parse.quote(key, safe='')}"


# ------------------------------------------------------------------ browser


def wait_for(expression, arg, timeout_s, what):
    """Polls a JS predicate in the page every 200 ms until it is truthy.
    `what` (a string or a function giving one) is the failure message."""
    try:
        return S.page.wait_for_function(expression, arg=arg, timeout=timeout_s * 1000, polling=200)
    except PlaywrightTimeoutError:
        raise TestFailure(f"{_detail(what)} (waited {timeout_s} s)")


@contextmanager
def checking(what):
    """A check that needs more than one step (typically a wait, then the
    check itself): a failure of any step is a failure of the check."""
    try:
        yield
    except TestFailure as e:
        if not getattr(e, "reported", False):
            log(f"not ok {S.passed + 1} - {what}")
            e = TestFailure(f"{what}: {e}")
            e.reported = True
        raise e
    except PlaywrightError as e:
        log(f"not ok {S.passed + 1} - {what}")
        failure = TestFailure(f"{what}: {e.message}")
        failure.reported = True
        raise failure


def check_wait(expression, arg, timeout_s, what, failure):
    """A check that passes once a JS predicate holds in the page."""
    with checking(what):
        wait_for(expression, arg, timeout_s, failure)
        check(True, what)


def tinker():
    return S.page.evaluate(
        """() => {
          const t = window.__tinker || {};
          return { samplesSeen: t.samplesSeen, points: t.points, lastSeq: t.lastSeq, lastOps: t.lastOps };
        }"""
    )


def tile_ops():
    text = S.page.text_content("#tile-ops") or ""
    digits = re.sub(r"[^0-9.]", "", text)
    try:
        return float(digits) if digits else 0.0
    except ValueError:
        return 0.0


def result_text():
    return S.page.text_content("#console-result") or ""


def safe_result_text():
    try:
        return result_text()
    except PlaywrightError as e:
        return f"(could not read #console-result: {e})"


def no_problems(where):
    check(not S.problems, f"no page errors or console errors {where}",
          lambda: "\n  " + "\n  ".join(S.problems))


def flush_events():
    # The sync API delivers page events while a call is in flight: one round
    # trip hands over those already sent.
    S.page.evaluate("() => 0")


def on_console(message):
    if message.type != "error":
        return
    location = message.location or {}
    text = f"{message.text} [{location.get('url') or 'no url'}]"
    if not any(r.search(text) for r in S.allowed_console_errors):
        S.problems.append(f"console error: {text}")


def on_page_error(error):
    S.problems.append(f"page error: {getattr(error, 'message', error)}")


def js_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v not in (float("inf"), float("-inf"))


# ------------------------------------------------------------------ the test


def run(pw):
    if not os.path.exists(BIN):
        raise TestFailure(f"no tinkerdb binary at {BIN}: build it (cargo build) or set TINKERDB_BIN")
    if not os.path.exists(CHROMIUM):
        raise TestFailure(f"no Chromium at {CHROMIUM}: apt-get install chromium, or set CHROMIUM_BIN")
    os.makedirs(OUTPUT, exist_ok=True)

    node = start_node()
    bench = start_benchmark(node.resp)

    browser = S.browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=60_000)
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = S.page = context.new_page()
    page.set_default_timeout(30_000)
    page.on("pageerror", on_page_error)
    page.on("console", on_console)

    url = f"http://{node.admin}/"
    log(f"opening {url}")
    response = page.goto(url, wait_until="load", timeout=60_000)
    check(response is not None and response.status == 200, "GET / answers 200",
          lambda: f"got {response and response.status}")
    check("TinkerDB" in page.title(), "the page is the TinkerDB dashboard", lambda: f"title {page.title()!r}")

    # --- header and cards
    check_wait("(v) => document.getElementById('node-version').textContent === `v${v}`", node.version, 30,
               f"the header shows version v{node.version}", f"the header never showed version v{node.version}")
    # A busy node may answer 503 for a while (a core did not answer in time):
    # ask again until it answers.
    deadline = time.monotonic() + 30
    while True:
        try:
            status, node_info = api(node, "/v1/node")
        except OSError as e:  # no answer within HTTP_TIMEOUT_S, say
            status, node_info = 0, str(e)
        if status == 200 and isinstance(node_info, dict) and isinstance(node_info.get("per_core"), list):
            break
        if time.monotonic() > deadline:
            raise TestFailure(f"GET /v1/node answered {status} for 30 s: {node_info!r:.300}")
        log(f"GET /v1/node answered {status}: {node_info!r:.200}; asking again")
        page.wait_for_timeout(500)
    cores = len(node_info["per_core"])
    check_wait("(n) => document.querySelectorAll('#cores tbody tr').length === n", cores, 30,
               f"the cores table has one row per core ({cores})", f"the cores table never showed {cores} rows")
    what = "the cluster card shows the node and mode standalone"
    with checking(what):
        wait_for("(addr) => document.getElementById('cluster').textContent.includes(addr)", node.clients, 30,
                 f"the cluster card never showed the node {node.clients}")
        mode = page.text_content("#cluster-mode")
        check(mode == "standalone", what, lambda: f"#cluster-mode says {mode!r}")
    check_wait("(t) => document.getElementById('tenants').textContent.includes(t)", TENANT, 30,
               f'the tenants card lists tenant "{TENANT}"', f"the tenants card never showed tenant {TENANT}")

    # --- live charts under load
    check_wait("() => window.__tinker && window.__tinker.points > 0 && document.querySelector('#chart-throughput canvas')",
               None, 40, "the throughput chart has data", "the throughput chart never got data")
    for chart in ["chart-latency", "chart-core-throughput", "chart-core-latency"]:
        check(page.query_selector(f"#{chart} canvas") is not None, f"#{chart} is drawn")
    core_series = page.eval_on_selector_all("#chart-core-throughput .u-legend .u-series", "(s) => s.length")
    check(core_series == cores + 1, "the per-core throughput chart has one series per core",
          lambda: f"legend has {core_series} entries (time + series), want {cores + 1}")

    with checking("the node ops/s tile stays above 0 under load"):
        wait_for("() => Number(document.getElementById('tile-ops').textContent.replace(/[^0-9.]/g, '')) > 0", None, 40,
                 lambda: "#tile-ops never showed more than 0 ops/s under redis-benchmark load (redis-benchmark "
                         f"{'exited, ' + describe_exit(bench.child.returncode) if bench.child.poll() is not None else 'running'}; "
                         f"stderr: {bench.stderr.strip()[-300:] or 'none'})")
    # Read the tile once a second, at least 4 times, until at least 2 new
    # samples arrived and the charts grew (a loaded machine may need longer).
    before = tinker()
    readings = []
    sampling_started = time.monotonic()
    while True:
        page.wait_for_timeout(1000)
        readings.append(tile_ops())
        after = tinker()
        if len(readings) >= 4 and after["samplesSeen"] >= before["samplesSeen"] + 2 and after["points"] > before["points"]:
            break
        if time.monotonic() - sampling_started > 30:
            break
    took = time.monotonic() - sampling_started
    log(f"#tile-ops read {', '.join(f'{r:,.0f}' for r in readings)} ops/s; samples {before['samplesSeen']} -> "
        f"{after['samplesSeen']}, points {before['points']} -> {after['points']} in {took:.1f} s")
    check(all(r > 0 for r in readings), "the node ops/s tile stays above 0 under load",
          lambda: ", ".join(str(r) for r in readings))
    check(after["samplesSeen"] >= before["samplesSeen"] + 2, "new samples keep arriving every second",
          lambda: f"{before['samplesSeen']} -> {after['samplesSeen']} in {took:.1f} s")
    check(after["points"] > before["points"], "the number of plotted points grows",
          lambda: f"{before['points']} -> {after['points']}")
    check(js_number(after["lastOps"]) and after["lastOps"] > 0, "the newest sample has node ops/s > 0",
          lambda: str(after["lastOps"]))
    flush_events()
    no_problems("while the charts run")

    # --- key console
    page.select_option("#console-tenant", TENANT)
    page.fill("#console-key", KEY)
    page.fill("#console-value", VALUE)
    page.fill("#console-ttl", "")
    page.click("#console-set")
    check_wait("() => /Stored/.test(document.getElementById('console-result').textContent)", None, 30,
               f"Set stored {TENANT}/{KEY}", lambda: f'Set did not report "Stored": {safe_result_text()}')

    page.fill("#console-value", "")
    page.click("#console-get")
    check_wait("(v) => document.getElementById('console-result').textContent.includes(v)", VALUE, 30,
               f'Get shows "{VALUE}" in #console-result',
               lambda: f'Get did not show "{VALUE}": {safe_result_text()}')

    status, body = api(node, key_path(TENANT, KEY))
    check(status == 200 and isinstance(body, dict) and body.get("value") == VALUE and body.get("encoding") == "utf8",
          "the HTTP API returns the value the console stored", lambda: json.dumps({"status": status, "body": body}))

    # A few more seconds of data make a more telling screenshot.
    wait_for("() => window.__tinker.points >= 12", None, 60, "the throughput chart stopped growing before 12 points")
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=os.path.join(OUTPUT, "dashboard.png"), full_page=True)
    log(f"screenshot saved to {os.path.join(OUTPUT, 'dashboard.png')}")

    page.fill("#console-key", "browser-test-")
    page.click("#console-scan")
    check_wait("(k) => [...document.querySelectorAll('#console-result .scan-keys button')].some((b) => b.textContent === k)",
               KEY, 30, f'Scan of prefix "browser-test-" lists {KEY}',
               lambda: f'Scan of prefix "browser-test-" did not list {KEY}: {safe_result_text()}')

    page.fill("#console-key", KEY)
    page.click("#console-delete")
    check_wait("() => /Deleted/.test(document.getElementById('console-result').textContent)", None, 30,
               f"Delete removed {KEY}", lambda: f'Delete did not report "Deleted": {safe_result_text()}')
    status, body = api(node, key_path(TENANT, KEY))
    check(status == 404 and isinstance(body, dict) and isinstance(body.get("error"), dict)
          and body["error"].get("code") == "key_not_found",
          "the HTTP API answers 404 key_not_found after Delete", lambda: json.dumps({"status": status, "body": body}))

    # The browser logs every 404 response as a console error: expected here.
    S.allowed_console_errors = [re.compile(rf"status of 404 .*/keys/{re.escape(KEY)}\]$")]
    page.click("#console-get")
    what = 'Get after Delete shows "Not found" with code key_not_found'
    with checking(what):
        wait_for("() => /Not found/.test(document.getElementById('console-result').textContent)", None, 30,
                 lambda: f'Get after Delete did not show "Not found": {safe_result_text()}')
        text = result_text()
        check("key_not_found" in text, what, lambda: f"#console-result says {text!r}")
    flush_events()
    S.allowed_console_errors = []
    no_problems("while using the key console")

    # --- outage: the banner shows, then clears when the node is back
    S.allowed_console_errors = [re.compile(r"Failed to load resource: net::ERR_")]
    log("stopping the node")
    stop_node(node)
    stop_process(bench.child, 1.0)
    what = "with the node down, the banner shows and the status says Offline"
    with checking(what):
        wait_for("() => !document.getElementById('banner').hidden", None, 30, "no banner appeared after the node stopped")
        status_text = page.text_content("#live-status") or ""
        check("Offline" in status_text, what, lambda: f"#live-status says {status_text!r}")
    page.evaluate("() => window.scrollTo(0, 0)")  # the banner is at the top
    page.screenshot(path=os.path.join(OUTPUT, "dashboard-offline.png"))
    # Evidence that the dashboard starts its live series over for the
    # restarted node (whose sample numbers start from 1 again), however long
    # the restart takes: the newest sequence number it shows only ever grows
    # otherwise, and so does the number of plotted points, which until then
    # is at least the number of samples seen since the page loaded.
    at_outage = tinker()
    log(f"the dashboard's last sample from the first node: seq {at_outage['lastSeq']}, "
        f"samples seen {at_outage['samplesSeen']}, points {at_outage['points']}")

    second = start_node(admin=node.admin)
    restarted_at = time.monotonic()
    what = "after the node restarts the banner clears and the charts resume"
    with checking(what):
        wait_for("""(old) => {
                   const t = window.__tinker;
                   return document.getElementById('banner').hidden && t.lastSeq !== null
                     && t.samplesSeen > old.samplesSeen && (t.lastSeq < old.lastSeq || t.points < t.samplesSeen);
                 }""", at_outage, 60,
                 "the dashboard did not recover (banner gone, live series restarted) after the node came back")
        recovered = tinker()
        log(f"recovered {time.monotonic() - restarted_at:.1f} s after the restart: seq {recovered['lastSeq']}, "
            f"samples seen {recovered['samplesSeen']}, points {recovered['points']}")
        wait_for("(n) => window.__tinker.samplesSeen > n", recovered["samplesSeen"], 30,
                 lambda: f"no new sample arrived after the recovery (samples seen {recovered['samplesSeen']} -> "
                         f"{tinker()['samplesSeen']})")
        later = tinker()
        check(later["samplesSeen"] > recovered["samplesSeen"], what,
              lambda: f"{recovered['samplesSeen']} -> {later['samplesSeen']}")
    flush_events()
    S.allowed_console_errors = []
    no_problems("after the outage")
    stop_node(second)

    if S.passed != TOTAL_CHECKS:
        raise TestFailure(f"the test ran {S.passed} checks, it should make {TOTAL_CHECKS}")


# ------------------------------------------------------------------ run


def cleanup_processes():
    if S.bench:
        stop_process(S.bench.child, 0.5)
    for node in S.nodes:
        node.stopping = True
        stop_process(node.child)


def remove_dirs():
    for d in S.dirs:
        shutil.rmtree(d, ignore_errors=True)


def summary(failed):
    line = f"\ndashboard: {S.passed} passed, {failed} failed"
    if failed and S.passed + failed < TOTAL_CHECKS:
        line += f", {TOTAL_CHECKS - S.passed - failed} not run"
    print(line, flush=True)


def hard_exit(reason):
    """For the overall timeout and signals: no Playwright calls (they may be
    what hangs), just kill every process this test started, and exit."""
    if S.finishing:
        return
    S.finishing = True
    print(f"\nFAIL: {reason}", file=sys.stderr, flush=True)
    if S.problems:
        print("page problems so far:\n  " + "\n  ".join(S.problems), file=sys.stderr, flush=True)
    for node in S.nodes:
        node.stopping = True
    kill_descendants()
    remove_dirs()
    summary(1)
    os._exit(1)


def main():
    watchdog = threading.Timer(OVERALL_TIMEOUT_S, hard_exit,
                               [f"overall timeout: the test took more than {OVERALL_TIMEOUT_S} s"])
    watchdog.daemon = True
    watchdog.start()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, _frame: hard_exit(f"interrupted by {signal.Signals(number).name}"))
    atexit.register(kill_descendants)  # never leave a node, a benchmark or a browser behind

    error = None
    pw = None
    try:
        pw = sync_playwright().start()
        run(pw)
    except TestFailure as e:
        error = str(e)
    except Exception:  # a Playwright call that failed, or a bug in the test
        error = traceback.format_exc()

    failed = 1 if error else 0
    if error:
        print(f"\nFAIL: {error}", file=sys.stderr, flush=True)
        if S.problems:
            print("page problems so far:\n  " + "\n  ".join(S.problems), file=sys.stderr, flush=True)
        dead = next((n for n in S.nodes if n.exited is not None and not n.stopping), None)
        if dead:
            print(f"the node had exited ({describe_exit(dead.exited)}); its stderr ends with:\n{tail(dead.stderr)}",
                  file=sys.stderr, flush=True)
        if S.page:
            try:
                os.makedirs(OUTPUT, exist_ok=True)
                path = os.path.join(OUTPUT, "failure.png")
                S.page.screenshot(path=path, full_page=True, timeout=10_000)
                print(f"screenshot of the page at the failure: {path}", file=sys.stderr, flush=True)
            except Exception:  # the browser may be gone
                pass

    # Cleanup: the processes first (they need no browser), then the browser,
    # and anything still running after that gets SIGKILL. A watchdog makes
    # sure a hanging browser cannot keep the test from exiting.
    S.finishing = True
    watchdog.cancel()
    guard = threading.Timer(30, lambda: (kill_descendants(), remove_dirs(), summary(failed), os._exit(1)))
    guard.daemon = True
    guard.start()
    cleanup_processes()
    if S.browser:
        try:
            S.browser.close()
        except Exception:
            pass
    if pw:
        try:
            pw.stop()  # closes the browser and ends the driver
        except Exception:
            pass
    leftover = kill_descendants()
    if leftover:
        log(f"killed {len(leftover)} leftover process(es): {' '.join(map(str, leftover))}")
    remove_dirs()
    guard.cancel()
    summary(failed)
    return failed


if __name__ == "__main__":
    sys.exit(main())
