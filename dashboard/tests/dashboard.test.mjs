// Browser test of the TinkerDB dashboard.
//
// Starts a real node (durability none, every port 0), puts it under load with
// redis-benchmark on its Redis port, opens the dashboard in headless Chromium
// (Debian's /usr/bin/chromium driven by playwright-core), and checks that the
// live charts move, the cards render, the key console works end to end, and
// that the dashboard shows the outage banner when the node goes away and
// recovers when it comes back. Saves screenshots to output/.
//
//   cd dashboard/tests && npm ci && node dashboard.test.mjs
//
// Environment: TINKERDB_BIN (default ../../target/debug/tinkerdb, relative to
// this directory), CHROMIUM_BIN (default /usr/bin/chromium).
// Exits 0 when every check passed, 1 with the reason otherwise.

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.TINKERDB_BIN ? resolve(process.env.TINKERDB_BIN) : resolve(HERE, '../../target/debug/tinkerdb');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const OUTPUT = join(HERE, 'output');
const OVERALL_TIMEOUT_MS = 120_000;
const READY_TIMEOUT_MS = 30_000;
const TENANT = 'default';
const KEY = 'browser-test-key';
const VALUE = 'hello from chromium';

const started = Date.now();
const resources = { nodes: [], bench: null, browser: null, dirs: [] };
let page = null;
let passed = 0;
let finishing = false;

class TestFailure extends Error {}

function log(message) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s] ${message}`);
}

function check(condition, what, detail) {
  if (!condition) throw new TestFailure(detail ? `${what}: ${typeof detail === 'function' ? detail() : detail}` : what);
  passed++;
  log(`ok ${passed} - ${what}`);
}

const tail = (text, lines = 40) => text.split('\n').slice(-lines).join('\n');

function hostPort(address) {
  const i = address.lastIndexOf(':');
  return [address.slice(0, i).replace(/^\[|\]$/g, ''), address.slice(i + 1)];
}

// ------------------------------------------------------------------ processes

// Starts a node; resolves once it printed its three ready lines.
function startNode({ admin = '127.0.0.1:0' } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'tinkerdb-dashboard-test-'));
  resources.dirs.push(dataDir);
  const args = ['--data-dir', dataDir, '--listen', '127.0.0.1:0', '--resp-listen', '127.0.0.1:0', '--admin-listen', admin, '--durability', 'none'];
  log(`starting ${BIN} ${args.join(' ')}`);
  const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const node = { child, stdout: '', stderr: '', exited: null, stopping: false };
  resources.nodes.push(node);
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => {
    node.stderr += d;
    if (node.stderr.length > 400_000) node.stderr = node.stderr.slice(-200_000);
  });
  child.on('exit', (code, signal) => {
    node.exited = { code, signal };
    if (!node.stopping) log(`node exited unexpectedly (code ${code}, signal ${signal})`);
  });
  return new Promise((resolvePromise, reject) => {
    let done = false;
    const fail = (why) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      reject(new TestFailure(`the node ${why}\n--- its stdout ---\n${node.stdout}\n--- its stderr (last lines) ---\n${tail(node.stderr)}`));
    };
    const timer = setTimeout(() => fail(`did not print its ready lines within ${READY_TIMEOUT_MS / 1000} s`), READY_TIMEOUT_MS);
    child.on('error', (e) => fail(`could not be started (${e.message}); build it with cargo build, or set TINKERDB_BIN`));
    child.on('exit', (code, signal) => fail(`exited (code ${code}, signal ${signal}) before it was ready`));
    child.stdout.on('data', (d) => {
      node.stdout += d;
      if (done) return;
      const ready = node.stdout.match(/TinkerDB (\S+) ready: clients on (\S+)/);
      const resp = node.stdout.match(/Redis protocol on (\S+)/);
      const adminLine = node.stdout.match(/Admin API and dashboard on http:\/\/(\S+?)\/?(\s|$)/);
      if (ready && resp && adminLine) {
        done = true;
        clearTimeout(timer);
        Object.assign(node, { version: ready[1], clients: ready[2], resp: resp[1], admin: adminLine[1] });
        log(`node ${node.version} ready: clients ${node.clients}, redis ${node.resp}, admin http://${node.admin}/`);
        resolvePromise(node);
      }
    });
  });
}

