// #/map: the service map. Workloads are nodes, observed flows are edges
// labelled protocol/port and coloured by verdict (with a distinct arrow
// per verdict, so colour is not the only cue); allow rules no traffic
// used (the policyEdges blocks, expanded to the drawn ends, with no
// observed edge in their ports) are dashed grey, at most policyEdgesMax. Grouping by a
// label makes cytoscape compound nodes; a collapsed group is one node and
// its members' edges are aggregated onto it. Level of detail for large
// maps (issue 17: interactive in under 1 s at 1,000 workloads, measured
// by BenchmarkBrowserPages): grouped and collapsed from the start past
// groupThreshold workloads; the edges with a collapsed group at an end
// are one per pair of ends (its worst verdict, its ports listed), and a
// policy-only edge between two groups is drawn between the groups, not
// once per pair of members; past forceLayoutMax nodes or edges no force
// layout: positions are computed (collapsed groups on a circle, expanded
// ones as boxes on shelves with their members on a grid inside), edge
// labels only on the selected edge, edges hidden and the canvas a texture
// while panning.
import { get, arr } from '../api.js';
import { h, on, clear, table, fmtNum, fmtTime, hashLink, errorBox, markReady, nextPaint } from '../dom.js';
import { compactRow, compactHeaders } from './flows.js';

// The graph library (cytoscape, most of the dashboard's code) is a chunk
// of its own, loaded when the map is first opened, alongside the map's
// data; its force layout (fcose) another, loaded only when a map small
// enough for a force layout is drawn.
let graphLib = null;
function loadGraphLib() {
  if (!graphLib) {
    graphLib = import('./graph.js').then((m) => m.default);
    graphLib.catch(() => {
      graphLib = null; // try again on the next render
    });
  }
  return graphLib;
}
let forceLayout = null;
function loadForceLayout(cytoscape) {
  if (!forceLayout) {
    forceLayout = import('./layout.js').then((m) => {
      cytoscape.use(m.default);
    });
    forceLayout.catch(() => {
      forceLayout = null;
    });
  }
  return forceLayout;
}

const groupThreshold = 150;
// fcose up to this many nodes and edges drawn, computed positions past
// it (fcose over 20 collapsed groups and their 280 edges takes 0.7 s on
// the 2-core benchmark machine).
const forceLayoutMax = { nodes: 80, edges: 120 };
const ranges = ['15m', '1h', '6h', '24h'];
const fixedKeys = ['app', 'role', 'k8s:namespace'];

let cy = null;
// spare: a cytoscape instance made while the map's data is on its way
// (its constructor, the renderer's canvases and the parsed stylesheet
// are then off the path to the first frame), with a large map's
// options; draw takes it when the map drawn is large, else drops it.
let spare = null;

// dropDrawn destroys the map drawn (not the spare).
function dropDrawn() {
  if (cy) {
    cy.destroy();
    cy = null;
  }
  window.egMap = emptyView;
}

export function leave() {
  dropDrawn();
  if (spare) {
    spare.destroy();
    spare = null;
  }
}

// Nothing drawn (yet): the view's methods, all empty, so that a test
// polling one waits instead of failing.
const emptyView = Object.freeze({ nodes: () => [], groups: () => [], edges: () => [], zoom: () => 1, position: () => null, ready: false });
window.egMap = emptyView;

// The map's state across re-renders of the same page (group toggles).
const state = { groupBy: null, collapsed: new Set(), userGrouped: false };

const verdictColour = { allowed: '#2e7d32', denied: '#c62828', 'would-deny': '#ef8f00', policy: '#9e9e9e' };
const verdictArrow = { allowed: 'triangle', denied: 'tee', 'would-deny': 'diamond', policy: 'triangle' };

// mapQuery is the GET /api/v1/map query of the page's parameters.
function mapQuery(params) {
  const range = params.get('range') || '1h';
  if (range !== 'custom') return { since: range };
  const since = params.get('since') || '';
  const until = params.get('until') || '';
  return { since: since ? new Date(since).toISOString() : '1h', until: until ? new Date(until).toISOString() : '' };
}

// prefetch starts what the map waits for, the data and the graph library,
// before the session is known (main.js route); render takes them. The
// rejection of a request whose render never comes (a 401: the page goes
// to #/login) is handled here, not left to the console.
export function prefetch({ params }) {
  const q = mapQuery(params);
  const data = get('map', q);
  data.catch(() => {});
  const lib = loadGraphLib();
  lib.catch(() => {});
  return { key: JSON.stringify(q), data, lib };
}

