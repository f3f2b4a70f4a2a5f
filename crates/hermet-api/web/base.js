// hermet web client, part 1 of 2 (app.js is the rest; index.html loads this one first):
// shared state, DOM and error helpers, the API call with read-your-writes, token storage.
// Plain DOM, no framework, no build step. The two are classic scripts sharing one global scope.
// API data only ever reaches the page through textContent / attributes, never as HTML.
'use strict';

const TOKEN_KEY = 'hermet.token';
const PAGE = 50; // messages per history page
const SESSION_ENDED = 'Your session has ended. Please sign in again.';
const API_TIMEOUT_MS = 30000; // a request still unanswered after this fails (and can be retried)
const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  me: null,
  lsn: null, // highest X-Hermet-Lsn of this tab's writes (text), sent back as X-Hermet-Min-Lsn
  convs: [],
  contacts: [],
  peerChannel: new Map(), // peer user id -> single chat id, kept when the chat is hidden
  open: null, // the open conversation: {id, type, name, avatar, pinned, muted}
  gen: 0, // bumps on every open/close, so late answers for an earlier pane are dropped
  low: 0, // lowest and highest seq shown in the open pane (0: none)
  high: 0,
  readSent: 0, // highest seq marked read for the open pane
  loading: null, // the open pane's first page, which a catch-up waits for
  sendQueue: Promise.resolve(), // sends go out one at a time, in the order typed
};

// ---------- small helpers ----------

/** Builds an element: h('li', {class: 'x', text: 'y', 'data-a': 1}, child...). */
function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'hidden') el.hidden = v;
    else el.setAttribute(k, v);
  }
  el.append(...kids);
  return el;
}

const pad2 = (n) => String(n).padStart(2, '0');
const hhmm = (d) => pad2(d.getHours()) + ':' + pad2(d.getMinutes());

/** List time: HH:MM today, a short date otherwise. */
function shortTime(ms) {
  const d = new Date(ms);
  if (d.toDateString() === new Date().toDateString()) return hhmm(d);
  return d.toLocaleDateString(undefined, { day: 'numeric', month: 'short' });
}

function initials(name) {
  const words = String(name || '').trim().split(/\s+/).filter(Boolean).slice(0, 2);
  const first = (w) => (w.match(/[\p{L}\p{N}]/u) || [''])[0]; // skip "(", emoji and the like
  return words.map(first).join('').toUpperCase() || '?';
}

/** A stable colour class per name, so initials avatars are told apart at a glance. */
function hue(name) {
  let n = 0;
  for (const ch of String(name)) n = (n * 31 + ch.codePointAt(0)) >>> 0;
  return 'av' + (n % 6);
}

/** Fills an avatar slot: the image when a URL is set (initials if it fails to load), else initials. */
function setAvatar(slot, url, name) {
  const key = (url || '') + '\n' + name;
  if (slot.dataset.key === key) return; // unchanged: keep the loaded image
  slot.dataset.key = key;
  slot.className = 'avatar ' + hue(name);
  const text = () => h('span', { 'aria-hidden': 'true', text: initials(name) });
  if (!url) return slot.replaceChildren(text());
  // Decorative: the name is always shown next to it.
  const img = h('img', { src: url, alt: '', width: 36, height: 36, loading: 'lazy', referrerpolicy: 'no-referrer' });
  img.addEventListener('error', () => slot.replaceChildren(text()), { once: true });
  slot.replaceChildren(img);
}

/** A numeric user id typed by hand. */
function parseId(text) {
  const t = String(text).trim();
  if (!/^\d+$/.test(t) || Number(t) < 1) {
    throw new Problem(t ? `“${t}” is not a user id: use digits only, like 42.` : 'Enter a user id (digits only).');
  }
  // Larger ids would silently lose digits as JavaScript numbers.
  if (Number(t) > Number.MAX_SAFE_INTEGER) throw new Problem(`“${t}” is too large to be a user id.`);
  return Number(t);
}

/** Comma/space separated user ids; empty gives []. */
function parseIds(text) {
  return String(text).split(/[\s,]+/).filter(Boolean).map(parseId);
}

// ---------- errors ----------

