// The mixdown's timing through the real page: a host records, a guest joins 2 s later (so its
// recorder starts about 2 s late), and each page's microphone is a known sound: a WebAudio
// oscillator (440 Hz for the host, 1320 Hz for the guest) behind a gain that is silent until a
// burst opens it for 250 ms. Both pages burst at one instant of this machine's clock, the guest
// once more later; the guest's page clock runs 40 s ahead (Date.now and performance.timeOrigin),
// so only its estimate of the server's clock can place its track. The camera stays Chromium's
// fake one. The result is one JSON line on stdout: the burst instants (machine clock, ms since
// the epoch), the recording's start as the server keeps it, what the Ready list showed, and the
// mixdown's link.
//
// node sync.mjs <api url> <admin key> <artifacts dir>
import { launchChromium } from './chromium.mjs';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [apiUrl, adminKey, artifacts] = process.argv.slice(2);
mkdirSync(artifacts, { recursive: true });
const log = (...a) => console.error('[sync]', ...a);

const JOIN_LATE_MS = 2000;
const BURST_MS = 250;
const FREQUENCIES = { host: 440, guest: 1320 };
const SKEW_MS = { host: 0, guest: 40000 };

const browser = await launchChromium();
const result = {
  frequencies: FREQUENCIES, skewMs: SKEW_MS, bursts: [], clockLog: {}, readyOrder: {}, readySeen: {},
  mixdown: {}, links: {}, errors: {}, audio: {},
};
try {
  const context = async (name) => {
    const ctx = await browser.newContext({ viewport: { width: 1100, height: 800 } });
    await ctx.grantPermissions(['camera', 'microphone'], { origin: apiUrl });
    await ctx.addInitScript(({ freq, skew, burstMs }) => {
      const realNow = Date.now.bind(Date);
      const origin = performance.timeOrigin;
      // How far the page's high-resolution clock (timeOrigin + now(), what the page times by)
      // is from the machine's wall clock before any skew: Chromium's differs by some ms.
      window.__clockTruth = () => {
        const before = realNow();
        const page = origin + performance.now();
        return page - (before + realNow()) / 2;
      };
      if (skew) {
        // This page's clock runs `skew` ms ahead of the machine's.
        Object.defineProperty(Performance.prototype, 'timeOrigin', { configurable: true, get: () => origin + skew });
        Date.now = () => realNow() + skew;
      }
      // The microphone: the oscillator behind a gain, silent but for the bursts.
      let audio = null;
      const sound = () => {
        if (audio) return audio;
        const ctx = new AudioContext({ sampleRate: 48000 });
        const osc = ctx.createOscillator();
        osc.frequency.value = freq;
        const gain = ctx.createGain();
        gain.gain.value = 0;
        const dest = ctx.createMediaStreamDestination();
        osc.connect(gain).connect(dest);
        osc.start();
        audio = { ctx, gain, dest };
        return audio;
      };
      const getUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
      navigator.mediaDevices.getUserMedia = async (constraints) => {
        const stream = await getUserMedia(constraints);
        if (!constraints || !constraints.audio) return stream;
        const { ctx, dest } = sound();
        await ctx.resume();
        for (const track of stream.getAudioTracks()) { stream.removeTrack(track); track.stop(); }
        stream.addTrack(dest.stream.getAudioTracks()[0].clone());
        return stream;
      };
      // A burst at `at` (the machine's clock, ms since the epoch), scheduled on the audio clock.
      window.__burstAt = (at, ms = burstMs) => {
        const { ctx, gain } = sound();
        const delay = Math.max(0, at - realNow()) / 1000;
        const start = ctx.currentTime + delay;
        gain.gain.setValueAtTime(1, start);
        gain.gain.setValueAtTime(0, start + ms / 1000);
        return { delay, state: ctx.state, baseLatency: ctx.baseLatency };
      };
      window.__burst = (ms = burstMs) => window.__burstAt(realNow(), ms);
      window.__audioState = () => {
        const { ctx } = sound();
        return { state: ctx.state, baseLatency: ctx.baseLatency, sampleRate: ctx.sampleRate };
      };
      // What the Ready list showed, as it rendered: whether the participants' files were there
      // under "Mixdown in progress…", and in which order the files came.
      window.__readySeen = { mixingWithFiles: false, mixing: false, orders: [] };
      new MutationObserver(() => {
        const said = document.getElementById('mixdown-status');
        const files = [...document.querySelectorAll('#files li')].map((li) => li.dataset.kind);
        const seen = window.__readySeen;
        if (said && !said.hidden && said.textContent.startsWith('Mixdown in progress')) {
          seen.mixing = true;
          if (files.includes('track')) seen.mixingWithFiles = true;
        }
        const order = files.join(',');
        if (order && !seen.orders.includes(order)) seen.orders.push(order);
      }).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
    }, { freq: FREQUENCIES[name], skew: SKEW_MS[name], burstMs: BURST_MS });
    const page = await ctx.newPage();
    result.clockLog[name] = [];
    page.on('console', (m) => {
      log(name, m.type(), m.text());
      if (m.text().startsWith('mixdown:')) result.clockLog[name].push(m.text());
    });
    page.on('pageerror', (e) => log(name, 'page error', e.message));
    return page;
  };
  const host = await context('host');
  const guest = await context('guest');
  const pages = { host, guest };
  const shot = (name, stage) =>
    pages[name].screenshot({ path: join(artifacts, `${name}-${stage}.png`), fullPage: true });

  await host.goto(apiUrl + '/');
  await host.fill('#admin-key', adminKey);
  await host.fill('#host-name', 'Host');
  await host.click('#create-form button');
  await host.waitForSelector('#room:not([hidden])');
  const invite = await host.inputValue('#invite-url');
  await host.waitForSelector('#record:not([disabled])', { timeout: 30000 });

  await host.click('#record');
  await host.waitForSelector('#me[data-mime-type]', { timeout: 30000 });
  const hostRecording = Date.now();
  const session = await host.evaluate(() => JSON.parse(localStorage.getItem('mixdown.session')));
  const listed = await host.evaluate(async ({ roomId, token }) => {
    const r = await fetch(`/api/rooms/${encodeURIComponent(roomId)}/recordings`, { headers: { Authorization: `Bearer ${token}` } });
    return r.json();
  }, session);
  const recording = (listed.recordings || [])[0] || {};
  result.recordingId = recording.recordingId;
  result.startedAt = recording.startedAt;
  result.hostToken = session.token;
  log('recording', JSON.stringify(recording));

  // The guest joins 2 s later: its page hears of the recording in the room's snapshot.
  await host.waitForTimeout(Math.max(0, hostRecording + JOIN_LATE_MS - Date.now()));
  await guest.goto(invite);
  await guest.fill('#guest-name', 'Guest');
  await guest.click('#join-form button');
  await guest.waitForSelector('#room:not([hidden])');
  await guest.waitForSelector('#me[data-mime-type]', { timeout: 30000 });
  await guest.waitForFunction(() => /Recording: [1-9]/.test(document.getElementById('me').textContent), null, { timeout: 30000 });
  for (const [name, page] of Object.entries(pages)) {
    result.audio[name] = await page.evaluate(() => window.__audioState());
  }

  // One burst in both pages at one instant, a second one in the guest's page alone.
  const first = Date.now() + 1500;
  const second = first + 2500;
  for (const [name, page] of Object.entries(pages)) await page.evaluate((at) => window.__burstAt(at), first);
  await guest.evaluate((at) => window.__burstAt(at), second);
  result.bursts = [{ at: first, pages: ['host', 'guest'] }, { at: second, pages: ['guest'] }];
  await host.waitForTimeout(second + BURST_MS + 1500 - Date.now());
  await Promise.all(Object.keys(pages).map((name) => shot(name, 'recording')));
  await host.click('#stop');
  result.stoppedAt = Date.now();

  // Until processing ended on both pages and the mixdown is settled (or there is none).
  const watch = async (name) => {
    const page = pages[name];
    const deadline = Date.now() + 300000;
    let shotMixing = false;
    for (;;) {
      const phase = await page.getAttribute('#ready', 'data-phase');
      const mixdown = await page.getAttribute('#ready', 'data-mixdown');
      if (mixdown === 'mixing' && !shotMixing) { shotMixing = true; await shot(name, 'mixing'); }
      const error = ((await page.textContent('#error')) || '').trim();
      if (error) result.errors[name] = error; else delete result.errors[name];
      if (['Succeeded', 'Failed'].includes(phase) && mixdown !== 'mixing') {
        await page.waitForSelector('#safe[data-safe="true"]', { timeout: 30000 }).catch(() => {});
        await shot(name, 'ready');
        result.readyOrder[name] = await page.$$eval('#files li', (lis) => lis.map((li) => ({
          kind: li.dataset.kind, text: li.textContent,
        })));
        result.readySeen[name] = await page.evaluate(() => window.__readySeen);
        result.links[name] = await page.$$eval('#files a.download[data-kind="track"]', (as) => as.map((a) => a.href));
        result.mixdown[name] = {
          phase,
          state: mixdown,
          said: await page.textContent('#mixdown-status'),
          url: await page.$eval('#files a.download[data-kind="mixdown"]', (a) => a.href).catch(() => null),
        };
        return;
      }
      if (Date.now() > deadline) throw new Error(`${name}: processing not over in time (phase ${phase}, mixdown ${mixdown})`);
      await page.waitForTimeout(200);
    }
  };
  await Promise.all(Object.keys(pages).map(watch));
  result.pageClockAhead = {};
  for (const [name, page] of Object.entries(pages)) {
    result.pageClockAhead[name] = SKEW_MS[name] + await page.evaluate(() => window.__clockTruth());
  }
  console.log(JSON.stringify({ ok: true, ...result }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.stack || e), ...result }));
} finally {
  await browser.close();
}
