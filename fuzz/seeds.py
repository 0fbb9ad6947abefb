#!/usr/bin/python3
"""Writes the seed corpora of the libFuzzer targets: fuzz/corpus/<target>/.

A handful of valid inputs per target, each named seed-<what>; crash
regression inputs live beside them as crash-<what> and are not touched.
Run from anywhere: /usr/bin/python3 fuzz/seeds.py (needs python3-msgpack
and python3-cbor2, both in scripts/setup). Input layouts: the comment at
the top of each fuzz_<target>.c.
"""
import os
import struct

import cbor2
import msgpack

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def hdr(enc):
    """The 10-byte auto-pack header for encoding id `enc`."""
    return bytes([0x89, 0x4B, 0x01, enc, 0, 0, 0, 0, 0x56, 0x4B])


def vec(code, dims, elem):
    """An arbitrary-shape vector: type, ndim, u32 dims, zero data."""
    n = 1
    for d in dims:
        n *= d
    return bytes([code, len(dims)]) + b"".join(struct.pack("<I", d) for d in dims) + bytes(n * elem)


MODEL = {"a": [1, -2, 3.5, None, True], "b": {"c": "text", "d": 2**64 - 1}, "e": []}


def codec():
    return {
        "msgpack": hdr(4) + msgpack.packb(MODEL),
        "cbor": hdr(5) + cbor2.dumps(MODEL),
        "msgpack-raw": msgpack.packb([1, 2.25, "x", {"k": [None]}]),
        "cbor-raw": cbor2.dumps([1, 2.25, "x", {"k": [None]}, -(2**63)]),
        "packer-int": hdr(2) + struct.pack("<q", 42),
        "packer-float": hdr(2) + struct.pack("<d", 1.5),
        "packer-vector": hdr(2) + vec(1, [2, 3], 4),
        "str": hdr(6) + "héllo".encode(),
        "raw": hdr(0) + b"\x89K raw",
        "bad-magic": hdr(4)[:8] + b"XX",
    }


def packer():
    return {
        "i64": b"i64\0" + struct.pack("<q", -7),
        "f64": b"f64\0" + struct.pack("<d", 3.25),
        "str-utf16le": b"str:8:utf16le\0" + "ab".encode("utf-16-le") + bytes(4),
        "str-latin1": b"str:latin1\0caf\xe9",
        "bytes-fixed": b"bytes:4\0ab",
        "msgpack": b"msgpack\0" + msgpack.packb({"k": [1, 2]}),
        "cbor-fixed": b"cbor:16\0" + cbor2.dumps([1, "x"]),
        "vec-fixed": b"vec:f32:2:2\0" + bytes([1]) + bytes(16),
        "vec-any": b"vec:i16\0" + vec(10, [3], 2),
    }


