/*
 * gyrus dashboard: a read-only view of the local daemon.
 *
 * Every 2 s (one poll at a time, each cut off after 5 s) it reads the control API under
 * /_gyrus/v1 with the browser's session cookie and shows: the APIs and their status, the
 * selected API's last 5 minutes as uPlot charts (requests, latency, in flight, replicas and
 * autoscaler decisions, prediction tracker), its replicas, model stats and log tail, the batch
 * jobs, and the model store. The selection lives in the URL hash (#api=<name>).
 *
 * Everything the server sends is untrusted: it reaches the page only through textContent.
 * Test hooks: body[data-ready="1"] after the first APIs render; tr[data-api]; [data-chart]
 * containers get data-points="<points drawn>" after each draw.
 */
'use strict';

const API = '/_gyrus/v1';
const POLL_MS = 2000;
const TIMEOUT_MS = 5000;
const SERIES_SECONDS = 300;
const CHART_HEIGHT = 170;
const PALETTE = ['#2563eb', '#16a34a', '#d97706', '#7c3aed', '#db2777',
  '#0891b2', '#65a30d', '#dc2626', '#475569', '#ca8a04'];

const state = {
  apis: [],
  selected: null,       // name of the API the detail section shows
  charts: new Map(),    // chart id -> { plot, key }
  xRange: [0, 1],       // the time window every chart shows
  rendered: new Map(),  // section -> JSON of what it last drew, to skip identical redraws
  followLogs: true,     // keep the log view scrolled to the bottom
  timer: null, polling: false, pollAgain: false, // the next poll; one in flight; poll again after it
};

class AuthError extends Error {}
class HttpError extends Error {}

/* ---------- small helpers ---------- */

const $ = (sel) => document.querySelector(sel);

/** An element with properties (`class`, `text`, `data-*`, or any DOM property) and children. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v == null ? '' : String(v);
    else if (k.startsWith('data-')) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) if (c != null) node.append(c); // strings become text nodes
  return node;
}

const pad2 = (n) => String(n).padStart(2, '0');
const clock = (d) => `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
const dash = (v) => (v == null || v === '' ? '—' : v);

const fmtDate = (s) => (!s ? '—' : Number.isNaN(Date.parse(s)) ? String(s) : new Date(s).toLocaleString());
function fmtBytes(n) {
  if (!Number.isFinite(n)) return '—';
  const i = n >= 1024 ? Math.min(4, Math.floor(Math.log2(n) / 10)) : 0;
  return `${i ? (n / 1024 ** i).toFixed(1) : n} ${['B', 'KiB', 'MiB', 'GiB', 'TiB'][i]}`;
}

const fmtNum = (v, digits = 2) => (Number.isFinite(v) ? String(+v.toFixed(digits)) : '—');
const progressText = (p) => p && `downloading ${fmtBytes(p.done)}${p.total ? ` of ${fmtBytes(p.total)}` : ''}`;

/** Runs `draw` only when `data` differs from what the section last drew. */
function drawIfChanged(section, data, draw) {
  const json = JSON.stringify(data);
  if (state.rendered.get(section) === json) return;
  state.rendered.set(section, json);
  draw(data);
}

function fillTable(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => el('tr', {}, ...cells.map((c) => el('td', {}, c)))));
}

function table(headers, rows, cls = 'grid') {
  const head = el('thead', {}, el('tr', {}, ...headers.map((h) => el('th', { text: h }))));
  const t = el('table', { class: cls }, head, el('tbody'));
  fillTable(t.tBodies[0], rows);
  return t;
}

function badge(status) {
  const s = String(status || 'unknown');
  const tone = { live: 'ok', ready: 'ok', succeeded: 'ok', running: 'info', updating: 'warn', starting: 'warn',
    enqueuing: 'warn', pending: 'warn', completed_with_failures: 'warn' }[s]
    || (/error|crash|fail|oom|timed_out|stopped/.test(s) ? 'bad' : 'neutral');
  return el('span', { class: `badge ${tone}`, text: s });
}

