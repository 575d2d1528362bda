// EmoStream live dashboard. Plain JS, no dependencies, no network beyond this server and its ingest address.
//
// Flow: GET /windows (history, drawn but never counted) -> POST /subscribe -> EventSource(stream_path),
// one `swarm` event per window. GET /stats every 2 s (rates, ingest address), GET /subscriptions every 5 s.
// On any stream error: close, back off, subscribe again (the registry lives in memory and is lost on restart).
//
// Session totals ("since page load") count a window only if
//   1. it is newer than the newest window of the history fetched at load (`baseline`), so the latest window
//      that the server replays to every new connection is not counted when it predates the page, and
//   2. it has not been counted already (windows are keyed by window_start), so replays after a reconnect
//      and gap-fills from GET /windows never count a window twice.
'use strict';

(() => {
  const HISTORY_LIMIT = 150;          // windows drawn on the charts
  const KEEP_WINDOWS = 600;           // windows kept in memory
  const SURGE_HORIZON_MS = 30000;     // "current" surges: window_end within this of the newest window
  const STATS_EVERY_MS = 2000;
  const SUBS_EVERY_MS = 5000;
  const MAX_FLOATERS = 220;           // emoji elements alive on the stage at once
  const MAX_PER_WINDOW = 80;          // copies spawned for one window
  const DEFAULT_EMOJIS = ['😀', '😂', '😍', '😮', '😢', '😡', '👍', '🔥'];
  const COLORS = ['#8ea8ff', '#ffd166', '#3ddc97', '#ff6b8b', '#c792ea', '#5ccfe6', '#ff9e64', '#a3be8c', '#f07178', '#e0e0e0'];

  const $ = (sel) => document.querySelector(sel);
  const nf = new Intl.NumberFormat('en-US');
  const nf1 = new Intl.NumberFormat('en-US', { maximumFractionDigits: 1 });
  const reducedMotion = window.matchMedia('(prefers-reduced-motion: reduce)');

  const state = {
    clientId: 'dashboard-' + randomId(),
    sub: null,                 // answer of POST /subscribe
    es: null,                  // EventSource
    connected: false,
    everConnected: false,
    attempt: 0,
    reconnectTimer: 0,
    lastEventAt: 0,
    windows: [],               // all known windows, sorted by window_start
    byStart: new Map(),        // window_start -> window
    baseline: null,            // newest window_start known at load; null until known
    counted: new Set(),        // window_start of windows counted in the session
    countedFloor: -Infinity,   // windows at or below this were pruned from `counted` and are never counted again
    session: new Map(),        // emoji -> count since page load
    sessionTotal: 0,
    sessionWindows: 0,
    latest: null,              // newest window
    windowMs: 2000,
    emojis: DEFAULT_EMOJIS.slice(),
    colors: new Map(),
    ingestUrl: null,
    stats: null,
    prevStats: null,
    subsMap: null,
    paused: false,
    floaters: 0,
    renderQueued: false,
  };

  // ---------- small helpers ----------

  function randomId() {
    const a = new Uint8Array(6);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  /** Build an element; text always goes through textContent (client ids and emoji come from other people). */
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids.flat()) if (kid != null) el.append(kid);
    return el;
  }

  async function api(path, opts = {}) {
    const res = await fetch(path, {
      cache: 'no-store',
      signal: AbortSignal.timeout(opts.timeout || 5000),
      ...opts,
    });
    if (!res.ok) {
      const err = new Error(`${opts.method || 'GET'} ${path}: HTTP ${res.status}`);
      err.status = res.status;
      throw err;
    }
    return res.json();
  }

  const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
  const fmtCount = (v) => nf.format(num(v));
  const fmtTime = (ms) => new Date(ms).toLocaleTimeString('en-GB', { hour12: false });
  const fmtMood = (m) => (m == null ? '–' : (m > 0 ? '+' : m < 0 ? '−' : '±') + Math.abs(m).toFixed(2));
  const moodWord = (m) => (m == null ? 'no reactions' : m >= 0.25 ? 'upbeat' : m <= -0.25 ? 'negative' : 'mixed');

  function colorOf(emoji) {
    if (!state.colors.has(emoji)) state.colors.set(emoji, COLORS[state.colors.size % COLORS.length]);
    return state.colors.get(emoji);
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  // ---------- connection ----------

  function setStatus(kind, text) {
    const el = $('#status');
    el.dataset.status = kind;
    $('#status-text').textContent = text;
  }

  async function loadHistory() {
    try {
      const body = await api(`/windows?limit=${HISTORY_LIMIT}`);
      const list = Array.isArray(body) ? body : body.windows || [];
      for (const w of list) addWindow(w, 'history');
      if (state.baseline == null) {
        state.baseline = list.reduce((m, w) => Math.max(m, num(w.window_start)), -Infinity);
      }
    } catch (e) {
      // Without history the first event of the first connection is taken as the baseline (see onSwarm).
      console.warn('history unavailable:', e.message);
    }
    scheduleRender();
  }

  /** Windows missed while not connected (or between the history fetch and the stream opening). */
  async function fillGaps() {
    try {
      const body = await api(`/windows?limit=${HISTORY_LIMIT}`);
      const list = Array.isArray(body) ? body : body.windows || [];
      for (const w of list) addWindow(w, 'fill');
      scheduleRender();
    } catch (e) {
      console.warn('gap fill failed:', e.message);
    }
  }

  async function connect() {
    clearTimeout(state.reconnectTimer);
    closeStream();
    setStatus(state.everConnected ? 'reconnecting' : 'connecting',
      state.everConnected ? 'Reconnecting…' : 'Connecting…');
    let sub;
    try {
      sub = await api('/subscribe', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ client_id: state.clientId }),
      });
    } catch (e) {
      console.warn('subscribe failed:', e.message);
      return scheduleReconnect();
    }
    state.sub = sub;
    renderWhoami();
    if (sub.subscriptions) renderGrid(sub.subscriptions);

    const es = new EventSource(sub.stream_path || `/stream/${encodeURIComponent(state.clientId)}`);
    state.es = es;
    let first = true;
    es.addEventListener('open', () => {
      if (state.es !== es) return;
      state.connected = true;
      state.everConnected = true;
      state.attempt = 0;
      state.lastEventAt = performance.now();
      setStatus('live', 'Live');
      fillGaps();
      pollSubs();
    });
    es.addEventListener('swarm', (ev) => {
      if (state.es !== es) return;
      state.lastEventAt = performance.now();
      let w;
      try { w = JSON.parse(ev.data); } catch { return; }
      if (first && state.baseline == null) {
        // No history was available: the first event is the server's replay of its latest window.
        state.baseline = num(w.window_start);
      }
      first = false;
      addWindow(w, 'live');
    });
    es.addEventListener('error', () => {
      if (state.es !== es) return;
      // EventSource retries by itself on network errors but gives up on 404 (not subscribed, e.g. after a
      // server restart). Either way: drop it, subscribe again after a backoff.
      closeStream();
      scheduleReconnect();
    });
  }

  function closeStream() {
    if (state.es) {
      state.es.close();
      state.es = null;
    }
    state.connected = false;
  }

  function scheduleReconnect() {
    clearTimeout(state.reconnectTimer);
    state.attempt += 1;
    const delay = Math.min(10000, 500 * 2 ** Math.min(state.attempt - 1, 5)) * (0.8 + Math.random() * 0.4);
    setStatus('reconnecting', `Reconnecting in ${Math.max(1, Math.round(delay / 1000))} s…`);
    state.reconnectTimer = setTimeout(connect, delay);
  }

  /** Every window is published, empty ones too: a silent stream is a dead stream. */
  function watchdog() {
    if (!state.connected) return;
    const limit = Math.max(6000, state.windowMs * 4);
    if (performance.now() - state.lastEventAt > limit) {
      console.warn('no window for', limit, 'ms; reconnecting');
      closeStream();
      scheduleReconnect();
    }
  }

  // ---------- windows ----------

  function addWindow(w, source) {
    if (!w || typeof w !== 'object' || !Number.isFinite(w.window_start)) return;
    const start = w.window_start;
    if (Number.isFinite(w.window_end) && w.window_end > start) state.windowMs = w.window_end - start;

    const isNew = !state.byStart.has(start);
    if (isNew) {
      state.byStart.set(start, w);
      const list = state.windows;
      let i = list.length;
      while (i > 0 && list[i - 1].window_start > start) i--;
      list.splice(i, 0, w);
      while (list.length > KEEP_WINDOWS) state.byStart.delete(list.shift().window_start);
    }

    if (source !== 'history') countInSession(w);

    const newest = state.windows[state.windows.length - 1];
    if (newest !== state.latest) {
      state.latest = newest;
      renderCurrent(newest);
      if (source === 'live' && newest === w && isNew) spawnSwarm(w);
    }
    if (source === 'live' && Number.isFinite(w.window_end)) {
      $('#lag').textContent = nf.format(Math.max(0, Date.now() - w.window_end));
    }
    scheduleRender();
  }

  function countInSession(w) {
    const start = w.window_start;
    if (state.baseline == null || start <= state.baseline) return;
    if (start <= state.countedFloor || state.counted.has(start)) return;
    state.counted.add(start);
    state.sessionWindows += 1;
    for (const [emoji, c] of Object.entries(w.counts || {})) {
      state.session.set(emoji, (state.session.get(emoji) || 0) + num(c));
      state.sessionTotal += num(c);
    }
    // Keep the dedup set bounded: far-behind windows can never arrive again.
    if (state.counted.size > 2 * KEEP_WINDOWS) {
      const sorted = Array.from(state.counted).sort((a, b) => a - b);
      for (const s of sorted.slice(0, KEEP_WINDOWS)) state.counted.delete(s);
      state.countedFloor = sorted[KEEP_WINDOWS - 1];
    }
  }

  // ---------- current window ----------

  function renderCurrent(w) {
    const total = num(w.total);
    const mood = typeof w.mood === 'number' ? w.mood : null;
    $('#window-total').textContent = fmtCount(total);
    const mv = $('#mood-value');
    mv.textContent = fmtMood(mood);
    mv.dataset.mood = mood == null ? '' : mood >= 0.25 ? 'pos' : mood <= -0.25 ? 'neg' : 'mid';
    $('#mood-label').textContent = moodWord(mood);
    $('#window-time').textContent = `${fmtTime(w.window_start)}–${fmtTime(w.window_end)}`;

    // Emotion chips with the trend direction (this window against the EWMA).
    const chips = $('#emotions');
    chips.replaceChildren();
    const emotions = Object.entries(w.emotions || {}).filter(([, c]) => num(c) > 0).sort((a, b) => b[1] - a[1]);
    for (const [name, c] of emotions.slice(0, 6)) {
      const tr = w.trend && typeof w.trend[name] === 'number' ? w.trend[name] : null;
      let dir = '';
      let cls = '';
      if (tr != null && tr > 0) {
        if (c > tr * 1.2) { dir = ' ↑'; cls = 'up'; } else if (c < tr * 0.8) { dir = ' ↓'; cls = 'down'; }
      }
      chips.append(h('li', { 'data-emotion': name, title: tr == null ? null : `trend ${nf1.format(tr)}` },
        `${name} ${fmtCount(c)}`, dir ? h('span', { class: cls, text: dir }) : null));
    }

    // One sentence for screen readers (aria-live) and everyone else.
    const top = Object.entries(w.counts || {}).sort((a, b) => b[1] - a[1])[0];
    const surges = (Array.isArray(w.surges) ? w.surges : []).map((s) => `${s.emotion} ×${nf1.format(num(s.ratio))}`);
    const parts = [`${fmtTime(w.window_end)}: `];
    if (total === 0) parts.push('a quiet window, no reactions.');
    else {
      parts.push(`${fmtCount(total)} reaction${total === 1 ? '' : 's'}, mood ${fmtMood(mood)} (${moodWord(mood)})`);
      if (top) parts.push(' · most ', h('span', { class: 'e', text: top[0] }), ` ${fmtCount(top[1])}`);
      if (surges.length) parts.push(` · surge: ${surges.join(', ')}`);
    }
    $('#window-summary').replaceChildren(...parts);

    renderStatic(w);
  }

  function swarmCopies(w) {
    const out = [];
    for (const [emoji, n] of Object.entries(w.swarm || {})) {
      for (let i = 0; i < Math.max(0, Math.floor(num(n))); i++) out.push(emoji);
    }
    return out;
  }

  function renderStatic(w) {
    const copies = swarmCopies(w);
    const box = $('#stage-static');
    box.replaceChildren(...copies.slice(0, MAX_PER_WINDOW).map((e) => h('span', { text: e })));
    $('#stage').classList.toggle('empty', copies.length === 0);
  }

  /** Float each swarm emoji up the stage, spread over one window so the beat looks continuous. */
  function spawnSwarm(w) {
    if (state.paused || document.hidden) return;
    const stage = $('#stage');
    const copies = swarmCopies(w);
    for (let i = copies.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [copies[i], copies[j]] = [copies[j], copies[i]];
    }
    const rise = stage.clientHeight + 48;
    const spread = Math.min(state.windowMs, 4000) * 0.9;
    for (const emoji of copies.slice(0, MAX_PER_WINDOW)) {
      if (state.floaters >= MAX_FLOATERS) break;
      const el = h('span', { class: 'floater', text: emoji });
      el.style.setProperty('--x', `${3 + Math.random() * 90}%`);
      el.style.setProperty('--size', `${1.5 + Math.random() * 1.1}rem`);
      el.style.setProperty('--dur', `${2.6 + Math.random() * 1.6}s`);
      el.style.setProperty('--delay', `${Math.round(Math.random() * spread)}ms`);
      el.style.setProperty('--sway', `${Math.round((Math.random() - 0.5) * 60)}px`);
      el.style.setProperty('--rise', `${rise}px`);
      el.addEventListener('animationend', () => { el.remove(); state.floaters -= 1; }, { once: true });
      state.floaters += 1;
      stage.append(el);
    }
  }

  function setPaused(paused) {
    state.paused = paused;
    const btn = $('#pause');
    btn.setAttribute('aria-pressed', String(paused));
    const stage = $('#stage');
    stage.classList.toggle('static', paused);
    if (paused) {
      stage.querySelectorAll('.floater').forEach((el) => el.remove());
      state.floaters = 0;
    }
  }

  // ---------- charts, surges, totals (coalesced into one frame) ----------

  function scheduleRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    requestAnimationFrame(() => {
      state.renderQueued = false;
      renderTotals();
      renderSurges();
      drawCounts();
      drawMood();
    });
  }

  function visibleWindows() {
    const list = state.windows;
    if (!list.length) return { list: [], t0: 0, t1: 1 };
    const t1 = num(list[list.length - 1].window_end);
    const t0 = t1 - HISTORY_LIMIT * state.windowMs;
    return { list: list.filter((w) => w.window_end > t0), t0, t1 };
  }

  function setupCanvas(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const hgt = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(hgt * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(hgt * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, hgt);
    ctx.font = '11px system-ui, sans-serif';
    return { ctx, w, h: hgt };
  }

  function niceMax(v) {
    if (v <= 4) return 4;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function timeAxis(ctx, x, t0, t1, y, w) {
    const spanS = (t1 - t0) / 1000;
    const pxPerS = (x(t1) - x(t0)) / spanS;
    const steps = spanS >= 240 ? [60, 120, 300, 600] : spanS >= 90 ? [30, 60, 120] : [5, 10, 15, 30, 60];
    const step = steps.find((st) => st * pxPerS >= 56) || steps[steps.length - 1];
    ctx.fillStyle = cssVar('--muted');
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    for (let s = 0; s <= spanS; s += step) {
      const px = x(t1 - s * 1000);
      if (px < 20) break;
      const label = s === 0 ? 'now' : s % 60 === 0 ? `−${s / 60}m`
        : s > 60 ? `−${Math.floor(s / 60)}m${s % 60}s` : `−${s}s`;
      const half = ctx.measureText(label).width / 2;
      ctx.fillText(label, Math.max(half + 2, Math.min(px, w - half - 2)), y);
    }
  }

  /** Split a series into runs of consecutive windows so a gap in the data shows as a gap in the line. */
  function runs(list) {
    const out = [];
    let cur = [];
    for (const w of list) {
      if (cur.length && w.window_start - cur[cur.length - 1].window_start > state.windowMs * 1.5) {
        out.push(cur);
        cur = [];
      }
      cur.push(w);
    }
    if (cur.length) out.push(cur);
    return out;
  }

  function drawCounts() {
    const canvas = $('#chart');
    const { ctx, w, h: H } = setupCanvas(canvas);
    const { list, t0, t1 } = visibleWindows();
    const pad = { l: 40, r: 8, t: 8, b: 20 };
    const pw = w - pad.l - pad.r;
    const ph = H - pad.t - pad.b;
    const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * pw;

    const sums = new Map();
    let max = 0;
    for (const win of list) {
      for (const [e, c] of Object.entries(win.counts || {})) {
        sums.set(e, (sums.get(e) || 0) + num(c));
        max = Math.max(max, num(c));
      }
    }
    const top = [...sums.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([e]) => e);
    const ymax = niceMax(max);
    const y = (v) => pad.t + ph - (v / ymax) * ph;

    ctx.strokeStyle = cssVar('--line');
    ctx.fillStyle = cssVar('--muted');
    ctx.lineWidth = 1;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (let i = 0; i <= 4; i++) {
      const v = (ymax / 4) * i;
      const py = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.l, py);
      ctx.lineTo(w - pad.r, py);
      ctx.stroke();
      ctx.fillText(v >= 10000 ? `${nf1.format(v / 1000)}k` : nf.format(v), pad.l - 6, py);
    }
    timeAxis(ctx, x, t0, t1, H - pad.b + 5, w);

    ctx.lineJoin = 'round';
    ctx.lineWidth = 2;
    for (const e of top.slice().reverse()) {
      ctx.strokeStyle = colorOf(e);
      for (const run of runs(list)) {
        ctx.beginPath();
        run.forEach((win, i) => {
          const px = x(win.window_end);
          const py = y(num((win.counts || {})[e]));
          if (i === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
        });
        if (run.length === 1) ctx.lineTo(x(run[0].window_end) - 2, y(num((run[0].counts || {})[e])));
        ctx.stroke();
      }
    }

    const latest = state.latest;
    $('#chart-span').textContent = list.length
      ? `last ${Math.round((t1 - t0) / 60000 * 10) / 10} min · ${nf.format(state.windowMs / 1000)} s windows`
      : '';
    const legend = $('#chart-legend');
    legend.replaceChildren(...top.map((e) => h('li', { 'data-emoji': e },
      h('span', { class: 'sw', style: `--c:${colorOf(e)}` }), h('span', { class: 'e', text: e }),
      h('span', { class: 'muted', text: fmtCount(latest && latest.counts ? latest.counts[e] : 0) }))));
    canvas.setAttribute('aria-label', top.length
      ? `Reactions per window, last ${Math.round((t1 - t0) / 1000)} s. Latest: ` +
        top.map((e) => `${e} ${fmtCount(latest && latest.counts ? latest.counts[e] : 0)}`).join(', ')
      : 'Reactions per window: no data yet');
  }

  function drawMood() {
    const canvas = $('#mood-chart');
    const { ctx, w, h: H } = setupCanvas(canvas);
    const { list, t0, t1 } = visibleWindows();
    const pad = { l: 40, r: 8, t: 14, b: 20 };
    const pw = w - pad.l - pad.r;
    const ph = H - pad.t - pad.b;
    const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * pw;
    const y = (m) => pad.t + ((1 - m) / 2) * ph;

    ctx.lineWidth = 1;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (const m of [1, 0.5, 0, -0.5, -1]) {
      ctx.strokeStyle = m === 0 ? cssVar('--muted') : cssVar('--line');
      ctx.setLineDash(m === 0 ? [] : [3, 4]);
      const py = Math.round(y(m)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.l, py);
      ctx.lineTo(w - pad.r, py);
      ctx.stroke();
      if (Number.isInteger(m)) {
        ctx.fillStyle = cssVar('--muted');
        ctx.fillText(m > 0 ? '+1' : m < 0 ? '−1' : '0', pad.l - 6, py);
      }
    }
    ctx.setLineDash([]);
    timeAxis(ctx, x, t0, t1, H - pad.b + 5, w);

    // Surge markers first, under the line.
    const surgeColor = cssVar('--surge');
    let lastLabel = -Infinity;
    for (const win of list) {
      if (!Array.isArray(win.surges) || !win.surges.length) continue;
      const px = x(win.window_end);
      ctx.strokeStyle = surgeColor;
      ctx.globalAlpha = 0.45;
      ctx.setLineDash([2, 3]);
      ctx.beginPath();
      ctx.moveTo(px, pad.t);
      ctx.lineTo(px, pad.t + ph);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.globalAlpha = 1;
      ctx.fillStyle = surgeColor;
      ctx.beginPath();
      ctx.moveTo(px - 5, 2);
      ctx.lineTo(px + 5, 2);
      ctx.lineTo(px, 10);
      ctx.closePath();
      ctx.fill();
      const best = win.surges.slice().sort((a, b) => num(b.ratio) - num(a.ratio))[0];
      const label = String(best.emotion);
      const tw = ctx.measureText(label).width;
      if (px + 7 > lastLabel + 6 && px + 7 + tw <= w - pad.r) {
        ctx.textAlign = 'left';
        ctx.textBaseline = 'middle';
        ctx.fillText(label, px + 7, 7);
        lastLabel = px + 7 + tw;
      }
    }

    // Mood line, coloured by sign; null (empty windows) breaks the line.
    ctx.lineWidth = 2;
    ctx.lineJoin = 'round';
    const pos = cssVar('--pos');
    const neg = cssVar('--neg');
    let prev = null;
    for (const win of list) {
      const m = typeof win.mood === 'number' ? Math.max(-1, Math.min(1, win.mood)) : null;
      if (m == null) { prev = null; continue; }
      const pt = { x: x(win.window_end), y: y(m), m, s: win.window_start };
      if (prev && pt.s - prev.s <= state.windowMs * 1.5) {
        ctx.strokeStyle = (prev.m + m) / 2 >= 0 ? pos : neg;
        ctx.beginPath();
        ctx.moveTo(prev.x, prev.y);
        ctx.lineTo(pt.x, pt.y);
        ctx.stroke();
      } else {
        ctx.fillStyle = m >= 0 ? pos : neg;
        ctx.fillRect(pt.x - 1.5, pt.y - 1.5, 3, 3);
      }
      prev = pt;
    }
    const latest = state.latest;
    canvas.setAttribute('aria-label', `Mood from −1 to +1 over recent windows; latest ${fmtMood(latest ? latest.mood : null)}`);
  }

  function renderSurges() {
    const ul = $('#surges');
    const latest = state.latest;
    if (!latest) return;
    const horizon = num(latest.window_end) - SURGE_HORIZON_MS;
    const items = [];
    for (let i = state.windows.length - 1; i >= 0 && items.length < 8; i--) {
      const win = state.windows[i];
      if (win.window_end < horizon) break;
      for (const s of (Array.isArray(win.surges) ? win.surges : [])) {
        items.push(h('li', {
          class: win === latest ? 'active' : null,
          'data-emotion': s.emotion,
          'data-window-start': win.window_start,
        },
        h('span', { class: 'emo', text: s.emotion }),
        h('span', { class: 'ratio', text: `×${nf1.format(num(s.ratio))}` }),
        h('time', { datetime: new Date(win.window_end).toISOString(), text: fmtTime(win.window_end) }),
        h('span', { class: 'detail', text: `${fmtCount(s.count)} in the window vs ${nf1.format(num(s.average))} on average` })));
      }
    }
    ul.replaceChildren(...items);
  }

  function renderTotals() {
    const tbody = $('#totals tbody');
    const latest = state.latest;
    const known = new Set(state.emojis);
    for (const e of state.session.keys()) known.add(e);
    for (const win of state.windows.slice(-HISTORY_LIMIT)) for (const e of Object.keys(win.counts || {})) known.add(e);
    const order = state.emojis;
    const rows = [...known].sort((a, b) => (state.session.get(b) || 0) - (state.session.get(a) || 0) ||
      (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99));
    const existing = new Map([...tbody.rows].map((r) => [r.dataset.emoji, r]));
    const max = Math.max(1, ...rows.map((e) => state.session.get(e) || 0));
    for (const e of rows) {
      let tr = existing.get(e);
      if (!tr) {
        tr = h('tr', { 'data-emoji': e },
          h('td', { class: 'emoji', text: e }),
          h('td', { class: 'num last' }),
          h('td', { class: 'num count' }));
      }
      const s = state.session.get(e) || 0;
      tr.querySelector('.last').textContent = fmtCount(latest && latest.counts ? latest.counts[e] : 0);
      const cell = tr.querySelector('.count');
      cell.textContent = fmtCount(s);
      cell.style.setProperty('--share', `${Math.round((s / max) * 100)}%`);
      tr.classList.toggle('zero', s === 0);
      tbody.append(tr);  // appending an existing row moves it: this is the sort
    }
    $('#session-total').textContent = fmtCount(state.sessionTotal);
    $('#session-windows').textContent =
      `${nf.format(state.sessionWindows)} window${state.sessionWindows === 1 ? '' : 's'} since page load`;
  }

  // ---------- subscriptions ----------

  async function pollSubs() {
    try {
      renderGrid(await api('/subscriptions'));
    } catch (e) {
      console.warn('subscriptions:', e.message);
    }
  }

  function renderGrid(map) {
    if (!map || typeof map !== 'object') return;
    state.subsMap = map;
    const st = state.stats || {};
    let clusters = num(st.clusters);
    let subscribers = num(st.subscribers);
    for (const key of Object.keys(map)) {
      clusters = Math.max(clusters, parseInt(key.slice(0, 1), 10) || 0);
      subscribers = Math.max(subscribers, parseInt(key.slice(1), 10) || 0);
    }
    const mine = state.sub ? String(state.sub.subscription_key || `${state.sub.cluster_id}${state.sub.subscriber_id}`) : '';
    let total = 0;
    let maxN = 1;
    for (const ids of Object.values(map)) maxN = Math.max(maxN, Array.isArray(ids) ? ids.length : 0);

    const head = h('tr', null, h('td', { 'aria-hidden': 'true', style: 'background:none;border:0' }));
    for (let s = 1; s <= subscribers; s++) head.append(h('th', { scope: 'col', text: `sub ${s}` }));
    const body = [];
    for (let c = 1; c <= clusters; c++) {
      const row = h('tr', null, h('th', { scope: 'row', text: `cluster ${c}` }));
      for (let s = 1; s <= subscribers; s++) {
        const key = `${c}${s}`;
        const ids = Array.isArray(map[key]) ? map[key] : [];
        total += ids.length;
        const names = ids.slice(0, 12).join(', ') + (ids.length > 12 ? ` and ${ids.length - 12} more` : '');
        row.append(h('td', {
          'data-key': key,
          class: key === mine ? 'mine' : null,
          title: ids.length ? names : 'no clients',
          style: `--heat:${(0.05 + 0.45 * (ids.length / maxN)).toFixed(2)}`,
        },
        h('span', { class: 'n', text: nf.format(ids.length) }),
        h('span', { class: 'sr-only', text: ` client${ids.length === 1 ? '' : 's'}${key === mine ? ', including this page' : ''}` })));
      }
      body.push(row);
    }
    const table = $('#subs-grid');
    const caption = table.querySelector('caption');
    table.replaceChildren(caption, h('thead', null, head), h('tbody', null, body));
    $('#subs-total').textContent = `${nf.format(total)} client${total === 1 ? '' : 's'}`;
  }

  function renderWhoami() {
    const s = state.sub;
    if (!s) return;
    $('#whoami').textContent =
      `${s.client_id || state.clientId} · cluster ${s.cluster_id} · subscriber ${s.subscriber_id} · key ${s.subscription_key ?? ''}`;
  }

  // ---------- stats ----------

  async function pollStats() {
    let st;
    try {
      st = await api('/stats');
    } catch (e) {
      return;
    }
    const now = performance.now();
    state.stats = st;
    if (num(st.window_ms) > 0) state.windowMs = st.window_ms;
    const prev = state.prevStats;
    if (prev) {
      const dt = (now - prev.t) / 1000;
      const rate = (a, b) => (b >= a && dt > 0 ? (b - a) / dt : null);
      const ing = rate(num(prev.st.events_accepted_total), num(st.events_accepted_total));
      const del = rate(num(prev.st.messages_delivered_total), num(st.messages_delivered_total));
      $('#ingest-rate').textContent = ing == null ? '–' : ing < 10 ? nf1.format(ing) : nf.format(Math.round(ing));
      $('#delivery-rate').textContent = del == null ? '–' : del < 10 ? nf1.format(del) : nf.format(Math.round(del));
    }
    state.prevStats = { t: now, st };
    $('#clients').textContent = fmtCount(st.connected_clients);
    $('#windows-published').textContent = fmtCount(st.windows_published_total);
    $('#rejected-total').textContent = fmtCount(st.events_rejected_total);

    if (Array.isArray(st.emojis) && st.emojis.length && st.emojis.join() !== state.emojis.join()) {
      state.emojis = st.emojis.map(String);
      renderSendButtons();
      scheduleRender();
    }
    setIngestUrl(st.ingest_url);
  }

  // ---------- send panel ----------

  function setIngestUrl(raw) {
    let url = null;
    if (typeof raw === 'string' && raw) {
      try {
        const u = new URL(raw, location.href);
        // A wildcard bind address is not something a browser can reach: use the host this page came from.
        if (['0.0.0.0', '[::]', '::'].includes(u.hostname)) u.hostname = location.hostname;
        url = u.origin;
      } catch { url = null; }
    }
    if (url === state.ingestUrl) return;
    state.ingestUrl = url;
    for (const b of document.querySelectorAll('#send button')) b.disabled = !url;
    $('#send-status').textContent = url ? `Sends to ${url}` : 'Ingest address unknown (GET /stats has no ingest_url).';
  }

  function renderSendButtons() {
    const box = $('#send');
    box.replaceChildren(...state.emojis.map((e) => h('button', {
      type: 'button',
      'data-emoji': e,
      'aria-label': `Send ${e}`,
      disabled: !state.ingestUrl,
      onclick: () => send(e),
      text: e,
    })));
  }

  async function send(emoji) {
    if (!state.ingestUrl) return;
    const burst = $('#burst').checked;
    const event = { emoji, client_id: state.clientId };
    const status = $('#send-status');
    try {
      const res = await fetch(state.ingestUrl + (burst ? '/emojis' : '/emoji'), {
        method: 'POST',
        mode: 'cors',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(burst ? Array.from({ length: 10 }, () => event) : event),
        signal: AbortSignal.timeout(5000),
      });
      if (!res.ok) {
        let msg = `HTTP ${res.status}`;
        try { msg = (await res.json()).error || msg; } catch { /* not JSON */ }
        status.textContent = `${emoji} not accepted: ${msg}`;
        return;
      }
      status.textContent = `Sent ${burst ? '10 × ' : ''}${emoji}`;
    } catch (e) {
      status.textContent = `Could not reach the ingest server (${e.name === 'TimeoutError' ? 'timeout' : 'network error'}).`;
    }
  }

  // ---------- start ----------

  function start() {
    renderSendButtons();
    renderTotals();
    setPaused(reducedMotion.matches);
    $('#pause').addEventListener('click', () => setPaused(!state.paused));
    reducedMotion.addEventListener('change', (e) => setPaused(e.matches));
    document.addEventListener('visibilitychange', () => {
      if (document.hidden) return;
      // Catch up on windows missed while the tab was in the background.
      scheduleRender();
    });
    new ResizeObserver(() => scheduleRender()).observe($('#chart'));
    window.addEventListener('pagehide', () => {
      const body = new Blob([JSON.stringify({ client_id: state.clientId })], { type: 'application/json' });
      navigator.sendBeacon('/unsubscribe', body);
    });

    pollStats();
    setInterval(pollStats, STATS_EVERY_MS);
    setInterval(pollSubs, SUBS_EVERY_MS);
    setInterval(watchdog, 1000);
    loadHistory().then(connect);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
