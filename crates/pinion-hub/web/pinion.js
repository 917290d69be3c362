/**
 * pinion.js: the browser client of a pinion hub's HTTP port.
 *
 * An ES module without dependencies, served by `pinion serve` at
 * `/pinion.js`. It speaks the hub's WebSocket endpoints as described in
 * docs/HUB-WEB.md: `/sub` (subscribe, with resume), `/pub` (publish with
 * ack, SP REQ/REP over WebSocket) and `/stats` (the dashboard's feed).
 *
 * ```js
 * import { connect, NackError } from '/pinion.js';
 *
 * const hub = connect();                 // ws(s)://<this page's host>
 * // or connect({ url: 'ws://127.0.0.1:7452' })
 * // or, a cluster's nodes (voters and edge nodes alike):
 * // connect({ urls: ['ws://10.0.0.1:7452', 'ws://10.0.0.2:7452', 'ws://10.0.0.3:7452'] })
 * hub.onstate = s => console.log(s);     // 'connecting' | 'open' | 'closed'
 *
 * // Every message whose topic starts with 'chat/', from offset 0 on, then
 * // live. After a disconnect the subscription resumes at the offset after
 * // the last one received: no gap, no duplicate.
 * const sub = hub.subscribe({ topics: ['chat/'], from: 0 }, msg => {
 *   msg.offset;      // number: the message's offset in the hub's log
 *   msg.topic;       // string
 *   msg.payload;     // Uint8Array
 *   msg.text();      // the payload decoded as UTF-8
 *   msg.seq;         // the publisher's sequence number
 *   msg.clientId;    // Uint8Array(16): the publisher's id (msg.clientIdHex)
 *   msg.timestamp;   // Date the hub logged it (msg.timestampUs: number, µs)
 * });
 *
 * try {
 *   const ack = await hub.publish('chat/room1', 'hello'); // or a Uint8Array
 *   ack.offset; ack.seq; ack.duplicate;
 * } catch (e) {
 *   if (e instanceof NackError) console.log(e.codeName, e.reason); // e.g. TOO_LARGE
 * }
 *
 * // The hub's /stats feed (the dashboard's): one object every 500 ms.
 * const stats = hub.watchStats(s => console.log(s.head, s.in_rate));
 *
 * stats.close();
 * sub.close();
 * hub.close();
 * ```
 *
 * Behaviour:
 *
 * - Every connection (one `/pub` connection per hub object, opened at the
 *   first publish; one `/sub` connection per subscription) reconnects by
 *   itself after it drops, after a delay with exponential backoff and full
 *   jitter: a random delay in [0, min(max, min * 2^attempt)] ms, by default
 *   100 ms .. 10 s. The attempt count is reset once a connection has stayed
 *   up for a while (5 s); an attempt not open within 10 s is abandoned.
 *   `hub.state` is 'open' while every connection the hub object has is
 *   up (also when it has none yet), 'connecting' while one is being
 *   (re)established, 'closed' after `hub.close()`.
 * - A subscription remembers the last offset it received and resubscribes
 *   with `from = last + 1`, also when the hub closed it as a slow consumer
 *   (close code 4008). A subscription made without `from` ("live from
 *   now") learns its first offset from the hub's hello (subprotocol
 *   `pinion.v1`: a text frame `{"next": N}` before any message), so even
 *   if it drops before receiving anything it resumes from there: nothing
 *   logged after it subscribed is ever missed.
 * - Each hub object picks a random 16-byte client id (`hub.clientId`) and
 *   numbers its publishes 1, 2, 3, ... Publishes not yet acked when the
 *   `/pub` connection drops are sent again, with the same seq, once it is
 *   back: the hub logs each (client id, seq) once and answers a retry with
 *   the original offset (`duplicate: true`). A publish therefore waits for
 *   its ack across reconnects; pass `{ timeout: ms }` (or
 *   `connect({ publishTimeout })`) to bound the wait.
 * - A NACK rejects the publish with a `NackError` (`code`, `codeName`,
 *   `reason`, `seq`, `retryable`). Other failures reject with a
 *   `PinionError` whose `code` is a string ('CLOSED', 'TIMEOUT', ...).
 *   A request too big for the hub's WebSocket frame limit (the hub closes
 *   the connection with 1009) rejects with 'MESSAGE_TOO_BIG' instead of
 *   being resent forever.
 *
 * - Several nodes (`connect({ urls })`, a cluster: every node applies the
 *   same log and delivers the same offsets). Each connection starts on
 *   one of the URLs (`startIndex`, random by default, so that clients
 *   spread over the nodes) and, after a drop or a failed attempt, moves to
 *   the next one in this hub object's own order of the others (a random
 *   permutation, so that the clients of a node that dies spread over the
 *   rest; with `startIndex` given: round robin from it). The delay before each attempt
 *   is the backoff above, whose ceiling doubles after each full round of
 *   failures rather than after each one. A subscription resumes on the
 *   next node at `from = last + 1` (or at its `from`, or the hello's `N`
 *   when it has received nothing yet): no gap; a node that has not yet
 *   applied that offset holds it until it has. It drops any message below
 *   the next offset it expects (counted in `duplicatesDropped`), so none
 *   reaches the app twice. `sub.node` (and `sub.onstate(state, node)`,
 *   `sub.onreconnect(info)`, `hub.publishNode`, `stats.node`) tell which
 *   node a connection is on.
 * - A cluster follower answers a publish with NACK NOT_LEADER (nothing
 *   logged; `e.leader` names the leader's publisher URL when it knows
 *   one). With one URL the publish rejects with that NackError, as any
 *   NACK. With several, the publish stays pending and the `/pub`
 *   connection moves on: to the URL on the leader's host if exactly one
 *   of them is on it (and it is not the node that just failed), else to
 *   the next URL, where every unanswered publish
 *   is sent again with the same client id and seq (so nothing is logged
 *   twice). This goes on until an ack, bounded by the publish's `timeout`
 *   (then TIMEOUT, the last NOT_LEADER in `e.cause`) or, without one, by
 *   `connect({ notLeaderTimeout })` (default 10 s, then the last NOT_LEADER
 *   NackError).
 *
 * ```js
 * const hub = connect({ urls: ['ws://10.0.0.1:7452', 'ws://10.0.0.4:7452', 'ws://10.0.0.5:7452'] });
 * const sub = hub.subscribe({ topics: ['chat/'] }, (msg) => show(msg, sub.node));
 * sub.onreconnect = (i) => console.log(`${i.node} lost (${i.code}); to ${i.next} from offset ${i.from}`);
 * await hub.publish('chat/room1', 'hi', { timeout: 5000 }); // reaches the leader, wherever it is
 * ```
 *
 * In Node (>= 20) pass a WebSocket implementation:
 * `connect({ url, WebSocket })` (Node 20's `--experimental-websocket`
 * global, or the `ws` package); Node 22 and later have one built in.
 *
 * The protobuf messages (proto/pinion/v1/hub.proto) are encoded and
 * decoded by hand below (varints and length-delimited fields only; unknown
 * fields are skipped). Numbers are JavaScript numbers: offsets, seqs and
 * timestamps above 2^53 are refused with a RangeError.
 */

