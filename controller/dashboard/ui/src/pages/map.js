// #/map: the service map. Workloads are nodes, observed flows are edges
// labelled protocol/port and coloured by verdict (with a distinct arrow
// per verdict, so colour is not the only cue); allow rules no traffic
// used (policyEdges with no observed edge) are dashed grey. Grouping by a
// label makes cytoscape compound nodes; a collapsed group is one node and
// its members' edges are aggregated onto it. Level of detail for large
// maps: grouped and collapsed from the start past groupThreshold
// workloads, edge labels hidden when zoomed out (min-zoomed-font-size),
// no layout animation, edges hidden while panning.
import cytoscape from 'cytoscape';
import fcose from 'cytoscape-fcose';
import { get, arr } from '../api.js';
import { h, on, clear, table, fmtNum, fmtTime, hashLink, errorBox } from '../dom.js';
import { compactRow, compactHeaders } from './flows.js';

cytoscape.use(fcose);

const groupThreshold = 150;
const bigGraph = 300; // nodes: no animation, cheaper layout
const ranges = ['15m', '1h', '6h', '24h'];
const fixedKeys = ['app', 'role', 'k8s:namespace'];

let cy = null;

export function leave() {
  if (cy) {
    cy.destroy();
    cy = null;
  }
  window.egMap = emptyView;
}

const emptyView = Object.freeze({ nodes: () => [], edges: () => [], ready: false });
window.egMap = emptyView;

// The map's state across re-renders of the same page (group toggles).
const state = { groupBy: null, collapsed: new Set(), userGrouped: false };

const verdictColour = { allowed: '#2e7d32', denied: '#c62828', 'would-deny': '#ef8f00', policy: '#9e9e9e' };
const verdictArrow = { allowed: 'triangle', denied: 'tee', 'would-deny': 'diamond', policy: 'triangle' };

