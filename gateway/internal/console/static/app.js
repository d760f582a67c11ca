// The outbox console (seed 003): views, the grid with its saved columns, filters, live updates,
// row and bulk actions, the detail popup, compose with undo, connectors and settings.
import { call, query, watch, ApiError } from './api.js';
import { i18n } from './i18n.js';

const $ = (id) => document.getElementById(id);
const t = (k, p) => i18n.t(k, p);

/** h makes an element: h('td', {class: 'x', onclick: f}, 'text', child). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== undefined && c !== null && c !== false) el.append(c);
  return el;
}

const ALL_COLUMNS = ['TO', 'SUBJECT', 'CONNECTOR', 'PRIORITY', 'SYSTEM_GENERATED', 'LAST_ATTEMPT_TIME', 'LAST_ERROR',
  'FIRST_FAILURE_TIME', 'NEXT_ATTEMPT_TIME', 'WORK_ITEM', 'WORK_ITEM_TYPE', 'ATTEMPT_COUNT', 'STATUS', 'ATTACHMENT_COUNT'];
const MANDATORY = ['TO', 'SUBJECT'];
const DEFAULT_COLUMNS = ['TO', 'SUBJECT', 'CONNECTOR', 'LAST_ATTEMPT_TIME', 'LAST_ERROR', 'NEXT_ATTEMPT_TIME', 'ATTEMPT_COUNT', 'STATUS'];
const OPEN = ['SCHEDULED', 'QUEUED', 'SENDING', 'PENDING_RETRY', 'CONNECTOR_DISABLED', 'FAILED'];
const FINAL = ['SENT', 'CANCELLED'];
const ORDERS = ['EMAIL_ORDER_UNSPECIFIED', 'EMAIL_ORDER_SUBMIT_TIME_DESC', 'EMAIL_ORDER_LAST_ATTEMPT_TIME_DESC'];
const PAGE_SIZES = [10, 25, 50, 100, 200];
const short = (s) => (s || '').replace(/^(EMAIL_STATUS_|COLUMN_)/, '');

const state = {
  session: null, access: null, settings: null, views: [], view: null,
  columns: DEFAULT_COLUMNS, pageSize: 50, rows: [], selected: new Set(), matching: false, matchCount: 0,
  pageTokens: [''], page: 0, nextToken: '', connectors: [], workItem: '', watchAbort: null, watchKey: null,
  // latest: the newest version of each email the live stream of the current view and filter has
  // shown (left: the change took it out of the filter), so that a list answer older than a live
  // change does not put the older state back.
  latest: new Map(),
};

// ---- actions: each takes a selection, and shows what the API says it did ----

const actions = {
  Retry: (sel) => call('POST', '/v1/outbox/emails:retry', { selection: sel }),
  Cancel: (sel) => call('POST', '/v1/outbox/emails:cancel', { selection: sel }),
  SendNow: (sel) => call('POST', '/v1/outbox/emails:sendNow', { selection: sel }),
  Reschedule: (sel, sendAt) => call('POST', '/v1/outbox/emails:reschedule', { selection: sel, sendAt }),
};

function resultView(action, res) {
  const r = res.result || {};
  const subjectOf = (id) => state.rows.find((e) => e.emailId === id)?.subject || id;
  const failures = r.failures || [];
  return h('div', {},
    h('p', {}, t('result', { action: t('act.' + action), succeeded: r.succeeded || 0, matched: r.matched || 0 })),
    failures.length ? [h('p', {}, t('result.failures', { n: failures.length })),
      h('ul', { class: 'failures' }, failures.map((f) => h('li', {}, h('strong', {}, subjectOf(f.emailId)), ': ', f.message)))] : []);
}

function showError(where, err) {
  where.replaceChildren(h('p', { class: 'error' }, t('error', { msg: err instanceof ApiError ? err.message : String(err) })));
}

// ---- the filter and the list ----

function filter() {
  const f = {};
  const st = $('f-status').value;
  if (st) f.statuses = [st];
  if ($('f-connector').value) f.connectorId = $('f-connector').value;
  const text = $('f-text').value.trim();
  if (text) f.text = text;
  if (state.workItem) f.workItem = { id: state.workItem };
  return f;
}

function filterQuery(f) {
  return {
    'filter.statuses': (f.statuses || []).map((s) => 'EMAIL_STATUS_' + s),
    'filter.connector_id': f.connectorId, 'filter.text': f.text, 'filter.work_item.id': f.workItem?.id,
  };
}

function apiFilter(f) {
  return { ...f, statuses: (f.statuses || []).map((s) => 'EMAIL_STATUS_' + s) };
}

let listSeq = 0;
/**
 * loadList shows the page of the view and filter. Only the newest load renders: an answer for an
 * older filter or page that arrives late is dropped. The grid is aria-busy until the newest
 * load has rendered (screen readers wait for it, and so can a test before it acts on a row).
 */
async function loadList() {
  const seq = ++listSeq;
  $('grid').setAttribute('aria-busy', 'true');
  const order = $('f-order').value;
  const q = query({
    view: state.view, ...filterQuery(filter()), order: order === 'EMAIL_ORDER_UNSPECIFIED' ? '' : order,
    page_size: state.pageSize, page_token: state.pageTokens[state.page],
  });
  try {
    const res = await call('GET', '/v1/outbox/emails' + q);
    if (seq !== listSeq) return;
    // A live change newer than the list's answer wins: it replaces the listed state, or takes
    // the row out when it left the filter.
    state.rows = (res.emails || []).map((e) => {
      const l = state.latest.get(e.emailId);
      return l && Number(l.e.version) > Number(e.version) ? l : { e };
    }).filter((l) => !l.left).map((l) => l.e);
    state.nextToken = res.nextPageToken || '';
    // The selection is of rows on the page: one that left it (sent, cancelled, another page) is
    // no longer selected, so a bulk action never reaches mail the user cannot see.
    const shown = new Set(state.rows.map((e) => e.emailId));
    for (const id of state.selected) if (!shown.has(id)) state.selected.delete(id);
    renderGrid();
  } catch (err) {
    if (seq !== listSeq) return;
    showError($('bulk-result'), err);
  }
  if (!reloadTimer) $('grid').removeAttribute('aria-busy'); // unless another reload is coming
  updateSelection();
}