/* ---------- fetching ---------- */

/* The sign-in redirect brings the session's API key in the URL fragment (never sent to a
   server); it is kept in this tab's sessionStorage, out of the URL, and sent as a header, so no
   other page (another tab, another port of this host) can read through it. */
const SESSION_HEADER = 'X-Gyrus-Session';

function takeSession() {
  const m = /^#session=([0-9a-f]+)$/.exec(location.hash);
  if (m) {
    sessionStorage.setItem('gyrus-session', m[1]);
    history.replaceState(null, '', location.pathname + location.search);
  }
  return sessionStorage.getItem('gyrus-session') || '';
}

const SESSION = takeSession();

async function get(path, signal, as = 'json') {
  const res = await fetch(API + path, {
    credentials: 'omit', signal, cache: 'no-store', headers: { [SESSION_HEADER]: SESSION },
  });
  if (res.status === 401 || res.status === 403) throw new AuthError(`HTTP ${res.status}`);
  if (!res.ok) {
    const body = await res.text().catch(() => '');
    let msg = body.slice(0, 200);
    try { msg = JSON.parse(body).error || msg; } catch (_) { /* not JSON */ }
    throw new HttpError(`${path}: HTTP ${res.status}${msg ? ` (${msg})` : ''}`);
  }
  return as === 'json' ? res.json() : res.text();
}

/** Runs one part of a poll; an HTTP error there shows inside its section, not as an outage. */
async function part(name, fn) {
  const note = document.querySelector(`[data-error-for="${name}"]`);
  try {
    await fn();
    note.hidden = true;
  } catch (err) {
    if (!(err instanceof HttpError)) throw err;
    note.textContent = err.message;
    note.hidden = false;
  }
}

/* ---------- polling ---------- */

function schedule(ms) {
  clearTimeout(state.timer);
  state.timer = setTimeout(poll, ms);
}

async function poll() {
  state.polling = true;
  const ctrl = new AbortController();
  const timeout = setTimeout(() => ctrl.abort(), TIMEOUT_MS);
  try {
    const [health, apis] = await Promise.all([get('/health', ctrl.signal), get('/apis', ctrl.signal)]);
    showSignedIn(true);
    renderHealth(health || {});
    renderApis(Array.isArray(apis) ? apis : []);
    document.body.dataset.ready = '1';
    renderJobs(state.apis);
    await Promise.all([
      part('models', async () => renderModels(await get('/models', ctrl.signal))),
      refreshDetail(ctrl.signal),
    ]);
    $('#banner').hidden = true;
    $('#updated').textContent = `last update ${clock(new Date())}`;
  } catch (err) {
    if (err instanceof AuthError) showSignedIn(false);
    else showBanner(err);
  } finally {
    clearTimeout(timeout);
    state.polling = false;
    schedule(state.pollAgain ? 0 : POLL_MS);
    state.pollAgain = false;
  }
}

function showBanner(err) {
  const what = err instanceof HttpError ? 'The gyrus daemon answered with an error' : 'Cannot reach the gyrus daemon';
  const why = err.name === 'AbortError' ? `no answer within ${TIMEOUT_MS / 1000} s` : err.message;
  $('#banner').textContent = `${what}: ${why}. Retrying every ${POLL_MS / 1000} s…`;
  $('#banner').hidden = false;
}

/** Shows the content, or in its place the "not signed in" message. */
function showSignedIn(yes) {
  $('#signed-out').hidden = yes;
  $('#content').hidden = !yes;
  if (!yes) {
    $('#banner').hidden = true;
    $('#updated').textContent = 'not signed in';
  }
}

/* ---------- header, APIs table, selection ---------- */

