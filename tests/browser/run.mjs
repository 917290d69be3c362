// The hub's web pages in a real browser: headless Chromium driven by
// playwright-core.
//
//   node tests/browser/run.mjs --base http://127.0.0.1:7452 --out DIR [--n 20] [--timeout-ms 50000]
//
// Against a running hub (crates/pinion-cli/tests/browser.rs starts one):
//
// 1. demo page B subscribes (live) to a fresh topic prefix; demo page A
//    publishes a warm-up message and then N messages through the form, each
//    acked with an offset; B must receive exactly those, in order, with the
//    acked offsets and the same text;
// 2. a 300-byte message is refused (NACK TOO_LARGE, shown on the page) and
//    the next publish on the same connection is acked;
// 3. demo page C subscribes through its form with "resume from" = the 5th
//    message's offset and must receive exactly the messages from there on;
// 4. the dashboard (open from the start), while A publishes in the
//    background, must collect /stats samples and draw them: its canvases
//    must have drawn pixels, the throughput chart in its series' colour;
// 5. screenshots of every page go to DIR (demo-publisher.png,
//    demo-subscriber.png, demo-resume.png, dashboard.png,
//    dashboard-dark.png); each must decode as a PNG of the viewport's size
//    with many distinct colours (not blank);
// 6. no page may log a JavaScript error.
//
// Prints progress on stderr and one JSON summary line on stdout; exits 0
// only if every check passed (1: a check failed, 2: could not run).
// Chromium: /usr/bin/chromium (Debian's package), or $PINION_CHROMIUM.
import { mkdirSync, readFileSync, existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    base: { type: 'string' },
    out: { type: 'string' },
    n: { type: 'string', default: '20' },
    'timeout-ms': { type: 'string', default: '50000' },
  },
});
const started = Date.now();
const summary = { ok: false, base: args.base, checks: [], screenshots: [], pageErrors: [], error: null, durationMs: 0 };
const log = (...a) => console.error('[browser]', ...a);

function finish(code) {
  summary.durationMs = Date.now() - started;
  summary.ok = code === 0;
  process.stdout.write(JSON.stringify(summary) + '\n');
  process.exit(code);
}
function fatal(msg) {
  summary.error = msg;
  log(`ERROR: ${msg}`);
  finish(2);
}
function check(name, ok, detail = '') {
  summary.checks.push({ name, ok: Boolean(ok), detail: String(detail) });
  log(`${ok ? 'ok  ' : 'FAIL'} ${name}${detail ? `: ${detail}` : ''}`);
  return Boolean(ok);
}

if (!args.base || !args.out) fatal('usage: node run.mjs --base http://HOST:PORT --out DIR [--n 20] [--timeout-ms 50000]');
const base = args.base.replace(/\/+$/, '');
const outDir = resolve(args.out);
const N = Number(args.n);
const chromiumPath = process.env.PINION_CHROMIUM || '/usr/bin/chromium';
if (!existsSync(chromiumPath)) fatal(`no Chromium at ${chromiumPath}: run scripts/setup-test-env.sh (installs Debian's chromium)`);

let chromium, PNG;
try {
  ({ chromium } = await import('playwright-core'));
  ({ PNG } = await import('pngjs'));
} catch (e) {
  fatal(`cannot load playwright-core / pngjs (${e.message}): run scripts/setup-test-env.sh (runs npm ci in tests/browser)`);
}
mkdirSync(outDir, { recursive: true });

const deadline = setTimeout(() => fatal(`timed out after ${args['timeout-ms']} ms`), Number(args['timeout-ms']));

const VIEWPORT = { width: 1280, height: 800 };
let browser;
try {
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
} catch (e) {
  fatal(`cannot start Chromium (${chromiumPath}): ${e.message.split('\n')[0]}`);
}

try {
  await run();
} catch (e) {
  summary.error = e.stack ?? String(e);
  log(`ERROR: ${summary.error}`);
  check('the run completed', false, e.message);
} finally {
  clearTimeout(deadline);
  await browser.close().catch(() => {});
}
finish(summary.checks.every((c) => c.ok) && !summary.error ? 0 : 1);

