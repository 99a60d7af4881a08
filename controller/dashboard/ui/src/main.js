// The dashboard's entry point: the hash router, the header (pages, the
// logged-in name, logout, what needs attention now) and the session.
import { session, setUnauthorizedHandler, restoreSession, logout, get, arr } from './api.js';
import { h, on, clear, errorBox, markReady, nextPaint } from './dom.js';
import { agentAttention } from './pages/agents.js';
import * as loginPage from './pages/login.js';
import * as mapPage from './pages/map.js';
import * as flowsPage from './pages/flows.js';
import * as alertsPage from './pages/alerts.js';
import * as agentsPage from './pages/agents.js';
import * as policiesPage from './pages/policies.js';

const pages = [
  { path: 'map', title: 'Service map', mod: mapPage },
  { path: 'flows', title: 'Flows', mod: flowsPage },
  { path: 'alerts', title: 'Alerts', mod: alertsPage },
  { path: 'agents', title: 'Agents', mod: agentsPage },
  { path: 'policies', title: 'Policies', mod: policiesPage },
];

// parseHash splits "#/alerts/12?x=1" into {page: 'alerts', arg: '12', params}.
export function parseHash(hash) {
  let s = hash.replace(/^#\/?/, '');
  let query = '';
  const qi = s.indexOf('?');
  if (qi >= 0) {
    query = s.slice(qi + 1);
    s = s.slice(0, qi);
  }
  const slash = s.indexOf('/');
  const page = slash >= 0 ? s.slice(0, slash) : s;
  let arg = slash >= 0 ? s.slice(slash + 1) : '';
  try {
    arg = decodeURIComponent(arg);
  } catch {
    // a malformed escape: keep it as written
  }
  return { page, arg, params: new URLSearchParams(query) };
}

const header = document.getElementById('header');
const main = document.getElementById('main');
let current = null; // the page module shown, for its leave()
let afterLogin = '#/map';
let attentionTimer = 0;

setUnauthorizedHandler(() => {
  if (!location.hash.startsWith('#/login')) {
    afterLogin = location.hash || '#/map';
    location.hash = '#/login';
  }
});

function renderHeader(page) {
  clear(header);
  const nav = h('nav', { 'data-testid': 'nav' },
    pages.map((p) => h('a', { href: '#/' + p.path, class: p.path === page ? 'active' : null, 'data-testid': 'nav-' + p.path }, p.title)));
  const attention = h('span', { class: 'attention-counts', 'data-testid': 'attention' });
  const right = h('span', { class: 'who' });
  if (session.csrfToken) {
    const out = h('button', { type: 'button', 'data-testid': 'logout' }, 'Log out');
    on(out, 'click', async () => {
      try {
        await logout();
      } catch {
        // the session is gone on our side whatever the server said
      }
      afterLogin = '#/map';
      location.hash = '#/login';
    });
    right.append(h('span', { 'data-testid': 'user' }, session.name), ' ', out);
  }
  header.append(h('a', { href: '#/map', class: 'brand' }, 'Eastguard'), nav, attention, right);
  return attention;
}

// refreshAttention shows what needs attention now: open alerts and
// agents needing attention, each a link to its page.
async function refreshAttention(el) {
  clearTimeout(attentionTimer);
  if (!session.csrfToken) return;
  try {
    const [alerts, agents] = await Promise.all([get('alerts', { state: 'open', limit: 1000 }), get('agents')]);
    const nAlerts = arr(alerts).length;
    const nAgents = arr(agents).filter((a) => agentAttention(a).length > 0).length;
    clear(el).append(
      h('a', { href: '#/alerts?state=open', class: nAlerts ? 'count hot' : 'count', 'data-testid': 'open-alerts' },
        `${nAlerts >= 1000 ? '1000+' : nAlerts} open alert${nAlerts === 1 ? '' : 's'}`),
      h('a', { href: '#/agents', class: nAgents ? 'count hot' : 'count', 'data-testid': 'agents-attention' },
        `${nAgents} agent${nAgents === 1 ? '' : 's'} need${nAgents === 1 ? 's' : ''} attention`));
  } catch (e) {
    if (e.status === 401) return;
    clear(el).append(h('span', { class: 'error' }, 'attention counts unavailable'));
  }
  attentionTimer = setTimeout(() => el.isConnected && refreshAttention(el), 30000);
}

async function route() {
  const { page, arg, params } = parseHash(location.hash);
  if (current && current.leave) current.leave();
  current = null;
  clear(main);
  if (page === 'login') {
    renderHeader('login');
    current = loginPage;
    loginPage.render(main, { afterLogin: () => afterLogin });
    return;
  }
  const p = pages.find((x) => x.path === page);
  if (!p) {
    location.replace('#/map');
    return;
  }
  // A page may ask for its data (and load its code) now, alongside the
  // session: on a reload the session's round trip is then not ahead of
  // the page's. Only GETs, answered only with a live session cookie (no
  // CSRF token needed); without one the answer is the 401 that sends the
  // page to #/login anyway. What it returns is this route's alone
  // (render's prefetched), so a later visit never gets stale data.
  const prefetched = p.mod.prefetch ? p.mod.prefetch({ arg, params }) : undefined;
  if (!session.csrfToken) {
    // A reload: ask for the session (and its CSRF token) first.
    try {
      if (!(await restoreSession())) return; // the 401 handler went to #/login
    } catch (e) {
      main.append(errorBox(e));
      return;
    }
  }
  const attention = renderHeader(page);
  document.title = p.title + ' · Eastguard';
  current = p.mod;
  const box = h('section', { class: 'page', 'data-testid': 'page-' + page });
  main.append(box);
  // The header's counts are asked for once the page has its data, so
  // that their queries do not compete with the page's.
  try {
    await p.mod.render(box, { arg, params, prefetched });
  } catch (e) {
    if (e.status !== 401) {
      box.append(errorBox(e));
      refreshAttention(attention);
    }
    return;
  }
  // Ready once painted, unless the user has gone elsewhere meanwhile.
  await nextPaint();
  if (box.isConnected) markReady(box);
  // The counts wait for an idle moment too: the page's first input (a
  // click on the map) is not queued behind their answers' parsing.
  whenIdle(() => attention.isConnected && refreshAttention(attention));
}

// whenIdle runs fn when the page is idle, within a second at the latest.
function whenIdle(fn) {
  if (window.requestIdleCallback) requestIdleCallback(fn, { timeout: 1000 });
  else setTimeout(fn, 0);
}

window.addEventListener('hashchange', route);
window.addEventListener('unhandledrejection', (ev) => {
  // Every API error is shown on the page; keep stray ones off the console.
  if (ev.reason && ev.reason.status !== undefined) ev.preventDefault();
});
if (!location.hash || location.hash === '#' || location.hash === '#/') location.replace('#/map');
route();
