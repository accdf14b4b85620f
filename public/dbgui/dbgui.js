// db-gui: the page of `adcluster db-gui`. Plain JS, no framework, no request but to its own
// origin (the Content-Security-Policy enforces it). Talks to the JSON API under /api/.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const LS = { sql: 'dbgui.sql', limit: 'dbgui.limit', chart: 'dbgui.chart', view: 'dbgui.view', pageSize: 'dbgui.pageSize' };
  const PALETTE = ['#2f6fdb', '#e8743b', '#19a979', '#945ecf', '#ed4a7b', '#13a4b4', '#d2a400', '#6c8893', '#8e5431', '#5899da',
    '#bf399e', '#4f9d2d'];
  const LONG_TEXT = 80;

  const state = {
    info: null,
    tables: [],
    current: null, // {schema, name}
    page: { offset: 0, limit: 100, total: null, exact: true },
    result: null, // last query result {columns, column_types, numeric, rows, ...}
    view: 'grid',
    saved: [],
    // Each loader's latest request: an answer to an older one (the user clicked on) is dropped.
    seq: { table: 0, history: 0, saved: 0, tables: 0 },
  };

  /** A ticket for `kind`'s next request; `current(kind, t)` says whether it is still the latest. */
  const ticket = (kind) => ++state.seq[kind];
  const current = (kind, t) => state.seq[kind] === t;

  // ---------------------------------------------------------------- helpers

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = v;
        else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
        else e.setAttribute(k, v === true ? '' : v);
      }
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  const SVGNS = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function fmtNum(n) {
    if (n === null || n === undefined) return '';
    if (Math.abs(n) >= 1e15 || (Math.abs(n) < 1e-4 && n !== 0)) return n.toExponential(2);
    return Number(n).toLocaleString('en-US', { maximumFractionDigits: 4 });
  }

  function fmtBytes(b) {
    if (b === null || b === undefined) return '';
    const u = ['B', 'kB', 'MB', 'GB', 'TB'];
    let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return (i === 0 ? b : b.toFixed(b < 10 ? 1 : 0)) + ' ' + u[i];
  }

  function fmtCount(n) {
    if (n === null || n === undefined) return '';
    if (n >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 0 : 1) + 'M';
    if (n >= 1e4) return Math.round(n / 1e3) + 'k';
    return String(n);
  }

  // A number whose JSON text a JS number cannot hold exactly (155.00, 9007199254740993): keeps
  // PostgreSQL's text for display, behaves as a number for charts.
  class Num {
    constructor(n, text) { this.n = n; this.text = text; }
    valueOf() { return this.n; }
    toString() { return this.text; }
    toJSON() { return this.n; }
    // Where a number's methods are used on one (elapsed_ms: "2.500"), behave as the number.
    toFixed(d) { return this.n.toFixed(d); }
    toLocaleString(...a) { return this.n.toLocaleString(...a); }
  }
  const exact = (key, v, ctx) => (typeof v === 'number' && ctx && typeof ctx.source === 'string' && ctx.source !== String(v) ? new Num(v, ctx.source) : v);

  function typeName(t) { return t && t.startsWith('_') ? t.slice(1) + '[]' : (t || ''); }

  function quoteIdent(s) { return '"' + String(s).replace(/"/g, '""') + '"'; }
  function isPlainIdent(s) { return /^[a-z_][a-z0-9_$]*$/.test(s); }
  function ident(s) { return isPlainIdent(s) ? s : quoteIdent(s); }

  let toastTimer = null;
  function toast(msg, bad) {
    const t = $('toast');
    t.textContent = msg;
    t.className = 'toast' + (bad ? ' bad' : '');
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, bad ? 6000 : 2500);
  }

  class ApiError extends Error {
    constructor(status, body) {
      super(typeof body?.detail === 'string' ? body.detail : (Array.isArray(body?.detail) ? body.detail.map((d) => d.msg).join('; ') : 'HTTP ' + status));
      this.status = status;
      this.body = body;
    }
  }

  async function api(path, opts = {}) {
    const init = { method: opts.method || 'GET', headers: {}, credentials: 'same-origin' };
    if (opts.body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(opts.body);
    }
    const resp = await fetch(path, init);
    if (resp.status === 401) {
      $('signin').hidden = false;
      throw new ApiError(401, { detail: 'Not signed in' });
    }
    if (opts.raw) {
      if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => null));
      return resp;
    }
    const text = await resp.text();
    let body = null;
    try { body = JSON.parse(text, exact); } catch { body = null; }
    if (!resp.ok) throw new ApiError(resp.status, body);
    return body;
  }

  // ---------------------------------------------------------------- tabs

  function showTab(name) {
    for (const b of document.querySelectorAll('[role=tab]')) {
      const on = b.dataset.tab === name;
      b.setAttribute('aria-selected', on ? 'true' : 'false');
      b.tabIndex = on ? 0 : -1;
    }
    for (const p of document.querySelectorAll('[role=tabpanel]')) p.hidden = p.id !== 'tab-' + name;
    if (name === 'history') loadHistory();
    if (name === 'saved') loadSaved();
  }

  // ---------------------------------------------------------------- info & tables

  async function loadInfo() {
    const info = await api('/api/info');
    state.info = info;
    $('dbname').textContent = info.database;
    const mode = $('mode');
    if (info.read_only) {
      mode.textContent = 'read-only';
      mode.className = 'badge ro';
      mode.title = 'Statements run in READ ONLY transactions; start db-gui with --allow-writes to change data';
    } else {
      mode.textContent = 'writes allowed';
      mode.className = 'badge rw';
      mode.title = 'Started with --allow-writes: statements can change data';
    }
    $('server').textContent = (info.server_version ? 'PostgreSQL ' + info.server_version.split(' ')[0] + ' · ' : '') +
      'timeout ' + info.timeout_secs + ' s · max ' + info.max_rows.toLocaleString('en-US') + ' rows';
    const limit = $('limit');
    for (const o of [...limit.options]) if (Number(o.value) > info.max_rows) o.remove();
    if (![...limit.options].some((o) => Number(o.value) === info.max_rows)) limit.append(el('option', { text: String(info.max_rows) }));
    const saved = localStorage.getItem(LS.limit);
    limit.value = [...limit.options].some((o) => o.value === saved) ? saved : String(Math.min(1000, info.max_rows));
  }

  async function loadTables() {
    const box = $('tables');
    const t0 = ticket('tables');
    try {
      const { tables } = await api('/api/tables');
      if (!current('tables', t0)) return;
      state.tables = tables;
      renderTables();
    } catch (e) {
      box.replaceChildren(el('div', { class: 'none', text: 'Cannot list tables: ' + e.message }));
    }
  }

  function renderTables() {
    const box = $('tables');
    const f = $('filter').value.trim().toLowerCase();
    const items = state.tables.filter((t) => !f || (t.schema + '.' + t.name).toLowerCase().includes(f));
    const frag = document.createDocumentFragment();
    let schema = null;
    for (const t of items) {
      if (t.schema !== schema) {
        schema = t.schema;
        frag.append(el('div', { class: 'schema', text: schema }));
      }
      const current = state.current && state.current.schema === t.schema && state.current.name === t.name;
      const meta = t.rows === null ? '' : (t.rows_exact ? '' : '≈') + fmtCount(t.rows) + ' rows · ' + fmtBytes(t.size_bytes);
      frag.append(el('button', {
        class: 'table-item', 'aria-current': current ? 'true' : 'false', 'data-schema': t.schema, 'data-name': t.name,
        title: `${t.schema}.${t.name} (${t.kind}) — ${t.rows === null ? '?' : t.rows} rows${t.rows_exact ? '' : ' (estimate)'}, ${fmtBytes(t.size_bytes)}`,
        onclick: () => openTable(t.schema, t.name),
      }, el('span', { class: 'tname', text: t.name }), t.kind !== 'table' ? el('span', { class: 'kind', text: t.kind }) : null,
      el('span', { class: 'tmeta', text: meta })));
    }
    if (!items.length) frag.append(el('div', { class: 'none', text: state.tables.length ? 'No table matches.' : 'No tables in this database.' }));
    box.replaceChildren(frag);
  }

  // ---------------------------------------------------------------- table browser

  async function openTable(schema, name, offset = 0) {
    if (!state.current || state.current.schema !== schema || state.current.name !== name) {
      state.page.order = null;
      state.page.desc = false;
    }
    state.current = { schema, name };
    state.page.offset = offset;
    state.page.limit = Number($('page-size').value);
    $('current-table').textContent = schema + '.' + name;
    renderTables();
    if (![...document.querySelectorAll('[role=tab]')].some((b) => b.getAttribute('aria-selected') === 'true' &&
      (b.dataset.tab === 'data' || b.dataset.tab === 'structure'))) showTab('data');
    let path = `/api/tables/${encodeURIComponent(schema)}/${encodeURIComponent(name)}?limit=${state.page.limit}&offset=${offset}`;
    if (state.page.order) path += `&order=${encodeURIComponent(state.page.order)}&dir=${state.page.desc ? 'desc' : 'asc'}`;
    const grid = $('data-grid');
    const t0 = ticket('table');
    try {
      const t = await api(path);
      if (!current('table', t0)) return;
      state.page.total = t.row_count;
      state.page.exact = t.row_count_exact;
      renderStructure(t);
      renderGrid(grid, {
        columns: t.result_columns, column_types: t.column_types, numeric: t.numeric, rows: t.rows,
      }, offset, {
        order: state.page.order,
        desc: state.page.desc,
        // A click on a header sorts by it; a second click reverses.
        onSort: (col) => {
          if (state.page.order === col) state.page.desc = !state.page.desc;
          else { state.page.order = col; state.page.desc = false; }
          openTable(schema, name, 0);
        },
      });
      renderPager(t.rows.length);
    } catch (e) {
      if (current('table', t0)) grid.replaceChildren(el('div', { class: 'empty', text: e.message }));
    }
  }

  function renderPager(shown) {
    const { offset, limit, total, exact } = state.page;
    const last = total === null ? null : Math.max(0, Math.ceil(total / limit) - 1) * limit;
    $('page-info').textContent = shown
      ? `Rows ${(offset + 1).toLocaleString('en-US')}–${(offset + shown).toLocaleString('en-US')}` +
        (total === null ? '' : ` of ${exact ? '' : '≈'}${total.toLocaleString('en-US')}`)
      : (offset ? 'No rows past ' + offset.toLocaleString('en-US') : 'No rows');
    $('page-first').disabled = offset === 0;
    $('page-prev').disabled = offset === 0;
    $('page-next').disabled = shown < limit;
    $('page-last').disabled = shown < limit || last === null || last <= offset;
  }

  function renderStructure(t) {
    const cols = el('table', { class: 'plain' },
      el('thead', null, el('tr', null, el('th', { text: 'Column' }), el('th', { text: 'Type' }), el('th', { text: 'Nullable' }), el('th', { text: 'Default' }))),
      el('tbody', null, ...t.columns.map((c) => el('tr', null,
        el('td', null, el('code', { text: c.name }), c.primary_key ? el('span', { class: 'pk', text: 'PK' }) : null),
        el('td', null, el('code', { text: c.type })),
        el('td', { text: c.nullable ? 'null' : 'not null', class: c.nullable ? 'muted' : '' }),
        el('td', null, c.default === null ? el('span', { class: 'null', text: 'none' }) : el('code', { text: c.default }))))));
    const idx = t.indexes.length
      ? el('table', { class: 'plain' },
        el('thead', null, el('tr', null, el('th', { text: 'Index' }), el('th', { text: 'Definition' }))),
        el('tbody', null, ...t.indexes.map((i) => el('tr', null,
          el('td', null, el('code', { text: i.name }), i.primary ? el('span', { class: 'pk', text: 'PK' }) : (i.unique ? el('span', { class: 'tag', text: 'UNIQUE' }) : null)),
          el('td', null, el('code', { text: i.definition }))))))
      : el('p', { class: 'muted', text: 'No indexes.' });
    $('structure').replaceChildren(
      el('h2', { text: t.schema + '.' + t.name }),
      el('div', { class: 'muted', text: `${t.kind} · ${t.row_count === null ? '?' : (t.row_count_exact ? '' : '≈') + t.row_count.toLocaleString('en-US')} rows · ${t.columns.length} columns` }),
      el('h3', { text: 'Columns' }), cols, el('h3', { text: 'Indexes' }), idx);
  }

  // ---------------------------------------------------------------- result grid

  function cellText(v) {
    if (v === null) return null;
    if (v instanceof Num) return v.text;
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }

  function renderGrid(box, res, offset = 0, sort = null) {
    if (!res.columns.length) {
      box.replaceChildren(el('div', { class: 'empty', text: res.message || 'The statement returned no columns.' }));
      return;
    }
    const head = el('tr', null, el('th', { class: 'rownum', text: '#' }),
      ...res.columns.map((c, i) => {
        const sorted = sort && sort.order === c;
        const th = el('th', {
          title: c + ' (' + typeName(res.column_types?.[i]) + ')' + (sort ? ' — click to sort' : ''),
          class: sort ? 'sortable' : null,
          tabindex: sort ? '0' : null,
          'aria-sort': sorted ? (sort.desc ? 'descending' : 'ascending') : null,
        }, c, sorted ? el('span', { class: 'arrow', text: sort.desc ? ' ▼' : ' ▲' }) : null,
        el('span', { class: 'type', text: typeName(res.column_types?.[i]) }));
        if (sort) {
          th.addEventListener('click', () => sort.onSort(c));
          th.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); sort.onSort(c); } });
        }
        return th;
      }));
    const body = document.createElement('tbody');
    const frag = document.createDocumentFragment();
    res.rows.forEach((row, r) => {
      const tr = document.createElement('tr');
      const n = document.createElement('td');
      n.className = 'rownum';
      n.textContent = offset + r + 1;
      tr.append(n);
      row.forEach((v, c) => {
        const td = document.createElement('td');
        td.dataset.r = r;
        td.dataset.c = c;
        if (v === null) {
          td.append(el('span', { class: 'null', text: 'NULL' }));
        } else if (typeof v === 'boolean') {
          td.textContent = String(v);
          td.className = v ? 'bool-true' : 'bool-false';
        } else if (typeof v === 'number' || v instanceof Num) {
          td.textContent = String(v);
          td.className = 'num';
        } else {
          const s = cellText(v);
          // Spaces are kept (EXPLAIN's indentation); line breaks show as ↵ on one line.
          td.textContent = (s.length > LONG_TEXT ? s.slice(0, LONG_TEXT) : s).replace(/\r?\n/g, '↵ ');
          if (typeof v === 'object') td.classList.add('json');
          if (res.numeric?.[c]) td.classList.add('num');
          if (s.length > LONG_TEXT || s.includes('\n')) {
            td.classList.add('long');
            td.tabIndex = 0;
            td.title = 'Click or press Enter for the whole value (' + s.length.toLocaleString('en-US') + ' characters)';
          }
        }
        tr.append(td);
      });
      frag.append(tr);
    });
    body.append(frag);
    const table = el('table', { class: 'grid' }, el('thead', null, head), body);
    const open = (td) => {
      if (!td || td.dataset.r === undefined) return;
      const v = res.rows[Number(td.dataset.r)][Number(td.dataset.c)];
      showCell(res.columns[Number(td.dataset.c)], v);
    };
    table.addEventListener('click', (ev) => open(ev.target.closest('td')));
    table.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') open(ev.target.closest('td')); });
    box.replaceChildren(table);
  }

  function showCell(column, v) {
    $('cell-title').textContent = column;
    let text;
    if (v === null) text = 'NULL';
    else if (v instanceof Num) text = v.text;
    else if (typeof v === 'object') text = JSON.stringify(v, null, 2);
    else text = String(v);
    $('cell-value').textContent = text;
    $('cell-dialog').showModal();
    $('cell-value').focus();
  }

  // ---------------------------------------------------------------- the SQL editor

  const editor = () => $('sql');

  function updateGutter() {
    const n = editor().value.split('\n').length;
    const g = $('gutter');
    if (g.childElementCount !== n || g.dataset.n !== String(n)) {
      g.textContent = Array.from({ length: n }, (_, i) => i + 1).join('\n');
      g.dataset.n = n;
    }
    g.scrollTop = editor().scrollTop;
  }

  function currentSql() {
    const ed = editor();
    const sel = ed.value.slice(ed.selectionStart, ed.selectionEnd);
    return { sql: sel.trim() ? sel : ed.value, offset: sel.trim() ? ed.selectionStart : 0 };
  }

  function setStatus(html) {
    $('status').replaceChildren(...html);
  }

  function showError(err, sql, offset) {
    const box = $('error');
    const body = err.body || {};
    const parts = [el('div', { class: 'msg', text: 'ERROR: ' + err.message })];
    if (body.pg_detail) parts.push(el('div', { text: 'DETAIL: ' + body.pg_detail }));
    if (body.position && sql) {
      // Like psql: the line, and a caret under the position (PostgreSQL counts characters).
      const chars = [...sql];
      const pos = Math.min(body.position - 1, chars.length);
      const before = chars.slice(0, pos).join('');
      const lineNo = before.split('\n').length;
      const lineStart = before.lastIndexOf('\n') + 1;
      const line = sql.slice(lineStart).split('\n')[0];
      const col = [...before.slice(lineStart)].length;
      const prefix = `LINE ${lineNo}: `;
      parts.push(el('pre', { text: prefix + line + '\n' + ' '.repeat(prefix.length + col) + '^' }));
      // Put the cursor there.
      const ed = editor();
      const at = offset + before.length;
      ed.setSelectionRange(at, at);
    }
    if (body.hint) parts.push(el('div', { class: 'hint', text: 'HINT: ' + body.hint }));
    if (body.code) parts.push(el('div', { class: 'muted', text: 'SQLSTATE ' + body.code }));
    box.replaceChildren(...parts);
    box.hidden = false;
  }

  let running = false;
  let runningId = null;

  function newRequestId() {
    const b = new Uint8Array(12);
    crypto.getRandomValues(b);
    return [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  }

  async function cancelQuery() {
    if (!runningId) return;
    try {
      const r = await api('/api/cancel', { method: 'POST', body: { request_id: runningId } });
      if (r.cancelled) setStatus([el('span', { text: 'Cancelling…' })]);
    } catch (e) {
      toast('Cannot cancel: ' + e.message, true);
    }
  }

  async function runQuery(explain) {
    if (running) return;
    let { sql, offset } = currentSql();
    if (explain === true && sql.trim()) {
      // The plan of the statement, not its rows; positions in errors shift by the prefix.
      const prefix = 'EXPLAIN ';
      const body = sql.replace(/^\s+/, '');
      offset += sql.length - body.length - prefix.length;
      sql = prefix + body;
    }
    if (!sql.trim()) { editor().focus(); return; }
    running = true;
    runningId = newRequestId();
    $('run').disabled = true;
    // Offer Cancel only for statements that take a while.
    const cancelTimer = setTimeout(() => { if (running) $('cancel').hidden = false; }, 400);
    $('error').hidden = true;
    setStatus([el('span', { text: 'Running…' })]);
    const limit = Number($('limit').value);
    let res;
    try {
      res = await api('/api/query', { method: 'POST', body: { sql, limit, request_id: runningId } });
    } catch (e) {
      $('status').className = 'status';
      setStatus([el('span', { text: 'Failed' })]);
      showError(e, sql, offset);
      // The result below is the previous query's: say so.
      $('result-grid').classList.add('stale');
      $('result-grid').title = 'The result of the previous query (this one failed)';
      return;
    } finally {
      clearTimeout(cancelTimer);
      running = false;
      runningId = null;
      $('cancel').hidden = true;
      $('run').disabled = false;
    }
    // Outside the try: a bug in showing a result must surface as a page error, never pass for
    // a failed statement.
    showResult(res);
  }

  function showResult(res) {
    state.result = res;
    const n = Number(res.row_count);
    const rowsText = `${n.toLocaleString('en-US')} row${n === 1 ? '' : 's'}`;
    const st = [el('b', { text: res.columns.length ? rowsText : `OK, ${rowsText} affected` }),
      el('span', { text: ` · ${Number(res.elapsed_ms).toFixed(1)} ms` })];
    if (res.truncated) st.push(el('span', { class: 'trunc', text: ` · first ${n.toLocaleString('en-US')} only (limit); export for the whole result` }));
    $('status').className = 'status ok';
    setStatus(st);
    if (!res.columns.length) res.message = `The statement ran: ${n} row(s) affected.`;
    $('result-grid').classList.remove('stale');
    $('result-grid').title = '';
    renderGrid($('result-grid'), res);
    fillChartColumns();
    if (state.view === 'chart') drawChart();
    if (!res.read_only) loadTables();
  }

  async function exportResult(format) {
    const { sql } = currentSql();
    if (!sql.trim()) { toast('Nothing to export: write a query first', true); return; }
    $('error').hidden = true;
    const btn = $('export-' + format);
    btn.disabled = true;
    try {
      const resp = await api('/api/export?format=' + format, { method: 'POST', body: { sql }, raw: true });
      const blob = await resp.blob();
      const cd = resp.headers.get('content-disposition') || '';
      const m = /filename="([^"]+)"/.exec(cd);
      const name = m ? m[1] : 'query.' + format;
      const url = URL.createObjectURL(blob);
      const a = el('a', { href: url, download: name });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      toast(`Exported ${name} (${fmtBytes(blob.size)})`);
    } catch (e) {
      showError(e, sql, 0);
    } finally {
      btn.disabled = false;
    }
  }

  // ---------------------------------------------------------------- charts

  function setView(view) {
    state.view = view;
    localStorage.setItem(LS.view, view);
    $('view-grid').setAttribute('aria-pressed', view === 'grid' ? 'true' : 'false');
    $('view-chart').setAttribute('aria-pressed', view === 'chart' ? 'true' : 'false');
    $('result-grid').hidden = view !== 'grid';
    $('result-chart').hidden = view !== 'chart';
    $('chart-controls').hidden = view !== 'chart';
    if (view === 'chart') drawChart();
  }

  function chartSettings() {
    return { type: $('chart-type').value, x: $('chart-x').value, y: $('chart-y').value };
  }

  function storeChart() { localStorage.setItem(LS.chart, JSON.stringify(chartSettings())); }

  function numericColumns(res) {
    return res.columns.filter((c, i) => res.numeric?.[i] ||
      (res.rows.length > 0 && res.rows.every((r) => r[i] === null || r[i] instanceof Num ||
        (typeof r[i] === 'string' && r[i].trim() !== '' && !isNaN(Number(r[i]))))));
  }

  function fillChartColumns(prefer) {
    const res = state.result;
    const xs = $('chart-x');
    const ys = $('chart-y');
    const want = prefer || JSON.parse(localStorage.getItem(LS.chart) || 'null') || {};
    if (want.type) $('chart-type').value = want.type;
    if (!res || !res.columns.length) { xs.replaceChildren(); ys.replaceChildren(); return; }
    const nums = numericColumns(res);
    xs.replaceChildren(...res.columns.map((c) => el('option', { value: c, text: c })));
    ys.replaceChildren(...nums.map((c) => el('option', { value: c, text: c })));
    const firstNonNum = res.columns.find((c) => !nums.includes(c));
    xs.value = res.columns.includes(want.x) ? want.x : (firstNonNum ?? res.columns[0]);
    ys.value = nums.includes(want.y) ? want.y : (nums.find((c) => c !== xs.value) ?? nums[0] ?? '');
  }

  function niceTicks(min, max, count) {
    if (min === max) { max = min + 1; if (min > 0) min = 0; }
    const span = max - min;
    const step0 = span / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const norm = step0 / mag;
    const step = (norm >= 5 ? 10 : norm >= 2 ? 5 : norm >= 1 ? 2 : 1) * mag;
    const lo = Math.floor(min / step) * step;
    const hi = Math.ceil(max / step) * step;
    const ticks = [];
    for (let v = lo; v <= hi + step / 2; v += step) ticks.push(Number(v.toPrecision(12)));
    return { lo, hi, ticks };
  }

  function shorten(s, n) { s = String(s); return s.length > n ? s.slice(0, n - 1) + '…' : s; }

  function drawChart() {
    const res = state.result;
    const area = $('chart-scroll');
    const legend = $('legend');
    legend.replaceChildren();
    if (!res || !res.columns.length || !res.rows.length) {
      area.replaceChildren(el('div', { class: 'empty', text: 'Run a query that returns rows, then choose a label column and a value column.' }));
      return;
    }
    const { type, x, y } = chartSettings();
    const xi = res.columns.indexOf(x);
    const yi = res.columns.indexOf(y);
    if (xi < 0 || yi < 0) {
      area.replaceChildren(el('div', { class: 'empty', text: 'This result has no numeric column to chart.' }));
      return;
    }
    const labels = res.rows.map((r) => (r[xi] === null ? 'NULL' : cellText(r[xi])));
    const values = res.rows.map((r) => { const v = Number(r[yi]); return r[yi] === null || !isFinite(v) ? 0 : v; });
    const width = Math.max(area.clientWidth - 4, 480);
    const height = Math.max(area.clientHeight - 4, 300);
    let chart;
    if (type === 'pie') chart = pieChart(labels, values, width, height, legend);
    else chart = xyChart(type, labels, values, width, height, x, y, legend);
    area.replaceChildren(chart);
  }

  function xyChart(type, labels, values, width, height, xName, yName, legend) {
    const n = labels.length;
    const m = { top: 18, right: 20, bottom: 86, left: 74 };
    const minStep = type === 'bar' ? 4 : 3;
    const plotW0 = width - m.left - m.right;
    const plotW = Math.max(plotW0, n * minStep);
    const W = plotW + m.left + m.right;
    const H = height;
    const plotH = H - m.top - m.bottom;
    const vmin = Math.min(0, ...values);
    const vmax = Math.max(0, ...values);
    const { lo, hi, ticks } = niceTicks(vmin, vmax, Math.max(3, Math.floor(plotH / 45)));
    const yPos = (v) => m.top + plotH - ((v - lo) / (hi - lo || 1)) * plotH;
    const band = plotW / n;
    const xPos = (i) => m.left + band * i + band / 2;
    const s = svg('svg', { class: 'chart', width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img',
      'aria-label': `${type} chart of ${yName} by ${xName}, ${n} rows` });
    // grid + y axis
    for (const t of ticks) {
      const yy = yPos(t);
      s.append(svg('line', { class: 'gridline', x1: m.left, x2: m.left + plotW, y1: yy, y2: yy }));
      s.append(svg('text', { x: m.left - 8, y: yy + 4, 'text-anchor': 'end' }, fmtNum(t)));
    }
    s.append(svg('line', { class: 'axis', x1: m.left, x2: m.left, y1: m.top, y2: m.top + plotH }));
    s.append(svg('line', { class: 'axis', x1: m.left, x2: m.left + plotW, y1: yPos(0), y2: yPos(0) }));
    // x labels: as many as fit
    const every = Math.max(1, Math.ceil(14 / band));
    const rotate = band < 60 || labels.some((l) => l.length * 6.5 > band);
    for (let i = 0; i < n; i += every) {
      const t = svg('text', { x: xPos(i), y: m.top + plotH + 14, 'text-anchor': rotate ? 'end' : 'middle' }, shorten(labels[i], 16));
      if (rotate) t.setAttribute('transform', `rotate(-40 ${xPos(i)} ${m.top + plotH + 14})`);
      s.append(t);
    }
    // axis titles
    s.append(svg('text', { class: 'axis-title', x: m.left + plotW0 / 2, y: H - 8, 'text-anchor': 'middle' }, xName));
    s.append(svg('text', { class: 'axis-title', x: 14, y: m.top + plotH / 2, 'text-anchor': 'middle', transform: `rotate(-90 14 ${m.top + plotH / 2})` }, yName));
    const color = PALETTE[0];
    if (type === 'bar') {
      const bw = Math.max(1, band * 0.78);
      values.forEach((v, i) => {
        const y0 = yPos(Math.max(0, v));
        const h = Math.abs(yPos(v) - yPos(0));
        const r = svg('rect', { class: 'bar', x: xPos(i) - bw / 2, y: y0, width: bw, height: Math.max(h, 0.5), fill: color, 'data-i': i });
        r.append(svg('title', {}, `${labels[i]}: ${fmtNum(v)}`));
        s.append(r);
      });
    } else {
      const pts = values.map((v, i) => `${xPos(i).toFixed(2)},${yPos(v).toFixed(2)}`).join(' ');
      s.append(svg('polyline', { points: pts, fill: 'none', stroke: color, 'stroke-width': 2, 'stroke-linejoin': 'round' }));
      const rad = n > 150 ? 2 : 3.5;
      values.forEach((v, i) => {
        const c = svg('circle', { class: 'point', cx: xPos(i), cy: yPos(v), r: rad, fill: '#fff', stroke: color, 'stroke-width': 1.5, 'data-i': i });
        c.append(svg('title', {}, `${labels[i]}: ${fmtNum(v)}`));
        s.append(c);
      });
    }
    const total = values.reduce((a, b) => a + b, 0);
    legend.append(el('li', null, el('span', { class: 'sw', 'data-color': color }), el('span', { class: 'lbl', text: yName }),
      el('span', { class: 'val', text: `${n} rows` })));
    legend.append(el('li', null, el('span', { class: 'lbl muted', text: 'min ' + fmtNum(Math.min(...values)) + ' · max ' + fmtNum(Math.max(...values)) + ' · sum ' + fmtNum(total) })));
    paintSwatches(legend);
    return s;
  }

  function pieChart(labels, values, width, height, legend) {
    const n = labels.length;
    const W = Math.min(width, height + 40);
    const H = height;
    const r = Math.min(W, H) / 2 - 16;
    const cx = W / 2;
    const cy = H / 2;
    const vals = values.map((v) => (v > 0 ? v : 0));
    const total = vals.reduce((a, b) => a + b, 0) || 1;
    const s = svg('svg', { class: 'chart', width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `pie chart, ${n} slices` });
    let a0 = -Math.PI / 2;
    vals.forEach((v, i) => {
      const frac = v / total;
      const a1 = a0 + frac * 2 * Math.PI;
      const color = PALETTE[i % PALETTE.length];
      let d;
      if (frac >= 0.9999) {
        d = `M ${cx} ${cy - r} A ${r} ${r} 0 1 1 ${cx - 0.01} ${cy - r} Z`;
      } else {
        const large = a1 - a0 > Math.PI ? 1 : 0;
        d = `M ${cx} ${cy} L ${cx + r * Math.cos(a0)} ${cy + r * Math.sin(a0)} A ${r} ${r} 0 ${large} 1 ${cx + r * Math.cos(a1)} ${cy + r * Math.sin(a1)} Z`;
      }
      const p = svg('path', { class: 'slice', d, fill: color, stroke: '#fff', 'stroke-width': n > 60 ? 0.5 : 1.5, 'data-i': i });
      p.append(svg('title', {}, `${labels[i]}: ${fmtNum(values[i])} (${(frac * 100).toFixed(1)}%)`));
      s.append(p);
      if (frac > 0.04 && n <= 40) {
        const mid = (a0 + a1) / 2;
        s.append(svg('text', { class: 'pct', x: cx + r * 0.68 * Math.cos(mid), y: cy + r * 0.68 * Math.sin(mid) + 4, 'text-anchor': 'middle' },
          (frac * 100).toFixed(0) + '%'));
      }
      legend.append(el('li', null, el('span', { class: 'sw', 'data-color': color }), el('span', { class: 'lbl', text: labels[i], title: labels[i] }),
        el('span', { class: 'val', text: fmtNum(values[i]) })));
      a0 = a1;
    });
    paintSwatches(legend);
    return s;
  }

  // Swatch colours through the CSSOM (inline style attributes are refused by the CSP).
  function paintSwatches(root) {
    for (const sw of root.querySelectorAll('.sw[data-color]')) sw.style.background = sw.dataset.color;
  }

  // ---------------------------------------------------------------- saved queries & history

  async function loadSaved() {
    const box = $('saved-list');
    const t0 = ticket('saved');
    try {
      const { queries } = await api('/api/saved');
      if (!current('saved', t0)) return;
      state.saved = queries;
      $('saved-count').textContent = queries.length ? String(queries.length) : '';
      if (!queries.length) {
        box.replaceChildren(el('ul', { class: 'list' }, el('li', { class: 'empty', text: 'No saved queries yet. Write one in SQL and press “Save…”.' })));
        return;
      }
      box.replaceChildren(el('ul', { class: 'list' }, ...queries.map((q) => el('li', { 'data-id': q.id },
        el('div', { class: 'main' },
          el('div', { class: 'title', text: q.name }),
          el('div', { class: 'meta', text: (q.chart ? `${q.chart.type} chart of ${q.chart.y} by ${q.chart.x} · ` : '') + 'saved ' + new Date(q.created_at).toLocaleString() }),
          el('pre', { text: q.sql })),
        el('div', { class: 'actions' },
          el('button', { text: 'Open', onclick: () => openSaved(q, false) }),
          el('button', { class: 'primary', text: 'Run', onclick: () => openSaved(q, true) }),
          el('button', { class: 'danger', text: 'Delete', 'aria-label': 'Delete ' + q.name, onclick: () => deleteSaved(q) }))))));
    } catch (e) {
      box.replaceChildren(el('div', { class: 'empty', text: e.message }));
    }
  }

  function openSaved(q, run) {
    setSql(q.sql);
    showTab('sql');
    if (q.chart) {
      localStorage.setItem(LS.chart, JSON.stringify(q.chart));
      $('chart-type').value = q.chart.type;
      setView('chart');
    } else {
      setView('grid');
    }
    if (run) runQuery();
    else editor().focus();
  }

  async function deleteSaved(q) {
    if (!confirm(`Delete the saved query “${q.name}”?`)) return;
    try {
      await api('/api/saved/' + q.id, { method: 'DELETE' });
      toast('Deleted ' + q.name);
      loadSaved();
    } catch (e) {
      toast(e.message, true);
    }
  }

  function openSaveDialog() {
    const { sql } = currentSql();
    if (!sql.trim()) { toast('Nothing to save: write a query first', true); return; }
    const c = chartSettings();
    const canChart = state.result && c.x && c.y;
    $('save-chart').checked = Boolean(canChart && state.view === 'chart');
    $('save-chart').disabled = !canChart;
    $('save-chart-desc').textContent = canChart ? `${c.type} of ${c.y} by ${c.x}` : 'run the query first';
    $('save-name').value = '';
    $('save-dialog').showModal();
    $('save-name').focus();
  }

  async function doSave() {
    const name = $('save-name').value.trim();
    if (!name) { $('save-name').focus(); return; }
    const { sql } = currentSql();
    const chart = $('save-chart').checked && !$('save-chart').disabled ? chartSettings() : null;
    try {
      await api('/api/saved', { method: 'POST', body: { name, sql, chart } });
      $('save-dialog').close();
      toast('Saved “' + name + '”');
      loadSaved();
    } catch (e) {
      toast(e.message, true);
    }
  }

  async function loadHistory() {
    const box = $('history-list');
    const t0 = ticket('history');
    try {
      const { queries } = await api('/api/history');
      if (!current('history', t0)) return;
      if (!queries.length) {
        box.replaceChildren(el('ul', { class: 'list' }, el('li', { class: 'empty', text: 'No queries run yet.' })));
        return;
      }
      box.replaceChildren(el('ul', { class: 'list' }, ...queries.map((h) => el('li', null,
        el('div', { class: 'main' },
          el('div', { class: 'meta' },
            new Date(h.at).toLocaleString() + ' · ' + h.elapsed_ms.toFixed(1) + ' ms · ' + (h.kind === 'query' ? '' : h.kind + ' · '),
            h.error ? el('span', { class: 'err', text: h.error }) : (h.row_count === null ? '' : h.row_count.toLocaleString('en-US') + ' rows')),
          el('pre', { text: h.sql })),
        el('div', { class: 'actions' },
          el('button', { text: 'Open', onclick: () => { setSql(h.sql); showTab('sql'); editor().focus(); } }))))));
    } catch (e) {
      box.replaceChildren(el('div', { class: 'empty', text: e.message }));
    }
  }

  function setSql(sql) {
    editor().value = sql;
    localStorage.setItem(LS.sql, sql);
    updateGutter();
  }

  // ---------------------------------------------------------------- wiring

  function wire() {
    for (const b of document.querySelectorAll('[role=tab]')) b.addEventListener('click', () => showTab(b.dataset.tab));
    $('view-grid').addEventListener('click', () => setView('grid'));
    $('view-chart').addEventListener('click', () => setView('chart'));
    // Arrow keys move between tabs (the WAI-ARIA tabs pattern).
    document.querySelector('.tabs').addEventListener('keydown', (ev) => {
      if (ev.key !== 'ArrowRight' && ev.key !== 'ArrowLeft') return;
      const tabs = [...document.querySelectorAll('[role=tab]')];
      const i = tabs.indexOf(document.activeElement);
      if (i < 0) return;
      const next = tabs[(i + (ev.key === 'ArrowRight' ? 1 : tabs.length - 1)) % tabs.length];
      next.focus();
      showTab(next.dataset.tab);
    });
    const ed = editor();
    ed.addEventListener('input', () => { localStorage.setItem(LS.sql, ed.value); updateGutter(); });
    ed.addEventListener('scroll', () => { $('gutter').scrollTop = ed.scrollTop; });
    ed.addEventListener('keydown', (ev) => {
      if ((ev.ctrlKey || ev.metaKey) && ev.key === 'Enter') { ev.preventDefault(); runQuery(); }
    });
    document.addEventListener('keydown', (ev) => {
      if ((ev.ctrlKey || ev.metaKey) && ev.key === 'Enter' && document.activeElement !== ed) { ev.preventDefault(); showTab('sql'); runQuery(); }
      if (ev.key === 'Escape' && running && !document.querySelector('dialog[open]')) { ev.preventDefault(); cancelQuery(); }
      if (ev.key === '/' && !['INPUT', 'TEXTAREA', 'SELECT'].includes(document.activeElement.tagName) && !document.querySelector('dialog[open]')) {
        ev.preventDefault();
        $('filter').focus();
      }
    });
    $('run').addEventListener('click', () => runQuery());
    $('explain').addEventListener('click', () => runQuery(true));
    $('cancel').addEventListener('click', cancelQuery);
    $('limit').addEventListener('change', () => localStorage.setItem(LS.limit, $('limit').value));
    $('export-csv').addEventListener('click', () => exportResult('csv'));
    $('export-json').addEventListener('click', () => exportResult('json'));
    $('save').addEventListener('click', openSaveDialog);
    $('save-ok').addEventListener('click', doSave);
    $('save-cancel').addEventListener('click', () => $('save-dialog').close());
    $('save-name').addEventListener('keydown', (ev) => { if (ev.key === 'Enter') { ev.preventDefault(); doSave(); } });
    $('cell-close').addEventListener('click', () => $('cell-dialog').close());
    $('cell-copy').addEventListener('click', async () => {
      try { await navigator.clipboard.writeText($('cell-value').textContent); toast('Copied'); } catch { toast('Copy is not allowed here', true); }
    });
    for (const id of ['chart-type', 'chart-x', 'chart-y']) $(id).addEventListener('change', () => { storeChart(); drawChart(); });
    $('filter').addEventListener('input', renderTables);
    $('filter').addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter') { const first = document.querySelector('.table-item'); if (first) first.click(); }
      if (ev.key === 'ArrowDown') { ev.preventDefault(); document.querySelector('.table-item')?.focus(); }
    });
    $('tables').addEventListener('keydown', (ev) => {
      if (ev.key !== 'ArrowDown' && ev.key !== 'ArrowUp') return;
      const items = [...document.querySelectorAll('.table-item')];
      const i = items.indexOf(document.activeElement);
      if (i < 0) return;
      ev.preventDefault();
      items[Math.max(0, Math.min(items.length - 1, i + (ev.key === 'ArrowDown' ? 1 : -1)))].focus();
    });
    $('refresh-tables').addEventListener('click', loadTables);
    $('history-refresh').addEventListener('click', loadHistory);
    const page = (to) => state.current && openTable(state.current.schema, state.current.name, Math.max(0, to));
    $('page-first').addEventListener('click', () => page(0));
    $('page-prev').addEventListener('click', () => page(state.page.offset - state.page.limit));
    $('page-next').addEventListener('click', () => page(state.page.offset + state.page.limit));
    $('page-last').addEventListener('click', () => {
      const { total, limit } = state.page;
      if (total !== null) page(Math.max(0, Math.ceil(total / limit) - 1) * limit);
    });
    $('page-size').addEventListener('change', () => { localStorage.setItem(LS.pageSize, $('page-size').value); page(0); });
    $('query-table').addEventListener('click', () => {
      if (!state.current) return;
      setSql(`SELECT *\nFROM ${ident(state.current.schema)}.${ident(state.current.name)}\nLIMIT 100;`);
      showTab('sql');
      editor().focus();
    });
    window.addEventListener('resize', () => { if (state.view === 'chart') drawChart(); });
  }

  async function start() {
    // The token was for this one visit: the cookie now stands for it. Keep it out of the
    // address bar and the history.
    if (location.search.includes('token=')) history.replaceState(null, '', '/');
    wire();
    editor().value = localStorage.getItem(LS.sql) ?? 'SELECT schemaname, relname, n_live_tup\nFROM pg_stat_user_tables\nORDER BY n_live_tup DESC;';
    updateGutter();
    const ps = localStorage.getItem(LS.pageSize);
    if (ps && [...$('page-size').options].some((o) => o.value === ps)) $('page-size').value = ps;
    setView(localStorage.getItem(LS.view) === 'chart' ? 'chart' : 'grid');
    fillChartColumns();
    try {
      await loadInfo();
    } catch (e) {
      if (e.status !== 401) toast('Cannot reach db-gui: ' + e.message, true);
      return;
    }
    loadTables();
    loadSaved();
    editor().focus();
  }

  document.addEventListener('DOMContentLoaded', start);
})();
