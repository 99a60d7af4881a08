// The API client: same-origin fetch with the session cookie, the CSRF
// header on every state-changing call, and 401 sending the page to
// #/login. The CSRF token lives in memory only (GET /api/v1/session
// gives it back after a reload).

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export const session = { name: '', csrfToken: '', expires: '' };

let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

// Relative URLs: the page may sit behind a path prefix.
export function apiURL(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return 'api/v1/' + path + (s ? '?' + s : '');
}

export async function call(method, path, params, body, extraHeaders) {
  const headers = { Accept: 'application/json', ...(extraHeaders || {}) };
  if (method !== 'GET' && method !== 'HEAD' && session.csrfToken) headers['X-CSRF-Token'] = session.csrfToken;
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(apiURL(path, params), init);
  } catch (e) {
    throw new ApiError(0, `${method} /api/v1/${path}: the controller is unreachable (${e.message})`);
  }
  if (resp.status === 401 && !path.startsWith('login')) {
    session.csrfToken = '';
    session.name = '';
    onUnauthorized();
    throw new ApiError(401, 'not logged in');
  }
  if (resp.status === 204) return null;
  const text = await resp.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      throw new ApiError(resp.status, `${method} /api/v1/${path}: answer is not JSON (HTTP ${resp.status})`);
    }
  }
  if (!resp.ok) {
    const msg = data && typeof data.error === 'string' ? data.error : `HTTP ${resp.status}`;
    throw new ApiError(resp.status, `${method} /api/v1/${path}: ${msg}`);
  }
  return data;
}

export const get = (path, params) => call('GET', path, params);
export const post = (path, body) => call('POST', path, undefined, body);

function keep(s) {
  session.name = typeof s.name === 'string' ? s.name : '';
  session.csrfToken = typeof s.csrfToken === 'string' ? s.csrfToken : '';
  session.expires = typeof s.expires === 'string' ? s.expires : '';
}

export async function login(token) {
  keep(await post('login', { token }));
}

// loginMethods says whether this listener takes a client certificate
// (GET /api/v1/login/methods); an older controller without the endpoint
// takes tokens only.
export async function loginMethods() {
  try {
    const m = await get('login/methods');
    return { token: true, certificate: !!(m && m.certificate === true) };
  } catch {
    return { token: true, certificate: false };
  }
}

// loginCertificate logs in with the client certificate the browser
// presents on this TLS connection; the header tells the controller that
// this page, not another site's, asks.
export async function loginCertificate() {
  keep(await call('POST', 'login/certificate', undefined, undefined, { 'X-Eastguard-Login': 'certificate' }));
}

export async function restoreSession() {
  try {
    keep(await get('session'));
    return true;
  } catch (e) {
    if (e.status === 401) return false;
    throw e;
  }
}

export async function logout() {
  try {
    await post('logout');
  } finally {
    keep({});
  }
}

export function arr(x) {
  return Array.isArray(x) ? x : [];
}
