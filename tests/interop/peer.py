#!/usr/bin/env python3
"""The NNG side of pinion's interop tests (crates/pinion/tests/interop_pynng.rs
and interop_pynng_more.rs).

Usage:  peer.py '<json config>'

The config is one JSON object. Common keys:
  scenario   which exchange to play (see SCENARIOS at the bottom)
  role       "listen" or "dial"
  url        tcp://host:port or ws://host:port/path (port 0 when listening:
             the bound port is printed) or ipc:///path
  urls       (scenarios with several sockets or several pinion sockets)
             listen: socket k listens on urls[k], one "listening" line each,
             in order; dial: every socket dials every url
  deadline   seconds before the watchdog kills this process (default 20)
plus per-scenario keys (count, pattern, contexts, rounds, kind, ...).

Output on stdout, one JSON object per line:
  {"event": "listening", "url": "..."}   once bound, when role == "listen"
  {"event": <other>, ...}                progress events some scenarios print
  {"event": "result", "ok": true|false, ...}   exactly once, at the end

Some scenarios take commands from the test: one per line on stdin (e.g.
"send 1"). Closing stdin ends the peer as before.

After printing the result the peer waits until its stdin is closed (or a
short grace period passes) so that what it sent is not cut off by its exit,
then exits 0 if ok, 1 on a mismatch, an error or a timeout, 3 when the
watchdog fired. Every blocking call has a timeout; nothing waits forever.

Two kinds of peers:
  * pynng sockets (NNG 1.11 via pynng 0.9.0): reqrep, ctx, push, pull,
    pull_collect, pair, serve, healthy, pynng_wrong_proto, sub, pub,
    respond, survey, bus_leaves, bus_hub;
  * hand-written SP peers on raw TCP / AF_UNIX sockets that build every byte
    themselves, to check what pinion puts on the wire and how it reacts to
    hostile input: raw_rep, raw_req, raw_pair1, raw_hostile, raw_respondent,
    raw_surveyor.
"""

import asyncio
import json
import os
import queue
import socket
import struct
import sys
import threading
import time
import traceback

# ---------------------------------------------------------------------------
# Output, watchdog, stdin
# ---------------------------------------------------------------------------

_out_lock = threading.Lock()
STDIN_CLOSED = threading.Event()
START = time.monotonic()


def emit(obj):
    with _out_lock:
        sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
        sys.stdout.flush()


class Mismatch(Exception):
    """The other side did something the scenario does not allow."""


def expect(cond, msg):
    if not cond:
        raise Mismatch(msg)


def short(b, n=48):
    """A printable, bounded representation of bytes for error messages."""
    if b is None:
        return "None"
    if len(b) <= n:
        return f"{len(b)}:{bytes(b).hex()}"
    return f"{len(b)}:{bytes(b[:n]).hex()}..."


def start_watchdog(seconds):
    def fire():
        emit({"event": "result", "ok": False, "error": f"watchdog: peer still running after {seconds} s"})
        sys.stderr.flush()
        os._exit(3)

    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()


CMDS = queue.Queue()


def start_stdin_watch():
    """Collects command lines from stdin; sets STDIN_CLOSED at EOF."""

    def watch():
        try:
            for line in sys.stdin.buffer:
                line = line.strip()
                if line:
                    CMDS.put(line.decode(errors="replace"))
        except Exception:
            pass
        STDIN_CLOSED.set()

    threading.Thread(target=watch, daemon=True).start()


def next_cmd(timeout=15):
    """The next command line from the test; None once stdin is closed and
    every command has been taken."""
    until = time.monotonic() + timeout
    while True:
        try:
            return CMDS.get(timeout=0.05)
        except queue.Empty:
            pass
        if STDIN_CLOSED.is_set() and CMDS.empty():
            return None
        if time.monotonic() > until:
            raise Mismatch(f"no command from the test within {timeout} s")


# ---------------------------------------------------------------------------
# Payloads shared with the Rust side (interop_pynng.rs has the same functions)
# ---------------------------------------------------------------------------


def payload(i):
    """Distinct bodies: #0 empty, #1 and #51 64 KiB, the others 4..303 bytes
    starting with i as a big-endian u32."""
    if i == 0:
        n = 0
    elif i % 50 == 1:
        n = 65536
    else:
        n = 4 + (i * 37) % 300
    head = struct.pack(">I", i)
    tail = bytes(((i * 7 + j * 13) & 0xFF) for j in range(max(0, n - 4)))
    return (head + tail)[:n]


def reply(body):
    return b"re:" + bytes(body)


def seq_payload(i):
    """Push/pull bodies: i as a big-endian u32, then i % 17 bytes 'p'."""
    return struct.pack(">I", i) + b"p" * (i % 17)


def seq_index(body):
    expect(len(body) >= 4, f"push/pull body too short: {short(body)}")
    (i,) = struct.unpack(">I", body[:4])
    expect(body == seq_payload(i), f"push/pull body #{i} corrupted: {short(body)}")
    return i


PS_COUNT = 40
PS_TOPICS = [b"a/", b"b/", b"u/", b"a", b"ab/", b"x", b"u"]