async function loadCount() {
  try {
    const res = await call('GET', '/v1/outbox/emails:count' + query({ view: state.view }));
    $('nav-count').textContent = res.total ?? '0';
    $('nav-count').setAttribute('aria-label', t('nav.count', { n: res.total ?? 0, view: t('view.' + state.view) }));
  } catch { /* the badge keeps its last value */ }
  if (state.matching) await countMatching();
}

async function countMatching() {
  try {
    const res = await call('GET', '/v1/outbox/emails:count' + query({ view: state.view, ...filterQuery(filter()) }));
    state.matchCount = Number(res.total || 0);
  } catch {
    // Not countable (FILTER_TOO_BROAD: a connector or text filter over more mail than the
    // scan bound); the action itself still reaches every match, in batches.
    state.matchCount = null;
  }
  updateSelection();
}

let reloadTimer = 0;
/** reloadSoon gathers bursts of live events into one reload of the page and the count. */
function reloadSoon() {
  // Gathered, not postponed: a steady stream of changes (each sooner than 250 ms after the
  // last) must not keep the reload from ever happening.
  if (reloadTimer) return;
  $('grid').setAttribute('aria-busy', 'true'); // a reload is coming: busy from now on
  reloadTimer = setTimeout(() => { reloadTimer = 0; loadList(); loadCount(); }, 250);
}

// ---- the grid ----

function cell(col, e) {
  switch (col) {
    case 'TO': return (e.to || []).join(', ');
    case 'SUBJECT': return e.subject;
    case 'CONNECTOR': return e.connectorDisplayName || e.connectorId;
    case 'PRIORITY': return t('prio.' + (e.priority || 'PRIORITY_NORMAL'));
    case 'SYSTEM_GENERATED': return e.systemGenerated ? t('yes') : t('no');
    case 'LAST_ATTEMPT_TIME':
      if (!e.lastAttemptTime) return '';
      return h('span', {}, i18n.date(e.lastAttemptTime), h('br'),
        h('small', {}, e.lastAttemptManual ? t('attempt.manual', { who: e.lastAttemptByUserId }) : t('attempt.auto')));
    case 'LAST_ERROR': return e.lastError;
    case 'FIRST_FAILURE_TIME': return i18n.date(e.firstFailureTime);
    case 'NEXT_ATTEMPT_TIME': return i18n.date(e.nextAttemptTime);
    case 'WORK_ITEM':
      return e.workItem?.id ? h('a', { href: '#outbox', onclick: (ev) => { ev.preventDefault(); setWorkItem(e.workItem.id); } }, e.workItem.id) : '';
    case 'WORK_ITEM_TYPE': return e.workItem?.type ? t('wit.' + e.workItem.type) : '';
    case 'ATTEMPT_COUNT': {
      const s = e.maxAttempts ? t('attempts.of', { n: e.attemptsSinceRetry ?? e.attemptCount, max: e.maxAttempts }) : String(e.attemptCount || 0);
      return e.manualRetryCount ? `${s} (${t('attempts.manual', { n: e.manualRetryCount })})` : s;
    }
    case 'STATUS': return statusView(e);
    case 'ATTACHMENT_COUNT': return String(e.attachmentCount || 0);
  }
  return '';
}

/** statusView is the status with its reason: who scheduled it and for when, the last error, ... */
function statusView(e) {
  const st = short(e.status);
  let reason = '';
  if (st === 'SCHEDULED') reason = t('reason.scheduled', { who: e.scheduledByUserId || e.senderUserId, when: i18n.date(e.sendAt) });
  else if (st === 'QUEUED' && e.nextAttemptTime) reason = t('reason.queued', { when: i18n.date(e.nextAttemptTime) });
  else if (st === 'CONNECTOR_DISABLED' || st === 'FAILED') reason = e.lastError;
  else if (st === 'PENDING_RETRY') reason = t('reason.retry', { when: i18n.date(e.nextAttemptTime) });
  if (e.mayHaveBeenSent) reason = (reason ? reason + '; ' : '') + t('reason.maysent');
  return h('span', { class: 'status status-' + st.toLowerCase(), 'data-status': st },
    h('strong', {}, t('status.' + st)), reason ? [' — ', h('span', { class: 'reason' }, reason)] : []);
}

function can(e) {
  const st = short(e.status);
  return {
    Retry: ['FAILED', 'PENDING_RETRY', 'CONNECTOR_DISABLED'].includes(st),
    Cancel: OPEN.includes(st) && st !== 'SENDING',
    SendNow: ['SCHEDULED', 'QUEUED', 'PENDING_RETRY'].includes(st),
    Reschedule: ['SCHEDULED', 'QUEUED'].includes(st),
  };
}