function renderHealth(h) {
  $('#version').textContent = h.version ? `v${h.version}` : '';
  $('#daemon').textContent = [h.addr, h.pid && `pid ${h.pid}`, h.home].filter(Boolean).join(' · ');
}

function hashSelection() {
  const m = /^#api=(.+)$/.exec(location.hash);
  try { return m ? decodeURIComponent(m[1]) : null; } catch (_) { return null; }
}

function select(name) {
  if (name === state.selected) return;
  state.selected = name;
  state.followLogs = true;
  state.rendered.delete('logs');
  for (const tr of document.querySelectorAll('#apis tbody tr')) {
    tr.classList.toggle('selected', tr.dataset.api === name);
  }
  // Until the new API's data comes, its charts show nothing rather than the last API's.
  for (const c of state.charts.values()) c.plot.setData(c.plot.data.map(() => []));
  document.querySelectorAll('[data-chart]').forEach((box) => box.removeAttribute('data-points'));
}

function renderApis(apis) {
  state.apis = apis;
  const wanted = hashSelection();
  const name = apis.some((a) => a.name === wanted) ? wanted : apis[0] && apis[0].name;
  if (name && name !== wanted) history.replaceState(null, '', `#api=${encodeURIComponent(name)}`);
  select(name || null);
  $('#apis-empty').hidden = apis.length > 0;
  drawIfChanged('apis', [apis, state.selected], () => {
    $('#apis tbody').replaceChildren(...apis.map(apiRow));
  });
}

function apiRow(a) {
  const r = a.replicas || {};
  const status = el('td', {}, badge(a.status));
  for (const [cls, text] of [['err', a.error], ['note', a.message], ['note', progressText(a.progress)]]) {
    if (text) status.append(el('div', { class: cls, text }));
  }
  const extra = [r.starting && `${r.starting} starting`, r.failed && `${r.failed} failed`]
    .filter(Boolean).join(', ');
  const inFlight = a.autoscaling && a.autoscaling.in_flight_now != null
    ? a.autoscaling.in_flight_now
    : (a.replica_details || []).reduce((n, d) => n + (d.in_flight || 0), 0);
  return el('tr', { 'data-api': a.name, class: a.name === state.selected ? 'selected' : '' },
    el('td', { class: 'name', text: a.name }),
    el('td', { text: a.kind }),
    status,
    el('td', {}, `${dash(r.ready)}/${dash(r.requested)}`, extra ? el('div', { class: 'note', text: extra }) : null),
    el('td', { class: 'num', text: inFlight }),
    el('td', {}, el('code', { text: a.url || a.endpoint })));
}

/* ---------- the selected API ---------- */

async function refreshDetail(signal) {
  const api = state.apis.find((a) => a.name === state.selected);
  $('#detail').hidden = !api;
  if (!api) return;
  $('#detail-name').textContent = api.name;
  const generation = api.generation != null && `generation ${api.generation}`;
  $('#detail-meta').textContent = [api.kind, api.predictor_type, generation].filter(Boolean).join(' · ');
  renderReplicaTable(api);
  renderModelStats(api);
  const name = encodeURIComponent(api.name);
  await Promise.all([
    part('series', async () => {
      const series = await get(`/apis/${name}/series?seconds=${SERIES_SECONDS}`, signal)
        .catch((err) => { $('#charts').hidden = true; throw err; });
      if (api.name !== state.selected) return;
      $('#charts').hidden = false;
      renderSeries(series);
    }),
    part('logs', async () => {
      const text = await get(`/apis/${name}/logs?tail=100`, signal, 'text');
      if (api.name === state.selected) renderLogs(text);
    }),
  ]);
}

function renderReplicaTable(api) {
  drawIfChanged('replicas', api.replica_details || [], (reps) => {
    if (!reps.length) return fillTable($('#replicas tbody'), [[el('span', { class: 'muted', text: 'none' })]]);
    fillTable($('#replicas tbody'), reps.map((r) => [
      el('code', { text: r.id }),
      el('span', {}, badge(r.state), r.error ? el('div', { class: 'err', text: r.error }) : null),
      dash(r.in_flight), dash(r.restarts), fmtDate(r.started_at),
    ]));
  });
}

