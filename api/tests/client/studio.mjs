// Drives the studio page in headless Chromium (Debian's, never a downloaded one) as a host and a
// guest in two browser contexts: create a room, join by the invite link, record, stop, and wait
// for both files on both pages. Screenshots of each stage go to the artifacts folder; the result
// is one JSON line on stdout.
//
// node studio.mjs <api url> <admin key> <artifacts dir> <seconds to record> [scenario]
//
// Scenarios: `basic`; `outage`, which prints {"event":"cut-storage"} two seconds into the
// recording for the test to take storage away; `reload`, which slows the guest's uploads so that
// chunks pile up, and reloads the guest's page after the stop.
import { launchChromium } from './chromium.mjs';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [apiUrl, adminKey, artifacts, secondsArg] = process.argv.slice(2);
const seconds = Number(secondsArg || 5);
const scenario = process.argv[6] || 'basic';
mkdirSync(artifacts, { recursive: true });
const log = (...a) => console.error('[studio]', ...a);

const browser = await launchChromium();
const result = { scenario, stages: {}, progress: {}, links: {}, mixdown: {}, readyOrder: {}, errors: {}, errorsSeen: {}, safe: {}, names: {}, recordedAs: {}, mimeType: null };
try {
  const context = async (name) => {
    const ctx = await browser.newContext({ viewport: { width: 1100, height: 800 } });
    await ctx.grantPermissions(['camera', 'microphone'], { origin: apiUrl });
    // Every stage a participant row ever shows, noted as the page renders it: a stage shorter
    // than the watcher's poll (an upload that drains between two polls) is still seen.
    await ctx.addInitScript(() => {
      window.__mixdownStages = [];
      const note = () => document.querySelectorAll('#participants tbody tr[data-stage]').forEach((tr) => {
        if (!window.__mixdownStages.includes(tr.dataset.stage)) window.__mixdownStages.push(tr.dataset.stage);
      });
      new MutationObserver(note).observe(document, {
        subtree: true, childList: true, attributes: true, attributeFilter: ['data-stage'],
      });
    });
    const page = await ctx.newPage();
    page.on('console', (m) => log(name, m.type(), m.text()));
    page.on('pageerror', (e) => log(name, 'page error', e.message));
    result.stages[name] = [];
    result.progress[name] = [];
    result.errorsSeen[name] = [];
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
  log('invite', invite);

  await guest.goto(invite);
  await guest.fill('#guest-name', 'Guest');
  await guest.click('#join-form button');
  await guest.waitForSelector('#room:not([hidden])');
  result.inviteLeftInUrl = guest.url().includes('invite=');

  await host.waitForSelector('#record:not([disabled])', { timeout: 30000 });
  // In the basic run the guest picks VP8, so one track is copied (H.264) and one encoded.
  if (scenario === 'basic') await guest.selectOption('#format', 'vp8');
  result.chosen = {};
  for (const [name, page] of Object.entries(pages)) result.chosen[name] = await page.inputValue('#format');
  result.mimeType = await host.evaluate(() =>
    ['video/webm;codecs=h264,opus', 'video/webm;codecs=vp8,opus'].find((t) => MediaRecorder.isTypeSupported(t)) || null);
  if (scenario === 'reload') {
    // A slow connection: every PUT to storage waits 1.5 s.
    await guest.route((url) => !url.href.startsWith(apiUrl), async (route) => {
      if (route.request().method() === 'PUT') await new Promise((r) => setTimeout(r, 1500));
      await route.continue();
    });
  }
  const noteErrors = async () => {
    for (const [name, page] of Object.entries(pages)) {
      const text = (await page.textContent('#error').catch(() => '')) || '';
      if (text.trim() && !result.errorsSeen[name].includes(text.trim())) result.errorsSeen[name].push(text.trim());
    }
  };
  // The wall time from the record click to the stop click bounds how long the files can be; on
  // a loaded machine it runs past `seconds` (pages and screenshots answer late).
  const recordClicked = Date.now();
  await host.click('#record');
  for (const [name, page] of Object.entries(pages)) {
    await page.waitForSelector('tr[data-stage="recording"]', { timeout: 30000 });
    result.stages[name].push('recording');
    await page.waitForSelector('#me[data-mime-type]', { timeout: 30000 });
    result.recordedAs[name] = await page.getAttribute('#me', 'data-mime-type');
  }
  const started = Date.now();
  if (scenario === 'outage') {
    await host.waitForTimeout(2000);
    console.log(JSON.stringify({ event: 'cut-storage' }));
  }
  while (Date.now() - started < seconds * 1000) {
    await noteErrors();
    await host.waitForTimeout(250);
  }
  await Promise.all(Object.keys(pages).map((name) => shot(name, 'recording')));
  await host.click('#stop');
  result.recordedSeconds = (Date.now() - recordClicked) / 1000;

  if (scenario === 'reload') {
    // Chunks are still queued on the guest's page: it warns before unloading, and is reloaded.
    await guest.waitForSelector('tr[data-stage="uploading"]', { timeout: 30000 });
    // The recorder has handed over its last chunk (it is in the spool), so only uploads are left.
    await guest.waitForFunction(() => !document.getElementById('me').textContent.startsWith('Recording'));
    result.unsentBeforeReload = await guest.getAttribute('#safe', 'data-safe') === 'false';
    await shot('guest', 'before-reload');
    result.beforeUnloadAsked = false;
    guest.once('dialog', async (dialog) => {
      result.beforeUnloadAsked = dialog.type() === 'beforeunload';
      await dialog.accept();
    });
    await guest.unroute(() => true).catch(() => {});
    await guest.unrouteAll({ behavior: 'ignoreErrors' }).catch(() => {});
    await guest.reload();
    await guest.waitForSelector('#room:not([hidden])');
    result.stages.guest.push('reloaded');
  }

  // Watch every page until both rows are Ready, noting each stage and progress value seen.
  const watch = async (name) => {
    const page = pages[name];
    const shots = new Set();
    const deadline = Date.now() + 240000;
    for (;;) {
      const rows = await page.$$eval('#participants tbody tr', (trs) => trs.map((tr) => ({
        participant: tr.dataset.participant,
        stage: tr.dataset.stage,
        progress: tr.querySelector('progress') ? Number(tr.querySelector('progress').value) : null,
      })));
      for (const stage of await page.evaluate(() => window.__mixdownStages || [])) {
        if (!result.stages[name].includes(stage)) result.stages[name].push(stage);
      }
      for (const row of rows) {
        const last = result.stages[name][result.stages[name].length - 1];
        if (last !== row.stage && !result.stages[name].includes(row.stage)) result.stages[name].push(row.stage);
        if (row.stage === 'processing' && row.progress !== null) result.progress[name].push(row.progress);
        if (['uploading', 'uploaded', 'processing'].includes(row.stage) && !shots.has(row.stage)) {
          shots.add(row.stage);
          await shot(name, row.stage);
        }
      }
      const error = await page.textContent('#error');
      if (error && error.trim()) {
        result.errors[name] = error.trim();
        if (!result.errorsSeen[name].includes(error.trim())) result.errorsSeen[name].push(error.trim());
      } else {
        delete result.errors[name];
      }
      // Done once every row is Ready (or Failed) and processing ended: the participants' files
      // are ready while the mixdown is still made.
      const phase = await page.getAttribute('#ready', 'data-phase');
      if (rows.length === 2 && rows.every((r) => r.stage === 'ready' || r.stage === 'failed')
        && ['Succeeded', 'Failed'].includes(phase)) {
        await page.waitForSelector('#safe[data-safe="true"]', { timeout: 30000 }).catch(() => {});
        result.safe[name] = await page.getAttribute('#safe', 'data-safe');
        await shot(name, 'ready');
        result.links[name] = await page.$$eval('#files a.download[data-kind="track"]', (as) => as.map((a) => a.href));
        result.readyOrder[name] = await page.$$eval('#files li', (lis) => lis.map((li) => li.dataset.kind));
        result.mixdown[name] = {
          state: await page.getAttribute('#ready', 'data-mixdown'),
          said: await page.textContent('#mixdown-status'),
          url: await page.$eval('#files a.download[data-kind="mixdown"]', (a) => a.href).catch(() => null),
        };
        result.names[name] = await page.$$eval('#participants tbody tr td:first-child', (tds) => tds.map((td) => td.textContent));
        return;
      }
      if (Date.now() > deadline) throw new Error(`${name}: not Ready in time; rows ${JSON.stringify(rows)}`);
      await page.waitForTimeout(150);
    }
  };
  await Promise.all(Object.keys(pages).map(watch));
  console.log(JSON.stringify({ ok: true, ...result }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.stack || e), ...result }));
} finally {
  await browser.close();
}
