// #/login: the admin token, POST /api/v1/login, or where the listener
// takes them the client certificate the browser presents, POST
// /api/v1/login/certificate; the session cookie is HttpOnly, the CSRF
// token stays in memory.
import { login, loginCertificate, loginMethods } from '../api.js';
import { h, on, errorBox } from '../dom.js';

export function render(box, { afterLogin }) {
  document.title = 'Log in · Eastguard';
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'current-password', required: true, 'data-testid': 'login-token' });
  const msg = h('div', { 'data-testid': 'login-message' });
  const form = h('form', { class: 'login', 'data-testid': 'login-form' },
    h('h1', null, 'Eastguard controller'),
    h('label', { for: 'token' }, 'Admin token'),
    input,
    h('button', { type: 'submit', 'data-testid': 'login-submit' }, 'Log in'),
    h('p', { class: 'hint' }, 'The admin token is in <data-dir>/admin.conf; egctl admin-token create makes another.'),
    msg);
  const loggedIn = () => {
    const target = afterLogin();
    location.hash = target && !target.startsWith('#/login') ? target : '#/map';
  };
  on(form, 'submit', async (ev) => {
    ev.preventDefault();
    msg.replaceChildren();
    try {
      await login(input.value.trim());
      input.value = '';
      loggedIn();
    } catch (e) {
      msg.append(errorBox(e.status === 401 ? new Error('wrong or revoked token') : e));
    }
  });
  box.append(h('section', { class: 'page', 'data-testid': 'page-login' }, form));
  input.focus();
  loginMethods().then((m) => {
    if (!m.certificate || !form.isConnected) return;
    const button = h('button', { type: 'button', 'data-testid': 'login-certificate' }, 'Log in with my client certificate');
    on(button, 'click', async () => {
      msg.replaceChildren();
      try {
        await loginCertificate();
        loggedIn();
      } catch (e) {
        msg.append(errorBox(e.status === 401 ? new Error('certificate refused: ' + e.message) : e));
      }
    });
    form.insertBefore(h('p', { class: 'hint' }, 'or'), msg);
    form.insertBefore(button, msg);
  });
}