def ps_message(phase, i):
    """Pub/sub bodies of one phase: #0 empty (only the empty topic matches
    it), #1 exactly "a/", #2 "a/" + 65534 bytes, then a topic from
    PS_TOPICS (including near misses of the subscribed ones: "a", "ab/",
    "u") followed by "#<phase>-<i>"."""
    if i == 0:
        return b""
    if i == 1:
        return b"a/"
    if i == 2:
        return b"a/" + bytes(((phase * 31 + j * 7) & 0xFF) for j in range(65534))
    return PS_TOPICS[i % len(PS_TOPICS)] + f"#{phase}-{i}".encode()


def ps_expected(phase, topics):
    """The bodies of `phase` a subscriber to `topics` (bytes) must get, in
    order."""
    return [m for m in (ps_message(phase, i) for i in range(PS_COUNT)) if any(m.startswith(t) for t in topics)]


# ---------------------------------------------------------------------------
# pynng helpers
# ---------------------------------------------------------------------------

TIMEOUT_MS = 5000
KEPT = []


def keep(sock):
    """pynng sockets stay open until the process exits (after the test closed
    our stdin), so a close never cuts off messages still being written."""
    KEPT.append(sock)
    return sock


def pynng_mod():
    import pynng  # imported lazily so raw scenarios do not depend on it

    return pynng


def rx(sock):
    """Receives one body. (pynng 0.9.0's Socket.recv() fails on an empty
    message: it unpacks a NULL buffer; recv_msg() does not.)"""
    return sock.recv_msg().bytes


def attach(sock, cfg):
    """Listen or dial as the config says; prints the listening url."""
    url = cfg["url"]
    if cfg["role"] == "listen":
        listener = sock.listen(url)
        if url.startswith("tcp://"):
            # str(local_address) is "host:port"; InAddr.port is not
            # byte-swapped in pynng 0.9.0, so do not use it.
            url = "tcp://" + str(listener.local_address)
        elif url.startswith("ws://"):
            # ws://host:port/path: the bound port, the same path.
            rest = url[len("ws://"):]
            path = rest[rest.find("/"):] if "/" in rest else "/"
            url = "ws://" + str(listener.local_address) + path
        emit({"event": "listening", "url": url})
    else:
        sock.dial(url, block=True)
    return url


def cfg_urls(cfg):
    return cfg.get("urls") or [cfg["url"]]


def attach_all(socks, cfg):
    """Several sockets and/or several urls. listen: socket k listens on
    urls[k] (one "listening" line each, in order); dial: every socket dials
    every url."""
    urls = cfg_urls(cfg)
    if cfg["role"] == "listen":
        expect(len(urls) == len(socks), f"{len(socks)} listening sockets need as many urls, got {urls}")
        for s, u in zip(socks, urls):
            attach(s, {"role": "listen", "url": u})
    else:
        for s in socks:
            for u in urls:
                s.dial(u, block=True)


def wait_pipes(socks, n, timeout=10):
    """Waits until every socket has at least n pipes (pynng tracks them with
    its pipe callbacks, after NNG started the pipe)."""
    until = time.monotonic() + timeout
    for k, s in enumerate(socks):
        while len(s.pipes) < n:
            if time.monotonic() > until:
                raise Mismatch(f"socket {k}: {len(s.pipes)} pipes after {timeout} s, want {n}")
            time.sleep(0.01)


def expect_silence(pynng, socks, what, first_ms=300, rest_ms=50):
    """Nothing more may arrive on any of `socks`: the first waits first_ms,
    the others rest_ms (the time has passed for them too)."""
    for k, s in enumerate(socks):
        s.recv_timeout = first_ms if k == 0 else rest_ms
        try:
            m = rx(s)
        except pynng.Timeout:
            continue
        raise Mismatch(f"{what} #{k}: unexpected message {short(m)}")


# ---------------------------------------------------------------------------
# Scenarios played with pynng sockets
# ---------------------------------------------------------------------------


def sc_reqrep(cfg):
    """pattern=rep: answer `count` requests payload(i) with reply(payload(i)).
    pattern=req: send payload(i), expect reply(payload(i))."""
    pynng = pynng_mod()
    count = cfg.get("count", 100)
    if cfg["pattern"] == "rep":
        s = keep(pynng.Rep0(recv_timeout=TIMEOUT_MS, send_timeout=TIMEOUT_MS))
        attach(s, cfg)
        for i in range(count):
            m = rx(s)
            expect(m == payload(i), f"request #{i}: got {short(m)}, want {short(payload(i))}")
            s.send(reply(m))
        return {"served": count}
    s = keep(pynng.Req0(recv_timeout=TIMEOUT_MS, send_timeout=TIMEOUT_MS))
    attach(s, cfg)
    for i in range(count):
        s.send(payload(i))
        r = rx(s)
        expect(r == reply(payload(i)), f"reply #{i}: got {short(r)}, want {short(reply(payload(i)))}")
    return {"requests": count}


