// #/flows: the flow table. Filters live in the URL (#/flows?port=22&
// verdict=denied) so other pages link here; paging with before=<id>
// (newest first); "live" prepends flows from the SSE stream (capped);
// export links carry the current filters.
import { get, apiURL, arr } from '../api.js';
import { h, on, clear, table, fmtTime, fmtNum, hashLink, errorBox } from '../dom.js';

export const filterKeys = ['workload', 'label', 'addr', 'port', 'protocol', 'verdict', 'rule', 'node', 'since', 'until'];
const pageSize = 100;
const liveCap = 500;

let stream = null;

export function leave() {
  if (stream) {
    stream.close();
    stream = null;
  }
}

function endpoint(f, addr, wl, port) {
  const who = f[wl] || (f[addr] ? String(f[addr]) : '');
  return f[port] ? `${who}:${f[port]}` : who;
}

export function flowRow(f) {
  return h('tr', { 'data-testid': 'flow-row', 'data-id': f.id ?? '', 'data-verdict': f.verdict, class: 'v-' + f.verdict },
    h('td', null, fmtTime(f.time || f.lastSeen)),
    h('td', null, f.node || ''),
    h('td', null, endpoint(f, 'srcAddr', 'srcWorkload')),
    h('td', null, endpoint(f, 'dstAddr', 'dstWorkload', 'dstPort')),
    h('td', null, f.protocol || ''),
    h('td', { class: 'verdict' }, f.verdict || ''),
    h('td', null, f.rule || ''),
    h('td', { class: 'num' }, fmtNum(f.packets)),
    h('td', { class: 'num' }, fmtNum(f.bytes)),
    h('td', null, f.state || ''));
}

// compactRow is a flow in the map's side panel: what fits in 380 px.
export function compactRow(f) {
  return h('tr', { 'data-testid': 'flow-row', 'data-id': f.id ?? '', 'data-verdict': f.verdict, class: 'v-' + f.verdict },
    h('td', null, fmtTime(f.time || f.lastSeen).slice(11)),
    h('td', null, endpoint(f, 'srcAddr', 'srcWorkload')),
    h('td', null, endpoint(f, 'dstAddr', 'dstWorkload', 'dstPort')),
    h('td', { class: 'verdict' }, f.verdict || ''),
    h('td', null, f.rule || ''));
}

export const compactHeaders = ['Time', 'Source', 'Destination', 'Verdict', 'Rule'];

export const flowHeaders = ['Time', 'Node', 'Source', 'Destination', 'Protocol', 'Verdict', 'Rule', 'Packets', 'Bytes', 'State'];

function field(name, label, value, opts) {
  const id = 'f-' + name;
  let input;
  if (opts) {
    input = h('select', { id, name, 'data-testid': 'filter-' + name }, opts.map(([v, t]) => h('option', { value: v, selected: v === value }, t)));
  } else {
    input = h('input', { id, name, value: value || '', 'data-testid': 'filter-' + name, size: 14, autocomplete: 'off' });
  }
  return h('label', { for: id, class: 'field' }, label, input);
}

export async function render(box, { params }) {
  box.append(h('h1', null, 'Flows'));
  const filters = {};
  for (const k of filterKeys) {
    const v = params.get(k);
    if (v) filters[k] = v;
  }
  const before = params.get('before') || '';

  const form = h('form', { class: 'filters', 'data-testid': 'flow-filters' },
    field('workload', 'Workload', filters.workload),
    field('label', 'Label k=v', filters.label),
    field('addr', 'Address', filters.addr),
    field('port', 'Port', filters.port),
    field('protocol', 'Protocol', filters.protocol || '', [['', 'any'], ['TCP', 'TCP'], ['UDP', 'UDP'], ['ICMP', 'ICMP'], ['ICMPv6', 'ICMPv6']]),
    field('verdict', 'Verdict', filters.verdict || '', [['', 'any'], ['allowed', 'allowed'], ['denied', 'denied'], ['would-deny', 'would-deny']]),
    field('rule', 'Rule', filters.rule),
    field('node', 'Node', filters.node),
    field('since', 'Since (15m, 1h, RFC 3339)', filters.since),
    field('until', 'Until', filters.until),
    h('button', { type: 'submit', 'data-testid': 'filter-apply' }, 'Apply'),
    h('a', { href: '#/flows', class: 'button' }, 'Clear'));
  on(form, 'submit', (ev) => {
    ev.preventDefault();
    const next = {};
    for (const k of filterKeys) {
      const v = form.elements[k].value.trim();
      if (v) next[k] = v;
    }
    location.hash = hashLink('/flows', next);
  });
  box.append(form);

  const liveBox = h('input', { type: 'checkbox', id: 'live', 'data-testid': 'live' });
  const status = h('span', { class: 'status', 'data-testid': 'live-status' });
  box.append(h('div', { class: 'toolbar' },
    h('label', { for: 'live' }, liveBox, ' Live'), status,
    h('a', { href: apiURL('flows', { ...filters, format: 'csv' }), download: 'flows.csv', class: 'button', 'data-testid': 'export-csv' }, 'Export CSV'),
    h('a', { href: apiURL('flows', { ...filters, format: 'jsonl' }), download: 'flows.jsonl', class: 'button', 'data-testid': 'export-jsonl' }, 'Export JSON lines')));

  const tbody = h('tbody');
  const t = table('flows', flowHeaders, []);
  t.replaceChild(tbody, t.tBodies[0]);
  const pager = h('div', { class: 'pager' });
  const msg = h('div');
  box.append(msg, t, pager);

  const flows = arr(await get('flows', { ...filters, limit: pageSize, before }));
  // One DOM insertion for the page of rows.
  tbody.replaceChildren(...flows.map(flowRow));
  if (flows.length === 0) msg.append(h('p', { class: 'empty', 'data-testid': 'no-flows' }, 'No flow matches.'));
  if (before) pager.append(h('a', { href: hashLink('/flows', filters), class: 'button', 'data-testid': 'newest' }, 'Newest'));
  const last = flows[flows.length - 1];
  if (flows.length === pageSize && last && last.id !== undefined) {
    pager.append(h('a', { href: hashLink('/flows', { ...filters, before: last.id }), class: 'button', 'data-testid': 'older' }, 'Older →'));
  }

  on(liveBox, 'change', () => {
    leave();
    clear(status);
    if (!liveBox.checked) return;
    // The stream has no until: live is now onwards.
    const { until, ...live } = filters;
    stream = new EventSource(apiURL('flows/stream', live));
    status.append('connecting…');
    stream.addEventListener('open', () => clear(status).append('live'));
    stream.addEventListener('flow', (ev) => {
      let f;
      try {
        f = JSON.parse(ev.data);
      } catch {
        return;
      }
      clear(msg);
      tbody.insertBefore(flowRow(f), tbody.firstChild);
      while (tbody.rows.length > liveCap) tbody.deleteRow(-1);
    });
    stream.addEventListener('error', () => {
      if (stream && stream.readyState === EventSource.CLOSED) {
        clear(status).append(errorBox(new Error('the live stream closed (logged out, or the controller refused it)')));
        liveBox.checked = false;
        leave();
        // EventSource does not say why. If the session ended, asking for
        // it answers 401, and every 401 goes to the login page.
        get('session').catch(() => {});
      } else {
        clear(status).append('reconnecting…');
      }
    });
  });
}
