// Events: the message log, newest first, with filters, paging, and new events as they come.

import {
  api, badge, fromLocalInput, go, h, idTime, clock, page, query, table, td, toLocalInput, when,
} from './core.js';

const LIMIT = 50;
// Requests one page may take when filters match little: each looks at a bounded number of
// events (the API's budget), so a short page continues where the last one stopped.
const ROUNDS = 10;

let sourcesCache = null;

export async function sources() {
  if (!sourcesCache) sourcesCache = (await api('GET', '/sources')).sources.map((s) => s.name);
  return sourcesCache;
}

function filtersOf(params) {
  const f = {};
  for (const k of ['source', 'type', 'status', 'since', 'until']) f[k] = params.get(k) || '';
  return f;
}

// Fetches up to one page, continuing across short answers; returns rows and the next cursor.
async function fetchPage(filters, before) {
  let rows = [];
  let next = before || '';
  let examined = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const data = await api('GET', '/events' + query({ ...filters, before: next, limit: LIMIT - rows.length }));
    rows = rows.concat(data.events);
    examined += data.examined;
    next = data.next || '';
    if (!next || rows.length >= LIMIT) break;
  }
  return { rows, next, examined };
}

function row(e, fresh) {
  const link = h('a', { href: '#/event/' + encodeURIComponent(e.id), class: 'title' }, e.title || '(no title)');
  const chips = (e.deliveries || []).map((d) => h('span', {
    class: 'chip s-' + d.state,
    title: `${d.target}: ${d.state}, ${d.attempts} attempt(s)${d.last_status ? ', last HTTP ' + d.last_status : ''}`,
  }, d.target));
  const tr = h('tr', { class: fresh ? 'fresh' : null, 'data-id': e.id },
    td('Received', when(e.received_at)),
    td('Source', e.source),
    td('Type', h('code', {}, e.type)),
    td('Event', h('div', { class: 'ev' },
      e.event_status ? h('span', { class: 'dot d-' + String(e.event_status).replace(/[^a-z]/g, ''), title: e.event_status }) : null,
      link,
      e.service ? h('span', { class: 'muted svc' }, e.service) : null)),
    td('Targets', chips.length ? chips : h('span', { class: 'muted' }, 'none')),
    td('Delivery', badge(e.status)));
  tr.addEventListener('click', (ev) => { if (ev.target.tagName !== 'A') location.hash = link.getAttribute('href'); });
  return tr;
}

function filterBar(filters, names, types) {
  const set = (k, v) => go('events', { ...filters, [k]: v });
  const select = (k, label, options) => h('label', {}, label,
    h('select', { name: k, onchange: (e) => set(k, e.target.value) },
      options.map(([v, text]) => h('option', { value: v, selected: filters[k] === v }, text))));
  const typeInput = h('input', {
    name: 'type', list: 'types', value: filters.type, placeholder: 'any', size: 18,
    onchange: (e) => set('type', e.target.value.trim()),
  });
  const timeInput = (k) => h('input', {
    type: 'datetime-local', name: k, value: toLocalInput(filters[k]),
    onchange: (e) => set(k, fromLocalInput(e.target.value)),
  });
  const recent = (label, minutes) => h('button', {
    type: 'button', class: 'chip-btn',
    onclick: () => go('events', { ...filters, since: String(Date.now() - minutes * 60000), until: '' }),
  }, label);
  const active = Object.values(filters).filter(Boolean).length;
  const form = h('form', { class: 'filters', onsubmit: (e) => e.preventDefault() },
    select('source', 'Source', [['', 'All'], ...names.map((n) => [n, n])]),
    h('label', {}, 'Type', typeInput, h('datalist', { id: 'types' }, types.map((t) => h('option', { value: t })))),
    select('status', 'Delivery', [['', 'Any'], ['pending', 'pending'], ['dead', 'dead'], ['done', 'done']]),
    h('label', {}, 'From', timeInput('since')),
    h('label', {}, 'To', timeInput('until')),
    h('span', { class: 'quick' }, recent('15 min', 15), recent('1 h', 60), recent('24 h', 1440)),
    active
      ? h('button', { type: 'button', class: 'link', id: 'clear', onclick: () => go('events', {}) }, 'Clear filters')
      : null);
  // On a phone the filters fold away unless some are set.
  if (!window.matchMedia('(max-width: 720px)').matches) return form;
  return h('details', { class: 'fold', open: active > 0 },
    h('summary', {}, active ? `Filters (${active})` : 'Filters'), form);
}

page('events', async (ctx) => {
  const filters = filtersOf(ctx.params);
  const before = ctx.params.get('before') || '';
  const [names, first] = await Promise.all([sources(), fetchPage(filters, before)]);
  const rows = first.rows;
  const types = [...new Set(rows.map((e) => e.type))].sort();
  const body = h('tbody', {}, rows.map((e) => row(e, false)));
  const list = table(['Received', 'Source', 'Type', 'Event', 'Targets', 'Delivery'], [], 'events');
  list.querySelector('tbody').replaceWith(body);
  let next = first.next;
  const empty = h('p', { class: 'empty' }, before ? 'No older events match.' : 'No events match.');
  const pager = h('div', { class: 'pager' });
  const drawPager = () => {
    const older = next
      ? h('a', { class: 'button', href: '#/events' + query({ ...filters, before: next }), id: 'older' },
        rows.length < LIMIT ? `Search older (searched back to ${clock(idTime(next))})` : 'Older →')
      : null;
    pager.replaceChildren(h('span', { class: 'contents' },
      before ? h('a', { class: 'button', href: '#/events' + query(filters) }, '← Newest') : null,
      h('span', { class: 'muted' }, `${body.children.length} shown`),
      older));
  };
  drawPager();
  ctx.mount(h('section', {},
    h('div', { class: 'head' }, h('h1', {}, 'Events'),
      h('span', { class: 'muted' }, before ? `older than ${clock(idTime(before))}` : 'newest first')),
    filterBar(filters, names, types),
    rows.length ? list : empty,
    pager));

  if (before) return;
  // The first page follows new events: ask for what is newer than the top row.
  let top = rows.length ? rows[0].id : '';
  ctx.every(3000, async () => {
    const data = await api('GET', '/events' + query({ ...filters, after: top, limit: LIMIT }));
    if (!ctx.current() || !data.events.length) return;
    if (!list.isConnected) empty.replaceWith(list);
    top = data.events[0].id;
    for (const e of data.events.reverse()) body.prepend(row(e, true));
    while (body.children.length > LIMIT) body.lastElementChild.remove();
    const last = body.lastElementChild;
    if (last && body.children.length === LIMIT) next = last.dataset.id;
    drawPager();
  });
});