export async function render(box, { params }) {
  const range = params.get('range') || '1h';
  const since = params.get('since') || '';
  const until = params.get('until') || '';
  const custom = range === 'custom';

  const rangeSel = h('select', { id: 'map-range', 'data-testid': 'map-range' },
    [...ranges, 'custom'].map((r) => h('option', { value: r, selected: r === range }, r === 'custom' ? 'custom…' : 'last ' + r)));
  const sinceIn = h('input', { type: 'datetime-local', id: 'map-since', value: since, 'data-testid': 'map-since', hidden: !custom });
  const untilIn = h('input', { type: 'datetime-local', id: 'map-until', value: until, 'data-testid': 'map-until', hidden: !custom });
  const apply = h('button', { type: 'button', hidden: !custom, 'data-testid': 'map-apply' }, 'Show');
  const go = () => {
    const r = rangeSel.value;
    const p = { range: r };
    if (r === 'custom') {
      p.since = sinceIn.value;
      p.until = untilIn.value;
    }
    location.hash = hashLink('/map', p);
  };
  on(rangeSel, 'change', () => {
    if (rangeSel.value === 'custom') {
      sinceIn.hidden = untilIn.hidden = apply.hidden = false;
    } else go();
  });
  on(apply, 'click', go);

  const groupSel = h('select', { id: 'map-group', 'data-testid': 'map-group' });
  const collapseAll = h('button', { type: 'button', 'data-testid': 'map-collapse-all' }, 'Collapse all');
  const expandAll = h('button', { type: 'button', 'data-testid': 'map-expand-all' }, 'Expand all');
  const info = h('span', { class: 'status', 'data-testid': 'map-info' });
  box.append(h('div', { class: 'toolbar' },
    h('label', { for: 'map-range' }, 'Range '), rangeSel, sinceIn, untilIn, apply,
    h('label', { for: 'map-group' }, ' Group by '), groupSel, collapseAll, expandAll, info));
  box.append(h('div', { class: 'legend' },
    h('span', { class: 'lg allowed' }, '→ allowed'), h('span', { class: 'lg denied' }, '⊣ denied'),
    h('span', { class: 'lg would-deny' }, '◆ would deny'), h('span', { class: 'lg policy' }, '⇢ allowed by policy, unused')));
  const container = h('div', { class: 'map', id: 'map', 'data-testid': 'map' });
  const panel = h('aside', { class: 'panel', 'data-testid': 'map-panel' }, h('p', { class: 'muted' }, 'Click a workload or an edge.'));
  box.append(h('div', { class: 'mapwrap' }, container, panel));

  const q = custom ? { since: since ? new Date(since).toISOString() : '1h', until: until ? new Date(until).toISOString() : '' } : { since: range };
  const data = await get('map', q);
  const model = {
    workloads: arr(data && data.workloads),
    edges: arr(data && data.edges),
    policyEdges: arr(data && data.policyEdges),
    flowSince: q.since,
    flowUntil: q.until,
  };
  if (data && data.truncated) info.append('truncated: the range holds more than the map shows; narrow it. ');

  // Label keys seen, for the group-by select.
  const keys = new Set(fixedKeys);
  for (const w of model.workloads) for (const k of Object.keys(w.labels || {})) keys.add(k);
  if (state.groupBy === null || (!state.userGrouped && model.workloads.length > groupThreshold)) {
    state.groupBy = model.workloads.length > groupThreshold ? pickKey(model.workloads) : '';
    state.collapsed = new Set(model.workloads.length > groupThreshold ? groupsOf(model.workloads, state.groupBy) : []);
  }
  groupSel.append(h('option', { value: '', selected: state.groupBy === '' }, 'none'),
    ...[...keys].sort().map((k) => h('option', { value: k, selected: k === state.groupBy }, k)));

  const draw = () => {
    const meta = new Map();
    const els = elements(model, state.groupBy, state.collapsed, meta);
    leave();
    cy = cytoscape({
      container,
      elements: els,
      style: graphStyle,
      wheelSensitivity: 0.3,
      minZoom: 0.05,
      maxZoom: 4,
      hideEdgesOnViewport: els.length > bigGraph,
      textureOnViewport: els.length > bigGraph,
      boxSelectionEnabled: false,
    });
    const n = cy.nodes().length;
    cy.layout({
      name: n ? 'fcose' : 'grid',
      animate: n <= 60,
      animationDuration: 300,
      randomize: true,
      quality: n > bigGraph ? 'draft' : 'default',
      nodeDimensionsIncludeLabels: true,
      packComponents: true,
      idealEdgeLength: 90,
      nodeRepulsion: 6000,
    }).run();
    cy.on('tap', 'node', (ev) => showNode(panel, model, ev.target.data(), meta.get(ev.target.id())));
    cy.on('tap', 'edge', (ev) => showEdge(panel, model, ev.target.data(), meta.get(ev.target.id())));
    cy.on('dbltap', 'node.group', (ev) => toggle(ev.target.data('group')));
    window.egMap = view(cy, meta);
    clear(info);
    if (data && data.truncated) info.append('truncated: narrow the range. ');
    info.append(`${model.workloads.length} workloads, ${model.edges.length} observed edges`);
  };
  const toggle = (g) => {
    if (state.collapsed.has(g)) state.collapsed.delete(g);
    else state.collapsed.add(g);
    draw();
  };
  on(groupSel, 'change', () => {
    state.groupBy = groupSel.value;
    state.userGrouped = true;
    state.collapsed = new Set();
    draw();
  });
  on(collapseAll, 'click', () => {
    state.collapsed = new Set(groupsOf(model.workloads, state.groupBy));
    draw();
  });
  on(expandAll, 'click', () => {
    state.collapsed = new Set();
    draw();
  });
  panel.groupToggle = toggle;
  draw();
}

// pickKey: the grouping a large map starts with, the first fixed key
// most workloads carry.
function pickKey(ws) {
  let best = '';
  let bestN = 0;
  for (const k of fixedKeys) {
    const n = ws.filter((w) => w.labels && w.labels[k] !== undefined).length;
    if (n > bestN) {
      best = k;
      bestN = n;
    }
  }
  return best;
}

