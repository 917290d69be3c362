#!/usr/bin/env python3
"""The NNG side of pinion's TLS interop tests (crates/pinion/tests/interop_tls.rs):
pynng sockets over tls+tcp:// and wss://.

Usage:  tls_peer.py '<json config>'

Config keys:
  pattern      "rep", "req", "pub" or "sub"
  role         "listen" or "dial"
  url          tls+tcp://host:port or wss://host:port/path (port 0 when
               listening: the bound url is printed)
  ca           trust anchors, PEM string (optional)
  cert, key    this end's certificate and private key, PEM strings (optional)
  auth_mode    "none", "optional" or "required" (optional: NNG's default)
  server_name  the name a client checks the server's certificate against
  count        request/reply rounds, or pub/sub sequence length (default 6)
  expect       "ok" (default) or "refused": the connection must not work
               (dial only); the result says where it failed
  deadline     seconds before the watchdog ends this process (default 20)

Output on stdout, one JSON object per line:
  {"event": "listening", "url": "..."}    once bound, when role == "listen"
  {"event": "first"}                      sub: the first message arrived
  {"event": "result", "ok": true|false, ...}   exactly once, at the end

pub takes commands on stdin: "go" ends the warm-up messages and starts the
sequence. Closing stdin ends the peer once its result is printed.

Exit status: 0 if ok, 1 on a mismatch or an error, 3 when the watchdog fired.
Every blocking call has a timeout; nothing waits forever.
"""

import json
import os
import queue
import struct
import sys
import threading
import time
import traceback

_out_lock = threading.Lock()
STDIN_CLOSED = threading.Event()
CMDS = queue.Queue()
START = time.monotonic()
TIMEOUT_MS = 5000
KEPT = []


def emit(obj):
    with _out_lock:
        sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
        sys.stdout.flush()


class Mismatch(Exception):
    """The other side did something the test does not allow."""


def expect(cond, msg):
    if not cond:
        raise Mismatch(msg)


def short(b, n=48):
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


def start_stdin_watch():
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


# ---------------------------------------------------------------------------
# Payloads (interop_tls.rs has the same function)
# ---------------------------------------------------------------------------


def payload(i):
    """Request #i: #1 is 200 KiB + 3 (several TLS records), #2 one byte over
    a full 16 KiB record, the others 4..303 bytes; all start with i as a
    big-endian u32."""
    n = {1: 200 * 1024 + 3, 2: 16385}.get(i, 4 + (i * 37) % 300)
    head = struct.pack(">I", i)
    return head + bytes(((i * 7 + j * 13) & 0xFF) for j in range(n - 4))


def reply(body):
    return b"re:" + bytes(body)


def seq(i):
    """Pub/sub sequence message #i."""
    return f"seq-{i}-".encode() + b"x" * (i % 23)


# ---------------------------------------------------------------------------
# pynng
# ---------------------------------------------------------------------------


def pynng_mod():
    import pynng

    return pynng


def tls_config(pynng, cfg):
    T = pynng.TLSConfig
    mode = T.MODE_SERVER if cfg["role"] == "listen" else T.MODE_CLIENT
    kw = {}
    if cfg.get("server_name"):
        kw["server_name"] = cfg["server_name"]
    if cfg.get("ca"):
        kw["ca_string"] = cfg["ca"]
    if cfg.get("cert"):
        kw["own_cert_string"] = cfg["cert"]
        kw["own_key_string"] = cfg["key"]
    am = cfg.get("auth_mode")
    if am:
        kw["auth_mode"] = {
            "none": T.AUTH_MODE_NONE,
            "optional": T.AUTH_MODE_OPTIONAL,
            "required": T.AUTH_MODE_REQUIRED,
        }[am]
    return T(mode, **kw)


def make(pynng, cls, cfg, **opts):
    s = cls(recv_timeout=TIMEOUT_MS, send_timeout=TIMEOUT_MS, **opts)
    # Keep the config alive as long as the socket (pynng frees it in __del__).
    cfgobj = tls_config(pynng, cfg)
    s.tls_config = cfgobj
    KEPT.append((s, cfgobj))
    return s


def attach(s, cfg):
    """Listens (printing the bound url) or dials (blocking: the first
    connection, TLS handshake included, is up or failed when it returns)."""
    url = cfg["url"]
    if cfg["role"] == "listen":
        listener = s.listen(url)
        # str(local_address) is "host:port".
        scheme, rest = url.split("://", 1)
        path = rest[rest.find("/"):] if "/" in rest else ""
        url = f"{scheme}://{listener.local_address}{path}"
        emit({"event": "listening", "url": url})
    else:
        s.dial(url, block=True)
    return url


def rx(s):
    """One body (recv_msg: pynng 0.9.0's recv() fails on empty messages)."""
    return s.recv_msg()


