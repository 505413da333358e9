// One run of the studio benchmark: a host and a guest (two browser contexts in Debian's headless
// Chromium) record `seconds` in `format`, the host stops, and the run times stop → both files
// Ready on both pages. A socket.io client in the room (the host's token) notes when each state
// of the RecordingJob reaches the room, on the same clock as the pages, for the parts.
//
// node bench-studio.mjs <studio url> <admin key> <seconds> <format: h264|vp8|vp9>
//
// Each run is a new room, so the room hears only this recording.
//
// Prints one JSON line: {ok, mimeType, stoppedAt, started, pending, running,
// fed, succeeded, ready: {host, guest}} (milliseconds since the epoch).
import { launchChromium } from './chromium.mjs';
import { io } from 'socket.io-client';

const [studio, adminKey, secondsArg, format] = process.argv.slice(2);
const url = studio.replace(/\/$/, '');
const seconds = Number(secondsArg || 60);
const log = (...a) => console.error('[bench]', ...a);

const browser = await launchChromium();
const result = { format, seconds, ready: {} };
let socket;
try {
  const context = async (name) => {
    const ctx = await browser.newContext({ viewport: { width: 1100, height: 800 } });
    await ctx.grantPermissions(['camera', 'microphone'], { origin: url });
    const page = await ctx.newPage();
    page.on('pageerror', (e) => log(name, 'page error', e.message));
    return page;
  };
  const host = await context('host');
  const guest = await context('guest');
  const pages = { host, guest };
  await host.goto(url + '/');
  await host.fill('#admin-key', adminKey);
  await host.fill('#host-name', 'Host');
  await host.click('#create-form button');
  await host.waitForSelector('#room:not([hidden])');
  const invite = await host.inputValue('#invite-url');
  await guest.goto(invite);
  await guest.fill('#guest-name', 'Guest');
  await guest.click('#join-form button');
  await guest.waitForSelector('#room:not([hidden])');
  for (const page of Object.values(pages)) {
    await page.waitForSelector('#format option', { state: 'attached' });
    const offered = await page.$$eval('#format option', (os) => os.map((o) => o.value));
    if (!offered.includes(format)) throw new Error(`this browser does not record ${format}: ${offered}`);
    await page.selectOption('#format', format);
  }

  // The room as a client hears it: when each state first arrives.
  const session = JSON.parse(await host.evaluate(() => localStorage.getItem('mixdown.session')));
  socket = io(url, { auth: { token: session.token }, transports: ['websocket'] });
  const seen = (payload) => {
    const now = Date.now();
    const phase = payload.phase;
    if (phase === 'Pending' && !result.pending) result.pending = now;
    if (phase === 'Running' && !result.running) result.running = now;
    if (phase === 'Running' && payload.progress >= 99 && !result.fed) result.fed = now;
    if (phase === 'Succeeded' && !result.succeeded) result.succeeded = now;
    if (phase === 'Failed') result.failed = payload.message || payload.reason || 'failed';
  };
  socket.on('video-processing-started', (p) => { if (!result.started) result.started = Date.now(); seen(p); });
  socket.on('video-processing-update', seen);
  socket.on('video-processing-error', (p) => { result.failed = p.message || p.reason; });
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', reject);
  });

  await host.waitForSelector('#record:not([disabled])', { timeout: 30000 });
  await host.click('#record');
  for (const page of Object.values(pages)) {
    await page.waitForSelector('tr[data-stage="recording"]', { timeout: 30000 });
  }
  result.mimeType = await host.getAttribute('#me', 'data-mime-type');
  await host.waitForTimeout(seconds * 1000);
  result.stoppedAt = Date.now();
  await host.click('#stop');

  // Both pages show both files Ready (checked every 20 ms: the figures' resolution).
  const deadline = Date.now() + 600000;
  await Promise.all(Object.entries(pages).map(async ([name, page]) => {
    for (;;) {
      const stages = await page.$$eval('#participants tbody tr', (trs) => trs.map((tr) => tr.dataset.stage));
      if (stages.length === 2 && stages.every((s) => s === 'ready')) {
        result.ready[name] = Date.now();
        return;
      }
      if (stages.includes('failed') || result.failed) throw new Error(`${name}: failed: ${result.failed}`);
      if (Date.now() > deadline) throw new Error(`${name}: not Ready after 10 minutes: ${stages}`);
      await page.waitForTimeout(20);
    }
  }));
  console.log(JSON.stringify({ ok: true, ...result }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.stack || e), ...result }));
} finally {
  if (socket) socket.close();
  await browser.close();
}