export async function render(box, { params, prefetched }) {
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
  const drawNote = h('span', { class: 'status', 'data-testid': 'map-note' }); // what the current drawing leaves out
  box.append(h('div', { class: 'toolbar' },
    h('label', { for: 'map-range' }, 'Range '), rangeSel, sinceIn, untilIn, apply,
    h('label', { for: 'map-group' }, ' Group by '), groupSel, collapseAll, expandAll, info, drawNote));
  box.append(h('div', { class: 'legend' },
    h('span', { class: 'lg allowed' }, '→ allowed'), h('span', { class: 'lg denied' }, '⊣ denied'),
    h('span', { class: 'lg would-deny' }, '◆ would deny'), h('span', { class: 'lg policy' }, '⇢ allowed by policy, unused')));
  const container = h('div', { class: 'map', id: 'map', 'data-testid': 'map' });
  const panel = h('aside', { class: 'panel', 'data-testid': 'map-panel' }, h('p', { class: 'muted' }, 'Click a workload or an edge.'));
  box.append(h('div', { class: 'mapwrap' }, container, panel));

  const q = mapQuery(params);
  const pre = prefetched && prefetched.key === JSON.stringify(q) ? prefetched : null;
  // The spare instance is made as soon as the library is there, while the
  // data is still on its way (it comes later: the controller aggregates
  // the range's flows).
  let failed = false;
  const lib = (pre ? pre.lib : loadGraphLib()).then((c) => {
    if (box.isConnected && !failed && !spare) spare = newCy(c, container, true);
    return c;
  });
  let data;
  let cytoscape;
  try {
    [data, cytoscape] = await Promise.all([pre ? pre.data : get('map', q), lib]);
  } catch (e) {
    failed = true;
    leave(); // no map to draw: the spare's render loop stops too
    throw e;
  }
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

  // draws counts draw calls: a draw that waited for the force layout's
  // code and was overtaken by another (a second click) gives up, and
  // says so (false).
  let draws = 0;
  const draw = async () => {
    const seq = ++draws;
    const meta = new Map();
    let note = '';
    const els = elements(model, state.groupBy, state.collapsed, meta, (msg) => { note = msg; });
    const edges = els.filter((e) => e.group === 'edges').length;
    const n = els.length - edges;
    const computed = n > forceLayoutMax.nodes || edges > forceLayoutMax.edges;
    if (!computed && n) {
      await loadForceLayout(cytoscape);
      if (seq !== draws || !box.isConnected) return false;
    }
    drawNote.textContent = note;
    dropDrawn();
    // A large map: straight edges (no bundling of parallel ones to
    // compute) and edge labels only on the selected edge (class big); a
    // small one: every edge labelled.
    const edgeClass = computed ? ' big' : ' labelled';
    for (const e of els) if (e.group === 'edges') e.classes += edgeClass;
    // The viewport that fits the computed positions, from them:
    // cy.fit() would first compute every element's bounding box (1.6 s
    // at 4,000 elements).
    const view0 = computed ? fitView(place(els), container) : null;
    // Made empty (or the spare taken), then the elements added in one
    // batch: cytoscape's constructor given the elements takes ten times
    // as long (0.5 s for 800 elements, 1.8 s for 4,000, on the 2-core
    // benchmark machine).
    if (computed && spare) {
      cy = spare;
      spare = null;
    } else {
      if (spare) {
        spare.destroy();
        spare = null;
      }
      cy = newCy(cytoscape, container, computed);
    }
    if (view0) cy.viewport(view0);
    cy.batch(() => cy.add(els));
    // window.egMap (what tests read and click) once the nodes are where
    // they stay: a small map's layout animates them for 300 ms, and a
    // position read before that is not where the node ends up.
    const drawn = cy;
    const settled = () => {
      if (seq === draws && cy === drawn) window.egMap = view(drawn, meta);
    };
    if (!computed) {
      const layout = cy.layout({
        name: n ? 'fcose' : 'grid',
        animate: n <= 60,
        animationDuration: 300,
        randomize: true,
        quality: 'default',
        nodeDimensionsIncludeLabels: true,
        packComponents: true,
        idealEdgeLength: 90,
        nodeRepulsion: 6000,
      });
      layout.one('layoutstop', settled);
      layout.run();
    } else {
      settled();
    }
    cy.on('tap', 'node', (ev) => showNode(panel, model, ev.target.data(), meta.get(ev.target.id())));
    cy.on('tap', 'edge', (ev) => showEdge(panel, model, ev.target.data(), meta.get(ev.target.id())));
    cy.on('dbltap', 'node.group', (ev) => toggle(ev.target.data('group')));
    clear(info);
    if (data && data.truncated) info.append('truncated: narrow the range. ');
    info.append(`${model.workloads.length} workloads, ${model.edges.length} observed edges`);
    return true;
  };
  // redraw: a redraw the user asked for; the page is ready again once
  // the new map is painted.
  const redraw = async () => {
    if (!(await draw())) return;
    await nextPaint();
    if (box.isConnected) markReady(box);
  };
  const toggle = (g) => {
    if (state.collapsed.has(g)) state.collapsed.delete(g);
    else state.collapsed.add(g);
    redraw();
  };
  on(groupSel, 'change', () => {
    state.groupBy = groupSel.value;
    state.userGrouped = true;
    state.collapsed = new Set();
    redraw();
  });
  on(collapseAll, 'click', () => {
    state.collapsed = new Set(groupsOf(model.workloads, state.groupBy));
    redraw();
  });
  on(expandAll, 'click', () => {
    state.collapsed = new Set();
    redraw();
  });
  panel.groupToggle = toggle;
  await draw();
}