def sc_ctx(cfg):
    """Contexts. pattern=req: `contexts` pynng contexts each send `rounds`
    requests "ctx<c>-r<r>" concurrently and check each reply.
    pattern=rep: `contexts` pynng contexts each take one request per round,
    wait until all of them hold one (a barrier: proves the pinion REQ has
    `contexts` requests outstanding at once), then answer in reverse order."""
    pynng = pynng_mod()
    k = cfg.get("contexts", 20)
    rounds = cfg.get("rounds", 5)
    tmo = TIMEOUT_MS / 1000

    async def req_worker(s, c):
        ctx = s.new_context()
        try:
            for r in range(rounds):
                body = f"ctx{c}-r{r}".encode()
                await asyncio.wait_for(ctx.asend(body), tmo)
                got = await asyncio.wait_for(ctx.arecv(), tmo)
                expect(got == reply(body), f"context {c} round {r}: got {short(got)}, want {short(reply(body))}")
        finally:
            ctx.close()

    async def rep_worker(s, idx, barrier, seen):
        ctx = s.new_context()
        try:
            for r in range(rounds):
                try:
                    m = await asyncio.wait_for(ctx.arecv(), tmo)
                except asyncio.TimeoutError:
                    raise Mismatch(f"rep context {idx} round {r}: no request within {tmo} s")
                seen.append(bytes(m))
                try:
                    await asyncio.wait_for(barrier.wait(), tmo)
                except asyncio.TimeoutError:
                    raise Mismatch(
                        f"round {r}: only {barrier.n_waiting} of {k} requests arrived concurrently "
                        "(the pinion REQ contexts did not have them all outstanding)"
                    )
                await asyncio.sleep((k - idx) * 0.002)
                await asyncio.wait_for(ctx.asend(reply(m)), tmo)
        finally:
            ctx.close()

    async def run():
        if cfg["pattern"] == "req":
            s = keep(pynng.Req0(recv_timeout=TIMEOUT_MS, send_timeout=TIMEOUT_MS))
            attach(s, cfg)
            await asyncio.gather(*(req_worker(s, c) for c in range(k)))
            return {"requests": k * rounds}
        s = keep(pynng.Rep0(recv_timeout=TIMEOUT_MS, send_timeout=TIMEOUT_MS))
        attach(s, cfg)
        barrier = asyncio.Barrier(k)
        seen = []
        await asyncio.gather(*(rep_worker(s, i, barrier, seen) for i in range(k)))
        expect(len(seen) == k * rounds, f"served {len(seen)}, want {k * rounds}")
        expect(len(set(seen)) == len(seen), "a request arrived twice")
        want = {f"ctx{c}-r{r}".encode() for c in range(k) for r in range(rounds)}
        expect(set(seen) == want, f"unexpected requests: {sorted(set(seen) ^ want)[:5]}")
        return {"served": len(seen)}

    return asyncio.run(run())


def sc_push(cfg):
    pynng = pynng_mod()
    count = cfg.get("count", 1000)
    s = keep(pynng.Push0(send_timeout=TIMEOUT_MS))
    attach(s, cfg)
    for i in range(count):
        s.send(seq_payload(i))
    return {"sent": count}


def sc_pull(cfg):
    """Receive exactly `count` messages, in order."""
    pynng = pynng_mod()
    count = cfg.get("count", 1000)
    s = keep(pynng.Pull0(recv_timeout=TIMEOUT_MS))
    attach(s, cfg)
    for i in range(count):
        m = rx(s)
        got = seq_index(m)
        expect(got == i, f"message #{i} out of order: got #{got}")
    return {"received": count}


def sc_pull_collect(cfg):
    """Receive whatever comes until stdin is closed and then the line is idle
    for `idle_ms`; report the indices. Each peer's indices must increase
    (order over one pipe)."""
    pynng = pynng_mod()
    idle_ms = cfg.get("idle_ms", 1000)
    got = []
    s = keep(pynng.Pull0(recv_timeout=idle_ms))
    attach(s, cfg)
    while True:
        # Stop after a whole idle period that began after stdin closed.
        was_closed = STDIN_CLOSED.is_set()
        try:
            m = rx(s)
        except pynng.Timeout:
            if was_closed:
                break
            continue
        i = seq_index(m)
        if got:
            expect(i > got[-1], f"order broken on one pipe: #{i} after #{got[-1]}")
        got.append(i)
    return {"got": got}


def sc_pair(cfg):
    """Echo `count` messages: expect payload(i), answer reply(payload(i))."""
    pynng = pynng_mod()
    count = cfg.get("count", 100)
    cls = pynng.Pair1 if cfg.get("version", 0) == 1 else pynng.Pair0
    s = keep(cls(recv_timeout=TIMEOUT_MS, send_timeout=TIMEOUT_MS))
    attach(s, cfg)
    for i in range(count):
        m = rx(s)
        expect(m == payload(i), f"pair message #{i}: got {short(m)}, want {short(payload(i))}")
        s.send(reply(m))
    return {"echoed": count}


def sc_serve(cfg):
    """A pynng Rep0 answering reply(m) to anything until stdin closes."""
    pynng = pynng_mod()
    n = 0
    s = keep(pynng.Rep0(recv_timeout=200, send_timeout=TIMEOUT_MS))
    attach(s, cfg)
    while not STDIN_CLOSED.is_set():
        try:
            m = rx(s)
        except pynng.Timeout:
            continue
        s.send(reply(m))
        n += 1
    return {"served": n}


