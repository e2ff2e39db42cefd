// The dashboard's page, embedded in the planner (no build step, nothing fetched from elsewhere).
// Its script builds every element with the DOM and puts every string from the planner's state
// (client ids, class names, executor ids) in with textContent or setAttribute on a data-*
// attribute: nothing is ever parsed as HTML. The Content-Security-Policy of dashboard.ts lets
// only these two files run and style the page, so an escaping slip could still not run a script.

/** The page: a shell the script fills in. */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tandem planner</title>
<link rel="stylesheet" href="dashboard.css">
<script src="dashboard.js" defer></script>
</head>
<body data-status="connecting" data-updates="0">
<header>
  <h1>Tandem planner</h1>
  <div id="meta"></div>
  <div><span id="status" class="pill">connecting</span> <span id="updated" class="muted"></span></div>
</header>
<main id="app"><p class="muted">waiting for the planner's state...</p></main>
<footer class="legend">
  <span class="stage side-client">C</span> stage on the client &nbsp;
  <span class="stage side-server">S</span> stage on the server &nbsp;
  <span class="muted">attainment: share of the plan's recent generations that met every SLO; pred / obs: mean predicted and observed end-to-end latency</span>
</footer>
</body>
</html>
`;

/** The page's style. */
export const DASHBOARD_CSS = `:root { --client: #2a9d8f; --server: #e76f51; --ok: #2b8a3e; --bad: #c92a2a; --muted: #6c757d; --line: #dee2e6; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #212529; background: #f8f9fa; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 1rem; padding: 0.75rem 1.25rem; background: #fff; border-bottom: 1px solid var(--line); }
header h1 { font-size: 1.2rem; margin: 0; }
main { padding: 1rem 1.25rem; display: grid; gap: 1rem; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 0.75rem 1rem; }
h2 { font-size: 1rem; margin: 0 0 0.5rem; }
h3 { font-size: 0.95rem; font-weight: normal; margin: 0 0 0.4rem; }
.id { font-family: ui-monospace, monospace; font-weight: 600; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 0.25rem 0.5rem; border-bottom: 1px solid var(--line); vertical-align: middle; white-space: nowrap; }
th { font-weight: 600; color: #495057; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: var(--muted); }
.pill { display: inline-block; padding: 0 0.5rem; border-radius: 999px; background: #e9ecef; font-size: 0.85rem; }
body[data-status="live"] #status { background: #d3f9d8; color: var(--ok); }
body[data-status="reconnecting"] #status, body[data-status="closed"] #status { background: #ffe3e3; color: var(--bad); }
.stage { display: inline-block; width: 1.6rem; height: 1.6rem; line-height: 1.6rem; margin-right: 2px; text-align: center; color: #fff; border-radius: 3px; font-weight: 600; font-family: ui-monospace, monospace; }
.side-client { background: var(--client); }
.side-server { background: var(--server); }
.bar { display: inline-block; width: 12rem; height: 0.8rem; background: #e9ecef; border-radius: 3px; overflow: hidden; vertical-align: middle; }
.bar > span { display: block; height: 100%; background: var(--ok); }
.bar.warm > span { background: #f08c00; }
.bar.hot > span { background: var(--bad); }
.kv { display: flex; flex-wrap: wrap; gap: 0.5rem 1.5rem; }
.kv b { font-weight: 600; }
.good { color: var(--ok); font-weight: 600; }
.miss { color: var(--bad); font-weight: 600; }
.badge { display: inline-block; padding: 0 0.4rem; border-radius: 3px; background: #fff3bf; color: #8a6d00; font-size: 0.8rem; }
.clients { display: grid; gap: 0.75rem; grid-template-columns: repeat(auto-fill, minmax(40rem, 1fr)); }
.client { border: 1px solid var(--line); border-radius: 6px; padding: 0.5rem 0.75rem; overflow-x: auto; }
.legend { padding: 0.5rem 1.25rem 1.5rem; font-size: 0.85rem; }
`;

/** The page's script: follows /events and renders each snapshot (DashboardSnapshot). */
export const DASHBOARD_JS = `'use strict';
(function () {
  var SIDE = { C: 'client', S: 'server' };
  var updates = 0;

  /** An element with attributes (fixed names; values set as text) and children (strings become text nodes). */
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === undefined || v === null) return;
      if (k === 'class') e.className = String(v);
      else e.setAttribute(k, String(v));
    });
    (children || []).forEach(function (c) {
      if (c === undefined || c === null || c === false) return;
      e.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
    });
    return e;
  }
  function msText(v) { return v === null || v === undefined ? '-' : (v >= 100 ? Math.round(v) : v.toFixed(1)) + ' ms'; }
  function predObs(p, o) { return p === null && o === null ? '-' : msText(p) + ' / ' + msText(o); }
  function pct(v) { return Math.round(v * 100) + ' %'; }
  function attainmentCell(v, target, n) {
    if (v === null || v === undefined) return el('td', { class: 'num muted' }, ['-']);
    return el('td', { class: 'num ' + (v >= target ? 'good' : 'miss'), 'data-attainment': v }, [pct(v) + (n ? ' of ' + n : '')]);
  }
  function sloText(c) {
    var parts = [];
    if (c.slaMs) parts.push('e2e ' + msText(c.slaMs));
    if (c.ttftMs) parts.push('ttft ' + msText(c.ttftMs));
    if (c.tpotMs) parts.push('tpot ' + msText(c.tpotMs));
    return parts.join(', ') || '-';
  }
  function placementStrip(placement, stages) {
    var strip = el('span', { class: 'placement', 'data-placement': placement });
    for (var i = 0; i < placement.length; i++) {
      var side = SIDE[placement[i]] || 'unknown';
      strip.appendChild(el('span', { class: 'stage side-' + side, 'data-side': side, title: (stages[i] || 'stage ' + i) + ': ' + side }, [placement[i]]));
    }
    return strip;
  }
  function table(head, rows) {
    return el('table', {}, [
      el('thead', {}, [el('tr', {}, head.map(function (h) { return el('th', { class: h[1] ? 'num' : '' }, [h[0]]); }))]),
      el('tbody', {}, rows),
    ]);
  }

  function serverSection(s) {
    var sec = el('section', { id: 'server' }, [el('h2', {}, ['Server load'])]);
    if (!s.server) {
      sec.appendChild(el('p', { class: 'muted' }, ['no executor has reported load yet: the planner makes no plan until one does']));
      return sec;
    }
    var u = s.server.utilisation;
    var bar = el('span', { class: 'bar' + (u >= 0.9 ? ' hot' : u >= 0.7 ? ' warm' : '') }, [el('span', { style: null })]);
    bar.firstChild.style.width = Math.min(100, Math.max(0, u * 100)) + '%';
    sec.appendChild(el('div', { class: 'kv' }, [
      el('span', {}, ['executor ', el('b', { 'data-field': 'server-id' }, [s.server.serverId]), s.executors > 1 ? ' (of ' + s.executors + ' reporting)' : '']),
      el('span', {}, ['utilisation ', bar, ' ', el('b', { 'data-field': 'utilisation' }, [pct(u)])]),
      el('span', {}, ['queue ', el('b', { 'data-field': 'queue-depth' }, [s.server.queueDepth]), ' waiting, mean wait ', el('b', {}, [msText(s.server.meanQueueMs)])]),
      el('span', {}, ['sessions ', el('b', {}, [s.server.activeSessions])]),
      el('span', {}, ['objective ', el('b', { 'data-field': 'objective' }, [s.objective])]),
      s.server.workScale !== 1 ? el('span', {}, ['work scale ', el('b', {}, [s.server.workScale.toFixed(2)])]) : null,
    ]));
    // Several executors: each one, with the clients whose plans name it.
    if (s.executorList.length > 1) {
      var rows = s.executorList.map(function (e) {
        return el('tr', { 'data-executor': e.id }, [
          el('td', {}, [e.id]),
          el('td', { class: e.address ? '' : 'muted' }, [e.address || 'no address (never assigned)']),
          el('td', { class: 'num', 'data-field': 'executor-clients' }, [e.clients]),
          el('td', { class: 'num' }, [pct(e.utilisation)]),
          el('td', { class: e.draining ? 'miss' : 'muted' }, [e.draining ? 'draining' : 'serving']),
          el('td', { class: 'muted' }, [e.lastReportUnixMs ? new Date(e.lastReportUnixMs).toLocaleTimeString() : '']),
        ]);
      });
      sec.appendChild(table([['executor'], ['address'], ['clients', 1], ['utilisation', 1], ['state'], ['last report']], rows));
    }
    return sec;
  }

  function classesSection(s) {
    var rows = s.classes.map(function (c) {
      return el('tr', { 'data-class': c.name }, [
        el('td', {}, [c.name]),
        el('td', {}, [sloText(c)]),
        el('td', { class: 'num' }, [c.clients + (c.clients ? ' (' + c.allServer + ' all-server, ' + c.allClient + ' all-client)' : '')]),
        attainmentCell(c.attainment, s.attainmentTarget, c.planOutcomes),
        el('td', { class: 'num' }, [c.outcomes + (c.failures ? ' (' + c.failures + ' failed)' : '')]),
        el('td', { class: 'num' }, [predObs(c.predictedE2eMs, c.observedE2eMs)]),
        el('td', { class: 'num' }, [c.shed ? el('span', { class: 'badge' }, [c.shed + ' shed']) : '-']),
      ]);
    });
    return el('section', { id: 'classes' }, [
      el('h2', {}, ['Request classes ', el('span', { class: 'muted' }, ['(attainment target ' + pct(s.attainmentTarget) + ')'])]),
      table([['class'], ['SLO'], ['clients', 1], ['attainment', 1], ['outcomes', 1], ['e2e pred / obs', 1], ['shed', 1]], rows),
      el('p', { id: 'shed', class: s.shed.length ? '' : 'muted' }, [s.shed.length ? 'shed now (least server work while the server is overloaded): ' + s.shed.join(', ') : 'no class shed']),
    ]);
  }

  function clientCard(c, s) {
    var rows = c.classes.map(function (k) {
      return el('tr', { 'data-class': k.name }, [
        el('td', {}, [k.name, k.shed ? ' ' : null, k.shed ? el('span', { class: 'badge' }, ['shed']) : null]),
        el(
          'td',
          {},
          k.decodePlacement
            ? [el('span', { class: 'muted' }, ['prefill ']), placementStrip(k.placement, s.stages), el('br', {}, []), el('span', { class: 'muted' }, ['decode ']), placementStrip(k.decodePlacement, s.stages)]
            : [placementStrip(k.placement, s.stages)],
        ),
        el('td', { class: 'num ' + (k.feasible ? '' : 'miss') }, [msText(k.predictedLatencyMs) + ' / ' + sloText(k)]),
        el('td', { class: 'num' }, [msText(k.predictedServerWorkMs)]),
        attainmentCell(k.attainment, s.attainmentTarget, k.planOutcomes),
        el('td', { class: 'num' }, [predObs(k.predictedE2eMs, k.observedE2eMs)]),
      ]);
    });
    return el('div', { class: 'client', 'data-client': c.clientId, 'data-epoch': c.epoch }, [
      el('h3', {}, [
        el('span', { class: 'id', 'data-field': 'client-id' }, [c.clientId]),
        ' ',
        el('span', { class: 'muted', 'data-field': 'client-class' }, [c.clientClass ? 'class ' + c.clientClass : 'no client class']),
        ' ',
        el('span', { class: 'muted' }, ['epoch ' + c.epoch + (c.createdUnixMs ? ', planned ' + new Date(c.createdUnixMs).toLocaleTimeString() : '')]),
        c.executor ? el('span', { class: 'muted', 'data-field': 'client-executor' }, [' on ' + c.executor]) : null,
      ]),
      table([['class'], ['placement'], ['predicted / SLO', 1], ['server work', 1], ['attainment', 1], ['e2e pred / obs', 1]], rows),
    ]);
  }

  function clientsSection(s) {
    var more = s.clientsTotal > s.clients.length ? ' (the first ' + s.clients.length + ' by id)' : '';
    return el('section', { id: 'clients' }, [
      el('h2', {}, ['Clients ', el('span', { class: 'muted', 'data-field': 'clients-total' }, [s.clientsTotal + ' with a plan' + more])]),
      s.clients.length ? el('div', { class: 'clients' }, s.clients.map(function (c) { return clientCard(c, s); })) : el('p', { class: 'muted' }, ['no plans yet']),
    ]);
  }

  function render(s) {
    document.getElementById('meta').replaceChildren(
      el('span', {}, ['model ', el('b', {}, [s.modelId || '(any)']), ' · ', s.stages.length + ' stages · algorithm ', el('b', {}, [s.algorithm]),
        ' · telemetry: ' + s.telemetry.profiles + ' profiles, ' + s.telemetry.loads + ' loads, ' + s.telemetry.outcomes + ' outcomes, ' + s.telemetry.dropped + ' dropped']),
    );
    document.getElementById('app').replaceChildren(serverSection(s), classesSection(s), clientsSection(s));
    updates++;
    document.body.setAttribute('data-updates', String(updates));
    document.getElementById('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
  }

  function status(state, text) {
    document.body.setAttribute('data-status', state);
    document.getElementById('status').textContent = text;
  }

  var es = new EventSource('events');
  es.addEventListener('open', function () { status('live', 'live'); });
  es.addEventListener('snapshot', function (m) {
    try { render(JSON.parse(m.data)); } catch (e) { status('closed', 'could not show an update: ' + e.message); }
  });
  es.addEventListener('error', function () {
    if (es.readyState === EventSource.CLOSED) status('closed', 'not connected: the planner refused the stream (too many dashboards open?) or stopped; reload to retry');
    else status('reconnecting', 'reconnecting...');
  });
})();
`;
