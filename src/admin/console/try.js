// Try a payload: the `hookrelay rules test` dry run on a pasted body. Nothing is stored or
// sent. The dry run's own report is shown as it is written, so whatever it says shows here.

import { api, h, page } from './core.js';
import { sources } from './events.js';

let kept = { source: '', body: '' };

// Sets the report's structure apart without reading it: section lines stand out.
function report(text) {
  return h('pre', { class: 'report', id: 'dry-run-output' }, text.split('\n').map((line) => {
    if (/^(== |target |source: |rules matched|alert fields)/.test(line)) return [h('strong', {}, line), '\n'];
    return line + '\n';
  }));
}

page('try', async (ctx) => {
  const names = await sources();
  const source = h('select', { name: 'source', id: 'dry-run-source' },
    h('option', { value: '' }, 'Any (the first that accepts it)'),
    names.map((n) => h('option', { value: n, selected: kept.source === n }, n)));
  const body = h('textarea', {
    id: 'dry-run-body', rows: 14, spellcheck: 'false',
    placeholder: 'Paste a StatusGator or PagerDuty webhook body (JSON, or StatusGator’s v1 form)',
  });
  body.value = kept.body;
  const out = h('div', { class: 'result' });
  const run = h('button', { type: 'submit', class: 'primary', id: 'dry-run-go' }, 'Run');
  const form = h('form', { class: 'card try' },
    h('div', { class: 'row' }, h('label', {}, 'Source ', source), h('span', { class: 'grow' }),
      h('span', { class: 'muted' }, 'Nothing is stored or sent.'), run),
    body);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    kept = { source: source.value, body: body.value };
    run.disabled = true;
    try {
      const q = source.value ? '?source=' + encodeURIComponent(source.value) : '';
      const r = await api('POST', '/dry-run' + q, body.value);
      out.replaceChildren(h('h2', {}, `Dry run through source ${r.source}`), report(r.output));
    } catch (err) {
      out.replaceChildren(h('p', { class: 'card error', id: 'dry-run-error' }, err.message));
    } finally {
      run.disabled = false;
    }
  });
  body.addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) form.requestSubmit(); });
  ctx.mount(h('section', {}, h('div', { class: 'head' }, h('h1', {}, 'Try a payload'),
    h('span', { class: 'muted' }, 'rules, alert fields, and each target’s exact request')), form, out));
});
