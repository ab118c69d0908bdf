// The Weir dashboard: reads the server's GET endpoints and polls them;
// changes (upgrade, savepoint) are POSTs with the bearer token, which is
// asked for once and kept in localStorage. Plain script, no build step.
'use strict';

const TOKEN_KEY = 'weir.token';
// How often the live figures and the slower tables are read.
const FAST_MS = 1000;
const SLOW_MS = 2000;
// Rates are averaged over this much time, so one late poll does not spike.
const RATE_WINDOW_MS = 5000;
const CHECKPOINT_ROWS = 10;

const $ = (selector, root = document) => root.querySelector(selector);

function esc(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function answer(response) {
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (!response.ok) {
    const message = (body && body.error) || `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  return body;
}

async function getJson(path) {
  return answer(await fetch(path, { cache: 'no-store' }));
}

// A change: asks for the token first if none is kept; a refused token is
// forgotten, so the next change asks again.
async function post(path) {
  let token = localStorage.getItem(TOKEN_KEY);
  if (!token) token = await askToken();
  if (!token) throw new ApiError(0, 'no API token given');
  const response = await fetch(path, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}` },
  });
  if (response.status === 401) {
    localStorage.removeItem(TOKEN_KEY);
    renderTokenState();
  }
  return answer(response);
}

function askToken() {
  const dialog = $('#token-dialog');
  const input = $('#token-input');
  input.value = '';
  return new Promise((resolve) => {
    dialog.onclose = () => {
      const token = dialog.returnValue === 'save' ? input.value.trim() : '';
      if (token) localStorage.setItem(TOKEN_KEY, token);
      renderTokenState();
      resolve(token || null);
    };
    dialog.returnValue = '';
    dialog.showModal();
    input.focus();
  });
}

function renderTokenState() {
  const el = $('#token-state');
  if (localStorage.getItem(TOKEN_KEY)) {
    el.innerHTML = 'API token kept in this browser · <a href="#" id="forget-token">forget</a>';
    $('#forget-token').onclick = (e) => {
      e.preventDefault();
      localStorage.removeItem(TOKEN_KEY);
      renderTokenState();
    };
  } else {
    el.textContent = 'read-only until a change asks for the API token';
  }
}

// ---- formatting

const nf = new Intl.NumberFormat('en-US');
const fmtNum = (n) => (n == null ? '—' : nf.format(n));

function fmtRate(perSecond) {
  if (perSecond == null) return '…';
  const abs = Math.abs(perSecond);
  if (abs >= 1e6) return `${(perSecond / 1e6).toFixed(2)}M/s`;
  if (abs >= 1e4) return `${(perSecond / 1e3).toFixed(1)}k/s`;
  if (abs >= 100) return `${Math.round(perSecond)}/s`;
  return `${perSecond.toFixed(1)}/s`;
}

