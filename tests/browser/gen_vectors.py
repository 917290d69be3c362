"""Writes tests/browser/vectors.json: protobuf bytes made by protoc's Python
code from proto/pinion/v1/hub.proto, which pinion.js's hand-written codec is
checked against (tests/browser/codec.test.mjs).

    protoc --python_out=/tmp/pv -I proto proto/pinion/v1/hub.proto
    PYTHONPATH=/tmp/pv .venv/bin/python tests/browser/gen_vectors.py

(.venv comes from scripts/setup-test-env.sh.) The JSON is committed, so the
Node tests need neither protoc nor Python.
"""
import json
import os

from pinion.v1 import hub_pb2 as pb

CID = bytes(range(0xA0, 0xB0))


def hx(b):
    return b.hex()


vectors = {"publish": [], "reply": [], "delivery": []}

for seq, topic, payload in [
    (1, "chat/room1", b"hello"),
    (0, "", b""),
    (127, "t", b"\x00\x01\xff"),
    (128, "orders/eu", b"x" * 200),
    (300, "\u00e9t\u00e9/\u2603", "caf\u00e9".encode()),
    (2**32 + 5, "big", b"seq above 2^32"),
    (2**53 - 1, "max", b"largest safe seq"),
]:
    m = pb.Publish(client_id=CID, seq=seq, topic=topic, payload=payload)
    vectors["publish"].append(
        {"client_id": hx(CID), "seq": seq, "topic": topic, "payload": hx(payload),
         "bytes": hx(m.SerializeToString())}
    )

for seq, offset, dup in [(1, 0, False), (7, 12345, True), (2**40, 2**50 + 3, False)]:
    m = pb.Reply(ack=pb.Ack(seq=seq, offset=offset, duplicate=dup))
    vectors["reply"].append(
        {"ack": {"seq": seq, "offset": offset, "duplicate": dup}, "bytes": hx(m.SerializeToString())}
    )
# Explicit presence: Ack{seq: 0, offset: 0} still encodes its fields.
m = pb.Reply(ack=pb.Ack(seq=0, offset=0))
vectors["reply"].append({"ack": {"seq": 0, "offset": 0, "duplicate": False}, "bytes": hx(m.SerializeToString())})
# An empty Ack (no fields set).
m = pb.Reply(ack=pb.Ack())
vectors["reply"].append({"ack": {"seq": 0, "offset": 0, "duplicate": False}, "bytes": hx(m.SerializeToString())})
for seq, code, reason in [(3, pb.TOO_LARGE, "payload is 300 bytes, the limit is 256"),
                          (9, pb.STALE, ""), (0, pb.MALFORMED, "client id not 16 bytes"),
                          (4, pb.SHUTTING_DOWN, "h\u00e9")]:
    m = pb.Reply(nack=pb.Nack(seq=seq, code=code, reason=reason))
    vectors["reply"].append(
        {"nack": {"seq": seq, "code": code, "reason": reason}, "bytes": hx(m.SerializeToString())}
    )
# A Nack with no seq (an undecodable request).
m = pb.Reply(nack=pb.Nack(code=pb.MALFORMED, reason="undecodable"))
vectors["reply"].append({"nack": {"seq": 0, "code": 2, "reason": "undecodable"}, "bytes": hx(m.SerializeToString())})

for offset, ts, seq, payload in [(0, 1795400000000000, 1, b"hello"), (2**33, 1, 99, b""),
                                 (42, 1795400000123456, 2**45, bytes(range(256)))]:
    m = pb.Delivery(offset=offset, timestamp_us=ts, client_id=CID, seq=seq, payload=payload)
    vectors["delivery"].append(
        {"offset": offset, "timestamp_us": ts, "client_id": hx(CID), "seq": seq,
         "payload": hx(payload), "bytes": hx(m.SerializeToString())}
    )

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors.json")
with open(out, "w") as f:
    json.dump(vectors, f, indent=1, ensure_ascii=False)
    f.write("\n")
print(f"wrote {out}: " + ", ".join(f"{len(v)} {k}" for k, v in vectors.items()))
