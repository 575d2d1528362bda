// Real-browser test of the live dashboard against a real server.
//
//   EMOSTREAM_BIN=target/release/emostream node tests/browser/dashboard.test.mjs
//
// Spawns `$EMOSTREAM_BIN up --ingest-addr 127.0.0.1:<free> --api-addr 127.0.0.1:<free> --window 1s`, drives Debian's
// Chromium through playwright-core (never downloads a browser), sends known emoji mixes over HTTP and checks what the
// page shows. Exit code 0 when every step passed, 1 otherwise. The server is killed at the end, also on failure.
//
// Env: EMOSTREAM_BIN (required), CHROMIUM (default /usr/bin/chromium), EMOSTREAM_EXTRA_ARGS (appended to `up`),
//      SURGE_COUNT (default 300), QUIET_WINDOWS (default 6), SCREENSHOT (default docs/dashboard.png).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = process.env.EMOSTREAM_BIN;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const WINDOW_MS = 1000;
const SURGE_COUNT = Number(process.env.SURGE_COUNT || 300);
const QUIET_WINDOWS = Number(process.env.QUIET_WINDOWS || 6);
const SCREENSHOT = path.resolve(ROOT, process.env.SCREENSHOT || 'docs/dashboard.png');
const OVERALL_TIMEOUT_MS = 240_000;
const MIX = { '😀': 30, '😂': 20, '👍': 10 };

const log = (...a) => console.log('#', ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------- server ----------

let server = null;          // { child, output: string[], exited: Promise }
let ingestPort = 0;
let apiPort = 0;
const api = (p) => `http://127.0.0.1:${apiPort}${p}`;
const ingest = (p) => `http://127.0.0.1:${ingestPort}${p}`;

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function startServer() {
  const args = ['up', '--ingest-addr', `127.0.0.1:${ingestPort}`, '--api-addr', `127.0.0.1:${apiPort}`,
    '--window', '1s', ...(process.env.EMOSTREAM_EXTRA_ARGS || '').split(/\s+/).filter(Boolean)];
  log(`starting: ${BIN} ${args.join(' ')}`);
  const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env } });
  const output = [];
  const keep = (buf) => {
    for (const line of buf.toString().split('\n')) if (line.trim()) output.push(line);
    if (output.length > 300) output.splice(0, output.length - 300);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  child.on('error', (e) => output.push(`spawn error: ${e.message}`));
  server = { child, output, exited, done: false };
  exited.then(() => { server && server.child === child && (server.done = true); });
  return server;
}

async function stopServer() {
  if (!server || server.done) return;
  const s = server;
  s.child.kill('SIGTERM');
  const t = setTimeout(() => s.child.kill('SIGKILL'), 5000);
  await s.exited;
  clearTimeout(t);
}

process.on('exit', () => { if (server && !server.done) try { server.child.kill('SIGKILL'); } catch { /* gone */ } });
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { console.log(`# ${sig}: stopping`); process.exit(1); });

async function waitHealthy(timeoutMs = 30000) {
  const until = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < until) {
    if (server.done) throw new Error(`server exited before it was healthy:\n${server.output.slice(-40).join('\n')}`);
    try {
      const res = await fetch(api('/healthz'), { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) return;
      last = `HTTP ${res.status}`;
    } catch (e) {
      last = e.cause?.code || e.message;
    }
    await sleep(100);
  }
  throw new Error(`GET /healthz did not answer 200 within ${timeoutMs} ms (last: ${last})`);
}

async function postJson(url, body) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10000),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`POST ${url}: HTTP ${res.status} ${text}`);
  return JSON.parse(text);
}

/** Sends events in one POST /emojis and checks every one was accepted. */
async function sendBatch(counts, clientId = 'browser-test') {
  const events = [];
  for (const [emoji, n] of Object.entries(counts)) for (let i = 0; i < n; i++) events.push({ emoji, client_id: clientId });
  for (let i = events.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [events[i], events[j]] = [events[j], events[i]];
  }
  const ans = await postJson(ingest('/emojis'), events);
  if (ans.accepted !== events.length || ans.rejected !== 0) {
    throw new Error(`POST /emojis accepted ${ans.accepted}/${events.length}, rejected ${ans.rejected}: ${JSON.stringify(ans.errors)}`);
  }
  for (const [emoji, n] of Object.entries(counts)) expected[emoji] = (expected[emoji] || 0) + n;
}

