// #/policies and #/policies/<name>: the list, the YAML (text in a <pre>),
// per rule the workloads it selects, hits and would-deny counts; monitor
// policies marked, with their would-deny flows linked.
import { get, arr } from '../api.js';
import { h, table, fmtNum, hashLink, fmtTime } from '../dom.js';

const ranges = ['15m', '1h', '6h', '24h', '7d'];

export async function render(box, { arg, params }) {
  if (arg) return detail(box, arg, params);
  box.append(h('h1', null, 'Policies'));
  const list = arr(await get('policies'));
  if (list.length === 0) {
    box.append(h('p', { class: 'empty' }, 'No policy applied.'));
    return;
  }
  const rows = list.map((p) => h('tr', { 'data-testid': 'policy-row', 'data-name': p.name },
    h('td', null, h('a', { href: '#/policies/' + encodeURIComponent(p.name) }, p.name)),
    h('td', null, p.mode === 'monitor' ? h('span', { class: 'badge monitor', 'data-testid': 'monitor' }, 'monitor') : (p.mode || 'enforce')),
    h('td', null, arr(p.rules).join(', ')),
    h('td', null, p.source || ''),
    h('td', null, fmtTime(p.updated))));
  box.append(table('policies', ['Name', 'Mode', 'Rules', 'Source', 'Updated'], rows));
}

async function detail(box, name, params) {
  // The last hour unless asked: hits over 24 hours count every flow
  // stored that day (1.7 s at 1,000,000 flows; the last hour 50 ms).
  const since = ranges.includes(params.get('since')) ? params.get('since') : '1h';
  box.append(h('p', null, h('a', { href: '#/policies' }, '← Policies')));
  const d = await get('policies/' + encodeURIComponent(name) + '/detail', { since });
  const monitor = d.mode === 'monitor';
  box.append(h('h1', null, 'Policy ', h('span', { 'data-testid': 'policy-name' }, d.name || name), ' ',
    monitor ? h('span', { class: 'badge monitor', 'data-testid': 'monitor' }, 'monitor: would-deny only, nothing dropped') : null));
  box.append(h('p', { class: 'range' }, 'Hits over the last ', ranges.map((r) =>
    h('a', { href: hashLink('/policies/' + encodeURIComponent(name), { since: r }), class: r === since ? 'active' : null }, r)), ':'));
  const rows = arr(d.rules).map((r) => {
    const from = arr(r.selects && r.selects.from);
    const to = arr(r.selects && r.selects.to);
    return h('tr', { 'data-testid': 'rule-row', 'data-rule': r.name },
      h('td', null, r.name),
      h('td', null, r.action || ''),
      h('td', null, workloadList(from)),
      h('td', null, workloadList(to)),
      h('td', { class: 'num' }, h('a', { href: hashLink('/flows', { rule: r.name, since }) }, fmtNum(r.hits || 0))),
      h('td', { class: 'num' }, r.wouldDeny
        ? h('a', { href: hashLink('/flows', { rule: r.name, verdict: 'would-deny', since }), 'data-testid': 'would-deny-link' }, fmtNum(r.wouldDeny))
        : '0'));
  });
  box.append(h('h2', null, 'Rules'), table('rules', ['Rule', 'Action', 'From', 'To', 'Hits', 'Would deny'], rows));
  if (monitor) {
    box.append(h('p', null, h('a', { href: hashLink('/flows', { verdict: 'would-deny', since }), 'data-testid': 'would-deny-flows' }, 'All would-deny flows over the range')));
  }
  box.append(h('h2', null, 'YAML'), h('pre', { class: 'yaml', 'data-testid': 'policy-yaml' }, d.yaml || ''));
}

function workloadList(names) {
  if (names.length === 0) return h('span', { class: 'muted' }, 'none');
  const shown = names.slice(0, 20);
  return h('span', null, shown.map((n, i) => [i ? ', ' : '', h('a', { href: hashLink('/flows', { workload: n }) }, n)]),
    names.length > shown.length ? ` and ${names.length - shown.length} more` : '');
}