function fmtBytes(n) {
  if (n == null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

function fmtDuration(ms) {
  if (ms == null) return '—';
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(2)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');
function fmtTime(ms) {
  if (ms == null) return '—';
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function fmtDateTime(ms) {
  if (ms == null) return '—';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${fmtTime(ms)}`;
}

// Event time: a wall-clock time when it looks like one (then also how far
// behind now), else the raw event time in seconds (generated test data).
const YEAR_2000_MS = 946684800000;
function fmtWatermark(ms, now) {
  if (ms == null) return '—';
  if (ms >= YEAR_2000_MS) {
    const behind = Math.max(0, now - ms) / 1000;
    return `${fmtTime(ms)} (${behind < 100 ? behind.toFixed(1) : Math.round(behind)} s behind)`;
  }
  return `t = ${(ms / 1000).toFixed(3)} s`;
}

const fmtPercent = (f) => (f == null ? '…' : `${Math.round(Math.min(1, Math.max(0, f)) * 100)}%`);

// ---- rates from counter readings

class Rates {
  constructor() { this.samples = new Map(); }

  // Per second over the last RATE_WINDOW_MS; null until two readings. A
  // counter that goes down belongs to a new run: it starts over.
  rate(key, value, at) {
    let s = this.samples.get(key) || [];
    if (s.length && value < s[s.length - 1][1]) s = [];
    s.push([at, value]);
    while (s.length > 2 && at - s[1][0] >= RATE_WINDOW_MS) s.shift();
    this.samples.set(key, s);
    if (s.length < 2 || at <= s[0][0]) return null;
    return ((value - s[0][1]) * 1000) / (at - s[0][0]);
  }
}

// ---- polling and routing

// Calls fn now and every ms after it settles, until the returned function
// is called. What a poller fails with is shown until it succeeds again.
const failures = new Map();
function poll(fn, ms) {
  const id = Symbol('poller');
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    try {
      await fn();
      failures.delete(id);
    } catch (e) {
      if (!stopped) failures.set(id, e);
    }
    if (!stopped) {
      showFailures();
      timer = setTimeout(tick, ms);
    }
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); failures.delete(id); };
}

function showFailures() {
  const el = $('#app-error');
  const [first] = failures.values();
  if (el) el.textContent = first ? `Cannot read from the server: ${first.message}` : '';
}

let current = null;
function route() {
  if (current) current();
  const match = (location.hash || '#/').match(/^#\/jobs\/([^/]+)$/);
  current = match ? jobPage(decodeURIComponent(match[1])) : jobsPage();
}

const badge = (state) => `<span class="badge ${esc(state)}">${esc(state)}</span>`;
const jobLink = (name) => `#/jobs/${encodeURIComponent(name)}`;

// ---- the jobs list

function jobsPage() {
  const app = $('#app');
  app.innerHTML = `
    <h1>Jobs</h1>
    <div id="app-error" class="error-box"></div>
    <section class="card">
      <table id="jobs">
        <thead><tr>
          <th>Job</th><th>State</th><th class="num">Parallelism</th><th>Modules</th>
          <th class="num">Records in</th><th class="num">Rate</th><th class="num">Restarts</th>
          <th>Submitted</th>
        </tr></thead>
        <tbody></tbody>
      </table>
      <p class="empty" hidden>No jobs yet: submit one with <code>weir job run job.yaml</code>.</p>
    </section>`;
  const rates = new Rates();
  return poll(async () => {
    const jobs = await getJson('/v1/jobs');
    const now = Date.now();
    $('#jobs tbody').innerHTML = jobs.map((j) => {
      const rate = j.state === 'running' ? rates.rate(j.name, j.records_in, now) : null;
      const modules = Object.entries(j.modules)
        .map(([op, m]) => `<span class="mono">${esc(op)}: ${esc(m)}</span>`).join(', ');
      return `<tr data-job="${esc(j.name)}">
        <td><a href="${jobLink(j.name)}">${esc(j.name)}</a></td>
        <td>${badge(j.state)}</td>
        <td class="num">${j.parallelism}</td>
        <td>${modules}</td>
        <td class="num">${fmtNum(j.records_in)}</td>
        <td class="num">${j.state === 'running' ? fmtRate(rate) : '—'}</td>
        <td class="num">${j.restarts}</td>
        <td>${fmtDateTime(j.submitted_ms)}</td>
      </tr>`;
    }).join('');
    $('#app .empty').hidden = jobs.length > 0;
  }, SLOW_MS);
}

// ---- a job's page

function jobPage(name) {
  const base = `/v1/jobs/${encodeURIComponent(name)}`;
  const app = $('#app');
  app.innerHTML = `
    <h1><a href="#/">Jobs</a> <span class="muted">/</span> <span id="job-name"></span>
      <span id="job-state"></span></h1>
    <div id="app-error" class="error-box"></div>
    <dl class="facts" id="facts"></dl>
    <div id="job-error"></div>
    <section class="card"><h2>Operator graph
      <span class="note">dashed boxes run chained in one task; blue edges cross tasks through channels</span></h2>
      <div class="graph" id="graph"></div></section>
    <section class="card"><h2>Operators <span class="note">rates over the last ${RATE_WINDOW_MS / 1000} s,
      records since the server started; backpressure: share of time blocked on a full output channel</span></h2>
      <table id="operators"><thead><tr>
        <th>Node</th><th class="num">Parallelism</th><th class="num">In</th><th class="num">Out</th>
        <th class="num">Records in</th><th class="num">Records out</th><th>Watermark</th>
        <th class="num">Backpressure</th><th class="num">Idle inputs</th>
      </tr></thead><tbody></tbody></table></section>
    <div class="grid2">
      <section class="card"><h2>Checkpoints <span class="note" id="checkpoint-note"></span></h2>
        <table id="checkpoints"><thead><tr>
          <th class="num">Id</th><th>Kind</th><th>Status</th><th>Started</th>
          <th class="num">Duration</th><th class="num">Size</th>
        </tr></thead><tbody></tbody></table>
        <p class="empty" id="no-checkpoints" hidden>No checkpoints yet (a job without
          <code>checkpoint:</code> in its spec takes only savepoints).</p></section>
      <section class="card"><h2>Logs <span class="note" id="log-note"></span></h2>
        <ul class="logs" id="logs"></ul>
        <p class="empty" id="no-logs" hidden>No guest output or errors yet.</p></section>
    </div>
    <div class="grid2 wide-left">
      <section class="card"><h2>Modules <span class="note">an upgrade swaps the module inside
        the running tasks at a checkpoint barrier, and rolls back to that checkpoint if the new
        version fails before the next one completes</span></h2>
        <table id="modules"><thead><tr>
          <th>Operator</th><th>Running</th><th title="version · uploaded at">Upgrade to</th><th>Probation</th><th></th>
        </tr></thead><tbody></tbody></table>
        <p class="empty" id="no-modules" hidden>No operator runs a registry module.</p></section>
      <section class="card"><h2>Savepoints
        <button id="take-savepoint">Take savepoint</button>
        <span class="result" id="savepoint-result"></span></h2>
        <table id="savepoints"><thead><tr>
          <th class="num">Id</th><th>Taken</th><th class="num">Size</th><th>Folder</th>
        </tr></thead><tbody></tbody></table>
        <p class="empty" id="no-savepoints" hidden>None yet.</p></section>
    </div>`;
  $('#job-name').textContent = name;

  const rates = new Rates();
  let job = null;
  let registry = {};
  // Upgrade messages by operator: they outlive the table's re-renders.
  const results = new Map();
  // Operators with an upgrade under way: their button stays disabled.
  const busy = new Set();
  let modulesKey = '';

  $('#take-savepoint').onclick = async () => {
    const button = $('#take-savepoint');
    const result = $('#savepoint-result');
    button.disabled = true;
    result.className = 'result busy';
    result.textContent = 'taking a savepoint…';
    try {
      const r = await post(`${base}/savepoint`);
      result.className = 'result ok';
      result.textContent = `written to ${r.savepoint}`;
    } catch (e) {
      result.className = 'result bad';
      result.textContent = e.message;
    } finally {
      button.disabled = false;
    }
  };

  const renderModules = () => {
    const ops = Object.entries(job.modules).filter(([, m]) => !m.startsWith('native:'));
    const key = JSON.stringify([ops, registry, job.state, [...busy]]);
    if (key === modulesKey) return;
    modulesKey = key;
    $('#no-modules').hidden = ops.length > 0;
    $('#modules tbody').innerHTML = ops.map(([op, running]) => {
      const [module, version] = running.split('@');
      const versions = (registry[module] || []).slice().reverse();
      const options = versions.map((v) => {
        const ref = `${module}@${v.version}`;
        const label = `${ref} · ${fmtTime(v.uploaded_ms)}`;
        return `<option value="${esc(ref)}" title="sha256 ${esc(v.digest)}"${String(v.version) === version ? ' disabled' : ''}>${esc(label)}</option>`;
      }).join('');
      return `<tr data-operator="${esc(op)}">
        <td>${esc(op)}</td>
        <td class="mono">${esc(running)}</td>
        <td><select class="upgrade-module">${options}</select></td>
        <td><input class="upgrade-probation" value="3s" aria-label="probation"></td>
        <td><button class="upgrade primary"${job.state === 'running' && !busy.has(op) ? '' : ' disabled'}>Upgrade</button></td>
      </tr>
      <tr class="result-row" data-operator="${esc(op)}"><td colspan="5" class="result upgrade-result"></td></tr>`;
    }).join('');
    for (const row of document.querySelectorAll('#modules tbody tr:not(.result-row)')) {
      const op = row.dataset.operator;
      const resultCell = row.nextElementSibling.firstElementChild;
      const select = $('.upgrade-module', row);
      const enabled = [...select.options].find((o) => !o.disabled);
      if (enabled) select.value = enabled.value;
      const shown = results.get(op);
      if (shown) {
        resultCell.className = `result upgrade-result ${shown.cls}`;
        resultCell.textContent = shown.text;
      }
      $('.upgrade', row).onclick = () => upgrade(row, op);
    }
  };

  const upgrade = async (row, op) => {
    const module = $('.upgrade-module', row).value;
    const probation = $('.upgrade-probation', row).value.trim() || '3s';
    const show = (cls, text) => {
      results.set(op, { cls, text });
      const el = row.nextElementSibling && row.nextElementSibling.firstElementChild;
      if (el) { el.className = `result upgrade-result ${cls}`; el.textContent = text; }
    };
    if (!module) return;
    busy.add(op);
    $('.upgrade', row).disabled = true;
    show('busy', `upgrading to ${module} (probation ${probation})…`);
    try {
      const r = await post(`${base}/operators/${encodeURIComponent(op)}/upgrade`
        + `?module=${encodeURIComponent(module)}&probation=${encodeURIComponent(probation)}`);
      if (r.upgraded) show('ok', `upgraded (${r.mode}): now runs ${r.module}`);
      else show('bad', `rolled back to ${r.module}: ${r.rolled_back}`);
    } catch (e) {
      show('bad', `refused: ${e.message}`);
    }
    busy.delete(op);
    modulesKey = '';
    if (job) renderModules();
  };

  const renderJob = (figures, graph) => {
    const now = Date.now();
    $('#job-state').innerHTML = badge(job.state);
    const sourceRate = figures.nodes.source
      ? rates.rate('source:out', figures.nodes.source.records_out, figures.at_ms) : null;
    const facts = [
      ['Parallelism', job.parallelism],
      ['Records in (this run)', fmtNum(job.records_in)],
      ['Rate in', job.state === 'running' ? fmtRate(sourceRate) : '—'],
      ['Restarts', job.restarts],
      ...(job.history && job.history.length
        ? [['Last change', job.history[job.history.length - 1].event]] : []),
      ['Submitted', fmtDateTime(job.submitted_ms)],
    ];
    if (job.restored_from) facts.push(['Resumed from', job.restored_from]);
    if (job.savepoint) facts.push(['Stopped with savepoint', job.savepoint]);
    $('#facts').innerHTML = facts
      .map(([k, v]) => `<div><dt>${esc(k)}</dt><dd>${esc(v)}</dd></div>`).join('');
    $('#job-error').innerHTML = job.error ? `<div class="error-box">${esc(job.error)}</div>` : '';

    const live = new Map();
    for (const node of graph.nodes) {
      const f = figures.nodes[node.id];
      if (!f) continue;
      const at = figures.at_ms;
      const bp = rates.rate(`${node.id}:bp`, f.backpressure_seconds, at);
      live.set(node.id, {
        f,
        in: node.kind === 'source' ? null : rates.rate(`${node.id}:in`, f.records_in, at),
        out: node.kind === 'source' ? sourceRate
          : node.kind === 'sink' ? null : rates.rate(`${node.id}:out`, f.records_out, at),
        bp: bp == null ? null : bp / Math.max(1, f.parallelism),
      });
    }
    $('#graph').innerHTML = graphSvg(graph, live, now);
    $('#operators tbody').innerHTML = graph.nodes.filter((n) => live.has(n.id)).map((n) => {
      const l = live.get(n.id);
      const label = n.kind === 'operator' ? n.name : `${n.kind}: ${n.name}`;
      return `<tr data-node="${esc(n.id)}">
        <td>${esc(label)}${n.detail ? ` <span class="muted mono">${esc(n.detail)}</span>` : ''}</td>
        <td class="num">${n.parallelism}</td>
        <td class="num rate-in">${n.kind === 'source' ? '—' : fmtRate(l.in)}</td>
        <td class="num rate-out">${n.kind === 'sink' ? '—' : fmtRate(l.out)}</td>
        <td class="num">${n.kind === 'source' ? '—' : fmtNum(l.f.records_in)}</td>
        <td class="num">${n.kind === 'operator' ? fmtNum(l.f.records_out) : '—'}</td>
        <td>${esc(fmtWatermark(l.f.watermark_ms, now))}</td>
        <td class="num">${fmtPercent(l.bp)}</td>
        <td class="num">${l.f.idle_inputs}</td>
      </tr>`;
    }).join('');
  };

  const fast = async () => {
    const [j, graph, figures] = await Promise.all([
      getJson(base), getJson(`${base}/graph`), getJson(`${base}/figures`),
    ]);
    job = j;
    renderJob(figures, graph);
    renderModules();
  };

  const slow = async () => {
    const [checkpoints, savepoints, logs, modules] = await Promise.all([
      getJson(`${base}/checkpoints`), getJson(`${base}/savepoints`), getJson(`${base}/logs`),
      getJson('/v1/modules'),
    ]);
    registry = modules;
    if (job) renderModules();

    const history = checkpoints.history.slice(0, CHECKPOINT_ROWS);
    $('#no-checkpoints').hidden = history.length > 0;
    $('#checkpoint-note').textContent = checkpoints.complete.length
      ? `on storage: ${checkpoints.complete.join(', ')}` : '';
    $('#checkpoints tbody').innerHTML = history.map((c) => `
      <tr${c.reason ? ` title="${esc(c.reason)}"` : ''}>
        <td class="num">${c.id}</td><td>${esc(c.kind)}</td><td>${badge(c.status)}</td>
        <td>${fmtTime(c.started_ms)}</td><td class="num">${fmtDuration(c.duration_ms)}</td>
        <td class="num">${fmtBytes(c.size_bytes)}</td>
      </tr>`).join('');

    $('#no-savepoints').hidden = savepoints.savepoints.length > 0;
    $('#savepoints tbody').innerHTML = savepoints.savepoints.map((s) => `
      <tr><td class="num">${s.id}</td><td>${fmtDateTime(s.created_ms)}</td>
        <td class="num">${fmtBytes(s.size_bytes)}</td><td class="mono wrap">${esc(s.path)}</td></tr>`)
      .join('');

    const lines = logs.lines.slice().reverse();
    $('#no-logs').hidden = lines.length > 0;
    $('#log-note').textContent = lines.length ? `newest first, last ${lines.length} kept` : '';
    $('#logs').innerHTML = lines.map((l) => {
      const who = l.operator == null ? 'host'
        : `${l.operator}${l.instance == null ? '' : `#${l.instance}`}${l.stream ? ` ${l.stream}` : ''}`;
      return `<li class="${esc(l.level)}"><span class="when">${fmtTime(l.time_ms)}</span>
        ${badge(l.level)}<span class="who">${esc(who)}</span><span class="msg">${esc(l.message)}</span></li>`;
    }).join('');
  };

  const stopFast = poll(fast, FAST_MS);
  const stopSlow = poll(slow, SLOW_MS);
  return () => { stopFast(); stopSlow(); };
}

// ---- the graph as SVG: the main path left to right, side-output sinks
// below their operator, a dashed box around each task group.

function graphSvg(graph, live, now) {
  const W = 210;
  const H = 112;
  const GAP = 90;
  const PAD = 14;
  const TOP = 34;
  const SIDE_DY = 64;
  // Side-output sinks have no figures of their own: a shorter box.
  const height = (n) => (live.has(n.id) ? H : 50);
  const ROW_GAP = 40;
  const main = graph.nodes.filter((n) => !n.id.startsWith('side:'));
  const pos = new Map();
  // Layers: a node's column is one past its deepest input (nodes come in
  // topological order); it keeps its first input's row when that is free, so
  // a chain stays on one line.
  const column = new Map();
  const taken = new Map();
  const rowOf = new Map();
  for (const n of main) {
    const inputs = graph.edges.filter((e) => e.to === n.id && !e.side_output).map((e) => e.from);
    const c = inputs.length ? Math.max(...inputs.map((i) => (column.get(i) ?? 0) + 1)) : 0;
    column.set(n.id, c);
    if (!taken.has(c)) taken.set(c, new Set());
    let r = inputs.length ? rowOf.get(inputs[0]) ?? 0 : 0;
    while (taken.get(c).has(r)) r += 1;
    taken.get(c).add(r);
    rowOf.set(n.id, r);
    pos.set(n.id, { x: PAD + c * (W + GAP), y: TOP + r * (H + ROW_GAP) });
  }
  const mainBottom = Math.max(...main.map((n) => pos.get(n.id).y));
  const sideEdges = graph.edges.filter((e) => e.side_output);
  const perOperator = new Map();
  for (const e of sideEdges) {
    const k = perOperator.get(e.from) || 0;
    perOperator.set(e.from, k + 1);
    const from = pos.get(e.from);
    pos.set(e.to, { x: from.x + k * (W + 20), y: mainBottom + H + SIDE_DY });
  }
  const xs = [...pos.values()].map((p) => p.x + W);
  const width = Math.max(...xs) + PAD;
  const bottom = Math.max(...graph.nodes.map((n) => pos.get(n.id).y + height(n)));
  const svgHeight = bottom + PAD + 8;

  const parts = [];
  parts.push(`<defs>
    <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker>
    <marker id="arrow-net" class="net" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker>
  </defs>`);

  const groups = new Map();
  for (const n of graph.nodes) {
    if (!groups.has(n.task_group)) groups.set(n.task_group, []);
    groups.get(n.task_group).push(n);
  }
  for (const [group, nodes] of groups) {
    const ps = nodes.map((n) => pos.get(n.id));
    const x0 = Math.min(...ps.map((p) => p.x)) - 8;
    const y0 = Math.min(...ps.map((p) => p.y)) - 22;
    const x1 = Math.max(...ps.map((p) => p.x + W)) + 8;
    const y1 = Math.max(...nodes.map((n) => pos.get(n.id).y + height(n))) + 8;
    const parallelism = Math.max(...nodes.map((n) => n.parallelism));
    parts.push(`<rect class="group" x="${x0}" y="${y0}" width="${x1 - x0}" height="${y1 - y0}" rx="10"/>
      <text class="group-label" x="${x0 + 8}" y="${y0 + 14}">task group ${group} · ${parallelism} instance${parallelism === 1 ? '' : 's'}</text>`);
  }

  for (const e of graph.edges) {
    const a = pos.get(e.from);
    const b = pos.get(e.to);
    const net = e.kind !== 'chained';
    const cls = net ? 'edge net' : 'edge';
    const marker = net ? 'url(#arrow-net)' : 'url(#arrow)';
    const label = e.side_output ? `side: ${e.side_output}` : e.kind;
    if (e.side_output) {
      const x = b.x + W / 2;
      const x0 = a.x + W / 2;
      parts.push(`<path class="${cls}" d="M${x0},${a.y + H} C${x0},${a.y + H + 30} ${x},${b.y - 30} ${x},${b.y}" marker-end="${marker}"/>
        <text class="edge-label" x="${(x0 + x) / 2 + 6}" y="${a.y + H + SIDE_DY / 2 + 4}">${esc(label)}</text>`);
    } else {
      const y0 = a.y + H / 2;
      const y1 = b.y + H / 2;
      const x0 = a.x + W;
      const x1 = b.x - 2;
      const mid = (x0 + x1) / 2;
      parts.push(`<path class="${cls}" d="M${x0},${y0} C${mid},${y0} ${mid},${y1} ${x1},${y1}" fill="none" marker-end="${marker}"/>
        <text class="edge-label${net ? ' net' : ''}" x="${mid}" y="${(y0 + y1) / 2 - 7}" text-anchor="middle">${esc(label)}</text>`);
    }
  }

  for (const n of graph.nodes) {
    const p = pos.get(n.id);
    const l = live.get(n.id);
    const sub = n.kind === 'operator'
      ? (n.detail || '') + (n.window ? ` · ${n.window}` : '')
      : `${n.kind}${n.detail ? `: ${n.detail}` : ''}`;
    const flow = !l ? ''
      : n.kind === 'source' ? `out ${fmtRate(l.out)}`
        : n.kind === 'sink' ? `in ${fmtRate(l.in)}`
          : `in ${fmtRate(l.in)} · out ${fmtRate(l.out)}`;
    const hot = l && l.bp != null && l.bp >= 0.5 ? ' hot' : '';
    parts.push(`<g class="node ${esc(n.kind)}" data-node="${esc(n.id)}">
      <rect x="${p.x}" y="${p.y}" width="${W}" height="${height(n)}" rx="8"/>
      <text class="title" x="${p.x + 10}" y="${p.y + 20}">${esc(clip(n.name, 20))}</text>
      <text class="par" x="${p.x + W - 10}" y="${p.y + 20}" text-anchor="end">×${n.parallelism}</text>
      <text class="sub" x="${p.x + 10}" y="${p.y + 38}">${esc(clip(sub, 28))}</text>
      ${l ? `<text class="fig" x="${p.x + 10}" y="${p.y + 60}">${esc(flow)}</text>
      <text class="fig" x="${p.x + 10}" y="${p.y + 79}">watermark ${esc(fmtWatermark(l.f.watermark_ms, now).replace(/ \(.*/, ''))}</text>
      <text class="fig${hot}" x="${p.x + 10}" y="${p.y + 98}">backpressure ${fmtPercent(l.bp)}</text>` : ''}
    </g>`);
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${svgHeight}" viewBox="0 0 ${width} ${svgHeight}">${parts.join('')}</svg>`;
}

function clip(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

window.addEventListener('hashchange', route);
renderTokenState();
route();
