// Drives real socket.io clients for Mixdown's API tests: commands come in on stdin, one JSON
// object a line; everything the clients see goes out on stdout, one JSON object a line, stamped
// with the time it arrived (ms since the epoch).
//
//   {"cmd":"connect","client":"alice","url":"http://127.0.0.1:3000","token":"...","options":{}}
//   {"cmd":"emit","client":"alice","event":"recording_stopped","data":{...},"ack":7}
//   {"cmd":"close","client":"alice"}
//
//   {"client":"alice","type":"connect"}                       | "connect_error" with "message"
//   {"client":"alice","type":"event","event":"...","data":{}} | "ack" with "ack" and "data"
//   {"client":"alice","type":"disconnect","reason":"..."}
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const clients = new Map();
const out = (line) => process.stdout.write(JSON.stringify({ ...line, at: Date.now() }) + "\n");

function connect({ client, url, token, options = {} }) {
  const socket = io(url, {
    auth: token === undefined ? undefined : { token },
    reconnection: false,
    forceNew: true,
    ...options,
  });
  clients.set(client, socket);
  socket.on("connect", () => out({ client, type: "connect", transport: socket.io.engine.transport.name }));
  socket.on("connect_error", (err) => out({ client, type: "connect_error", message: String(err.message) }));
  socket.on("disconnect", (reason) => out({ client, type: "disconnect", reason }));
  socket.onAny((event, data) => out({ client, type: "event", event, data }));
}

createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    out({ type: "driver_error", message: `not JSON: ${line}` });
    return;
  }
  const socket = clients.get(cmd.client);
  switch (cmd.cmd) {
    case "connect":
      connect(cmd);
      break;
    case "emit":
      if (!socket) return out({ client: cmd.client, type: "driver_error", message: "no such client" });
      if (cmd.ack === undefined) socket.emit(cmd.event, cmd.data);
      else socket.timeout(30000).emit(cmd.event, cmd.data, (err, data) =>
        out({ client: cmd.client, type: "ack", ack: cmd.ack, data: err ? { timeout: true } : data }));
      break;
    case "close":
      socket?.close();
      break;
    default:
      out({ type: "driver_error", message: `unknown command ${cmd.cmd}` });
  }
});
process.stdin.on("end", () => {
  for (const socket of clients.values()) socket.close();
  setTimeout(() => process.exit(0), 50);
});
