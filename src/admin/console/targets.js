// Targets: state, backlog, dead letters, last error, the last hour as a chart, pause/resume.

import {
  act, ago, api, badge, duration, h, page,
} from './core.js';

const W = 300;
const H = 64;

// Deliveries (green) and failures (red) per minute as stacked bars, mean lag as a line
// scaled to its own peak.
function chart(hour) {
  const n = hour.delivered.length;
  const total = hour.delivered.map((d, i) => d + hour.failed[i]);
  const peak = Math.max(1, ...total);
  const lagPeak = Math.max(...hour.lag_avg_ms);
  const bw = W / n;
  const svg = h('svg:svg', {
    viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', preserveAspectRatio: 'none',
    'aria-label': 'deliveries, failures and lag per minute over the last hour',
  });
  for (let i = 0; i < n; i++) {
    const dh = (hour.delivered[i] / peak) * (H - 2);
    const fh = (hour.failed[i] / peak) * (H - 2);
    if (dh) svg.append(h('svg:rect', { x: i * bw + 0.5, y: H - dh, width: bw - 1, height: dh, class: 'bar-ok' }));
    if (fh) svg.append(h('svg:rect', { x: i * bw + 0.5, y: H - dh - fh, width: bw - 1, height: fh, class: 'bar-bad' }));
  }
  // Quarter-hour gridlines.
  for (const q of [15, 30, 45]) {
    svg.append(h('svg:line', { x1: (q / 60) * W, x2: (q / 60) * W, y1: 0, y2: H, class: 'grid' }));
  }
  // Mean lag, drawn only through minutes that delivered something (no delivery is no lag).
  if (lagPeak > 0) {
    let run = [];
    const flush = () => {
      if (run.length) svg.append(h('svg:polyline', { points: run.join(' '), class: 'lag' }));
      run = [];
    };
    hour.lag_avg_ms.forEach((l, i) => {
      if (!hour.delivered[i]) { flush(); return; }
      const x = (i + 0.5) * bw;
      const y = H - 3 - (l / lagPeak) * (H - 8);
      run.push(`${x},${y}`);
      if (run.length === 1) run.push(`${x + 0.01},${y}`);
    });
    flush();
  }
  const sum = (a) => a.reduce((x, y) => x + y, 0);
  const delivered = sum(hour.delivered);
  const failed = sum(hour.failed);
  const lagMax = Math.max(...hour.lag_max_ms);
  return h('figure', { class: 'chart-box' }, svg,
    h('div', { class: 'axis muted' }, h('span', {}, '60 min ago'), h('span', {}, '30'), h('span', {}, 'now')),
    h('figcaption', {},
      h('span', { class: 'key ok' }, `${delivered.toLocaleString()} delivered`),
      h('span', { class: 'key bad' }, `${failed.toLocaleString()} failed`),
      h('span', { class: 'key lag' }, `lag ≤ ${lagMax ? ms(lagMax) : '–'}`),
      h('span', { class: 'muted grow right' }, `peak ${peak.toLocaleString()}/min`)));
}

function ms(v) { return v < 1000 ? `${v} ms` : duration(Math.round(v / 1000)); }

function card(t, redraw) {
  const paused = t.state !== 'active';
  const button = h('button', { type: 'button', class: paused ? 'primary' : '', 'data-action': paused ? 'resume' : 'pause' },
    paused ? 'Resume' : 'Pause');
  button.addEventListener('click', async () => {
    const action = paused ? 'resume' : 'pause';
    const done = await act(button, () => api('POST', `/targets/${encodeURIComponent(t.name)}/${action}`),
      `${t.name} ${action === 'pause' ? 'paused' : 'resumed'}.`);
    if (done) redraw();
  });
  const since = Date.parse(t.since);
  const stat = (key, label, value, cls) => h('div', { class: 'stat ' + (cls || ''), 'data-stat': key },
    h('span', {}, label), h('strong', {}, value));
  return h('article', { class: 'card target s-' + t.state, 'data-target': t.name },
    h('header', {}, h('h2', {}, t.name), badge(t.state),
      h('span', { class: 'muted', title: t.since }, Number.isNaN(since) ? '' : `since ${ago(since).replace(' ago', '')}`),
      h('span', { class: 'grow' }), button),
    t.reason ? h('p', { class: t.state === 'suspended' ? 'bad reason' : 'muted reason' }, t.reason) : null,
    h('div', { class: 'stats' },
      stat('pending', 'Pending', t.pending.toLocaleString()),
      stat('oldest', 'Oldest pending', t.oldest_pending_age_seconds != null ? duration(t.oldest_pending_age_seconds) : '–',
        t.oldest_pending_age_seconds > 300 ? 'warn' : ''),
      h('a', { class: 'stat' + (t.dead_letters ? ' bad' : ''), 'data-stat': 'dead', href: '#/dead?target=' + encodeURIComponent(t.name) },
        h('span', {}, 'Dead letters'), h('strong', {}, t.dead_letters.toLocaleString())),
      stat('failures', 'Failures in a row', t.consecutive_failures, t.consecutive_failures ? 'bad' : '')),
    chart(t.last_hour),
    t.last_error ? h('p', { class: 'last-error' }, h('span', { class: 'muted' }, 'Last error: '), h('code', {}, t.last_error)) : null);
}

page('targets', async (ctx) => {
  const grid = h('div', { class: 'targets' });
  const draw = async () => {
    const { targets } = await api('GET', '/targets');
    if (!ctx.current()) return;
    grid.replaceChildren(...(targets.length
      ? targets.map((t) => card(t, draw))
      : [h('p', { class: 'empty' }, 'No targets are configured.')]));
  };
  await draw();
  ctx.mount(h('section', {}, h('div', { class: 'head' }, h('h1', {}, 'Targets')), grid));
  ctx.every(5000, draw);
});
