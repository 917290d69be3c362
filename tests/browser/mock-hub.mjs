// A stand-in for the hub's HTTP port (docs/HUB-WEB.md), in memory, for
// working on the web pages and on run.mjs without building the Rust hub:
//
//   node tests/browser/mock-hub.mjs [port]        (default 7452)
//   node tests/browser/run.mjs --base http://127.0.0.1:7452 --out /tmp/shots
//
// It serves crates/pinion-hub/web/ and speaks /pub, /sub and /stats as the
// contract says (a minimal RFC 6455 server, no extensions). It is not the
// hub: no disk, no limits but max_payload (256), no slow-consumer logic.
// The real tests run against `pinion serve` (crates/pinion-cli/tests/browser.rs).
import { createServer } from 'node:http';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const WEB = fileURLToPath(new URL('../../crates/pinion-hub/web/', import.meta.url));
const MAX_PAYLOAD = 256;

// ---- protobuf (the few fields needed) ---------------------------------------
function varint(out, n) {
  while (n >= 128) { out.push((n % 128) | 128); n = Math.floor(n / 128); }
  out.push(n);
}
const vField = (out, f, n) => { varint(out, f * 8); varint(out, n); };
const bField = (out, f, b) => { varint(out, f * 8 + 2); varint(out, b.length); out.push(...b); };
function readFields(buf) {
  const fields = {};
  let pos = 0;
  const rv = () => {
    let r = 0, m = 1, b;
    do { b = buf[pos++]; r += (b & 127) * m; m *= 128; } while (b >= 128);
    return r;
  };
  while (pos < buf.length) {
    const key = rv();
    const f = Math.floor(key / 8), wt = key % 8;
    if (wt === 0) fields[f] = rv();
    else if (wt === 2) { const n = rv(); fields[f] = buf.subarray(pos, pos + n); pos += n; }
    else if (wt === 1) pos += 8;
    else if (wt === 5) pos += 4;
    else throw new Error(`wire type ${wt}`);
  }
  return fields;
}

// ---- the "log" ---------------------------------------------------------------
const log = []; // {topic: Buffer, frame: Buffer}
const seen = new Map(); // clientIdHex:seq -> offset
const subs = new Set(); // {conn, prefixes}
const counters = { logged: 0, delivered: 0, nacks: 0, duplicates: 0, slow: 0, publishers: 0 };
let lastIn = 0, lastOut = 0, lastNacks = 0;
let latencies = [];
const started = Date.now();

function matches(prefixes, topic) {
  return prefixes.length === 0 || prefixes.some((p) => topic.subarray(0, p.length).equals(p));
}

function append(clientId, seq, topic, payload) {
  const offset = log.length;
  const d = [];
  vField(d, 1, offset);
  vField(d, 2, Date.now() * 1000);
  bField(d, 3, [...clientId]);
  vField(d, 4, seq);
  bField(d, 5, [...payload]);
  const frame = Buffer.concat([topic, Buffer.of(0), Buffer.from(d)]);
  log.push({ topic, frame });
  counters.logged++;
  for (const s of subs) {
    if (s.next <= offset && matches(s.prefixes, topic)) {
      s.conn.send(frame, true);
      counters.delivered++;
    }
    if (s.next <= offset) s.next = offset + 1;
  }
  return offset;
}

// ---- WebSocket ---------------------------------------------------------------
class Conn {
  constructor(socket) {
    this.socket = socket;
    this.buf = Buffer.alloc(0);
    this.onmessage = () => {};
    this.onclose = () => {};
    this.closed = false;
    socket.on('data', (d) => this.data(d));
    socket.on('close', () => { if (!this.closed) { this.closed = true; this.onclose(); } });
    socket.on('error', () => {});
  }
  data(d) {
    this.buf = Buffer.concat([this.buf, d]);
    for (;;) {
      if (this.buf.length < 2) return;
      const op = this.buf[0] & 15;
      let len = this.buf[1] & 127, at = 2;
      if (len === 126) { if (this.buf.length < 4) return; len = this.buf.readUInt16BE(2); at = 4; }
      else if (len === 127) { if (this.buf.length < 10) return; len = Number(this.buf.readBigUInt64BE(2)); at = 10; }
      const masked = this.buf[1] & 128;
      if (this.buf.length < at + (masked ? 4 : 0) + len) return;
      const mask = masked ? this.buf.subarray(at, at + 4) : null;
      at += masked ? 4 : 0;
      const payload = Buffer.from(this.buf.subarray(at, at + len));
      if (mask) for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
      this.buf = this.buf.subarray(at + len);
      if (op === 8) { this.close(1000, ''); return; }
      if (op === 9) { this.frame(10, payload); continue; }
      if (op === 1 || op === 2) this.onmessage(payload, op === 2);
    }
  }
  frame(op, payload) {
    if (this.closed) return;
    const n = payload.length;
    const head = n < 126 ? Buffer.of(0x80 | op, n)
      : n < 65536 ? Buffer.of(0x80 | op, 126, n >> 8, n & 255)
        : (() => { const b = Buffer.alloc(10); b[0] = 0x80 | op; b[1] = 127; b.writeBigUInt64BE(BigInt(n), 2); return b; })();
    this.socket.write(Buffer.concat([head, payload]));
  }
  send(data, binary) { this.frame(binary ? 2 : 1, Buffer.from(data)); }
  close(code, reason) {
    if (this.closed) return;
    const b = Buffer.alloc(2 + Buffer.byteLength(reason));
    b.writeUInt16BE(code);
    b.write(reason, 2);
    this.frame(8, b);
    this.closed = true;
    this.onclose();
    this.socket.end();
  }
}