// ---------- page helpers ----------

/** What this test sent since the page loaded: the page's session totals must equal it exactly. */
const expected = {};
const expectedTotal = () => Object.values(expected).reduce((a, b) => a + b, 0);
const toInt = (s) => (s == null ? NaN : Number(String(s).replace(/[^\d-]/g, '')));

async function pageCounts(page) {
  return page.evaluate((emojis) => {
    const out = { total: document.querySelector('#session-total')?.textContent ?? null, rows: {} };
    for (const e of emojis) {
      const cells = document.querySelectorAll(`[data-emoji="${e}"] .count`);
      out.rows[e] = cells.length === 1 ? cells[0].textContent : `(${cells.length} matches)`;
    }
    return out;
  }, Object.keys(expected));
}

async function waitFor(what, fn, timeoutMs, everyMs = 200) {
  const until = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last.ok) return last;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last seen: ${last.seen}`);
    await sleep(everyMs);
  }
}

async function expectSessionTotals(page, timeoutMs = 15000) {
  const want = expectedTotal();
  await waitFor(`#session-total = ${want}`, async () => {
    const c = await pageCounts(page);
    return { ok: toInt(c.total) === want, seen: JSON.stringify(c) };
  }, timeoutMs);
  // A couple more windows must change nothing: no window is counted twice (e.g. the replay on connect).
  await sleep(2.5 * WINDOW_MS);
  const c = await pageCounts(page);
  const bad = [];
  if (toInt(c.total) !== want) bad.push(`#session-total ${c.total} != ${want}`);
  for (const [e, n] of Object.entries(expected)) {
    if (toInt(c.rows[e]) !== n) bad.push(`[data-emoji="${e}"] .count ${c.rows[e]} != ${n}`);
  }
  if (bad.length) throw new Error(bad.join('; '));
  return c;
}

// ---------- steps ----------

let browser = null;
let context = null;
let page = null;
const pageErrors = [];

