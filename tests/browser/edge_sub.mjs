// A pinion.js subscriber over several nodes, for tests that kill nodes
// under it (issue 13's edge nodes): connect({ urls }) + subscribe, one JSON
// line per delivered message on stdout, moves and reconnects on stderr.
//
//   node --experimental-websocket tests/browser/edge_sub.mjs \
//     --url ws://127.0.0.1:7452 [--url ws://127.0.0.2:7452 ...] \
//     [--topic PREFIX ...] [--from N] [--count C] [--for SECS] [--start-index I]
//
// (Node 22 and later: no flag needed.) Each line is exactly
//   {"offset":N,"topic":"...","payload_hex":"...","node":"ws://host:port"}
// where node is the URL the message came through (as pinion.js normalizes
// it: no trailing slash). Exits 0 after --count messages or --for seconds
// (whichever comes first; neither: runs until SIGINT/SIGTERM, then exits 0),
// 2 on bad arguments, 1 when no WebSocket implementation is available.
// --start-index: which --url to try first (default: random, as pinion.js
// spreads clients); after a drop it moves to the next one, round robin.
import { connect } from '../../crates/pinion-hub/web/pinion.js';

const USAGE = `usage: node --experimental-websocket edge_sub.mjs --url ws://HOST:PORT [--url ...]
  [--topic PREFIX ...] [--from OFFSET] [--count N] [--for SECS] [--start-index I]`;

function bad(msg) {
  process.stderr.write(`edge_sub: ${msg}\n${USAGE}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const a = { urls: [], topics: [], from: null, count: null, forSecs: null, startIndex: undefined };
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (arg === '--help' || arg === '-h') {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    }
    const known = ['--url', '--topic', '--from', '--count', '--for', '--start-index'];
    if (!known.includes(arg)) bad(`unknown argument ${JSON.stringify(argv[i])}`);
    if (value === undefined) {
      if (i + 1 >= argv.length) bad(`${arg} needs a value`);
      value = argv[++i];
    }
    const int = (what) => {
      if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) bad(`${what} must be a non-negative integer, got ${JSON.stringify(value)}`);
      return Number(value);
    };
    switch (arg) {
      case '--url': a.urls.push(value); break;
      case '--topic': a.topics.push(value); break;
      case '--from': a.from = int('--from'); break;
      case '--start-index': a.startIndex = int('--start-index'); break;
      case '--count':
        a.count = int('--count');
        if (a.count === 0) bad('--count must be at least 1');
        break;
      case '--for': {
        const s = Number(value);
        if (value.trim() === '' || !Number.isFinite(s) || s <= 0) bad(`--for must be a positive number of seconds, got ${JSON.stringify(value)}`);
        a.forSecs = s;
        break;
      }
      default: break;
    }
  }
  if (a.urls.length === 0) bad('at least one --url is required');
  return a;
}

const args = parseArgs(process.argv.slice(2));
const log = (msg) => process.stderr.write(`edge_sub: ${msg}\n`);

if (typeof globalThis.WebSocket !== 'function') {
  log('no global WebSocket: run node with --experimental-websocket (Node 20), or Node >= 22');
  process.exit(1);
}

let hub;
try {
  hub = connect({ urls: args.urls, startIndex: args.startIndex, WebSocket: globalThis.WebSocket, onerror: (e) => log(`error: ${e.message}`) });
} catch (e) {
  bad(e.message); // a bad URL: PinionError INVALID
}

let printed = 0;
let done = false;
function finish(code, why) {
  if (done) return;
  done = true;
  log(`${why}: ${printed} message(s)`);
  hub.close();
  // Exit once everything written to stdout is out.
  process.stdout.write('', () => process.exit(code));
}

const toHex = (bytes) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');

const sub = hub.subscribe({ topics: args.topics, from: args.from }, (m) => {
  if (done) return;
  process.stdout.write(`${JSON.stringify({ offset: m.offset, topic: m.topic, payload_hex: toHex(m.payload), node: sub.node })}\n`);
  printed++;
  if (args.count !== null && printed >= args.count) finish(0, `--count ${args.count} reached`);
});
sub.onstate = (state, node) => {
  if (state === 'open') log(`subscribed on ${node} from ${sub.nextFrom() ?? 'live'}`);
};
sub.onreconnect = (i) => {
  const how = i.node === i.next ? 'reconnecting to it' : `moving to ${i.next}`;
  log(`${i.node}: connection ended (${i.code}${i.reason ? ` ${i.reason}` : ''}); ${how} in ${Math.round(i.delay)} ms, from ${i.from ?? 'live'}`);
};
log(`subscribing on ${sub.node} (of ${hub.urls.join(' ')}) from ${sub.nextFrom() ?? 'live'}`);

if (args.forSecs !== null) setTimeout(() => finish(0, `--for ${args.forSecs} s elapsed`), args.forSecs * 1000);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => finish(0, sig));
// A reader that went away (EPIPE): stop quietly.
process.stdout.on('error', () => { done = true; hub.close(); process.exit(0); });