// ---- errors -----------------------------------------------------------------

/** A failure of the client or of the connection (not a NACK). */
export class PinionError extends Error {
  /**
   * @param {string} message
   * @param {string} code 'CLOSED' | 'TIMEOUT' | 'MESSAGE_TOO_BIG' | 'PROTOCOL' | 'REPLAY_FAILED' | 'INVALID' | 'NO_WEBSOCKET'
   */
  constructor(message, code) {
    super(message);
    this.name = 'PinionError';
    this.code = code;
  }
}

/** The `pinion.v1.Code` values of a NACK, by number. */
export const NACK_CODES = Object.freeze({
  0: 'CODE_UNSPECIFIED',
  1: 'TOO_LARGE',
  2: 'MALFORMED',
  3: 'UNAVAILABLE',
  4: 'SHUTTING_DOWN',
  5: 'STALE',
  6: 'NOT_LEADER',
  7: 'UNAUTHENTICATED',
  8: 'FORBIDDEN',
});

/** `pinion.v1.Code.NOT_LEADER`: a cluster node that does not lead (see `Nack.leader`). */
const NOT_LEADER = 6;
/** `pinion.v1.Code.UNAUTHENTICATED`: no valid token (authentication on). */
const UNAUTHENTICATED = 7;

/** The hub refused to log a message (a `pinion.v1.Nack`). */
export class NackError extends PinionError {
  constructor({ seq, code, reason, leader }) {
    const codeName = NACK_CODES[code] ?? `CODE_${code}`;
    super(`pinion hub refused the message (seq ${seq}): ${codeName}${reason ? `: ${reason}` : ''}`, codeName);
    this.name = 'NackError';
    /** @type {number} the enum value (1 TOO_LARGE, 2 MALFORMED, 3 UNAVAILABLE, 4 SHUTTING_DOWN, 5 STALE, 6 NOT_LEADER) */
    this.code = code;
    /** @type {string} */
    this.codeName = codeName;
    /** @type {string} for humans; match on `code` */
    this.reason = reason;
    /** @type {number} */
    this.seq = seq;
    /**
     * With NOT_LEADER: the leading node's publisher URL (e.g.
     * `tcp://10.0.0.1:7450`) when the answering node knows one, else ''.
     * @type {string}
     */
    this.leader = leader ?? '';
    /** True for UNAVAILABLE, SHUTTING_DOWN and NOT_LEADER: the same message may be published again later (or elsewhere). */
    this.retryable = code === 3 || code === 4 || code === NOT_LEADER;
  }
}

// ---- protobuf ---------------------------------------------------------------

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder();

function checkUint(n, what) {
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new RangeError(`${what} must be an integer in [0, 2^53), got ${n}`);
  }
}

/** Appends the varint encoding of a non-negative safe integer to `out`. */
function pushVarint(out, n) {
  checkUint(n, 'varint');
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
}

/** The varint encoding of `n` (a non-negative integer below 2^53). */
export function encodeVarint(n) {
  const out = [];
  pushVarint(out, n);
  return Uint8Array.from(out);
}

function pushBytesField(out, field, bytes) {
  pushVarint(out, (field << 3) | 2);
  pushVarint(out, bytes.length);
  for (let i = 0; i < bytes.length; i++) out.push(bytes[i]);
}

function pushVarintField(out, field, n) {
  pushVarint(out, (field << 3) | 0);
  pushVarint(out, n);
}

/**
 * Encodes a `pinion.v1.Publish`.
 * @param {{clientId: Uint8Array, seq: number, topic: string|Uint8Array, payload: Uint8Array}} p
 * @returns {Uint8Array}
 */
export function encodePublish({ clientId, seq, topic, payload, token }) {
  const out = [];
  pushBytesField(out, 1, clientId);
  pushVarintField(out, 2, seq);
  pushBytesField(out, 3, typeof topic === 'string' ? utf8Encoder.encode(topic) : topic);
  pushBytesField(out, 4, payload);
  if (token) pushBytesField(out, 5, utf8Encoder.encode(token));
  return Uint8Array.from(out);
}

/**
 * The `exp` claim of a JWT (seconds since the epoch), or null if it cannot
 * be read. Not a verification: the hub verifies; this only schedules the
 * refresh.
 * @param {string} token
 * @returns {number|null}
 */
export function tokenExpiry(token) {
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((part.length + 3) % 4);
    const json = JSON.parse(utf8Decoder.decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))));
    return Number.isFinite(json.exp) ? json.exp : null;
  } catch {
    return null;
  }
}

/** A cursor over protobuf bytes. */
class ProtoReader {
  constructor(bytes) {
    this.buf = bytes;
    this.pos = 0;
  }

  /** A varint as a number; a RangeError above 2^53. */
  varint() {
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.buf.length) throw new PinionError('truncated protobuf varint', 'PROTOCOL');
      const b = this.buf[this.pos++];
      result += (b & 0x7f) * mul;
      if (b < 0x80) {
        if (result > Number.MAX_SAFE_INTEGER) {
          throw new RangeError('protobuf varint above 2^53 cannot be represented as a number');
        }
        return result;
      }
      mul *= 0x80;
    }
    throw new PinionError('protobuf varint longer than 10 bytes', 'PROTOCOL');
  }

  /** A varint as a BigInt (any 64-bit value). */
  bigVarint() {
    let result = 0n;
    let shift = 0n;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.buf.length) throw new PinionError('truncated protobuf varint', 'PROTOCOL');
      const b = this.buf[this.pos++];
      result |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return BigInt.asUintN(64, result);
      shift += 7n;
    }
    throw new PinionError('protobuf varint longer than 10 bytes', 'PROTOCOL');
  }

  bool() {
    return this.bigVarint() !== 0n;
  }

  /** An enum (int32: negative values are sign-extended to 10 bytes on the wire). */
  enumValue() {
    return Number(BigInt.asIntN(32, this.bigVarint()));
  }

  /** A length-delimited field's bytes: a view into the buffer, not a copy. */
  bytes() {
    const len = this.varint();
    const end = this.pos + len;
    if (end > this.buf.length) throw new PinionError('truncated protobuf field', 'PROTOCOL');
    const v = this.buf.subarray(this.pos, end);
    this.pos = end;
    return v;
  }

  skip(wireType) {
    switch (wireType) {
      case 0: this.bigVarint(); return;
      case 1: this.advance(8); return;
      case 2: this.bytes(); return;
      case 5: this.advance(4); return;
      default: throw new PinionError(`unsupported protobuf wire type ${wireType}`, 'PROTOCOL');
    }
  }

  advance(n) {
    if (this.pos + n > this.buf.length) throw new PinionError('truncated protobuf field', 'PROTOCOL');
    this.pos += n;
  }

  /**
   * Calls `onField(field, wireType)` for every field in order; it reads the
   * fields it knows and returns true, or returns false to have the field
   * skipped (unknown fields).
   */
  fields(onField) {
    while (this.pos < this.buf.length) {
      const key = this.varint();
      const field = Math.floor(key / 8);
      const wireType = key % 8;
      if (field === 0) throw new PinionError('protobuf field number 0', 'PROTOCOL');
      if (!onField(field, wireType)) this.skip(wireType);
    }
  }
}

