// hermet web client, part 2 of 2 (base.js, loaded first, has the state, helpers and api()):
// the session, the lists, the open conversation, live updates and the wiring of the page.
// The ids/classes/data attributes used here are the DOM contract the browser tests rely on.
// API data only ever reaches the page through textContent / attributes, never as HTML.
'use strict';

// ---------- session ----------

/**
 * Shows the app signed in with token. keep: store it for the next visit (a sign-in or sign-up);
 * a boot passes false, since the token came from storage and writing it back could undo
 * another tab's newer sign-in that happened while this tab was still loading.
 */
function enter(token, me, keep = true) {
  state.token = token; // state.lsn carries over: a sign-up's own write counts
  if (keep) storeSet(token);
  renderMe(me);
  $('signin').hidden = true;
  $('app').hidden = false;
  $('signin-error').textContent = '';
  ws.start(); // its first open re-reads only if this read was done before it (see ws.connect)
  const initial = (ws.initialRead = refreshAll());
  ws.initialDone = false;
  initial.then(
    () => ws.initialRead === initial && (ws.initialDone = true),
    () => ws.initialRead === initial && (ws.initialDone = true),
  );
  bg(initial);
}

/** Back to the sign-in view, with a reason (empty for a plain sign-out); token: the session's. */
function endSession(message, token = state.token) {
  ws.stop();
  recheck.reset();
  // Only this session's token: another tab may have signed in since, and keeps its own.
  if (token && storeGet() === token) storeSet(null);
  closeConv();
  // Sends still queued were typed by this user: they must not go out as the next one.
  Object.assign(state, { token: null, me: null, lsn: null, convs: [], contacts: [], sendQueue: Promise.resolve() });
  state.peerChannel.clear();
  // Nothing of this user stays in the page for the next one.
  $('conversations').replaceChildren();
  $('contacts').replaceChildren();
  $('messages').replaceChildren();
  $('announce').textContent = '';
  $('conv-title').textContent = '';
  for (const id of ['me-id', 'me-nickname']) $(id).textContent = '';
  for (const id of ['me-avatar', 'conv-avatar']) {
    $(id).replaceChildren();
    delete $(id).dataset.key;
  }
  for (const el of $('app').querySelectorAll('input, textarea')) el.value = '';
  $('send-input').style.height = '';
  for (const el of document.querySelectorAll('#app .error, #app .ok')) el.textContent = '';
  document.title = 'hermet';
  $('app').hidden = true;
  $('signin').hidden = false;
  $('signin-error').textContent = message || '';
  $('signup-nickname').focus({ preventScroll: true });
}

function renderMe(me) {
  state.me = me;
  $('me-id').textContent = String(me.id);
  $('me-nickname').textContent = me.nickname;
  setAvatar($('me-avatar'), me.avatar, me.nickname);
  $('profile-nickname').value = me.nickname;
  $('profile-avatar').value = me.avatar || '';
}

// ---------- lists ----------

const refreshConvs = coalesce(async () => {
  const token = state.token;
  if (!token) return; // a re-read queued just before signing out
  const all = [];
  let cursor = null;
  let pages = 0;
  for (let page = 0; page < 1000; page++) {
    pages++;
    const q = 'limit=100' + (cursor != null ? '&cursor=' + encodeURIComponent(cursor) : '');
    const r = await api('GET', '/v1/conversations?' + q);
    all.push(...(r.conversations || []));
    cursor = r.next_cursor;
    // The first read after signing in draws the first page at once (it is the top of the
    // list); later reads replace the list whole, so it never shows a mix of two reads.
    if (page === 0 && cursor != null && state.convs.length === 0 && state.token === token) {
      state.convs = all.slice();
      renderConvs();
    }
    if (cursor == null) break;
  }
  if (state.token !== token) return; // signed out (or in as someone else) meanwhile
  // The list can change order between two pages: one that moved up shows twice (keep the first).
  const seen = new Set();
  state.convs = all.filter((c) => !seen.has(c.channel_id) && seen.add(c.channel_id));
  for (const c of state.convs) if (c.type === 'single' && c.peer_user_id != null) state.peerChannel.set(c.peer_user_id, c.channel_id);
  renderConvs();
  syncOpenPane(pages);
  recheck.afterRead();
});

const refreshContacts = coalesce(async () => {
  const token = state.token;
  if (!token) return;
  const r = await api('GET', '/v1/contacts');
  if (state.token !== token) return;
  state.contacts = r.contacts || [];
  renderContacts();
});