function row(e) {
  const id = e.emailId;
  const ok = can(e);
  const on = state.matching || state.selected.has(id);
  const tr = h('tr', { 'data-id': id, tabindex: '0', 'aria-selected': on ? 'true' : 'false',
    class: FINAL.includes(short(e.status)) ? 'final' : '' },
  h('td', { class: 'sel' }, h('input', { type: 'checkbox', checked: on, disabled: state.matching || finalFilter(),
    'aria-label': t('grid.select', { subject: e.subject }), onchange: (ev) => { toggle(id, ev.target.checked); } })),
  state.columns.map((c) => h('td', { 'data-col': c, 'data-label': t('col.' + c) }, cell(c, e))),
  h('td', { class: 'acts' }, Object.keys(actions).filter((a) => ok[a]).map((a) => h('button', {
    type: 'button', 'data-act': a, 'aria-label': t('act.for', { action: t('act.' + a), subject: e.subject }),
    onclick: () => rowAction(a, e),
  }, t('act.' + a)))));
  tr.addEventListener('dblclick', () => openDetail(id));
  tr.addEventListener('keydown', (ev) => {
    if (ev.target !== tr) return;
    if (ev.key === 'Enter') { ev.preventDefault(); openDetail(id); }
    if (ev.key === ' ') { ev.preventDefault(); if (!state.matching && !finalFilter()) toggle(id, !state.selected.has(id)); }
    if (ev.key === 'ArrowDown') { ev.preventDefault(); tr.nextElementSibling?.focus(); }
    if (ev.key === 'ArrowUp') { ev.preventDefault(); tr.previousElementSibling?.focus(); }
  });
  return tr;
}

/** focusKey remembers what has the focus inside the grid, so a re-render can give it back. */
function focusKey() {
  const a = document.activeElement;
  const tr = a?.closest?.('#grid-body tr');
  if (!tr) return null;
  return { id: tr.dataset.id, act: a.dataset?.act, sel: a.type === 'checkbox' };
}

function restoreFocus(k) {
  if (!k) return;
  const tr = $('grid-body').querySelector(`tr[data-id="${CSS.escape(k.id)}"]`);
  if (!tr) return;
  const el = k.act ? tr.querySelector(`[data-act="${k.act}"]`) : k.sel ? tr.querySelector('input') : tr;
  (el || tr).focus();
}

function renderGrid() {
  const fk = focusKey();
  $('grid-head').replaceChildren(
    h('th', { scope: 'col', class: 'sel' }, h('input', { type: 'checkbox', id: 'sel-page', 'aria-label': t('grid.selectpage'),
      checked: state.rows.length > 0 && (state.matching || state.rows.every((e) => state.selected.has(e.emailId))),
      disabled: state.matching || finalFilter(),
      onchange: (ev) => { for (const e of state.rows) toggle(e.emailId, ev.target.checked, true); renderGrid(); updateSelection(); } })),
    ...state.columns.map((c) => h('th', { scope: 'col', 'data-col': c }, t('col.' + c))),
    h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, t('actions'))));
  $('grid-body').replaceChildren(...state.rows.map(row));
  $('grid-empty').hidden = state.rows.length > 0;
  $('page-no').textContent = t('page.no', { n: state.page + 1 });
  $('page-prev').disabled = state.page === 0;
  $('page-next').disabled = !state.nextToken;
  restoreFocus(fk);
}

/**
 * applyLive puts a watched change into the grid without a reload: a row whose email still
 * matches the filter is replaced in place, one whose email left it (the outbox says so: sent,
 * cancelled, retried out of Failed) is taken out, and the selection and focus of the other rows
 * stay. Mail that enters the filter reloads the page of the grid: where it sorts is the
 * server's answer.
 */
function applyLive(e, left) {
  const prev = state.latest.get(e.emailId);
  if (prev && Number(prev.e.version) >= Number(e.version)) return;
  if (state.latest.size >= 10000) state.latest.clear();
  state.latest.set(e.emailId, { e, left });
  if ($('detail').open && e.emailId === detailId) openDetail(e.emailId, true);
  const i = state.rows.findIndex((r) => r.emailId === e.emailId);
  const fits = !left;
  if (i >= 0 && Number(e.version) > Number(state.rows[i].version)) {
    const old = $('grid-body').querySelector(`tr[data-id="${CSS.escape(e.emailId)}"]`);
    if (fits) {
      state.rows[i] = e;
      if (old) {
        const fk = focusKey();
        old.replaceWith(row(e));
        restoreFocus(fk);
      }
    } else {
      state.rows.splice(i, 1);
      if (old) {
        // The focus moves on to the next row (or the one before) rather than to the page.
        const had = old.contains(document.activeElement);
        const next = old.nextElementSibling || old.previousElementSibling;
        old.remove();
        if (had) (next || $('main')).focus();
      }
      if (state.selected.delete(e.emailId)) updateSelection();
      $('grid-empty').hidden = state.rows.length > 0;
    }
  } else if (i < 0 && fits) {
    reloadSoon();
    return;
  }
  if (!countTimer) countTimer = setTimeout(() => { countTimer = 0; loadCount(); }, 250);
}
let countTimer = 0;

function toggle(id, on, quiet) {
  if (on) state.selected.add(id); else state.selected.delete(id);
  const tr = $('grid-body').querySelector(`tr[data-id="${CSS.escape(id)}"]`);
  if (tr) {
    tr.setAttribute('aria-selected', on ? 'true' : 'false');
    tr.querySelector('input').checked = on;
  }
  if (!quiet) updateSelection();
}

/** finalFilter: the list shows Sent or Cancelled mail, to which no action applies. */
function finalFilter() {
  return (filter().statuses || []).some((s) => FINAL.includes(s));
}

/**
 * updateSelection shows what a bulk action would reach: the rows selected on the page, or,
 * with "all matching the filter", every email of the view that matches (counted by the API;
 * the rows are shown selected and cannot be picked one by one).
 */