function expectWire(actual, expected, what) {
  if (actual !== expected) {
    throw new PinionError(`${what}: protobuf wire type ${actual}, expected ${expected}`, 'PROTOCOL');
  }
}

/**
 * Decodes a `pinion.v1.Reply`: exactly one of `ack` or `nack` (absent
 * scalar fields are 0 / false / '').
 * @param {Uint8Array} bytes
 * `nack.leader` (a NOT_LEADER's leader URL) is there only when the reply carries it.
 * @returns {{ack: {seq: number, offset: number, duplicate: boolean}} | {nack: {seq: number, code: number, reason: string, leader?: string}}}
 */
export function decodeReply(bytes) {
  const r = new ProtoReader(bytes);
  let result = null;
  r.fields((field, wire) => {
    if (field === 1) {
      expectWire(wire, 2, 'Reply.ack');
      const a = new ProtoReader(r.bytes());
      const ack = { seq: 0, offset: 0, duplicate: false };
      a.fields((f, w) => {
        if (f === 1) { expectWire(w, 0, 'Ack.seq'); ack.seq = a.varint(); return true; }
        if (f === 2) { expectWire(w, 0, 'Ack.offset'); ack.offset = a.varint(); return true; }
        if (f === 3) { expectWire(w, 0, 'Ack.duplicate'); ack.duplicate = a.bool(); return true; }
        return false;
      });
      result = { ack };
      return true;
    }
    if (field === 2) {
      expectWire(wire, 2, 'Reply.nack');
      const n = new ProtoReader(r.bytes());
      const nack = { seq: 0, code: 0, reason: '' };
      n.fields((f, w) => {
        if (f === 1) { expectWire(w, 0, 'Nack.seq'); nack.seq = n.varint(); return true; }
        if (f === 2) { expectWire(w, 0, 'Nack.code'); nack.code = n.enumValue(); return true; }
        if (f === 3) { expectWire(w, 2, 'Nack.reason'); nack.reason = utf8Decoder.decode(n.bytes()); return true; }
        if (f === 4) { expectWire(w, 2, 'Nack.leader'); nack.leader = utf8Decoder.decode(n.bytes()); return true; }
        return false;
      });
      result = { nack };
      return true;
    }
    return false;
  });
  if (!result) throw new PinionError('pinion.v1.Reply has neither ack nor nack', 'PROTOCOL');
  return result;
}

/**
 * Decodes a `pinion.v1.Delivery` (absent fields are 0 / empty).
 * `clientId` and `payload` are views into `bytes`.
 * @param {Uint8Array} bytes
 * @returns {{offset: number, timestampUs: number, clientId: Uint8Array, seq: number, payload: Uint8Array}}
 */
export function decodeDelivery(bytes) {
  const r = new ProtoReader(bytes);
  const d = { offset: 0, timestampUs: 0, clientId: new Uint8Array(0), seq: 0, payload: new Uint8Array(0) };
  r.fields((f, w) => {
    switch (f) {
      case 1: expectWire(w, 0, 'Delivery.offset'); d.offset = r.varint(); return true;
      case 2: expectWire(w, 0, 'Delivery.timestamp_us'); d.timestampUs = r.varint(); return true;
      case 3: expectWire(w, 2, 'Delivery.client_id'); d.clientId = r.bytes(); return true;
      case 4: expectWire(w, 0, 'Delivery.seq'); d.seq = r.varint(); return true;
      case 5: expectWire(w, 2, 'Delivery.payload'); d.payload = r.bytes(); return true;
      default: return false;
    }
  });
  return d;
}

/** Lower-case hex of some bytes. */
export function toHex(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += bytes[i].toString(16).padStart(2, '0');
  return s;
}

/** One message delivered to a subscription. */
export class Message {
  constructor(topic, d) {
    /** @type {string} */
    this.topic = topic;
    /** @type {number} offset in the hub's log */
    this.offset = d.offset;
    /** @type {number} when the hub logged it, µs since the Unix epoch */
    this.timestampUs = d.timestampUs;
    /** @type {Uint8Array} the publisher's 16-byte client id */
    this.clientId = d.clientId;
    /** @type {number} the publisher's sequence number */
    this.seq = d.seq;
    /** @type {Uint8Array} */
    this.payload = d.payload;
  }
  /** The payload decoded as UTF-8 (invalid sequences become U+FFFD). */
  text() {
    return utf8Decoder.decode(this.payload);
  }
  /** When the hub logged it (millisecond precision). */
  get timestamp() {
    return new Date(Math.floor(this.timestampUs / 1000));
  }
  get clientIdHex() {
    return toHex(this.clientId);
  }
}

/**
 * Parses one `/sub` frame: the topic's bytes, one 0x00 byte, then a
 * `pinion.v1.Delivery`.
 * @param {Uint8Array} frame
 * @returns {Message}
 */
export function parseSubFrame(frame) {
  const nul = frame.indexOf(0);
  if (nul < 0) throw new PinionError('subscriber frame without the 0x00 byte after the topic', 'PROTOCOL');
  const topic = utf8Decoder.decode(frame.subarray(0, nul));
  return new Message(topic, decodeDelivery(frame.subarray(nul + 1)));
}

/**
 * Encodes one `/pub` request: the 4-byte big-endian request id (high bit
 * set) then a `pinion.v1.Publish`.
 * @param {number} requestId 0x80000000 | n
 */
export function encodePubRequest(requestId, publish) {
  const body = encodePublish(publish);
  const frame = new Uint8Array(4 + body.length);
  new DataView(frame.buffer).setUint32(0, requestId >>> 0);
  frame.set(body, 4);
  return frame;
}

/**
 * Splits one `/pub` reply into its request id and decoded `Reply`.
 * @param {Uint8Array} frame
 */
export function decodePubReply(frame) {
  if (frame.length < 4) throw new PinionError(`reply of ${frame.length} bytes, shorter than the 4-byte request id`, 'PROTOCOL');
  const requestId = new DataView(frame.buffer, frame.byteOffset, 4).getUint32(0);
  if (requestId < 0x80000000) {
    throw new PinionError(`reply's request id 0x${requestId.toString(16)} lacks the high bit`, 'PROTOCOL');
  }
  return { requestId, reply: decodeReply(frame.subarray(4)) };
}

// ---- reconnecting connections -------------------------------------------------