// newCy makes an empty cytoscape instance in the container; large: a large
// map's options (edges hidden and the canvas a texture while panning).
function newCy(cytoscape, container, large) {
  return cytoscape({
    container,
    style: graphStyle,
    wheelSensitivity: 0.3,
    minZoom: 0.05,
    maxZoom: 4,
    hideEdgesOnViewport: large,
    textureOnViewport: large,
    boxSelectionEnabled: false,
  });
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
export function elements(model, key, collapsed, meta, onNote) {
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
  const groupName = new Map(); // workload name -> its group's node name
  const collapsedNames = new Set(); // node names of the collapsed groups
  const groupIds = new Map();
  const members = new Map(); // group -> its number of workloads
  for (const w of model.workloads) {
    const g = groupOf(w, key);
    if (g !== null) members.set(g, (members.get(g) || 0) + 1);
  }
  for (const w of model.workloads) {
    const g = groupOf(w, key);
    if (g !== null && !groupIds.has(g)) {
      const gid = 'g' + groupIds.size;
      groupIds.set(g, gid);
      const isCollapsed = collapsed.has(g);
      const n = members.get(g);
      els.push({ group: 'nodes', data: { id: gid, name: 'group:' + g, label: isCollapsed ? `${g} (${n})` : g, group: g, members: n, collapsed: isCollapsed }, classes: isCollapsed ? 'group collapsed' : 'group' });
      // Edges may end at a group: collapsed, or (policy-only edges
      // between groups) expanded.
      ids.set('group:' + g, gid);
      if (isCollapsed) collapsedNames.add('group:' + g);
    }
    if (g !== null) groupName.set(w.name, 'group:' + g);
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
  // Observed edges, aggregated by drawn ends, protocol, port and
  // verdict; with a collapsed group at an end, by drawn ends only (a
  // collapsed group's pair of ends would otherwise carry an edge per port
  // and verdict: 800 edges between 20 groups at 1,000 workloads), drawn
  // with the most severe verdict among them, the others counted in the
  // panel.
  const agg = new Map();
  // observedAt: drawn ends (as policy edges are drawn: the workloads'
  // ends, and their groups' between different groups) -> protocol ->
  // ports observed.
  const observedAt = new Map();
  const observe = (src, dst, e) => {
    const k = `${src}\n${dst}`;
    let byProto = observedAt.get(k);
    if (!byProto) observedAt.set(k, (byProto = new Map()));
    let ports = byProto.get(e.protocol);
    if (!ports) byProto.set(e.protocol, (ports = new Set()));
    ports.add(e.port);
  };
  const isGroup = (name) => name.startsWith('group:') && collapsedNames.has(name);
  for (const e of model.edges) {
    const src = rep.get(e.src) || e.src;
    const dst = rep.get(e.dst) || e.dst;
    observe(src, dst, e);
    const gs = groupName.get(e.src);
    const gd = groupName.get(e.dst);
    if (gs && gd && gs !== gd) observe(gs, gd, e);
    const byPort = !isGroup(src) && !isGroup(dst);
    const k = byPort ? `${src}\n${dst}\n${e.protocol}\n${e.port}\n${e.verdict}` : `${src}\n${dst}`;
    let a = agg.get(k);
    if (!a) {
      a = { src, dst, protocol: e.protocol, port: e.port, verdict: e.verdict, flows: 0, packets: 0, bytes: 0, lastSeen: '', members: [], ports: new Set(), verdicts: {} };
      agg.set(k, a);
    }
    if ((severity[e.verdict] || 0) > (severity[a.verdict] || 0)) a.verdict = e.verdict;
    a.verdicts[e.verdict] = (a.verdicts[e.verdict] || 0) + 1;
    a.flows += e.flows || 0;
    a.packets += e.packets || 0;
    a.bytes += e.bytes || 0;
    if ((e.lastSeen || '') > a.lastSeen) a.lastSeen = e.lastSeen;
    a.members.push(e);
    a.ports.add(portLabel(e.protocol, e.port));
  }
  // Policy-only edges. The API sends blocks (every source of a block may
  // reach every destination of it on its ports); they are drawn between
  // the drawn ends, except that between members of two different groups
  // they are drawn between the groups (an allow rule from one app of 50
  // to another is 2,500 pairs, one edge). The work is linear in a
  // block's names plus the edges drawn, never in its pairs: members are
  // bucketed by group first. A policy edge is unused when no observed
  // edge between the same drawn ends falls in its protocol and ports.
  const groupKey = (name) => groupName.get(name) || '';
  const used = (src, dst, p) => {
    const byProto = observedAt.get(`${src}\n${dst}`);
    if (!byProto) return false;
    if (p.protocol === 'any') return true;
    const ports = byProto.get(p.protocol);
    if (!ports) return false;
    if (!p.port) return true;
    const hi = p.endPort || p.port;
    for (const port of ports) if (port >= p.port && port <= hi) return true;
    return false;
  };
  let policyDrawn = 0;
  let policyFull = false; // policyEdgesMax reached: the rest is not even looked at
  const addPolicy = (src, dst, p) => {
    if (src === dst && !isGroup(src)) return; // a workload to itself crosses no datapath
    if (used(src, dst, p)) return;
    const k = `${src}\n${dst}\n${p.protocol}\n${p.port}\n${p.endPort || 0}\npolicy`;
    const a = agg.get(k);
    if (a) {
      a.members.push(p);
      return;
    }
    if (policyDrawn >= policyEdgesMax) {
      policyFull = true;
      return;
    }
    policyDrawn++;
    agg.set(k, { src, dst, protocol: p.protocol, port: p.port, verdict: 'policy', dashed: true, policy: p.policy, rule: p.rule, members: [p], ports: new Set([portLabel(p.protocol, p.port, p.endPort)]) });
  };
  const bucket = (names) => {
    const by = new Map(); // group node name ('' for none) -> drawn ends
    for (const name of arr(names)) {
      const g = groupKey(name);
      let ends = by.get(g);
      if (!ends) by.set(g, (ends = new Set()));
      ends.add(rep.get(name) || name);
    }
    return by;
  };
  blocks: for (const p of model.policyEdges) {
    const srcs = bucket(p.srcs);
    const dsts = bucket(p.dsts);
    for (const [gs, sEnds] of srcs) {
      for (const [gd, dEnds] of dsts) {
        if (gs && gd && gs !== gd) addPolicy(gs, gd, p);
        else {
          for (const s of sEnds) {
            for (const d of dEnds) addPolicy(s, d, p);
            if (policyFull) break blocks;
          }
        }
      }
    }
  }
  if (policyFull && onNote) onNote(`Unused policy edges past ${policyEdgesMax} are not drawn; group or collapse to see them all. `);
  let n = 0;
  for (const a of agg.values()) {
    const s = endpoint(a.src);
    const t = endpoint(a.dst);
    // One (protocol, port): it is the edge's; several: listed.
    const list = [...a.ports].sort();
    if (list.length > 1) {
      a.protocol = '';
      a.port = 0;
      a.label = list.length > 3 ? `${list.slice(0, 3).join(', ')} +${list.length - 3}` : list.join(', ');
    } else a.label = list[0];
    const id = 'x' + n++;
    meta.set(id, a);
    els.push({ group: 'edges', data: { id, source: s, target: t, label: a.label }, classes: 'v-' + a.verdict + (a.dashed ? ' dashed' : '') });
  }
  return els;
}

// circleMax: past this many nodes and no expanded group, shelves rather
// than a circle (a circle of 1,000 would not fit the view at minZoom).
const circleMax = 60;

// severity orders verdicts for a group edge's colour: the worst wins.
const severity = { allowed: 1, 'would-deny': 2, denied: 3 };

function portLabel(protocol, port, endPort) {
  if (!port) return protocol;
  return endPort ? `${protocol}/${port}-${endPort}` : `${protocol}/${port}`;
}

// policyEdgesMax bounds the unused policy edges drawn (an allow-all over
// 1,000 expanded workloads is a million pairs); past it the page says how
// many were left out.
const policyEdgesMax = 1000;

// place sets the position of a large map's nodes (els, before they are
// added), without a force layout (fcose over 1,000 nodes takes
// seconds): each expanded group (its members on a square grid) and each
// other node is a box; boxes go on shelves in a roughly square area, the
// largest first; with no expanded group and at most circleMax nodes, the
// nodes go on a circle (edges between collapsed groups then do not cross
// nodes). Linear in the nodes.
// An expanded group is not a compound node here (cytoscape's compound
// bookkeeping made expanding 20 groups of 50 take seconds, most of it
// allocating collections): its node becomes a box drawn under its
// members (class box, size in data w and h), and the members lose their
// parent.
function place(els) {
  const gap = 70;
  const parents = new Set();
  for (const e of els) if (e.group === 'nodes' && e.data.parent) parents.add(e.data.parent);
  const boxes = [];
  const byGroup = new Map();
  for (const e of els) {
    if (e.group !== 'nodes' || parents.has(e.data.id)) continue;
    const parent = e.data.parent;
    if (!parent) {
      boxes.push({ nodes: [e], cols: 1, w: gap, h: gap });
      continue;
    }
    if (!byGroup.has(parent)) byGroup.set(parent, []);
    byGroup.get(parent).push(e);
  }
  if (byGroup.size === 0 && boxes.length <= circleMax) {
    const r = Math.max(100, (boxes.length * gap) / (2 * Math.PI));
    boxes.forEach((b, i) => {
      const a = (2 * Math.PI * i) / boxes.length;
      b.nodes[0].position = { x: r * Math.cos(a), y: r * Math.sin(a) };
    });
    return { x0: -r - gap, y0: -r - gap, x1: r + gap, y1: r + gap };
  }
  for (const members of byGroup.values()) {
    const cols = Math.ceil(Math.sqrt(members.length));
    boxes.push({ nodes: members, cols, w: cols * gap, h: Math.ceil(members.length / cols) * gap });
  }
  boxes.sort((a, b) => b.h - a.h || b.w - a.w);
  const area = boxes.reduce((sum, b) => sum + (b.w + gap) * (b.h + gap), 0);
  const rowMax = Math.max(Math.sqrt(area) * 1.3, boxes.length ? boxes[0].w : 0);
  let x = 0;
  let y = 0;
  let rowH = 0;
  for (const b of boxes) {
    if (x > 0 && x + b.w > rowMax) {
      x = 0;
      y += rowH + gap;
      rowH = 0;
    }
    b.nodes.forEach((e, i) => {
      e.position = { x: x + (i % b.cols) * gap + gap / 2, y: y + Math.floor(i / b.cols) * gap + gap / 2 };
    });
    x += b.w + gap;
    rowH = Math.max(rowH, b.h);
  }
  const byId = new Map();
  for (const e of els) if (parents.has(e.data.id)) byId.set(e.data.id, e);
  for (const [gid, members] of byGroup) {
    const xs = members.map((e) => e.position.x);
    const ys = members.map((e) => e.position.y);
    const g = byId.get(gid);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    g.position = { x: (x0 + x1) / 2, y: (y0 + y1) / 2 + 6 };
    g.data.w = x1 - x0 + gap;
    g.data.h = y1 - y0 + gap + 12;
    g.classes += ' box';
    g.grabbable = false;
    for (const e of members) delete e.data.parent;
  }
  return { x0: 0, y0: 0, x1: Math.max(x, rowMax), y1: y + rowH + gap };
}

// fitView is the zoom and pan that show the box b (model coordinates)
// whole in the container, centred.
function fitView(b, container) {
  const w = Math.max(container.clientWidth, 100);
  const hgt = Math.max(container.clientHeight, 100);
  const zoom = Math.min(4, Math.max(0.05, Math.min(w / (b.x1 - b.x0), hgt / (b.y1 - b.y0))));
  return { zoom, pan: { x: w / 2 - ((b.x0 + b.x1) / 2) * zoom, y: hgt / 2 - ((b.y0 + b.y1) / 2) * zoom } };
}

// view is window.egMap: a read-only view of what is drawn, for tests.
function view(c, meta) {
  return Object.freeze({
    ready: true,
    // Workloads and peers drawn, and collapsed groups (not the expanded
    // groups' compound nodes or boxes).
    nodes: () => c.nodes().filter((n) => !n.hasClass('group') || n.data('collapsed')).map((n) => n.data('name')),
    groups: () => c.nodes('.group').map((n) => ({ name: n.data('name'), collapsed: !!n.data('collapsed'), members: n.data('members') })),
    edges: () => c.edges().map((e) => {
      const a = meta.get(e.id());
      return { src: a.src, dst: a.dst, port: a.port, protocol: a.protocol, verdict: a.verdict, dashed: !!a.dashed, label: a.label };
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
  { selector: 'node.group.box', style: { width: 'data(w)', height: 'data(h)', 'z-index': 0, 'background-opacity': 0.5 } },
  { selector: 'node.workload, node.peer', style: { 'z-index': 10 } },
  { selector: 'node.group.collapsed', style: { 'background-color': '#b0bec5', width: 40, height: 30, 'border-width': 2, 'text-valign': 'bottom' } },
  { selector: 'node:selected', style: { 'border-width': 3, 'border-color': '#ffb300' } },
  { selector: 'edge', style: { width: 1.6, 'curve-style': 'bezier', 'target-arrow-shape': 'triangle', 'arrow-scale': 0.9 } },
  // The label and its text properties only on the edges that show one (a
  // small map's, class labelled, and a large map's selected edge): every
  // property an edge's matching selectors set is applied to it when it is
  // first drawn, and applying styles is the largest part of a large map's
  // first frame (without these on its edges, about a third less of it,
  // measured in Node.js).
  { selector: 'edge.labelled, edge:selected', style: { label: 'data(label)', 'font-size': 9, 'min-zoomed-font-size': 8, 'text-rotation': 'autorotate', 'text-background-color': '#fff', 'text-background-opacity': 0.8, 'text-background-padding': 1 } },
  ...Object.entries(verdictColour).map(([v, c]) => ({ selector: 'edge.v-' + v, style: { 'line-color': c, 'target-arrow-color': c, 'target-arrow-shape': verdictArrow[v] } })),
  { selector: 'edge.dashed', style: { 'line-style': 'dashed', 'line-dash-pattern': [6, 4], color: '#757575' } },
  { selector: 'edge:selected', style: { width: 3.5 } },
  // A large map's edges (draw: class big): straight.
  { selector: 'edge.big', style: { 'curve-style': 'straight' } },
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
    const by = Object.entries(a.verdicts || {}).sort().map(([v, n]) => `${n} ${v}`).join(', ');
    panel.append(h('p', { class: 'muted', 'data-testid': 'group-edge-members' }, `${a.members.length} workload edges aggregated${by ? ` (${by})` : ''}; expand the group to explain one.`));
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
    // Live: ask each end's agent what it applies and what its datapath
    // decides (GET /api/v1/explain?live=1), on demand: it costs the nodes
    // a lookup each.
    const liveBox = h('div', { 'data-testid': 'explain-live' });
    const ask = h('button', { type: 'button', 'data-testid': 'explain-live-ask' }, 'Check the nodes');
    on(ask, 'click', () => explainLive(liveBox, ask, q));
    box.append(h('p', null, 'Verdict: ', h('strong', { 'data-testid': 'explain-verdict' }, String(verdict || '')), rule ? ` by ${rule}` : ''),
      h('p', null, ask), liveBox,
      h('pre', { class: 'json' }, JSON.stringify(x, null, 2)));
  } catch (e) {
    if (e.status !== 401) box.append(errorBox(e));
  }
}

async function explainLive(box, button, q) {
  button.disabled = true;
  clear(box);
  try {
    const x = await get('explain', { ...q, live: '1' });
    const ends = (x && x.live && x.live.ends) || [];
    if (!ends.length) box.append(h('p', { class: 'muted' }, 'No managed end to ask.'));
    for (const e of ends) {
      box.append(h('p', { 'data-testid': 'explain-live-end' },
        `${e.end}: ${e.workload} on ${e.node}: `, h('strong', { class: e.differs ? 'denied' : '' }, e.status)),
      h('ul', null, ...(e.messages || []).map((m) => h('li', null, m))));
    }
  } catch (e) {
    if (e.status !== 401) box.append(errorBox(e));
  } finally {
    button.disabled = false;
  }
}