const noGroup = '(none)';
function groupOf(w, key) {
  if (!key) return null;
  const v = w.labels && w.labels[key];
  return `${key}=${v === undefined ? noGroup : v}`;
}
function groupsOf(ws, key) {
  if (!key) return [];
  return [...new Set(ws.map((w) => groupOf(w, key)))];
}

// elements builds cytoscape's elements from the model. Ids are opaque
// (workload names are attacker-controlled and must never become
// selectors); names live in data. The workload and edge objects go in
// meta (by element id), not in data: cytoscape copies data on every add,
// which at 1,000 workloads costs seconds.
export function elements(model, key, collapsed, meta) {
  const els = [];
  const ids = new Map(); // display name -> element id
  let seq = 0;
  const idOf = (name, make) => {
    let id = ids.get(name);
    if (!id && make) {
      id = 'e' + seq++;
      ids.set(name, id);
      make(id);
    }
    return id;
  };
  const rep = new Map(); // workload name -> the name drawn for it
  const groupIds = new Map();
  for (const w of model.workloads) {
    const g = groupOf(w, key);
    if (g !== null && !groupIds.has(g)) {
      const gid = 'g' + groupIds.size;
      groupIds.set(g, gid);
      const isCollapsed = collapsed.has(g);
      const members = model.workloads.filter((x) => groupOf(x, key) === g).length;
      els.push({ group: 'nodes', data: { id: gid, name: 'group:' + g, label: isCollapsed ? `${g} (${members})` : g, group: g, members, collapsed: isCollapsed }, classes: isCollapsed ? 'group collapsed' : 'group' });
      if (isCollapsed) ids.set('group:' + g, gid);
    }
    if (g !== null && collapsed.has(g)) {
      rep.set(w.name, 'group:' + g);
      continue;
    }
    rep.set(w.name, w.name);
    idOf(w.name, (id) => {
      meta.set(id, w);
      els.push({ group: 'nodes', data: { id, name: w.name, label: w.name, parent: g !== null ? groupIds.get(g) : undefined }, classes: 'workload' });
    });
  }
  const endpoint = (name) => {
    const r = rep.get(name) || name;
    return idOf(r, (id) => els.push({ group: 'nodes', data: { id, name: r, label: r, peer: true }, classes: 'peer' }));
  };
  // Observed edges, aggregated by drawn ends, protocol, port and verdict.
  const agg = new Map();
  const observed = new Set();
  for (const e of model.edges) {
    const src = rep.get(e.src) || e.src;
    const dst = rep.get(e.dst) || e.dst;
    observed.add(`${e.src}\n${e.dst}\n${e.protocol}\n${e.port}`);
    const k = `${src}\n${dst}\n${e.protocol}\n${e.port}\n${e.verdict}`;
    let a = agg.get(k);
    if (!a) {
      a = { src, dst, protocol: e.protocol, port: e.port, verdict: e.verdict, flows: 0, packets: 0, bytes: 0, lastSeen: '', members: [] };
      agg.set(k, a);
    }
    a.flows += e.flows || 0;
    a.packets += e.packets || 0;
    a.bytes += e.bytes || 0;
    if ((e.lastSeen || '') > a.lastSeen) a.lastSeen = e.lastSeen;
    a.members.push(e);
  }
  for (const p of model.policyEdges) {
    if (observed.has(`${p.src}\n${p.dst}\n${p.protocol}\n${p.port}`)) continue;
    const src = rep.get(p.src) || p.src;
    const dst = rep.get(p.dst) || p.dst;
    const k = `${src}\n${dst}\n${p.protocol}\n${p.port}\npolicy`;
    if (!agg.has(k)) agg.set(k, { src, dst, protocol: p.protocol, port: p.port, verdict: 'policy', dashed: true, policy: p.policy, rule: p.rule, members: [p] });
  }
  let n = 0;
  for (const a of agg.values()) {
    const s = endpoint(a.src);
    const t = endpoint(a.dst);
    const label = a.port ? `${a.protocol}/${a.port}` : a.protocol;
    const id = 'x' + n++;
    meta.set(id, a);
    els.push({ group: 'edges', data: { id, source: s, target: t, label }, classes: 'v-' + a.verdict + (a.dashed ? ' dashed' : '') });
  }
  return els;
}