function upgrade(req, socket, protocol) {
  const accept = createHash('sha1').update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  socket.write(['HTTP/1.1 101 Switching Protocols', 'Upgrade: websocket', 'Connection: Upgrade',
    `Sec-WebSocket-Accept: ${accept}`, ...(protocol ? [`Sec-WebSocket-Protocol: ${protocol}`] : []), '', ''].join('\r\n'));
  return new Conn(socket);
}

const server = createServer((req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  const files = { '/': ['index.html', 'text/html; charset=utf-8'], '/demo': ['demo.html', 'text/html; charset=utf-8'], '/pinion.js': ['pinion.js', 'text/javascript; charset=utf-8'] };
  if (files[path]) {
    res.writeHead(200, { 'content-type': files[path][1], 'cache-control': 'no-store' });
    res.end(readFileSync(WEB + files[path][0]));
  } else if (path === '/healthz') {
    res.end('ok\n');
  } else if (path === '/metrics') {
    res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
    res.end(`# mock\npinion_logged_total ${counters.logged}\n`);
  } else {
    res.writeHead(404);
    res.end('not found\n');
  }
});

server.on('upgrade', (req, socket) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/pub') {
    const offered = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((s) => s.trim());
    if (!offered.includes('rep.sp.nanomsg.org')) { socket.end('HTTP/1.1 400 Bad Request\r\n\r\n'); return; }
    const c = upgrade(req, socket, 'rep.sp.nanomsg.org');
    counters.publishers++;
    c.onclose = () => { counters.publishers--; };
    c.onmessage = (m) => {
      const t0 = process.hrtime.bigint();
      const id = m.subarray(0, 4);
      const f = readFields(m.subarray(4));
      const seq = f[2] ?? 0;
      const out = [];
      const payload = f[4] ?? Buffer.alloc(0);
      if (!f[1] || f[1].length !== 16) {
        const n = []; vField(n, 1, seq); vField(n, 2, 2); bField(n, 3, [...Buffer.from('client id not 16 bytes')]);
        bField(out, 2, n); counters.nacks++;
      } else if (payload.length > MAX_PAYLOAD) {
        const n = []; vField(n, 1, seq); vField(n, 2, 1); bField(n, 3, [...Buffer.from(`payload is ${payload.length} bytes, the limit is ${MAX_PAYLOAD}`)]);
        bField(out, 2, n); counters.nacks++;
      } else {
        const key = `${Buffer.from(f[1]).toString('hex')}:${seq}`;
        let offset = seen.get(key), dup = offset !== undefined;
        if (dup) counters.duplicates++;
        else { offset = append(Buffer.from(f[1]), seq, Buffer.from(f[3] ?? []), payload); seen.set(key, offset); }
        const a = []; vField(a, 1, seq); vField(a, 2, offset); vField(a, 3, dup ? 1 : 0);
        bField(out, 1, a);
      }
      latencies.push(Number(process.hrtime.bigint() - t0) / 1000 + 200 + Math.random() * 400);
      c.send(Buffer.concat([id, Buffer.from(out)]), true);
    };
  } else if (url.pathname === '/sub') {
    const c = upgrade(req, socket, null);
    const prefixes = url.searchParams.getAll('topic').map((t) => Buffer.from(t));
    const from = url.searchParams.has('from') ? Number(url.searchParams.get('from')) : log.length;
    const s = { conn: c, prefixes, next: log.length, tcp: false };
    for (let o = from; o < log.length; o++) if (matches(prefixes, log[o].topic)) { c.send(log[o].frame, true); counters.delivered++; }
    subs.add(s);
    c.onclose = () => subs.delete(s);
  } else if (url.pathname === '/stats') {
    const c = upgrade(req, socket, null);
    const timer = setInterval(() => c.send(JSON.stringify(stats())), 500);
    c.onclose = () => clearInterval(timer);
  } else {
    socket.end('HTTP/1.1 404 Not Found\r\n\r\n');
  }
});

function stats() {
  const lat = latencies.sort((a, b) => a - b);
  const pow2 = (v) => (v ? 2 ** Math.ceil(Math.log2(v)) : 0);
  const q = (p) => pow2(lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] ?? 0);
  const s = {
    t_ms: Date.now(), uptime_s: (Date.now() - started) / 1000, head: log.length,
    in_rate: (counters.logged - lastIn) * 2, out_rate: (counters.delivered - lastOut) * 2,
    nack_rate: (counters.nacks - lastNacks) * 2,
    ack_p50_us: q(0.5), ack_p99_us: q(0.99),
    publishers: counters.publishers, subscribers_tcp: 0, subscribers_ws: subs.size,
    logged: counters.logged, delivered: counters.delivered, nacks: counters.nacks,
    duplicates: counters.duplicates, slow_disconnects: counters.slow,
    cores: [{ core: 0, cpu: 0.05 + Math.random() * 0.1 }, { core: 1, cpu: 0.04 + Math.random() * 0.08 }],
    writer_cpu: 0.02 + Math.random() * 0.03,
  };
  lastIn = counters.logged; lastOut = counters.delivered; lastNacks = counters.nacks; latencies = [];
  return s;
}

const port = Number(process.argv[2] ?? 7452);
server.listen(port, '127.0.0.1', () => console.log(`mock hub on http://127.0.0.1:${server.address().port}`));
