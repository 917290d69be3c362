// pinion.js against a real hub (`pinion serve`), in Node: publish with
// acks, subscribe with replay, the hub's duplicate answer to a same-seq
// retry, reconnects in the middle of a stream (no gap, no duplicate, nothing
// logged twice), NACKs, the /stats feed, the /pub subprotocol, and
// connect({ urls }) (and edge_sub.mjs) moving past a dead URL to the hub.
//
//   PINION_HUB_URL=ws://127.0.0.1:7452 node --experimental-websocket --test tests/browser/hub.test.mjs
//
// (Node 22 and later: no flag.) crates/pinion-cli/tests/browser.rs starts a
// hub and runs this with PINION_HUB_URL set; without it these tests are
// skipped, saying so.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';

import { connect, NackError, toHex } from '../../crates/pinion-hub/web/pinion.js';

const URL_ = process.env.PINION_HUB_URL;
const skip = URL_ ? false : 'PINION_HUB_URL is not set (crates/pinion-cli/tests/browser.rs sets it)';
const WS = globalThis.WebSocket;
if (!skip && typeof WS !== 'function') {
  throw new Error('no global WebSocket: run node with --experimental-websocket (Node 20) or use Node >= 22');
}

/** A WebSocket whose instances the test can reach, to drop them. */
function tracked() {
  const sockets = [];
  class TrackedWS extends WS {
    constructor(url, protocols) {
      super(url, protocols);
      sockets.push(this);
    }
  }
  /** Closes the newest socket once it is open (as a network drop would). */
  async function drop() {
    await until('an open socket to drop', () => sockets.at(-1)?.readyState === 1);
    sockets.at(-1).close();
  }
  return { TrackedWS, sockets, drop };
}

const unique = (name) => `node-test/${name}/${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}/`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, fn, ms = 10000) {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}
const fast = { backoff: { min: 20, max: 200 } };
/** connect(), closed when the test ends, passed or not (no open sockets keep node alive). */
function open(t, opts) {
  const hub = connect(opts);
  t.after(() => hub.close());
  return hub;
}
// For the slow-consumer test: the pinion binary and the hub's SP publisher
// endpoint (browser.rs sets both).
const PINION_BIN = process.env.PINION_BIN;
const HUB_TCP = process.env.PINION_HUB_TCP;

test('publish and subscribe: acks, replay from an offset, then live', { skip, timeout: 20000 }, async (t) => {
  const hub = open(t, { url: URL_, WebSocket: WS, ...fast });
  const prefix = unique('basic');
  const acks = await Promise.all(Array.from({ length: 50 }, (_, i) => hub.publish(`${prefix}t${i % 3}`, `m${i}`)));
  assert.deepEqual(acks.map((a) => a.seq), Array.from({ length: 50 }, (_, i) => i + 1));
  assert.ok(acks.every((a) => !a.duplicate));
  assert.equal(new Set(acks.map((a) => a.offset)).size, 50, 'distinct offsets');

  const got = [];
  const sub = hub.subscribe({ topics: [prefix], from: Math.min(...acks.map((a) => a.offset)) }, (m) => got.push(m));
  await until('the replay', () => got.length >= 50);
  const live = await hub.publish(`${prefix}live`, new Uint8Array([0, 1, 2, 255]));
  await until('the live message', () => got.length >= 51);
  await sleep(100);
  assert.equal(got.length, 51);
  const byOffset = new Map(acks.map((a, i) => [a.offset, i]));
  for (let k = 0; k < 50; k++) {
    const m = got[k];
    if (k > 0) assert.ok(m.offset > got[k - 1].offset, 'offset order');
    const i = byOffset.get(m.offset);
    assert.equal(m.text(), `m${i}`);
    assert.equal(m.topic, `${prefix}t${i % 3}`);
    assert.equal(m.seq, i + 1);
    assert.equal(m.clientIdHex, hub.clientIdHex);
    assert.ok(Math.abs(m.timestamp.getTime() - Date.now()) < 60000, 'timestamp is now-ish');
  }
  assert.equal(got[50].offset, live.offset);
  assert.deepEqual([...got[50].payload], [0, 1, 2, 255]);
  sub.close();
  hub.close();
});

test('a same-seq retry is acked with the original offset, duplicate = true', { skip, timeout: 10000 }, async (t) => {
  const clientId = crypto.getRandomValues(new Uint8Array(16));
  const prefix = unique('dup');
  const h1 = open(t, { url: URL_, WebSocket: WS, clientId });
  const first = await h1.publish(`${prefix}x`, 'once');
  h1.close();
  const h2 = open(t, { url: URL_, WebSocket: WS, clientId }); // seq 1 again
  const again = await h2.publish(`${prefix}x`, 'once');
  assert.deepEqual(again, { seq: 1, offset: first.offset, duplicate: true });
  h2.close();
});

