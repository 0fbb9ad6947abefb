"""DataPacker (docs/api.md §5): grammar, byte formats, errors, many-variants, schemas."""

import math

import numpy as np
import pytest

from kohakuvault import DataPacker
from kohakuvault._kvault import DataPacker as NativePacker


def test_datapacker_same_class():
    assert DataPacker is NativePacker


@pytest.mark.parametrize("dtype,size", [("i64", 8), ("i64:x", 8), ("f64", 8), ("str", 0), ("str:32", 32),
                                        ("str:4:latin1", 4), ("bytes", 0), ("bytes:16", 16), ("bytes:0", 0),
                                        ("msgpack", 0), ("msgpack:20", 20), ("cbor", 0), ("cbor:9", 9),
                                        ("vec:f32", 0), ("vec:f32:8", 33), ("vec:u8:28:28", 785)])
def test_datapacker_elem_size(dtype, size):
    p = DataPacker(dtype)
    assert p.elem_size == size
    assert p.is_varsize == (size == 0)
    assert repr(p).startswith("DataPacker(")


@pytest.mark.parametrize("bad", ["i32", "f32", "vec", "vec:f16", "vec:f32:0", "str:8:utf32", "bytes:x", "str:1:utf8:x"])
def test_datapacker_invalid_dtype(bad):
    with pytest.raises(ValueError, match="Invalid dtype"):
        DataPacker(bad)
    with pytest.raises(ValueError, match="Unknown dtype"):
        DataPacker("i32")


def test_datapacker_scalars():
    p = DataPacker("i64")
    assert p.pack(1) == b"\x01" + b"\x00" * 7
    assert p.pack(True) == p.pack(1)
    assert p.unpack(p.pack(-(2**63)), 0) == -(2**63)
    with pytest.raises(TypeError):
        p.pack(1.5)
    with pytest.raises(ValueError, match="Not enough data"):
        p.unpack(b"\x00" * 7, 0)
    f = DataPacker("f64")
    assert f.unpack(f.pack(2.5)) == 2.5
    assert f.unpack(f.pack(3)) == 3.0
    assert math.isnan(f.unpack(f.pack(float("nan"))))
    with pytest.raises(TypeError):
        f.pack("x")


def test_datapacker_strings():
    assert DataPacker("str").unpack(DataPacker("str").pack("héllo 🙂")) == "héllo 🙂"
    p = DataPacker("str:8:utf16le")
    assert p.pack("hé") == b"h\x00\xe9\x00\x00\x00\x00\x00"
    assert p.unpack(p.pack("hé")) == "hé"
    assert DataPacker("str:utf16be").pack("a") == b"\x00a"
    with pytest.raises(ValueError, match="non-ASCII"):
        DataPacker("str:ascii").pack("é")
    with pytest.raises(ValueError, match="outside Latin1 range"):
        DataPacker("str:latin1").pack("漢")
    with pytest.raises(ValueError, match="Data too long"):
        DataPacker("str:2").pack("abc")
    with pytest.raises(TypeError):
        DataPacker("str").pack(b"x")
    with pytest.raises(ValueError):
        DataPacker("str").unpack(b"\xff\xfe", 0)


def test_datapacker_bytes():
    p = DataPacker("bytes:4")
    assert p.pack(b"ab") == b"ab\x00\x00"
    assert p.unpack(b"ab\x00\x00") == b"ab\x00\x00"  # padding kept
    assert p.pack([1, 2]) == b"\x01\x02\x00\x00"
    assert p.pack(bytearray(b"z")) == b"z\x00\x00\x00"
    with pytest.raises(ValueError, match="Data too long"):
        p.pack(b"abcde")
    with pytest.raises(TypeError):
        DataPacker("bytes").pack("str")
    assert DataPacker("bytes").unpack(b"xyz", 1) == b"yz"