function updateSelection() {
  const fin = finalFilter();
  $('sel-count').textContent = state.matching ? '' : t('bulk.selected', { n: state.selected.size });
  $('sel-matching-label').textContent = t('bulk.matching', { n: state.matching ? (state.matchCount ?? '') : '' }).replace('  ', ' ');
  $('sel-matching').disabled = fin;
  for (const a of BULK) {
    const b = $('bulk-' + a.toLowerCase());
    b.disabled = fin;
    b.textContent = t('bulk.' + a.toLowerCase() + (state.matching ? 'all' : ''));
  }
  $('bulk-final').textContent = fin ? t('bulk.final') : '';
  for (const tr of $('grid-body').rows) {
    const on = state.matching || state.selected.has(tr.dataset.id);
    tr.setAttribute('aria-selected', on ? 'true' : 'false');
    const box = tr.querySelector('td.sel input');
    box.checked = on;
    box.disabled = state.matching || fin;
  }
  const page = $('sel-page');
  if (page) {
    page.checked = state.rows.length > 0 && (state.matching || state.rows.every((e) => state.selected.has(e.emailId)));
    page.disabled = state.matching || fin;
  }
}

// ---- actions on rows and selections ----

async function rowAction(action, e) {
  if (action === 'Reschedule') return openReschedule({ emailIds: [e.emailId] }, false);
  try {
    const res = await actions[action]({ emailIds: [e.emailId] });
    $('bulk-result').replaceChildren(resultView(action, res));
  } catch (err) { showError($('bulk-result'), err); }
  reloadSoon();
}

/**
 * confirmMatching asks before an action reaches every email matching the filter: more than the
 * page shows, and a cancellation cannot be undone. It names the count and the filter; the
 * focus starts on "Back".
 */
function confirmMatching(action) {
  const f = filter();
  const n = state.matchCount;
  const any = n === null ? '.any' : '';
  $('confirm-title').textContent = t('confirm.' + action + any, { n });
  $('confirm-text').textContent = t('confirm.' + action + '.text');
  const conn = state.connectors.find((c) => c.connectorId === f.connectorId);
  $('confirm-scope').textContent = [
    t('confirm.scope', { view: t('view.' + state.view), status: f.statuses?.length ? t('status.' + f.statuses[0]) : t('filter.allopen'),
      connector: f.connectorId ? (conn?.displayName || f.connectorId) : t('filter.allconnectors') }),
    f.text ? t('confirm.text', { text: f.text }) : '', f.workItem?.id ? t('confirm.workitem', { id: f.workItem.id }) : '',
  ].filter(Boolean).join(' ');
  $('confirm-yes').textContent = t('confirm.yes.' + action + any, { n });
  const dlg = $('confirm');
  dlg.returnValue = '';
  dlg.showModal();
  $('confirm-no').focus();
  return new Promise((resolve) => dlg.addEventListener('close', () => resolve(dlg.returnValue === 'yes'), { once: true }));
}

/** BULK are the actions of the bulk bar, each on the selection or on all matching the filter. */
const BULK = ['Retry', 'Cancel', 'SendNow', 'Reschedule'];

async function bulk(action) {
  let sel;
  if (state.matching) {
    await countMatching();
    if (!(await confirmMatching(action))) { $('bulk-' + action.toLowerCase()).focus(); return; }
    sel = { view: state.view, filter: apiFilter(filter()) };
  } else if (state.selected.size) sel = { emailIds: [...state.selected] };
  else { $('bulk-result').textContent = t('bulk.none'); return; }
  // Reschedule asks for the time first; the selection is cleared once it is done.
  if (action === 'Reschedule') return openReschedule(sel, true);
  try {
    const res = await actions[action](sel);
    $('bulk-result').replaceChildren(resultView(action, res));
  } catch (err) { showError($('bulk-result'), err); }
  bulkDone();
}

/** bulkDone clears the selection (and "all matching") after a bulk action and reloads. */
function bulkDone() {
  state.selected.clear();
  if (state.matching) { state.matching = false; $('sel-matching').checked = false; }
  updateSelection();
  reloadSoon();
}

// ---- the detail popup ----

let detailId = '';
let detailIndex = 0;
let detailVersion = 0;
/**
 * openDetail opens the read-only popup of an email. With refresh (a live change of the email
 * while its popup is open) it shows the email anew in place: status, attempts and the actions
 * that apply, leaving the focus where it is unless its button no longer applies.
 */