test('publish: connections dropped mid-stream; every message logged exactly once, every promise acked', { skip, timeout: 30000 }, async (t) => {
  const { TrackedWS, sockets, drop } = tracked();
  const hub = open(t, { url: URL_, WebSocket: TrackedWS, ...fast });
  const prefix = unique('pubdrop');
  const N = 300;
  const ps = [];
  for (let i = 0; i < N; i++) {
    ps.push(hub.publish(`${prefix}p`, `v${i}`));
    if (i % 60 === 30) await drop(); // the socket goes away with requests in flight
  }
  const acks = await Promise.all(ps);
  assert.ok(sockets.length >= 6, `reconnected (${sockets.length} sockets)`);
  assert.deepEqual(acks.map((a) => a.seq), Array.from({ length: N }, (_, i) => i + 1));
  assert.equal(new Set(acks.map((a) => a.offset)).size, N, 'one offset per seq');

  // The log holds each (client id, seq) once.
  const seen = new Map();
  const sub = hub.subscribe({ topics: [prefix], from: Math.min(...acks.map((a) => a.offset)) }, (m) => {
    seen.set(m.seq, (seen.get(m.seq) ?? 0) + 1);
  });
  await until('the replay', () => seen.size >= N);
  await sleep(100);
  assert.equal(seen.size, N);
  assert.ok([...seen.values()].every((c) => c === 1), 'no seq logged twice');
  const dups = acks.filter((a) => a.duplicate).length;
  console.log(`${sockets.length - 1} /pub drops, ${dups} acks were duplicates (retries of requests already logged)`);
  sub.close();
  hub.close();
});

test('subscribe: connections dropped mid-stream resume at last + 1 (no gap, no duplicate)', { skip, timeout: 30000 }, async (t) => {
  const { TrackedWS, sockets, drop } = tracked();
  const subHub = open(t, { url: URL_, WebSocket: TrackedWS, ...fast });
  const pubHub = open(t, { url: URL_, WebSocket: WS });
  const prefix = unique('subdrop');
  const first = await pubHub.publish(`${prefix}s`, 'start');
  const got = [];
  subHub.subscribe({ topics: [prefix], from: first.offset }, (m) => got.push(m.offset));
  const N = 400;
  const ps = [];
  for (let i = 0; i < N; i++) {
    ps.push(pubHub.publish(`${prefix}s`, `v${i}`));
    if (i % 100 === 50) {
      await sleep(10); // some of it delivered
      await drop();
    }
  }
  const acks = await Promise.all(ps);
  const want = [first.offset, ...acks.map((a) => a.offset)];
  await until('every message', () => got.length >= want.length, 15000);
  await sleep(100);
  assert.ok(sockets.length >= 5, `reconnected (${sockets.length} sockets)`);
  assert.deepEqual(got, want);
  subHub.close();
  pubHub.close();
});

test('a NACK: TOO_LARGE, and the connection goes on', { skip, timeout: 10000 }, async (t) => {
  const hub = open(t, { url: URL_, WebSocket: WS });
  await assert.rejects(hub.publish('node-test/big', new Uint8Array(300)),
    (e) => e instanceof NackError && e.codeName === 'TOO_LARGE' && e.code === 1 && e.seq === 1 && e.reason.length > 0);
  const ok = await hub.publish('node-test/big', 'small');
  assert.equal(ok.seq, 2);
  hub.close();
});

test('a request over the hub\'s WebSocket frame limit fails (not resent forever); the rest goes on', { skip, timeout: 10000 }, async (t) => {
  // The hub closes /pub with 1009 for a frame over its limit (64 KiB
  // today) instead of answering TOO_LARGE: pinion.js turns that into a
  // MESSAGE_TOO_BIG rejection.
  const hub = open(t, { url: URL_, WebSocket: WS, ...fast });
  const big = hub.publish('node-test/huge', new Uint8Array(200_000));
  const small = hub.publish('node-test/huge', 'small');
  await assert.rejects(big, (e) => e.code === 'MESSAGE_TOO_BIG' || (e instanceof NackError && e.codeName === 'TOO_LARGE'));
  assert.equal((await small).seq, 2);
  hub.close();
});