/**
 * The delay before reconnect attempt `attempt` (0, 1, 2, ...): exponential
 * backoff with full jitter, `random() * min(max, min * 2^attempt)` ms.
 */
export function backoffDelay(attempt, { min = 100, max = 10000 } = {}, random = Math.random) {
  const ceiling = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return random() * ceiling;
}

/** Close code of a subscriber that fell too far behind. */
export const CLOSE_SLOW_CONSUMER = 4008;
/** Close code of a subscriber whose replay could not read the log. */
export const CLOSE_REPLAY_FAILED = 4011;
/** RFC 6455 close code: a message over the peer's size limit. */
export const CLOSE_MESSAGE_TOO_BIG = 1009;
/** Close code: authentication is on and the token is missing or invalid. */
export const CLOSE_UNAUTHENTICATED = 4401;
/** Close code: the token does not allow the topics (or page) asked for. */
export const CLOSE_FORBIDDEN = 4403;
/** Close code: the subscriber's token expired while it was connected. */
export const CLOSE_TOKEN_EXPIRED = 4419;

function toBytes(data) {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return null;
}

/**
 * One WebSocket that reconnects by itself, moving to the next of the hub's
 * URLs after each drop or failed attempt. `handlers`: `url(node)` (called
 * at every attempt with the node's base URL), `protocol`, `onOpen()`,
 * `onMessage(data)`, `onClose(event)`, `onState(state)`, `onRetry(info)`.
 */
class Link {
  constructor(hub, name, handlers) {
    this.hub = hub;
    this.name = name;
    this.h = handlers;
    this.ws = null;
    this.state = 'connecting';
    /** Connections lost or attempts failed in a row (reset once one stays up `stableMs`). */
    this.attempt = 0;
    this.retryTimer = null;
    this.stableTimer = null;
    this.closed = false;
    /** Connections opened so far (1 after the first). */
    this.opens = 0;
    /** Index in `hub.urls` of the node this link is on, or trying. */
    this.index = hub._order[0];
    /** Position of `index` in `hub._order`. */
    this.pos = 0;
    /** Where the next attempt goes instead of index + 1 (a NOT_LEADER's leader), or null. */
    this.nextIndex = null;
    /** Ends the current socket as if it had dropped (set while there is one). */
    this.endCurrent = null;
    /** Index of the node whose connection last dropped or failed (not left by moveOn), until it opens again. */
    this.downIndex = null;
  }

  /** The base URL of the node this link is on (or is trying). */
  get node() {
    return this.hub.urls[this.index];
  }

  start() {
    this.hub._updateState();
    this.open();
  }

  setState(s) {
    if (this.state === s) return;
    this.state = s;
    this.h.onState?.(s, this.node);
    this.hub._updateState();
  }

  open() {
    this.retryTimer = null;
    if (this.closed) return;
    this.setState('connecting');
    // With getToken: a fresh token first when the one held is missing or
    // about to expire (every URL carries it).
    if (this.hub._tokenStale()) {
      this.hub._refreshToken().then(() => this.openNow(), () => this.openNow());
      return;
    }
    this.openNow();
  }

  openNow() {
    if (this.closed) return;
    const WS = this.hub._WebSocket;
    let ws;
    try {
      const url = this.h.url(this.node);
      ws = this.h.protocol ? new WS(url, this.h.protocol) : new WS(url);
    } catch (e) {
      this.hub._error(new PinionError(`${this.name}: cannot open a WebSocket to ${this.node}: ${e.message}`, 'PROTOCOL'));
      this.retry({ code: 1006, reason: `cannot open a WebSocket: ${e.message}` });
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    const { setTimeout, clearTimeout } = this.hub._timers;
    let opened = false;
    // The end of this socket, whichever event tells first (once).
    const fail = (ev, moved = false) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.endCurrent = null;
      opened = true; // no more connect timeout
      clearTimeout(connectTimer);
      if (this.stableTimer !== null) clearTimeout(this.stableTimer);
      this.stableTimer = null;
      if (this.closed) return;
      this.h.onClose?.(ev);
      this.retry(ev, moved);
    };
    this.endCurrent = (ev) => {
      try { ws.close(1000, 'moving to another node'); } catch { /* not open */ }
      fail(ev, true);
    };
    // A connection attempt that hangs is given up (and closed) after
    // connectTimeout ms.
    const connectTimer = setTimeout(() => {
      if (opened || this.ws !== ws) return;
      try { ws.close(); } catch { /* not open */ }
      fail({ code: 1006, reason: `not connected within ${this.hub._connectTimeout} ms` });
    }, this.hub._connectTimeout);
    ws.onopen = () => {
      if (this.ws !== ws) return;
      opened = true;
      clearTimeout(connectTimer);
      this.opens++;
      if (this.downIndex === this.index) this.downIndex = null;
      this.setState('open');
      this.stableTimer = setTimeout(() => { this.attempt = 0; }, this.hub._stableMs);
      this.h.onOpen?.();
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      try {
        this.h.onMessage(ev.data);
      } catch (e) {
        this.hub._error(e instanceof PinionError ? e : new PinionError(`${this.name}: ${e.message}`, 'PROTOCOL'));
      }
    };
    // Browsers follow an error with a close event; some WebSocket
    // implementations (Node 20's) do not when the socket never opened, so an
    // error before the open ends the attempt itself.
    ws.onerror = () => {
      if (!opened) fail({ code: 1006, reason: 'connection failed' });
    };
    ws.onclose = (ev) => fail(ev);
  }

  /**
   * After a drop or a failed attempt: the next attempt goes to the next URL
   * in `hub._order` (or `nextIndex`), after a backoff delay whose ceiling
   * doubles with each full round of failures (with one URL: each failure).
   */
  retry(ev, moved = false) {
    if (this.closed) return;
    const n = this.hub.urls.length;
    const from = this.node;
    if (!moved) this.downIndex = this.index;
    if (this.nextIndex !== null && this.nextIndex !== undefined) {
      this.index = this.nextIndex;
      this.pos = Math.max(0, this.hub._order.indexOf(this.index));
    } else {
      this.pos = (this.pos + 1) % n;
      this.index = this.hub._order[this.pos];
    }
    this.nextIndex = null;
    this.setState('connecting');
    const delay = backoffDelay(Math.floor(this.attempt / n), this.hub._backoff, this.hub._random);
    this.attempt++;
    this.lastDelay = delay;
    this.retryTimer = this.hub._timers.setTimeout(() => this.open(), delay);
    const info = {
      link: this.name, node: from, next: this.node, code: ev?.code ?? 1006, reason: ev?.reason ?? '', delay, attempt: this.attempt,
    };
    this.h.onRetry?.(info);
    this.hub.onreconnect?.(info);
  }

  /**
   * Leaves the current node now (as after a drop: same backoff), for
   * `index` if given and not the current one, else the next.
   */
  moveOn(index, reason) {
    if (this.closed || !this.endCurrent) return;
    if (index !== null && index !== undefined && index !== this.index) this.nextIndex = index;
    this.endCurrent({ code: 1000, reason });
  }

