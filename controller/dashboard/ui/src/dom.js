// DOM helpers. Everything user-controlled (workload names, labels, rule
// names, addresses, alert text) reaches the page through these: text goes
// in with textContent (createTextNode), attributes with setAttribute.
// Nothing here, nor anywhere else in the app, assigns innerHTML, and no
// style attribute is ever set (the Content-Security-Policy refuses
// inline style; classes in app.css do the styling).

// h builds an element: h('a', {href: '#/map', class: 'x', 'data-testid': 'y'}, 'text', child).
// Attribute values are strings; on* attributes are refused (use on()).
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on') || k === 'style') throw new Error(`h: attribute ${k} is not allowed`);
      if (k === 'value' && 'value' in el) el.value = String(v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

export function on(el, type, fn) {
  el.addEventListener(type, fn);
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

// markReady says a page's render is complete: its data is on the page
// and the page answers input. It sets data-ready on the page's root to a
// number that grows with every completed render, across pages, so that a
// test or a benchmark can wait for "a render after the one I saw"
// (BenchmarkBrowserPages measures navigation and input to this).
let readySeq = 0;
export function markReady(root) {
  readySeq += 1;
  root.setAttribute('data-ready', String(readySeq));
}

// nextPaint resolves after the browser has painted what is on the page
// now: a requestAnimationFrame callback runs before that frame's paint,
// the timeout after it.
export function nextPaint() {
  return new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
}

// errorBox is the readable message a page shows when the API answers
// other than the contract says (never a console error).
export function errorBox(err) {
  return h('p', { class: 'error', role: 'alert', 'data-testid': 'error' }, 'Error: ', String(err && err.message ? err.message : err));
}

export function fmtTime(s) {
  if (!s) return '';
  const d = new Date(s);
  if (Number.isNaN(d.getTime()) || d.getUTCFullYear() <= 1) return '';
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

export function fmtNum(n) {
  if (n === undefined || n === null) return '';
  return Number(n).toLocaleString('en-US');
}

export function table(testid, headers, rows) {
  return h('table', { 'data-testid': testid },
    h('thead', null, h('tr', null, headers.map((x) => h('th', { scope: 'col' }, x)))),
    h('tbody', null, rows));
}

// link builds an in-app hash link from a route and its parameters; empty
// parameters are left out (the API refuses empty values).
export function hashLink(route, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '' && v !== 0) q.set(k, String(v));
  }
  const s = q.toString();
  return '#' + route + (s ? '?' + s : '');
}
