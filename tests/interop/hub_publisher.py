"""Publishes to a running pinion hub the way a Python user would.

Usage: hub_publisher.py URL GENERATED_DIR

GENERATED_DIR holds `pinion/v1/hub_pb2.py`, made from the repository's
proto/pinion/v1/hub.proto by Debian's protoc (`protoc --python_out`). The
client is plain pynng (NNG's REQ socket) plus the protobuf runtime: nothing
pinion-specific. Prints one JSON line with what it saw; exits non-zero on
any unexpected answer.
"""
import json
import sys
import threading
import uuid

import pynng

sys.path.insert(0, sys.argv[2])
from pinion.v1 import hub_pb2 as hub  # noqa: E402

URL = sys.argv[1]
CLIENT = uuid.uuid4().bytes


def publish(sock_or_ctx, seq, payload, topic="py"):
    req = hub.Publish(client_id=CLIENT, seq=seq, topic=topic, payload=payload)
    sock_or_ctx.send(req.SerializeToString())
    rep = hub.Reply.FromString(sock_or_ctx.recv())
    return rep


def main():
    out = {}
    with pynng.Req0(dial=URL, recv_timeout=10000, send_timeout=10000) as s:
        # 1. A plain publish is acked with an offset.
        r = publish(s, 1, b"hello from python")
        assert r.WhichOneof("result") == "ack", r
        assert r.ack.seq == 1 and not r.ack.duplicate, r
        first = r.ack.offset
        # 2. A retry of the same seq is a duplicate with the same offset.
        r = publish(s, 1, b"hello from python")
        assert r.WhichOneof("result") == "ack" and r.ack.duplicate, r
        assert r.ack.offset == first, (r.ack.offset, first)
        # 3. Too large: NACK with a code, and the connection stays usable.
        r = publish(s, 2, b"x" * 300)
        assert r.WhichOneof("result") == "nack", r
        assert r.nack.code == hub.TOO_LARGE, r
        assert "256" in r.nack.reason, r.nack.reason
        # 4. Malformed: no client id.
        s.send(hub.Publish(seq=3).SerializeToString())
        r = hub.Reply.FromString(s.recv())
        assert r.WhichOneof("result") == "nack" and r.nack.code == hub.MALFORMED, r
        # 5. Pipelining with contexts: 8 contexts x 50 requests in flight
        #    on the one connection, seqs 100..499.
        offsets = {}
        errors = []

        def worker(k):
            ctx = s.new_context()
            try:
                for i in range(50):
                    seq = 100 + k * 50 + i
                    r = publish(ctx, seq, f"ctx {k} msg {i}".encode())
                    if r.WhichOneof("result") != "ack" or r.ack.seq != seq or r.ack.duplicate:
                        errors.append(str(r))
                    offsets[seq] = r.ack.offset
            finally:
                ctx.close()

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        assert len(offsets) == 400, len(offsets)
        assert len(set(offsets.values())) == 400, "offsets must be distinct"
        out = {
            "client_id": CLIENT.hex(),
            "first_offset": first,
            "pipelined": len(offsets),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
