// #/alerts and #/alerts/<id> (the webhooks' --external-url links): tabs
// by state, acknowledge (POST with the CSRF header), who and when, and a
// link to the flows behind each alert.
import { get, post, arr } from '../api.js';
import { h, on, table, fmtTime, fmtNum, hashLink, errorBox } from '../dom.js';

const states = ['open', 'acknowledged', 'resolved'];

// flowsLink selects the flows behind an alert: one end's workload, the
// other end's address where known, the port, protocol and time range.
export function flowsLink(a) {
  const p = { port: a.portCount > 1 ? '' : a.port, protocol: a.protocol };
  if (a.srcWorkload) {
    p.workload = a.srcWorkload;
    if (a.dstAddr) p.addr = a.dstAddr;
  } else if (a.dstWorkload) {
    p.workload = a.dstWorkload;
    if (a.srcAddr) p.addr = a.srcAddr;
  } else if (a.srcAddr) p.addr = a.srcAddr;
  if (a.firstSeen) p.since = new Date(a.firstSeen).toISOString();
  if (a.lastSeen) p.until = new Date(Date.parse(a.lastSeen) + 1000).toISOString();
  return hashLink('/flows', p);
}

// nodeAlert: one of the controller's built-in alerts about a node
// (datapath-tampered, agent-silent; the policy language reserves the
// names): its source is the node, its destination what happened, its
// verdict the outcome and its deciding rule the detail. No flows behind
// it, no port.
const builtinRules = ['datapath-tampered', 'agent-silent'];
export function nodeAlert(a) {
  return builtinRules.includes(a.rule);
}

function ports(a) {
  const list = arr(a.ports);
  if (list.length > 1) return list.slice(0, 8).join(', ') + (a.portCount > 8 ? ` (+${a.portCount - 8})` : '');
  return a.port ? String(a.port) : '';
}

function ackCell(a, rerender, box) {
  if (a.state === 'open') {
    const b = h('button', { type: 'button', 'data-testid': 'ack' }, 'Acknowledge');
    on(b, 'click', async () => {
      b.disabled = true;
      try {
        await post('alerts/' + encodeURIComponent(a.id) + '/ack');
        rerender();
      } catch (e) {
        b.disabled = false;
        if (e.status !== 401) box.prepend(errorBox(e));
      }
    });
    return b;
  }
  return '';
}

function ackedBy(a) {
  if (!a.acknowledgedAt && !a.acknowledgedBy) return '';
  return `${a.acknowledgedBy || 'unknown'} at ${fmtTime(a.acknowledgedAt)}`;
}

function row(a, rerender, box) {
  return h('tr', { 'data-testid': 'alert-row', 'data-id': a.id, 'data-state': a.state, class: 'sev-' + a.severity },
    h('td', null, h('a', { href: '#/alerts/' + encodeURIComponent(a.id) }, '#' + a.id)),
    h('td', { class: 'severity' }, a.severity || ''),
    h('td', null, a.rule || ''),
    h('td', null, a.source || ''),
    h('td', null, a.destination || ''),
    h('td', null, a.protocol || '', ' ', ports(a)),
    h('td', { class: 'num' }, fmtNum(a.count)),
    h('td', null, fmtTime(a.firstSeen)),
    h('td', null, fmtTime(a.lastSeen)),
    h('td', { 'data-testid': 'acked-by' }, ackedBy(a)),
    h('td', null, ackCell(a, rerender, box), ' ', nodeAlert(a)
      ? h('a', { href: hashLink('/agents', { node: a.source || '' }), 'data-testid': 'alert-node' }, 'node')
      : h('a', { href: flowsLink(a), 'data-testid': 'alert-flows' }, 'flows')));
}

const headers = ['Alert', 'Severity', 'Rule', 'Source', 'Destination', 'Port', 'Count', 'First seen', 'Last seen', 'Acknowledged', ''];

export async function render(box, { arg, params }) {
  const rerender = () => window.dispatchEvent(new HashChangeEvent('hashchange'));
  if (arg) return detail(box, arg, rerender);
  const state = states.includes(params.get('state')) ? params.get('state') : 'open';
  box.append(h('h1', null, 'Alerts'),
    h('nav', { class: 'tabs', 'data-testid': 'alert-tabs' }, states.map((s) =>
      h('a', { href: '#/alerts?state=' + s, class: s === state ? 'active' : null, 'data-testid': 'tab-' + s }, s))));
  const list = arr(await get('alerts', { state, limit: 1000 }));
  if (list.length === 0) {
    box.append(h('p', { class: 'empty', 'data-testid': 'no-alerts' }, `No ${state} alert.`));
    return;
  }
  box.append(table('alerts', headers, list.map((a) => row(a, rerender, box))));
}

async function detail(box, id, rerender) {
  box.append(h('p', null, h('a', { href: '#/alerts' }, '← Alerts')));
  if (!/^\d+$/.test(id)) {
    box.append(errorBox(new Error(`alert id ${JSON.stringify(id)} is not a number`)));
    return;
  }
  // One alert by id: a webhook's link may name an old one.
  let a;
  try {
    a = await get('alerts/' + id);
  } catch (e) {
    if (e.status !== 404) throw e;
    box.append(h('p', { class: 'empty', 'data-testid': 'no-alerts' }, `Alert ${id} is not among the stored alerts.`));
    return;
  }
  box.append(h('h1', null, `Alert #${a.id}: `, a.rule || ''));
  box.append(table('alerts', headers, [row(a, rerender, box)]));
  const dl = h('dl', { class: 'facts', 'data-testid': 'alert-detail' });
  const facts = nodeAlert(a) ? [
    ['State', a.state], ['Severity', a.severity], ['Node', a.source], ['What', a.destination], ['Outcome', a.verdict], ['Detail', a.decidingRule],
    ['Count', fmtNum(a.count)], ['First seen', fmtTime(a.firstSeen)], ['Last seen', fmtTime(a.lastSeen)],
    ['Acknowledged', ackedBy(a)], ['Resolved', a.resolvedAt ? `${fmtTime(a.resolvedAt)} (${a.resolvedBy || ''})` : ''],
  ] : [
    ['State', a.state], ['Severity', a.severity], ['Source', a.source], ['Destination', a.destination],
    ['Source workload', a.srcWorkload], ['Destination workload', a.dstWorkload], ['Source address', a.srcAddr], ['Destination address', a.dstAddr],
    ['Protocol', a.protocol], ['Ports', ports(a)], ['Verdict', a.verdict], ['Deciding rule', a.decidingRule], ['Node', a.node],
    ['Count', fmtNum(a.count)], ['First seen', fmtTime(a.firstSeen)], ['Last seen', fmtTime(a.lastSeen)],
    ['Acknowledged', ackedBy(a)], ['Resolved', a.resolvedAt ? `${fmtTime(a.resolvedAt)} (${a.resolvedBy || ''})` : ''],
  ];
  for (const [k, v] of facts) if (v) dl.append(h('dt', null, k), h('dd', null, String(v)));
  for (const [k, labels] of [['Source labels', a.srcLabels], ['Destination labels', a.dstLabels]]) {
    if (labels && Object.keys(labels).length) dl.append(h('dt', null, k), h('dd', null, Object.entries(labels).map(([lk, lv]) => h('span', { class: 'label' }, `${lk}=${lv}`))));
  }
  box.append(dl);
}