const steps = [
  ['server starts and answers /healthz', async () => {
    if (!BIN) throw new Error('set EMOSTREAM_BIN to the emostream binary (e.g. target/release/emostream)');
    if (!fs.existsSync(BIN)) throw new Error(`EMOSTREAM_BIN=${BIN} does not exist`);
    ingestPort = await freePort();
    do apiPort = await freePort(); while (apiPort === ingestPort);
    startServer();
    await waitHealthy();
    log(`api http://127.0.0.1:${apiPort}  ingest http://127.0.0.1:${ingestPort}`);
  }],

  ['dashboard loads and goes live', async () => {
    if (!fs.existsSync(CHROMIUM)) throw new Error(`no browser at ${CHROMIUM}: run scripts/browser-setup`);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    log(`chromium ${browser.version()}`);
    context = await browser.newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
    page = await context.newPage();
    page.on('pageerror', (e) => { pageErrors.push(e.message); console.log(`# page error: ${e.message}`); });
    page.on('console', (m) => { if (m.type() === 'error') log(`browser console: ${m.text()}`); });
    const res = await page.goto(api('/'), { waitUntil: 'load' });
    if (!res || res.status() !== 200) throw new Error(`GET / answered ${res && res.status()}`);
    const css = await page.evaluate(() => getComputedStyle(document.querySelector('.panel')).borderRadius);
    if (!css || css === '0px') throw new Error('style.css did not apply (is GET /style.css served?)');
    await page.waitForSelector('#status[data-status="live"]', { timeout: 20000 });
    if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join('; ')}`);
  }],

  ['page subscribed itself and shows it in the subscription grid', async () => {
    await waitFor('a client in #subs-grid', async () => {
      const n = await page.$$eval('#subs-grid td[data-key] .n', (els) => els.reduce((a, e) => a + Number(e.textContent.replace(/\D/g, '') || 0), 0));
      return { ok: n >= 1, seen: `${n} clients` };
    }, 10000);
    const subs = await (await fetch(api('/subscriptions'))).json();
    const ids = Object.values(subs).flat();
    if (!ids.some((id) => String(id).startsWith('dashboard-'))) throw new Error(`GET /subscriptions has no dashboard-* client: ${JSON.stringify(subs)}`);
  }],

  ['keyboard: pause toggle reachable by Tab, operable, focus visible; live region present', async () => {
    await page.locator('body').focus();
    let onPause = false;
    for (let i = 0; i < 4 && !onPause; i++) {
      await page.keyboard.press('Tab');
      onPause = await page.evaluate(() => document.activeElement && document.activeElement.id === 'pause');
    }
    if (!onPause) throw new Error('#pause not reached within 4 Tab presses');
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    if (outline === 'none') throw new Error('focused #pause has no visible outline');
    const before = await page.getAttribute('#pause', 'aria-pressed');
    await page.keyboard.press('Space');
    const after = await page.getAttribute('#pause', 'aria-pressed');
    if (before === after) throw new Error(`Space did not toggle #pause (aria-pressed stayed ${before})`);
    await page.keyboard.press('Enter');
    if (await page.getAttribute('#pause', 'aria-pressed') !== before) throw new Error('Enter did not toggle #pause back');
    const live = await page.getAttribute('#window-summary', 'aria-live');
    if (live !== 'polite' && live !== 'assertive') throw new Error(`#window-summary aria-live=${live}`);
  }],

  ['session counts equal exactly what was sent (30×😀, 20×😂, 10×👍)', async () => {
    // Session totals only count windows that closed after the page loaded; nothing was sent before.
    const start = await pageCounts(page);
    if (toInt(start.total) !== 0) throw new Error(`#session-total is ${start.total} before anything was sent`);
    await sendBatch(MIX);
    const c = await expectSessionTotals(page);
    log(`page shows ${JSON.stringify(c)}`);
  }],

  ['send panel: clicking 👍 posts to the ingest address (CORS) and is counted', async () => {
    const btn = page.locator('#send button[data-emoji="👍"]');
    await btn.waitFor({ timeout: 10000 });
    await waitFor('send buttons enabled (GET /stats ingest_url)', async () => {
      const ok = await btn.isEnabled();
      return { ok, seen: await page.textContent('#send-status') };
    }, 10000);
    await btn.click();
    await waitFor('"Sent" confirmation', async () => {
      const t = await page.textContent('#send-status');
      return { ok: /^Sent/.test(t), seen: t };
    }, 10000);
    expected['👍'] += 1;
    await expectSessionTotals(page);
  }],

  ['a laughter surge shows in #surges', async () => {
    log(`${QUIET_WINDOWS} quiet windows to build a baseline, then ${SURGE_COUNT}×😂 in one window`);
    for (let i = 0; i < QUIET_WINDOWS; i++) {
      await sendBatch({ '😀': 2, '😂': 1, '👍': 1 });
      await sleep(WINDOW_MS);
    }
    await sendBatch({ '😂': SURGE_COUNT });
    await page.waitForSelector('#surges li[data-emotion="laughter"]', { timeout: 15000 });
    const text = (await page.innerText('#surges li[data-emotion="laughter"]')).replace(/\s+/g, ' ').trim();
    log(`#surges: ${text}`);
    const mood = await page.textContent('#mood-value');
    if (!/^[+−±-]?\d/.test(mood.trim()) && mood.trim() !== '–') throw new Error(`#mood-value looks wrong: ${mood}`);
    await expectSessionTotals(page);
  }],

  ['screenshot with a live swarm on stage', async () => {
    // A few busy windows so the picture shows emoji in flight, then the totals must still be exact.
    for (let i = 0; i < 3; i++) {
      await sendBatch({ '😀': 40 + 10 * i, '😂': 25, '👍': 15 + 5 * i, '😢': 4 });
      await sleep(WINDOW_MS);
    }
    await waitFor('emoji floating on #stage', async () => {
      const n = await page.locator('#stage .floater').count();
      return { ok: n >= 4, seen: `${n} floaters` };
    }, 10000, 50);
    await sleep(300);
    fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    log(`screenshot: ${path.relative(process.cwd(), SCREENSHOT)}`);
    await expectSessionTotals(page);
  }],

  ['375×700 viewport: no horizontal overflow', async () => {
    await page.setViewportSize({ width: 375, height: 700 });
    await sleep(500);
    const m = await page.evaluate(() => {
      const vw = document.documentElement.clientWidth;
      const wide = [];
      for (const el of document.querySelectorAll('body *')) {
        const r = el.getBoundingClientRect();
        if (r.width && r.right > vw + 1 && !el.closest('.stage, .scroll-x, .sr-only, .hide-narrow, .skip')) {
          wide.push(`${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''}.${el.className} right=${Math.round(r.right)}`);
        }
      }
      return { vw, sw: document.documentElement.scrollWidth, bw: document.body.scrollWidth, wide: wide.slice(0, 5) };
    });
    if (m.sw > m.vw || m.bw > m.vw || m.wide.length) throw new Error(`overflow at 375 px: ${JSON.stringify(m)}`);
    const phone = path.join(os.tmpdir(), 'emostream-dashboard-375.png');
    await page.screenshot({ path: phone, fullPage: true });
    log(`phone screenshot: ${phone}`);
    await page.setViewportSize({ width: 1280, height: 900 });
  }],

  ['reconnects after a server restart and keeps counting exactly', async () => {
    await stopServer();
    await page.waitForSelector('#status[data-status="reconnecting"]', { timeout: 15000 });
    log('server stopped; page shows reconnecting');
    let tries = 0;
    for (;;) {
      startServer();
      try {
        await waitHealthy(15000);
        break;
      } catch (e) {
        if (++tries >= 5) throw e;
        await stopServer();
        await sleep(500);  // the old sockets may still hold the ports for a moment
      }
    }
    await page.waitForSelector('#status[data-status="live"]', { timeout: 30000 });
    const subs = await (await fetch(api('/subscriptions'))).json();
    if (!Object.values(subs).flat().some((id) => String(id).startsWith('dashboard-'))) {
      throw new Error(`after the restart GET /subscriptions has no dashboard-* client: ${JSON.stringify(subs)}`);
    }
    await sendBatch({ '😀': 5 });
    await expectSessionTotals(page);
  }],

  ['no uncaught page errors', async () => {
    if (pageErrors.length) throw new Error(pageErrors.join('; '));
  }],
];