// view is window.egMap: a read-only view of what is drawn, for tests.
function view(c, meta) {
  return Object.freeze({
    ready: true,
    nodes: () => c.nodes().filter((n) => !n.isParent() || n.data('collapsed')).map((n) => n.data('name')),
    groups: () => c.nodes('.group').map((n) => ({ name: n.data('name'), collapsed: !!n.data('collapsed'), members: n.data('members') })),
    edges: () => c.edges().map((e) => {
      const a = meta.get(e.id());
      return { src: a.src, dst: a.dst, port: a.port, protocol: a.protocol, verdict: a.verdict, dashed: !!a.dashed };
    }),
    zoom: () => c.zoom(),
    // position: where a node (by name) or an edge (by "src->dst:port") is
    // drawn, in page coordinates, so that a test can click it as a user
    // would; null when not drawn.
    position: (what) => {
      const box = c.container().getBoundingClientRect();
      let p = null;
      const n = c.nodes().filter((x) => x.data('name') === what);
      if (n.length) p = n[0].renderedPosition();
      else {
        const e = c.edges().filter((x) => {
          const a = meta.get(x.id());
          return `${a.src}->${a.dst}:${a.port}` === what;
        });
        if (e.length) p = e[0].renderedMidpoint();
      }
      return p ? { x: box.left + p.x, y: box.top + p.y } : null;
    },
  });
}

const graphStyle = [
  { selector: 'node', style: { label: 'data(label)', 'font-size': 11, 'text-valign': 'bottom', 'text-margin-y': 3, 'background-color': '#1565c0', width: 22, height: 22, 'min-zoomed-font-size': 7, color: '#222' } },
  { selector: 'node.peer', style: { shape: 'round-rectangle', 'background-color': '#78909c' } },
  { selector: 'node.group', style: { shape: 'round-rectangle', 'background-color': '#eceff1', 'background-opacity': 0.6, 'border-width': 1, 'border-color': '#90a4ae', 'text-valign': 'top', 'font-weight': 'bold', padding: 12 } },
  { selector: 'node.group.collapsed', style: { 'background-color': '#b0bec5', width: 40, height: 30, 'border-width': 2, 'text-valign': 'bottom' } },
  { selector: 'node:selected', style: { 'border-width': 3, 'border-color': '#ffb300' } },
  { selector: 'edge', style: { width: 1.6, 'curve-style': 'bezier', 'target-arrow-shape': 'triangle', 'arrow-scale': 0.9, label: 'data(label)', 'font-size': 9, 'min-zoomed-font-size': 8, 'text-rotation': 'autorotate', 'text-background-color': '#fff', 'text-background-opacity': 0.8, 'text-background-padding': 1 } },
  ...Object.entries(verdictColour).map(([v, c]) => ({ selector: 'edge.v-' + v, style: { 'line-color': c, 'target-arrow-color': c, 'target-arrow-shape': verdictArrow[v] } })),
  { selector: 'edge.dashed', style: { 'line-style': 'dashed', 'line-dash-pattern': [6, 4], color: '#757575' } },
  { selector: 'edge:selected', style: { width: 3.5 } },
];

function labelsOf(labels) {
  return Object.entries(labels || {}).sort().map(([k, v]) => h('span', { class: 'label' }, `${k}=${v}`));
}

function rangeParams(model) {
  return { since: model.flowSince, until: model.flowUntil };
}

async function flowsInto(box, params, keep) {
  const wait = h('p', { class: 'muted' }, 'loading flows…');
  box.append(wait);
  try {
    let list = arr(await get('flows', { ...params, limit: 50 }));
    if (keep) list = list.filter(keep);
    wait.remove();
    if (list.length === 0) box.append(h('p', { class: 'empty' }, 'No stored flow in the range.'));
    else box.append(table('panel-flows', compactHeaders, list.slice(0, 20).map(compactRow)));
  } catch (e) {
    wait.remove();
    if (e.status !== 401) box.append(errorBox(e));
  }
}