def sc_healthy(cfg):
    """A well-behaved client that keeps working while hostile peers attack:
    pattern=req sends "healthy-<n>" and checks the reply; pattern=push sends
    "healthy-<n>". Runs until stdin closes; every 20 ms."""
    pynng = pynng_mod()
    n = 0
    if cfg["pattern"] == "req":
        s = keep(pynng.Req0(recv_timeout=TIMEOUT_MS, send_timeout=TIMEOUT_MS))
        attach(s, cfg)
        while not STDIN_CLOSED.is_set():
            body = f"healthy-{n}".encode()
            s.send(body)
            r = rx(s)
            expect(r == reply(body), f"healthy reply #{n}: got {short(r)}")
            n += 1
            time.sleep(0.02)
    else:
        s = keep(pynng.Push0(send_timeout=TIMEOUT_MS))
        attach(s, cfg)
        while not STDIN_CLOSED.is_set():
            s.send(f"healthy-{n}".encode())
            n += 1
            time.sleep(0.02)
    return {"count": n}


def sc_pynng_wrong_proto(cfg):
    """A pynng Pub0 (protocol 0x20; pattern=pull: a Pull0, 0x51): dial a
    pinion listener of a pattern that must refuse it, or listen for a pinion
    socket to dial (its dial must fail)."""
    pynng = pynng_mod()
    s = keep(pynng.Pull0() if cfg.get("pattern") == "pull" else pynng.Pub0())
    if cfg["role"] == "listen":
        attach(s, cfg)
        STDIN_CLOSED.wait(cfg.get("hold_s", 10))
    else:
        # Non-blocking: the transport connects, then one side refuses the
        # pipe; the dialer keeps retrying in the background.
        s.dial(cfg["url"], block=False)
        time.sleep(cfg.get("hold_s", 1.0))
    return {}


def sc_sub(cfg):
    """pynng Sub0 sockets facing a pinion PUB. subs: one topic list per
    socket; unsub: [socket index, topic] dropped between the phases.
    Prints "ready" once every socket has a pipe; then expects phase 1
    (ps_expected per socket, bytes exact, in order), unsubscribes, prints
    "phase1_done", expects phase 2, and finally that nothing else arrives on
    any socket (none for a socket without subscriptions)."""
    pynng = pynng_mod()
    subs = [[t.encode() for t in ts] for ts in cfg["subs"]]
    socks = [keep(pynng.Sub0(recv_timeout=TIMEOUT_MS, recv_buffer_size=1024)) for _ in subs]
    for s, topics in zip(socks, subs):
        for t in topics:
            s.subscribe(t)
    attach_all(socks, cfg)
    wait_pipes(socks, 1)
    emit({"event": "ready"})
    got = [0] * len(socks)
    for phase in (1, 2):
        for k, (s, topics) in enumerate(zip(socks, subs)):
            for j, want in enumerate(ps_expected(phase, topics)):
                try:
                    m = rx(s)
                except pynng.Timeout:
                    raise Mismatch(f"sub #{k} {topics} phase {phase}: message #{j} ({short(want)}) never arrived")
                expect(m == want, f"sub #{k} {topics} phase {phase} message #{j}: got {short(m)}, want {short(want)}")
                got[k] += 1
        if phase == 1:
            if cfg.get("unsub"):
                k, t = cfg["unsub"]
                socks[k].unsubscribe(t.encode())
                subs[k].remove(t.encode())
            emit({"event": "phase1_done"})
    expect_silence(pynng, socks, "sub")
    return {"got": got}


def sc_pub(cfg):
    """A pynng Pub0 facing pinion SUB sockets. Prints "ready" once it has
    `pipes` pipes, then on each command "send <phase>" publishes that
    phase's PS_COUNT messages (1 ms apart) and prints "sent"; ends when
    stdin closes."""
    pynng = pynng_mod()
    s = keep(pynng.Pub0(send_timeout=TIMEOUT_MS, send_buffer_size=1024))
    attach_all([s], cfg)
    wait_pipes([s], cfg.get("pipes", 1))
    emit({"event": "ready"})
    sent = 0
    while True:
        c = next_cmd()
        if c is None:
            break
        verb, _, arg = c.partition(" ")
        expect(verb == "send", f"unknown command {c!r}")
        phase = int(arg)
        for i in range(PS_COUNT):
            s.send(ps_message(phase, i))
            sent += 1
            time.sleep(0.001)
        emit({"event": "sent", "phase": phase})
    return {"sent": sent}