async function main() {
  const killer = setTimeout(() => {
    console.log(`# overall timeout ${OVERALL_TIMEOUT_MS} ms`);
    process.exit(1);
  }, OVERALL_TIMEOUT_MS);
  let passed = 0;
  let failed = 0;
  let skipped = 0;
  console.log(`TAP version 13\n1..${steps.length}`);
  for (const [i, [name, fn]] of steps.entries()) {
    if (failed) {
      skipped++;
      console.log(`ok ${i + 1} - ${name} # SKIP earlier step failed`);
      continue;
    }
    const t0 = Date.now();
    try {
      await fn();
      passed++;
      console.log(`ok ${i + 1} - ${name} (${Date.now() - t0} ms)`);
    } catch (e) {
      failed++;
      console.log(`not ok ${i + 1} - ${name}\n  ---\n  error: ${String(e && e.message || e).split('\n').join('\n  ')}\n  ...`);
    }
  }
  if (failed && page) {
    const shot = path.join(os.tmpdir(), 'emostream-dashboard-failure.png');
    await page.screenshot({ path: shot, fullPage: true }).then(() => log(`failure screenshot: ${shot}`), () => {});
  }
  if (failed && server) {
    console.log('# last server output:');
    for (const line of server.output.slice(-30)) console.log(`#   ${line}`);
  }
  await browser?.close().catch(() => {});
  await stopServer();
  clearTimeout(killer);
  console.log(`dashboard: ${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
  process.exit(failed ? 1 : 0);
}

main().catch(async (e) => {
  console.log(`# crashed: ${e && e.stack || e}`);
  await browser?.close().catch(() => {});
  await stopServer().catch(() => {});
  process.exit(1);
});