def ring_image(records, edits=b""):
    """A ring input (fuzz_ring.c): 4 KiB ring, small positions, head 0."""
    data = b""
    for typ, payload in records:
        rec = struct.pack("<II", len(payload), typ) + payload
        data += rec + bytes(-len(rec) % 8)
    head = bytes([32, len(edits) // 4]) + bytes(148) + struct.pack("<HH", 0, len(data) // 8)
    return head + data + edits


def keyrec(key, val=b""):
    return struct.pack("<II", len(key), 0) + key + val


def ring():
    return {
        "put-del": ring_image([(1, keyrec(b"k1", b"v1")), (2, keyrec(b"k1")), (4, b"")]),
        "miss-stats": ring_image([(3, keyrec(b"key")), (5, struct.pack("<QQ", 3, 4))]),
        "edits": ring_image([(1, keyrec(b"a", b"b" * 20))] * 3, b"\x00\x00\x01\x00\x01\x00\x08\x00"),
    }


def registry():
    text = (b"kvault-registry=1\nlayout=0123456789abcdef\ngeneration=3\npid=42\ntable=kv\n"
            b"segment=/kvault-1\nslots=/kvault-1-slots\nsocket=kvault-1\nstate=ready\n")
    return {
        "full": b"socket\0" + text + b"\0" + keyrec(b"key", b"value"),
        "short": b"pid\0pid=1\0\x05",
        "no-newline": b"state\0state=stopped\0" + keyrec(b"k"),
    }


def tagged(v):
    """A tagged integer of fuzz_colmeta.c (int64 form; None: NULL)."""
    return b"\0" if v is None else b"\3" + struct.pack("<q", v)


def colmeta():
    def col(dtype, elem, length, chunk, mn, mx):
        return bytes([len(dtype)]) + dtype + b"".join(tagged(v) for v in (elem, length, chunk, mn, mx))

    def chunk(col_id, idx, data, used):
        return bytes([col_id]) + tagged(idx) + tagged(len(data)) + tagged(used) + \
            struct.pack("<H", len(data)) + data

    fixed = col(b"i64", 8, 3, 64, 64, 4096) + col(b"adaptive_idx", 12, 0, 96, 96, 4092)
    # variable pair: 2 elements "ab", "cde" in data chunk 0; their index
    # entries [chunk_idx i32][start i32][end i32] in the idx column's chunk 0
    idx = struct.pack("<3i", 0, 0, 2) + struct.pack("<3i", 0, 2, 5)
    var = col(b"bytes", 1, 5, 64, 64, 4096) + col(b"adaptive_idx", 12, 2, 96, 96, 4092)
    return {
        "fixed": fixed + b"\1" + chunk(0, 0, struct.pack("<3q", 1, 2, 3), 24),
        "var": var + b"\2" + chunk(0, 0, b"abcde", 5) + chunk(1, 0, idx, 24),
        "null-bounds": col(b"f64", 8, 1, 64, None, None) + col(b"x", 1, 0, 1, 1, 1) + b"\0",
    }


def resp():
    return {
        "get": b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n",
        "inline": b"PING\r\n",
        "glob": b"k*[a-c]?\0kxb1",
    }


def msg():
    """Control-socket request packets (fuzz_msg.c): struct kvshm_msg
    (magic, type, status, len, arg) and the payload of each request type."""
    magic = 0x4B565031

    def pkt(typ, payload=b"", arg=0):
        return struct.pack("<IIiIQ", magic, typ, 0, len(payload), arg) + payload

    exec_id = bytes(range(16)) + struct.pack("<Q", 7)

    return {
        "attach": pkt(1, struct.pack("<IIQ", 4242, 3, 1)),
        "put-file": pkt(2, struct.pack("<Q", 1 << 20) + b"images/0001.jpg", arg=65536),
        "feature": pkt(3, b"headers_v1"),
        "optimize": pkt(4),
        "checkpoint": pkt(5),
        "status": pkt(6),
        # EXEC: struct kvshm_exec_id (16-byte token, u64 seq), then the operation
        "exec-inline": pkt(7, exec_id + ops()["text-insert"]),
        "exec-memfd": pkt(7, exec_id, arg=1 << 20),
        "exec-end": pkt(8, exec_id),
    }


def ops():
    """Table operations of EXEC (fuzz_ops.c, shm/include/kvshm/ops.h):
    header (magic, class, op, nopen, nargs, reserved), table, then the
    open parameters and arguments as u32-length-prefixed fields."""
    absent = 0xFFFFFFFF

    def field(b):
        return struct.pack("<I", absent) if b is None else struct.pack("<I", len(b)) + b

    def i64(v):
        return struct.pack("<q", v)

    def op(cls, code, table, opens, args):
        return (struct.pack("<IBBHHH", 0x314F564B, cls, code, len(opens), len(args), 0)
                + field(table) + b"".join(field(f) for f in opens + args))

    cols = [b"title", b"body"]
    vec = [i64(4), i64(0), i64(0)]
    col = [i64(131072), i64(16777216)]   # chunk bounds
    return {
        "text-insert": op(1, 1, b"text_vault", cols, [b"\x89KV", b"hello", b"world"]),
        "text-update-value": op(1, 2, b"text_vault", cols, [i64(7), b"v"]),
        "text-update-texts": op(1, 2, b"docs", cols, [i64(7), None, b"a", b"b"]),
        "text-delete": op(1, 3, b"text_vault", cols, [i64(7)]),
        "text-clear": op(1, 4, b"text_vault", [b"content"], []),
        "vector-insert": op(2, 1, b"vectors", vec, [bytes(16), b"v"]),
        "vector-insert-many": op(2, 5, b"vectors", vec,
                                 [i64(2), bytes(32), i64(1) + i64(2), b"abc"]),
        "vector-update": op(2, 2, b"vectors", vec, [i64(1), None, b"v"]),
        "vector-delete": op(2, 3, b"vectors", vec, [i64(1)]),
        # pipelined inserts: an insert at an id of the client's block, the
        # block asked for and its unused tail given back
        "text-insert-at": op(1, 1, b"text_vault", cols, [b"\x89KV", b"hello", b"world", i64(9)]),
        "text-lease": op(1, 14, b"text_vault", cols, [i64(64)]),
        "text-lease-end": op(1, 15, b"text_vault", cols, [i64(10), i64(65)]),
        "vector-insert-at": op(2, 1, b"vectors", vec, [bytes(16), b"v", i64(9)]),
        "vector-lease": op(2, 14, b"vectors", vec, [i64(256)]),
        "vector-lease-end": op(2, 15, b"vectors", vec, [i64(10), i64(257)]),
        "column-create": op(3, 6, b"col_meta", col, [b"prices", b"i64", i64(8)]),
        "column-drop": op(3, 7, b"col_meta", col, [b"prices"]),
        "column-append": op(3, 8, b"col_meta", col, [i64(1), i64(0), bytes(24), b"prices"]),
        "column-append-var": op(3, 8, b"col_meta", col,
                                [i64(2), i64(3), b"abcde", i64(3) + i64(2), b"tags_data"]),
        "column-write": op(3, 9, b"col_meta", col, [i64(2), i64(3), i64(0), b"xy", i64(2), b"tags_data"]),
        "column-insert": op(3, 1, b"col_meta", col, [i64(1), i64(0), i64(0), bytes(8), b"prices"]),
        "column-delete": op(3, 3, b"col_meta", col, [i64(1), i64(0), i64(4), b"prices"]),
        "column-clear": op(3, 4, b"col_meta", col, [i64(1), i64(0), b"prices"]),
        "kv-put": op(4, 10, b"other", [i64(1 << 20)], [b"k", b"\x89KVvalue"]),
        "kv-put-many": op(4, 11, b"other", [i64(1 << 20)],
                          [i64(1) + i64(2), b"abc", i64(0) + i64(3), b"xyz"]),
        "kv-delete": op(4, 3, b"other", [i64(1 << 20)], [b"k"]),
        "kv-del-many": op(4, 12, b"other", [i64(1 << 20)], [i64(1) + i64(2), b"abc"]),
        "kv-feature": op(4, 13, b"other", [i64(1 << 20)], [b"headers"]),
    }


def main():
    for target, seeds in (("codec", codec()), ("packer", packer()), ("ring", ring()),
                          ("registry", registry()), ("colmeta", colmeta()), ("resp", resp()),
                          ("msg", msg()), ("ops", ops())):
        d = os.path.join(ROOT, target)
        os.makedirs(d, exist_ok=True)
        for name, blob in seeds.items():
            with open(os.path.join(d, "seed-" + name), "wb") as f:
                f.write(blob)


if __name__ == "__main__":
    main()