async function stopProcess(child, exitedFlag, graceMs = 3000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const timedOut = await Promise.race([exited.then(() => false), sleep(graceMs).then(() => true)]);
  if (timedOut) {
    child.kill('SIGKILL');
    await Promise.race([exited, sleep(2000)]);
  }
}

async function stopNode(node) {
  node.stopping = true;
  await stopProcess(node.child);
}

function startBenchmark(resp) {
  const [host, port] = hostPort(resp);
  const args = ['-h', host, '-p', port, '-t', 'set,get', '-n', '100000000', '-c', '4', '-P', '4', '-r', '10000', '-q'];
  log(`starting redis-benchmark ${args.join(' ')}`);
  const child = spawn('redis-benchmark', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const bench = { child, stderr: '', error: null };
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { bench.stderr = (bench.stderr + d).slice(-10_000); });
  child.on('error', (e) => { bench.error = e; });
  resources.bench = bench;
  return bench;
}

// ------------------------------------------------------------------ HTTP

async function api(node, path, init) {
  const res = await fetch(`http://${node.admin}${path}`, { ...init, signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  let body = null;
  try { body = JSON.parse(text); } catch { body = text; }
  return { status: res.status, body };
}

// ------------------------------------------------------------------ browser

const problems = []; // page errors and unexpected console errors
let allowedConsoleErrors = []; // regexes for errors expected in the current step

async function waitFor(fn, arg, timeout, what) {
  try {
    return await page.waitForFunction(fn, arg, { timeout, polling: 200 });
  } catch (e) {
    if (e instanceof TestFailure) throw e;
    throw new TestFailure(`${what} (waited ${timeout / 1000} s)`);
  }
}

const tinker = () => page.evaluate(() => {
  const t = window.__tinker || {};
  return { samplesSeen: t.samplesSeen, points: t.points, lastSeq: t.lastSeq, lastOps: t.lastOps };
});
const tileOps = async () => Number((await page.textContent('#tile-ops')).replace(/[^0-9.]/g, ''));
const resultText = () => page.textContent('#console-result');

function noProblems(where) {
  check(problems.length === 0, `no page errors or console errors ${where}`, () => `\n  ${problems.join('\n  ')}`);
}

// ------------------------------------------------------------------ the test

async function main() {
  if (!existsSync(BIN)) throw new TestFailure(`no tinkerdb binary at ${BIN}: build it (cargo build) or set TINKERDB_BIN`);
  if (!existsSync(CHROMIUM)) throw new TestFailure(`no Chromium at ${CHROMIUM}: apt-get install chromium, or set CHROMIUM_BIN`);
  mkdirSync(OUTPUT, { recursive: true });

  const node = await startNode();
  const bench = startBenchmark(node.resp);
  await sleep(300);
  if (bench.error) throw new TestFailure(`could not start redis-benchmark (${bench.error.message}); it comes with redis-tools`);

  resources.browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--headless', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 30_000,
  });
  const context = await resources.browser.newContext({ viewport: { width: 1440, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(15_000);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const text = `${m.text()} [${(m.location() && m.location().url) || 'no url'}]`;
    if (!allowedConsoleErrors.some((re) => re.test(text))) problems.push(`console error: ${text}`);
  });

  const url = `http://${node.admin}/`;
  log(`opening ${url}`);
  const response = await page.goto(url, { waitUntil: 'load' });
  check(response && response.status() === 200, `GET / answers 200`, () => `got ${response && response.status()}`);
  check((await page.title()).includes('TinkerDB'), 'the page is the TinkerDB dashboard');

  // --- header and cards
  await waitFor((v) => document.getElementById('node-version').textContent === `v${v}`, node.version, 15_000, `the header never showed version v${node.version}`);
  check(true, `the header shows version v${node.version}`);
  const nodeInfo = (await api(node, '/v1/node')).body;
  const cores = nodeInfo.per_core.length;
  await waitFor((n) => document.querySelectorAll('#cores tbody tr').length === n, cores, 15_000, `the cores table never showed ${cores} rows`);
  check(true, `the cores table has one row per core (${cores})`);
  await waitFor((addr) => document.getElementById('cluster').textContent.includes(addr), node.clients, 15_000, `the cluster card never showed the node ${node.clients}`);
  check((await page.textContent('#cluster-mode')) === 'standalone', 'the cluster card shows the node and mode standalone');
  await waitFor((t) => document.getElementById('tenants').textContent.includes(t), TENANT, 15_000, `the tenants card never showed tenant ${TENANT}`);
  check(true, `the tenants card lists tenant "${TENANT}"`);

  // --- live charts under load
  await waitFor(() => window.__tinker && window.__tinker.points > 0 && document.querySelector('#chart-throughput canvas'), null, 20_000, 'the throughput chart never got data');
  check(true, 'the throughput chart has data');
  for (const id of ['chart-latency', 'chart-core-throughput', 'chart-core-latency']) {
    check((await page.$(`#${id} canvas`)) !== null, `#${id} is drawn`);
  }
  const coreSeries = await page.$$eval('#chart-core-throughput .u-legend .u-series', (s) => s.length);
  check(coreSeries === cores + 1, `the per-core throughput chart has one series per core`, () => `legend has ${coreSeries} entries (time + series), want ${cores + 1}`);

  await waitFor(() => Number(document.getElementById('tile-ops').textContent.replace(/[^0-9.]/g, '')) > 0, null, 20_000,
    `#tile-ops never showed more than 0 ops/s under redis-benchmark load (redis-benchmark stderr: ${bench.stderr.trim().slice(-300) || 'none'})`);
  const before = await tinker();
  const readings = [];
  for (let i = 0; i < 4; i++) {
    await sleep(1000);
    readings.push(await tileOps());
  }
  const after = await tinker();
  log(`#tile-ops read ${readings.map((r) => r.toLocaleString('en-US')).join(', ')} ops/s; samples ${before.samplesSeen} -> ${after.samplesSeen}, points ${before.points} -> ${after.points}`);
  check(readings.every((r) => r > 0), 'the node ops/s tile stays above 0 under load', () => readings.join(', '));
  check(after.samplesSeen >= before.samplesSeen + 2, 'new samples keep arriving every second', () => `${before.samplesSeen} -> ${after.samplesSeen} in 4 s`);
  check(after.points > before.points, 'the number of plotted points grows', () => `${before.points} -> ${after.points}`);
  check(after.lastOps > 0 && Number.isFinite(after.lastOps), 'the newest sample has node ops/s > 0', () => String(after.lastOps));
  noProblems('while the charts run');

  // --- key console
  await page.selectOption('#console-tenant', TENANT);
  await page.fill('#console-key', KEY);
  await page.fill('#console-value', VALUE);
  await page.fill('#console-ttl', '');
  await page.click('#console-set');
  await waitFor(() => /Stored/.test(document.getElementById('console-result').textContent), null, 10_000, `Set did not report "Stored": ${await resultText()}`);
  check(true, `Set stored ${TENANT}/${KEY}`);

  await page.fill('#console-value', '');
  await page.click('#console-get');
  await waitFor((v) => document.getElementById('console-result').textContent.includes(v), VALUE, 10_000, `Get did not show "${VALUE}"`);
  check(true, `Get shows "${VALUE}" in #console-result`);

  const stored = await api(node, `/v1/tenants/${encodeURIComponent(TENANT)}/keys/${encodeURIComponent(KEY)}`);
  check(stored.status === 200 && stored.body.value === VALUE && stored.body.encoding === 'utf8', 'the HTTP API returns the value the console stored', () => JSON.stringify(stored));

  // A few more seconds of data make a more telling screenshot.
  await waitFor(() => window.__tinker.points >= 12, null, 20_000, 'the throughput chart stopped growing before 12 points');
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(OUTPUT, 'dashboard.png'), fullPage: true });
  log(`screenshot saved to ${join(OUTPUT, 'dashboard.png')}`);

  await page.fill('#console-key', 'browser-test-');
  await page.click('#console-scan');
  await waitFor((k) => [...document.querySelectorAll('#console-result .scan-keys button')].some((b) => b.textContent === k), KEY, 10_000, `Scan of prefix "browser-test-" did not list ${KEY}: ${await resultText()}`);
  check(true, `Scan of prefix "browser-test-" lists ${KEY}`);

  await page.fill('#console-key', KEY);
  await page.click('#console-delete');
  await waitFor(() => /Deleted/.test(document.getElementById('console-result').textContent), null, 10_000, `Delete did not report "Deleted": ${await resultText()}`);
  check(true, `Delete removed ${KEY}`);
  const gone = await api(node, `/v1/tenants/${encodeURIComponent(TENANT)}/keys/${encodeURIComponent(KEY)}`);
  check(gone.status === 404 && gone.body.error && gone.body.error.code === 'key_not_found', 'the HTTP API answers 404 key_not_found after Delete', () => JSON.stringify(gone));

  // The browser logs every 404 response as a console error: expected here.
  allowedConsoleErrors = [new RegExp(`status of 404 .*/keys/${KEY}\\]$`)];
  await page.click('#console-get');
  await waitFor(() => /Not found/.test(document.getElementById('console-result').textContent), null, 10_000, `Get after Delete did not show "Not found": ${await resultText()}`);
  check((await resultText()).includes('key_not_found'), 'Get after Delete shows "Not found" with code key_not_found');
  allowedConsoleErrors = [];
  noProblems('while using the key console');

  // --- outage: the banner shows, then clears when the node is back
  allowedConsoleErrors = [/Failed to load resource: net::ERR_/];
  log('stopping the node');
  await stopNode(node);
  await stopProcess(bench.child, null, 1000);
  await waitFor(() => !document.getElementById('banner').hidden, null, 10_000, 'no banner appeared after the node stopped');
  check((await page.textContent('#live-status')).includes('Offline'), 'with the node down, the banner shows and the status says Offline');
  await page.screenshot({ path: join(OUTPUT, 'dashboard-offline.png') });

  const second = await startNode({ admin: node.admin });
  await waitFor(() => document.getElementById('banner').hidden && window.__tinker.lastSeq !== null && window.__tinker.lastSeq <= 15, null, 20_000,
    'the dashboard did not recover (banner gone, live series restarted) after the node came back');
  const recovered = await tinker();
  await sleep(2500);
  const later = await tinker();
  check(later.samplesSeen > recovered.samplesSeen, 'after the node restarts the banner clears and the charts resume', () => `${recovered.samplesSeen} -> ${later.samplesSeen}`);
  allowedConsoleErrors = [];
  noProblems('after the outage');
  await stopNode(second);
}