async function openDetail(id, refresh = false) {
  const dlg = $('detail');
  if (!refresh) {
    detailId = id;
    detailVersion = 0;
    detailIndex = Math.max(0, state.rows.findIndex((e) => e.emailId === id));
    $('detail-result').replaceChildren();
  }
  let e;
  try {
    e = (await call('GET', `/v1/outbox/emails/${encodeURIComponent(id)}?include_bodies=true`)).email;
  } catch (err) { if (!refresh) showError($('bulk-result'), err); return; }
  if (refresh && (!dlg.open || detailId !== id)) return;
  if (Number(e.version) < detailVersion) return; // an answer overtaken by a newer one
  detailVersion = Number(e.version);
  $('detail-title').textContent = e.subject;
  const field = (k, v) => (v === undefined || v === '' || (Array.isArray(v) && !v.length)) ? [] : [h('dt', {}, t(k)), h('dd', { 'data-field': k }, v)];
  $('detail-fields').replaceChildren(
    ...field('detail.from', e.fromAddress), ...field('detail.sender', e.senderUserId),
    ...field('detail.to', (e.to || []).join(', ')), ...field('detail.cc', (e.cc || []).join(', ')),
    // Bcc only as the API returns it: to the sender and admins.
    ...field('detail.bcc', (e.bcc || []).join(', ')),
    ...field('detail.subject', e.subject), ...field('detail.status', statusView(e)),
    ...field('detail.connector', e.connectorDisplayName || e.connectorId), ...field('detail.priority', t('prio.' + (e.priority || 'PRIORITY_NORMAL'))),
    ...field('detail.workitem', e.workItem?.id ? `${e.workItem.id} ${t('wit.' + e.workItem.type)}` : ''),
    ...field('detail.submitted', i18n.date(e.submitTime)), ...field('detail.messageid', e.messageId),
    ...field('detail.attachments', (e.attachments || []).map((a) => `${a.filename} (${a.sizeBytes} B)`).join(', ')));
  $('detail-body').textContent = (e.textBody || e.htmlBody || '').slice(0, 2000);
  $('detail-attempts').tBodies[0].replaceChildren(...(e.attempts || []).map((a) => h('tr', {},
    h('td', {}, String(a.number)), h('td', {}, i18n.date(a.startTime || a.endTime)), h('td', {}, t('outcome.' + a.outcome)),
    h('td', {}, a.smtpCode && !(a.message || '').startsWith(String(a.smtpCode)) ? `${a.smtpCode} ${a.message || ''}` : (a.message || '')), h('td', {}, a.manual ? t('attempt.manual', { who: a.triggeredByUserId }) : t('attempt.auto')))));
  const ok = can(e);
  $('detail-retry').hidden = !ok.Retry;
  $('detail-cancel').hidden = !ok.Cancel;
  $('detail-fields').dataset.version = String(e.version);
  if (refresh) {
    if (!dlg.contains(document.activeElement) || document.activeElement.hidden) $('detail-close').focus();
    return;
  }
  if (!dlg.open) dlg.showModal();
  $('detail-close').focus();
}

async function detailAction(action) {
  try {
    const res = await actions[action]({ emailIds: [detailId] });
    $('detail-result').replaceChildren(resultView(action, res));
  } catch (err) { showError($('detail-result'), err); }
  reloadSoon();
}

// ---- compose and undo ----

async function openCompose() {
  const from = $('c-from');
  if (!from.options.length) {
    try {
      const res = await call('GET', '/v1/users/me/mailboxes');
      for (const m of res.mailboxes || []) {
        const mb = m.mailbox || m;
        const rights = m.rights || [];
        if (mb.kind === 'MAILBOX_KIND_PERSONAL' || rights.some((r) => /SEND/.test(r))) from.append(h('option', { value: mb.address }, mb.address));
      }
    } catch (err) { showError($('compose-error'), err); }
  }
  $('compose-error').replaceChildren();
  $('compose').showModal();
}

const list = (s) => s.split(/[,;\s]+/).map((x) => x.trim()).filter(Boolean);

async function submitCompose(ev) {
  ev.preventDefault();
  const body = {
    fromAddress: $('c-from').value, to: list($('c-to').value), cc: list($('c-cc').value), bcc: list($('c-bcc').value),
    subject: $('c-subject').value, textBody: $('c-body').value, idempotencyKey: crypto.randomUUID(),
  };
  if ($('c-sendat').value) body.sendAt = new Date($('c-sendat').value).toISOString();
  try {
    const res = await call('POST', '/v1/outbox/emails', body);
    $('compose').close();
    $('compose-form').reset();
    const e = res.email;
    if (short(e.status) === 'QUEUED' && e.nextAttemptTime) openUndo(e);
    else if (short(e.status) === 'SCHEDULED') $('bulk-result').textContent = t('compose.scheduled', { when: i18n.date(e.sendAt) });
    reloadSoon();
  } catch (err) { showError($('compose-error'), err); }
}

let undoTimer = 0;
let undoId = '';
function openUndo(e) {
  undoId = e.emailId;
  $('undo-what').textContent = t('undo.what', { subject: e.subject, to: (e.to || []).join(', ') });
  const until = new Date(e.nextAttemptTime).getTime();
  const tick = () => {
    const n = Math.max(0, Math.ceil((until - Date.now()) / 1000));
    const left = n >= 60 ? `${Math.floor(n / 60)}:${String(n % 60).padStart(2, '0')} min` : `${n} s`;
    $('undo-text').textContent = t('undo.countdown', { n: left });
    // Screen readers hear the countdown every 5 s, not every second.
    if (n % 5 === 0 || n <= 3) $('undo-live').textContent = t('undo.countdown', { n: left });
    if (n === 0) { finishUndo(t('undo.sent')); }
  };
  $('undo-sendnow').disabled = $('undo-cancel').disabled = false;
  $('undo-live').textContent = '';
  tick();
  clearInterval(undoTimer);
  undoTimer = setInterval(tick, 250);
  $('undo').showModal();
  $('undo-cancel').focus();
}

function finishUndo(msg) {
  clearInterval(undoTimer);
  $('undo-text').textContent = msg;
  $('undo-live').textContent = msg;
  $('undo-sendnow').disabled = $('undo-cancel').disabled = true;
  $('undo-close').focus();
}

async function undoAction(action) {
  try {
    const res = await actions[action]({ emailIds: [undoId] });
    if ((res.result?.succeeded || 0) > 0) finishUndo(action === 'Cancel' ? t('undo.cancelled') : t('undo.sentnow'));
    else finishUndo(res.result?.failures?.[0]?.message || '');
  } catch (err) { finishUndo(t('error', { msg: err.message })); }
  reloadSoon();
}

// ---- reschedule ----

