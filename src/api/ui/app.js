// The ferry dashboard: plain browser JavaScript on the controller's HTTP API. The session is an
// HttpOnly cookie set by POST /ui/login (this script never sees the token); every state-changing
// request carries X-Ferry-CSRF. Charts are vega-lite specs rendered by vega (served from the
// controller, no CDN). Pages poll the API once a second.
/* global vega, vegaLite */
'use strict';

const POLL_MS = 1000;
const main = document.getElementById('main');
const banner = document.getElementById('banner');
let session = null;
let timer = null;
let generation = 0;
/** Decisions seen in a running migration's progress, by migration run (its report has them all once it ends). */
const seenDecisions = new Map();

// ---------------------------------------------------------------------------- helpers

function esc(v) {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function ms(n) {
  if (n === null || n === undefined) return '—';
  return n >= 10000 ? `${(n / 1000).toFixed(1)} s` : `${Math.round(n)} ms`;
}

function pill(s) {
  return `<span class="pill ${esc(s)}">${esc(s)}</span>`;
}

function time(iso) {
  return iso ? new Date(iso).toLocaleString() : '—';
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    credentials: 'same-origin',
    headers: { 'x-ferry-csrf': '1', ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = { error: text };
  }
  if (!res.ok) throw new ApiError(res.status, (json && json.error) || `${res.status} ${res.statusText}`);
  return json;
}

function showBanner(text) {
  banner.textContent = text || '';
  banner.hidden = !text;
}

/** Render a vega-lite spec into el with vega's SVG renderer; skipped when the spec did not change. */
async function chart(el, spec) {
  if (!el) return;
  const key = JSON.stringify(spec);
  if (el.dataset.spec === key) return;
  el.dataset.spec = key;
  if (el._view) el._view.finalize();
  const compiled = vegaLite.compile({ $schema: 'https://vega.github.io/schema/vega-lite/v6.json', ...spec }).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'svg', container: el, hover: true });
  el._view = view;
  await view.runAsync();
}

const canWrite = () => session && session.scope === 'write';
const migrationPath = (id, runId) => `/v1/migrations/${encodeURIComponent(id)}${runId ? `/${encodeURIComponent(runId)}` : ''}`;

// ---------------------------------------------------------------------------- login

function renderLogin(message) {
  session = null;
  document.getElementById('nav').hidden = true;
  document.getElementById('logout').hidden = true;
  document.getElementById('who').textContent = '';
  showBanner('');
  main.innerHTML = `
    <h1>Log in</h1>
    <p class="muted">A read token looks; a write token may also cancel, force post-copy and set bandwidth.</p>
    <form class="login" id="login-form">
      <label>API token <input type="password" name="token" id="token" autocomplete="off" required size="40"></label>
      <button class="primary" type="submit">Log in</button>
    </form>
    <div id="login-message" class="${message ? 'message error' : ''}">${esc(message || '')}</div>`;
  document.getElementById('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await api('POST', '/ui/login', { token: document.getElementById('token').value });
      await start();
    } catch (e) {
      renderLogin(e.message);
    }
  });
}

document.getElementById('logout').addEventListener('click', async () => {
  await api('POST', '/ui/logout').catch(() => null);
  seenDecisions.clear();
  renderLogin('');
});

async function start() {
  try {
    session = await api('GET', '/v1/session');
  } catch (e) {
    if (e.status === 401) return renderLogin('');
    showBanner(e.message);
    return;
  }
  document.getElementById('nav').hidden = false;
  document.getElementById('logout').hidden = false;
  document.getElementById('who').textContent = `${session.name} (${session.scope === 'write' ? 'write: may act' : 'read only'})`;
  route();
}

// ---------------------------------------------------------------------------- router

