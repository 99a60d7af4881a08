// #/agents: every node's agent; rows that need attention carry
// data-attention="true", the class "attention" and a text marker saying
// why (not colour alone).
import { get, arr } from '../api.js';
import { h, on, table, fmtTime, fmtNum } from '../dom.js';

// Node certificates live 1h by default (--cert-ttl); agents renew at 2/3.
// Without the certificate's start (certNotBefore, if the API gives it) the
// 20%-of-life rule falls back to that default lifetime.
const defaultCertLife = 3600e3;

function counter(a, direct, keys) {
  if (typeof a[direct] === 'number') return a[direct];
  const c = a.counters || {};
  let sum = 0;
  let any = false;
  for (const k of keys) {
    if (typeof c[k] === 'number') {
      sum += c[k];
      any = true;
    }
  }
  return any ? sum : undefined;
}

export const deniedOf = (a) => counter(a, 'deniedPackets', ['denied_ingress', 'denied_egress']);
export const lostOf = (a) => counter(a, 'lostEvents', ['events_lost']);

// agentAttention lists why an agent needs attention (empty: it does not).
export function agentAttention(a, now = Date.now()) {
  const why = [];
  if (!a.connected) why.push('disconnected');
  if ((a.latestVersion || 0) > (a.appliedVersion || 0)) why.push('behind latest version');
  if (a.lastError) why.push('last error');
  if (a.revoked) why.push('revoked');
  if (a.certExpiry) {
    const exp = Date.parse(a.certExpiry);
    if (!Number.isNaN(exp)) {
      const start = a.certNotBefore ? Date.parse(a.certNotBefore) : NaN;
      const life = Number.isNaN(start) ? defaultCertLife : exp - start;
      const left = exp - now;
      if (left <= 0) why.push('certificate expired');
      else if (left < 10 * 60e3 || left < life * 0.2) why.push('certificate expiring');
    }
  }
  return why;
}

export async function render(box, { params } = {}) {
  box.append(h('h1', null, 'Agents'));
  const agents = arr(await get('agents'));
  if (agents.length === 0) {
    box.append(h('p', { class: 'empty' }, 'No agent has joined yet.'));
    return;
  }
  const now = Date.now();
  const rows = agents.map((a) => {
    const why = agentAttention(a, now);
    return h('tr', { 'data-testid': 'agent-row', 'data-node': a.node, 'data-attention': why.length ? 'true' : 'false', class: why.length ? 'attention' : null },
      h('td', null, a.node),
      h('td', { class: a.connected ? 'ok' : 'bad' }, a.connected ? 'yes' : 'no'),
      h('td', { class: 'num' }, String(a.appliedVersion ?? ''), ' / ', String(a.latestVersion ?? '')),
      h('td', null, a.mode || a.defaultMode || ''),
      h('td', null, fmtTime(a.certExpiry)),
      h('td', null, fmtTime(a.lastContact)),
      h('td', { class: 'lasterror' }, a.lastError || ''),
      h('td', { class: 'num' }, fmtNum(deniedOf(a))),
      h('td', { class: 'num' }, fmtNum(lostOf(a))),
      h('td', { 'data-testid': 'agent-attention' }, why.length ? '⚠ ' + why.join(', ') : ''));
  });
  // A filter by node name, for hundreds of nodes: rows hide (the hidden
  // attribute), nothing is fetched again.
  const filter = h('input', { type: 'search', id: 'agents-filter', 'data-testid': 'agents-filter', placeholder: 'node name', autocomplete: 'off' });
  const apply = () => {
    const want = filter.value.trim();
    for (const r of rows) r.hidden = want !== '' && !(r.getAttribute('data-node') || '').includes(want);
  };
  on(filter, 'input', apply);
  // #/agents?node=NAME (a node alert's link) starts filtered to it.
  const node = params && params.get('node');
  if (node) {
    filter.value = node;
    apply();
  }
  box.append(h('div', { class: 'toolbar' }, h('label', { for: 'agents-filter' }, 'Filter '), filter),
    table('agents', ['Node', 'Connected', 'Applied / latest', 'Mode', 'Cert expiry', 'Last contact', 'Last error', 'Denied', 'Lost events', 'Attention'], rows));
}
