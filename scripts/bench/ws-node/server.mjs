// The Node reference server of `scripts/bench.sh ws`: the contract's WebSocket protocol subset
// (docs/api.md, "WebSocket") on the `ws` package, written the way a competent
// Node developer would, so that ws-bench can run the same scenarios against it and our server
// side by side. Bench-only: it must never be used as, or shipped with, the Adcluster server, and
// never speak more than the subset below (it is a yardstick, not a second implementation).
//
// Subset: connect paths /ws, /ws/{id}, /ws/{id}/{group} (names 1-64 of A-Z a-z 0-9 _ . -, else
// 400 before the upgrade); `welcome` to the client and `join` to the rest of its group; takeover
// of a connected id (the old one closed 4000 "replaced"); commands /send_to, /group, /join,
// /leave; plain text (group message in a group, broadcast otherwise); `error` frames
// (client_not_found, not_in_group, unknown_command, bad_request, unsupported); `leave` to the
// group when a client goes; every frame JSON with `type` and `timestamp`; 64 KiB message limit
// (ws closes with 1009). Not here: tokens, the REST API, /groups, /members, JSON commands.
//
// Performance choices (what a competent Node developer does, no more):
// - A frame meant for many clients (group, join, leave, broadcast) is serialised once:
//   `Buffer.from(JSON.stringify(frame))`, then `ws.send(buf, { binary: false })` to each member.
//   The Buffer (not the string) is what is shared: with a string, `ws` would UTF-8 encode it again
//   for every recipient. `ws` still builds the 2-10 byte frame header per recipient and writes
//   header + payload with one corked write. Pre-framing once with `WebSocket.Sender.frame` and
//   writing to each `ws._socket` would skip that header, but needs `ws` private fields and would
//   bypass its send queue and close state; no competent developer ships that, so it is not done.
// - No permessage-deflate (the `ws` server default), no `bufferutil`/`utf-8-validate` native
//   add-ons (they need a native build; `ws` falls back to JS, which only touches the small
//   incoming client frames here).
// - Heartbeat as the `ws` README recommends: a ping every 30 s, a client that has not answered
//   the previous one is terminated.
// - Slow consumer: a client with more than 4 MiB buffered (`ws.bufferedAmount`) is closed with
//   1008, like our server's WS_QUEUE_KB; without it Node would buffer without bound.
//
// Bounds: one process, one thread (the event loop). Clients and groups live in two Maps, bounded
// by the connected clients; no other queue than each socket's own write buffer (bounded above).
//
// Run: node server.mjs [--port N] (or PORT=N; 0 or unset: any free port) [--host H]
// (default 127.0.0.1). Prints "listening on http://HOST:PORT" on stdout once it listens.

import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { WebSocketServer } from 'ws';

const NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const MAX_MESSAGE = 64 * 1024;
const MAX_BUFFERED = 4 * 1024 * 1024;
const PING_MS = 30_000;