function renderModelStats(api) {
  const models = Array.isArray(api.models) ? api.models : [];
  $('#model-stats-box').hidden = models.length === 0;
  drawIfChanged('model-stats', models, () => {
    fillTable($('#model-stats tbody'), models.map((m) => [
      el('code', { text: m.model }), dash(m.requests), dash(m.runs),
      dash(m.queued), (m.shed_queue_full || 0) + (m.shed_deadline || 0),
    ]));
  });
}

function renderLogs(text) {
  drawIfChanged('logs', text, () => {
    const pre = $('#logs');
    pre.textContent = text || '(no log output yet)';
    if (state.followLogs) pre.scrollTop = pre.scrollHeight;
  });
}

/* ---------- charts ---------- */

// Each fixed chart: its series (label, colour) and how to read them off one point.
const CHARTS = {
  requests: { series: [['requests', PALETTE[0]], ['errors (5xx)', PALETTE[7]], ['rejected', PALETTE[2]]],
    pick: (p) => [p.requests, p.errors, p.rejected] },
  latency: { series: [['p50', PALETTE[0]], ['p99', PALETTE[3]]], pick: (p) => [p.p50_ms, p.p99_ms] },
  in_flight: { series: [['in flight', PALETTE[5]]], pick: (p) => [p.in_flight] },
  replicas: { series: [['requested', PALETTE[8]], ['ready', PALETTE[1]]], stepped: true,
    pick: (p) => [p.replicas_requested, p.replicas_ready] },
};

const chartBox = (id) => document.querySelector(`[data-chart="${id}"]`);

/**
 * Columns for uPlot: times, then one array per series. Over a gap between points, `gaps` says
 * what to draw: 'break' the line (no data), or count 'zero' for each missing step.
 */
function columns(points, pick, n, step, gaps = 'break') {
  const cols = Array.from({ length: n + 1 }, () => []);
  const push = (t, vals) => {
    cols[0].push(t);
    vals.forEach((v, i) => cols[i + 1].push(typeof v === 'number' ? v : null));
  };
  let prev = null;
  for (const p of points) {
    if (prev !== null && gaps === 'break' && p.t - prev > step * 1.5) push(prev + step, Array(n).fill(null));
    if (prev !== null && gaps === 'zero') {
      for (let t = prev + step; t < p.t - step / 2; t += step) push(t, Array(n).fill(0));
    }
    push(p.t, pick(p));
    prev = p.t;
  }
  return cols;
}

/** A time axis label, in local time: HH:MM, with seconds when ticks are under a minute apart. */
const axisTime = (t, incr) => clock(new Date(t * 1000)).slice(0, incr < 60 ? 8 : 5);

/** The chart's uPlot, made anew only when `key` (its set of series) changes. */
function chart(id, key, series, stepped = false) {
  const have = state.charts.get(id);
  if (have && have.key === key) return have.plot;
  if (have) have.plot.destroy();
  const box = chartBox(id).querySelector('.plot');
  const paths = stepped ? uPlot.paths.stepped({ align: 1 }) : undefined;
  const plot = new uPlot({
    width: Math.max(box.clientWidth, 200),
    height: CHART_HEIGHT,
    cursor: { sync: { key: 'gyrus' }, drag: { x: false, y: false, setScale: false } },
    scales: {
      x: { time: true, range: () => state.xRange },
      y: { range: (u, min, max) => [Math.min(0, min || 0), max > 0 ? max * 1.15 : 1] },
    },
    axes: [{ values: (u, splits, ai, space, incr) => splits.map((v) => axisTime(v, incr)) }, { size: 48 }],
    series: [
      { value: (u, v) => (v == null ? '--' : clock(new Date(v * 1000))) },
      ...series.map(([label, stroke, extra]) => ({ label, stroke, width: 1.5, paths, points: { size: 3 }, ...extra })),
    ],
  }, [[], ...series.map(() => [])], box);
  state.charts.set(id, { plot, key });
  return plot;
}

