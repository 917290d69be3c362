// pinion.js's connections without a hub: a scripted fake WebSocket and
// fake timers drive reconnects, backoff, resume and resends.
//
//   node --test tests/browser/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import {
  connect, encodePublish, toHex, PinionError, NackError, CLOSE_SLOW_CONSUMER, CLOSE_REPLAY_FAILED,
} from '../../crates/pinion-hub/web/pinion.js';

const vectors = JSON.parse(readFileSync(new URL('./vectors.json', import.meta.url), 'utf8'));
const hex = (s) => Uint8Array.from(s.match(/../g) ?? [], (b) => parseInt(b, 16));
const cat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
};
const varint = (n) => { const o = []; while (n >= 128) { o.push((n % 128) | 128); n = Math.floor(n / 128); } o.push(n); return o; };
const field = (f, wt, body) => (wt === 0 ? [...varint(f * 8), ...varint(body)] : [...varint(f * 8 + 2), ...varint(body.length), ...body]);

/** A /sub frame, built here independently of pinion.js. */
function subFrame(topic, offset, payload = `m${offset}`) {
  const p = new TextEncoder().encode(payload);
  const d = [...field(1, 0, offset), ...field(2, 0, 1795400000000000 + offset), ...field(3, 2, [...new Uint8Array(16).fill(7)]),
    ...field(4, 0, offset + 1), ...field(5, 2, [...p])];
  return Uint8Array.from([...new TextEncoder().encode(topic), 0, ...d]);
}
/** A /pub reply frame. */
function ackFrame(reqId, seq, offset, duplicate = false) {
  const ack = [...field(1, 0, seq), ...field(2, 0, offset), ...field(3, 0, duplicate ? 1 : 0)];
  const r = Uint8Array.from(field(1, 2, ack));
  const out = new Uint8Array(4 + r.length);
  new DataView(out.buffer).setUint32(0, reqId);
  out.set(r, 4);
  return out;
}
function nackFrame(reqId, seq, code, reason) {
  const nack = [...field(1, 0, seq), ...field(2, 0, code), ...field(3, 2, [...new TextEncoder().encode(reason)])];
  const r = Uint8Array.from(field(2, 2, nack));
  const out = new Uint8Array(4 + r.length);
  new DataView(out.buffer).setUint32(0, reqId);
  out.set(r, 4);
  return out;
}
const reqIdOf = (frame) => new DataView(frame.buffer, frame.byteOffset).getUint32(0);

class FakeTimers {
  constructor() { this.now = 0; this.q = []; this.nextId = 1; }
  setTimeout = (fn, ms) => { const id = this.nextId++; this.q.push({ id, at: this.now + ms, fn }); return id; };
  clearTimeout = (id) => { this.q = this.q.filter((t) => t.id !== id); };
  /** The delays (from now) of the pending timers. */
  pending() { return this.q.map((t) => t.at - this.now); }
  advance(ms) {
    const end = this.now + ms;
    for (;;) {
      this.q.sort((a, b) => a.at - b.at);
      const t = this.q[0];
      if (!t || t.at > end) break;
      this.q.shift();
      this.now = t.at;
      t.fn();
    }
    this.now = end;
  }
}

function fakeWebSocket() {
  const sockets = [];
  class FakeWS {
    constructor(url, protocol) {
      this.url = url;
      this.protocolAsked = protocol;
      this.sent = [];
      this.closedByClient = null;
      sockets.push(this);
    }
    send(b) { this.sent.push(Uint8Array.from(b)); }
    close(code, reason) { this.closedByClient = { code, reason }; }
    // the "server" side
    accept() { this.onopen?.({}); }
    deliver(bytes) { this.onmessage?.({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length) }); }
    text(s) { this.onmessage?.({ data: s }); }
    drop(code = 1006, reason = '') { this.onclose?.({ code, reason, wasClean: code !== 1006 }); }
  }
  return { FakeWS, sockets, last: () => sockets[sockets.length - 1] };
}

function setup(extra = {}) {
  const timers = new FakeTimers();
  const ws = fakeWebSocket();
  const states = [];
  const errors = [];
  const hub = connect({
    url: 'ws://hub.test:7452', WebSocket: ws.FakeWS, timers, random: () => 1,
    onstate: (s) => states.push(s), onerror: (e) => errors.push(e), ...extra,
  });
  return { hub, timers, ws, states, errors };
}