test('/stats: one JSON frame about every 500 ms with the contract fields', { skip, timeout: 10000 }, async (t) => {
  const hub = open(t, { url: URL_, WebSocket: WS });
  const frames = [];
  const t0 = Date.now();
  const w = hub.watchStats((s) => frames.push([Date.now() - t0, s]));
  await until('3 frames', () => frames.length >= 3, 5000);
  w.close();
  hub.close();
  const [, s] = frames.at(-1);
  for (const k of ['t_ms', 'uptime_s', 'head', 'in_rate', 'out_rate', 'nack_rate', 'ack_p50_us', 'ack_p99_us',
    'publishers', 'subscribers_tcp', 'subscribers_ws', 'logged', 'delivered', 'nacks', 'duplicates',
    'slow_disconnects', 'writer_cpu']) {
    assert.equal(typeof s[k], 'number', `${k}: ${JSON.stringify(s[k])}`);
  }
  assert.ok(Array.isArray(s.cores) && s.cores.length >= 1, JSON.stringify(s.cores));
  for (const c of s.cores) assert.ok(Number.isInteger(c.core) && typeof c.cpu === 'number', JSON.stringify(c));
  assert.ok(Math.abs(s.t_ms - Date.now()) < 60000, 't_ms is milliseconds since the epoch');
  const gap = frames.at(-1)[0] - frames.at(-2)[0];
  assert.ok(gap > 250 && gap < 1500, `frames ${gap} ms apart`);
});

test('/pub without the rep.sp.nanomsg.org subprotocol is refused', { skip, timeout: 10000 }, async (t) => {
  const outcome = await new Promise((resolve) => {
    const ws = new WS(`${URL_}/pub`);
    ws.onopen = () => { resolve('open'); ws.close(); };
    ws.onerror = () => resolve('refused');
    ws.onclose = () => resolve('refused');
  });
  assert.equal(outcome, 'refused');
  // With it: open, and the subprotocol is echoed.
  const proto = await new Promise((resolve, reject) => {
    const ws = new WS(`${URL_}/pub`, 'rep.sp.nanomsg.org');
    ws.onopen = () => { resolve(ws.protocol); ws.close(); };
    ws.onerror = () => reject(new Error('refused with the subprotocol'));
  });
  assert.equal(proto, 'rep.sp.nanomsg.org');
});

test('client ids are 16 random bytes per hub object', { skip }, (t) => {
  const a = open(t, { url: URL_, WebSocket: WS });
  const b = open(t, { url: URL_, WebSocket: WS });
  assert.equal(a.clientId.length, 16);
  assert.notEqual(toHex(a.clientId), toHex(b.clientId));
  a.close();
  b.close();
});

test('a slow consumer is cut with 4008 and resumes at last + 1: every message once, in order', {
  skip: skip || (!PINION_BIN || !HUB_TCP ? 'PINION_BIN / PINION_HUB_TCP not set (browser.rs sets them)' : false),
  timeout: 60000,
}, async (t) => {
  const hub = open(t, { url: URL_, WebSocket: WS, ...fast });
  const topic = unique('slow').slice(0, -1);
  const got = [];
  const sub = hub.subscribe({ topics: [topic] }, (m) => got.push(m.offset));
  const closes = [];
  const origOnstate = sub.onstate;
  sub.onstate = (st) => { if (st === 'connecting' && sub.lastClose) closes.push(sub.lastClose); origOnstate?.(st); };
  await until('the subscription', () => sub.state === 'open');
  // Publish far more than the hub queues for one subscriber (1 MiB) plus
  // what the kernel buffers, while this event loop is blocked and reads
  // nothing: the hub must cut this subscriber with 4008.
  const N = 60000;
  const r = spawnSync(PINION_BIN, ['publish', '--url', HUB_TCP, '--topic', topic, '--data', 'z'.repeat(250),
    '--count', String(N), '--window', '256', '-q'], { encoding: 'utf8', timeout: 30000 });
  const out = `${r.stdout}${r.stderr}`;
  assert.equal(r.status, 0, out);
  assert.match(out, new RegExp(`${N} acked`), out);
  await until(`${N} messages`, () => got.length >= N, 40000);
  await sleep(200);
  assert.ok(closes.some((c) => c.code === 4008 && /resume from offset \d+$/.test(c.reason)),
    `a 4008 close naming the resume offset, got ${JSON.stringify(closes)}`);
  assert.equal(got.length, N, 'no duplicate');
  for (let i = 1; i < got.length; i++) assert.equal(got[i], got[i - 1] + 1, `no gap at ${i}`);
  console.log(`slow consumer: ${closes.length} cut(s): ${closes.map((c) => c.reason).join('; ')}`);
  hub.close();
});