/** Re-reads both lists; a success clears an earlier "could not load" banner. */
async function refreshAll() {
  await Promise.all([refreshConvs(), refreshContacts()]);
  $('app-error').textContent = '';
}

/**
 * Keeps list items in place (focus survives a re-read) and only moves what changed order.
 * Every child not claimed by an item (gone, or a duplicate key) is removed.
 */
function reconcile(ul, items, keyOf, make, fill) {
  const old = new Map();
  for (const li of ul.children) if (li.dataset.key != null && !old.has(li.dataset.key)) old.set(li.dataset.key, li);
  const keys = new Set(); // keys placed so far
  const claimed = new Set(); // elements placed so far
  let ref = ul.firstElementChild;
  for (const item of items) {
    const key = String(keyOf(item));
    if (keys.has(key)) continue; // the same key twice: the first one stands
    keys.add(key);
    let li = old.get(key);
    if (!li) {
      li = make();
      li.dataset.key = key;
    }
    claimed.add(li);
    fill(li, item);
    if (li === ref) ref = ref.nextElementSibling;
    else ul.insertBefore(li, ref);
  }
  for (const li of [...ul.children]) if (!claimed.has(li)) li.remove();
}

function convItem() {
  return h('li', { class: 'conversation' },
    h('button', { type: 'button', class: 'conv-open' },
      h('span', { class: 'avatar' }),
      h('span', { class: 'conv-body' },
        h('span', { class: 'conv-line' },
          h('span', { class: 'conv-name' }),
          h('span', { class: 'conv-pinned tag', text: 'Pinned', hidden: true }),
          h('span', { class: 'conv-muted tag', text: 'Muted', hidden: true }),
          h('span', { class: 'conv-time' })),
        h('span', { class: 'conv-line' },
          h('span', { class: 'conv-snippet' },
            h('span', { class: 'conv-sender' }),
            h('span', { class: 'conv-preview' })),
          h('span', { class: 'conv-unread', hidden: true }),
          h('span', { class: 'sr-only conv-unread-label', text: ' unread', hidden: true })))));
}

function convName(c) {
  return c.name || (c.type === 'group' ? 'Unnamed group' : 'User ' + c.peer_user_id);
}

/**
 * The unread count to show. The open conversation, on screen, with everything the list knows of
 * shown in the pane, counts as read even before the server has the read mark: no badge flicker.
 */
function unreadOf(c) {
  const lm = c.last_message;
  const o = state.open;
  if (o && o.id === c.channel_id && !document.hidden && lm && lm.seq <= state.high) return 0;
  return Number(c.unread_count) || 0;
}

function fillConv(li, c) {
  const q = (sel) => li.querySelector(sel);
  const unread = unreadOf(c);
  const lm = c.last_message;
  const name = convName(c);
  li.dataset.channelId = String(c.channel_id);
  li.dataset.type = c.type;
  li.dataset.unread = String(unread);
  li.dataset.pinned = String(!!c.pinned);
  li.dataset.muted = String(!!c.muted);
  li.classList.toggle('is-unread', unread > 0);
  li.classList.toggle('is-muted', !!c.muted);
  const current = !!state.open && state.open.id === c.channel_id;
  li.classList.toggle('is-open', current);
  const btn = q('.conv-open');
  if (current) btn.setAttribute('aria-current', 'true');
  else btn.removeAttribute('aria-current');
  setAvatar(q('.avatar'), c.avatar, name);
  q('.conv-name').textContent = name;
  q('.conv-pinned').hidden = !c.pinned;
  q('.conv-muted').hidden = !c.muted;
  q('.conv-time').textContent = lm ? shortTime(lm.created_at) : '';
  const mine = lm && state.me && lm.sender_id === state.me.id;
  q('.conv-sender').textContent = !lm ? '' : mine ? 'You: ' : c.type === 'group' ? lm.sender_name + ': ' : '';
  q('.conv-preview').textContent = lm ? lm.content : '';
  q('.conv-unread').textContent = String(unread);
  q('.conv-unread').hidden = unread === 0;
  q('.conv-unread-label').hidden = unread === 0;
}

let listMarked = false;

function renderConvs() {
  reconcile($('conversations'), state.convs, (c) => c.channel_id, convItem, fillConv);
  $('conversations-empty').hidden = state.convs.length > 0;
  const total = state.convs.reduce((n, c) => n + (c.muted ? 0 : unreadOf(c)), 0);
  document.title = total ? `(${total}) hermet` : 'hermet';
  // When the list was first on screen (painted, not just in the DOM): `hermet-bench web` reads
  // this mark.
  if (!listMarked && state.convs.length) {
    listMarked = true;
    requestAnimationFrame(() => setTimeout(() => performance.mark('hermet-list-rendered'), 0));
  }
}

