"""Subscribes to and publishes through a running pinion hub with plain pynng,
the way a Python user of NNG would: SUB over TCP (prefix subscription), SUB
over WebSocket with a resume point, and REQ over WebSocket to publish.

Usage: hub_subscriber.py SUB_TCP_URL HTTP_ADDR GENERATED_DIR

GENERATED_DIR holds `pinion/v1/hub_pb2.py` made by Debian's protoc from the
repository's proto/pinion/v1/hub.proto. Prints one JSON line; exits non-zero
on anything unexpected.
"""
import json
import sys
import time
import urllib.request
import uuid

import pynng

sys.path.insert(0, sys.argv[3])
from pinion.v1 import hub_pb2 as hub  # noqa: E402

SUB_TCP = sys.argv[1]
HTTP = sys.argv[2]
CLIENT = uuid.uuid4().bytes


def split(body):
    topic, nul, rest = body.partition(b"\0")
    assert nul, body
    return topic.decode(), hub.Delivery.FromString(rest)


def tcp_subscribers():
    text = urllib.request.urlopen(f"http://{HTTP}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith('pinion_subscribers{transport="tcp"}'):
            return int(float(line.split()[-1]))
    raise AssertionError("no subscriber gauge in /metrics:\n" + text)


def main():
    out = {}
    # Subscribe before dialing: an NNG SUB drops what arrives before.
    sub_tcp = pynng.Sub0(recv_timeout=10000)
    sub_tcp.subscribe(b"py/a")
    sub_tcp.dial(SUB_TCP)
    deadline = time.time() + 10
    while tcp_subscribers() < 1:
        assert time.time() < deadline, "the hub never saw the TCP subscriber"
        time.sleep(0.02)
    # Publish over WebSocket: REQ to ws://HTTP/pub (subprotocol rep.sp.nanomsg.org).
    acks = []
    with pynng.Req0(dial=f"ws://{HTTP}/pub", recv_timeout=10000, send_timeout=10000) as req:
        for i in range(20):
            topic = "py/a" if i % 2 == 0 else "py/b"
            msg = hub.Publish(client_id=CLIENT, seq=i + 1, topic=topic, payload=b"m%d" % i)
            req.send(msg.SerializeToString())
            rep = hub.Reply.FromString(req.recv())
            assert rep.WhichOneof("result") == "ack", rep
            acks.append(rep.ack.offset)
    out["acked_over_ws"] = len(acks)
    # SP SUB over TCP: only the py/a ones, live, in order.
    got = []
    for _ in range(10):
        topic, d = split(sub_tcp.recv())
        assert topic == "py/a", topic
        got.append(d.offset)
    assert got == acks[0::2], (got, acks)
    out["tcp_prefix"] = len(got)
    sub_tcp.close()
    # SP SUB over WebSocket, resuming from the first offset: all 20, in order.
    with pynng.Sub0(recv_timeout=10000) as sub_ws:
        sub_ws.subscribe(b"")
        sub_ws.dial(f"ws://{HTTP}/sub?from={acks[0]}")
        seen = []
        for _ in range(20):
            topic, d = split(sub_ws.recv())
            assert d.client_id == CLIENT, d
            assert d.payload == b"m%d" % (d.seq - 1), d
            seen.append(d.offset)
        assert seen == acks, (seen, acks)
        out["ws_resumed"] = len(seen)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