  /** Sends if open; returns whether it did. */
  send(bytes) {
    if (this.state !== 'open' || !this.ws) return false;
    this.ws.send(bytes);
    return true;
  }

  close(code = 1000, reason = '') {
    if (this.closed) return;
    this.closed = true;
    const { clearTimeout } = this.hub._timers;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    if (this.stableTimer !== null) clearTimeout(this.stableTimer);
    this.retryTimer = this.stableTimer = null;
    const ws = this.ws;
    this.ws = null;
    this.endCurrent = null;
    if (ws) {
      try { ws.close(code, reason); } catch { /* already closing */ }
    }
    this.setState('closed');
    this.hub._links.delete(this);
    this.hub._updateState();
  }
}

// ---- subscriptions ------------------------------------------------------------

/** A live subscription (see `Hub.subscribe`). */
export class Subscription {
  constructor(hub, topics, from, onmessage) {
    this.hub = hub;
    /** @type {string[]} topic prefixes ([] = every topic) */
    this.topics = topics;
    /** @type {number|null} the `from` asked for (null = live from now; set by the hub's hello) */
    this.from = from;
    /** @type {number|null} offset of the last message received */
    this.lastOffset = null;
    /** Messages received. */
    this.received = 0;
    /** Frames dropped because their offset was below the next one expected (the hub promises none). */
    this.duplicatesDropped = 0;
    /** @type {(msg: Message) => void} */
    this.onmessage = onmessage;
    /** @type {((state: string, node: string) => void) | null} 'connecting' | 'open' | 'closed', and the node's base URL */
    this.onstate = null;
    /** @type {((err: PinionError) => void) | null} */
    this.onerror = null;
    /**
     * @type {((info: {node: string, next: string, code: number, reason: string, delay: number, attempt: number, from: number|null}) => void) | null}
     * Called when the connection to `node` ended (or an attempt failed):
     * the next attempt goes to `next` in `delay` ms, resuming at `from`.
     */
    this.onreconnect = null;
    /** Set after the connection ends: its close code and reason. */
    this.lastClose = null;
    this.link = new Link(hub, 'subscribe', {
      url: (node) => this.url(node),
      protocol: SUB_PROTOCOL,
      onState: (s, node) => this.onstate?.(s, node),
      onMessage: (data) => this.deliver(data),
      onClose: (ev) => this.closedBy(ev),
      onRetry: (info) => this.onreconnect?.({ ...info, from: this.nextFrom() }),
    });
    hub._links.add(this.link);
    this.link.start();
  }

  /**
   * Where the next (re)connection goes: the node's `/sub` with the topics
   * and `from` (last + 1 once anything was received).
   * @param {string} [node] a base URL (default: the node it is on or trying)
   */
  url(node = this.link.node) {
    const q = this.topics.map((t) => `topic=${encodeURIComponent(t)}`);
    const from = this.nextFrom();
    if (from !== null) q.push(`from=${from}`);
    if (this.hub.token) q.push(`token=${encodeURIComponent(this.hub.token)}`);
    return `${node}/sub${q.length ? `?${q.join('&')}` : ''}`;
  }

  /** The `from` of the next (re)connection, or null for live. */
  nextFrom() {
    return this.lastOffset !== null ? this.lastOffset + 1 : this.from;
  }

  get state() {
    return this.link.state;
  }

  /** The base URL of the node this subscription is on (or trying, while 'connecting'). */
  get node() {
    return this.link.node;
  }

  deliver(data) {
    if (typeof data === 'string') {
      // The hello: the first offset this subscription can get. Pin a
      // "live from now" subscription there, so a reconnection before its
      // first message, to this node or another, still misses nothing.
      let hello;
      try {
        hello = JSON.parse(data);
      } catch (e) {
        throw new PinionError(`subscribe: unreadable text frame from the hub: ${e.message}`, 'PROTOCOL');
      }
      if (Number.isSafeInteger(hello?.next) && this.lastOffset === null && this.from === null) {
        this.from = hello.next;
      }
      return;
    }
    const bytes = toBytes(data);
    if (!bytes) throw new PinionError('subscribe: frame from the hub is neither text nor binary', 'PROTOCOL');
    const msg = parseSubFrame(bytes);
    // Every node delivers the same offsets; one that sends something below
    // the next offset expected (already delivered, or before `from`) is
    // not believed.
    const expected = this.nextFrom();
    if (expected !== null && msg.offset < expected) {
      this.duplicatesDropped++;
      return;
    }
    this.lastOffset = msg.offset;
    this.received++;
    this.onmessage?.(msg);
  }

  closedBy(ev) {
    this.lastClose = { code: ev.code, reason: ev.reason };
    if (ev.code === CLOSE_TOKEN_EXPIRED || ev.code === CLOSE_UNAUTHENTICATED) {
      // The next attempt asks getToken (if given) for a fresh one.
      this.hub._tokenExpired();
    }
    if (ev.code === CLOSE_UNAUTHENTICATED || ev.code === CLOSE_FORBIDDEN) {
      const code = ev.code === CLOSE_FORBIDDEN ? 'FORBIDDEN' : 'UNAUTHENTICATED';
      const err = new PinionError(`subscribe: refused by the hub (${ev.code}: ${ev.reason || code}); retrying`, code);
      this.onerror?.(err);
      this.hub._error(err);
    }
    if (ev.code === CLOSE_REPLAY_FAILED) {
      const err = new PinionError(`subscribe: the hub could not replay its log (${ev.reason || 'no reason given'}); retrying`, 'REPLAY_FAILED');
      this.onerror?.(err);
      this.hub._error(err);
    }
    // 4008 (slow consumer), 1000 (shutdown), 1006 (dropped), ...: reconnect
    // from lastOffset + 1 after the backoff delay.
  }

  /** Stops the subscription for good. */
  close() {
    this.link.close(1000, 'unsubscribed');
  }
}

// ---- the hub ------------------------------------------------------------------

function defaultBaseUrl() {
  const loc = globalThis.location;
  if (!loc || !/^https?:$/.test(loc.protocol)) {
    throw new PinionError("no url given and no page location to derive it from: connect({ url: 'ws://host:7452' })", 'INVALID');
  }
  return `${loc.protocol === 'https:' ? 'wss:' : 'ws:'}//${loc.host}`;
}

function normalizeBaseUrl(url) {
  let u;
  try {
    u = new URL(url);
  } catch {
    throw new PinionError(`not a URL: ${url}`, 'INVALID');
  }
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  else if (u.protocol !== 'ws:' && u.protocol !== 'wss:') {
    throw new PinionError(`url must be ws://, wss://, http:// or https://, got ${url}`, 'INVALID');
  }
  if (u.search || u.hash) throw new PinionError(`url must be the hub's base URL, without query or fragment: ${url}`, 'INVALID');
  return u.href.replace(/\/+$/, '');
}