const pages = [
  [/^#\/migrations(?:\?(.*))?$/, migrationsPage, 'migrations'],
  [/^#\/migration\/([^/]+)(?:\/([0-9a-f-]{36}))?$/, migrationPage, 'migrations'],
  [/^#\/evacuations$/, evacuationsPage, 'evacuations'],
  [/^#\/evacuation\/([^/]+)$/, evacuationPage, 'evacuations'],
  [/^#\/audit(?:\?(.*))?$/, auditPage, 'audit'],
];

function route() {
  if (!session) return;
  clearInterval(timer);
  const gen = ++generation;
  const hash = location.hash || '#/migrations';
  for (const [re, page, nav] of pages) {
    const m = re.exec(hash);
    if (!m) continue;
    for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('active', a.dataset.nav === nav);
    const refresh = page(...m.slice(1).map((p) => (p === undefined ? undefined : decodeURIComponent(p))));
    if (typeof refresh === 'function') {
      const tick = async () => {
        if (gen !== generation) return;
        try {
          await refresh(() => gen === generation);
          if (gen === generation) showBanner('');
        } catch (e) {
          if (gen !== generation) return;
          if (e.status === 401) return renderLogin('session expired or token no longer valid');
          showBanner(e.message);
        }
      };
      void tick();
      timer = setInterval(tick, POLL_MS);
    }
    return;
  }
  location.hash = '#/migrations';
}

window.addEventListener('hashchange', route);

// ---------------------------------------------------------------------------- migrations

function migrationsPage(query) {
  const q = new URLSearchParams(query || '');
  const field = (name, label, extra = '') => `<label>${label}<input name="${name}" value="${esc(q.get(name) || '')}" ${extra}></label>`;
  const select = (name, label, options) =>
    `<label>${label}<select name="${name}"><option value="">any</option>${options.map((o) => `<option${q.get(name) === o ? ' selected' : ''}>${esc(o)}</option>`).join('')}</select></label>`;
  main.innerHTML = `
    <h1>Migrations</h1>
    <form class="filters" id="filters">
      ${field('vm', 'VM')}${field('host', 'host')}${field('ticket', 'ticket')}
      ${select('strategy', 'strategy', ['precopy', 'postcopy', 'hybrid-1', 'hybrid-2', 'dyn-hybrid', 'heuristic-hybrid', 'par-migrate', 'as-hybrid', 'pa-hybrid'])}
      ${select('outcome', 'outcome', ['running', 'completed', 'rolled-back', 'failed'])}
      <button type="submit">Filter</button>
    </form>
    <table id="migrations">
      <thead><tr><th>VM</th><th>source → target</th><th>strategy</th><th>ticket</th><th>status</th><th>phase</th>
      <th class="num">round</th><th class="num">sent</th><th class="num">λ</th><th class="num">ETA</th><th>started</th></tr></thead>
      <tbody><tr><td colspan="11" class="muted">loading…</td></tr></tbody>
    </table>`;
  document.getElementById('filters').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(ev.target)) if (v) p.set(k, String(v));
    location.hash = `#/migrations${p.toString() ? `?${p}` : ''}`;
  });
  return async (current) => {
    const r = await api('GET', `/v1/migrations?${q}`);
    if (!current()) return;
    const body = document.querySelector('#migrations tbody');
    body.innerHTML = r.migrations.length
      ? r.migrations
          .map((m) => {
            const p = m.progress;
            const lambda = p && p.lambdas.length ? p.lambdas[p.lambdas.length - 1].toFixed(2) : '—';
            return `<tr data-vm="${esc(m.vm)}" data-status="${esc(m.status)}">
              <td><a href="#/migration/${encodeURIComponent(m.id)}/${m.runId}">${esc(m.vm)}</a></td>
              <td>${esc(m.source)} → ${esc(m.target)}</td><td>${esc(m.strategy)}</td><td>${esc(m.ticket || '')}</td>
              <td>${pill(m.status)}</td><td class="phase">${pill(m.phase)}</td>
              <td class="num">${p ? p.iteration : ''}</td><td class="num">${p ? bytes(p.bytesSent) : ''}</td>
              <td class="num">${p ? lambda : ''}</td><td class="num">${p && p.etaMs !== null ? ms(p.etaMs) : ''}</td>
              <td>${time(m.startedAt)}</td></tr>`;
          })
          .join('')
      : '<tr><td colspan="11" class="muted">no migrations match</td></tr>';
  };
}

function decisionsOf(key, view) {
  if (view.report) return view.report.decisions;
  const seen = seenDecisions.get(key) || [];
  const d = view.progress && view.progress.lastDecision;
  if (d && !seen.some((x) => x.atMs === d.atMs && x.action === d.action)) seen.push(d);
  seenDecisions.set(key, seen);
  return seen;
}

function migrationPage(id, runId) {
  main.innerHTML = `
    <h1 id="title">${esc(id)}</h1>
    <div id="head" class="card"></div>
    <div id="controls"></div>
    <div id="control-message"></div>
    <div class="grid">
      <div class="card"><h2>Phases</h2><div id="chart-phases" class="chart"></div></div>
      <div class="card"><h2>λ per round</h2><div id="chart-lambda" class="chart"></div><p id="switch-note" class="switch-note"></p></div>
      <div class="card"><h2>Pages per round</h2><div id="chart-pages" class="chart"></div></div>
      <div class="card"><h2>Bytes per channel</h2><div id="chart-bytes" class="chart"></div></div>
      <div class="card" id="postcopy-card"><h2 id="postcopy-title">Post-copy</h2><div id="chart-postcopy" class="chart"></div><div id="postcopy-facts"></div></div>
      <div class="card"><h2>Verification</h2><div id="verification"></div></div>
    </div>
    <h2>Decisions</h2>
    <table id="decisions"><thead><tr><th class="num">round</th><th class="num">at</th><th>action</th><th>reason</th></tr></thead><tbody></tbody></table>
    <h2>Attempts (audit trail)</h2>
    <table id="attempts"><thead><tr><th>attempt</th><th>ticket</th><th>requested by</th><th>via</th><th>outcome</th><th>reason</th></tr></thead><tbody></tbody></table>`;
  let controlsFor = null;
  // An ended migration changes no more: two renders (the audit trail's end record may trail the report) and the polling stops.
  let endedRenders = 0;
  return async (current) => {
    if (endedRenders >= 2) return;
    const path = migrationPath(id, runId);
    const [v, tl] = await Promise.all([api('GET', path), api('GET', `${path}/timeline`)]);
    if (!current()) return;
    const key = `${v.id}/${v.runId}`;
    if (v.status !== 'running') endedRenders++;
    const r = v.report;
    const p = v.progress;
    const phase = r ? r.outcome : p ? p.phase : v.phase;
    const link = `${session.temporalUi}/namespaces/${encodeURIComponent(session.namespace)}/workflows/${encodeURIComponent(v.id)}/${v.runId}/history`;
    document.getElementById('title').textContent = `${v.vm}: ${v.source} → ${v.target}`;
    const facts = [
      ['migration', `${esc(v.id)}/${esc(v.runId)}`],
      ['status', phase && phase !== v.status ? `${pill(v.status)} ${pill(phase)}` : pill(v.status)],
      ['strategy', esc(v.strategy)],
      ['ticket', esc(v.ticket || '—')],
      ['started', time(v.startedAt)],
      ...(p
        ? [
            ['round', `${p.iteration} (${p.remainingPages} pages dirty of ${p.pageCount})`],
            ['sent', bytes(p.bytesSent)],
            ['λ', p.lambdas.length ? p.lambdas[p.lambdas.length - 1].toFixed(3) : '—'],
            ['bandwidth', p.bandwidthBytesPerSec ? `${bytes(p.bandwidthBytesPerSec)}/s` : 'uncapped'],
            ['ETA', p.etaMs !== null ? ms(p.etaMs) : '—'],
            ['elapsed', ms(p.elapsedMs)],
          ]
        : []),
      ...(r
        ? [
            ['outcome', `${pill(r.outcome)} <span id="outcome-reason">${esc(r.reason)}</span>`],
            ['total time', ms(r.totalTimeMs)],
            ['downtime', ms(r.downtimeMs)],
            ['post-copy', r.postcopyDurationMs === null ? 'none' : ms(r.postcopyDurationMs)],
          ]
        : []),
      ...(v.failure ? [['failure', esc(v.failure)]] : []),
      ['workflow', `<a id="temporal-link" href="${esc(link)}" target="_blank" rel="noopener">open in the Temporal UI</a>`],
    ];
    const head = document.getElementById('head');
    head.dataset.status = v.status;
    head.dataset.phase = phase || '';
    head.innerHTML = `<dl class="facts">${facts.map(([k, val]) => `<dt>${k}</dt><dd>${val}</dd>`).join('')}</dl>`;

    // Operator controls: write tokens only, while the migration runs.
    const running = v.status === 'running';
    const ctl = document.getElementById('controls');
    if (canWrite() && running && controlsFor !== key) {
      controlsFor = key;
      ctl.innerHTML = `<div class="controls card">
          <button class="danger" id="btn-cancel" type="button">Cancel (roll back)</button>
          <button id="btn-force" type="button">Force post-copy</button>
          <label>bandwidth <input id="bw" placeholder="8MiB/s" size="10"></label><button id="btn-bw" type="button">Set bandwidth</button>
        </div>`;
      const act = async (what, method, url, body) => {
        const out = document.getElementById('control-message');
        try {
          const res = await api(method, url, body);
          out.className = 'message ok';
          out.textContent = `${what}: accepted${res && res.note ? ` (${res.note})` : ''}`;
        } catch (e) {
          out.className = 'message error';
          out.textContent = `${what} refused: ${e.message}`;
        }
      };
      const by = `${session.name} (dashboard)`;
      document.getElementById('btn-cancel').onclick = () => act('cancel', 'POST', `${path}/cancel`, { requestedBy: by, reason: 'cancelled from the dashboard' });
      document.getElementById('btn-force').onclick = () => act('force post-copy', 'POST', `${path}/force-postcopy`, { requestedBy: by });
      document.getElementById('btn-bw').onclick = () => act('set bandwidth', 'POST', `${path}/bandwidth`, { requestedBy: by, rate: document.getElementById('bw').value });
    } else if (!running && ctl.innerHTML) {
      // Ended: nothing left to control (the last control's answer stays below).
      ctl.innerHTML = '';
    }

    // Phase timeline, from the workflow history's Phase changes.
    await chart(document.getElementById('chart-phases'), {
      width: 420,
      height: { step: 22 },
      data: { values: tl.phases.map((x, i) => ({ ...x, order: i, start: x.startMs / 1000, end: Math.max(x.endMs, x.startMs + 1) / 1000 })) },
      mark: { type: 'bar', tooltip: true },
      encoding: {
        y: { field: 'phase', type: 'nominal', sort: { field: 'order' }, title: null },
        x: { field: 'start', type: 'quantitative', title: 'seconds since start' },
        x2: { field: 'end' },
        color: { field: 'phase', type: 'nominal', legend: null },
      },
    });

    // λ per round against 1, the switch (or stop-and-copy) marked with its decision's reason.
    const iters = (r ? r.iterations : p ? p.iterations : []).map((it) => ({ round: it.index, lambda: it.lambda, pages: it.pages, offLink: !!it.offLink }));
    const decisions = decisionsOf(key, v);
    const turns = decisions.filter((d) => d.action !== 'continue').map((d) => ({ round: d.iteration, action: d.action, reason: d.reason, label: d.action === 'switch-to-postcopy' ? 'switch → post-copy' : d.action }));
    const lambdaEl = document.getElementById('chart-lambda');
    lambdaEl.dataset.points = String(iters.length);
    lambdaEl.dataset.switches = String(turns.length);
    await chart(lambdaEl, {
      width: 420,
      height: 200,
      layer: [
        { data: { values: [{ y: 1 }] }, mark: { type: 'rule', strokeDash: [4, 4], color: '#888' }, encoding: { y: { field: 'y', type: 'quantitative' } } },
        {
          data: { values: iters },
          mark: { type: 'line', point: { size: 50 }, tooltip: true },
          encoding: {
            x: { field: 'round', type: 'quantitative', title: 'round', axis: { tickMinStep: 1, format: 'd' }, scale: { domainMin: 1 } },
            y: { field: 'lambda', type: 'quantitative', title: 'λ (dirtied ÷ sent)' },
          },
        },
        { data: { values: turns }, mark: { type: 'rule', color: '#c62828', strokeWidth: 2 }, encoding: { x: { field: 'round', type: 'quantitative' }, tooltip: [{ field: 'action' }, { field: 'reason' }] } },
        {
          data: { values: turns },
          mark: { type: 'text', align: 'right', dx: -4, dy: 4, baseline: 'top', color: '#c62828', fontWeight: 'bold' },
          encoding: { x: { field: 'round', type: 'quantitative' }, y: { value: 0 }, text: { field: 'label' } },
        },
      ],
    });
    document.getElementById('switch-note').textContent = turns.map((t) => `${t.label} at round ${t.round}: ${t.reason}`).join(' · ');

    await chart(document.getElementById('chart-pages'), {
      width: 420,
      height: 180,
      data: { values: iters.map((i) => ({ ...i, channel: i.offLink ? 'storage (StaticData)' : 'migration network' })) },
      mark: { type: 'bar', tooltip: true },
      encoding: {
        x: { field: 'round', type: 'ordinal', title: 'round' },
        y: { field: 'pages', type: 'quantitative', title: 'pages sent' },
        color: { field: 'channel', type: 'nominal', title: null, legend: { orient: 'top' } },
      },
    });

    const channels = r
      ? [
          { channel: 'migration network', bytes: r.bytes.migrationNetwork },
          { channel: 'storage write', bytes: r.bytes.storageWrite },
          { channel: 'storage read', bytes: r.bytes.storageRead },
        ]
      : [{ channel: 'migration network', bytes: p ? p.bytesSent : 0 }];
    await chart(document.getElementById('chart-bytes'), {
      width: 420,
      height: { step: 26 },
      data: { values: channels.map((c) => ({ ...c, mib: c.bytes / 1048576 })) },
      mark: { type: 'bar', tooltip: true },
      encoding: { y: { field: 'channel', type: 'nominal', title: null, sort: null }, x: { field: 'mib', type: 'quantitative', title: 'MiB' }, color: { field: 'channel', legend: null } },
    });

    // Post-copy: fault latency (emulated) or the guest's stall (QEMU's postcopy-blocktime).
    const pc = r && r.postcopy;
    const pcEl = document.getElementById('chart-postcopy');
    const pcFacts = document.getElementById('postcopy-facts');
    if (pc && pc.faultLatencyMs) {
      const fl = pc.faultLatencyMs;
      document.getElementById('postcopy-title').textContent = `Post-copy fault latency (p50 ${fl.p50} ms, p99 ${fl.p99} ms, max ${fl.max} ms)`;
      const h = fl.histogram;
      await chart(
        pcEl,
        h
          ? {
              // The histogram the target measured: faults per latency bucket.
              width: 420,
              height: 160,
              data: { values: h.counts.map((n, i) => ({ bucket: i < h.leMs.length ? `≤ ${h.leMs[i]} ms` : `> ${h.leMs[h.leMs.length - 1]} ms`, order: i, faults: n })) },
              mark: { type: 'bar', tooltip: true },
              encoding: {
                x: { field: 'bucket', type: 'ordinal', sort: { field: 'order' }, title: 'fault → page installed' },
                y: { field: 'faults', type: 'quantitative', title: 'faults' },
              },
            }
          : {
              width: 420,
              height: { step: 24 },
              data: { values: ['p50', 'p99', 'max'].map((q) => ({ quantile: q, ms: fl[q] })) },
              mark: { type: 'bar', tooltip: true },
              encoding: { y: { field: 'quantile', type: 'ordinal', sort: null, title: null }, x: { field: 'ms', type: 'quantitative', title: 'fault → page installed (ms)' } },
            },
      );
      pcEl.dataset.histogram = h ? String(h.counts.reduce((a, b) => a + b, 0)) : '';
    } else if (pc && pc.blocktimeMs) {
      document.getElementById('postcopy-title').textContent = "Post-copy: the guest's stall";
      await chart(pcEl, {
        width: 420,
        height: { step: 24 },
        data: { values: [...pc.blocktimeMs.perVcpuMs.map((v, i) => ({ who: `vCPU ${i}`, ms: v })), { who: 'all vCPUs at once', ms: pc.blocktimeMs.allVcpusMs }] },
        mark: { type: 'bar', tooltip: true },
        encoding: { y: { field: 'who', type: 'nominal', sort: null, title: null }, x: { field: 'ms', type: 'quantitative', title: 'waiting for pages (ms)' } },
      });
    } else if (pcEl.dataset.spec) {
      pcEl.dataset.spec = '';
      pcEl.innerHTML = '';
    }
    pcFacts.innerHTML = pc
      ? `<dl class="facts"><dt>faults</dt><dd>${pc.faults}</dd><dt>pages pushed</dt><dd>${pc.pushedPages}</dd><dt>from PbData</dt><dd>${pc.pbdataPages} (${esc(pc.pbdata)})${pc.fellBackToPbData ? ', fell back to PbData' : ''}</dd><dt>duration</dt><dd>${ms(r.postcopyDurationMs)}</dd></dl>`
      : `<p class="muted">${r ? 'no post-copy phase' : 'not in post-copy (yet)'}</p>`;

    const ver = r && r.verification;
    const verEl = document.getElementById('verification');
    verEl.dataset.ok = ver ? String(ver.ok) : '';
    verEl.innerHTML = ver
      ? `<p>${ver.ok ? '<span class="pill completed">verified</span>' : '<span class="pill failed">MISMATCH</span>'} on the <b>${esc(ver.where)}</b>: ${ver.pagesChecked} pages checked, ${ver.mismatches} mismatches (${esc(ver.method)})</p>`
      : '<p class="muted">after the migration ends</p>';

    document.querySelector('#decisions tbody').innerHTML =
      decisions.map((d) => `<tr data-action="${esc(d.action)}"><td class="num">${d.iteration}</td><td class="num">${ms(d.atMs)}</td><td>${esc(d.action)}</td><td>${esc(d.reason)}</td></tr>`).join('') ||
      '<tr><td colspan="4" class="muted">none yet</td></tr>';
    document.querySelector('#attempts tbody').innerHTML =
      (v.attempts || [])
        .map((a) => `<tr><td>${esc(a.attemptId)} (#${a.attempt})</td><td>${esc(a.ticket || '')}</td><td>${esc(a.requestedBy || '')}</td><td>${esc(a.via || '')}</td><td>${pill(a.outcome)}</td><td>${esc(a.outcomeReason || a.reason || '')}</td></tr>`)
        .join('') || '<tr><td colspan="6" class="muted">none recorded</td></tr>';
  };
}

// ---------------------------------------------------------------------------- evacuations

function evacuationsPage() {
  main.innerHTML = `<h1>Evacuations</h1>
    <table id="evacuations"><thead><tr><th>evacuation</th><th>hosts</th><th>ticket</th><th>status</th><th>progress</th><th>started</th></tr></thead>
    <tbody><tr><td colspan="6" class="muted">loading…</td></tr></tbody></table>`;
  return async (current) => {
    const r = await api('GET', '/v1/evacuations');
    if (!current()) return;
    document.querySelector('#evacuations tbody').innerHTML =
      r.evacuations
        .map(
          (e) => `<tr><td><a href="#/evacuation/${encodeURIComponent(e.id)}">${esc(e.id)}</a></td><td>${esc(e.hosts.join(', '))}</td><td>${esc(e.ticket || '')}</td>
          <td>${pill(e.status)}</td><td>${e.counts ? esc(Object.entries(e.counts).map(([k, n]) => `${n} ${k}`).join(', ')) : ''}</td><td>${time(e.startedAt)}</td></tr>`,
        )
        .join('') || '<tr><td colspan="6" class="muted">no evacuations</td></tr>';
  };
}

const DONE = new Set(['completed', 'failed', 'rolled-back', 'not-placed', 'cancelled', 'unreachable']);

function evacuationPage(id) {
  main.innerHTML = `<h1>${esc(id)}</h1>
    <div id="evac-head" class="card"></div>
    <div class="grid">
      <div class="card"><h2>Limits in use</h2><table id="limits"><thead><tr><th>limit</th><th>where</th><th class="num">in use</th><th class="num">limit</th></tr></thead><tbody></tbody></table></div>
      <div class="card"><h2>Attempts over time</h2><div id="chart-evac" class="chart"></div></div>
    </div>
    <h2>VMs</h2>
    <div id="evac-message"></div>
    <table id="evac-vms"><thead><tr><th>VM</th><th>source → target</th><th>status</th><th class="num">attempts</th><th class="num">time</th><th>reason</th><th></th></tr></thead><tbody></tbody></table>`;
  return async (current) => {
    const v = await api('GET', `/v1/evacuations/${encodeURIComponent(id)}`);
    if (!current()) return;
    const s = v.summary;
    const head = document.getElementById('evac-head');
    head.dataset.status = v.status;
    if (!s) {
      head.innerHTML = `<p>${pill(v.status)} ${esc(v.failure || '')}</p>`;
      return;
    }
    const total = s.vms.length;
    const done = s.vms.filter((x) => DONE.has(x.outcome)).length;
    const finished = s.vms.filter((x) => x.outcome === 'completed' && x.timeMs > 0);
    const mean = finished.length ? finished.reduce((a, x) => a + x.timeMs, 0) / finished.length : null;
    const left = total - done;
    const eta = v.status === 'running' && mean !== null && left > 0 ? (mean * left) / Math.max(1, Math.min(s.limits.maxParallel, left)) : null;
    head.innerHTML = `<dl class="facts">
      <dt>status</dt><dd>${pill(s.status)}</dd>
      <dt>hosts</dt><dd>${esc(s.hosts.join(', '))} → ${esc(s.targets.join(', '))}</dd>
      <dt>ticket</dt><dd>${esc(s.ticket || '—')} ${s.requestedBy ? `(requested by ${esc(s.requestedBy)})` : ''}</dd>
      <dt>progress</dt><dd><progress id="evac-progress" max="${total}" value="${done}"></progress> <span id="evac-done">${done} of ${total} done</span> · ${esc(Object.entries(s.counts).map(([k, n]) => `${n} ${k}`).join(', '))}</dd>
      <dt>ETA</dt><dd>${eta === null ? '—' : `${ms(eta)} (mean time of the finished VMs × VMs left ÷ parallel limit)`}</dd>
      <dt>elapsed</dt><dd>${ms(s.totalTimeMs)}</dd></dl>`;

    const running = s.vms.filter((x) => x.outcome === 'running');
    const count = (key) => running.reduce((m, x) => ((m[x[key]] = (m[x[key]] || 0) + 1), m), {});
    const out = count('source');
    const inb = count('target');
    const lim = s.limits;
    const rows = [['parallel', 'whole evacuation', running.length, lim.maxParallel]];
    for (const h of s.hosts) rows.push(['outbound', h, out[h] || 0, lim.maxOutboundPerHost]);
    for (const h of s.targets) rows.push(['inbound', h, inb[h] || 0, lim.maxInboundPerHost]);
    const links = {};
    for (const x of running) for (const h of [x.source, x.target]) links[h] = (links[h] || 0) + 1;
    for (const [h, n] of Object.entries(links)) rows.push(['link', h, `${n} migration${n === 1 ? '' : 's'}`, lim.linkBudgetBytesPerSec ? `${bytes(lim.linkBudgetBytesPerSec)}/s` : 'no budget']);
    document.querySelector('#limits tbody').innerHTML = rows
      .map(([k, where, used, max]) => `<tr data-limit="${esc(k)}" data-where="${esc(where)}"><td>${esc(k)}</td><td>${esc(where)}</td><td class="num">${esc(used)}</td><td class="num">${esc(max)}</td></tr>`)
      .join('');

    const now = s.totalTimeMs;
    const t0 = Date.parse(s.startedAt);
    await chart(document.getElementById('chart-evac'), {
      width: 420,
      height: { step: 18 },
      data: { values: s.timeline.map((e) => ({ vm: e.vm, attempt: e.attempt, start: (e.startMs - t0) / 1000, end: ((e.endMs ?? t0 + now) - t0) / 1000, outcome: e.outcome || 'running' })) },
      mark: { type: 'bar', tooltip: true },
      encoding: {
        y: { field: 'vm', type: 'nominal', title: null, sort: { field: 'start' } },
        x: { field: 'start', type: 'quantitative', title: 'seconds since start' },
        x2: { field: 'end' },
        color: { field: 'outcome', type: 'nominal', scale: { domain: ['running', 'completed', 'rolled-back', 'failed'], range: ['#1f6feb', '#2e7d32', '#b26a00', '#c62828'] } },
      },
    });

    const writable = canWrite() && v.status === 'running';
    document.querySelector('#evac-vms tbody').innerHTML = s.vms
      .map(
        (x) => `<tr data-vm="${esc(x.vm)}" data-status="${esc(x.outcome)}"><td>${esc(x.vm)}</td><td>${esc(x.source)} → ${esc(x.target || '—')}</td><td>${pill(x.outcome === 'completed' ? 'done' : x.outcome)}</td>
        <td class="num">${x.attempts}</td><td class="num">${x.timeMs ? ms(x.timeMs) : ''}</td><td class="reason">${esc(x.reason)}</td>
        <td>${writable && x.outcome === 'queued' ? `<button class="danger" type="button" data-cancel="${esc(x.vm)}">Cancel</button>` : ''}
        ${x.attemptIds.length ? `<a href="#/migration/${x.attemptIds[x.attemptIds.length - 1].split('/').map(encodeURIComponent).join('/')}">latest attempt</a>` : ''}</td></tr>`,
      )
      .join('');
    for (const b of document.querySelectorAll('[data-cancel]')) {
      b.onclick = async () => {
        const msg = document.getElementById('evac-message');
        try {
          const res = await api('POST', `/v1/evacuations/${encodeURIComponent(id)}/cancel`, { requestedBy: `${session.name} (dashboard)`, vms: [b.dataset.cancel] });
          msg.className = 'message ok';
          msg.textContent = res.cancelled.length ? `cancelled ${res.cancelled.join(', ')}` : `not queued any more: ${res.notQueued.map((n) => `${n.vm} (${n.status})`).join(', ')}`;
        } catch (e) {
          msg.className = 'message error';
          msg.textContent = `cancel refused: ${e.message}`;
        }
      };
    }
  };
}

// ---------------------------------------------------------------------------- audit

function auditPage(query) {
  const q = new URLSearchParams(query || '');
  const field = (name, label, type = 'text') => `<label>${label}<input type="${type}" name="${name}" value="${esc(q.get(name) || '')}"></label>`;
  main.innerHTML = `<h1>Audit</h1>
    <form class="filters" id="audit-form">${field('ticket', 'ticket')}${field('vm', 'VM')}${field('host', 'host')}${field('from', 'from', 'datetime-local')}${field('to', 'to', 'datetime-local')}<button type="submit">Search</button></form>
    <h2>Attempts</h2>
    <table id="audit-attempts"><thead><tr><th>attempt</th><th>VM</th><th>source → target</th><th>ticket</th><th>requested by</th><th>via</th><th>started</th><th>outcome</th><th>reason</th></tr></thead><tbody></tbody></table>
    <h2>Events</h2>
    <table id="audit-events"><thead><tr><th>at</th><th>kind</th><th>VM</th><th>host</th><th>ticket</th><th>message</th></tr></thead><tbody></tbody></table>`;
  document.getElementById('audit-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(ev.target)) if (v) p.set(k, String(v));
    location.hash = `#/audit${p.toString() ? `?${p}` : ''}`;
  });
  const apiQuery = new URLSearchParams();
  for (const [k, v] of q) if (v) apiQuery.set(k, k === 'from' || k === 'to' ? new Date(v).toISOString() : v);
  let loaded = false;
  return async (current) => {
    if (loaded) return;
    const r = await api('GET', `/v1/audit?${apiQuery}`);
    if (!current()) return;
    loaded = true;
    document.querySelector('#audit-attempts tbody').innerHTML =
      r.attempts
        .map(
          (a) => `<tr data-vm="${esc(a.vm)}"><td><a href="#/migration/${a.attemptId.split('/').map(encodeURIComponent).join('/')}">${esc(a.attemptId)}</a> (#${a.attempt})</td><td>${esc(a.vm)}</td>
          <td>${esc(a.source)} → ${esc(a.target)}</td><td>${esc(a.ticket || '')}</td><td>${esc(a.requestedBy || '')}</td><td>${esc(a.via || '')}</td><td>${time(a.startedAt)}</td><td>${pill(a.outcome)}</td><td>${esc(a.outcomeReason || a.reason || '')}</td></tr>`,
        )
        .join('') || '<tr><td colspan="9" class="muted">no attempts match</td></tr>';
    document.querySelector('#audit-events tbody').innerHTML =
      r.events.map((e) => `<tr><td>${time(e.at)}</td><td>${esc(e.kind)}</td><td>${esc(e.vm || '')}</td><td>${esc(e.host || '')}</td><td>${esc(e.ticket || '')}</td><td>${esc(e.message)}</td></tr>`).join('') ||
      '<tr><td colspan="6" class="muted">no events match</td></tr>';
  };
}

void start();
