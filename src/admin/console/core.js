// The console's toolkit: building nodes, talking to the admin API, the token, routing,
// timers, dialogs and formatting.
//
// Every node is made by h(): strings become text nodes, never markup, so a value from an event
// is shown as the characters it holds. Nothing here assigns innerHTML.

export function h(tag, attrs, ...children) {
  const el = tag.startsWith('svg:')
    ? document.createElementNS('http://www.w3.org/2000/svg', tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.setAttribute('class', v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  add(el, children);
  return el;
}

function add(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// --- the admin API -----------------------------------------------------------------------

const TOKEN = 'hookrelay.token';

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Calls the admin API with the token kept for this tab; asks for the token when refused.
export async function api(method, path, body) {
  for (;;) {
    const token = sessionStorage.getItem(TOKEN);
    const headers = {};
    if (token) headers.Authorization = 'Bearer ' + token;
    const resp = await fetch(path, {
      method, headers, body, cache: 'no-store', credentials: 'omit', redirect: 'error',
    });
    if (resp.status === 401) {
      await askToken(token ? 'That token was refused.' : '');
      continue;
    }
    const text = await resp.text();
    let data;
    try { data = JSON.parse(text); } catch { data = { error: text }; }
    if (!resp.ok) throw new ApiError(resp.status, (data && data.error) || resp.statusText);
    return data;
  }
}

let asking = null;

// Shows the token form over the page; resolves once a token is entered.
function askToken(problem) {
  if (asking) return asking;
  asking = new Promise((resolve) => {
    const input = h('input', {
      id: 'token', type: 'password', autocomplete: 'current-password', required: true,
      placeholder: 'admin.token', 'aria-label': 'Admin token',
    });
    const form = h('form', { class: 'card login' },
      h('h1', {}, 'Admin token'),
      h('p', {}, 'This relay’s admin API asks for its token (', h('code', {}, 'admin.token'),
        '). It is kept in this browser tab only and sent with each request as a bearer header.'),
      problem ? h('p', { class: 'error' }, problem) : null,
      input,
      h('button', { type: 'submit', class: 'primary' }, 'Open the console'));
    const veil = h('div', { class: 'veil' }, form);
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      sessionStorage.setItem(TOKEN, input.value);
      veil.remove();
      showForget();
      asking = null;
      resolve();
    });
    document.body.append(veil);
    input.focus();
  });
  return asking;
}

function showForget() {
  const b = document.getElementById('forget');
  b.hidden = !sessionStorage.getItem(TOKEN);
  b.onclick = () => { sessionStorage.removeItem(TOKEN); location.reload(); };
}

// --- routing ---------------------------------------------------------------------------------

const pages = {};
let generation = 0;
let timers = [];

export function page(name, render) { pages[name] = render; }

// The route in the address: `#/name/part?params`.
export function here() {
  const [path, query] = location.hash.replace(/^#\/?/, '').split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { name: parts[0] || 'events', parts, params: new URLSearchParams(query || '') };
}

export function go(name, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v != null && v !== '') q.set(k, v);
  const s = q.toString();
  location.hash = '#/' + name + (s ? '?' + s : '');
}

export async function show() {
  const mine = ++generation;
  timers.forEach(clearInterval);
  timers = [];
  live(false);
  const route = here();
  for (const a of document.querySelectorAll('[data-nav]')) {
    a.classList.toggle('on', a.dataset.nav === route.name || (route.name === 'event' && a.dataset.nav === 'events'));
  }
  const main = document.getElementById('main');
  const render = pages[route.name];
  if (!render) {
    main.replaceChildren(h('p', { class: 'error' }, 'No such page.'));
    return;
  }
  const ctx = {
    ...route,
    // False once another page was opened: a late answer must not draw over it.
    current: () => mine === generation,
    // Runs fn every ms while this page is shown and the tab is visible.
    every(ms, fn) {
      timers.push(setInterval(() => { if (mine === generation && !document.hidden) fn(); }, ms));
      live(true);
    },
    mount(node) { if (mine === generation) main.replaceChildren(node); },
  };
  try {
    await render(ctx);
  } catch (e) {
    ctx.mount(failure(e));
  }
  showForget();
}

function live(on) { document.getElementById('live').hidden = !on; }

export function failure(e) {
  return h('div', { class: 'card error' }, h('strong', {}, 'Could not load this page. '), e.message || String(e));
}

// --- feedback --------------------------------------------------------------------------------

export function flash(message, kind) {
  const box = document.getElementById('flash');
  const note = h('div', { class: 'note ' + (kind || 'ok') }, message);
  box.append(note);
  setTimeout(() => note.remove(), 5000);
}

// Asks before an action; resolves true when confirmed.
export function confirmAction(title, text, label) {
  return new Promise((resolve) => {
    const yes = h('button', { type: 'button', class: 'primary', id: 'confirm-yes' }, label);
    const no = h('button', { type: 'button', id: 'confirm-no' }, 'Cancel');
    const dialog = h('dialog', { class: 'confirm' }, h('h2', {}, title), h('p', {}, text),
      h('div', { class: 'actions' }, no, yes));
    const done = (answer) => { dialog.close(); dialog.remove(); resolve(answer); };
    yes.addEventListener('click', () => done(true));
    no.addEventListener('click', () => done(false));
    dialog.addEventListener('cancel', (e) => { e.preventDefault(); done(false); });
    document.body.append(dialog);
    dialog.showModal();
    yes.focus();
  });
}

// Runs an action from a button: disabled meanwhile, the outcome flashed.
export async function act(button, fn, success) {
  button.disabled = true;
  try {
    const result = await fn();
    if (success) flash(typeof success === 'function' ? success(result) : success, 'ok');
    return result;
  } catch (e) {
    flash(e.message || String(e), 'bad');
    return undefined;
  } finally {
    button.disabled = false;
  }
}

// --- formatting ------------------------------------------------------------------------------

const pad = (n) => String(n).padStart(2, '0');

export function clock(ms) {
  const d = new Date(ms);
  const t = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const today = new Date();
  if (d.toDateString() === today.toDateString()) return t;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${t}`;
}

export function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return duration(s) + ' ago';
}

export function duration(s) {
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min';
  if (s < 86400) return (s / 3600).toFixed(s < 36000 ? 1 : 0) + ' h';
  return (s / 86400).toFixed(s < 864000 ? 1 : 0) + ' d';
}

// A time cell: local clock time, how long ago, the exact UTC time on hover.
export function when(iso) {
  if (!iso) return h('span', { class: 'muted' }, '–');
  const ms = Date.parse(iso);
  if (Number.isNaN(ms)) return String(iso);
  return h('time', { datetime: iso, title: iso }, clock(ms), ' ', h('span', { class: 'muted' }, ago(ms)));
}

// The millisecond a UUIDv7 event id was made in.
export function idTime(id) {
  return parseInt(String(id).replace(/-/g, '').slice(0, 12), 16);
}

export function badge(state) {
  return h('span', { class: 'badge s-' + String(state).replace(/[^a-z]/g, '') }, state);
}

// Cuts a long text, with a button that shows the whole.
export function clipped(text, n, tag) {
  const s = String(text ?? '');
  const el = h(tag || 'pre', { class: 'body' }, s.length > n ? s.slice(0, n) : s);
  if (s.length <= n) return el;
  const more = h('button', { type: 'button', class: 'link more' },
    `Show all (${s.length.toLocaleString()} characters)`);
  more.addEventListener('click', () => { el.textContent = s; more.remove(); });
  return h('div', {}, el, more);
}

export function table(headings, rows, cls) {
  return h('table', { class: 'list ' + (cls || '') },
    h('thead', {}, h('tr', {}, headings.map((t) => h('th', {}, t)))),
    h('tbody', {}, rows));
}

// A table cell labelled for the narrow layout, where rows stack.
export function td(label, ...content) {
  return h('td', { 'data-label': label }, content);
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? '?' + s : '';
}

// `datetime-local` value ⇄ epoch ms.
export function toLocalInput(ms) {
  if (!ms) return '';
  const d = new Date(Number(ms));
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function fromLocalInput(v) {
  const ms = Date.parse(v);
  return Number.isNaN(ms) ? '' : String(ms);
}