let rescheduleSel = null;
let rescheduleBulk = false;
/** openReschedule asks for the new send time of a selection (one row's, or the bulk bar's). */
function openReschedule(sel, isBulk) {
  rescheduleSel = sel;
  rescheduleBulk = isBulk;
  $('reschedule-error').replaceChildren();
  $('reschedule').showModal();
}

async function submitReschedule(ev) {
  ev.preventDefault();
  try {
    const res = await actions.Reschedule(rescheduleSel, new Date($('r-at').value).toISOString());
    $('reschedule').close();
    $('bulk-result').replaceChildren(resultView('Reschedule', res));
    if (rescheduleBulk) bulkDone(); else reloadSoon();
  } catch (err) { showError($('reschedule-error'), err); }
}

// ---- settings: view, page size, columns ----

async function saveSettings(patch) {
  try {
    const res = await call('PATCH', '/v1/outbox/users/me/settings', patch);
    state.settings = res.settings;
  } catch (err) { showError($('bulk-result'), err); }
}

function openColumns() {
  $('columns-list').replaceChildren(h('legend', { class: 'sr-only' }, t('columns.title')), ...ALL_COLUMNS.map((c) => h('label', {},
    h('input', { type: 'checkbox', name: 'col', value: c, checked: state.columns.includes(c), disabled: MANDATORY.includes(c) }), ' ', t('col.' + c))));
  $('columns-dialog').showModal();
}

async function saveColumns() {
  const chosen = [...$('columns-list').querySelectorAll('input:checked')].map((i) => i.value);
  state.columns = ALL_COLUMNS.filter((c) => MANDATORY.includes(c) || chosen.includes(c));
  renderGrid();
  await saveSettings({ visibleColumns: state.columns.map((c) => 'COLUMN_' + c) });
  $('bulk-result').textContent = t('columns.saved');
}

function renderViews() {
  $('views').replaceChildren(...state.views.map((v) => h('button', {
    type: 'button', 'aria-pressed': v === state.view ? 'true' : 'false', 'data-view': v, onclick: () => chooseView(v),
  }, t('view.' + v))));
}

async function chooseView(v) {
  if (v === state.view) return;
  state.view = v;
  renderViews();
  resetPaging();
  await saveSettings({ defaultView: v });
  refresh();
}

function resetPaging() {
  state.pageTokens = [''];
  state.page = 0;
  state.selected.clear();
  state.matching = false;
  $('sel-matching').checked = false;
}

function setWorkItem(id) {
  state.workItem = id;
  const el = $('f-workitem');
  el.hidden = !id;
  el.replaceChildren(id ? h('button', { type: 'button', onclick: () => setWorkItem('') }, t('filter.workitem', { id }), ' ✕') : '');
  resetPaging();
  refresh();
}

/** refresh reloads the list and the count, and watches the current view live. */
function refresh() {
  loadList();
  loadCount();
  startWatch();
}

/**
 * startWatch follows the changes of the view and filter until either changes (the outbox says
 * which changes take mail out of the filter). Each time the stream opens, the list and the
 * count are loaded again, since changes may have been missed before it did; then the grid is
 * marked data-live="on" (for screen readers' status line as much as for tests).
 */
async function startWatch() {
  const path = '/v1/outbox/emails:watch' + query({ view: state.view, ...filterQuery(filter()) });
  if (state.watchKey === path && state.watchAbort && !state.watchAbort.signal.aborted) return;
  state.watchAbort?.abort();
  const ac = new AbortController();
  state.watchAbort = ac;
  state.watchKey = path;
  state.latest.clear(); // what left the old filter says nothing of the new one
  delete $('grid').dataset.live;
  let backoff = 500;
  while (!ac.signal.aborted) {
    const onOpen = async () => {
      backoff = 500;
      $('live-status').textContent = '';
      await Promise.all([loadList(), loadCount()]);
      if (!ac.signal.aborted) $('grid').dataset.live = 'on';
    };
    try {
      await watch(path, (e, left) => { if (!ac.signal.aborted) applyLive(e, left); }, onOpen, ac.signal);
    } catch (err) {
      if (ac.signal.aborted) return;
      if (err instanceof ApiError && err.status === 401) return;
    }
    if (ac.signal.aborted) return;
    delete $('grid').dataset.live;
    $('live-status').textContent = t('live.lost');
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 15000);
  }
}

// ---- connectors (admin) and settings pages ----

const dur = (d) => (d || '').replace(/s$/, '') ? fmtDur(parseFloat(d)) : '';
function fmtDur(s) {
  if (s >= 3600 && s % 3600 === 0) return `${s / 3600}h`;
  if (s >= 60 && s % 60 === 0) return `${s / 60}m`;
  return `${s}s`;
}

async function loadConnectors() {
  // Busy until the fresh list is shown: screen readers wait, and so can a test, instead of
  // acting on the rows the list is about to replace.
  $('connectors').setAttribute('aria-busy', 'true');
  try {
    const res = await call('GET', '/v1/outbox/connectors?page_size=500');
    state.connectors = res.connectors || [];
  } catch { state.connectors = []; }
  await renderConnectors();
  if (!$('page-connectors').hidden) $('connectors').removeAttribute('aria-busy');
}

