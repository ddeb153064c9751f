// Dead letters: by target and time; replay one, or all shown, after a confirmation.

import {
  act, api, confirmAction, fromLocalInput, go, h, page, query, show, table, td, toLocalInput, when,
} from './core.js';

function row(d, refresh) {
  const replay = h('button', { type: 'button', class: 'small', 'data-replay': d.id }, 'Replay');
  replay.addEventListener('click', async () => {
    if (!await confirmAction('Replay this dead letter?',
      `Delivery #${d.id} goes back into ${d.target}'s queue, due now, with a fresh retry budget.`, 'Replay')) return;
    const r = await act(replay, () => api('POST', `/dead-letters/${d.id}/replay`), 'Replayed: it is being sent again.');
    if (r) refresh();
  });
  const ev = d.event;
  return h('tr', { 'data-id': d.id },
    td('Dead since', when(d.dead_at)),
    td('Target', d.target),
    td('Event', h('a', { href: '#/event/' + encodeURIComponent(d.event_id) }, ev ? ev.title || '(no title)' : d.event_id),
      ev ? h('span', { class: 'muted svc' }, `${ev.source} · ${ev.type}`) : null),
    td('Attempts', d.attempts),
    td('Last status', d.last_status ?? '–'),
    td('Last error', d.last_error ? h('span', { class: 'bad' }, d.last_error) : ''),
    td('', replay));
}

page('dead', async (ctx) => {
  const f = {};
  for (const k of ['target', 'since', 'until']) f[k] = ctx.params.get(k) || '';
  const [{ targets }, data] = await Promise.all([
    api('GET', '/targets'),
    api('GET', '/dead-letters' + query({ ...f, limit: 500 })),
  ]);
  const refresh = () => show();
  const list = data.dead_letters.sort((a, b) => (a.dead_at < b.dead_at ? 1 : -1));
  const set = (k, v) => go('dead', { ...f, [k]: v });
  const filters = h('form', { class: 'filters', onsubmit: (e) => e.preventDefault() },
    h('label', {}, 'Target', h('select', { name: 'target', onchange: (e) => set('target', e.target.value) },
      h('option', { value: '' }, 'All'),
      targets.map((t) => h('option', { value: t.name, selected: f.target === t.name }, `${t.name} (${t.dead_letters})`)))),
    h('label', {}, 'Dead from', h('input', { type: 'datetime-local', name: 'since', value: toLocalInput(f.since), onchange: (e) => set('since', fromLocalInput(e.target.value)) })),
    h('label', {}, 'To', h('input', { type: 'datetime-local', name: 'until', value: toLocalInput(f.until), onchange: (e) => set('until', fromLocalInput(e.target.value)) })));
  const all = h('button', { type: 'button', class: 'primary', id: 'replay-all', disabled: !list.length }, `Replay all shown (${list.length})`);
  all.addEventListener('click', async () => {
    if (!await confirmAction(`Replay ${list.length} dead letter${list.length === 1 ? '' : 's'}?`,
      'Each goes back into its target’s queue, in its ordering key’s order, due now, with a fresh retry budget.', 'Replay all')) return;
    const r = await act(all, () => api('POST', '/dead-letters/replay' + query({ ids: list.map((d) => d.id).join(',') })),
      (x) => `Replayed ${x.replayed}.`);
    if (r) refresh();
  });
  ctx.mount(h('section', {},
    h('div', { class: 'head' }, h('h1', {}, 'Dead letters'), h('span', { class: 'grow' }), all),
    filters,
    list.length
      ? table(['Dead since', 'Target', 'Event', 'Attempts', 'Last status', 'Last error', ''], list.map((d) => row(d, refresh)), 'dead')
      : h('p', { class: 'empty' }, 'No dead letters here.')));
});