function contactItem() {
  const li = h('li', { class: 'contact' },
    h('span', { class: 'avatar' }),
    h('div', { class: 'contact-body' },
      h('span', { class: 'contact-nickname' }),
      h('span', { class: 'contact-remark' })),
    h('div', { class: 'contact-actions' },
      h('button', { type: 'button', class: 'contact-chat', text: 'Chat' }),
      h('button', { type: 'button', class: 'contact-star', text: 'Star' }),
      h('button', { type: 'button', class: 'contact-remove danger', text: 'Remove' })));
  const input = h('input', { class: 'contact-remark-input', type: 'text', autocomplete: 'off' });
  const label = h('label', { class: 'remark-label' }, h('span', { text: 'Remark' }), input);
  li.append(h('form', { class: 'contact-remark-form row', novalidate: '' }, label,
    h('button', { type: 'submit', class: 'contact-remark-save', text: 'Save' })));
  return li;
}

function fillContact(li, c) {
  const q = (sel) => li.querySelector(sel);
  li.dataset.contactId = String(c.contact_id);
  li.dataset.starred = String(!!c.starred);
  setAvatar(q('.avatar'), c.avatar, c.nickname);
  q('.contact-nickname').textContent = c.nickname;
  q('.contact-remark').textContent = c.remark_name || '';
  q('.contact-chat').setAttribute('aria-label', 'Chat with ' + c.nickname);
  const star = q('.contact-star');
  star.setAttribute('aria-pressed', String(!!c.starred)); // the label stays, the state changes
  star.setAttribute('aria-label', 'Star ' + c.nickname);
  q('.contact-remove').setAttribute('aria-label', 'Remove ' + c.nickname);
  const input = q('.contact-remark-input');
  input.setAttribute('aria-label', 'Remark for ' + c.nickname);
  if (document.activeElement !== input) input.value = c.remark_name || ''; // don't clobber typing
}

function renderContacts() {
  reconcile($('contacts'), state.contacts, (c) => c.contact_id, contactItem, fillContact);
  $('contacts-empty').hidden = state.contacts.length > 0;
}

/** What a click in #contacts does: chat, star, remove. */
async function contactAction(ev) {
  const btn = ev.target.closest('button');
  const li = ev.target.closest('li.contact');
  if (!btn || !li || btn.type === 'submit') return;
  const id = Number(li.dataset.contactId);
  const c = state.contacts.find((x) => x.contact_id === id);
  if (btn.classList.contains('contact-chat')) {
    let channel = state.peerChannel.get(id);
    if (channel == null) {
      await refreshConvs();
      channel = state.peerChannel.get(id);
    }
    if (channel == null) throw new Problem(`No chat with ${c ? c.nickname : 'user ' + id} is in your list.`);
    await openConv(channel, { type: 'single', name: c ? c.remark_name || c.nickname : '', avatar: c && c.avatar });
  } else if (btn.classList.contains('contact-star')) {
    await api('PATCH', `/v1/friends/${id}`, { starred: li.dataset.starred !== 'true' });
    await refreshContacts();
  } else if (btn.classList.contains('contact-remove')) {
    await api('DELETE', `/v1/friends/${id}`);
    if (state.open && state.peerChannel.get(id) === state.open.id) closeConv();
    try {
      await Promise.all([refreshContacts(), refreshConvs()]);
    } finally {
      refocusList('contacts', '.contact-chat', 'contacts-h');
    }
  }
}

async function saveRemark(form) {
  const li = form.closest('li.contact');
  const remark = form.querySelector('.contact-remark-input').value.trim();
  await api('PATCH', `/v1/friends/${li.dataset.contactId}`, { remark_name: remark });
  await Promise.all([refreshContacts(), refreshConvs()]); // the remark is the chat's name too
}

// ---------- the open conversation ----------

const pane = () => $('conversation');