/** renderConnectors shows the connectors loaded last (again after a language switch). */
async function renderConnectors() {
  const sel = $('f-connector');
  const cur = sel.value;
  sel.replaceChildren(h('option', { value: '' }, t('filter.allconnectors')),
    ...state.connectors.map((c) => h('option', { value: c.connectorId }, c.displayName || c.connectorId)));
  sel.value = cur;
  const body = $('connectors').tBodies[0];
  body.replaceChildren(...state.connectors.map((c) => {
    const enabled = c.enabled !== false;
    return h('tr', { 'data-id': c.connectorId },
      h('td', {}, h('strong', {}, c.displayName || c.connectorId), h('br'), h('small', {}, c.connectorId)),
      h('td', { 'data-label': t('connectors.relay') }, `${c.host}:${c.port}`),
      h('td', { 'data-label': t('connectors.pattern') }, (c.retryPattern || []).map(dur).join(', ')),
      h('td', { 'data-label': t('connectors.attempts') }, String(c.maxAttempts || '')),
      h('td', { 'data-state': enabled ? 'enabled' : 'disabled', 'data-label': t('connectors.state') },
        enabled ? t('connectors.enabled') : t('connectors.disabled'), h('span', { class: 'held' })),
      h('td', {}, h('button', { type: 'button', onclick: () => toggleConnector(c, !enabled) }, enabled ? t('connectors.disable') : t('connectors.enable'))));
  }));
  await Promise.all(state.connectors.filter((c) => c.enabled === false).map(showHeld));
}

/**
 * showHeld says how much mail a disabled connector holds (CONNECTOR_DISABLED, in the whole
 * tenant), with a link to it in the outbox. Left out when the API cannot count it (a filter
 * beyond the scan bound).
 */
async function showHeld(c) {
  let n;
  try {
    n = Number((await call('GET', '/v1/outbox/emails:count' + query({ view: 'VIEW_ALL', 'filter.connector_id': c.connectorId,
      'filter.statuses': 'EMAIL_STATUS_CONNECTOR_DISABLED' }))).total || 0);
  } catch { return; }
  const cell = $('connectors').querySelector(`tr[data-id="${CSS.escape(c.connectorId)}"] .held`);
  if (!cell) return;
  const name = c.displayName || c.connectorId;
  cell.replaceChildren(' — ', n ? h('a', { href: '#outbox', 'data-held': String(n), 'aria-label': t('connectors.show', { name }) + ': ' + t('connectors.held', { n }),
    onclick: () => showHeldMail(c.connectorId) }, t('connectors.held', { n })) : h('span', { 'data-held': '0' }, t('connectors.held', { n })));
}

/** showHeldMail lists a connector's held mail in the outbox (view ALL, the connector, Connector disabled). */
function showHeldMail(connectorId) {
  $('f-status').value = 'CONNECTOR_DISABLED';
  $('f-connector').value = connectorId;
  if (state.views.includes('VIEW_ALL')) state.view = 'VIEW_ALL';
  renderViews();
  resetPaging();
  refresh();
}

async function toggleConnector(c, enable) {
  const name = c.displayName || c.connectorId;
  try {
    const res = await call('POST', `/v1/outbox/connectors/${encodeURIComponent(c.connectorId)}:${enable ? 'enable' : 'disable'}`, {});
    $('connectors-result').textContent = enable ? t('connectors.requeued', { name, n: res.requeued || 0 }) : t('connectors.nowdisabled', { name });
  } catch (err) { showError($('connectors-result'), err); }
  loadConnectors();
}

/**
 * loadSettingsForm shows the settings as saved now (another tab or the API may have changed
 * them); the form is aria-busy until they are in it.
 */
async function loadSettingsForm() {
  const form = $('settings-form');
  form.setAttribute('aria-busy', 'true');
  try {
    state.settings = (await call('GET', '/v1/outbox/users/me/settings')).settings;
  } catch { /* the settings of the page's start */ }
  fillSettingsForm();
  form.removeAttribute('aria-busy');
}

function fillSettingsForm() {
  const s = state.settings || {};
  $('s-undo').value = parseFloat(s.undoDelay || '0') || 0;
  $('s-pagesize').value = s.pageSize || 50;
}

async function submitSettings(ev) {
  ev.preventDefault();
  await saveSettings({ undoDelay: `${Number($('s-undo').value)}s`, pageSize: Number($('s-pagesize').value) });
  // The outbox follows at once: its rows-per-page choice and its page.
  if (state.settings?.pageSize && state.settings.pageSize !== state.pageSize) {
    state.pageSize = state.settings.pageSize;
    fillSelects();
    resetPaging();
    loadList();
  }
  $('settings-result').textContent = t('settings.saved');
}

// ---- pages and language ----

/**
 * route shows the page the hash names. A page chosen by the user (focus) gets the focus on its
 * heading, so screen readers announce it and the view starts at its top (#connectors would
 * otherwise scroll to the table of that id, past the page's heading and help).
 */
function route(focus) {
  const page = (location.hash || '#outbox').slice(1);
  for (const p of ['outbox', 'connectors', 'settings']) {
    $('page-' + p).hidden = p !== page;
    $('nav-' + p).toggleAttribute('aria-current', p === page);
    if (p === page) $('nav-' + p).setAttribute('aria-current', 'page');
  }
  // A hidden connectors table goes stale: busy until the next visit has shown a fresh list.
  if (page !== 'connectors') $('connectors').setAttribute('aria-busy', 'true');
  if (page === 'connectors') loadConnectors();
  if (page === 'settings') loadSettingsForm();
  if (focus === true) {
    $(page + '-title')?.focus();
    window.scrollTo(0, 0);
  }
}