function arg(flag, fallback) {
  const i = process.argv.indexOf(flag);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const port = Number(arg('--port', process.env.PORT ?? '0'));
const host = arg('--host', process.env.HOST ?? '127.0.0.1');

/** client id -> { ws, id, group } */
const clients = new Map();
/** group name -> Set of client records */
const groups = new Map();

const now = () => new Date().toISOString();
/** The bytes of one frame, serialised once however many clients get it. */
const encode = (type, fields) => Buffer.from(JSON.stringify({ type, ...fields, timestamp: now() }));

function send(client, buf) {
  const { ws } = client;
  if (ws.readyState !== ws.OPEN) return;
  if (ws.bufferedAmount > MAX_BUFFERED) {
    ws.close(1008, 'slow consumer');
    return;
  }
  ws.send(buf, { binary: false });
}

function sendTo(client, type, fields) {
  send(client, encode(type, fields));
}

function toGroup(name, buf, except) {
  const members = groups.get(name);
  if (!members) return 0;
  for (const c of members) if (c !== except) send(c, buf);
  return members.size;
}

function joinGroup(client, name) {
  let members = groups.get(name);
  if (!members) groups.set(name, (members = new Set()));
  toGroup(name, encode('join', { client_id: client.id, group: name }));
  members.add(client);
  client.group = name;
}

function leaveGroup(client) {
  const name = client.group;
  if (name === null) return null;
  const members = groups.get(name);
  client.group = null;
  if (members) {
    members.delete(client);
    if (members.size === 0) groups.delete(name);
    else toGroup(name, encode('leave', { client_id: client.id, group: name }));
  }
  return name;
}

function error(client, code, message) {
  sendTo(client, 'error', { error: code, message });
}

function groupMessage(client, message) {
  if (client.group === null) return error(client, 'not_in_group', 'You are not in a group');
  toGroup(client.group, encode('group', { from: client.id, group: client.group, message }));
}

function onText(client, text) {
  if (!text.startsWith('/')) {
    if (client.group !== null) return groupMessage(client, text);
    const buf = encode('broadcast', { from: client.id, message: text });
    for (const c of clients.values()) send(c, buf);
    return;
  }
  const space = text.indexOf(' ');
  const cmd = space < 0 ? text : text.slice(0, space);
  const rest = space < 0 ? '' : text.slice(space + 1);
  switch (cmd) {
    case '/send_to': {
      const sp = rest.indexOf(' ');
      const to = sp < 0 ? rest : rest.slice(0, sp);
      const message = sp < 0 ? '' : rest.slice(sp + 1);
      if (!to || sp < 0) return error(client, 'bad_request', 'Usage: /send_to <client_id> <message>');
      const target = clients.get(to);
      if (!target) return error(client, 'client_not_found', `Client ${to} is not connected`);
      sendTo(target, 'private', { from: client.id, to, message });
      return sendTo(client, 'sent', { to, message });
    }
    case '/group':
      if (!rest) return error(client, 'bad_request', 'Usage: /group <message>');
      return groupMessage(client, rest);
    case '/join': {
      const name = rest.trim();
      if (!NAME.test(name)) return error(client, 'bad_request', 'Usage: /join <group>');
      leaveGroup(client);
      joinGroup(client, name);
      return sendTo(client, 'joined', { group: name });
    }
    case '/leave': {
      const name = leaveGroup(client);
      if (name === null) return error(client, 'not_in_group', 'You are not in a group');
      return sendTo(client, 'left', { group: name });
    }
    default:
      return error(client, 'unknown_command', `Unknown command: ${cmd}`);
  }
}

const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_MESSAGE, perMessageDeflate: false });

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/health') {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end('{"status":"ok"}');
    return;
  }
  res.writeHead(404, { 'Content-Type': 'application/json' });
  res.end('{"detail":"Not Found"}');
});

server.on('upgrade', (req, socket, head) => {
  const path = req.url.split('?')[0];
  const parts = path.split('/').slice(1);
  const ok =
    parts[0] === 'ws' && parts.length <= 3 && parts.slice(1).every((p) => NAME.test(p));
  if (!ok) {
    socket.end('HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{"detail":"Invalid client id or group name"}');
    return;
  }
  const id = parts[1] ?? `anon-${randomBytes(4).toString('hex')}`;
  const group = parts[2] ?? null;
  wss.handleUpgrade(req, socket, head, (ws) => onConnect(ws, id, group));
});

function onConnect(ws, id, group) {
  const old = clients.get(id);
  if (old) {
    leaveGroup(old);
    clients.delete(id);
    old.ws.close(4000, 'replaced');
  }
  const client = { ws, id, group: null, alive: true };
  clients.set(id, client);
  sendTo(client, 'welcome', { client_id: id, group });
  if (group !== null) joinGroup(client, group);

  ws.on('pong', () => {
    client.alive = true;
  });
  ws.on('message', (data, isBinary) => {
    if (isBinary) return error(client, 'unsupported', 'Binary frames are not supported');
    onText(client, data.toString());
  });
  ws.on('close', () => {
    if (clients.get(id) === client) {
      clients.delete(id);
      leaveGroup(client);
    }
  });
  ws.on('error', () => {});
}

const heartbeat = setInterval(() => {
  for (const c of clients.values()) {
    if (!c.alive) {
      c.ws.terminate();
      continue;
    }
    c.alive = false;
    c.ws.ping();
  }
}, PING_MS);

server.listen(port, host, () => {
  const { port: p } = server.address();
  console.log(`listening on http://${host}:${p}`);
});

function shutdown() {
  clearInterval(heartbeat);
  for (const c of clients.values()) c.ws.close(1001, 'going away');
  server.close();
  setTimeout(() => process.exit(0), 500).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