async function openConv(id, hint) {
  const c = state.convs.find((x) => x.channel_id === id) || hint || {};
  const gen = ++state.gen;
  state.open = {
    id,
    listed: state.convs.includes(c),
    type: c.type || 'single',
    name: convName({ ...c, channel_id: id }),
    avatar: c.avatar,
    pinned: !!c.pinned,
    muted: !!c.muted,
  };
  Object.assign(state, { low: 0, high: 0, readSent: 0 });
  pane().dataset.channelId = String(id);
  $('messages').replaceChildren();
  $('messages-empty').hidden = true;
  $('load-older').hidden = true;
  for (const e of ['conv-error', 'send-error', 'group-error']) $(e).textContent = '';
  $('group-panel').hidden = state.open.type !== 'group';
  syncHeader();
  pane().hidden = false;
  $('placeholder').hidden = true;
  $('app').classList.add('has-conv');
  renderConvs(); // marks the open item
  window.scrollTo(0, 0); // phones: the pane sits on top of the list
  // Wide screens: ready to type. Phones: no keyboard popping up; the title tells where we are.
  const wide = window.matchMedia('(min-width: 760px)').matches;
  (wide ? $('send-input') : $('conv-title')).focus({ preventScroll: true });

  state.loading = loadNewest(id, gen);
  try {
    await state.loading;
  } catch (err) {
    if (gen === state.gen) report(err, $('conv-error'));
  }
}

/** The open pane's first page: the newest messages, then the read mark. */
async function loadNewest(id, gen) {
  const r = await api('GET', `/v1/channels/${id}/messages?limit=${PAGE}`);
  if (gen !== state.gen) return;
  addMessages((r.messages || []).slice().reverse(), 'end');
  syncMessageChrome(); // also when there are none yet
  scrollToEnd();
  renderConvs(); // its badge goes as soon as the messages are on screen
  await markRead();
}

function closeConv() {
  const was = state.open;
  state.gen++;
  state.open = null;
  state.loading = null;
  pane().hidden = true;
  pane().dataset.channelId = '';
  $('placeholder').hidden = false;
  $('app').classList.remove('has-conv');
  renderConvs();
  // Keyboard users land back on the item they came from.
  const li = was && $('conversations').querySelector(`li[data-channel-id="${was.id}"] .conv-open`);
  if (li && !$('app').hidden) li.focus();
}

/**
 * After what had the keyboard focus went away (a conversation hidden or left, a contact removed):
 * focus goes to the list's first item, or its heading when it is empty.
 */
function refocusList(ul = 'conversations', item = '.conv-open', heading = 'conversations-h') {
  const a = document.activeElement;
  if ($('app').hidden || (a && a !== document.body && a.isConnected && !a.closest('[hidden]'))) return;
  const first = $(ul).querySelector(item);
  (first || $(heading)).focus({ preventScroll: true });
}

/** Title, avatar and toggle states of the pane from state.open. */
function syncHeader() {
  const o = state.open;
  $('conv-title').textContent = o.name;
  setAvatar($('conv-avatar'), o.avatar, o.name);
  // Toggle buttons keep their label; aria-pressed (and its style) says the state.
  $('conv-pin').setAttribute('aria-pressed', String(o.pinned));
  $('conv-mute').setAttribute('aria-pressed', String(o.muted));
  $('group-panel').hidden = o.type !== 'group';
}

/**
 * After a list re-read: the open conversation's name, avatar and flags follow it. One that
 * left the list (hidden elsewhere, friendship ended, removed from the group) closes.
 */
function syncOpenPane(pages = 1) {
  const o = state.open;
  if (!o) return;
  const c = state.convs.find((x) => x.channel_id === o.id);
  if (!c) {
    if (!o.listed) return; // a chat opened while hidden (never listed) stays open
    // A read over several pages can miss an item that moved between two of them: read once
    // more before closing.
    if (pages > 1 && !o.missing) {
      o.missing = true;
      setTimeout(() => state.open === o && bg(refreshConvs()), 0);
      return;
    }
    closeConv();
    return;
  }
  o.missing = false;
  Object.assign(o, { listed: true, type: c.type, name: convName(c), avatar: c.avatar, pinned: !!c.pinned, muted: !!c.muted });
  syncHeader();
}

function messageItem(m) {
  const mine = !!state.me && m.sender_id === state.me.id;
  const d = new Date(Number(m.created_at) || 0);
  return h('li', { class: 'message' + (mine ? ' mine' : ''), 'data-seq': m.seq, 'data-sender-id': m.sender_id },
    h('span', { class: 'msg-sender', text: m.sender_name }),
    h('p', { class: 'msg-content', text: m.content }),
    h('time', { class: 'msg-time', datetime: d.toISOString(), title: d.toLocaleString(), text: hhmm(d) }));
}