// ------------------------------------------------------------------ run

async function cleanup() {
  const jobs = [];
  if (resources.browser) jobs.push(resources.browser.close().catch(() => {}));
  if (resources.bench) jobs.push(stopProcess(resources.bench.child, null, 500));
  for (const node of resources.nodes) {
    node.stopping = true;
    jobs.push(stopProcess(node.child));
  }
  await Promise.race([Promise.all(jobs), sleep(10_000)]);
  for (const dir of resources.dirs) rmSync(dir, { recursive: true, force: true });
}

async function finish(error) {
  if (finishing) return;
  finishing = true;
  let failed = 0;
  if (error) {
    failed = 1;
    console.error(`\nFAIL: ${error instanceof TestFailure ? error.message : error && error.stack ? error.stack : error}`);
    if (problems.length) console.error(`page problems so far:\n  ${problems.join('\n  ')}`);
    const dead = resources.nodes.find((n) => n.exited && !n.stopping);
    if (dead) console.error(`the node had exited (code ${dead.exited.code}, signal ${dead.exited.signal}); its stderr ends with:\n${tail(dead.stderr)}`);
    if (page) {
      try {
        mkdirSync(OUTPUT, { recursive: true });
        await Promise.race([page.screenshot({ path: join(OUTPUT, 'failure.png'), fullPage: true }), sleep(5000)]);
        console.error(`screenshot of the page at the failure: ${join(OUTPUT, 'failure.png')}`);
      } catch { /* the browser may be gone */ }
    }
  }
  await cleanup();
  console.log(`\ndashboard: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

// Last resort: never leave a node or a benchmark behind.
process.on('exit', () => {
  for (const child of [resources.bench && resources.bench.child, ...resources.nodes.map((n) => n.child)]) {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => finish(new TestFailure(`interrupted by ${signal}`)));
setTimeout(() => finish(new TestFailure(`overall timeout: the test took more than ${OVERALL_TIMEOUT_MS / 1000} s`)), OVERALL_TIMEOUT_MS);

main().then(() => finish(null), (e) => finish(e));