function randomBytes(n) {
  const b = new Uint8Array(n);
  const c = globalThis.crypto;
  if (!c?.getRandomValues) throw new PinionError('crypto.getRandomValues is not available: pass connect({ clientId })', 'INVALID');
  c.getRandomValues(b);
  return b;
}

const PUB_PROTOCOL = 'rep.sp.nanomsg.org';
/** Offered on `/sub`: the hub then sends a hello `{"next": N}` first. */
const SUB_PROTOCOL = 'pinion.v1';
const MAX_TOPIC_BYTES = 255;

/**
 * A connection to one hub, or to a cluster's nodes: publish, subscribe,
 * watch its stats. Made by `connect()`.
 */
export class Hub {
  constructor(opts = {}) {
    let urls;
    if (opts.urls !== undefined && opts.urls !== null) {
      if (opts.url !== undefined && opts.url !== null) {
        throw new PinionError('connect: pass either url or urls, not both', 'INVALID');
      }
      if (!Array.isArray(opts.urls) || opts.urls.length === 0) {
        throw new PinionError('connect: urls must be a non-empty array of base URLs', 'INVALID');
      }
      urls = opts.urls.map(normalizeBaseUrl);
    } else {
      urls = [normalizeBaseUrl(opts.url ?? defaultBaseUrl())];
    }
    /** @type {readonly string[]} the nodes' base URLs, normalized, in the order given */
    this.urls = Object.freeze(urls);
    /** @type {string} the first of `urls` (the only one when connected with `url`) */
    this.url = urls[0];
    this._WebSocket = opts.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== 'function') {
      throw new PinionError(
        'no WebSocket implementation: pass connect({ WebSocket }) (in Node 20 run with --experimental-websocket, or use the ws package)',
        'NO_WEBSOCKET',
      );
    }
    this._backoff = { min: opts.backoff?.min ?? 100, max: opts.backoff?.max ?? 10000 };
    this._random = opts.random ?? Math.random;
    this._timers = opts.timers ?? { setTimeout: globalThis.setTimeout.bind(globalThis), clearTimeout: globalThis.clearTimeout.bind(globalThis) };
    this._stableMs = opts.stableMs ?? 5000;
    this._connectTimeout = opts.connectTimeout ?? 10000;
    this._publishTimeout = opts.publishTimeout ?? 0;
    this._notLeaderTimeout = opts.notLeaderTimeout ?? 10000;
    checkUint(this._notLeaderTimeout, 'notLeaderTimeout');
    // Where every connection starts: spread over the nodes, so that many
    // clients given the same list do not all land on the first one.
    const start = opts.startIndex ?? (urls.length === 1 ? 0 : Math.floor(this._random() * urls.length) % urls.length);
    if (!Number.isInteger(start) || start < 0 || start >= urls.length) {
      throw new PinionError(`connect: startIndex must be an integer in [0, ${urls.length}), got ${start}`, 'INVALID');
    }
    /** @type {number} index in `urls` where each new connection starts */
    this._startIndex = start;
    // The order connections try the URLs in: from the start on, the others
    // in a random order of this hub's own (with startIndex given: round
    // robin from it). So when a node dies, the clients it served spread
    // over the others instead of all moving to the same next one.
    const rest = [];
    for (let k = 1; k < urls.length; k++) rest.push((start + k) % urls.length);
    if (opts.startIndex === undefined || opts.startIndex === null) {
      for (let k = rest.length - 1; k > 0; k--) {
        const j = Math.floor(this._random() * (k + 1)) % (k + 1);
        [rest[k], rest[j]] = [rest[j], rest[k]];
      }
    }
    /** @type {number[]} */
    this._order = Object.freeze([start, ...rest]);
    /** @type {Uint8Array} this hub object's 16-byte client id */
    this.clientId = opts.clientId ? Uint8Array.from(opts.clientId) : randomBytes(16);
    if (this.clientId.length !== 16) throw new PinionError(`clientId must be 16 bytes, got ${this.clientId.length}`, 'INVALID');
    this._seq = opts.firstSeq ?? 1;
    checkUint(this._seq, 'firstSeq');
    /** @type {string|null} the token sent (authentication on), or null */
    this.token = opts.token ?? null;
    this._getToken = opts.getToken ?? null;
    if (this._getToken !== null && typeof this._getToken !== 'function') {
      throw new PinionError('connect: getToken must be a function returning a token (or a promise of one)', 'INVALID');
    }
    this._refreshMargin = opts.tokenRefreshMargin ?? 30;
    this._refreshing = null;
    this._refreshTimer = null;
    this._nextRequest = Math.floor(this._random() * 0x7fffffff) >>> 0;
    /** Requests not yet answered, by request id, in send order. */
    this._pending = new Map();
    this._pub = null;
    this._links = new Set();
    this._closed = false;
    this.state = 'connecting';
    /** @type {((state: 'connecting'|'open'|'closed') => void) | null} */
    this.onstate = opts.onstate ?? null;
    /** @type {((err: PinionError) => void) | null} errors not tied to one call (protocol errors, replay failures) */
    this.onerror = opts.onerror ?? null;
    /**
     * @type {((info: {link: string, node: string, next: string, code: number, reason: string, delay: number, attempt: number}) => void) | null}
     * Called whenever one of its connections ('publish', 'subscribe',
     * 'stats') ended or failed to open: the next attempt goes to `next` in `delay` ms.
     */
    this.onreconnect = opts.onreconnect ?? null;
    this._updateState();
  }

  get clientIdHex() {
    return toHex(this.clientId);
  }

  /** Publishes not yet acked. */
  get pendingCount() {
    return this._pending.size;
  }

  /** The base URL the publish connection is on (or trying), null before the first publish. */
  get publishNode() {
    return this._pub ? this._pub.node : null;
  }

  _error(err) {
    if (this.onerror) this.onerror(err);
    else if (typeof console !== 'undefined') console.warn(`pinion: ${err.message}`);
  }

  _updateState() {
    let s;
    if (this._closed) s = 'closed';
    else {
      s = 'open';
      for (const l of this._links) if (l.state !== 'open') s = 'connecting';
    }
    if (s !== this.state) {
      this.state = s;
      this.onstate?.(s);
    }
  }

  /** With getToken: the token held is missing or within the refresh margin of its expiry. */
  _tokenStale() {
    if (!this._getToken) return false;
    if (!this.token) return true;
    const exp = tokenExpiry(this.token);
    return exp !== null && exp - Date.now() / 1000 <= this._refreshMargin;
  }

  /** The hub refused the token held (expired, or not valid): the next connection asks for a new one. */
  _tokenExpired() {
    if (this._getToken) this.token = null;
  }

  /**
   * Asks getToken for a token (one call at a time), keeps it, puts it in the
   * publishes not yet answered, and schedules the next refresh before it
   * expires (like centrifuge-js).
   */
  _refreshToken() {
    if (!this._getToken) return Promise.resolve(this.token);
    if (this._refreshing) return this._refreshing;
    this._refreshing = Promise.resolve()
      .then(() => this._getToken())
      .then((t) => {
        if (typeof t !== 'string' || t === '') throw new PinionError('getToken returned no token', 'UNAUTHENTICATED');
        this.token = t;
        for (const p of this._pending.values()) p.frame = encodePubRequest(p.requestId, { ...p.fields, token: t });
        this._scheduleRefresh();
        return t;
      })
      .catch((e) => {
        const err = e instanceof PinionError ? e : new PinionError(`getToken failed: ${e?.message ?? e}`, 'UNAUTHENTICATED');
        this._error(err);
        throw err;
      })
      .finally(() => {
        this._refreshing = null;
      });
    return this._refreshing;
  }

  _scheduleRefresh() {
    const { setTimeout, clearTimeout } = this._timers;
    if (this._refreshTimer !== null) clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    const exp = this.token ? tokenExpiry(this.token) : null;
    if (exp === null || this._closed) return;
    const inMs = Math.max(0, (exp - this._refreshMargin) * 1000 - Date.now());
    this._refreshTimer = setTimeout(() => {
      this._refreshTimer = null;
      this._refreshToken().catch(() => {});
    }, Math.min(inMs, 2 ** 31 - 1));
  }

  /**
   * Subscribes to topic prefixes.
   * @param {{topics?: string[]|string, from?: number|null}} spec `topics`: prefixes (none = every topic); `from`: first offset wanted (absent = live from now)
   * @param {(msg: Message) => void} onmessage
   * @returns {Subscription}
   */
  subscribe(spec = {}, onmessage) {
    if (this._closed) throw new PinionError('subscribe on a closed hub', 'CLOSED');
    if (typeof spec === 'function') [spec, onmessage] = [{}, spec];
    let topics = spec.topics ?? [];
    if (typeof topics === 'string') topics = [topics];
    if (!Array.isArray(topics) || topics.some((t) => typeof t !== 'string')) {
      throw new PinionError('subscribe: topics must be a string or an array of strings', 'INVALID');
    }
    const from = spec.from ?? null;
    if (from !== null) checkUint(from, 'subscribe: from');
    if (typeof onmessage !== 'function') throw new PinionError('subscribe: a message callback is required', 'INVALID');
    return new Subscription(this, [...topics], from, onmessage);
  }

  /**
   * Publishes one message and resolves with its ack once it is in the log.
   * @param {string} topic UTF-8, at most 255 bytes, no NUL
   * @param {string|Uint8Array|ArrayBuffer} payload
   * @param {{timeout?: number}} [opts] reject with a TIMEOUT PinionError after this many ms without an ack (0 = wait, across reconnects)
   * @returns {Promise<{seq: number, offset: number, duplicate: boolean}>}
   */
  publish(topic, payload, opts = {}) {
    try {
      if (this._closed) throw new PinionError('publish on a closed hub', 'CLOSED');
      if (typeof topic !== 'string') throw new PinionError('publish: topic must be a string', 'INVALID');
      const topicBytes = utf8Encoder.encode(topic);
      if (topicBytes.length > MAX_TOPIC_BYTES) {
        throw new PinionError(`publish: topic is ${topicBytes.length} bytes, the hub takes at most ${MAX_TOPIC_BYTES}`, 'INVALID');
      }
      if (topicBytes.includes(0)) throw new PinionError('publish: topic contains a NUL character', 'INVALID');
      let body;
      if (typeof payload === 'string') body = utf8Encoder.encode(payload);
      else body = toBytes(payload);
      if (!body) throw new PinionError('publish: payload must be a string, a Uint8Array or an ArrayBuffer', 'INVALID');
      const seq = this._seq++;
      this._nextRequest = (this._nextRequest + 1) & 0x7fffffff;
      const requestId = (0x80000000 | this._nextRequest) >>> 0;
      const fields = { clientId: this.clientId, seq, topic: topicBytes, payload: body };
      const frame = encodePubRequest(requestId, { ...fields, token: this.token });
      return new Promise((resolve, reject) => {
        // lastNack: the last NOT_LEADER answer while it moves between nodes.
        const p = { seq, frame, fields, requestId, resolve, reject, timer: null, lastNack: null };
        const timeout = opts.timeout ?? this._publishTimeout;
        if (timeout > 0) {
          p.timer = this._timers.setTimeout(() => {
            this._pending.delete(requestId);
            const last = p.lastNack ? `; the last answer was ${p.lastNack.codeName} from ${p.lastNack.node}` : '';
            const err = new PinionError(`publish seq ${seq}: no ack within ${timeout} ms (it may still be logged)${last}`, 'TIMEOUT');
            if (p.lastNack) err.cause = p.lastNack;
            reject(err);
          }, timeout);
        }
        this._pending.set(requestId, p);
        this._pubLink().send(frame);
      });
    } catch (e) {
      return Promise.reject(e);
    }
  }

  _pubLink() {
    if (!this._pub) {
      this._pub = new Link(this, 'publish', {
        url: (node) => `${node}/pub${this.token ? `?token=${encodeURIComponent(this.token)}` : ''}`,
        protocol: PUB_PROTOCOL,
        // Requests unanswered on the previous connection go again, same
        // request id and same seq: the hub answers a retry with the
        // original offset.
        onOpen: () => {
          for (const p of this._pending.values()) this._pub.send(p.frame);
        },
        onMessage: (data) => this._reply(data),
        onClose: (ev) => {
          // 1009 (message too big): the hub refuses frames over its
          // transport limit by closing the connection, before decoding
          // them, so nothing was logged. Sending the same request again
          // would close the next connection too: the largest unanswered
          // request (at least as big as the one refused) is failed instead.
          if (ev.code === CLOSE_MESSAGE_TOO_BIG) this._failLargest(ev);
        },
      });
      this._links.add(this._pub);
      this._pub.start();
    }
    return this._pub;
  }

  _failLargest(ev) {
    let worst = null;
    for (const [id, p] of this._pending) if (!worst || p.frame.length > worst[1].frame.length) worst = [id, p];
    if (!worst) return;
    const [id, p] = worst;
    this._pending.delete(id);
    if (p.timer !== null) this._timers.clearTimeout(p.timer);
    p.reject(new PinionError(
      `publish seq ${p.seq}: the hub closed the connection because the ${p.frame.length}-byte request is too big for it ` +
      `(WebSocket close 1009${ev.reason ? `: ${ev.reason}` : ''}); it was not logged`,
      'MESSAGE_TOO_BIG',
    ));
  }

  _reply(data) {
    const bytes = toBytes(data);
    if (!bytes) throw new PinionError('publish: text frame from the hub, expected binary', 'PROTOCOL');
    const { requestId, reply } = decodePubReply(bytes);
    const p = this._pending.get(requestId);
    if (!p) return; // answered already (a resend's second answer), or timed out
    if (reply.nack && reply.nack.code === UNAUTHENTICATED && this._getToken && !p.reauthed) {
      // The token expired (or was refused) in flight: once, a fresh one and
      // the same seq again.
      p.reauthed = true;
      this.token = null;
      this._refreshToken().then(() => {
        if (this._pending.get(requestId) === p) this._pubLink().send(p.frame);
      }, (e) => {
        this._pending.delete(requestId);
        if (p.timer !== null) this._timers.clearTimeout(p.timer);
        p.reject(e);
      });
      return;
    }
    if (reply.nack && reply.nack.code === NOT_LEADER && this.urls.length > 1) {
      this._notLeader(reply.nack);
      return;
    }
    this._pending.delete(requestId);
    if (p.timer !== null) this._timers.clearTimeout(p.timer);
    if (reply.ack) {
      if (reply.ack.seq !== p.seq) {
        p.reject(new PinionError(`publish seq ${p.seq}: the ack is for seq ${reply.ack.seq}`, 'PROTOCOL'));
        return;
      }
      p.resolve({ seq: reply.ack.seq, offset: reply.ack.offset, duplicate: reply.ack.duplicate });
    } else {
      // A nack for an undecodable request has no seq: it is this request's.
      p.reject(new NackError({ ...reply.nack, seq: p.seq }));
    }
  }

  /**
   * A node answered NOT_LEADER (nothing was logged there): with several
   * URLs, every unanswered publish stays pending and the `/pub` connection
   * moves on, to the leader if its URL names the host of exactly one of
   * ours, else to the next URL; there the publishes are sent again with
   * the same request ids and seqs. A publish's `timeout` bounds this;
   * without one, `notLeaderTimeout` (from the first NOT_LEADER) does, and
   * the publish then rejects with the last NOT_LEADER NackError.
   */
  _notLeader(nack) {
    const link = this._pub;
    const node = link.node;
    for (const [id, q] of this._pending) {
      q.lastNack = new NackError({ ...nack, seq: q.seq });
      q.lastNack.node = node;
      if (q.timer === null) {
        q.timer = this._timers.setTimeout(() => {
          this._pending.delete(id);
          q.reject(q.lastNack);
        }, this._notLeaderTimeout);
      }
    }
    link.moveOn(this._leaderIndex(nack.leader), `NOT_LEADER${nack.leader ? ` (leader ${nack.leader})` : ''}`);
  }

  /**
   * The index in `urls` of the one URL on the host of a NOT_LEADER's leader
   * URL, else null; null too when that node's connection was the last to
   * fail (a follower names a dead leader until the next election: the
   * next URL may be the new one).
   */
  _leaderIndex(leader) {
    if (!leader) return null;
    let host;
    try {
      host = new URL(leader).hostname;
    } catch {
      return null;
    }
    if (!host) return null;
    const found = [];
    this.urls.forEach((u, i) => { if (new URL(u).hostname === host) found.push(i); });
    return found.length === 1 && found[0] !== this._pub.downIndex ? found[0] : null;
  }

  /**
   * Calls `onstats(object)` with each `/stats` JSON frame (every 500 ms),
   * reconnecting (and moving between `urls`) like the other connections.
   * @returns {{close(): void, readonly state: string, readonly node: string}}
   */
  watchStats(onstats) {
    if (this._closed) throw new PinionError('watchStats on a closed hub', 'CLOSED');
    const link = new Link(this, 'stats', {
      url: (node) => `${node}/stats${this.token ? `?token=${encodeURIComponent(this.token)}` : ''}`,
      onMessage: (data) => {
        if (typeof data !== 'string') throw new PinionError('stats: binary frame from the hub, expected JSON text', 'PROTOCOL');
        onstats(JSON.parse(data));
      },
    });
    this._links.add(link);
    link.start();
    return {
      close: () => link.close(1000, 'done'),
      get state() { return link.state; },
      get node() { return link.node; },
    };
  }

  /**
   * Closes every connection. Publishes still waiting for their ack reject
   * with a CLOSED PinionError (they may or may not be in the log).
   */
  close() {
    if (this._closed) return;
    this._closed = true;
    if (this._refreshTimer !== null) this._timers.clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    for (const l of [...this._links]) l.close(1000, 'client closed');
    for (const [, p] of this._pending) {
      if (p.timer !== null) this._timers.clearTimeout(p.timer);
      p.reject(new PinionError(`publish seq ${p.seq}: hub closed before the ack (the message may or may not be in the log)`, 'CLOSED'));
    }
    this._pending.clear();
    this._updateState();
  }
}