/** Adds messages (oldest first) at the end or the start, skipping seqs already shown. */
function addMessages(list, where) {
  const fresh = list.filter((m) => (where === 'end' ? m.seq > state.high : state.low === 0 || m.seq < state.low));
  if (!fresh.length) return;
  const frag = document.createDocumentFragment();
  for (const m of fresh) frag.append(messageItem(m));
  if (where === 'end') $('messages').append(frag);
  else $('messages').prepend(frag);
  const seqs = fresh.map((m) => m.seq);
  state.high = Math.max(state.high, ...seqs);
  state.low = state.low === 0 ? Math.min(...seqs) : Math.min(state.low, ...seqs);
  syncMessageChrome();
}

function syncMessageChrome() {
  const older = $('load-older');
  const hide = !(state.low > 1); // seq 1 shown: nothing older
  // The button hiding itself under the keyboard focus: focus goes on to the messages.
  if (hide && !older.hidden && document.activeElement === older) {
    older.hidden = true;
    $('messages').focus({ preventScroll: true });
  }
  older.hidden = hide;
  $('messages-empty').hidden = state.high > 0;
}

const scroller = () => $('msg-scroll');
const nearEnd = () => scroller().scrollHeight - scroller().scrollTop - scroller().clientHeight < 80;
function scrollToEnd() {
  scroller().scrollTop = scroller().scrollHeight;
}

/** Marks everything shown as read (once per seq), then lets the list show it. */
async function markRead() {
  const o = state.open;
  // Nobody is looking at a hidden tab: becoming visible marks what is shown then.
  if (!o || state.high <= state.readSent || document.hidden) return;
  const seq = state.high;
  const before = state.readSent;
  state.readSent = seq;
  try {
    await api('POST', `/v1/channels/${o.id}/read`, { seq });
  } catch (err) {
    if (state.open === o && state.readSent === seq) state.readSent = before; // the next catch-up retries
    throw err;
  }
  await refreshConvs();
}

/** Fetches what arrived after the newest shown message (oldest first), then marks it read. */
const catchUp = coalesce(async () => {
  const gen = state.gen;
  let firstFailed = false;
  if (state.loading) await state.loading.catch(() => (firstFailed = true));
  if (!state.open || gen !== state.gen) return;
  const id = state.open.id;
  // The first page never arrived: load the newest page again, not the whole history after seq 0.
  if (firstFailed && state.high === 0) {
    state.loading = loadNewest(id, gen);
    await state.loading;
    if (gen === state.gen) $('conv-error').textContent = '';
    return;
  }
  for (;;) {
    const r = await api('GET', `/v1/channels/${id}/messages?after_seq=${state.high}&limit=100`);
    if (gen !== state.gen) return;
    const list = r.messages || [];
    const stick = nearEnd() || list.some((m) => state.me && m.sender_id === state.me.id);
    addMessages(list, 'end');
    announce(list.filter((m) => !state.me || m.sender_id !== state.me.id));
    if (stick) scrollToEnd(); // don't yank someone reading history
    if (list.length < 100) break;
  }
  renderConvs();
  await markRead();
});

/** Screen readers hear new messages from others (not whole pages of history). */
function announce(list) {
  if (!list.length) return;
  const last = list[list.length - 1];
  const more = list.length > 1 ? ` (${list.length} new)` : '';
  $('announce').textContent = `${last.sender_name}: ${last.content}${more}`;
}

async function loadOlder() {
  const gen = state.gen;
  if (!state.open || state.low <= 1) return;
  const r = await api('GET', `/v1/channels/${state.open.id}/messages?before_seq=${state.low}&limit=${PAGE}`);
  if (gen !== state.gen) return;
  const s = scroller();
  const fromEnd = s.scrollHeight - s.scrollTop;
  addMessages((r.messages || []).slice().reverse(), 'start');
  s.scrollTop = s.scrollHeight - fromEnd; // the message being read stays put
}

/** Queues one send; sends leave in the order typed, and a failed one gives its text back. */
function send(content) {
  const o = state.open;
  const token = state.token; // the sender: a queued send never goes out under another session
  const job = async () => {
    if (!token || state.token !== token) return; // signed out (or in as someone else) meanwhile
    try {
      await api('POST', `/v1/channels/${o.id}/messages`, { content }, { token });
    } catch (err) {
      const input = $('send-input');
      if (state.open === o && !input.value) input.value = content;
      throw err;
    }
    if (state.open === o) bg(catchUp(), $('conv-error'));
    bg(refreshConvs());
  };
  // The chain never rejects, so one failure does not stop the sends queued after it.
  state.sendQueue = state.sendQueue.then(job).catch((err) => {
    if (state.token === token) report(err, $('send-error'));
  });
  return state.sendQueue;
}