test('a live subscription that drops before its first message misses nothing (the pinion.v1 hello pins its start)', { skip, timeout: 20000 }, async (t) => {
  const { TrackedWS, sockets, drop } = tracked();
  const subHub = open(t, { url: URL_, WebSocket: TrackedWS, ...fast });
  const pubHub = open(t, { url: URL_, WebSocket: WS });
  const prefix = unique('hello');
  const got = [];
  const sub = subHub.subscribe({ topics: [prefix] }, (m) => got.push(m.offset));
  // The hello arrived: the subscription knows where it starts.
  await until('the hello', () => sub.from !== null);
  assert.equal(sockets.at(-1).protocol, 'pinion.v1');
  const start = sub.from;
  await drop(); // gone before receiving anything
  // Published while it is disconnected (and after).
  const acks = [];
  for (let i = 0; i < 20; i++) acks.push(await pubHub.publish(`${prefix}x`, `m${i}`));
  await until('every message', () => got.length >= 20, 10000);
  await sleep(100);
  assert.ok(sockets.length >= 2, 'it reconnected');
  assert.ok(acks[0].offset >= start, `start ${start} is not past the first publish ${acks[0].offset}`);
  assert.deepEqual(got, acks.map((a) => a.offset));
});

/** A loopback port nothing listens on (bound, then released). */
async function deadPort() {
  const srv = createServer();
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

test('urls: a dead URL first, then the hub: subscribe, publish and /stats move on to the hub', { skip, timeout: 20000 }, async (t) => {
  const dead = `ws://127.0.0.1:${await deadPort()}`;
  const moves = [];
  const hub = open(t, { urls: [dead, URL_], startIndex: 0, WebSocket: WS, ...fast, onreconnect: (i) => moves.push(i) });
  const prefix = unique('urls');
  const got = [];
  const sub = hub.subscribe({ topics: [prefix] }, (m) => got.push([m.offset, sub.node]));
  const stats = [];
  const w = hub.watchStats((s) => stats.push(s));
  // Live from now: publish once the hub has said where the subscription starts.
  await until('the hello, on the hub', () => sub.from !== null);
  const acks = [];
  for (let i = 0; i < 5; i++) acks.push(await hub.publish(`${prefix}x`, `m${i}`, { timeout: 5000 }));
  await until('5 messages', () => got.length >= 5);
  await until('a stats frame', () => stats.length >= 1);
  assert.deepEqual(got, acks.map((a) => [a.offset, URL_.replace(/\/+$/, '')]));
  assert.equal(hub.publishNode, URL_.replace(/\/+$/, ''));
  assert.equal(w.node, URL_.replace(/\/+$/, ''));
  for (const link of ['subscribe', 'publish', 'stats']) {
    assert.ok(moves.some((m) => m.link === link && m.node === dead), `${link} tried the dead URL first: ${JSON.stringify(moves)}`);
  }
  hub.close();
});

test('edge_sub.mjs: moves past a dead URL, prints one exact JSON line per message, exits 0 after --count', { skip, timeout: 20000 }, async (t) => {
  const pubHub = open(t, { url: URL_, WebSocket: WS });
  const prefix = unique('edge');
  const acks = [];
  for (let i = 0; i < 4; i++) acks.push(await pubHub.publish(`${prefix}t${i}`, Uint8Array.of(i, 0xff, 0x22)));
  const dead = `ws://127.0.0.1:${await deadPort()}`;
  const script = fileURLToPath(new URL('./edge_sub.mjs', import.meta.url));
  const flags = Number(process.versions.node.split('.')[0]) < 22 ? ['--experimental-websocket'] : [];
  const child = spawn(process.execPath, [...flags, script, '--url', dead, '--url', URL_, '--start-index', '0', '--topic', prefix,
    '--from', String(acks[0].offset), '--count', '6', '--for', '15'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => child.kill());
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  // Two more, live, once it printed the replayed four.
  await until('the replay', () => out.split('\n').length > 4, 10000);
  for (let i = 4; i < 6; i++) acks.push(await pubHub.publish(`${prefix}t${i}`, Uint8Array.of(i, 0xff, 0x22)));
  const code = await new Promise((r) => child.on('exit', r));
  assert.equal(code, 0, err);
  const node = URL_.replace(/\/+$/, '');
  const want = acks.map((a, i) => `{"offset":${a.offset},"topic":"${prefix}t${i}","payload_hex":"0${i}ff22","node":"${node}"}`);
  assert.deepEqual(out.trimEnd().split('\n'), want, err);
  assert.match(err, new RegExp(`${dead}: connection ended .*; moving to ${node}`));
  assert.match(err, /--count 6 reached/);
  pubHub.close();
});
