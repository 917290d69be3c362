// pinion.js's hand-written protobuf codec against bytes made by protoc's
// Python code (vectors.json, from gen_vectors.py), plus hand-computed
// vectors and malformed input.
//
//   node --test tests/browser/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import {
  encodeVarint, encodePublish, decodeReply, decodeDelivery, parseSubFrame,
  encodePubRequest, decodePubReply, backoffDelay, PinionError, NackError, toHex,
} from '../../crates/pinion-hub/web/pinion.js';

const vectors = JSON.parse(readFileSync(new URL('./vectors.json', import.meta.url), 'utf8'));
const hex = (s) => Uint8Array.from(s.match(/../g) ?? [], (b) => parseInt(b, 16));
const cat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
};

test('varints: hand-computed encodings', () => {
  const cases = [
    [0, '00'], [1, '01'], [127, '7f'], [128, '8001'], [300, 'ac02'], [16383, 'ff7f'], [16384, '808001'],
    [2 ** 32, '8080808010'], [Number.MAX_SAFE_INTEGER, 'ffffffffffffff0f'],
  ];
  for (const [n, h] of cases) assert.equal(toHex(encodeVarint(n)), h, `varint(${n})`);
  assert.throws(() => encodeVarint(-1), RangeError);
  assert.throws(() => encodeVarint(2 ** 53), RangeError);
  assert.throws(() => encodeVarint(1.5), RangeError);
});

test('Publish: same bytes as protoc (Python)', () => {
  assert.ok(vectors.publish.length >= 5);
  for (const v of vectors.publish) {
    const got = encodePublish({ clientId: hex(v.client_id), seq: v.seq, topic: v.topic, payload: hex(v.payload) });
    assert.equal(toHex(got), v.bytes, `Publish seq=${v.seq} topic=${JSON.stringify(v.topic)}`);
  }
});

test('Publish: hand-computed bytes', () => {
  const got = encodePublish({ clientId: new Uint8Array(16).fill(1), seq: 2, topic: 'a', payload: Uint8Array.of(0x68, 0x69) });
  // 0a 10 <16 x 01> | 10 02 | 1a 01 61 | 22 02 68 69
  assert.equal(toHex(got), `0a10${'01'.repeat(16)}10021a0161220268 69`.replace(' ', ''));
});

test('Reply: decodes protoc (Python) bytes', () => {
  for (const v of vectors.reply) {
    const got = decodeReply(hex(v.bytes));
    if (v.ack) assert.deepEqual(got, { ack: v.ack }, v.bytes);
    else assert.deepEqual(got, { nack: v.nack }, v.bytes);
  }
});

test('Delivery and /sub frames: decode protoc (Python) bytes', () => {
  for (const v of vectors.delivery) {
    const d = decodeDelivery(hex(v.bytes));
    assert.equal(d.offset, v.offset);
    assert.equal(d.timestampUs, v.timestamp_us);
    assert.equal(toHex(d.clientId), v.client_id);
    assert.equal(d.seq, v.seq);
    assert.equal(toHex(d.payload), v.payload);

    const topic = 'caf\u00e9/orders';
    const frame = cat(new TextEncoder().encode(topic), Uint8Array.of(0), hex(v.bytes));
    const m = parseSubFrame(frame);
    assert.equal(m.topic, topic);
    assert.equal(m.offset, v.offset);
    assert.equal(m.seq, v.seq);
    assert.equal(m.clientIdHex, v.client_id);
    assert.equal(toHex(m.payload), v.payload);
    assert.equal(m.timestamp.getTime(), Math.floor(v.timestamp_us / 1000));
  }
  const m = parseSubFrame(cat(Uint8Array.of(0), hex(vectors.delivery[0].bytes)));
  assert.equal(m.topic, '');
  assert.equal(m.text(), 'hello');
});

test('unknown fields of every wire type are skipped', () => {
  const unknown = cat(
    hex('f801'), hex('ffffffffffffffffff01'), // field 31 varint (10 bytes)
    hex('81020102030405060708'),              // field 32 fixed64
    hex('8a0203616263'),                      // field 33 length-delimited
    hex('95020a0b0c0d'),                      // field 34 fixed32
  );
  const d = vectors.delivery[0];
  const dd = decodeDelivery(cat(unknown, hex(d.bytes), unknown));
  assert.equal(dd.offset, d.offset);
  assert.equal(toHex(dd.payload), d.payload);
  // Inside Ack, and next to the oneof in Reply.
  const ack = cat(hex('0807'), unknown, hex('1039'));  // seq 7, offset 57
  const reply = cat(unknown, Uint8Array.of(0x0a, ack.length), ack, unknown);
  assert.deepEqual(decodeReply(reply), { ack: { seq: 7, offset: 57, duplicate: false } });
});