async function setFlag(flag) {
  const o = state.open;
  if (!o) return;
  const value = flag === 'hidden' ? true : !o[flag];
  await api('PATCH', `/v1/conversations/${o.id}`, { [flag]: value });
  if (flag === 'hidden') closeConv();
  else if (state.open === o) {
    o[flag] = value;
    syncHeader();
  }
  try {
    await refreshConvs();
  } finally {
    if (flag === 'hidden') refocusList();
  }
}

// ---------- live updates ----------

function setWsState(s) {
  const el = $('ws-status');
  el.dataset.state = s;
  el.textContent = { connecting: 'Connecting…', open: 'Live', closed: 'Offline' }[s];
}

/**
 * In the eventual modes an event can arrive before the read model has applied the change it
 * announces (both follow the same change stream). So: a `message` event's seq is remembered until
 * the list shows it, re-reading with back-off meanwhile; other events get one later re-read.
 */
const recheck = {
  seqs: new Map(), // channel id -> seq announced but not shown by the list yet
  tries: 0,
  timer: 0,
  settle: 0,

  expect(channel, seq) {
    if (seq > (this.seqs.get(channel) || 0)) this.seqs.set(channel, seq);
  },

  afterRead() {
    for (const [ch, seq] of this.seqs) {
      const c = state.convs.find((x) => x.channel_id === ch);
      if (c && c.last_message && c.last_message.seq >= seq) this.seqs.delete(ch);
    }
    clearTimeout(this.timer);
    if (!this.seqs.size || this.tries >= 6 || !state.token) {
      this.seqs.clear(); // done, or given up: the 30 s re-read is the next chance
      this.tries = 0;
      return;
    }
    this.timer = setTimeout(() => bg(refreshConvs()), 200 * 2 ** this.tries++);
  },

  /** One re-read a second after an event that the read model may not show yet. */
  later() {
    clearTimeout(this.settle);
    this.settle = setTimeout(() => this.reread(), 1000);
  },

  /**
   * An answer said the read model lags (X-Hermet-Stale): read again, backing off from 1 s
   * doubling to 15 s while answers stay stale; a re-read with no stale answer resets the delay.
   */
  stale() {
    this.sawStale = true;
    if (this.settle) return; // a re-read is already planned
    const delay = this.staleDelay;
    this.staleDelay = Math.min(15000, this.staleDelay * 2);
    this.settle = setTimeout(() => this.reread(), delay);
  },

  async reread() {
    this.settle = 0;
    if (!state.token) return;
    this.sawStale = false;
    try {
      await refreshAll();
      if (!this.sawStale) this.staleDelay = 1000; // fresh again
    } catch (err) {
      report(err);
    }
  },

  sawStale: false,
  staleDelay: 1000,

  reset() {
    clearTimeout(this.timer);
    clearTimeout(this.settle);
    this.settle = 0;
    this.seqs.clear();
    this.tries = 0;
    this.staleDelay = 1000;
  },
};

function onEvent(ev) {
  if (!ev || typeof ev !== 'object') return;
  if (ev.type === 'message') {
    recheck.expect(ev.channel_id, ev.seq);
    bg(refreshConvs());
    if (state.open && ev.channel_id === state.open.id) bg(catchUp(), $('conv-error'));
  } else if (ev.type === 'conversation_changed') {
    bg(refreshConvs());
    recheck.later();
  } else if (ev.type === 'contact_changed') {
    bg(refreshContacts());
    bg(refreshConvs()); // nicknames and remarks show in the list too
    recheck.later();
  }
}