/**
 * Connects to a pinion hub's HTTP port.
 * @param {object} [opts]
 * @param {string} [opts.url] the hub's base URL (ws://, wss://, http:// or https://; default: this page's host)
 * @param {string[]} [opts.urls] instead of `url`: the base URLs of several nodes of one cluster (each
 *   connection moves to the next after a drop; publishes answered NOT_LEADER are sent again elsewhere)
 * @param {number} [opts.startIndex] where in `urls` connections start (default: random, to spread clients)
 * @param {number} [opts.notLeaderTimeout] with several urls and no publish timeout: how long (ms) a publish
 *   answered NOT_LEADER is retried on other nodes before it rejects with that NackError (default 10000)
 * @param {(info: object) => void} [opts.onreconnect] called when a connection ends or fails (see `Hub.onreconnect`)
 * @param {Function} [opts.WebSocket] WebSocket constructor (default: globalThis.WebSocket)
 * @param {{min?: number, max?: number}} [opts.backoff] reconnect delays in ms (default 100 .. 10000)
 * @param {number} [opts.publishTimeout] default `timeout` of publish(), ms (0 = none)
 * @param {Uint8Array} [opts.clientId] 16 bytes (default: random)
 * @param {number} [opts.firstSeq] the first publish's seq (default 1); with a kept clientId, continue above the last one used
 * @param {(s: string) => void} [opts.onstate]
 * @param {(e: PinionError) => void} [opts.onerror]
 * @param {() => number} [opts.random] for tests: the jitter's random source
 * @param {{setTimeout: Function, clearTimeout: Function}} [opts.timers] for tests
 * @param {number} [opts.stableMs] a connection up this long resets the backoff (default 5000)
 * @param {number} [opts.connectTimeout] a connection attempt not open after this many ms is abandoned and retried (default 10000)
 * @param {string} [opts.token] a token for a hub with authentication on (`pinion token issue`): sent with every
 *   publish and on every connection (`?token=`)
 * @param {() => (string|Promise<string>)} [opts.getToken] instead of (or with) `token`: called for a token before the
 *   first connection, again `tokenRefreshMargin` seconds before the one held expires, and when the hub says it
 *   expired (close 4419, NACK UNAUTHENTICATED); subscriptions resume where they were
 * @param {number} [opts.tokenRefreshMargin] seconds before expiry to refresh (default 30)
 * @returns {Hub}
 */
export function connect(opts = {}) {
  return new Hub(opts);
}