test('base URL: http(s) becomes ws(s), trailing slash dropped, bad URLs refused', () => {
  const { FakeWS } = fakeWebSocket();
  assert.equal(connect({ url: 'http://h:1/', WebSocket: FakeWS }).url, 'ws://h:1');
  assert.equal(connect({ url: 'https://h/pinion/', WebSocket: FakeWS }).url, 'wss://h/pinion');
  assert.throws(() => connect({ url: 'ftp://h', WebSocket: FakeWS }), /ws:\/\/, wss:\/\//);
  assert.throws(() => connect({ url: 'nope', WebSocket: FakeWS }), /not a URL/);
  assert.throws(() => connect({ WebSocket: FakeWS }), /no url given/); // Node: no location
  assert.throws(() => connect({ url: 'ws://h', WebSocket: 'not a constructor' }),
    (e) => e instanceof PinionError && e.code === 'NO_WEBSOCKET' && /pass connect\(\{ WebSocket \}\)/.test(e.message));
});

test('subscribe: URL with percent-encoded prefixes and from', () => {
  const { hub, ws } = setup();
  hub.subscribe({ topics: ['chat/', 'a b&c=\u00e9'], from: 0 }, () => {});
  assert.equal(ws.last().url, 'ws://hub.test:7452/sub?topic=chat%2F&topic=a%20b%26c%3D%C3%A9&from=0');
  hub.subscribe({}, () => {});
  assert.equal(ws.last().url, 'ws://hub.test:7452/sub');
  hub.subscribe({ topics: 'x/' }, () => {});
  assert.equal(ws.last().url, 'ws://hub.test:7452/sub?topic=x%2F');
  assert.throws(() => hub.subscribe({ from: -1 }, () => {}), RangeError);
  assert.throws(() => hub.subscribe({ topics: [1] }, () => {}), /topics must be/);
  assert.throws(() => hub.subscribe({}), /callback is required/);
  hub.close();
});

test('subscribe: resumes at last offset + 1 after a drop, drops duplicates, no gap', () => {
  const { hub, ws, timers } = setup();
  const got = [];
  const sub = hub.subscribe({ topics: ['t/'], from: 5 }, (m) => got.push([m.topic, m.offset, m.text()]));
  const s1 = ws.last();
  s1.accept();
  assert.equal(sub.state, 'open');
  for (const o of [5, 6, 7]) s1.deliver(subFrame('t/a', o));
  s1.drop(1006);
  assert.equal(sub.state, 'connecting');
  assert.equal(ws.sockets.length, 1, 'no reconnect before the backoff delay');
  timers.advance(100); // random() = 1: the first delay is the full 100 ms
  const s2 = ws.last();
  assert.equal(s2.url, 'ws://hub.test:7452/sub?topic=t%2F&from=8');
  s2.accept();
  s2.deliver(subFrame('t/a', 7)); // a duplicate: dropped
  s2.deliver(subFrame('t/b', 8));
  assert.deepEqual(got, [['t/a', 5, 'm5'], ['t/a', 6, 'm6'], ['t/a', 7, 'm7'], ['t/b', 8, 'm8']]);
  assert.equal(sub.duplicatesDropped, 1);
  assert.equal(sub.lastOffset, 8);
  hub.close();
  assert.deepEqual(s2.closedByClient, { code: 1000, reason: 'client closed' });
});

test('subscribe: a slow-consumer close (4008) resumes from last + 1', () => {
  const { hub, ws, timers } = setup();
  const got = [];
  hub.subscribe({ from: 0 }, (m) => got.push(m.offset));
  ws.last().accept();
  for (let o = 0; o < 4; o++) ws.last().deliver(subFrame('x', o));
  ws.last().drop(CLOSE_SLOW_CONSUMER, 'slow consumer: resume from offset 4');
  timers.advance(100);
  assert.equal(ws.last().url, 'ws://hub.test:7452/sub?from=4');
  ws.last().accept();
  ws.last().deliver(subFrame('x', 4));
  assert.deepEqual(got, [0, 1, 2, 3, 4]);
  hub.close();
});

test('subscribe: live (no from) stays live until a message arrives, then resumes exactly', () => {
  const { hub, ws, timers } = setup();
  hub.subscribe({ topics: ['a'] }, () => {});
  ws.last().accept();
  ws.last().drop();
  timers.advance(100);
  assert.equal(ws.last().url, 'ws://hub.test:7452/sub?topic=a');
  ws.last().accept();
  ws.last().deliver(subFrame('a', 41));
  ws.last().drop();
  timers.advance(200); // second failure in a row: the ceiling doubled
  assert.equal(ws.last().url, 'ws://hub.test:7452/sub?topic=a&from=42');
  hub.close();
});

test('subscribe: replay failure (4011) is reported and retried', () => {
  const { hub, ws, timers, errors } = setup();
  const sub = hub.subscribe({ from: 3 }, () => {});
  const subErrors = [];
  sub.onerror = (e) => subErrors.push(e);
  ws.last().accept();
  ws.last().drop(CLOSE_REPLAY_FAILED, 'log read error');
  assert.equal(subErrors.length, 1);
  assert.equal(subErrors[0].code, 'REPLAY_FAILED');
  assert.match(errors[0].message, /log read error/);
  timers.advance(100);
  assert.equal(ws.last().url, 'ws://hub.test:7452/sub?from=3');
  hub.close();
});

test('a malformed frame is reported, not fatal', () => {
  const { hub, ws, errors } = setup();
  const got = [];
  hub.subscribe({}, (m) => got.push(m.offset));
  ws.last().accept();
  ws.last().deliver(Uint8Array.of(1, 2, 3));
  ws.last().text('hello');
  ws.last().deliver(subFrame('t', 9));
  assert.deepEqual(got, [9]);
  assert.equal(errors.length, 2);
  assert.match(errors[0].message, /without the 0x00 byte/);
  assert.match(errors[1].message, /text frame/);
  hub.close();
});

test('backoff: delays double up to the cap, then reset once a connection stays up', () => {
  const { hub, ws, timers } = setup();
  hub.subscribe({}, () => {});
  const delays = [];
  for (let i = 0; i < 9; i++) {
    ws.last().drop(1006); // refused before opening
    delays.push(...timers.pending());
    timers.advance(timers.pending()[0]);
  }
  assert.deepEqual(delays, [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
  ws.last().accept();
  ws.last().drop(1006); // up but not for long: the backoff goes on
  assert.deepEqual(timers.pending(), [10000]);
  timers.advance(10000);
  ws.last().accept();
  timers.advance(5000); // stable: reset
  ws.last().drop(1006);
  assert.deepEqual(timers.pending(), [100]);
  hub.close();
  assert.deepEqual(timers.pending(), [], 'close cancels the retry timer');
});

test('backoff: full jitter (random in [0, ceiling])', () => {
  let r = 0.25;
  const { hub, ws, timers } = setup({ random: () => r });
  hub.subscribe({}, () => {});
  ws.last().drop();
  assert.deepEqual(timers.pending(), [25]);
  timers.advance(25);
  r = 0.5;
  ws.last().drop();
  assert.deepEqual(timers.pending(), [100]);
  hub.close();
});

test('hub state: connecting, open, connecting on a drop, closed', () => {
  const { hub, ws, timers, states } = setup();
  hub.subscribe({}, () => {});
  ws.last().accept();
  hub.subscribe({ topics: ['b'] }, () => {});
  ws.last().accept();
  ws.sockets[0].drop();
  timers.advance(100);
  ws.last().accept();
  hub.close();
  assert.deepEqual(states, ['open', 'connecting', 'open', 'connecting', 'open', 'connecting', 'open', 'closed']);
  assert.equal(hub.state, 'closed');
});

test('publish: subprotocol, request id with the high bit, Publish body, ack', async () => {
  const cid = hex(vectors.publish[0].client_id);
  const { hub, ws } = setup({ clientId: cid });
  assert.equal(hub.clientIdHex, vectors.publish[0].client_id);
  const p = hub.publish('chat/room1', 'hello');
  const s = ws.last();
  assert.equal(s.url, 'ws://hub.test:7452/pub');
  assert.equal(s.protocolAsked, 'rep.sp.nanomsg.org');
  assert.equal(s.sent.length, 0, 'nothing sent before the connection is open');
  s.accept();
  assert.equal(s.sent.length, 1);
  const f = s.sent[0];
  assert.ok(reqIdOf(f) >= 0x80000000, 'high bit set');
  assert.equal(toHex(f.subarray(4)), vectors.publish[0].bytes, 'same bytes as protoc for seq 1');
  s.deliver(ackFrame(reqIdOf(f), 1, 77));
  assert.deepEqual(await p, { seq: 1, offset: 77, duplicate: false });
  assert.equal(hub.pendingCount, 0);
  hub.close();
});

test('publish: seq increases, request ids differ, random 16-byte client ids', async () => {
  const { hub, ws } = setup();
  const other = setup().hub;
  assert.equal(hub.clientId.length, 16);
  assert.notEqual(hub.clientIdHex, other.clientIdHex);
  const ps = [hub.publish('t', 'a'), hub.publish('t', Uint8Array.of(1, 2)), hub.publish('t', new ArrayBuffer(3))];
  const s = ws.last();
  s.accept();
  assert.equal(s.sent.length, 3);
  const ids = s.sent.map(reqIdOf);
  assert.equal(new Set(ids).size, 3);
  for (let i = 0; i < 3; i++) {
    const seq = i + 1;
    const expect = encodePublish({ clientId: hub.clientId, seq, topic: 't', payload: [Uint8Array.of(0x61), Uint8Array.of(1, 2), new Uint8Array(3)][i] });
    assert.equal(toHex(s.sent[i].subarray(4)), toHex(expect));
  }
  // Answers out of order are matched by request id.
  s.deliver(ackFrame(ids[2], 3, 12));
  s.deliver(ackFrame(ids[0], 1, 10));
  s.deliver(ackFrame(ids[1], 2, 11));
  assert.deepEqual((await Promise.all(ps)).map((a) => a.offset), [10, 11, 12]);
  hub.close();
  other.close();
});

test('publish: unacked requests are resent with the same seq after a reconnect', async () => {
  const { hub, ws, timers } = setup();
  const ps = [1, 2, 3].map((i) => hub.publish('r', `m${i}`));
  const s1 = ws.last();
  s1.accept();
  const sent1 = s1.sent.map(toHex);
  s1.deliver(ackFrame(reqIdOf(s1.sent[0]), 1, 100));
  s1.drop(1006);
  const p4 = hub.publish('r', 'm4'); // while disconnected: queued
  assert.equal(hub.state, 'connecting');
  timers.advance(100);
  const s2 = ws.last();
  assert.notEqual(s2, s1);
  s2.accept();
  assert.deepEqual(s2.sent.map(toHex).slice(0, 2), sent1.slice(1), 'the same frames (same request id, same seq) again');
  assert.equal(s2.sent.length, 3);
  // The hub answers the retries with their original offsets.
  s2.deliver(ackFrame(reqIdOf(s2.sent[0]), 2, 101, true));
  s2.deliver(ackFrame(reqIdOf(s2.sent[1]), 3, 102, true));
  s2.deliver(ackFrame(reqIdOf(s2.sent[2]), 4, 103));
  s2.deliver(ackFrame(reqIdOf(s2.sent[2]), 4, 103)); // a stray second answer: ignored
  const acks = await Promise.all([...ps, p4]);
  assert.deepEqual(acks.map((a) => [a.seq, a.offset, a.duplicate]), [[1, 100, false], [2, 101, true], [3, 102, true], [4, 103, false]]);
  hub.close();
});

test('publish: a NACK rejects with a NackError', async () => {
  const { hub, ws } = setup();
  const p = hub.publish('t', 'x'.repeat(300));
  ws.last().accept();
  ws.last().deliver(nackFrame(reqIdOf(ws.last().sent[0]), 1, 1, 'payload is 300 bytes, the limit is 256'));
  await assert.rejects(p, (e) => e instanceof NackError && e.code === 1 && e.codeName === 'TOO_LARGE'
    && e.reason === 'payload is 300 bytes, the limit is 256' && e.seq === 1 && !e.retryable);
  hub.close();
});

test('publish: invalid arguments reject with clear errors, nothing sent', async () => {
  const { hub, ws } = setup();
  await assert.rejects(hub.publish('x'.repeat(256), 'a'), /topic is 256 bytes, the hub takes at most 255/);
  await assert.rejects(hub.publish('a\u0000b', 'a'), /NUL/);
  await assert.rejects(hub.publish(5, 'a'), /topic must be a string/);
  await assert.rejects(hub.publish('t', 5), /payload must be/);
  assert.equal(ws.sockets.length, 0);
  hub.close();
  await assert.rejects(hub.publish('t', 'a'), (e) => e.code === 'CLOSED');
});

test('publish: close rejects pending publishes; timeout bounds the wait', async () => {
  const { hub, ws, timers } = setup();
  const p1 = hub.publish('t', 'a', { timeout: 1000 });
  const p2 = hub.publish('t', 'b');
  ws.last().accept();
  timers.advance(1000);
  await assert.rejects(p1, (e) => e instanceof PinionError && e.code === 'TIMEOUT' && /may still be logged/.test(e.message));
  assert.equal(hub.pendingCount, 1);
  hub.close();
  await assert.rejects(p2, (e) => e.code === 'CLOSED' && /may or may not be in the log/.test(e.message));
});

test('watchStats: JSON frames, reconnects', () => {
  const { hub, ws, timers } = setup();
  const got = [];
  const w = hub.watchStats((s) => got.push(s.head));
  assert.equal(ws.last().url, 'ws://hub.test:7452/stats');
  ws.last().accept();
  ws.last().text('{"head": 5}');
  ws.last().drop();
  timers.advance(100);
  ws.last().accept();
  ws.last().text('{"head": 6}');
  assert.deepEqual(got, [5, 6]);
  assert.equal(w.state, 'open');
  w.close();
  assert.equal(w.state, 'closed');
  hub.close();
});

test('an error before the open ends the attempt even without a close event (Node 20 WebSocket)', () => {
  const { hub, ws, timers } = setup();
  hub.subscribe({ from: 1 }, () => {});
  const s1 = ws.last();
  s1.onerror?.({}); // and no close event follows
  assert.deepEqual(timers.pending().filter((d) => d <= 100), [100], 'a retry is scheduled');
  timers.advance(100);
  assert.equal(ws.sockets.length, 2);
  s1.drop(1006); // a late close of the old socket changes nothing
  assert.equal(ws.sockets.length, 2);
  ws.last().accept();
  ws.last().onerror?.({}); // an error on an open socket: wait for its close
  assert.equal(hub.state, 'open');
  hub.close();
});

test('a connection attempt that hangs is abandoned after connectTimeout and retried', () => {
  const { hub, ws, timers } = setup({ connectTimeout: 3000 });
  hub.subscribe({}, () => {});
  const s1 = ws.last();
  timers.advance(2999);
  assert.equal(ws.sockets.length, 1);
  timers.advance(1);
  assert.ok(s1.closedByClient, 'the hung socket is closed');
  timers.advance(100);
  assert.equal(ws.sockets.length, 2);
  ws.last().accept();
  timers.advance(10000);
  assert.equal(ws.sockets.length, 2, 'no timeout once open');
  hub.close();
});

test('publish: a close with 1009 (message too big) fails the largest request; the others are resent', async () => {
  const { hub, ws, timers } = setup();
  const small = hub.publish('t', 'small');
  const big = hub.publish('t', new Uint8Array(70000));
  ws.last().accept();
  ws.last().drop(1009, '');
  await assert.rejects(big, (e) => e instanceof PinionError && e.code === 'MESSAGE_TOO_BIG' && /not logged/.test(e.message));
  timers.advance(100);
  ws.last().accept();
  assert.equal(ws.last().sent.length, 1, 'only the small one again');
  ws.last().deliver(ackFrame(reqIdOf(ws.last().sent[0]), 1, 3));
  assert.equal((await small).offset, 3);
  hub.close();
});

// ---- several URLs (a cluster's nodes) -------------------------------------------

const A = 'ws://a.test:7452';
const B = 'ws://b.test:7452';
const C = 'ws://c.test:7452';
/** A hub object on three nodes, starting on `startIndex` (default 0). */
function setupMulti(extra = {}) {
  return setup({ url: undefined, urls: [A, B, `${C}/`], startIndex: 0, ...extra });
}
const nodeOf = (s) => s.url.replace(/\/(sub|pub|stats)(\?.*)?$/, '');
/** A NOT_LEADER reply (code 6), with the leader's publisher URL when given. */
function notLeaderFrame(reqId, seq, leader) {
  const nack = [...field(1, 0, seq), ...field(2, 0, 6), ...field(3, 2, [...new TextEncoder().encode('node 2 does not lead')])];
  if (leader) nack.push(...field(4, 2, [...new TextEncoder().encode(leader)]));
  const r = Uint8Array.from(field(2, 2, nack));
  const out = new Uint8Array(4 + r.length);
  new DataView(out.buffer).setUint32(0, reqId);
  out.set(r, 4);
  return out;
}

test('urls: normalized like url; url and urls together, an empty list, a bad entry or startIndex are INVALID', () => {
  const { FakeWS } = fakeWebSocket();
  const hub = connect({ urls: ['http://a:1/', 'wss://b/x/'], WebSocket: FakeWS });
  assert.deepEqual(hub.urls, ['ws://a:1', 'wss://b/x']);
  assert.equal(hub.url, 'ws://a:1', 'url is the first of urls');
  assert.deepEqual(connect({ url: 'http://h:1', WebSocket: FakeWS }).urls, ['ws://h:1']);
  const invalid = (opts, re) => assert.throws(() => connect({ WebSocket: FakeWS, ...opts }),
    (e) => e instanceof PinionError && e.code === 'INVALID' && re.test(e.message));
  invalid({ url: 'ws://a', urls: ['ws://b'] }, /either url or urls, not both/);
  invalid({ url: 'ws://a', urls: [] }, /either url or urls/);
  invalid({ urls: [] }, /non-empty array/);
  invalid({ urls: 'ws://a' }, /non-empty array/);
  invalid({ urls: ['ws://a', 'ftp://b'] }, /ws:\/\/, wss:\/\//);
  invalid({ urls: ['ws://a', 'nope'] }, /not a URL: nope/);
  invalid({ urls: ['ws://a', 'ws://b?x=1'] }, /without query/);
  invalid({ urls: ['ws://a', 'ws://b'], startIndex: 2 }, /startIndex must be an integer in \[0, 2\)/);
  invalid({ urls: ['ws://a', 'ws://b'], startIndex: 0.5 }, /startIndex/);
});

test('urls: the start index spreads hub objects over the nodes (random by default, injectable)', () => {
  const starts = [0, 0.2, 0.34, 0.5, 0.67, 0.99].map((r) => {
    const { hub, ws } = setupMulti({ startIndex: undefined, random: () => r });
    hub.subscribe({}, () => {});
    const node = nodeOf(ws.last());
    hub.close();
    return node;
  });
  assert.deepEqual(starts, [A, A, B, B, C, C]);
  // Math.random (the default): 60 hub objects land on every node.
  const { FakeWS, sockets } = fakeWebSocket();
  for (let i = 0; i < 60; i++) {
    const hub = connect({ urls: [A, B, C], WebSocket: FakeWS });
    hub.subscribe({}, () => {});
    hub.close();
  }
  const counts = new Map();
  for (const s of sockets) counts.set(nodeOf(s), (counts.get(nodeOf(s)) ?? 0) + 1);
  assert.deepEqual([...counts.keys()].sort(), [A, B, C], JSON.stringify([...counts]));
  // Every connection of one hub object starts at its start index.
  const { hub, ws } = setupMulti({ startIndex: 2 });
  hub.subscribe({}, () => {});
  hub.watchStats(() => {});
  hub.publish('t', 'x').catch(() => {}); // rejected by the close below
  assert.deepEqual(ws.sockets.map((s) => s.url), [`${C}/sub`, `${C}/stats`, `${C}/pub`]);
  assert.equal(hub.publishNode, C);
  hub.close();
});

test('urls: each drop or failed attempt moves to the next URL, round robin, from the start index', () => {
  const { hub, ws, timers } = setupMulti({ startIndex: 1, connectTimeout: 3000 });
  const sub = hub.subscribe({ from: 0 }, () => {});
  const moves = [];
  sub.onreconnect = (i) => moves.push([i.node, i.next, i.code]);
  const nodes = [];
  const step = (end) => { nodes.push(nodeOf(ws.last())); end(ws.last()); timers.advance(timers.pending().find((d) => d <= 10000)); };
  assert.equal(sub.node, B);
  step((s) => { s.accept(); s.drop(1006); }); // up, then dropped
  step((s) => s.onerror?.({})); // refused (Node 20: an error, no close)
  step((s) => s.drop(1006)); // refused
  step((s) => { s.accept(); s.drop(1001, 'going away'); }); // node shutting down
  step(() => timers.advance(3000)); // hangs: abandoned after connectTimeout
  nodes.push(nodeOf(ws.last()));
  assert.deepEqual(nodes, [B, C, A, B, C, A]);
  assert.deepEqual(moves, [[B, C, 1006], [C, A, 1006], [A, B, 1006], [B, C, 1001], [C, A, 1006]]);
  assert.equal(sub.node, A);
  hub.close();
});

test('urls: without startIndex each hub object tries the others in its own random order, so a dead node\'s clients spread', () => {
  const D = 'ws://d.test:7452';
  // 200 hub objects all starting on A (random() = 0 picks index 0 and
  // keeps the shuffle's first draws at 0), then Math.random for the order.
  const seconds = new Map();
  for (let i = 0; i < 200; i++) {
    let first = true;
    const random = () => { if (first) { first = false; return 0; } return Math.random(); };
    const { hub, ws, timers } = setup({ url: undefined, urls: [A, B, C, D], startIndex: undefined, random });
    const sub = hub.subscribe({ from: 0 }, () => {});
    assert.equal(sub.node, A);
    // Each tries every node once per round, A first.
    const round = [nodeOf(ws.last())];
    for (let k = 0; k < 3; k++) {
      ws.last().drop(1006);
      timers.advance(timers.pending().find((d) => d <= 10000));
      round.push(nodeOf(ws.last()));
    }
    assert.deepEqual([...round].sort(), [A, B, C, D], round.join(' '));
    seconds.set(round[1], (seconds.get(round[1]) ?? 0) + 1);
    hub.close();
  }
  // A dies: where its 200 clients go next. Round robin would send all to B.
  for (const n of [B, C, D]) assert.ok((seconds.get(n) ?? 0) >= 30, JSON.stringify([...seconds]));
});

test('urls: backoff grows per full round of failures; a stable connection resets it', () => {
  const { hub, ws, timers } = setupMulti();
  hub.subscribe({}, () => {});
  const delays = [];
  for (let i = 0; i < 12; i++) {
    ws.last().drop(1006); // every node refuses
    delays.push(...timers.pending());
    timers.advance(timers.pending()[0]);
  }
  assert.deepEqual(delays, [100, 100, 100, 200, 200, 200, 400, 400, 400, 800, 800, 800]);
  ws.last().accept();
  timers.advance(5000); // stable: reset
  ws.last().drop(1006);
  assert.deepEqual(timers.pending(), [100]);
  hub.close();
});

test('urls: a subscription with from resumes at last + 1 on the next node; nothing below it reaches the app', () => {
  const { hub, ws, timers } = setupMulti();
  const got = [];
  const nodes = [];
  const sub = hub.subscribe({ topics: ['t/'], from: 5 }, (m) => { got.push(m.offset); nodes.push(sub.node); });
  const a = ws.last();
  assert.equal(a.url, `${A}/sub?topic=t%2F&from=5`);
  a.accept();
  a.text('{"next":5}');
  a.deliver(subFrame('t/x', 3)); // below from: a node that ignored it
  for (const o of [5, 6, 8]) a.deliver(subFrame('t/x', o));
  a.drop(1006);
  timers.advance(100);
  const b = ws.last();
  assert.equal(b.url, `${B}/sub?topic=t%2F&from=9`);
  b.accept();
  b.text('{"next":9}');
  // A node that replays what the app already has: dropped, counted.
  for (const o of [6, 8, 9, 10]) b.deliver(subFrame('t/x', o));
  b.drop(4008, 'slow consumer: resume from offset 11');
  timers.advance(100);
  const c = ws.last();
  assert.equal(c.url, `${C}/sub?topic=t%2F&from=11`);
  c.accept();
  c.deliver(subFrame('t/x', 10)); // again
  c.deliver(subFrame('t/x', 12)); // 11 was a Raft entry: offsets skip numbers
  assert.deepEqual(got, [5, 6, 8, 9, 10, 12]);
  assert.deepEqual(nodes, [A, A, A, B, B, C]);
  assert.equal(sub.duplicatesDropped, 4);
  assert.equal(sub.received, 6);
  hub.close();
});

test('urls: a live subscription moving before its first message resumes from the hello\'s next on the next node', () => {
  const { hub, ws, timers } = setupMulti();
  const got = [];
  const sub = hub.subscribe({ topics: ['live/'] }, (m) => got.push([m.offset, sub.node]));
  const resumes = [];
  sub.onreconnect = (i) => resumes.push([i.next, i.from]);
  const a = ws.last();
  assert.equal(a.url, `${A}/sub?topic=live%2F`, 'live: no from');
  a.accept();
  a.text('{"next":40}');
  assert.equal(sub.from, 40);
  a.drop(1006); // before any message
  timers.advance(100);
  const b = ws.last();
  assert.equal(b.url, `${B}/sub?topic=live%2F&from=40`, 'the new node is asked from the hello\'s offset');
  b.accept();
  b.text('{"next":40}');
  b.deliver(subFrame('live/x', 39)); // below it: never delivered
  b.deliver(subFrame('live/x', 40));
  b.deliver(subFrame('live/x', 41));
  // And after receiving messages: from last + 1.
  b.drop(1006);
  timers.advance(200);
  const c = ws.last();
  assert.equal(c.url, `${C}/sub?topic=live%2F&from=42`);
  c.accept();
  c.text('{"next":42}');
  c.deliver(subFrame('live/x', 41));
  c.deliver(subFrame('live/x', 42));
  assert.deepEqual(got, [[40, B], [41, B], [42, C]]);
  assert.deepEqual(resumes, [[B, 40], [C, 42]]);
  assert.equal(sub.duplicatesDropped, 2);
  hub.close();
});

test('urls: a hello from a later node does not move a live subscription\'s start', () => {
  const { hub, ws, timers } = setupMulti();
  hub.subscribe({}, () => {});
  ws.last().accept();
  ws.last().text('{"next":7}');
  ws.last().drop();
  timers.advance(100);
  ws.last().accept();
  ws.last().text('{"next":9}'); // a node further ahead would say more; the client keeps 7
  ws.last().drop();
  timers.advance(200);
  assert.equal(ws.last().url, `${C}/sub?from=7`);
  hub.close();
});

test('urls: sub.node, onstate(state, node) and hub.onreconnect tell where a connection is', () => {
  const seen = [];
  const { hub, ws, timers } = setupMulti({ onreconnect: (i) => seen.push(['hub', i.link, i.node, i.next, i.delay]) });
  const sub = hub.subscribe({}, () => {});
  sub.onstate = (s, node) => seen.push(['state', s, node]);
  ws.last().accept();
  ws.last().drop(1006, 'gone');
  timers.advance(100);
  ws.last().accept();
  const stats = hub.watchStats(() => {});
  assert.equal(stats.node, A);
  ws.last().drop(); // the stats connection
  assert.equal(stats.node, B);
  assert.deepEqual(seen, [
    ['state', 'open', A], ['state', 'connecting', B], ['hub', 'subscribe', A, B, 100], ['state', 'open', B],
    ['hub', 'stats', A, B, 100],
  ]);
  assert.equal(sub.node, B);
  hub.close();
});

test('urls: a publish answered NOT_LEADER is sent again on the next node, same request id and seq', async () => {
  const { hub, ws, timers, errors } = setupMulti();
  const p1 = hub.publish('t', 'one');
  const p2 = hub.publish('t', 'two');
  const a = ws.last();
  assert.equal(a.url, `${A}/pub`);
  a.accept();
  assert.equal(a.sent.length, 2);
  const frames = a.sent.map(toHex);
  a.deliver(notLeaderFrame(reqIdOf(a.sent[0]), 1)); // no leader known (an election)
  assert.ok(a.closedByClient, 'the connection to the follower is closed');
  a.deliver(notLeaderFrame(reqIdOf(a.sent[1]), 2)); // late: from the old socket, ignored
  assert.equal(hub.pendingCount, 2, 'still pending, not rejected');
  timers.advance(100);
  const b = ws.last();
  assert.equal(b.url, `${B}/pub`);
  assert.equal(hub.publishNode, B);
  b.accept();
  assert.deepEqual(b.sent.map(toHex), frames, 'the same frames: same client id, seq and request id');
  b.deliver(ackFrame(reqIdOf(b.sent[0]), 1, 50));
  b.deliver(ackFrame(reqIdOf(b.sent[1]), 2, 51));
  assert.deepEqual(await p1, { seq: 1, offset: 50, duplicate: false });
  assert.deepEqual(await p2, { seq: 2, offset: 51, duplicate: false });
  assert.equal(errors.length, 0);
  // The next publish stays on the leader.
  const p3 = hub.publish('t', 'three');
  assert.equal(b.sent.length, 3);
  b.deliver(ackFrame(reqIdOf(b.sent[2]), 3, 52));
  assert.equal((await p3).offset, 52);
  assert.deepEqual(timers.pending().filter((d) => d > 5000), [], 'no NOT_LEADER window left running');
  hub.close();
});

test('urls: NOT_LEADER naming the leader goes to the URL on the leader\'s host', async () => {
  const { hub, ws, timers } = setupMulti();
  const p = hub.publish('t', 'x');
  const a = ws.last();
  a.accept();
  a.deliver(notLeaderFrame(reqIdOf(a.sent[0]), 1, 'tcp://c.test:7450'));
  timers.advance(100);
  const c = ws.last();
  assert.equal(c.url, `${C}/pub`, 'straight to the leader, not the next URL');
  c.accept();
  assert.deepEqual(c.sent.map(toHex), a.sent.map(toHex));
  c.deliver(ackFrame(reqIdOf(c.sent[0]), 1, 9, true));
  assert.deepEqual(await p, { seq: 1, offset: 9, duplicate: true });
  hub.close();
  // A leader host shared by several URLs (or none of them): the next URL.
  const two = setup({ url: undefined, urls: ['ws://h:1', 'ws://h:2', 'ws://h:3'], startIndex: 0 });
  two.hub.publish('t', 'x').catch(() => {});
  two.ws.last().accept();
  two.ws.last().deliver(notLeaderFrame(reqIdOf(two.ws.last().sent[0]), 1, 'tcp://h:7450'));
  two.timers.advance(100);
  assert.equal(two.ws.last().url, 'ws://h:2/pub');
  two.hub.close();
});

test('urls: a NOT_LEADER hint naming the node that just failed is not followed (the next URL is tried)', async () => {
  const { hub, ws, timers } = setupMulti();
  const p = hub.publish('t', 'x');
  const a = ws.last();
  a.accept(); // on A, the leader
  a.drop(1006); // killed
  timers.advance(100);
  const b = ws.last();
  assert.equal(nodeOf(b), B);
  b.accept();
  b.deliver(notLeaderFrame(reqIdOf(b.sent[0]), 1, 'tcp://a.test:7450')); // B still believes A leads
  timers.advance(100);
  const c = ws.last();
  assert.equal(nodeOf(c), C, 'not back to A, which just failed');
  c.accept();
  c.deliver(notLeaderFrame(reqIdOf(c.sent[0]), 1, 'tcp://b.test:7450')); // the election is over: B leads
  timers.advance(200);
  const b2 = ws.last();
  assert.equal(nodeOf(b2), B, 'a hint to a node that did not fail is followed');
  b2.accept();
  b2.deliver(ackFrame(reqIdOf(b2.sent[0]), 1, 4));
  assert.equal((await p).offset, 4);
  hub.close();
});

test('urls: once the failed node is reached again, hints naming it are followed again', async () => {
  const { hub, ws, timers } = setupMulti({ random: () => 0 }); // no backoff delays
  const p = hub.publish('t', 'x');
  const step = () => timers.advance(0);
  ws.last().drop(1006); // A refuses
  step();
  const nack = (leader) => { const s = ws.last(); s.accept(); s.deliver(notLeaderFrame(reqIdOf(s.sent[0]), 1, leader)); step(); };
  nack(); // B, during the election
  nack(); // C
  assert.equal(nodeOf(ws.last()), A);
  nack(); // A is back (as a follower for now)
  assert.equal(nodeOf(ws.last()), B);
  nack('tcp://a.test:7450'); // B: A won the election
  assert.equal(nodeOf(ws.last()), A, 'A opened since it failed: its hint counts');
  ws.last().accept();
  ws.last().deliver(ackFrame(reqIdOf(ws.last().sent[0]), 1, 8));
  assert.equal((await p).offset, 8);
  hub.close();
});

test('urls: NOT_LEADER everywhere: bounded by the publish timeout (TIMEOUT, the NACK as cause), else by notLeaderTimeout', async () => {
  const { hub, ws, timers } = setupMulti({ notLeaderTimeout: 2000, backoff: { min: 10, max: 40 } });
  const withTimeout = hub.publish('t', 'a', { timeout: 5000 });
  const without = hub.publish('t', 'b');
  const visited = [];
  // Every node answers NOT_LEADER, naming a leader none of the URLs is on.
  const answer = () => {
    const s = ws.last();
    visited.push(nodeOf(s));
    s.accept();
    s.deliver(notLeaderFrame(reqIdOf(s.sent[0]), s.sent.length === 2 ? 1 : 2, 'tcp://elsewhere:7450'));
  };
  answer();
  let t = 0;
  while (t < 1900) { const d = Math.min(...timers.pending()); timers.advance(d); t += d; answer(); }
  assert.ok(visited.length >= 40, `kept moving: ${visited.length} attempts`);
  assert.deepEqual(visited.slice(0, 6), [A, B, C, A, B, C]);
  assert.equal(hub.pendingCount, 2);
  timers.advance(2000 - t);
  await assert.rejects(without, (e) => e instanceof NackError && e.codeName === 'NOT_LEADER' && e.code === 6 && e.seq === 2
    && e.leader === 'tcp://elsewhere:7450' && e.retryable);
  assert.equal(hub.pendingCount, 1);
  timers.advance(3000);
  await assert.rejects(withTimeout, (e) => e instanceof PinionError && e.code === 'TIMEOUT'
    && /last answer was NOT_LEADER/.test(e.message) && e.cause instanceof NackError && e.cause.seq === 1);
  hub.close();
});

test('one URL: NOT_LEADER rejects at once with the NackError and its leader (no retry)', async () => {
  const { hub, ws, timers } = setup();
  const p = hub.publish('t', 'x');
  ws.last().accept();
  ws.last().deliver(notLeaderFrame(reqIdOf(ws.last().sent[0]), 1, 'tcp://10.0.0.1:7450'));
  await assert.rejects(p, (e) => e instanceof NackError && e.codeName === 'NOT_LEADER' && e.leader === 'tcp://10.0.0.1:7450');
  assert.equal(ws.last().closedByClient, null, 'the connection stays');
  timers.advance(60000);
  assert.equal(ws.sockets.length, 1);
  hub.close();
});

// ---- tokens (a hub with authentication on) ----------------------------------

const b64url = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
/** A JWT-shaped token expiring `inSecs` from now (pinion.js only reads its exp). */
const jwt = (name, inSecs) => `${b64url({ alg: 'EdDSA' })}.${b64url({ sub: name, exp: Math.floor(Date.now() / 1000) + inSecs })}.c2ln`;
const settle = () => new Promise((r) => setImmediate(r));
/** The token field (5) of a /pub frame's Publish, or null. */
function tokenOf(frame) {
  const b = frame.subarray(4);
  let i = 0;
  const vi = () => { let n = 0, m = 1; for (;;) { const x = b[i++]; n += (x & 127) * m; if (x < 128) return n; m *= 128; } };
  while (i < b.length) {
    const key = vi();
    if ((key & 7) === 0) { vi(); continue; }
    const len = vi();
    const body = b.subarray(i, i + len);
    i += len;
    if (key >> 3 === 5) return new TextDecoder().decode(body);
  }
  return null;
}

test('token: sent on every connection and in every publish', async () => {
  const t = jwt('alice', 3600);
  const { hub, ws } = setup({ token: t });
  hub.subscribe({ topics: ['orders.'] }, () => {});
  assert.equal(ws.last().url, `ws://hub.test:7452/sub?topic=orders.&token=${encodeURIComponent(t)}`);
  const p = hub.publish('orders.1', 'x');
  const pub = ws.last();
  assert.equal(pub.url, `ws://hub.test:7452/pub?token=${encodeURIComponent(t)}`);
  pub.accept();
  assert.equal(tokenOf(pub.sent[0]), t);
  pub.deliver(ackFrame(reqIdOf(pub.sent[0]), 1, 0));
  await p;
  // Without a token, no token field and no query.
  const plain = setup();
  plain.hub.subscribe({}, () => {});
  assert.equal(plain.ws.last().url, 'ws://hub.test:7452/sub');
  plain.hub.publish('a', 'x').catch(() => {});
  plain.ws.last().accept();
  assert.equal(tokenOf(plain.ws.last().sent[0]), null);
  plain.hub.close();
  hub.close();
});

test('getToken: asked before connecting, again before expiry, and after a 4419 close', async () => {
  const issued = [];
  const getToken = async () => { const t = jwt(`t${issued.length}`, 40); issued.push(t); return t; };
  const { hub, ws, timers } = setup({ getToken, tokenRefreshMargin: 30 });
  const got = [];
  hub.subscribe({ topics: ['o/'], from: 0 }, (m) => got.push(m.offset));
  assert.equal(ws.sockets.length, 0, 'no connection before the token');
  await settle();
  assert.equal(issued.length, 1);
  const s1 = ws.last();
  assert.ok(s1.url.endsWith(`&token=${encodeURIComponent(issued[0])}`), s1.url);
  s1.accept();
  s1.deliver(subFrame('o/a', 0));
  // 40 s token, 30 s margin: refreshed after about 10 s.
  timers.advance(11_000);
  await settle();
  assert.equal(issued.length, 2, 'refreshed before expiry');
  // The hub cuts the subscriber when the old token expires: it resumes,
  // with the fresh token, from offset 1.
  s1.drop(4419, 'token expired');
  timers.advance(100);
  await settle();
  const s2 = ws.last();
  assert.notEqual(s2, s1);
  assert.ok(s2.url.includes('from=1'), s2.url);
  assert.ok(s2.url.includes(`token=${encodeURIComponent(issued[issued.length - 1])}`), s2.url);
  assert.ok(issued.length >= 2);
  hub.close();
});

test('getToken: a publish NACKed UNAUTHENTICATED goes again once with a fresh token, same seq', async () => {
  let n = 0;
  const { hub, ws } = setup({ getToken: () => jwt(`t${n++}`, 3600) });
  const p = hub.publish('orders.1', 'x');
  await settle();
  const pub = ws.last();
  pub.accept();
  const first = pub.sent[0];
  pub.deliver(nackFrame(reqIdOf(first), 1, 7, 'unauthenticated: token expired'));
  await settle();
  assert.equal(pub.sent.length, 2, 'resent');
  assert.equal(reqIdOf(pub.sent[1]), reqIdOf(first));
  assert.notEqual(tokenOf(pub.sent[1]), tokenOf(first));
  pub.deliver(ackFrame(reqIdOf(first), 1, 0));
  assert.deepEqual(await p, { seq: 1, offset: 0, duplicate: false });
  // Without getToken the NACK is the answer.
  const s = setup({ token: jwt('x', 3600) });
  const q = s.hub.publish('orders.1', 'x');
  const w = s.ws.last();
  w.accept();
  w.deliver(nackFrame(reqIdOf(w.sent[0]), 1, 8, 'forbidden'));
  await assert.rejects(q, (e) => e instanceof NackError && e.codeName === 'FORBIDDEN');
  s.hub.close();
  hub.close();
});

test('subscribe: 4401 and 4403 are reported as errors and retried', async () => {
  const { hub, ws, timers, errors } = setup({ token: jwt('x', 3600) });
  const sub = hub.subscribe({ topics: ['p/'] }, () => {});
  const seen = [];
  sub.onerror = (e) => seen.push(e.code);
  const s1 = ws.last();
  s1.drop(4403, 'forbidden: the token does not allow subscribing to "p/"');
  timers.advance(10_000);
  const s2 = ws.last();
  assert.notEqual(s2, s1, 'retried');
  s2.drop(4401, 'unauthenticated: bad token signature');
  assert.deepEqual(seen, ['FORBIDDEN', 'UNAUTHENTICATED']);
  assert.equal(errors.length, 2);
  timers.advance(10_000);
  assert.ok(ws.sockets.length >= 3, 'retried again');
  hub.close();
});