def sc_respond(cfg):
    """pynng Respondent0 sockets, one per name in `names`, facing a pinion
    SURVEYOR; each answers every survey with "<name>:<survey>" after
    delays_ms[k] ms and prints "answered". Runs until stdin closes."""
    pynng = pynng_mod()
    names = cfg["names"]
    delays = cfg.get("delays_ms", [0] * len(names))
    socks = [keep(pynng.Respondent0(recv_timeout=100, send_timeout=TIMEOUT_MS)) for _ in names]
    attach_all(socks, cfg)
    wait_pipes(socks, 1)
    emit({"event": "ready"})
    counts = [0] * len(names)
    errors = []

    def serve(k):
        s = socks[k]
        try:
            while not STDIN_CLOSED.is_set():
                try:
                    m = rx(s)
                except pynng.Timeout:
                    continue
                if delays[k]:
                    time.sleep(delays[k] / 1000)
                s.send(names[k].encode() + b":" + m)
                counts[k] += 1
                emit({"event": "answered", "name": names[k], "survey": m.decode(errors="replace")})
        except Exception as e:  # noqa: BLE001 -- reported in the result
            errors.append(f"respondent {names[k]}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=serve, args=(k,), daemon=True) for k in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expect(not errors, "; ".join(errors))
    return {"answered": dict(zip(names, counts))}


def sc_survey(cfg):
    """A pynng Surveyor0 (survey_ms) facing a pinion RESPONDENT: `count`
    surveys payload(i), each answered with exactly reply(payload(i)); the
    last one waits for the whole survey time: nothing else may come."""
    pynng = pynng_mod()
    count = cfg.get("count", 20)
    s = keep(pynng.Surveyor0(survey_time=cfg.get("survey_ms", 500), recv_timeout=TIMEOUT_MS, send_timeout=TIMEOUT_MS))
    attach_all([s], cfg)
    wait_pipes([s], 1)
    for i in range(count):
        s.send(payload(i))
        try:
            r = rx(s)
        except pynng.Timeout:
            raise Mismatch(f"survey #{i}: no response within the survey time")
        expect(r == reply(payload(i)), f"survey #{i}: response {short(r)}, want {short(reply(payload(i)))}")
    try:
        m = rx(s)
        raise Mismatch(f"a second response to the last survey: {short(m)}")
    except pynng.Timeout:
        pass
    return {"surveys": count}


def sc_bus_leaves(cfg):
    """pynng Bus0 sockets p0, p1, ... connected only to one pinion BUS in the
    middle. Prints "ready" when each has a pipe; expects `count` messages
    "from-pinion-<i>" on every socket, in order; then socket k sends "from-p<k>-<i>"
    (1 ms apart) and prints "sent"; after the command "check" nothing more
    may arrive: not its own messages back, not the other leaf's (one hop)."""
    pynng = pynng_mod()
    n = cfg.get("leaves", 2)
    count = cfg.get("count", 20)
    socks = [keep(pynng.Bus0(recv_timeout=TIMEOUT_MS, send_timeout=TIMEOUT_MS, recv_buffer_size=1024, send_buffer_size=1024)) for _ in range(n)]
    attach_all(socks, cfg)
    wait_pipes(socks, 1)
    emit({"event": "ready"})
    for k, s in enumerate(socks):
        for i in range(count):
            want = f"from-pinion-{i}".encode()
            try:
                m = rx(s)
            except pynng.Timeout:
                raise Mismatch(f"leaf p{k}: {want!r} never arrived")
            expect(m == want, f"leaf p{k}: got {short(m)}, want {want!r}")
    for i in range(count):
        for k, s in enumerate(socks):
            s.send(f"from-p{k}-{i}".encode())
        time.sleep(0.001)
    emit({"event": "sent"})
    c = next_cmd()
    expect(c == "check", f"want the command 'check', got {c!r}")
    expect_silence(pynng, socks, "leaf")
    return {"received": count * n}


def sc_bus_hub(cfg):
    """One pynng Bus0 in the middle of `leaves` pinion BUS sockets. Prints
    "ready" once it has `leaves` pipes, sends `count` messages "from-hub-<i>"
    (1 ms apart), then expects "from-<leaf>-<i>" for each leaf name in
    `names`, each exactly once and in order per leaf; prints "got_all"; then
    nothing more may arrive."""
    pynng = pynng_mod()
    names = cfg["names"]
    count = cfg.get("count", 20)
    s = keep(pynng.Bus0(recv_timeout=TIMEOUT_MS, send_timeout=TIMEOUT_MS, recv_buffer_size=1024, send_buffer_size=1024))
    attach_all([s], cfg)
    wait_pipes([s], len(names))
    emit({"event": "ready"})
    for i in range(count):
        s.send(f"from-hub-{i}".encode())
        time.sleep(0.001)
    nxt = {n: 0 for n in names}
    for _ in range(count * len(names)):
        try:
            m = rx(s)
        except pynng.Timeout:
            raise Mismatch(f"hub: missing messages, got so far {nxt}")
        text = m.decode(errors="replace")
        expect(text.startswith("from-"), f"hub: unexpected {short(m)}")
        leaf, _, idx = text[len("from-"):].rpartition("-")
        expect(leaf in nxt, f"hub: message from unknown sender {text!r} (its own echoed back?)")
        expect(idx == str(nxt[leaf]), f"hub: from {leaf}: got #{idx}, want #{nxt[leaf]} (lost, duplicated or reordered)")
        nxt[leaf] += 1
    emit({"event": "got_all"})
    expect_silence(pynng, [s], "hub")
    return {"received": nxt}


# ---------------------------------------------------------------------------
# Hand-written SP over raw sockets
# ---------------------------------------------------------------------------

PROTO = {
    "pair0": 0x10,
    "pair1": 0x11,
    "pub": 0x20,
    "sub": 0x21,
    "req": 0x30,
    "rep": 0x31,
    "push": 0x50,
    "pull": 0x51,
    "surveyor": 0x62,
    "respondent": 0x63,
    "bus": 0x70,
}
MAGIC = b"\x00SP\x00"


def sp_header(proto, magic=MAGIC, reserved=0):
    return magic + struct.pack(">HH", proto, reserved)


class Closed(Exception):
    pass


class Raw:
    """One SP connection over TCP or AF_UNIX, framing done by hand."""

    def __init__(self, sock, ipc):
        self.s = sock
        self.ipc = ipc

    def sendall(self, data):
        try:
            self.s.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Closed(f"send: {e!r}")

    def recv_exact(self, n, timeout=TIMEOUT_MS / 1000):
        self.s.settimeout(timeout)
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.s.recv(n - len(buf))
            except socket.timeout:
                raise Mismatch(f"timed out reading {n} bytes (have {len(buf)})")
            except ConnectionResetError as e:
                raise Closed(f"reset after {len(buf)} of {n} bytes: {e!r}")
            if not chunk:
                raise Closed(f"EOF after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def send_header(self, proto, **kw):
        self.sendall(sp_header(proto, **kw))

    def recv_header(self, want_proto):
        h = self.recv_exact(8)
        want = sp_header(want_proto)
        expect(h == want, f"SP header from pinion: got {h.hex()}, want {want.hex()}")
        return h

    def frame(self, body, length=None, ipc_type=1):
        # Lengths may come as "0x..." strings (JSON numbers lose precision).
        n = len(body) if length is None else int(length, 0) if isinstance(length, str) else length
        prefix = struct.pack(">Q", n)
        if self.ipc:
            prefix = bytes([ipc_type]) + prefix
        return prefix + body

    def send_msg(self, body, **kw):
        self.sendall(self.frame(body, **kw))

    def recv_msg(self):
        if self.ipc:
            t = self.recv_exact(1)
            expect(t == b"\x01", f"IPC message type from pinion: got {t.hex()}, want 01")
        (n,) = struct.unpack(">Q", self.recv_exact(8))
        expect(n <= 16 << 20, f"pinion announced a {n}-byte message")
        return self.recv_exact(n)

    def wait_closed(self, timeout=TIMEOUT_MS / 1000):
        """Reads (and discards) until pinion closes the connection. Returns
        (elapsed ms, bytes drained); fails if it stays open."""
        t0 = time.monotonic()
        drained = 0
        while True:
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                raise Mismatch(f"pinion did not close the connection within {timeout} s")
            self.s.settimeout(left)
            try:
                chunk = self.s.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            drained += len(chunk)
        return int((time.monotonic() - t0) * 1000), drained

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def raw_connect(cfg):
    """Listen (accepting exactly one connection, then closing the listening
    socket) or dial, per the config; returns a Raw."""
    url = cfg["url"]
    ipc = url.startswith("ipc://")
    if cfg["role"] == "listen":
        if ipc:
            path = url[len("ipc://"):]
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            ls.bind(path)
        else:
            host, port = url[len("tcp://"):].rsplit(":", 1)
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind((host, int(port)))
            url = f"tcp://{host}:{ls.getsockname()[1]}"
        ls.listen(4)
        emit({"event": "listening", "url": url})
        ls.settimeout(10)
        try:
            s, _ = ls.accept()
        except socket.timeout:
            raise Mismatch("nobody connected to the raw listener within 10 s")
        ls.close()
        if ipc:
            try:
                os.unlink(url[len("ipc://"):])
            except OSError:
                pass
        return Raw(s, ipc)
    deadline = time.monotonic() + 5
    while True:
        try:
            if ipc:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(url[len("ipc://"):])
            else:
                host, port = url[len("tcp://"):].rsplit(":", 1)
                s = socket.create_connection((host, int(port)), timeout=5)
            return Raw(s, ipc)
        except (ConnectionRefusedError, FileNotFoundError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def sc_raw_rep(cfg):
    """A hand-written REP facing a pinion REQ: checks pinion's SP header,
    that every request starts with a request id whose top bit is set (and
    nothing else before the body), that ids are not reused, and replies with
    the id word echoed."""
    count = cfg.get("count", 50)
    c = raw_connect(cfg)
    c.send_header(PROTO["rep"])
    c.recv_header(PROTO["req"])
    ids = []
    for i in range(count):
        f = c.recv_msg()
        expect(len(f) >= 4, f"request #{i} shorter than a request id: {short(f)}")
        (rid,) = struct.unpack(">I", f[:4])
        expect(rid & 0x80000000, f"request #{i}: id word {rid:08x} lacks the top bit")
        body = f[4:]
        expect(body == payload(i), f"request #{i}: body {short(body)}, want {short(payload(i))}")
        expect(rid not in ids, f"request id {rid:08x} reused")
        ids.append(rid)
        c.send_msg(f[:4] + reply(body))
    c.close()
    return {"ids": [f"{x:08x}" for x in ids]}


def backtrace(i):
    """Backtraces the raw REQ sends: 1, 2 or 3 words, the last with the top
    bit set (hop words mimic devices in between)."""
    rid = 0x80000000 | ((0x1234567 * (i + 1)) & 0x7FFFFFFF)
    if i % 3 == 0:
        words = [rid]
    elif i % 3 == 1:
        words = [0x00000007, rid]
    else:
        words = [0x7FFFFFFF, 0x00000001, 0xFFFFFFFF - i]
    return b"".join(struct.pack(">I", w) for w in words)


def sc_raw_req(cfg):
    """A hand-written REQ facing a pinion REP: the reply must carry back the
    whole backtrace byte for byte. With ttl_check, a 9-word backtrace (over
    max_ttl 8) must be dropped without closing the pipe and an 8-word one
    answered."""
    count = cfg.get("count", 30)
    c = raw_connect(cfg)
    c.send_header(PROTO["req"])
    c.recv_header(PROTO["rep"])
    for i in range(count):
        bt = backtrace(i)
        c.send_msg(bt + payload(i))
        r = c.recv_msg()
        want = bt + reply(payload(i))
        expect(r == want, f"reply #{i}: got {short(r)}, want {short(want)}")
    out = {"requests": count}
    if cfg.get("ttl_check"):
        nine = b"".join(struct.pack(">I", w) for w in [1, 2, 3, 4, 5, 6, 7, 8, 0x80000909])
        eight = b"".join(struct.pack(">I", w) for w in [1, 2, 3, 4, 5, 6, 7, 0x80000808])
        c.send_msg(nine + b"ttl-drop")
        c.send_msg(eight + b"ttl-ok")
        r = c.recv_msg()
        expect(r == eight + reply(b"ttl-ok"), f"after a 9-word request, got {short(r)}, want the 8-word reply")
        out["ttl"] = "ok"
    c.close()
    return out


def sc_raw_pair1(cfg):
    """A hand-written PAIR v1 facing a pinion Pair1: pinion's first message
    must carry hop count 00000001; hop 9 (> max_ttl 8) must be dropped with
    the pipe kept, hops 1 and 8 delivered; then hop 0x100 must close it."""
    c = raw_connect(cfg)
    c.send_header(PROTO["pair1"])
    c.recv_header(PROTO["pair1"])
    f = c.recv_msg()
    expect(f == b"\x00\x00\x00\x01from-pinion", f"first pair1 frame: got {short(f)}, want 00000001 + 'from-pinion'")
    c.send_msg(struct.pack(">I", 9) + b"drop-me")
    c.send_msg(struct.pack(">I", 1) + b"keep-1")
    c.send_msg(struct.pack(">I", 8) + b"keep-8")
    f = c.recv_msg()
    expect(f == b"\x00\x00\x00\x01ack", f"second pair1 frame: got {short(f)}, want 00000001 + 'ack'")
    out = {"first": "00000001"}
    if cfg.get("bad_hop"):
        c.send_msg(struct.pack(">I", 0x100) + b"bad")
        ms, _ = c.wait_closed()
        out["closed_ms"] = ms
    c.close()
    return out


def sc_raw_hostile(cfg):
    """One misbehaving peer; pinion must close the connection.

    kind (proto = the protocol id the peer claims, for a valid header):
      bad_magic    header 00 53 51 00 ...
      reserved     reserved bytes 00 01
      wrong_proto  a valid header for PUB (0x20)
      huge_len     a frame length of 2^64-1 (`length` overrides)
      over_limit   announce `length` bytes (default 4096) over the limit;
                   with boundary_first, first send a full `boundary`-byte
                   message, which must be accepted
      no_bt_end    a REQ message whose backtrace never ends (to a REP)
      ipc_type2    an IPC frame with type byte 0x02
      silent       never send a header (pinion's handshake timeout fires)
      short_reply  (a REP facing a pinion REQ) answer a request with 2 bytes
      idle         a valid header, then nothing (to be refused, e.g. a
                   second peer of a pair socket)
    """
    kind = cfg["kind"]
    proto = cfg.get("proto", PROTO["req"])
    c = raw_connect(cfg)
    out = {"kind": kind}
    try:
        if kind == "bad_magic":
            c.send_header(proto, magic=b"\x00SQ\x00")
        elif kind == "reserved":
            c.send_header(proto, reserved=1)
        elif kind == "wrong_proto":
            c.send_header(PROTO["pub"])
        elif kind == "silent":
            h = c.recv_exact(8)
            expect(h[:4] == MAGIC, f"pinion's header: {h.hex()}")
            out["pinion_header"] = h.hex()
        else:
            c.send_header(proto)
            h = c.recv_exact(8)
            out["pinion_header"] = h.hex()
            if kind == "huge_len":
                c.sendall(c.frame(b"", length=cfg.get("length", 0xFFFFFFFFFFFFFFFF)))
            elif kind == "over_limit":
                if cfg.get("boundary_first"):
                    c.send_msg(b"B" * cfg["boundary"])
                    emit({"event": "boundary_sent"})
                c.sendall(c.frame(b"", length=cfg.get("length", 4096)))
            elif kind == "no_bt_end":
                c.send_msg(struct.pack(">II", 1, 2) + b"abc")
            elif kind == "ipc_type2":
                expect(c.ipc, "ipc_type2 needs an ipc:// url")
                c.send_msg(b"\x80\x00\x00\x01hello", ipc_type=2)
            elif kind == "idle":
                pass  # a valid peer that pinion must refuse (e.g. pair busy)
            elif kind == "short_reply":
                f = c.recv_msg()
                expect(len(f) >= 4 and f[0] & 0x80, f"request from pinion: {short(f)}")
                out["request"] = f[4:].decode(errors="replace")
                c.send_msg(b"\x80\x00")
            else:
                raise Mismatch(f"unknown hostile kind {kind!r}")
    except Closed as e:
        # Pinion may close while we are still writing; that is the point.
        out["closed_early"] = str(e)
        c.close()
        out["closed_ms"] = 0
        return out
    ms, drained = c.wait_closed(cfg.get("close_timeout", TIMEOUT_MS / 1000))
    out["closed_ms"] = ms
    out["drained"] = drained
    c.close()
    return out


def sc_raw_respondent(cfg):
    """A hand-written RESPONDENT facing a pinion SURVEYOR: checks pinion's
    SP header; each survey must be exactly [survey id with the top bit set]
    + "survey-<i>", ids never reused. Answers with a stale id (the previous
    survey's) and an unknown one first, which pinion must drop, then with
    the id echoed + reply(body)."""
    count = cfg.get("count", 6)
    c = raw_connect(cfg)
    c.send_header(PROTO["respondent"])
    c.recv_header(PROTO["surveyor"])
    ids = []
    for i in range(count):
        f = c.recv_msg()
        expect(len(f) >= 4, f"survey #{i} shorter than a survey id: {short(f)}")
        (sid,) = struct.unpack(">I", f[:4])
        expect(sid & 0x80000000, f"survey #{i}: id word {sid:08x} lacks the top bit")
        body = f[4:]
        want = f"survey-{i}".encode()
        expect(body == want, f"survey #{i}: body {short(body)}, want {want!r} (one header word, then the body)")
        expect(sid not in ids, f"survey id {sid:08x} reused")
        if ids:
            c.send_msg(struct.pack(">I", ids[-1]) + b"stale")
        c.send_msg(struct.pack(">I", 0x80000000 | ((sid + 0x1234567) & 0x7FFFFFFF)) + b"unknown")
        ids.append(sid)
        c.send_msg(f[:4] + reply(body))
    c.close()
    return {"ids": [f"{x:08x}" for x in ids]}


def sc_raw_surveyor(cfg):
    """A hand-written SURVEYOR facing a pinion RESPONDENT: the response must
    carry back the whole backtrace (survey id word with the top bit, plus hop
    words as devices would add) byte for byte. With ttl_check a 9-word
    backtrace (over max_ttl 8) must be dropped with the pipe kept and an
    8-word one answered."""
    count = cfg.get("count", 30)
    c = raw_connect(cfg)
    c.send_header(PROTO["surveyor"])
    c.recv_header(PROTO["respondent"])
    for i in range(count):
        bt = backtrace(i)
        c.send_msg(bt + payload(i))
        r = c.recv_msg()
        want = bt + reply(payload(i))
        expect(r == want, f"response #{i}: got {short(r)}, want {short(want)}")
    out = {"surveys": count}
    if cfg.get("ttl_check"):
        nine = b"".join(struct.pack(">I", w) for w in [1, 2, 3, 4, 5, 6, 7, 8, 0x80000909])
        eight = b"".join(struct.pack(">I", w) for w in [1, 2, 3, 4, 5, 6, 7, 0x80000808])
        c.send_msg(nine + b"ttl-drop")
        c.send_msg(eight + b"ttl-ok")
        r = c.recv_msg()
        expect(r == eight + reply(b"ttl-ok"), f"after a 9-word survey, got {short(r)}, want the 8-word response")
        out["ttl"] = "ok"
    c.close()
    return out


# ---------------------------------------------------------------------------

SCENARIOS = {
    "reqrep": sc_reqrep,
    "ctx": sc_ctx,
    "push": sc_push,
    "pull": sc_pull,
    "pull_collect": sc_pull_collect,
    "pair": sc_pair,
    "serve": sc_serve,
    "healthy": sc_healthy,
    "pynng_wrong_proto": sc_pynng_wrong_proto,
    "raw_rep": sc_raw_rep,
    "raw_req": sc_raw_req,
    "raw_pair1": sc_raw_pair1,
    "raw_hostile": sc_raw_hostile,
    "sub": sc_sub,
    "pub": sc_pub,
    "respond": sc_respond,
    "survey": sc_survey,
    "bus_leaves": sc_bus_leaves,
    "bus_hub": sc_bus_hub,
    "raw_respondent": sc_raw_respondent,
    "raw_surveyor": sc_raw_surveyor,
}


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cfg = json.loads(sys.argv[1])
    deadline = float(cfg.get("deadline", 20))
    start_watchdog(deadline)
    start_stdin_watch()
    code = 0
    try:
        fn = SCENARIOS[cfg["scenario"]]
        res = fn(cfg) or {}
        emit({"event": "result", "ok": True, **res})
    except Exception as e:  # noqa: BLE001 -- every failure becomes a result line
        traceback.print_exc(file=sys.stderr)
        emit({"event": "result", "ok": False, "error": f"{type(e).__name__}: {e}"})
        code = 1
    # Let what we sent drain before exiting: wait for the test to close our
    # stdin (bounded by the watchdog's remaining time, at most 5 s).
    left = deadline - (time.monotonic() - START) - 0.5
    STDIN_CLOSED.wait(max(0.0, min(5.0, left)))
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: do not run pynng/NNG teardown at interpreter exit (nng_close
    # hangs have been reported); the sockets are already closed above.
    os._exit(code)


if __name__ == "__main__":
    main()