def pipe_identity(pynng, pipe):
    """What NNG says about the peer's certificate on this pipe."""
    from pynng import options

    out = {}
    try:
        out["peer_cn"] = options._getopt_string(pipe, "tls-peer-cn")
    except Exception as e:  # noqa: BLE001
        out["peer_cn_error"] = f"{type(e).__name__}: {e}"
    try:
        out["peer_verified"] = bool(options._getopt_bool(pipe, "tls-verified"))
    except Exception as e:  # noqa: BLE001
        out["peer_verified_error"] = f"{type(e).__name__}: {e}"
    return out


def sc_rep(pynng, cfg):
    count = cfg.get("count", 6)
    s = make(pynng, pynng.Rep0, cfg)
    attach(s, cfg)
    ident = {}
    for i in range(count):
        m = rx(s)
        body = m.bytes
        expect(body == payload(i), f"request #{i}: got {short(body)}, want {short(payload(i))}")
        if i == 0 and m.pipe is not None:
            ident = pipe_identity(pynng, m.pipe)
        s.send(reply(body))
    return {"served": count, **ident}


def sc_req(pynng, cfg):
    count = cfg.get("count", 6)
    s = make(pynng, pynng.Req0, cfg)
    attach(s, cfg)
    for i in range(count):
        s.send(payload(i))
        r = rx(s).bytes
        expect(r == reply(payload(i)), f"reply #{i}: got {short(r)}, want {short(reply(payload(i)))}")
    return {"requests": count}


def sc_refused(pynng, cfg):
    """A REQ client that must not get through: the dial fails, or, if NNG
    reports it up (TLS 1.3 clients finish before the server checks their
    certificate), no request is ever answered."""
    s = make(pynng, pynng.Req0, cfg)
    s.recv_timeout = 1500
    s.send_timeout = 1500
    try:
        attach(s, cfg)
    except Exception as e:  # noqa: BLE001
        return {"refused_at": "dial", "error": f"{type(e).__name__}: {e}"}
    try:
        s.send(payload(0))
        r = rx(s).bytes
    except pynng.Timeout as e:
        return {"refused_at": "exchange", "error": f"{type(e).__name__}: {e}"}
    raise Mismatch(f"the connection should have been refused, but a request was answered: {short(r)}")


def sc_pub(pynng, cfg):
    """Sends "warm" every 20 ms until the test says "go", then seq(0..count)."""
    count = cfg.get("count", 50)
    s = make(pynng, pynng.Pub0, cfg)
    s.send_buffer_size = 1024
    attach(s, cfg)
    warm = 0
    until = time.monotonic() + 10
    while True:
        try:
            cmd = CMDS.get(timeout=0.02)
        except queue.Empty:
            cmd = None
        if cmd == "go":
            break
        expect(cmd is None, f"unexpected command {cmd!r}")
        expect(not STDIN_CLOSED.is_set(), "stdin closed before \"go\"")
        expect(time.monotonic() < until, f"no \"go\" after {warm} warm-up messages")
        s.send(b"warm")
        warm += 1
    for i in range(count):
        s.send(seq(i))
        if i % 10 == 9:
            time.sleep(0.002)
    return {"warm": warm, "sent": count}


def sc_sub(pynng, cfg):
    """Subscribes to everything; skips "warm" messages; seq(0..count) must
    follow in order."""
    count = cfg.get("count", 50)
    s = make(pynng, pynng.Sub0, cfg)
    s.subscribe(b"")
    attach(s, cfg)
    first = True
    warm = 0
    i = 0
    while i < count:
        m = rx(s).bytes
        if first:
            emit({"event": "first"})
            first = False
        if m == b"warm":
            expect(i == 0, f"warm-up message after seq #{i - 1}")
            warm += 1
            continue
        expect(m == seq(i), f"message #{i}: got {short(m)}, want {short(seq(i))}")
        i += 1
    return {"warm": warm, "received": count}


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
        pynng = pynng_mod()
        if cfg.get("expect", "ok") == "refused":
            expect(cfg["role"] == "dial", "expect=refused needs role=dial")
            res = sc_refused(pynng, cfg)
        else:
            fn = {"rep": sc_rep, "req": sc_req, "pub": sc_pub, "sub": sc_sub}[cfg["pattern"]]
            res = fn(pynng, cfg)
        emit({"event": "result", "ok": True, **res})
    except Exception as e:  # noqa: BLE001 -- every failure becomes a result line
        traceback.print_exc(file=sys.stderr)
        emit({"event": "result", "ok": False, "error": f"{type(e).__name__}: {e}"})
        code = 1
    # Let what we sent drain: wait for the test to close our stdin (bounded).
    left = deadline - (time.monotonic() - START) - 0.5
    STDIN_CLOSED.wait(max(0.0, min(5.0, left)))
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: skip NNG teardown at interpreter exit.
    os._exit(code)


if __name__ == "__main__":
    main()