function showNode(panel, model, d, w) {
  clear(panel);
  if (d.group !== undefined) {
    const b = h('button', { type: 'button', 'data-testid': 'group-toggle' }, d.collapsed ? 'Expand group' : 'Collapse group');
    on(b, 'click', () => panel.groupToggle(d.group));
    panel.append(h('h2', null, 'Group ', d.group), h('p', null, `${d.members} workloads`), b);
    return;
  }
  panel.append(h('h2', { 'data-testid': 'panel-title' }, d.name));
  if (w) {
    panel.append(h('p', null, 'Node: ', w.node || ''), h('p', { class: 'labels' }, labelsOf(w.labels)));
  }
  const isWorld = d.name.startsWith('world');
  const params = isWorld ? { addr: d.name.slice('world:'.length) || undefined } : { workload: d.name };
  if (isWorld && !params.addr) {
    panel.append(h('p', { class: 'muted' }, 'Unmanaged peers, aggregated.'));
    return;
  }
  panel.append(h('p', null, h('a', { href: hashLink('/flows', { ...params, ...rangeParams(model) }), 'data-testid': 'panel-flows-link' }, 'All its flows →')));
  flowsInto(panel, { ...params, ...rangeParams(model) });
}

function showEdge(panel, model, d, a) {
  clear(panel);
  panel.append(h('h2', { 'data-testid': 'panel-title' }, a.src, ' → ', a.dst),
    h('p', null, d.label, ' · ', a.verdict === 'policy' ? 'allowed by policy, no traffic seen' : a.verdict),
    a.verdict === 'policy'
      ? h('p', null, 'Policy ', a.policy || '', ', rule ', a.rule || '')
      : h('p', null, `${fmtNum(a.flows)} flows, ${fmtNum(a.packets)} packets, ${fmtNum(a.bytes)} bytes, last seen ${fmtTime(a.lastSeen)}`));
  const grouped = a.src.startsWith('group:') || a.dst.startsWith('group:');
  if (grouped) {
    panel.append(h('p', { class: 'muted' }, `${a.members.length} workload edges aggregated; expand the group to explain one.`));
    return;
  }
  const end = (n) => (n.startsWith('world:') ? n.slice(6) : n);
  const explainBox = h('div', { 'data-testid': 'explain' });
  panel.append(h('h3', null, 'Explain'), explainBox);
  if (a.src === 'world' || a.dst === 'world') explainBox.append(h('p', { class: 'muted' }, 'Aggregated unmanaged peers: nothing to explain.'));
  else explain(explainBox, { src: end(a.src), dst: end(a.dst), protocol: a.protocol, port: a.port || '' });
  if (a.verdict === 'policy') return;
  const params = a.src.startsWith('world') ? { workload: a.dst, addr: end(a.src) || undefined } : { workload: a.src };
  if (a.dst.startsWith('world:')) params.addr = end(a.dst);
  const fp = { ...params, port: a.port || '', protocol: a.protocol, verdict: a.verdict, ...rangeParams(model) };
  panel.append(h('h3', null, 'Flows'), h('p', null, h('a', { href: hashLink('/flows', fp), 'data-testid': 'panel-flows-link' }, 'All these flows →')));
  flowsInto(panel, fp, (f) => (a.src.startsWith('world') || f.dstWorkload === a.dst || f.dstWorkload === undefined || a.dst.startsWith('world')));
}

async function explain(box, q) {
  try {
    const x = await get('explain', q);
    const verdict = x && (x.verdict || x.Verdict);
    const rule = x && (x.rule || x.ruleName || x.decidingRule || x.Rule);
    box.append(h('p', null, 'Verdict: ', h('strong', { 'data-testid': 'explain-verdict' }, String(verdict || '')), rule ? ` by ${rule}` : ''),
      h('pre', { class: 'json' }, JSON.stringify(x, null, 2)));
  } catch (e) {
    if (e.status !== 401) box.append(errorBox(e));
  }
}
