// The benchmark's clients (`cargo bench -p mixdown-api`): thousands of real socket.io clients in
// one process, connected over WebSocket in batches. Rather than one line per received event, it
// prints one line per change once every socket of the room has it, with the first and last
// arrival times (ms since the epoch), so the benchmark can tell the fan-out time.
//
//   node bench-clients.mjs <url> <tokens.json>     tokens.json: [{"room": "...", "token": "..."}]
//
//   {"type":"ready","connected":5000,"ms":1234}
//   {"type":"started","recordingId":"...","first":..,"last":..}
//   {"type":"update","recordingId":"...","phase":"Running","progress":7,"first":..,"last":..}
import { io } from "socket.io-client";
import { readFileSync } from "node:fs";

const [url, tokensFile] = process.argv.slice(2);
const tokens = JSON.parse(readFileSync(tokensFile, "utf8"));
const roomSize = new Map();
for (const { room } of tokens) roomSize.set(room, (roomSize.get(room) ?? 0) + 1);

const out = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const pending = new Map();
function arrived(room, key, line) {
  const now = Date.now();
  let p = pending.get(key);
  if (!p) pending.set(key, (p = { count: 0, first: now }));
  p.count += 1;
  if (p.count === roomSize.get(room)) {
    pending.delete(key);
    out({ ...line, first: p.first, last: now });
  }
}

const sockets = [];
const started = Date.now();
let connected = 0;
let errors = 0;
const BATCH = 100;
for (let i = 0; i < tokens.length; i += BATCH) {
  await Promise.all(
    tokens.slice(i, i + BATCH).map(
      ({ room, token }) =>
        new Promise((resolve) => {
          const socket = io(url, { auth: { token }, transports: ["websocket"], reconnection: false, forceNew: true });
          sockets.push(socket);
          socket.once("connect", () => { connected += 1; resolve(); });
          socket.once("connect_error", (e) => { errors += 1; out({ type: "connect_error", message: String(e.message) }); resolve(); });
          socket.on("video-processing-started", (d) =>
            arrived(room, `s:${d.recordingId}`, { type: "started", recordingId: d.recordingId }));
          socket.on("video-processing-update", (d) =>
            arrived(room, `u:${d.recordingId}:${d.phase}:${d.progress}`, {
              type: "update", recordingId: d.recordingId, phase: d.phase, progress: d.progress,
            }));
        }),
    ),
  );
}
out({ type: "ready", connected, errors, ms: Date.now() - started });
process.stdin.resume();
process.stdin.on("end", () => {
  out({ type: "incomplete", changes: pending.size });
  for (const s of sockets) s.close();
  setTimeout(() => process.exit(0), 100);
});
