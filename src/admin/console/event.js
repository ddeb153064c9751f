// One event: what came in (raw body, pretty-printed), what it became (normalized event, alert
// fields, rules that matched), and every delivery with every attempt. Redeliver from here.

import {
  act, api, badge, clipped, confirmAction, h, page, table, td, when,
} from './core.js';

const RAW_CHARS = 20000;

function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(([, v]) => v != null && v !== '')
    .map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

// The body as received: JSON indented, a form as its fields, anything else as text.
function rawBody(raw) {
  const text = raw.body || '';
  const ct = raw.content_type || '';
  let pretty = null;
  try {
    if (/^\s*[[{]/.test(text)) pretty = JSON.stringify(JSON.parse(text), null, 2);
  } catch { /* not JSON after all: shown as it is */ }
  const parts = [h('p', { class: 'muted' }, `${ct || 'no content type'} · ${new Blob([text]).size.toLocaleString()} bytes`)];
  if (pretty == null && /^[^\s{[<]*=/.test(text)) {
    const fields = [...new URLSearchParams(text)];
    parts.push(table(['Field', 'Value'], fields.map(([k, v]) => h('tr', {}, td('Field', h('code', {}, k)), td('Value', v))), 'kv'));
    parts.push(h('details', {}, h('summary', {}, 'As received'), clipped(text, RAW_CHARS)));
  } else {
    parts.push(clipped(pretty ?? text, RAW_CHARS));
  }
  return parts;
}

function components(list) {
  if (!list.length) return null;
  const rows = list.map((c) => h('tr', {},
    td('Component', [c.group ? c.group + ' / ' : '', c.name]),
    td('Status', [c.previous_status ? c.previous_status + ' → ' : '', c.status || '?'])));
  return [h('h2', {}, 'Components'), table(['Component', 'Status'], rows, 'kv')];
}

function attempts(d) {
  if (!d.attempt_log.length) return h('p', { class: 'muted' }, 'No attempt yet.');
  return table(['#', 'At', 'Status', 'Latency', 'Error', 'Response'], d.attempt_log.map((a) => h('tr', {},
    td('#', a.number),
    td('At', when(a.at)),
    td('Status', a.status != null ? h('span', { class: a.status < 300 ? 'ok' : 'bad' }, a.status) : h('span', { class: 'muted' }, '–')),
    td('Latency', a.latency_ms + ' ms'),
    td('Error', a.error ? h('span', { class: 'bad' }, a.error) : ''),
    td('Response', a.response_excerpt ? clipped(a.response_excerpt, 300, 'code') : ''))), 'attempts');
}

function redeliverButton(id, target, label, refresh) {
  const b = h('button', { type: 'button', class: target ? 'small' : 'primary' }, label);
  b.addEventListener('click', async () => {
    const to = target ? `to ${target}` : 'to every target it went to';
    if (!await confirmAction('Redeliver this event?', `It is sent again ${to}, as a new delivery.`, 'Redeliver')) return;
    const q = target ? '?target=' + encodeURIComponent(target) : '';
    await act(b, () => api('POST', `/events/${encodeURIComponent(id)}/redeliver${q}`),
      (r) => `Redelivery queued (${r.deliveries.length} deliver${r.deliveries.length === 1 ? 'y' : 'ies'}).`);
    refresh();
  });
  return b;
}

function delivery(id, d, refresh) {
  return h('article', { class: 'card delivery', 'data-target': d.target },
    h('header', {},
      h('h3', {}, d.target ?? '(removed target)'), badge(d.state),
      h('span', { class: 'muted' }, `#${d.id} · ${d.attempts} attempt${d.attempts === 1 ? '' : 's'}`),
      h('span', { class: 'grow' }),
      d.target ? redeliverButton(id, d.target, 'Redeliver', refresh) : null),
    facts([
      ['Ordering key', d.ordering_key ? h('code', {}, d.ordering_key) : null],
      ['Created', when(d.created_at)],
      ['Next attempt', d.next_attempt_at ? when(d.next_attempt_at) : null],
      ['Last error', d.last_error ? h('span', { class: 'bad' }, d.last_error) : null],
    ]),
    attempts(d));
}

page('event', async (ctx) => {
  const id = ctx.parts[1];
  const data = await api('GET', '/events/' + encodeURIComponent(id));
  const e = data.event;
  const deliveries = h('div', { class: 'deliveries' });
  const refresh = async () => {
    const fresh = await api('GET', '/events/' + encodeURIComponent(id));
    if (ctx.current()) drawDeliveries(fresh.deliveries);
  };
  const drawDeliveries = (list) => deliveries.replaceChildren(...(list.length
    ? list.map((d) => delivery(id, d, refresh))
    : [h('p', { class: 'muted' }, 'Routed to no target.')]));
  drawDeliveries(data.deliveries);
  const status = e.status
    ? [h('span', { class: 'dot d-' + String(e.status).replace(/[^a-z]/g, '') }), e.previous_status ? `${e.previous_status} → ${e.status}` : e.status]
    : null;
  const alert = Object.entries(e.alert || {});
  ctx.mount(h('section', { class: 'detail' },
    h('div', { class: 'head' },
      h('h1', { class: 'event-title' }, e.title || '(no title)'),
      h('span', { class: 'grow' }),
      redeliverButton(id, null, 'Redeliver to all', refresh)),
    h('div', { class: 'cols' },
      h('div', { class: 'card' }, h('h2', {}, 'Event'), facts([
        ['Status', status],
        ['Source', e.source],
        ['Format', h('code', {}, e.format)],
        ['Type', h('code', {}, e.type)],
        ['Received', when(e.received_at)],
        ['Occurred', when(e.occurred_at)],
        ['Service', [e.service?.name, e.service?.slug ? ` (${e.service.slug})` : ''].filter(Boolean).join('') || null],
        ['Details', e.details],
        ['Dedup key', h('code', {}, e.dedup_key)],
        ['Id', h('code', {}, e.id)],
      ])),
      h('div', { class: 'card' }, h('h2', {}, 'Rules matched'),
        e.matched_rules && e.matched_rules.length
          ? h('ol', { class: 'rules' }, e.matched_rules.map((r) => h('li', {}, r)))
          : h('p', { class: 'muted' }, 'None.'),
        components(e.components || []))),
    h('h2', {}, 'Deliveries'),
    deliveries,
    h('div', { class: 'cols' },
      h('div', { class: 'card' }, h('h2', {}, `Alert fields (${alert.length})`),
        table(['Field', 'Value'], alert.map(([k, v]) => h('tr', {}, td('Field', h('code', {}, k)), td('Value', v))), 'kv alert')),
      h('div', { class: 'card' }, h('h2', {}, 'Body as received'), rawBody(data.raw))),
    h('details', { class: 'card' }, h('summary', {}, 'Normalized event (JSON)'),
      clipped(JSON.stringify(e, null, 2), RAW_CHARS))));

  // While something is on its way, show attempts as they happen.
  ctx.every(3000, () => {
    if (deliveries.querySelector('.s-pending')) refresh();
  });
});