/** An error whose message is meant for people (the server's, or a client-side check). */
class Problem extends Error {
  constructor(message, status = 0, code = 'client') {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Shows an error in its alert element (an empty one takes no space). */
function report(err, el) {
  if (err && err.handled) return; // the session ended: the sign-in view already says so
  if (!(err instanceof Problem)) console.error(err);
  const msg = err instanceof Problem ? err.message : 'Something went wrong: ' + ((err && err.message) || err);
  (el || fallbackErrorEl()).textContent = msg;
}

const fallbackErrorEl = () => ($('app').hidden ? $('signin-error') : $('app-error'));

/** Runs a background promise; a failure is shown, never thrown. */
function bg(promise, el) {
  promise.catch((err) => report(err, el));
}

/** Wires a form: no reload, errors shown in errEl, the submit button idle while it runs. */
function onSubmit(form, errEl, fn) {
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const btn = form.querySelector('[type=submit]');
    errEl.textContent = '';
    if (btn) btn.disabled = true;
    try {
      await fn(form);
    } catch (err) {
      report(err, errEl);
    } finally {
      if (btn) btn.disabled = false;
    }
  });
}

/** Wires a button the same way. */
function onClick(btn, errEl, fn) {
  btn.addEventListener('click', async (ev) => {
    errEl.textContent = '';
    try {
      await fn(ev);
    } catch (err) {
      report(err, errEl);
    }
  });
}

// ---------- API ----------

/** "hi/lo" hex LSN -> [hi, lo] numbers (each fits in 32 bits), or null. */
function parseLsn(s) {
  const m = /^([0-9a-f]{1,8})\/([0-9a-f]{1,8})$/i.exec(s || '');
  return m ? [parseInt(m[1], 16), parseInt(m[2], 16)] : null;
}

/** Remembers the highest LSN of our writes, so later reads can ask to see them. */
function noteLsn(s) {
  const n = parseLsn(s);
  if (!n) return;
  const o = parseLsn(state.lsn);
  if (!o || n[0] > o[0] || (n[0] === o[0] && n[1] > o[1])) state.lsn = s;
}

/**
 * One API call. Answers the parsed JSON body ({} when none); throws a Problem with the server's
 * error.message otherwise. A 401 ends the session (unless opts.keepSession, for checking a token).
 */
async function api(method, path, body, opts = {}) {
  const token = opts.token || state.token;
  const headers = {};
  if (token) headers.Authorization = 'Bearer ' + token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method === 'GET' && state.lsn) headers['X-Hermet-Min-Lsn'] = state.lsn;
  let res;
  let text;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      // A stalled request must not hold up the (coalesced) re-reads queued behind it.
      signal: timeoutSignal(API_TIMEOUT_MS),
    });
    text = await res.text();
  } catch (err) {
    if (err && (err.name === 'TimeoutError' || err.name === 'AbortError')) {
      throw new Problem('The server took too long to answer. Try again in a moment.', 0, 'timeout');
    }
    throw new Problem('Cannot reach the server. Check your connection and try again.', 0, 'network');
  }
  if (token === state.token) noteLsn(res.headers.get('X-Hermet-Lsn'));
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null; // not JSON (a proxy's error page): the status text below still says what happened
  }
  // The read model did not catch up in time: show this answer, and read again a little later.
  if (res.headers.get('X-Hermet-Stale') === 'true') recheck.stale();
  if (res.ok) return data || {};
  const e = (data && data.error) || {};
  const err = new Problem(e.message || `The server answered ${res.status} ${res.statusText}.`, res.status, e.code);
  if (res.status === 401 && !opts.keepSession && token && token === state.token) {
    endSession(SESSION_ENDED);
    err.handled = true;
  }
  throw err;
}

/** An AbortSignal that fires after ms (AbortSignal.timeout where the browser has it). */
function timeoutSignal(ms) {
  if (typeof AbortSignal !== 'undefined' && typeof AbortSignal.timeout === 'function') return AbortSignal.timeout(ms);
  if (typeof AbortController === 'undefined') return undefined;
  const c = new AbortController();
  setTimeout(() => c.abort(), ms);
  return c.signal;
}

/**
 * Wraps fn so overlapping calls coalesce: one run in flight, at most one queued after it.
 * A failed run does not drop the queued one; the caller sees only the last run's error.
 */
function coalesce(fn) {
  let running = null;
  let again = false;
  return function run() {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      try {
        let error = null;
        do {
          again = false;
          error = null;
          try {
            await fn();
          } catch (err) {
            error = err || new Error('failed');
          }
        } while (again);
        if (error) throw error;
      } finally {
        running = null;
      }
    })();
    return running;
  };
}

// ---------- token storage ----------

function storeGet() {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null; // storage disabled: the session lasts as long as the tab
  }
}

function storeSet(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage disabled: nothing to keep */
  }
}