/** The push connection: reconnects with exponential back-off and jitter; 1008 ends the session. */
const ws = {
  sock: null,
  attempt: 0,
  timer: 0,
  active: false,
  opens: 0, // connections opened this session
  initialRead: null, // the list read made when the session began (see onopen)
  initialDone: false,

  start() {
    this.active = true;
    this.attempt = 0;
    this.opens = 0;
    this.connect();
  },

  stop() {
    this.active = false;
    clearTimeout(this.timer);
    const s = this.sock;
    this.sock = null;
    if (s) {
      s.onopen = s.onmessage = s.onclose = s.onerror = null;
      s.close(1000);
    }
    setWsState('closed');
  },

  connect() {
    clearTimeout(this.timer);
    if (!this.active || this.sock) return;
    setWsState('connecting');
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let s;
    try {
      s = new WebSocket(`${proto}//${location.host}/v1/ws?token=${encodeURIComponent(state.token)}`);
    } catch {
      this.retry(false);
      return;
    }
    let opened = false;
    this.sock = s;
    s.onopen = () => {
      opened = true;
      this.attempt = 0;
      setWsState('open');
      // Events sent while away are not replayed: re-read after every re-connect. The first
      // connection follows the session's first read; that read covers it while still on its way
      // (re-reading then would fetch the whole list twice), not once it finished before we were
      // listening.
      const first = this.opens++ === 0;
      if (!first || !this.initialRead || this.initialDone) bg(refreshAll());
      if (state.open) bg(catchUp(), $('conv-error'));
    };
    s.onmessage = (m) => {
      let ev;
      try {
        ev = JSON.parse(m.data);
      } catch {
        return; // not an event: ignore
      }
      onEvent(ev);
    };
    s.onclose = (e) => {
      if (this.sock !== s) return;
      this.sock = null;
      setWsState('closed');
      if (!this.active) return;
      if (e.code === 1008) endSession(SESSION_ENDED);
      else this.retry(!opened);
    };
  },

  /** 0.5 s doubling to 15 s, ±25 % jitter so many clients don't reconnect in step. */
  retry(neverOpened) {
    const base = Math.min(15000, 500 * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 10);
    const delay = base * (0.75 + Math.random() * 0.5);
    this.timer = setTimeout(async () => {
      // A refused upgrade (bad token) closes as 1006, not 1008: ask the API whether the token still holds.
      if (neverOpened) {
        try {
          await api('GET', '/v1/me');
        } catch (err) {
          if (err.handled) return; // 401: the session ended
        }
      }
      this.connect();
    }, delay);
  },

  /** Back online, or the tab shown again: try now instead of waiting out the back-off. */
  nudge() {
    if (this.active && !this.sock) {
      this.attempt = 0;
      this.connect();
    }
  },
};

// ---------- wiring ----------