async function newPage(context, name) {
  const page = await context.newPage();
  page.on('pageerror', (e) => summary.pageErrors.push(`${name}: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') summary.pageErrors.push(`${name}: console: ${m.text()}`);
  });
  return page;
}

/** Waits until `fn(arg)` (run in the page) is truthy; fails the check with `what` otherwise. */
async function waitFor(page, what, fn, arg, timeout = 10000) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 50 });
    return true;
  } catch {
    return check(what, false, `not within ${timeout} ms`);
  }
}

async function messagesOf(page) {
  return page.$$eval('#messages li', (lis) => lis.map((li) => ({
    offset: Number(li.dataset.offset), topic: li.dataset.topic, text: li.querySelector('.payload').textContent,
  })));
}

async function publishViaForm(page, text, expectClass = 'acked') {
  const before = await page.$$eval('#acks li', (l) => l.length);
  await page.fill('#message', text);
  await page.click('#publish');
  await page.waitForFunction(({ n, cls }) => {
    const li = document.querySelectorAll('#acks li')[n];
    return li && li.className === cls;
  }, { n: before, cls: expectClass }, { timeout: 10000, polling: 20 });
  return page.$eval(`#acks li:nth-child(${before + 1})`, (li) => ({ ...li.dataset, text: li.textContent }));
}

async function screenshot(page, file, opts = {}) {
  const path = join(outDir, file);
  await page.screenshot({ path, ...opts });
  const png = PNG.sync.read(readFileSync(path));
  const colours = new Map();
  for (let i = 0; i < png.data.length; i += 4) {
    const key = (png.data[i] << 16) | (png.data[i + 1] << 8) | png.data[i + 2];
    colours.set(key, (colours.get(key) ?? 0) + 1);
  }
  const pixels = png.width * png.height;
  const dominant = Math.max(...colours.values()) / pixels;
  const info = { file: path, width: png.width, height: png.height, colours: colours.size, dominant: Number(dominant.toFixed(3)) };
  summary.screenshots.push(info);
  if (!opts.fullPage) {
    check(`${file}: ${VIEWPORT.width}x${VIEWPORT.height}`, png.width === VIEWPORT.width && png.height === VIEWPORT.height, `${png.width}x${png.height}`);
  }
  check(`${file}: not blank`, colours.size >= 64 && dominant < 0.97, `${colours.size} colours, the commonest covers ${(dominant * 100).toFixed(1)}%`);
  return info;
}

async function run() {
  const context = await browser.newContext({ viewport: VIEWPORT, deviceScaleFactor: 1, colorScheme: 'light' });
  const prefix = `browser-test/${Date.now().toString(36)}/`;
  const topic = `${prefix}chat`;
  log(`hub ${base}, topic ${topic}, ${N} messages`);

  // The dashboard first: it watches the whole run (the publishes, the NACK).
  const d = await newPage(context, 'dashboard');
  await d.goto(`${base}/`);

  // ---- 1. B subscribes live, A publishes ----
  const b = await newPage(context, 'demo B');
  await b.goto(`${base}/demo?prefix=${encodeURIComponent(prefix)}&subscribe=1`);
  if (!(await waitFor(b, 'demo B: subscription open', () => document.querySelector('#sub-state')?.dataset.state === 'open'))) return;
  check('demo B: subscription open', true);

  const a = await newPage(context, 'demo A');
  await a.goto(`${base}/demo?topic=${encodeURIComponent(topic)}`);
  const warm = await publishViaForm(a, 'warm-up');
  check('demo A: publish acked with an offset', Number.isSafeInteger(Number(warm.offset)), `offset ${warm.offset}, seq ${warm.seq}`);
  await waitFor(b, 'demo B: the warm-up message arrives live', (o) => [...document.querySelectorAll('#messages li')].some((li) => li.dataset.offset === o), warm.offset);

  const acks = [];
  const texts = [];
  for (let i = 0; i < N; i++) {
    const text = `message ${i} ✓ ${'·'.repeat(i % 5)}`;
    texts.push(text);
    acks.push(await publishViaForm(a, text));
  }
  const offsets = acks.map((x) => Number(x.offset));
  const seqs = acks.map((x) => Number(x.seq));
  check(`demo A: ${N} publishes acked`, acks.length === N && offsets.every(Number.isSafeInteger), offsets.join(','));
  check('demo A: offsets increase', offsets.every((o, i) => i === 0 ? o > Number(warm.offset) : o > offsets[i - 1]));
  check('demo A: seqs are 2..N+1 (one client id, increasing)', seqs.every((s, i) => s === i + 2), seqs.join(','));

  await waitFor(b, `demo B: ${N + 1} messages`, (n) => document.querySelectorAll('#messages li').length >= n, N + 1);
  const got = await messagesOf(b);
  const want = [{ offset: Number(warm.offset), topic, text: 'warm-up' }, ...offsets.map((o, i) => ({ offset: o, topic, text: texts[i] }))];
  const same = JSON.stringify(got) === JSON.stringify(want);
  check('demo B: received every message once, in order, with the acked offsets and texts', same,
    same ? `${got.length} messages` : `got ${JSON.stringify(got).slice(0, 600)}`);
  await screenshot(b, 'demo-subscriber.png');

  // ---- 2. a NACK, then the connection still works ----
  const nack = await publishViaForm(a, 'x'.repeat(300), 'nack');
  check('demo A: a 300-byte message is refused with TOO_LARGE', nack.error === 'TOO_LARGE', nack.text);
  const after = await publishViaForm(a, 'after the nack');
  check('demo A: the next publish is acked', Number(after.offset) > offsets.at(-1), `offset ${after.offset}`);
  await screenshot(a, 'demo-publisher.png');

  // ---- 3. C resumes from the 5th message through the form ----
  const c = await newPage(context, 'demo C');
  await c.goto(`${base}/demo`);
  await c.fill('#prefix', prefix);
  const k = Math.min(4, N - 1);
  await c.fill('#from', String(offsets[k]));
  await c.click('#subscribe');
  const wantC = [...want.slice(k + 1), { offset: Number(after.offset), topic, text: 'after the nack' }];
  await waitFor(c, `demo C: ${wantC.length} messages from offset ${offsets[k]}`, (n) => document.querySelectorAll('#messages li').length >= n, wantC.length);
  await c.waitForTimeout(300); // nothing more may follow
  const gotC = await messagesOf(c);
  const sameC = JSON.stringify(gotC) === JSON.stringify(wantC);
  check(`demo C: resume from offset ${offsets[k]} replays exactly the messages from there`, sameC,
    sameC ? `${gotC.length} messages` : `got ${JSON.stringify(gotC).slice(0, 600)}`);
  await screenshot(c, 'demo-resume.png');

  // ---- 4. the dashboard, with traffic ----
  await a.evaluate((t) => {
    window.__load = setInterval(() => { window.pinionDemo.hub.publish(t, `load ${Date.now()}`).catch(() => {}); }, 20);
  }, `${prefix}load`);
  // 20 samples (10 s of /stats) make a chart worth looking at in the screenshot.
  await waitFor(d, 'dashboard: 20 /stats samples', () => Number(document.body.dataset.samples) >= 20, null, 20000);
  await waitFor(d, 'dashboard: throughput plotted', () => window.pinionDashboard?.charts[0].drawnPoints > 4, null, 5000);
  const samples = await d.evaluate(() => window.pinionDashboard.samples);
  check('dashboard: has /stats samples', samples >= 8, `${samples} samples`);
  const charts = await d.evaluate(() => window.pinionDashboard.charts.map((ch) => {
    const cv = ch.canvas;
    const px = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
    const colours = ch.colors().map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));
    let drawn = 0;
    const inColour = colours.map(() => 0);
    for (let i = 0; i < px.length; i += 4) {
      if (px[i + 3] === 0) continue;
      drawn++;
      if (px[i + 3] < 200) continue;
      colours.forEach((c, j) => {
        if (Math.abs(px[i] - c[0]) + Math.abs(px[i + 1] - c[1]) + Math.abs(px[i + 2] - c[2]) < 40) inColour[j]++;
      });
    }
    return { title: ch.title, w: cv.width, h: cv.height, drawn, inColour, points: ch.drawnPoints };
  }));
  for (const ch of charts) {
    check(`dashboard: "${ch.title}" canvas drew`, ch.w > 100 && ch.h > 50 && ch.drawn > 500,
      `${ch.w}x${ch.h}, ${ch.drawn} drawn pixels, ${ch.points} points, series pixels ${ch.inColour.join('/')}`);
  }
  const tp = charts.find((ch) => ch.title === 'Throughput');
  check('dashboard: the throughput line is drawn in its colour', tp && tp.inColour[0] > 100, tp && `${tp.inColour[0]} pixels`);
  for (const title of ['Ack latency', 'Connections', 'CPU', 'Log head']) {
    const ch = charts.find((x) => x.title === title);
    check(`dashboard: "${title}" has plotted points`, ch && ch.points > 0 && Math.max(...ch.inColour) > 50,
      ch && `${ch.points} points, ${Math.max(...ch.inColour)} series pixels`);
  }
  const kpi = await d.evaluate(() => ({ head: document.querySelector('#k-head').textContent, conn: document.querySelector('#k-conn-sub').textContent, status: document.querySelector('#status').dataset.state }));
  check('dashboard: live, with a log head and connections', kpi.status === 'open' && /\d/.test(kpi.head), JSON.stringify(kpi));
  await screenshot(d, 'dashboard.png');
  await screenshot(d, 'dashboard-full.png', { fullPage: true });
  await d.emulateMedia({ colorScheme: 'dark' });
  // Up to 5 s, not a fixed 200 ms: under load the page's media-query
  // listener can run later (seen failing as "light" on a busy machine).
  await d.waitForFunction(() => document.documentElement.dataset.theme === 'dark', null, { timeout: 5000, polling: 50 }).catch(() => {});
  const theme = await d.evaluate(() => document.documentElement.dataset.theme);
  check('dashboard: follows a dark colour scheme', theme === 'dark', theme);
  await screenshot(d, 'dashboard-dark.png');
  await a.evaluate(() => clearInterval(window.__load));

  check('no JavaScript errors on any page', summary.pageErrors.length === 0, summary.pageErrors.join(' | '));
  await context.close();
}
