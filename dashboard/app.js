// TinkerDB dashboard. Plain JavaScript, no build step: served by the node's
// admin plane at /assets/app.js next to uPlot (/assets/uPlot.iife.min.js).
//
// Polls the admin HTTP API (docs/http-api.md):
//   /v1/stats/live?since=<seq>  every second: the per-second series (charts, latency tiles)
//   /v1/node                    every 2 s:   header, summary tiles, per-core table
//   /v1/tenants                 every 3 s:   tenants card, console's tenant list
//   /v1/cluster                 every 5 s:   topology card
// A failed poll shows the banner and is retried every second; the live
// series resumes from the last sequence number it saw, so an outage of the
// dashboard's connection leaves no hole as long as the node kept running.
'use strict';

(() => {
  const WINDOW_S = 300; // seconds of history kept and drawn
  const MIN_SPAN_S = 60; // the x axis spans at least this much
  const REQUEST_TIMEOUT_MS = 5000;
  const SCAN_PAGE = 100;

  const PALETTE = ['#5b9cff', '#3ecf8e', '#f5b544', '#ff6b8b', '#b48cff', '#4dd4e6', '#ff9f5a', '#a3d65c', '#f07ad6', '#8fa3c4'];
  const COLORS = { ops: '#5b9cff', errors: '#ff6b6b', p50: '#3ecf8e', p99: '#f5b544', p999: '#ff6b8b' };
  const AXIS = '#8b95aa';
  const GRID = 'rgba(255,255,255,0.06)';

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- state

  const series = {
    intervalS: 1,
    lastSeq: null,
    emptyPolls: 0,
    coreIds: [], // core numbers, in series order
    x: [], // unix seconds
    ops: [], errors: [], p50: [], p99: [], p999: [],
    coreOps: [], coreP99: [], // one array per core
    latest: null, // newest sample
  };

  const state = {
    node: null, nodeAt: 0,
    cluster: null,
    tenants: null,
    tenantRates: new Map(), // tenant -> ops/s from usage.requests_total
    tenantTotals: null, tenantTotalsAt: 0,
    errors: {}, // poll name -> message
    errorKinds: {}, // poll name -> 'network' (no answer) or 'error'
    lastDataAt: 0,
    charts: {},
    log: { latency: readPref('latency'), coreLatency: readPref('coreLatency') },
  };

  // Exposed for the browser test and for poking around in the dev tools.
  const tinker = (window.__tinker = {
    samplesSeen: 0, // samples received since the page loaded
    points: 0, // points currently plotted on the throughput chart
    lastSeq: null,
    lastOps: null, // newest node ops/s
    polls: 0,
    errors: state.errors,
  });

  function readPref(name) {
    // Latency charts default to a log scale: p50 and p99.9 are often 100x apart.
    try { return localStorage.getItem(`tinker.log.${name}`) !== '0'; } catch { return true; }
  }
  function writePref(name, on) {
    try { localStorage.setItem(`tinker.log.${name}`, on ? '1' : '0'); } catch { /* private mode */ }
  }

  // ---------------------------------------------------------------- formatting

  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);

  function fmtInt(v) {
    return isNum(v) ? Math.round(v).toLocaleString('en-US') : '—';
  }

  function fmtCompact(v) {
    if (!isNum(v)) return '—';
    const a = Math.abs(v);
    const trim = (s) => s.replace(/\.0+$/, '').replace(/(\.\d*?)0+$/, '$1');
    if (a >= 1e9) return trim((v / 1e9).toFixed(a >= 1e10 ? 0 : 1)) + 'G';
    if (a >= 1e6) return trim((v / 1e6).toFixed(a >= 1e7 ? 0 : 1)) + 'M';
    if (a >= 1e3) return trim((v / 1e3).toFixed(a >= 1e4 ? 0 : 1)) + 'k';
    return trim(v.toFixed(a >= 10 || a === 0 ? 0 : 1));
  }

  // Microseconds, as µs below 1 ms, then ms, then s.
  function fmtLatency(us, short = false) {
    if (!isNum(us)) return '—';
    const trim = (s) => (short ? s.replace(/\.0+$/, '').replace(/(\.\d*?)0+$/, '$1') : s);
    if (us < 1000) return `${Math.round(us)} µs`;
    if (us < 10_000) return `${trim((us / 1000).toFixed(2))} ms`;
    if (us < 100_000) return `${trim((us / 1000).toFixed(1))} ms`;
    if (us < 1_000_000) return `${Math.round(us / 1000)} ms`;
    return `${trim((us / 1e6).toFixed(2))} s`;
  }

  function fmtBytes(b) {
    if (!isNum(b)) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let i = 0;
    let v = b;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return i === 0 ? `${v} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
  }

  function fmtDuration(s) {
    if (!isNum(s)) return '—';
    s = Math.max(0, Math.floor(s));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const p = (n) => String(n).padStart(2, '0');
    if (d > 0) return `${d}d ${h}h ${p(m)}m`;
    if (h > 0) return `${h}h ${p(m)}m ${p(sec)}s`;
    if (m > 0) return `${m}m ${p(sec)}s`;
    return `${sec}s`;
  }

  function fmtAgo(ms) {
    if (!isNum(ms)) return '—';
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 60) return `${Math.round(s)}s ago`;
    if (s < 3600) return `${Math.round(s / 60)}m ago`;
    if (s < 86400) return `${(s / 3600).toFixed(1)}h ago`;
    return `${(s / 86400).toFixed(1)}d ago`;
  }

  function fmtClock(unixS) {
    const d = new Date(unixS * 1000);
    const p = (n) => String(n).padStart(2, '0');
    return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }

  function coreColor(i) {
    return i < PALETTE.length ? PALETTE[i] : `hsl(${(i * 137.5) % 360} 70% 65%)`;
  }

  function setText(id, text) {
    const el = $(id);
    if (el && el.textContent !== text) el.textContent = text;
  }

  // ---------------------------------------------------------------- HTTP

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // One request; resolves to { status, body, ms } or throws ApiError
  // (status 0 when there was no answer at all).
  async function request(method, path, { body, timeout = REQUEST_TIMEOUT_MS, text = false } = {}) {
    const started = performance.now();
    let res, raw;
    try {
      res = await fetch(path, {
        method,
        body,
        cache: 'no-store',
        headers: body === undefined ? { accept: 'application/json' } : { accept: 'application/json', 'content-type': 'application/octet-stream' },
        signal: AbortSignal.timeout(timeout),
      });
      raw = await res.text();
    } catch (e) {
      const why = e && e.name === 'TimeoutError' ? `no answer within ${timeout / 1000} s` : 'no connection';
      throw new ApiError(0, 'network', why);
    }
    const ms = performance.now() - started;
    if (text && res.ok) return { status: res.status, body: raw, ms };
    let json = null;
    try { json = raw ? JSON.parse(raw) : null; } catch { /* not JSON */ }
    if (!res.ok) {
      const err = json && json.error;
      const e = new ApiError(res.status, (err && err.code) || `http_${res.status}`, (err && err.message) || raw.slice(0, 200) || res.statusText);
      e.ms = ms;
      throw e;
    }
    return { status: res.status, body: json, ms };
  }

  const getJSON = async (path) => (await request('GET', path)).body;

  const keyPath = (tenant, key) => `/v1/tenants/${encodeURIComponent(tenant)}/keys/${encodeURIComponent(key)}`;

  // ---------------------------------------------------------------- polling

  const polls = {};

  // Runs fn now and then every intervalMs (every second while it fails).
  function poll(name, intervalMs, fn) {
    const p = (polls[name] = { timer: 0, running: false });
    const run = async () => {
      clearTimeout(p.timer);
      if (p.running) return;
      p.running = true;
      let ok = true;
      try {
        await fn();
        delete state.errors[name];
        delete state.errorKinds[name];
      } catch (e) {
        ok = false;
        state.errorKinds[name] = e instanceof ApiError && e.status === 0 ? 'network' : 'error';
        state.errors[name] = e instanceof ApiError ? describeError(e) : String((e && e.message) || e);
        if (!(e instanceof ApiError)) console.error(`dashboard bug in poll ${name}:`, e); // ours, not the node's
      } finally {
        p.running = false;
        tinker.polls++;
        updateStatus();
        p.timer = setTimeout(run, ok ? intervalMs : Math.min(intervalMs, 1000));
      }
    };
    p.run = run;
    run();
  }

  function describeError(e) {
    if (e.status === 0) return e.message;
    return `${e.code} (HTTP ${e.status}): ${e.message}`;
  }

  function updateStatus() {
    const names = Object.keys(state.errors);
    const banner = $('banner');
    const status = $('live-status');
    if (names.length) {
      const first = state.errors.live ? 'live' : names[0];
      const since = state.lastDataAt ? ` Last data ${fmtAgo(state.lastDataAt)}.` : '';
      const unreachable = state.errorKinds[first] === 'network';
      setText('banner-title', unreachable ? 'Node unreachable.' : 'Node error.');
      setText('banner-text', `${location.host}: ${state.errors[first]}. Retrying every second.${since}`);
      banner.hidden = false;
      document.body.classList.add('offline');
      status.dataset.state = 'down';
      status.querySelector('.label').textContent = 'Offline';
    } else {
      banner.hidden = true;
      document.body.classList.remove('offline');
      if (series.latest) {
        status.dataset.state = 'live';
        status.querySelector('.label').textContent = 'Live';
      }
    }
  }

  // ---------------------------------------------------------------- live series

  function resetSeries() {
    series.lastSeq = null;
    series.emptyPolls = 0;
    series.coreIds = [];
    series.latest = null;
    for (const k of ['x', 'ops', 'errors', 'p50', 'p99', 'p999']) series[k] = [];
    series.coreOps = [];
    series.coreP99 = [];
    destroyCharts();
  }

  async function pollLive() {
    // After a few empty answers, ask for everything: a restarted node numbers
    // its samples from 1 again, and `since` would hide them for minutes.
    let full = series.lastSeq === null || series.emptyPolls >= 3;
    let body = await getJSON(full ? '/v1/stats/live' : `/v1/stats/live?since=${series.lastSeq}`);
    // A different start time means a restarted node: its sequence numbers
    // started over, so start the charts over too.
    if (isNum(body.started_unix_ms) && series.startedAt !== undefined && body.started_unix_ms !== series.startedAt) {
      resetSeries();
      if (!full) {
        full = true;
        body = await getJSON('/v1/stats/live');
      }
    }
    if (isNum(body.started_unix_ms)) series.startedAt = body.started_unix_ms;
    if (isNum(body.interval_ms) && body.interval_ms > 0) series.intervalS = body.interval_ms / 1000;
    let samples = Array.isArray(body.samples) ? body.samples : [];
    if (full && series.lastSeq !== null) {
      const newest = samples.length ? samples[samples.length - 1].seq : 0;
      if (newest < series.lastSeq) resetSeries();
      else samples = samples.filter((s) => s.seq > series.lastSeq);
    }
    series.emptyPolls = samples.length ? 0 : series.emptyPolls + 1;
    if (samples.length) {
      ingest(samples);
      state.lastDataAt = Date.now();
    }
  }

  function ingest(samples) {
    const coreIds = (samples[samples.length - 1].cores || []).map((c) => c.core);
    if (coreIds.join() !== series.coreIds.join()) {
      // First data, or the core count changed: start the per-core series over.
      series.coreIds = coreIds;
      series.coreOps = coreIds.map(() => series.x.map(() => null));
      series.coreP99 = coreIds.map(() => series.x.map(() => null));
      destroyCharts();
    }
    for (const s of samples) {
      if (series.lastSeq !== null && s.seq <= series.lastSeq) continue;
      const x = s.unix_ms / 1000;
      const prev = series.x[series.x.length - 1];
      if (prev !== undefined && x - prev > series.intervalS * 2.5) pushRow(prev + series.intervalS, null); // a gap: break the lines
      pushRow(x, s);
      series.lastSeq = s.seq;
      series.latest = s;
      tinker.samplesSeen++;
    }
    const newest = series.x[series.x.length - 1];
    let drop = 0;
    while (drop < series.x.length && series.x[drop] < newest - WINDOW_S) drop++;
    if (drop) {
      for (const k of ['x', 'ops', 'errors', 'p50', 'p99', 'p999']) series[k].splice(0, drop);
      for (const a of series.coreOps) a.splice(0, drop);
      for (const a of series.coreP99) a.splice(0, drop);
    }
    tinker.lastSeq = series.lastSeq;
    tinker.lastOps = series.latest.node.ops_per_sec;
    drawCharts();
    renderLatencyTiles();
    if (state.node) renderCores();
  }

  // A latency of 0 means "no requests in that second": plot nothing there.
  const lat = (point, field, ops) => (point && ops > 0 && isNum(point[field]) ? point[field] : null);

  function pushRow(x, s) {
    series.x.push(x);
    const n = s && s.node;
    const ops = n ? n.ops_per_sec : null;
    series.ops.push(n ? ops : null);
    series.errors.push(n ? n.errors_per_sec : null);
    series.p50.push(lat(n, 'p50_us', ops));
    series.p99.push(lat(n, 'p99_us', ops));
    series.p999.push(lat(n, 'p999_us', ops));
    const byCore = new Map(((s && s.cores) || []).map((c) => [c.core, c]));
    series.coreIds.forEach((id, i) => {
      const c = byCore.get(id);
      series.coreOps[i].push(c ? c.ops_per_sec : null);
      series.coreP99[i].push(lat(c, 'p99_us', c && c.ops_per_sec));
    });
  }

  // ---------------------------------------------------------------- charts

  function plotHeight() {
    return Math.round(Math.min(300, Math.max(150, window.innerHeight * 0.23)));
  }

  function axis(values, size) {
    const a = {
      stroke: AXIS,
      font: '11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif',
      grid: { stroke: GRID, width: 1 },
      ticks: { stroke: GRID, width: 1, size: 4 },
      values,
      gap: 4,
    };
    if (size) a.size = size;
    return a;
  }

  const timeAxis = () => ({ ...axis((u, splits) => splits.map((v) => fmtClock(v)), 26), space: 70 });
  const opsAxis = () => axis((u, splits) => splits.map((v) => fmtCompact(v)), 48);
  const latValues = (u, splits) => splits.map((v) => (v === null || v === undefined ? '' : v > 0 ? fmtLatency(v, true) : '0'));
  const latAxis = (log) => (log ? { ...axis(latValues, 62), splits: logSplits, filter: (u, splits) => splits } : axis(latValues, 62));

  // Ticks of a log axis: 1-2-5 per decade, fewer when the range is wide.
  function logSplits(u, axisIdx, min, max) {
    const out = [];
    if (!(min > 0 && max > min)) return out;
    const decades = Math.log10(max / min);
    const mults = decades > 4 ? [1] : decades > 2.5 ? [1, 3] : [1, 2, 5];
    for (let p = Math.pow(10, Math.floor(Math.log10(min))); p <= max * 1.0001; p *= 10) {
      for (const m of mults) {
        const v = Math.round(p * m * 1e6) / 1e6;
        if (v >= min * 0.9999 && v <= max * 1.0001) out.push(v);
      }
    }
    return out;
  }

  const xScale = { time: true, range: (u, min, max) => (min === null ? [Date.now() / 1000 - MIN_SPAN_S, Date.now() / 1000] : [Math.min(min, max - MIN_SPAN_S), max]) };
  const zeroBased = (fallback) => ({ range: (u, min, max) => [0, max > 0 ? max * 1.12 : fallback] });
  const logScale = { distr: 3, log: 10, range: (u, min, max) => (min > 0 && max > 0 ? uPlot.rangeLog(min, max, 10, true) : [10, 10_000]) };

  function fill(color) {
    return (u) => {
      if (!u.bbox || !Number.isFinite(u.bbox.height) || u.bbox.height <= 0) return color + '22';
      const g = u.ctx.createLinearGradient(0, u.bbox.top, 0, u.bbox.top + u.bbox.height);
      g.addColorStop(0, color + '55');
      g.addColorStop(1, color + '05');
      return g;
    };
  }

  const timeSeries = { value: (u, v) => (v === null || v === undefined ? '—' : fmtClock(v)) };
  const opsValue = (u, v) => (v === null || v === undefined ? '—' : fmtInt(v));
  const latValue = (u, v) => (v === null || v === undefined ? '—' : fmtLatency(v));

  function chartSpecs() {
    const cores = series.coreIds;
    return {
      throughput: {
        el: 'chart-throughput',
        scales: { x: xScale, y: zeroBased(10) },
        axes: [timeAxis(), opsAxis()],
        series: [
          timeSeries,
          { label: 'ops/s', stroke: COLORS.ops, width: 2, fill: fill(COLORS.ops), value: opsValue, points: { show: false } },
          { label: 'errors/s', stroke: COLORS.errors, width: 1.25, value: opsValue, points: { show: false } },
        ],
        data: () => [series.x, series.ops, series.errors],
      },
      latency: {
        el: 'chart-latency',
        scales: { x: xScale, y: state.log.latency ? logScale : zeroBased(1000) },
        axes: [timeAxis(), latAxis(state.log.latency)],
        series: [
          timeSeries,
          { label: 'p50', stroke: COLORS.p50, width: 1.75, value: latValue, points: { show: false } },
          { label: 'p99', stroke: COLORS.p99, width: 1.75, value: latValue, points: { show: false } },
          { label: 'p99.9', stroke: COLORS.p999, width: 1.75, value: latValue, points: { show: false } },
        ],
        data: () => [series.x, series.p50, series.p99, series.p999],
      },
      coreThroughput: {
        el: 'chart-core-throughput',
        scales: { x: xScale, y: zeroBased(10) },
        axes: [timeAxis(), opsAxis()],
        series: [timeSeries, ...cores.map((c, i) => ({ label: `core ${c}`, stroke: coreColor(i), width: 1.5, value: opsValue, points: { show: false } }))],
        data: () => [series.x, ...series.coreOps],
      },
      coreLatency: {
        el: 'chart-core-latency',
        scales: { x: xScale, y: state.log.coreLatency ? logScale : zeroBased(1000) },
        axes: [timeAxis(), latAxis(state.log.coreLatency)],
        series: [timeSeries, ...cores.map((c, i) => ({ label: `core ${c} p99`, stroke: coreColor(i), width: 1.5, value: latValue, points: { show: false } }))],
        data: () => [series.x, ...series.coreP99],
      },
    };
  }

  function createChart(name, spec) {
    const el = $(spec.el);
    el.querySelector('.chart-empty')?.remove();
    el.style.height = '';
    const chart = new uPlot(
      {
        width: Math.max(200, el.clientWidth),
        height: plotHeight(),
        scales: spec.scales,
        axes: spec.axes,
        series: spec.series,
        legend: {
          live: true,
          markers: { width: 0, fill: (u, i) => u.series[i].stroke(u, i), stroke: (u, i) => u.series[i].stroke(u, i) },
        },
        cursor: { sync: { key: 'tinker' }, points: { size: 6 }, drag: { x: false, y: false } },
        padding: [8, 22, 0, 0], // room for the last time label
      },
      spec.data(),
      el,
    );
    chart.__data = spec.data;
    state.charts[name] = chart;
    return chart;
  }

  function destroyCharts(only) {
    for (const [name, chart] of Object.entries(state.charts)) {
      if (only && name !== only) continue;
      chart.destroy();
      delete state.charts[name];
    }
  }

  function drawCharts() {
    if (!series.x.length) return;
    const specs = chartSpecs();
    for (const [name, spec] of Object.entries(specs)) {
      const chart = state.charts[name] || createChart(name, spec);
      chart.setData(spec.data());
      // Out of the cursor's way, the legend shows the newest values.
      if (chart.cursor.left === undefined || chart.cursor.left < 0) chart.setLegend({ idx: series.x.length - 1 });
    }
    tinker.points = series.x.length;
  }

  function resizeCharts() {
    const h = plotHeight();
    for (const chart of Object.values(state.charts)) {
      const w = chart.root.parentElement.clientWidth;
      if (w > 0 && (w !== chart.width || h !== chart.height)) chart.setSize({ width: w, height: h });
    }
  }

  function showChartPlaceholders() {
    for (const id of ['chart-throughput', 'chart-latency', 'chart-core-throughput', 'chart-core-latency']) {
      const el = $(id);
      el.style.height = `${plotHeight() + 26}px`;
      if (!el.querySelector('.chart-empty')) el.insertAdjacentHTML('beforeend', '<div class="chart-empty">Waiting for the first sample…</div>');
    }
  }

  // ---------------------------------------------------------------- tiles

  function windowMax(arr) {
    let m = null;
    for (const v of arr) if (v !== null && (m === null || v > m)) m = v;
    return m;
  }

  // How much history the charts hold: "5 min", "42 s".
  function windowSpan() {
    const s = Math.min(WINDOW_S, Math.round(series.x[series.x.length - 1] - series.x[0] + series.intervalS));
    return s >= 120 ? `${Math.round(s / 60)} min` : `${s} s`;
  }

  function renderLatencyTiles() {
    const s = series.latest;
    if (!s) return;
    const n = s.node;
    const idle = !(n.ops_per_sec > 0);
    const opsEl = $('tile-ops');
    setText('tile-ops', fmtInt(n.ops_per_sec));
    opsEl.dataset.value = String(n.ops_per_sec);
    setText('tile-ops-sub', `errors ${fmtCompact(n.errors_per_sec)}/s · peak ${fmtCompact(windowMax(series.ops))}`);
    for (const [f, id] of [['p50_us', 'p50'], ['p99_us', 'p99'], ['p999_us', 'p999']]) {
      setText(`tile-${id}`, idle ? '—' : fmtLatency(n[f]));
      const max = windowMax(series[id]);
      setText(`tile-${id}-sub`, max === null ? 'no requests yet' : `peak ${fmtLatency(max)}`);
      $(`tile-${id}-sub`).title = `highest in the last ${windowSpan()}`;
    }
  }

  // ---------------------------------------------------------------- node

  async function pollNode() {
    const node = await getJSON('/v1/node');
    // When the node started, by this browser's clock: if it moved, the node
    // restarted (however long we lost contact) and its live series starts over.
    const startedAt = isNum(node.uptime_seconds) ? Date.now() / 1000 - node.uptime_seconds : null;
    if (startedAt !== null && state.nodeStartedAt !== undefined && Math.abs(startedAt - state.nodeStartedAt) > 5) resetSeries();
    if (startedAt !== null) state.nodeStartedAt = startedAt;
    state.node = node;
    state.nodeAt = Date.now();
    renderNode();
  }

  function renderNode() {
    const n = state.node;
    if (!n) return;
    setText('node-version', n.version ? `v${n.version}` : '');
    setText('node-cores', fmtInt(n.cores));
    setText('node-durability', n.durability || '—');
    const listen = n.listen || {};
    setText('node-listen-clients', listen.clients || '—');
    setText('node-listen-resp', listen.resp || 'off');
    setText('node-listen-admin', listen.admin || location.host);
    setText('footer-data-dir', n.data_dir ? `data dir ${n.data_dir}` : '');
    tickUptime();

    const cores = Array.isArray(n.per_core) ? n.per_core : [];
    const sum = (f) => cores.reduce((a, c) => a + (isNum(c[f]) ? c[f] : 0), 0);
    setText('tile-keys', fmtInt(n.keys));
    setText('tile-keys-sub', `across ${cores.length || n.cores || '?'} core${(cores.length || n.cores) === 1 ? '' : 's'}`);
    setText('tile-memory', fmtBytes(n.memory_bytes));
    setText('tile-memory-sub', isNum(n.resident_memory_bytes) ? `RSS ${fmtBytes(n.resident_memory_bytes)}` : 'keys and values');
    setText('tile-wal', n.durability === 'none' && !n.wal_bytes ? 'off' : fmtBytes(n.wal_bytes));
    setText('tile-wal-sub', n.durability === 'none' ? 'memory only' : `${fmtInt(sum('wal_fsyncs'))} fsyncs`);
    setText('tile-connections', fmtInt(n.connections));
    setText('tile-connections-sub', `${fmtCompact(sum('requests_total'))} requests`);

    const snap = $('snapshot-button');
    snap.disabled = n.durability === 'none';
    snap.title = snap.disabled ? 'Durability none: this node keeps no files, so it takes no snapshots' : 'Snapshot every core now (POST /v1/snapshot)';
    renderCores();
  }

  function tickUptime() {
    const n = state.node;
    if (!n || !isNum(n.uptime_seconds)) return;
    const extra = state.errors.node ? 0 : (Date.now() - state.nodeAt) / 1000;
    setText('node-uptime', fmtDuration(n.uptime_seconds + extra));
  }

  function renderCores() {
    const n = state.node;
    const cores = (n && Array.isArray(n.per_core) ? n.per_core : []).slice().sort((a, b) => a.core - b.core);
    const el = $('cores');
    if (!cores.length) {
      el.innerHTML = '<p class="empty">No per-core figures.</p>';
      return;
    }
    const live = new Map(((series.latest && series.latest.cores) || []).map((c) => [c.core, c]));
    const colorOf = (core) => {
      const i = series.coreIds.indexOf(core);
      return coreColor(i >= 0 ? i : core);
    };
    const slots = (r) => (r && isNum(r.start) ? `${r.start}–${r.end}` : '—');
    const snapshot = (s) => (s ? `<span title="${esc(`${new Date(s.unix_ms).toLocaleString()}: ${fmtInt(s.entries)} keys, ${fmtBytes(s.bytes)}`)}">${fmtAgo(s.unix_ms)} <span class="dim">· ${fmtBytes(s.bytes)}</span></span>` : '<span class="dim">never</span>');
    const rows = cores.map((c) => {
      const l = live.get(c.core);
      const poisoned = c.wal_poisoned ? ' <span class="badge err" title="The WAL failed: this core refuses writes">WAL failed</span>' : '';
      return `<tr>
        <td class="l"><span class="core-id"><i style="background:${colorOf(c.core)}"></i>${esc(c.core)}</span>${poisoned}</td>
        <td class="l mono">${slots(c.slots)}</td>
        <td>${fmtInt(l ? l.ops_per_sec : null)}</td>
        <td>${l && l.ops_per_sec > 0 ? fmtLatency(l.p99_us) : '—'}</td>
        <td>${fmtInt(c.keys)}</td>
        <td>${fmtBytes(c.memory_bytes)}</td>
        <td>${fmtBytes(c.wal_bytes)}</td>
        <td>${fmtInt(c.wal_fsyncs)}</td>
        <td>${fmtInt(c.connections_open)}</td>
        <td>${fmtInt(c.requests_total)}</td>
        <td class="l">${snapshot(c.last_snapshot)}</td>
      </tr>`;
    });
    el.innerHTML = `<table class="data">
      <thead><tr>
        <th class="l">Core</th><th class="l">Slots</th><th>ops/s</th><th>p99</th><th>Keys</th><th>Memory</th>
        <th>WAL</th><th>Fsyncs</th><th>Conns</th><th>Requests</th><th class="l">Snapshot</th>
      </tr></thead>
      <tbody>${rows.join('')}</tbody>
    </table>`;
  }

  // ---------------------------------------------------------------- cluster

  async function pollCluster() {
    state.cluster = await getJSON('/v1/cluster');
    renderCluster();
  }

  function renderCluster() {
    const c = state.cluster;
    if (!c) return;
    const mode = $('cluster-mode');
    mode.textContent = c.mode || '';
    mode.className = `badge ${c.mode === 'standalone' ? 'accent' : 'ok'}`;
    const nodes = Array.isArray(c.nodes) ? c.nodes : [];
    const shards = (Array.isArray(c.shards) ? c.shards : []).slice().sort((a, b) => ((a.slots && a.slots.start) || 0) - ((b.slots && b.slots.start) || 0));
    const nodeIndex = new Map(nodes.map((n, i) => [n.id, i]));
    const nodeColor = (id) => (nodeIndex.has(id) ? coreColor(nodeIndex.get(id)) : '#5d6679');
    const nodeName = (id) => {
      const n = nodes.find((x) => x.id === id);
      return n && n.is_self ? `${esc(id)}<span class="self-tag">(this)</span>` : esc(id ?? '—');
    };
    const led = (id) => shards.filter((s) => s.leader === id).length;

    // Slot map: each shard's share of the slot space, coloured by its leader.
    const maxSlot = shards.reduce((m, s) => Math.max(m, (s.slots && s.slots.end) || 0), 0);
    const total = maxSlot + 1;
    const map = shards.length
      ? `<div class="slotmap">${shards
          .map((s) => {
            const width = s.slots ? ((s.slots.end - s.slots.start + 1) / total) * 100 : 0;
            return `<span style="width:${width}%;background:${s.leader == null ? '#5d6679' : nodeColor(s.leader)}" title="shard ${esc(s.id)}: slots ${esc(s.slots?.start)}–${esc(s.slots?.end)}, leader ${esc(s.leader ?? 'none')}"></span>`;
          })
          .join('')}</div><div class="slotmap-legend"><span>slot 0</span><span>${fmtInt(total)} slots · ${shards.length} shard${shards.length === 1 ? '' : 's'}</span><span>${fmtInt(maxSlot)}</span></div>`
      : '';

    // A node's health probe, as a tooltip.
    const nodeHealthTitle = (n) => {
      if (n.is_self) return 'this node';
      const seen = isNum(n.last_seen_ms) ? `last answered ${fmtInt(n.last_seen_ms)} ms ago` : 'not answered yet';
      const rtt = isNum(n.rtt_us) ? `, round trip ${(n.rtt_us / 1000).toFixed(2)} ms` : '';
      return `${seen}${rtt}${n.last_error ? `; ${n.last_error}` : ''}`;
    };
    const nodeRows = nodes
      .map(
        (n) => `<tr>
          <td class="l"><span class="core-id"><i style="background:${nodeColor(n.id)}"></i>${nodeName(n.id)}</span></td>
          <td class="l mono">${esc(n.address ?? '—')}</td>
          <td class="l"><span class="state ${esc(String(n.state || '').toLowerCase())}" title="${esc(nodeHealthTitle(n))}">${esc(n.state ?? '—')}${n.role === 'learner' ? ' · learner' : ''}</span></td>
          <td>${led(n.id)}</td>
        </tr>`,
      )
      .join('');
    const shardRows = shards
      .map((s) => {
        const replicas = (Array.isArray(s.replicas) ? s.replicas : []).map((r) => `<span class="chip${r === s.leader ? ' leader' : ''}" title="${r === s.leader ? 'leader' : 'replica'}">${esc(r)}</span>`).join('');
        const learners = (Array.isArray(s.learners) ? s.learners : []).map((r) => `<span class="chip" title="learner: catching up before it votes">${esc(r)}?</span>`).join('');
        // Lag is known on the node that leads the shard.
        const lag = Array.isArray(s.followers) && s.followers.length
          ? s.followers.map((f) => `${esc(f.node)}: ${fmtInt(f.lag)}`).join(', ')
          : (s.role === 'Leader' ? '0' : '<span class="dim" title="known by the node that leads this shard">—</span>');
        return `<tr>
          <td class="l">${esc(s.id)}</td>
          <td class="l mono">${s.slots ? `${esc(s.slots.start)}–${esc(s.slots.end)}` : '—'}</td>
          <td>${s.leader == null ? '<span class="badge warn">none</span>' : nodeName(s.leader)}</td>
          <td>${fmtInt(s.term)}</td>
          <td><span class="chips">${replicas || '—'}${learners}</span></td>
          <td class="mono">${lag}</td>
        </tr>`;
      })
      .join('');
    $('cluster').innerHTML = `
      ${map}
      <div class="subhead">Nodes</div>
      <table class="data"><thead><tr><th class="l">ID</th><th class="l">Address</th><th class="l">State</th><th>Leads</th></tr></thead>
      <tbody>${nodeRows || '<tr><td class="l dim" colspan="4">none</td></tr>'}</tbody></table>
      <div class="subhead">Shards</div>
      <div class="table-wrap"><table class="data"><thead><tr><th class="l">Shard</th><th class="l">Slots</th><th>Leader</th><th>Term</th><th>Replicas</th><th title="entries each follower lacks (on the shard's leader)">Lag</th></tr></thead>
      <tbody>${shardRows || '<tr><td class="l dim" colspan="6">none</td></tr>'}</tbody></table></div>`;
  }

  // ---------------------------------------------------------------- tenants

  async function pollTenants() {
    const body = await getJSON('/v1/tenants');
    state.tenants = Array.isArray(body.tenants) ? body.tenants : [];
    scrapeTenantRates();
    renderTenants();
    fillTenantSelect();
  }

  // A tenant's request rate: the change of usage.requests_total between
  // two polls of /v1/tenants.
  function scrapeTenantRates() {
    const now = Date.now();
    const totals = new Map();
    for (const tenant of state.tenants || []) {
      if (tenant.usage && isNum(tenant.usage.requests_total)) totals.set(tenant.name, tenant.usage.requests_total);
    }
    if (state.tenantTotals) {
      const dt = (now - state.tenantTotalsAt) / 1000;
      for (const [name, total] of totals) {
        const prev = state.tenantTotals.get(name);
        if (isNum(prev) && dt > 0 && total >= prev) state.tenantRates.set(name, (total - prev) / dt);
      }
    }
    state.tenantTotals = totals;
    state.tenantTotalsAt = now;
  }

  function meter(label, used, max, fmt) {
    const unlimited = max === null || max === undefined;
    const pct = unlimited ? 0 : max > 0 ? Math.min(100, (used / max) * 100) : 100;
    const cls = unlimited ? 'unlimited' : pct >= 100 ? 'full' : pct >= 85 ? 'warn' : '';
    const of = unlimited ? 'unlimited' : `${fmt(max)} · ${pct < 10 && pct > 0 ? pct.toFixed(1) : Math.round(pct)}%`;
    return `<div class="meter">
      <div class="meter-label"><span>${label} <b>${fmt(used)}</b></span><span>${of}</span></div>
      <div class="bar ${cls}"><span style="width:${unlimited ? 100 : pct}%"></span></div>
    </div>`;
  }

  function renderTenants() {
    const list = state.tenants || [];
    if (!list.length) {
      $('tenants').innerHTML = '<p class="empty">No tenants defined.</p>';
      return;
    }
    const rows = list.map((t) => {
      const q = t.quota || {};
      const u = t.usage || {};
      const rate = isNum(t.ops_per_sec) ? t.ops_per_sec : isNum(u.ops_per_sec) ? u.ops_per_sec : state.tenantRates.get(t.name);
      const total = state.tenantTotals && state.tenantTotals.get(t.name);
      return `<div class="tenant">
        <div class="tenant-head">
          <span class="tenant-name">${esc(t.name)}</span>
          <span class="tenant-ops" title="${isNum(total) ? `${fmtInt(total)} requests since start` : ''}"><b>${isNum(rate) ? fmtInt(rate) : '—'}</b> ops/s</span>
        </div>
        <div class="meters">
          ${meter('keys', u.keys, q.max_keys, fmtInt)}
          ${meter('bytes', u.bytes, q.max_bytes, fmtBytes)}
        </div>
      </div>`;
    });
    $('tenants').innerHTML = `<div class="tenant-list">${rows.join('')}</div>`;
  }

  function fillTenantSelect() {
    const sel = $('console-tenant');
    const names = (state.tenants || []).map((t) => t.name);
    const have = Array.from(sel.options).map((o) => o.value);
    if (names.join('\n') === have.join('\n')) return;
    const current = sel.value;
    sel.replaceChildren(...names.map((n) => new Option(n, n)));
    sel.value = names.includes(current) ? current : names.includes('default') ? 'default' : names[0] || '';
  }

  // ---------------------------------------------------------------- snapshot

  async function takeSnapshot() {
    const btn = $('snapshot-button');
    btn.disabled = true;
    setText('cores-note', 'taking a snapshot…');
    try {
      const { body, ms } = await request('POST', '/v1/snapshot', { timeout: 120_000 });
      setText('cores-note', `snapshot: ${fmtInt(body.entries)} keys, ${fmtBytes(body.bytes)} in ${fmtLatency(ms * 1000)}`);
      polls.node?.run();
    } catch (e) {
      setText('cores-note', `snapshot failed: ${describeError(e)}`);
    } finally {
      btn.disabled = state.node && state.node.durability === 'none';
    }
  }

  // ---------------------------------------------------------------- key console

  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === 'class') node.className = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c instanceof Node ? c : String(c));
    return node;
  };

  let scanState = null; // { tenant, prefix, cursor, keys }
  let busy = false;

  function showResult(kind, op, target, title, { status, ms, body = [], meta = [] } = {}) {
    const box = $('console-result');
    box.className = `console-result ${kind}`;
    const timing = [status ? `HTTP ${status}` : null, isNum(ms) ? fmtLatency(ms * 1000) : null].filter(Boolean).join(' · ');
    const parts = [
      el('div', { class: 'result-head' },
        el('span', { class: 'result-op' }, op),
        el('span', { class: 'result-title' }, title),
        target ? el('span', { class: 'result-target', title: target }, target) : null,
        el('span', { class: 'result-status' }, timing)),
      ...body,
      meta.length ? el('div', { class: 'result-meta' }, meta.map(([cls, text]) => el('span', { class: `badge ${cls}` }, text))) : null,
    ];
    box.replaceChildren(...parts.filter(Boolean));
  }

  function showError(op, target, e) {
    if (e.status === 0) {
      showResult('error', op, target, 'No answer', { body: [el('div', { class: 'error-message' }, `The node did not answer: ${e.message}.`)] });
      return;
    }
    showResult('error', op, target, 'Error', {
      status: e.status,
      ms: e.ms,
      body: [el('div', { class: 'error-message' }, el('span', { class: 'error-code' }, e.code), ' ', e.message)],
    });
  }

  function inputs(needKey = true) {
    const tenant = $('console-tenant').value;
    const key = $('console-key').value;
    if (!tenant) throw new Error('Pick a tenant (none loaded yet).');
    if (needKey && key === '') throw new Error('Enter a key.');
    return { tenant, key };
  }

  async function runConsole(op, fn) {
    if (busy) return;
    let args;
    try {
      args = fn.needsInputs ? fn.needsInputs() : null;
    } catch (e) {
      showResult('error', op, '', 'Missing input', { body: [el('div', { class: 'error-message' }, e.message)] });
      return;
    }
    busy = true;
    for (const id of ['console-get', 'console-set', 'console-delete', 'console-scan']) $(id).disabled = true;
    try {
      await fn(args);
    } finally {
      busy = false;
      for (const id of ['console-get', 'console-set', 'console-delete', 'console-scan']) $(id).disabled = false;
    }
  }

  function bytesOf(s) {
    return new TextEncoder().encode(s).length;
  }

  const consoleOps = {
    async get({ tenant, key }) {
      const target = `${tenant} / ${key}`;
      try {
        const { body, status, ms } = await request('GET', keyPath(tenant, key));
        const meta = [
          ['accent', `version ${body.version}`],
          ['', body.ttl_ms === null || body.ttl_ms === undefined ? 'no expiry' : `expires in ${fmtDuration(body.ttl_ms / 1000)} (${fmtInt(body.ttl_ms)} ms)`],
          ['', body.encoding === 'base64' ? 'binary · shown as base64' : `utf8 · ${fmtInt(bytesOf(body.value))} bytes`],
        ];
        showResult('ok', 'GET', target, 'Found', { status, ms, body: [el('pre', { class: 'result-value' }, body.value)], meta });
      } catch (e) {
        if (e.code === 'key_not_found') {
          showResult('miss', 'GET', target, 'Not found', { status: e.status, ms: e.ms, body: [el('div', { class: 'error-message' }, el('span', { class: 'error-code' }, e.code), ' ', e.message)] });
        } else showError('GET', target, e);
      }
    },
    async set({ tenant, key }) {
      const target = `${tenant} / ${key}`;
      const value = $('console-value').value;
      const ttlText = $('console-ttl').value.trim();
      let query = '';
      if (ttlText !== '') {
        if (!/^\d+$/.test(ttlText) || Number(ttlText) < 1) {
          showResult('error', 'SET', target, 'Invalid TTL', { body: [el('div', { class: 'error-message' }, 'TTL must be a whole number of milliseconds, 1 or more (leave it empty for no expiry).')] });
          return;
        }
        query = `?ttl_ms=${ttlText}`;
      }
      try {
        const { body, status, ms } = await request('PUT', keyPath(tenant, key) + query, { body: value });
        showResult('ok', 'SET', target, 'Stored', {
          status, ms,
          meta: [['accent', `version ${body.version}`], ['', ttlText ? `expires in ${fmtDuration(Number(ttlText) / 1000)}` : 'no expiry'], ['', `${fmtInt(bytesOf(value))} bytes`]],
        });
        polls.tenants?.run();
      } catch (e) {
        showError('SET', target, e);
      }
    },
    async delete({ tenant, key }) {
      const target = `${tenant} / ${key}`;
      try {
        const { body, status, ms } = await request('DELETE', keyPath(tenant, key));
        if (body.deleted) showResult('ok', 'DELETE', target, 'Deleted', { status, ms });
        else showResult('miss', 'DELETE', target, 'Not found', { status, ms, body: [el('div', { class: 'error-message' }, 'The key did not exist; nothing was deleted.')] });
        polls.tenants?.run();
      } catch (e) {
        showError('DELETE', target, e);
      }
    },
    async scan({ tenant, key }, more = false) {
      if (!more) scanState = { tenant, prefix: key, cursor: null, keys: [], pages: 0 };
      const s = scanState;
      const target = `${s.tenant} / ${s.prefix === '' ? '(all keys)' : `${s.prefix}*`}`;
      let last = { status: 200, ms: 0 };
      try {
        // A page may be empty while the scan goes on (it walks slots in
        // bounded steps): follow the cursor a few times to show something.
        let steps = 0;
        const wanted = s.keys.length + SCAN_PAGE;
        do {
          const q = new URLSearchParams({ prefix: s.prefix, limit: String(SCAN_PAGE) });
          if (s.cursor !== null) q.set('cursor', s.cursor);
          const { body, status, ms } = await request('GET', `/v1/tenants/${encodeURIComponent(s.tenant)}/keys?${q}`);
          last = { status, ms: last.ms + ms };
          s.keys.push(...(body.keys || []));
          s.cursor = body.cursor ?? null;
          s.pages++;
          steps++;
        } while (s.cursor !== null && s.keys.length < wanted && steps < 20);
      } catch (e) {
        showError('SCAN', target, e);
        return;
      }
      const list = el('ul', { class: 'scan-keys' }, s.keys.map((k) => el('li', {}, el('button', { type: 'button', title: `Get ${k}`, onclick: () => { $('console-key').value = k; runConsole('GET', consoleOps.get); } }, k))));
      const foot = el('div', { class: 'scan-foot' },
        el('span', {}, s.cursor === null ? `${fmtInt(s.keys.length)} key${s.keys.length === 1 ? '' : 's'} · scan complete` : `${fmtInt(s.keys.length)} keys so far · cursor ${s.cursor}`),
        s.cursor !== null ? el('button', { type: 'button', class: 'btn btn-small', id: 'console-scan-more', onclick: () => runConsole('SCAN', moreScan) }, 'More') : null);
      showResult(s.keys.length ? 'ok' : 'miss', 'SCAN', target, s.keys.length ? 'Keys' : 'No keys', { status: last.status, ms: last.ms, body: [s.keys.length ? list : null, foot] });
    },
  };
  const moreScan = () => consoleOps.scan(scanState, true);
  consoleOps.get.needsInputs = () => inputs(true);
  consoleOps.set.needsInputs = () => inputs(true);
  consoleOps.delete.needsInputs = () => inputs(true);
  consoleOps.scan.needsInputs = () => inputs(false);

  function wireConsole() {
    $('console-get').addEventListener('click', () => runConsole('GET', consoleOps.get));
    $('console-set').addEventListener('click', () => runConsole('SET', consoleOps.set));
    $('console-delete').addEventListener('click', () => runConsole('DELETE', consoleOps.delete));
    $('console-scan').addEventListener('click', () => runConsole('SCAN', consoleOps.scan));
    $('console-key').addEventListener('keydown', (e) => {
      if (e.key === 'Enter') { e.preventDefault(); runConsole('GET', consoleOps.get); }
    });
    $('console-value').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); runConsole('SET', consoleOps.set); }
    });
  }

  // ---------------------------------------------------------------- start

  function start() {
    for (const box of document.querySelectorAll('[data-log-toggle]')) {
      const name = box.dataset.logToggle;
      box.checked = state.log[name];
      box.addEventListener('change', () => {
        state.log[name] = box.checked;
        writePref(name, box.checked);
        destroyCharts(name);
        drawCharts();
      });
    }
    $('snapshot-button').addEventListener('click', takeSnapshot);
    wireConsole();
    showChartPlaceholders();

    let resizeFrame = 0;
    const onResize = () => {
      cancelAnimationFrame(resizeFrame);
      resizeFrame = requestAnimationFrame(resizeCharts);
    };
    window.addEventListener('resize', onResize);
    if (window.ResizeObserver) new ResizeObserver(onResize).observe(document.querySelector('.charts'));

    poll('live', 1000, pollLive);
    poll('node', 2000, pollNode);
    poll('tenants', 3000, pollTenants);
    poll('cluster', 5000, pollCluster);
    setInterval(() => {
      tickUptime();
      if (Object.keys(state.errors).length) updateStatus(); // keeps "data from N s ago" current
    }, 1000);
  }

  if (typeof uPlot === 'undefined') {
    document.getElementById('banner').hidden = false;
    document.getElementById('banner-title').textContent = 'Dashboard error.';
    document.getElementById('banner-text').textContent = 'The chart library (/assets/uPlot.iife.min.js) did not load.';
    return;
  }
  start();
})();