function draw(id, key, series, data, count, stepped) {
  chart(id, key, series, stepped).setData(data);
  chartBox(id).dataset.points = String(count);
}

function renderSeries(s) {
  const points = (Array.isArray(s.points) ? s.points : []).slice().sort((a, b) => a.t - b.t);
  const step = s.interval_seconds > 0 ? s.interval_seconds : 1;
  const end = points.length ? points[points.length - 1].t : Math.floor(Date.now() / 1000);
  state.xRange = [end - SERIES_SECONDS, end];
  for (const [id, c] of Object.entries(CHARTS)) {
    draw(id, 'fixed', c.series, columns(points, c.pick, c.series.length, step), points.length, c.stepped);
  }
  renderDecisions(Array.isArray(s.decisions) ? s.decisions : []);
  renderTracker(s.tracker, step);
}

function renderDecisions(decisions) {
  const newest = decisions.slice().sort((a, b) => (b.t || 0) - (a.t || 0)).slice(0, 10);
  const items = newest.map((d) => {
    const when = d.t ? new Date(d.t * 1000) : new Date(d.at);
    return el('li', {},
      el('span', { class: 'when', text: Number.isNaN(when.getTime()) ? String(d.at) : clock(when) }),
      el('strong', { text: ` ${dash(d.from)} → ${dash(d.to)} ` }),
      d.reason || '');
  });
  $('#decisions').replaceChildren(...(items.length ? items
    : [el('li', { class: 'muted', text: 'No autoscaler decisions in the last 5 minutes.' })]));
}

function renderTracker(t, step) {
  const box = chartBox('tracker');
  box.hidden = !t;
  if (!t) return; // its uPlot stays, hidden, for the next API with a tracker
  const points = (Array.isArray(t.points) ? t.points : []).slice().sort((a, b) => a.t - b.t);
  if (t.model_type === 'classification') {
    const totals = t.totals || {};
    const classes = new Set(Object.keys(totals));
    for (const p of points) for (const c of Object.keys(p.counts || {})) classes.add(c);
    const names = [...classes].sort((a, b) => (totals[b] || 0) - (totals[a] || 0) || a.localeCompare(b));
    const series = names.map((c, i) => [c, PALETTE[i % PALETTE.length]]);
    const data = columns(points, (p) => names.map((c) => (p.counts && p.counts[c]) || 0), names.length, step, 'zero');
    $('#tracker-title').textContent = `Predictions / s by ${t.key || 'class'}`;
    draw('tracker', `cls:${JSON.stringify(names)}`, series, data, points.length);
    trackerSummary(t, names, totals);
  } else {
    $('#tracker-title').textContent = `Mean prediction${t.key ? ` (${t.key})` : ''}`;
    // Seconds without predictions have no mean: the line joins the seconds that have one.
    const series = [['mean', PALETTE[3], { spanGaps: true }]];
    draw('tracker', 'reg', series, columns(points, (p) => [p.mean], 1, step), points.length);
    trackerSummary(t);
  }
}

function trackerSummary(t, names, totals) {
  drawIfChanged('tracker-summary', [t.model_type, t.totals, t.count, t.sum, t.invalid], () => {
    const parts = [];
    if (names) {
      const all = names.reduce((n, c) => n + (totals[c] || 0), 0) || 1;
      parts.push(table(['Class', 'Total', 'Share'], names.map((c, i) => {
        const swatch = el('span', { class: 'swatch' });
        swatch.style.background = PALETTE[i % PALETTE.length];
        return [el('span', {}, swatch, c), totals[c] || 0, `${((100 * (totals[c] || 0)) / all).toFixed(1)}%`];
      }), 'grid compact'));
    } else {
      const mean = t.count ? t.sum / t.count : null;
      parts.push(el('p', { text: `${dash(t.count)} predictions, overall mean ${fmtNum(mean, 4)}` }));
    }
    if (t.invalid) parts.push(el('p', { class: 'note', text: `${t.invalid} predictions could not be tracked` }));
    $('#tracker-summary').replaceChildren(...parts);
  });
}