test('explicit nonstandard encodings: bool as a long varint, negative enum', () => {
  // duplicate = 0 and 1 in two-byte varints; code = -1 (10-byte varint).
  const ack = hex('08011002188000');
  assert.deepEqual(decodeReply(cat(Uint8Array.of(0x0a, ack.length), ack)).ack, { seq: 1, offset: 2, duplicate: false });
  const ack2 = hex('08011002188100');
  assert.equal(decodeReply(cat(Uint8Array.of(0x0a, ack2.length), ack2)).ack.duplicate, true);
  const nack = hex('1001' + '10ffffffffffffffffff01');
  assert.equal(decodeReply(cat(Uint8Array.of(0x12, nack.length), nack)).nack.code, -1);
});

test('malformed input: clear PinionErrors, no garbage', () => {
  const bad = [
    [hex(''), /neither ack nor nack/],
    [hex('0a05080110'), /truncated/],               // Ack claims 5 bytes, 3 follow
    [hex('0a0108'), /truncated/],                   // Ack.seq's varint cut
    [hex('f801ffffffffffffffffffff01'), /longer than 10 bytes/], // unknown field, 11-byte varint
    [hex('0b'), /wire type 3/],                     // a group
  ];
  for (const [b, re] of bad) {
    assert.throws(() => decodeReply(b), (e) => e instanceof PinionError && re.test(e.message), toHex(b));
  }
  assert.throws(() => decodeReply(hex('0801')), /Reply.ack: protobuf wire type 0, expected 2/);
  assert.throws(() => decodeDelivery(hex('0880808080808080808001')), RangeError); // offset 2^63
  assert.throws(() => parseSubFrame(hex('616263')), /without the 0x00 byte/);
});

test('/pub framing: request id with the high bit, then Publish', () => {
  const v = vectors.publish[0];
  const frame = encodePubRequest(0x80000001, { clientId: hex(v.client_id), seq: v.seq, topic: v.topic, payload: hex(v.payload) });
  assert.equal(toHex(frame), '80000001' + v.bytes);
  const r = vectors.reply[1];
  const { requestId, reply } = decodePubReply(cat(hex('80abcdef'), hex(r.bytes)));
  assert.equal(requestId, 0x80abcdef);
  assert.deepEqual(reply, { ack: r.ack });
  assert.throws(() => decodePubReply(hex('00000001' + r.bytes)), /lacks the high bit/);
  assert.throws(() => decodePubReply(hex('8000')), /shorter than the 4-byte request id/);
});

test('NackError carries code, codeName, reason, retryable', () => {
  const e = new NackError({ seq: 3, code: 1, reason: 'payload is 300 bytes, the limit is 256' });
  assert.ok(e instanceof PinionError && e instanceof Error);
  assert.equal(e.code, 1);
  assert.equal(e.codeName, 'TOO_LARGE');
  assert.equal(e.retryable, false);
  assert.match(e.message, /TOO_LARGE: payload is 300 bytes/);
  assert.equal(new NackError({ seq: 1, code: 3, reason: '' }).retryable, true);
  assert.equal(new NackError({ seq: 1, code: 4, reason: '' }).codeName, 'SHUTTING_DOWN');
  assert.equal(new NackError({ seq: 1, code: 99, reason: '' }).codeName, 'CODE_99');
  const nl = new NackError({ seq: 1, code: 6, reason: 'node 2 does not lead', leader: 'tcp://10.0.0.1:7450' });
  assert.equal(nl.codeName, 'NOT_LEADER');
  assert.equal(nl.leader, 'tcp://10.0.0.1:7450');
  assert.equal(nl.retryable, true);
  assert.equal(new NackError({ seq: 1, code: 1, reason: '' }).leader, '');
});

test('Nack.leader (field 4): hand-computed bytes; absent stays absent', () => {
  // seq 5 | code 6 (NOT_LEADER) | reason "r" | leader "tcp://h:1"
  const leader = new TextEncoder().encode('tcp://h:1');
  const nack = cat(hex('0805' + '1006' + '1a0172' + '22'), Uint8Array.of(leader.length), leader);
  assert.deepEqual(decodeReply(cat(Uint8Array.of(0x12, nack.length), nack)),
    { nack: { seq: 5, code: 6, reason: 'r', leader: 'tcp://h:1' } });
  const plain = hex('08051006');
  assert.deepEqual(decodeReply(cat(Uint8Array.of(0x12, plain.length), plain)), { nack: { seq: 5, code: 6, reason: '' } });
  const wrong = hex('08052006'); // field 4 as a varint
  assert.throws(() => decodeReply(cat(Uint8Array.of(0x12, wrong.length), wrong)), /Nack.leader: protobuf wire type 0, expected 2/);
});

test('backoff: full jitter under an exponential ceiling, capped', () => {
  const ceil = (a) => backoffDelay(a, { min: 100, max: 10000 }, () => 1);
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 20, 1000].map(ceil), [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000, 10000]);
  assert.equal(backoffDelay(5, {}, () => 0), 0);
  assert.equal(backoffDelay(3, {}, () => 0.5), 400);
  for (let i = 0; i < 1000; i++) {
    const d = backoffDelay(i % 12);
    assert.ok(d >= 0 && d <= Math.min(10000, 100 * 2 ** (i % 12)), `${d}`);
  }
});