function wire() {
  onSubmit($('signup-form'), $('signin-error'), async () => {
    const nickname = $('signup-nickname').value.trim();
    const avatar = $('signup-avatar').value.trim();
    if (!nickname) throw new Problem('Enter a nickname.');
    const body = { nickname };
    if (avatar) body.avatar = avatar;
    const u = await api('POST', '/v1/users', body);
    enter(u.token, u);
  });

  onSubmit($('token-form'), $('signin-error'), async () => {
    const token = $('token-input').value.trim();
    if (!token) throw new Problem('Paste a token first.');
    const me = await api('GET', '/v1/me', undefined, { token, keepSession: true });
    $('token-input').value = '';
    enter(token, me);
  });

  onClick($('signout'), $('app-error'), () => endSession(''));

  onSubmit($('profile-form'), $('profile-error'), async () => {
    $('profile-ok').textContent = '';
    const nickname = $('profile-nickname').value.trim();
    if (!nickname) throw new Problem('Enter a nickname.');
    const avatar = $('profile-avatar').value.trim();
    // Only what changed: a profile change is copied into every row that shows it.
    const body = {};
    if (nickname !== state.me.nickname) body.nickname = nickname;
    if (avatar !== (state.me.avatar || '')) body.avatar = avatar;
    if (!Object.keys(body).length) {
      $('profile-ok').textContent = 'Nothing to change.';
      return;
    }
    const me = await api('PATCH', '/v1/me', body);
    renderMe(me);
    $('profile-ok').textContent = 'Profile saved.';
  });

  onSubmit($('friend-form'), $('friend-error'), async () => {
    const friendId = parseId($('friend-id').value);
    const r = await api('POST', '/v1/friends', { friend_id: friendId });
    if (r.channel_id != null) state.peerChannel.set(friendId, r.channel_id);
    $('friend-id').value = '';
    await refreshAll();
  });

  onSubmit($('group-form'), $('group-create-error'), async () => {
    const name = $('group-name').value.trim();
    if (!name) throw new Problem('Enter a group name.');
    const memberIds = parseIds($('group-members').value);
    const r = await api('POST', '/v1/groups', { name, member_ids: memberIds });
    $('group-name').value = '';
    $('group-members').value = '';
    await refreshConvs();
    if (r.channel_id != null) await openConv(r.channel_id, { type: 'group', name });
  });

  // Conversation list: the whole item opens it (the button inside handles Enter/Space).
  $('conversations').addEventListener('click', (ev) => {
    const li = ev.target.closest('li.conversation');
    if (li) bg(openConv(Number(li.dataset.channelId)), $('app-error'));
  });

  $('contacts').addEventListener('click', (ev) => {
    if (ev.target.closest('button')) $('contacts-error').textContent = '';
    bg(contactAction(ev), $('contacts-error'));
  });
  $('contacts').addEventListener('submit', (ev) => {
    const form = ev.target.closest('form.contact-remark-form');
    if (!form) return;
    ev.preventDefault();
    $('contacts-error').textContent = '';
    bg(saveRemark(form), $('contacts-error'));
  });

  onClick($('back'), $('conv-error'), () => closeConv());
  onClick($('conv-pin'), $('conv-error'), () => setFlag('pinned'));
  onClick($('conv-mute'), $('conv-error'), () => setFlag('muted'));
  onClick($('conv-hide'), $('conv-error'), () => setFlag('hidden'));
  onClick($('load-older'), $('conv-error'), loadOlder);

  onSubmit($('send-form'), $('send-error'), async () => {
    const input = $('send-input');
    const content = input.value;
    if (!content.trim()) throw new Problem('Type a message first.');
    if (!state.open) throw new Problem('Open a conversation first.');
    input.value = ''; // ready for the next one while this one is on its way
    send(content);
  });
  // The box grows with its text (up to the CSS max-height), and shrinks back once sent.
  const fit = () => {
    const el = $('send-input');
    el.style.height = 'auto';
    el.style.height = el.value ? el.scrollHeight + 2 + 'px' : '';
  };
  $('send-input').addEventListener('input', fit);
  $('send-form').addEventListener('submit', () => setTimeout(fit));
  // Enter sends; Shift+Enter is a new line; an IME composing text keeps its Enter.
  $('send-input').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      $('send-form').requestSubmit();
    }
  });

  const groupId = () => state.open && state.open.id;
  onSubmit($('group-rename-form'), $('group-error'), async () => {
    const name = $('group-rename-input').value.trim();
    if (!name) throw new Problem('Enter the new group name.');
    await api('PATCH', `/v1/groups/${groupId()}`, { name });
    $('group-rename-input').value = '';
    await refreshConvs();
  });
  onSubmit($('group-add-form'), $('group-error'), async () => {
    const ids = parseIds($('group-add-ids').value);
    if (!ids.length) throw new Problem('Enter at least one user id.');
    await api('POST', `/v1/groups/${groupId()}/members`, { user_ids: ids });
    $('group-add-ids').value = '';
  });
  onSubmit($('group-remove-form'), $('group-error'), async () => {
    const id = parseId($('group-remove-id').value);
    await api('DELETE', `/v1/groups/${groupId()}/members/${id}`);
    $('group-remove-id').value = '';
  });
  onClick($('group-leave'), $('group-error'), async () => {
    await api('DELETE', `/v1/groups/${groupId()}/members/${state.me.id}`);
    closeConv();
    try {
      await refreshConvs();
    } finally {
      refocusList();
    }
  });

  // Safety nets: a missed event costs at most 30 s; coming back online reconnects at once.
  setInterval(() => {
    if (!state.token) return;
    bg(refreshAll());
    if (state.open) bg(catchUp(), $('conv-error'));
  }, 30000);
  window.addEventListener('online', () => ws.nudge());
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState !== 'visible') return;
    ws.nudge();
    if (!state.token) return;
    renderConvs(); // the open conversation's badge counts it read again
    // What arrived while the tab was hidden was not marked read: it is now.
    if (state.open) bg(catchUp(), $('conv-error'));
  });
  // Signed out in another tab: follow.
  window.addEventListener('storage', (ev) => {
    if (ev.key === TOKEN_KEY && !ev.newValue && state.token) endSession('You signed out in another tab.');
  });
  // Last resort: nothing fails silently or leaves a blank screen.
  window.addEventListener('error', (ev) => report(ev.error || new Error(ev.message)));
  window.addEventListener('unhandledrejection', (ev) => report(ev.reason));
}

async function boot() {
  wire();
  // Group settings start folded on narrow screens (the two-column layout starts at 760 px, see
  // app.css), where they would push the messages off screen.
  if (!window.matchMedia('(min-width: 760px)').matches) $('group-panel').open = false;
  $('boot').hidden = true;
  const token = storeGet();
  if (!token) {
    $('signin').hidden = false;
    return;
  }
  try {
    const me = await api('GET', '/v1/me', undefined, { token, keepSession: true });
    enter(token, me, false);
  } catch (err) {
    if (err.status === 401 || err.status === 404) endSession(SESSION_ENDED, token);
    else {
      $('signin').hidden = false; // token kept: a reload retries once the server answers
      report(err, $('signin-error'));
    }
  }
}

boot().catch((err) => {
  $('boot').hidden = true;
  $('signin').hidden = false;
  report(err, $('signin-error'));
});