function fillSelects() {
  const st = $('f-status');
  const cur = st.value;
  st.replaceChildren(h('option', { value: '' }, t('filter.allopen')), ...[...OPEN, ...FINAL].map((s) => h('option', { value: s }, t('status.' + s))));
  st.value = cur;
  const o = $('f-order');
  const curO = o.value || ORDERS[0];
  o.replaceChildren(...ORDERS.map((x) => h('option', { value: x }, t('order.' + x))));
  o.value = curO;
  const ps = $('f-pagesize');
  const sizes = [...new Set([...PAGE_SIZES, state.pageSize])].sort((a, b) => a - b);
  ps.replaceChildren(...sizes.map((n) => h('option', { value: String(n) }, String(n))));
  ps.value = String(state.pageSize);
}

function applyLanguage() {
  i18n.apply(document);
  renderConnectors();
  $('lang').value = i18n.lang;
  $('tz').textContent = t('tz', { tz: Intl.DateTimeFormat().resolvedOptions().timeZone });
  fillSelects();
  renderViews();
  renderGrid();
  updateSelection();
  loadCount();
}

/** allowedViews are the views the user may see: MY TEAM only with a team, SYSTEM with access to some. */
function allowedViews(session, access) {
  const v = ['VIEW_MINE'];
  if ((access.teamIds || []).length) v.push('VIEW_TEAM');
  if (session.admin || (access.readableMailboxIds || []).length) v.push('VIEW_SYSTEM');
  v.push('VIEW_ALL');
  return v;
}

async function main() {
  let r;
  try {
    r = await fetch('session', { headers: { 'X-Postamt-Console': '1' }, credentials: 'same-origin' });
  } catch { r = { ok: false }; }
  if (!r.ok) { location.assign('signin.html'); return; }
  state.session = await r.json();
  $('who').textContent = `${state.session.user} (${state.session.tenant})`;
  $('nav-connectors').hidden = !state.session.admin;
  try {
    [state.access, state.settings] = await Promise.all([
      call('GET', '/v1/users/me/readAccess'), call('GET', '/v1/outbox/users/me/settings').then((x) => x.settings)]);
  } catch (err) {
    state.access = state.access || {};
    state.settings = state.settings || {};
    showError($('bulk-result'), err);
  }
  state.views = allowedViews(state.session, state.access);
  const saved = state.settings.defaultView;
  // First sign-in: a team lead starts in MY TEAM, a member in MY EMAILS (seed 003).
  const first = (state.access.leadTeamIds || []).length ? 'VIEW_TEAM' : 'VIEW_MINE';
  state.view = state.views.includes(saved) ? saved : (state.views.includes(first) ? first : 'VIEW_MINE');
  state.pageSize = state.settings.pageSize || 50;
  const cols = (state.settings.visibleColumns || []).map(short).filter((c) => ALL_COLUMNS.includes(c));
  state.columns = cols.length ? ALL_COLUMNS.filter((c) => MANDATORY.includes(c) || cols.includes(c)) : DEFAULT_COLUMNS;

  $('lang').addEventListener('change', () => { i18n.set($('lang').value); applyLanguage(); });
  $('filters').addEventListener('submit', (ev) => ev.preventDefault());
  for (const id of ['f-status', 'f-connector', 'f-order']) $(id).addEventListener('change', () => { resetPaging(); refresh(); });
  let textTimer = 0;
  $('f-text').addEventListener('input', () => { clearTimeout(textTimer); textTimer = setTimeout(() => { resetPaging(); refresh(); }, 300); });
  $('f-pagesize').addEventListener('change', async () => {
    state.pageSize = Number($('f-pagesize').value);
    resetPaging();
    await saveSettings({ pageSize: state.pageSize });
    loadList();
  });
  $('btn-columns').addEventListener('click', openColumns);
  $('columns-dialog').addEventListener('close', () => { if ($('columns-dialog').returnValue === 'save') saveColumns(); $('btn-columns').focus(); });
  $('btn-compose').addEventListener('click', openCompose);
  $('compose-form').addEventListener('submit', submitCompose);
  $('compose-close').addEventListener('click', () => $('compose').close());
  $('undo-sendnow').addEventListener('click', () => undoAction('SendNow'));
  $('undo-cancel').addEventListener('click', () => undoAction('Cancel'));
  $('undo-close').addEventListener('click', () => $('undo').close());
  $('undo').addEventListener('close', () => clearInterval(undoTimer));
  $('reschedule-form').addEventListener('submit', submitReschedule);
  $('reschedule-close').addEventListener('click', () => $('reschedule').close());
  $('detail-retry').addEventListener('click', () => detailAction('Retry'));
  $('detail-cancel').addEventListener('click', () => detailAction('Cancel'));
  $('detail-close').addEventListener('click', () => $('detail').close());
  $('detail').addEventListener('close', () => {
    // Back to the row; if it left the list meanwhile (sent after a retry), to the row now in
    // its place.
    const rows = $('grid-body').rows;
    const tr = $('grid-body').querySelector(`tr[data-id="${CSS.escape(detailId)}"]`) || rows[Math.min(detailIndex, rows.length - 1)];
    (tr || $('main')).focus();
  });
  for (const a of BULK) $('bulk-' + a.toLowerCase()).addEventListener('click', () => bulk(a));
  $('sel-matching').addEventListener('change', (ev) => {
    state.matching = ev.target.checked;
    if (state.matching) countMatching(); else updateSelection();
  });
  $('page-prev').addEventListener('click', () => { if (state.page > 0) { state.page--; loadList(); } });
  $('page-next').addEventListener('click', () => {
    if (!state.nextToken) return;
    state.pageTokens[state.page + 1] = state.nextToken;
    state.page++;
    loadList();
  });
  $('settings-form').addEventListener('submit', submitSettings);
  window.addEventListener('hashchange', () => route(true));

  applyLanguage();
  route();
  loadConnectors();
  refresh();
  document.body.dataset.ready = 'true';
}

main();
