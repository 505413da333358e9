// Mixdown Studio: records this participant in the browser and uploads the recording in chunks,
// straight to storage through presigned URLs, while the room hears how everyone's uploads and the
// processing go.
//
// What a browser records is never lost: every chunk is written to IndexedDB before it is uploaded
// and stays there until the server has the track sealed. A reload or a crash finds the unsent
// chunks and uploads them into the same recording, then seals the track.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const SESSION_KEY = 'mixdown.session';
  const TIMESLICE_MS = 1000;
  // H.264 first: the worker then copies the video instead of encoding it.
  const TYPES = [
    'video/webm;codecs=h264,opus',
    'video/x-matroska;codecs=avc1,opus',
    'video/webm;codecs=vp8,opus',
    'video/webm;codecs=vp9,opus',
    'video/webm',
  ];
  const FORMAT_KEY = 'mixdown.format';
  // The formats a participant may pick, in the order offered (the first one the browser records
  // is the default).
  const FORMATS = [
    { value: 'h264', label: 'H.264 (fastest to process)', types: TYPES.slice(0, 2) },
    { value: 'vp8', label: 'VP8', types: ['video/webm;codecs=vp8,opus'] },
    { value: 'vp9', label: 'VP9', types: ['video/webm;codecs=vp9,opus'] },
  ];

  const state = {
    session: null,
    socket: null,
    stream: null,
    recorder: null,
    // recordingId -> what the room knows of it
    recordings: new Map(),
    current: null,
    pumping: false,
    pumpAgain: false,
    outage: false,
    unsent: 0,
    recordedByMe: new Map(),
    // participantId -> display name, as the server tells them (from each one's token)
    names: new Map(),
    // The best estimate of the server's clock so far (see `clockSample`).
    clock: null,
    // Recordings whose recorder started in this page (not before a reload).
    startedHere: new Set(),
  };

  // ---- words a person understands ----

  function showError(text) {
    const el = $('error');
    el.textContent = text;
    el.hidden = !text;
  }

  function mediaError(e) {
    if (e && (e.name === 'NotAllowedError' || e.name === 'SecurityError')) {
      return 'Camera or microphone access was refused. Allow it in the browser\'s site settings, then reload this page.';
    }
    if (e && (e.name === 'NotFoundError' || e.name === 'OverconstrainedError')) {
      return 'No camera or microphone was found. Connect one, then reload this page.';
    }
    if (e && e.name === 'NotReadableError') {
      return 'The camera or microphone is in use by another program. Close it, then reload this page.';
    }
    return 'The camera or microphone could not be started' + (e && e.message ? ': ' + e.message : '.');
  }

  class ApiFailure extends Error {
    constructor(status, code, message, chunk) {
      super(message);
      this.status = status;
      this.code = code;
      this.chunk = chunk;
    }
    get transient() {
      return this.status === 0 || this.status >= 500 || this.status === 429;
    }
  }

  function apiFailureText(e) {
    if (e.code === 'unauthenticated') {
      return 'Your session has expired or is not valid. Ask the host for a new invite link.';
    }
    if (e.status === 0) return 'The studio server cannot be reached; retrying.';
    return e.message;
  }

  // ---- the server's clock ----
  //
  // Each participant's track is placed in the mixdown where its recorder started, on the
  // server's clock: the page's own clock may be off by seconds. Answers that carry `serverTime`
  // (the server's Unix milliseconds, read while it handled the request) set it, NTP style: sent at
  // t0 and answered at t3 on this page's clock, the server read its clock somewhere in between,
  // so offset = serverTime - (t0 + t3) / 2, off by at most (t3 - t0) / 2. Of all samples the one
  // of the shortest round trip is the best (NTP's clock filter): the estimate is as good as half
  // the shortest round trip.

  /** This page's clock: Unix milliseconds, high resolution. */
  const pageNow = () => performance.timeOrigin + performance.now();

  /** One round trip's estimate `{offset, error}` (ms: server = page + offset, ±error), or null. */
  function clockSample(t0, t3, serverTime) {
    if (![t0, t3, serverTime].every(Number.isFinite) || t3 < t0) return null;
    return { offset: serverTime - (t0 + t3) / 2, error: (t3 - t0) / 2 };
  }

  /** The better of two estimates (either may be missing): the one with the smaller error. */
  function betterClock(a, b) {
    if (!a) return b || null;
    if (!b) return a;
    return b.error < a.error ? b : a;
  }

  /** Notes the server's clock from an answer sent at `t0` and read at `t3` (page clock). */
  function noteServerTime(t0, t3, answer) {
    const sample = clockSample(t0, t3, answer && answer.serverTime);
    if (sample) state.clock = betterClock(state.clock, sample);
  }

  /** A socket.io call with an ack, its answer setting the clock too. */
  async function emitTimed(sock, timeout, event, body) {
    const t0 = pageNow();
    const ack = await sock.timeout(timeout).emitWithAck(event, body);
    noteServerTime(t0, pageNow(), ack);
    return ack;
  }

  // ---- the API ----

  async function api(path, { token, body, method } = {}) {
    const headers = { 'Content-Type': 'application/json' };
    if (token) headers.Authorization = 'Bearer ' + token;
    let response;
    const t0 = pageNow();
    let t3;
    try {
      response = await fetch(path, {
        method: method || 'POST',
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      // The answer's headers are in: the server answered by now (the body only follows).
      t3 = pageNow();
    } catch (e) {
      throw new ApiFailure(0, 'network', 'the network request failed');
    }
    const text = await response.text();
    let json = {};
    try { json = text ? JSON.parse(text) : {}; } catch (_) { json = {}; }
    if (response.ok) noteServerTime(t0, t3, json);
    if (!response.ok) {
      throw new ApiFailure(response.status, json.code || 'error', json.detail || response.statusText, json.chunk);
    }
    return json;
  }

  // ---- the spool: IndexedDB ----

  let dbPromise = null;
  function db() {
    if (!dbPromise) {
      dbPromise = new Promise((resolve, reject) => {
        const open = indexedDB.open('mixdown-spool', 1);
        open.onupgradeneeded = () => {
          const d = open.result;
          d.createObjectStore('chunks', { keyPath: ['participantId', 'recordingId', 'seq'] });
          d.createObjectStore('tracks', { keyPath: ['participantId', 'recordingId'] });
        };
        open.onsuccess = () => resolve(open.result);
        open.onerror = () => reject(open.error);
      });
    }
    return dbPromise;
  }

  async function store(name, mode, fn) {
    const d = await db();
    return new Promise((resolve, reject) => {
      const tx = d.transaction(name, mode);
      const s = tx.objectStore(name);
      let result;
      Promise.resolve(fn(s)).then((r) => { result = r; });
      tx.oncomplete = () => resolve(result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  function request(r) {
    return new Promise((resolve, reject) => {
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error);
    });
  }

  const me = () => state.session.participantId;
  const range = (recordingId) =>
    IDBKeyRange.bound([me(), recordingId, 0], [me(), recordingId, Number.MAX_SAFE_INTEGER]);

  const putChunk = (chunk) => store('chunks', 'readwrite', (s) => request(s.put(chunk)));
  const getChunks = (recordingId) =>
    store('chunks', 'readonly', (s) => request(s.getAll(range(recordingId))));
  const putTrack = (track) => store('tracks', 'readwrite', (s) => request(s.put(track)));
  const getTrack = (recordingId) =>
    store('tracks', 'readonly', (s) => request(s.get([me(), recordingId])));
  const myTracks = () =>
    store('tracks', 'readonly', (s) => request(s.getAll()))
      .then((all) => all.filter((t) => t.participantId === me()));

  /**
   * Changes some fields of a track in one readwrite transaction. The recorder's chain and the
   * room's events change the same track at once (a stop arrives while the last chunk is being
   * kept); a read and a write in two transactions would let one put undo the other's change,
   * and a track whose `stopped` was lost would never be sealed.
   */
  function updateTrack(recordingId, change) {
    return store('tracks', 'readwrite', (s) => new Promise((resolve, reject) => {
      const get = s.get([me(), recordingId]);
      get.onerror = () => reject(get.error);
      get.onsuccess = () => {
        const track = get.result;
        if (!track) { resolve(null); return; }
        Object.assign(track, change);
        const put = s.put(track);
        put.onerror = () => reject(put.error);
        put.onsuccess = () => resolve(track);
      };
    }));
  }

  async function forget(recordingId) {
    await store('chunks', 'readwrite', (s) => request(s.delete(range(recordingId))));
    await store('tracks', 'readwrite', (s) => request(s.delete([me(), recordingId])));
  }

  // ---- the upload queue ----

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  async function uploadChunk(chunk) {
    const { recordingId, seq, blob } = chunk;
    const type = blob.type || chunk.type || 'video/webm';
    const base = `/api/recordings/${encodeURIComponent(recordingId)}/chunks/${seq}`;
    const signed = await api(base + '/upload-url', {
      token: state.session.token,
      body: { size: blob.size, contentType: type },
    });
    const headers = {};
    for (const [k, v] of Object.entries(signed.headers || {})) {
      // The browser sets these itself, from the body and the URL.
      if (!['content-length', 'host'].includes(k.toLowerCase())) headers[k] = v;
    }
    let put;
    try {
      put = await fetch(signed.url, { method: signed.method || 'PUT', headers, body: blob });
    } catch (e) {
      throw new ApiFailure(0, 'storage_unreachable', 'storage cannot be reached');
    }
    if (!put.ok) throw new ApiFailure(put.status >= 500 ? put.status : 503, 'storage_refused', `storage answered ${put.status}`);
    const answer = await api(base + '/confirm', { token: state.session.token, body: { size: blob.size } });
    chunk.confirmed = true;
    await putChunk(chunk);
    return answer;
  }

  async function withRetry(what, fn) {
    let delay = 500;
    for (;;) {
      try {
        const result = await fn();
        if (state.outage) { state.outage = false; showError(''); }
        return result;
      } catch (e) {
        if (!(e instanceof ApiFailure) || !e.transient) throw e;
        state.outage = true;
        showError(e.code.startsWith('storage')
          ? 'Storage is unreachable. Your recording is kept in this browser, and the upload resumes by itself.'
          : apiFailureText(e));
        render();
        await sleep(delay);
        delay = Math.min(delay * 2, 10000);
      }
    }
  }

  /**
   * What a seal says besides the chunk count: when the recorder started, on the server's clock,
   * and how far off that may be. A track recorded before a reload is converted with the estimate
   * kept with it (made with the clock it was timed by); one recorded here with the best of both.
   */
  function startOf(track) {
    if (!Number.isFinite(track.startedAt)) return {};
    const estimate = state.startedHere.has(track.recordingId)
      ? betterClock(state.clock, track.clock)
      : (track.clock || state.clock);
    if (!estimate) return {};
    return {
      recorderStartedAt: Math.round((track.startedAt + estimate.offset) * 10) / 10,
      clockErrorMs: Math.round(estimate.error * 10) / 10,
      clockOffsetMs: estimate.offset,
    };
  }

  async function seal(track) {
    const { clockOffsetMs, ...start } = startOf(track);
    const sock = state.socket;
    let answer;
    if (sock && sock.connected) {
      let ack;
      try {
        ack = await emitTimed(sock, 10000, 'upload_complete', { recordingId: track.recordingId, chunkCount: track.recorded, ...start });
      } catch (_) {
        throw new ApiFailure(0, 'network', 'no answer to the seal');
      }
      if (ack && ack.error) {
        throw new ApiFailure(ack.error.code === 'unavailable' ? 503 : 409, ack.error.code, ack.error.message, ack.error.chunk);
      }
      answer = ack;
    } else {
      answer = await api(`/api/recordings/${encodeURIComponent(track.recordingId)}/tracks/complete`, {
        token: state.session.token,
        body: { chunkCount: track.recorded, ...start },
      });
    }
    console.info(`mixdown: track of ${track.recordingId} sealed; recorder started at ${start.recorderStartedAt} `
      + `(server clock, ±${start.clockErrorMs} ms), ${answer && answer.startOffsetMs} ms into the recording; `
      + `clock offset ${clockOffsetMs === undefined ? 'unknown' : clockOffsetMs.toFixed(1)} ms`);
    return answer;
  }

  /** Uploads every unsent chunk, in order, then seals each track whose recording stopped. */
  async function pump() {
    if (!state.session) return;
    if (state.pumping) { state.pumpAgain = true; return; }
    state.pumping = true;
    try {
      do {
        state.pumpAgain = false;
        for (const track of await myTracks()) {
          if (track.sealed) continue;
          const chunks = await getChunks(track.recordingId);
          for (const chunk of chunks) {
            if (chunk.confirmed) continue;
            const answer = await withRetry('upload', () => uploadChunk(chunk));
            noteConfirmed(track.recordingId, me(), answer.confirmed);
            await countUnsent();
            render();
          }
          if (!(track.final && track.stopped)) continue;
          if (track.recorded === 0) { await forget(track.recordingId); continue; }
          try {
            await withRetry('seal', () => seal(track));
            await forget(track.recordingId);
          } catch (e) {
            await sealRefused(track, e);
          }
        }
      } while (state.pumpAgain);
    } catch (e) {
      showError(e instanceof ApiFailure ? apiFailureText(e) : String(e));
    } finally {
      state.pumping = false;
      await countUnsent();
      render();
    }
  }

  async function sealRefused(track, e) {
    if (['chunk_missing', 'chunk_empty'].includes(e.code) && Number.isInteger(e.chunk)) {
      // Storage lacks a chunk this page still holds: send it again, then seal again.
      const chunks = await getChunks(track.recordingId);
      const chunk = chunks.find((c) => c.seq === e.chunk);
      if (chunk) {
        chunk.confirmed = false;
        await putChunk(chunk);
        state.pumpAgain = true;
        return;
      }
    }
    if (e.code === 'not_stopped') {
      await updateTrack(track.recordingId, { stopped: false });
      return;
    }
    if (e.code === 'processing_started' || e.code === 'not_found') {
      await forget(track.recordingId);
      showError('Processing began before your last chunks arrived. They are kept in storage; tell the host.');
      return;
    }
    showError(apiFailureText(e));
  }

  /** Chunks not yet confirmed, and tracks not yet sealed: what a closed page would leave behind. */
  async function countUnsent() {
    if (!state.session) return;
    let unsent = 0;
    for (const track of await myTracks()) {
      if (track.sealed) continue;
      const chunks = await getChunks(track.recordingId);
      if (chunks.length > 0) unsent += 1 + chunks.filter((c) => !c.confirmed).length;
    }
    state.unsent = unsent;
  }

  // ---- the recorder ----

  function supported(type) {
    return Boolean(window.MediaRecorder && MediaRecorder.isTypeSupported(type));
  }

  /** The format picker: what this browser can record, the participant's last choice selected. */
  function listFormats() {
    const offered = FORMATS.filter((f) => f.types.some(supported));
    const saved = localStorage.getItem(FORMAT_KEY);
    $('format').replaceChildren(...offered.map((f) => {
      const option = new Option(f.label, f.value);
      option.selected = f.value === saved;
      return option;
    }));
  }

  function pickType() {
    const chosen = FORMATS.find((f) => f.value === $('format').value);
    const type = chosen && chosen.types.find(supported);
    if (type) return type;
    for (const type of TYPES) {
      if (window.MediaRecorder && MediaRecorder.isTypeSupported(type)) return type;
    }
    return '';
  }

  async function startRecorder(recordingId) {
    // A track this browser already recorded in (before a reload) cannot be continued: a new
    // recorder would start a new stream at chunk 0. Its spool is uploaded and sealed instead.
    if (state.recorder || !state.stream || state.recordedByMe.has(recordingId)) return;
    state.recordedByMe.set(recordingId, 0);
    if (await getTrack(recordingId)) return;
    const mimeType = pickType();
    let mr;
    try {
      mr = new MediaRecorder(state.stream, mimeType ? { mimeType } : {});
    } catch (e) {
      showError('This browser cannot record: ' + e.message);
      return;
    }
    const rec = { recordingId, mr, seq: 0, chain: Promise.resolve() };
    state.recorder = rec;
    await putTrack({
      participantId: me(), recordingId, recorded: 0, final: false, stopped: false, sealed: false,
    });
    mr.ondataavailable = (event) => {
      if (!event.data || event.data.size === 0) return;
      const seq = rec.seq++;
      const type = event.data.type || mr.mimeType || mimeType || 'video/webm';
      rec.chain = rec.chain
        .then(() => putChunk({ participantId: me(), recordingId, seq, blob: event.data, type, confirmed: false }))
        .then(() => updateTrack(recordingId, { recorded: seq + 1, clock: state.clock }))
        .then(() => { state.recordedByMe.set(recordingId, seq + 1); pump(); })
        .catch((e) => showError('A chunk could not be kept in this browser: ' + e.message));
    };
    // When the recorder really started, on this page's clock: kept with the track, so that a
    // page reloaded before the seal still says where its track starts. That is when `start()`
    // was called: the recorder takes the stream's samples from then on. Chromium fires the
    // `start` event only once its muxer wrote the first data, after the first frames were
    // encoded (about 100 ms later on a busy machine, which the mixdown would hear); it is
    // logged beside, to see the difference.
    mr.onstart = (event) => {
      const eventAt = performance.timeOrigin + event.timeStamp;
      console.info(`mixdown: recorder of ${recordingId} started; start event ${(eventAt - startedAt).toFixed(1)} ms after start()`);
    };
    mr.onstop = () => {
      rec.chain = rec.chain
        .then(() => updateTrack(recordingId, { final: true, clock: state.clock }))
        .then(() => { if (state.recorder === rec) state.recorder = null; pump(); render(); });
    };
    const startedAt = pageNow();
    mr.start(TIMESLICE_MS);
    state.startedHere.add(recordingId);
    rec.chain = rec.chain
      .then(() => updateTrack(recordingId, { startedAt, clock: state.clock }))
      .catch((e) => showError('The recording\'s start could not be kept in this browser: ' + e.message));
    // What the browser really records: the worker copies H.264 and encodes anything else.
    $('me').dataset.mimeType = mr.mimeType || mimeType || '';
    render();
  }

  function stopRecorder(recordingId) {
    const rec = state.recorder;
    if (rec && rec.recordingId === recordingId && rec.mr.state !== 'inactive') rec.mr.stop();
  }

  // ---- camera and microphone ----

  async function startMedia() {
    const video = $('camera').value;
    const audio = $('microphone').value;
    if (state.recorder) return;
    if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
    try {
      state.stream = await navigator.mediaDevices.getUserMedia({
        video: video ? { deviceId: { exact: video } } : true,
        audio: audio ? { deviceId: { exact: audio } } : true,
      });
      $('preview').srcObject = state.stream;
      await listDevices();
      // A recording that started before the camera was on (a participant who joined late):
      // record it from now on.
      const rec = state.current && state.recordings.get(state.current);
      if (rec && rec.active) startRecorder(rec.recordingId);
    } catch (e) {
      state.stream = null;
      showError(mediaError(e));
    }
    render();
  }

  async function listDevices() {
    const devices = await navigator.mediaDevices.enumerateDevices();
    for (const [select, kind] of [[$('camera'), 'videoinput'], [$('microphone'), 'audioinput']]) {
      const current = state.stream && state.stream.getTracks()
        .find((t) => (kind === 'videoinput' ? t.kind === 'video' : t.kind === 'audio'));
      const chosen = current && current.getSettings().deviceId;
      select.replaceChildren(...devices.filter((d) => d.kind === kind).map((d, i) => {
        const option = new Option(d.label || `${kind === 'videoinput' ? 'Camera' : 'Microphone'} ${i + 1}`, d.deviceId);
        option.selected = d.deviceId === chosen;
        return option;
      }));
    }
  }

  // ---- the room ----

  function recording(recordingId) {
    let rec = state.recordings.get(recordingId);
    if (!rec) {
      rec = { recordingId, active: false, stopped: false, phase: null, progress: 0, tracks: [], outputs: [], mixdown: null, confirmed: new Map() };
      state.recordings.set(recordingId, rec);
    }
    state.current = recordingId;
    return rec;
  }

  function noteConfirmed(recordingId, participantId, confirmed, name) {
    if (name) state.names.set(participantId, name);
    const rec = recording(recordingId);
    const known = rec.confirmed.get(participantId) || 0;
    if (confirmed > known) rec.confirmed.set(participantId, confirmed);
  }

  async function stopped(recordingId) {
    const rec = recording(recordingId);
    rec.active = false;
    rec.stopped = true;
    stopRecorder(recordingId);
    await updateTrack(recordingId, { stopped: true });
    pump();
  }

  function processing(payload) {
    // A status answer for a recording still running (no RecordingJob yet) says nothing new.
    if (payload.phase === 'Recording') return;
    const rec = recording(payload.recordingId);
    Object.assign(rec, {
      phase: payload.phase,
      progress: payload.progress || 0,
      tracks: payload.tracks || rec.tracks,
      // The files ready so far: each participant's (`kind` "track", or no kind from an older
      // server) and, once made, the mixdown (`kind` "mixdown").
      outputs: payload.outputs || [],
      mixdown: payload.mixdown || null,
      reason: payload.reason,
      message: payload.message,
    });
    if (!rec.stopped) stopped(payload.recordingId);
    render();
  }

  function connect() {
    const socket = io({ auth: { token: state.session.token } });
    state.socket = socket;
    socket.on('connect', () => { $('connection').textContent = 'Connected'; pump(); render(); });
    socket.on('disconnect', () => { $('connection').textContent = 'Reconnecting…'; });
    socket.on('connect_error', (e) => {
      $('connection').textContent = 'Not connected';
      if (String(e.message).startsWith('unauthenticated')) {
        showError('Your session has expired or is not valid. Ask the host for a new invite link.');
        socket.disconnect();
      }
    });
    socket.on('start-rec', ({ recordingId }) => {
      const rec = recording(recordingId);
      rec.active = true;
      startRecorder(recordingId);
      render();
    });
    socket.on('stop-rec', ({ recordingId }) => { stopped(recordingId).then(render); });
    socket.on('upload-progress', ({ recordingId, participantId, confirmed, name }) => {
      noteConfirmed(recordingId, participantId, confirmed, name);
      render();
    });
    socket.on('video-processing-started', processing);
    socket.on('video-processing-update', processing);
    socket.on('processing-status-response', processing);
    socket.on('video-processing-error', (payload) => {
      const rec = recording(payload.recordingId);
      rec.phase = 'Failed';
      rec.reason = payload.reason;
      rec.message = payload.message;
      render();
    });
  }

  // ---- what the page shows ----

  const isMixdown = (output) => output.kind === 'mixdown';
  const trackOutputs = (rec) => rec.outputs.filter((o) => !isMixdown(o));

  function stageOf(rec, participantId) {
    const track = rec.tracks.find((t) => t.participantId === participantId);
    const output = trackOutputs(rec).find((o) => o.participantId === participantId);
    if (rec.active) return 'recording';
    // A participant's file is ready as soon as it is verified, while the mixdown is still made.
    if (output) return 'ready';
    if (rec.phase === 'Succeeded' || rec.phase === 'Failed') return 'failed';
    if (!rec.phase || rec.phase === 'Uploading' || rec.phase === 'Recording') {
      return track && track.sealed ? 'uploaded' : 'uploading';
    }
    return 'processing';
  }

  const WORDS = {
    recording: 'Recording',
    uploading: 'Uploading',
    uploaded: 'Uploaded, waiting for the others',
    processing: 'Processing',
    ready: 'Ready',
    failed: 'Failed',
  };

  function render() {
    if (!state.session) return;
    const host = state.session.role === 'host';
    const rec = state.current ? state.recordings.get(state.current) : null;
    const active = Boolean(rec && rec.active);
    $('record').disabled = active || !state.stream || !(state.socket && state.socket.connected);
    $('stop').disabled = !active;
    $('host-controls').hidden = !host;

    const mine = rec ? (state.recordedByMe.get(rec.recordingId) || 0) : 0;
    $('me').textContent = state.recorder
      ? `Recording: ${mine} chunk(s) recorded`
      : (state.stream ? 'Camera and microphone ready' : 'Camera and microphone not started');
    const safe = state.unsent === 0 && !state.recorder;
    $('safe').dataset.safe = String(safe);
    $('safe').textContent = safe
      ? 'Safe to close: everything you recorded is on the server.'
      : 'Uploading your recording: keep this page open.';

    const body = $('participants').tBodies[0];
    if (!rec) { body.replaceChildren(); renderReady(null); return; }
    const people = new Set([me()]);
    rec.confirmed.forEach((_, p) => people.add(p));
    rec.tracks.forEach((t) => people.add(t.participantId));
    trackOutputs(rec).forEach((o) => people.add(o.participantId));
    body.replaceChildren(...[...people].map((p) => {
      const stage = stageOf(rec, p);
      const row = document.createElement('tr');
      row.dataset.participant = p;
      row.dataset.stage = stage;
      const who = document.createElement('td');
      who.textContent = nameOf(p);
      const status = document.createElement('td');
      const confirmed = rec.confirmed.get(p) || 0;
      status.textContent = WORDS[stage] + (stage === 'uploading' || stage === 'recording'
        ? ` (${confirmed}${p === me() ? ' of ' + mine : ''} chunks confirmed)` : '')
        + (stage === 'failed' && rec.message ? `: ${rec.message}` : '');
      const progress = document.createElement('td');
      if (stage === 'processing' || stage === 'ready') {
        const bar = document.createElement('progress');
        bar.max = 100;
        bar.value = stage === 'ready' ? 100 : rec.progress;
        bar.textContent = `${bar.value}%`;
        progress.append(bar);
      }
      row.append(who, status, progress);
      return row;
    }));
    renderReady(rec);
  }

  const nameOf = (p) => (p === me() ? `You (${state.session.name || p})` : (state.names.get(p) || p));

  function sizeText(bytes) {
    if (!Number.isFinite(bytes)) return '';
    if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(1)} GB`;
    if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
    return `${Math.max(1, Math.round(bytes / 1e3))} kB`;
  }

  /** What the mixdown's line above the files says, or '' for nothing. */
  function mixdownText(rec) {
    const mix = rec.mixdown;
    if (!mix || rec.phase === 'Failed') return '';
    if (mix.state === 'mixing') return 'Mixdown in progress…';
    if (mix.state === 'failed') {
      return 'The mixdown could not be made' + (mix.message ? `: ${mix.message}` : '.')
        + ' Each participant\'s file is below.';
    }
    return '';
  }

  /** The Ready list: the mixdown first (everyone together), then each participant's file. */
  function renderReady(rec) {
    const mixdown = rec ? rec.outputs.find(isMixdown) : null;
    const files = rec ? [mixdown, ...trackOutputs(rec)].filter(Boolean) : [];
    const said = rec ? mixdownText(rec) : '';
    const ready = $('ready');
    ready.hidden = files.length === 0 && !said;
    ready.dataset.phase = (rec && rec.phase) || '';
    ready.dataset.mixdown = rec && rec.mixdown ? rec.mixdown.state : (mixdown ? 'ready' : 'none');
    $('mixdown-status').textContent = said;
    $('mixdown-status').hidden = !said;
    $('files').replaceChildren(...files.map((output) => {
      const item = document.createElement('li');
      item.dataset.kind = isMixdown(output) ? 'mixdown' : 'track';
      if (!isMixdown(output)) item.dataset.participant = output.participantId;
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = isMixdown(output) ? 'Everyone (mixdown)' : nameOf(output.participantId);
      const link = document.createElement('a');
      link.href = output.url;
      link.className = 'download';
      link.dataset.kind = item.dataset.kind;
      link.textContent = `Download (${Math.round(output.durationSeconds)} s, ${sizeText(output.sizeBytes)})`;
      item.append(name, ' ', link);
      if (output.sealed === false && !isMixdown(output)) item.append(' (not all chunks arrived)');
      return item;
    }));
  }

  // ---- sessions ----

  function claimsOf(token) {
    try {
      return JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    } catch (_) {
      return null;
    }
  }

  function saveSession(session) {
    state.session = session;
    localStorage.setItem(SESSION_KEY, JSON.stringify(session));
  }

  async function enterRoom() {
    $('create').hidden = true;
    $('join').hidden = true;
    $('room').hidden = false;
    $('room-id').textContent = state.session.roomId;
    if (state.session.inviteUrl) {
      $('invite').hidden = false;
      $('invite-url').value = state.session.inviteUrl;
    }
    // Chunks a reload or a crash interrupted: no recorder will add to them any more.
    for (const track of await myTracks()) {
      if (!track.sealed && !track.final) await updateTrack(track.recordingId, { final: true });
      state.recordedByMe.set(track.recordingId, track.recorded);
    }
    await countUnsent();
    connect();
    await startMedia();
    pump();
    render();
  }

  function start() {
    const fragment = new URLSearchParams(location.hash.slice(1));
    const invite = fragment.get('invite');
    let saved = null;
    try { saved = JSON.parse(localStorage.getItem(SESSION_KEY) || 'null'); } catch (_) { saved = null; }

    const hostToken = fragment.get('host');
    if (hostToken) {
      // A host link (the local run prints one): this browser becomes the room's host.
      const claims = claimsOf(hostToken);
      history.replaceState(null, '', location.pathname);
      if (!claims || claims.role !== 'host') {
        showError('This host link is not valid. Create a room instead.');
        $('create').hidden = false;
        return;
      }
      state.session = { roomId: claims.room, participantId: claims.sub, token: hostToken, role: 'host', name: claims.name || '' };
      api(`/api/rooms/${encodeURIComponent(claims.room)}/invites`, { token: hostToken })
        .then((made) => { state.session.inviteUrl = made.inviteUrl; saveSession(state.session); enterRoom(); })
        .catch((e) => showError(apiFailureText(e)));
      return;
    }
    if (invite) {
      const claims = claimsOf(invite);
      if (saved && claims && saved.roomId === claims.room) {
        state.session = saved;
        history.replaceState(null, '', location.pathname);
        enterRoom();
        return;
      }
      $('join').hidden = false;
      $('join-form').addEventListener('submit', async (event) => {
        event.preventDefault();
        try {
          const joined = await api('/api/join', { token: invite, body: { name: $('guest-name').value } });
          saveSession({ roomId: joined.roomId, participantId: joined.participantId, token: joined.token, role: 'guest', name: $('guest-name').value });
          history.replaceState(null, '', location.pathname);
          showError('');
          enterRoom();
        } catch (e) {
          showError(e.code === 'unauthenticated' ? 'This invite link has expired or is not valid. Ask the host for a new one.' : apiFailureText(e));
        }
      });
      return;
    }
    if (saved) {
      state.session = saved;
      enterRoom();
      return;
    }
    $('create').hidden = false;
    $('create-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      try {
        const room = await api('/api/rooms', { token: $('admin-key').value, body: { name: $('host-name').value } });
        saveSession({ roomId: room.roomId, participantId: room.participantId, token: room.hostToken, role: 'host', inviteUrl: room.inviteUrl, name: $('host-name').value });
        showError('');
        enterRoom();
      } catch (e) {
        showError(e.status === 401 ? 'That admin key is not right.' : apiFailureText(e));
      }
    });
  }

  $('record').addEventListener('click', async () => {
    const ack = await state.socket.timeout(10000).emitWithAck('start_recording', {}).catch(() => null);
    if (!ack || ack.error) showError(ack ? ack.error.message : 'The server did not answer; try again.');
  });
  $('stop').addEventListener('click', async () => {
    const ack = await state.socket.timeout(30000)
      .emitWithAck('recording_stopped', { recordingId: state.current }).catch(() => null);
    if (!ack || ack.error) showError(ack ? ack.error.message : 'The server did not answer; try again.');
  });
  $('copy-invite').addEventListener('click', () => navigator.clipboard && navigator.clipboard.writeText($('invite-url').value));
  $('camera').addEventListener('change', startMedia);
  $('microphone').addEventListener('change', startMedia);
  $('format').addEventListener('change', () => localStorage.setItem(FORMAT_KEY, $('format').value));
  listFormats();
  window.addEventListener('beforeunload', (event) => {
    if (state.unsent > 0 || state.recorder) {
      event.preventDefault();
      event.returnValue = '';
    }
  });

  start();
})();