def test_datapacker_msgpack_cbor_model():
    m = DataPacker("msgpack")
    v = {"b": 1, "a": [1, 2.0, None, True, "s"], "t": (1, 2)}
    out = m.unpack(m.pack(v))
    assert out == {"a": [1, 2.0, None, True, "s"], "b": 1, "t": [1, 2]}
    assert list(out) == ["a", "b", "t"]
    assert m.pack(1.0) == b"\xcb" + np.float64(1.0).tobytes()[::-1]  # always float64
    assert m.pack(42) == b"\x2a"
    assert m.unpack(m.pack(float("nan"))) is None
    for bad in (b"x", {1: 2}, 2**64, object()):
        with pytest.raises(ValueError):
            m.pack(bad)
    c = DataPacker("cbor")
    assert c.unpack(c.pack({"z": 1.5, "a": {1, 2} and [1]})) == {"a": [1], "z": 1.5}
    assert c.pack(1.5) == b"\xf9\x3e\x00"  # half float: shortest exact
    with pytest.raises(ValueError):
        m.unpack(b"\xc1", 0)  # never-used byte
    with pytest.raises(ValueError):
        m.unpack(b"\x92\x01", 0)  # truncated array
    fixed = DataPacker("msgpack:8")
    assert fixed.pack([1]) == b"\x91\x01" + b"\x00" * 6
    assert fixed.unpack(fixed.pack([1])) == [1]
    with pytest.raises(ValueError, match="Data too long"):
        fixed.pack("x" * 20)


def test_datapacker_vectors():
    p = DataPacker("vec:f32:2:2")
    b = p.pack([[1, 2], [3, 4]])
    assert b[0] == 0x01 and len(b) == 17
    a = p.unpack(b)
    assert a.dtype == np.float32 and a.shape == (2, 2)
    a[0, 0] = 9  # writable
    with pytest.raises(ValueError, match="Shape mismatch"):
        p.pack([1, 2, 3, 4])
    arb = DataPacker("vec:i16")
    b = arb.pack(np.arange(6).reshape(2, 3))
    assert b[:2] == b"\x0a\x02" and b[2:10] == b"\x02\x00\x00\x00\x03\x00\x00\x00"
    assert arb.unpack(b).shape == (2, 3)
    assert arb.unpack(arb.pack(np.float64(3))).shape == (1,)
    with pytest.raises(ValueError, match="Not enough data"):
        arb.unpack(b[:-1], 0)
    with pytest.raises(ValueError):
        DataPacker("vec:f32:4").unpack(b"\x01\x00", 0)
    # data type byte wins over the dtype's element type
    u8 = bytes([0x05]) + bytes([1, 2, 3, 4])
    assert DataPacker("vec:u8:4").unpack(u8).dtype == np.uint8


def test_datapacker_many():
    p = DataPacker("i64")
    data = p.pack_many([1, 2, 3])
    assert p.unpack_many(data, count=3) == [1, 2, 3]
    with pytest.raises(ValueError, match="require count"):
        p.unpack_many(data)
    s = DataPacker("str")
    data = s.pack_many(["a", "bc", ""])
    assert data == b"abc"
    assert s.unpack_many(data, offsets=[0, 1, 3]) == ["a", "bc", ""]
    with pytest.raises(ValueError, match="require offsets"):
        s.unpack_many(data)
    with pytest.raises(ValueError, match="Offset out of bounds"):
        s.unpack_many(data, offsets=[0, 5])
    v = DataPacker("vec:f32:3")
    packed = v.pack_many([np.ones(3), np.zeros(3)])
    assert packed == v.pack(np.ones(3)) + v.pack(np.zeros(3))
    assert np.array_equal(v.unpack_many(packed, count=2)[0], np.ones(3, np.float32))
    with pytest.raises(ValueError, match="Shape mismatch"):
        v.pack_many([np.ones(4)])


def test_datapacker_json_schema():
    schema = {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 150},
                                               "tags": {"type": "array", "items": {"type": "string"}},
                                               "kind": {"enum": ["a", "b"]}},
              "required": ["age"]}
    p = DataPacker.with_json_schema(schema)
    assert p.is_varsize and p.elem_size == 0
    assert p.unpack(p.pack({"age": 3, "tags": ["x"], "kind": "a"})) == {"age": 3, "kind": "a", "tags": ["x"]}
    for bad in ({}, {"age": -1}, {"age": 200}, {"age": 1, "tags": [1]}, {"age": 1, "kind": "c"}, {"age": "x"}):
        with pytest.raises(ValueError, match="Validation errors"):
            p.pack(bad)
    with pytest.raises(ValueError, match="Schema compilation failed"):
        DataPacker.with_json_schema({"type": 12})
    c = DataPacker.with_cddl_schema("any")
    assert c.unpack(c.pack([1, "x"])) == [1, "x"]
    assert DataPacker.with_cddl_schema().is_varsize