/* ---------- batch jobs and the model store ---------- */

function renderJobs(apis) {
  const batch = apis.filter((a) => a.kind === 'BatchAPI');
  $('#jobs-empty').hidden = batch.length > 0;
  drawIfChanged('jobs', batch.map((a) => [a.name, a.jobs]), () => {
    $('#jobs-body').replaceChildren(...batch.map((a) => {
      const j = a.jobs || {};
      const recent = Array.isArray(j.recent) ? j.recent : [];
      return el('div', { class: 'job-api', 'data-api': a.name },
        el('h3', {}, a.name, el('span', { class: 'muted', text:
          ` ${j.running || 0} running · ${j.workers_running || 0} workers · ${j.total || 0} jobs in all` })),
        recent.length ? table(['Job', 'Status', 'Progress', 'Created', 'Ended'], recent.map(jobCells))
          : el('p', { class: 'muted', text: 'No jobs yet.' }));
    }));
  });
}

function jobCells(job) {
  const total = job.total_batch_count || 0;
  const done = (job.succeeded || 0) + (job.failed || 0);
  const bar = el('progress', { max: Math.max(total, 1) });
  if (total > 0) bar.value = done; // without a value the bar shows "unknown"
  const label = `${done}/${total || '?'}${job.failed ? ` (${job.failed} failed)` : ''}`;
  return [el('code', { text: job.job_id }), badge(job.status),
    el('span', { class: 'progress' }, bar, el('span', { text: label })),
    fmtDate(job.created_time), fmtDate(job.end_time)];
}

function renderModels(models) {
  const list = Array.isArray(models) ? models : [];
  $('#models-empty').hidden = list.length > 0;
  drawIfChanged('models', list, () => {
    fillTable($('#models tbody'), list.map((m) => {
      const info = m.info || {};
      const framework = info.context && info.context.framework_name;
      const module = [info.module, framework && `(${framework})`].filter(Boolean).join(' ');
      const size = info.size_bytes != null ? info.size_bytes : info.size;
      const usedBy = Array.isArray(m.used_by) && m.used_by.length ? m.used_by.join(', ') : '—';
      return [el('code', { text: m.tag }), dash(module), fmtBytes(size), fmtDate(info.creation_time), usedBy];
    }));
  });
}

/* ---------- start ---------- */

function start() {
  $('#apis tbody').addEventListener('click', (e) => {
    const row = e.target.closest('tr[data-api]');
    if (row && row.dataset.api !== state.selected) location.hash = `api=${encodeURIComponent(row.dataset.api)}`;
  });
  window.addEventListener('hashchange', () => {
    const name = hashSelection();
    if (!name || name === state.selected) return;
    select(name);
    if (state.polling) state.pollAgain = true; // poll now, or right after the poll in flight
    else schedule(0);
  });
  const logs = $('#logs');
  logs.addEventListener('scroll', () => {
    state.followLogs = logs.scrollHeight - logs.scrollTop - logs.clientHeight < 24;
  });
  const resizer = new ResizeObserver((entries) => {
    for (const entry of entries) {
      const c = state.charts.get(entry.target.closest('[data-chart]').dataset.chart);
      const width = Math.floor(entry.contentRect.width);
      if (c && width > 0 && width !== c.plot.width) c.plot.setSize({ width, height: CHART_HEIGHT });
    }
  });
  document.querySelectorAll('[data-chart] .plot').forEach((p) => resizer.observe(p));
  poll();
}

start();
