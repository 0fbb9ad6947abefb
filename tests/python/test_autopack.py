"""Auto-pack round trips and the stored byte layout (docs/api.md §3).

Every layout check reads the raw row with the stdlib sqlite3 module, so the
bytes that end up in users' files are checked, not just the round trip.
"""

import json
import math
import pickle
import struct

import cbor2
import msgpack
import numpy as np
import pytest

from kohakuvault import Cbor, InvalidArgument, Json, KohakuVaultError, KVault, MsgPack, Pickle
from kohakuvault.wrappers import EncodingWrapper

MAGIC = b"\x89\x4b"
CLOSE = b"\x56\x4b"


def header(enc_id: int) -> bytes:
    return MAGIC + bytes([1, enc_id, 0, 0, 0, 0]) + CLOSE


VEC_TYPE = {
    "float32": 1, "float64": 2, "int32": 3, "int64": 4, "uint8": 5,
    "uint16": 6, "uint32": 7, "uint64": 8, "int8": 9, "int16": 10,
}


def vector_payload(arr: np.ndarray) -> bytes:
    """Arbitrary-shape DataPacker vector: type, ndim, dims u32le, C-order LE data."""
    a = np.ascontiguousarray(arr)
    shape = a.shape if a.ndim else (1,)
    out = bytes([VEC_TYPE[a.dtype.name], len(shape)])
    out += b"".join(struct.pack("<I", d) for d in shape)
    return out + a.astype(a.dtype.newbyteorder("<")).tobytes()


# ------------------------------------------------------------ plain types

def test_bytes_stored_raw_without_header(kv, db_path, raw_row):
    kv["b"] = b"\x00\x01raw bytes"
    assert raw_row(db_path, "b") == b"\x00\x01raw bytes"
    assert kv["b"] == b"\x00\x01raw bytes"
    assert type(kv["b"]) is bytes


def test_bytes_subclass_stored_raw(kv, db_path, raw_row):
    class B(bytes):
        pass

    kv["b"] = B(b"sub")
    assert raw_row(db_path, "b") == b"sub"
    assert kv["b"] == b"sub"


def test_empty_bytes(kv, db_path, raw_row):
    kv["e"] = b""
    assert raw_row(db_path, "e") == b""
    assert kv["e"] == b""


def test_str_layout_and_round_trip(kv, db_path, raw_row):
    s = "héllo wörld ✓ 日本"
    kv["s"] = s
    assert raw_row(db_path, "s") == header(0x06) + s.encode("utf-8")
    assert kv["s"] == s
    kv["empty"] = ""
    assert raw_row(db_path, "empty") == header(0x06)
    assert kv["empty"] == ""


@pytest.mark.parametrize("v", [0, 1, -1, 42, -(10**11), 10**12 - 1, 2**39 + 3])
def test_int_layout_and_round_trip(kv, db_path, raw_row, v):
    kv["i"] = v
    assert raw_row(db_path, "i") == header(0x02) + struct.pack("<q", v)
    out = kv["i"]
    assert type(out) is int and out == v


@pytest.mark.parametrize("v", [10**12, -(10**12), 2**62])
def test_large_int_quirk_reads_back_as_float(kv, db_path, raw_row, v):
    kv["i"] = v
    raw = struct.pack("<q", v)
    assert raw_row(db_path, "i") == header(0x02) + raw
    out = kv["i"]
    assert type(out) is float
    # the same 8 bytes reinterpreted as f64 (a denormal, or NaN for some
    # negative ints): compare the bits
    assert struct.pack("<d", out) == raw or (math.isnan(out) and math.isnan(struct.unpack("<d", raw)[0]))


def test_int_beyond_int64_is_stored_as_f64(kv, db_path, raw_row):
    v = 2**70
    kv["i"] = v
    assert raw_row(db_path, "i") == header(0x02) + struct.pack("<d", float(v))
    assert kv["i"] == float(v)


def test_bool_stored_as_i64_reads_back_as_one(kv, db_path, raw_row):
    kv["t"] = True
    kv["f"] = False
    assert raw_row(db_path, "t") == header(0x02) + struct.pack("<q", 1)
    assert kv["t"] == 1 and type(kv["t"]) is int
    assert kv["f"] == 0 and type(kv["f"]) is int


@pytest.mark.parametrize("v", [1.5, -2.25, math.pi, 1e-300, 1e300, 3.0, -7.0])
def test_float_round_trip(kv, db_path, raw_row, v):
    kv["f"] = v
    assert raw_row(db_path, "f") == header(0x02) + struct.pack("<d", v)
    out = kv["f"]
    assert type(out) is float and out == v


def test_float_zero_quirk_reads_back_as_int_zero(kv):
    kv["z"] = 0.0
    out = kv["z"]
    assert out == 0 and type(out) is int


def test_float_nan_and_inf(kv):
    kv["inf"] = float("inf")
    kv["nan"] = float("nan")
    # inf is not finite and its bit pattern as i64 is >= 1e12 -> float
    assert kv["inf"] == float("inf")
    assert math.isnan(kv["nan"])


# --------------------------------------------------------- dict and list

def test_nested_dict_list_msgpack_layout(kv, db_path, raw_row):
    value = {"b": [1, 2, {"c": "d", "a": None}], "a": 1.5, "t": True, "neg": -5, "big": 2**63}
    kv["d"] = value
    raw = raw_row(db_path, "d")
    assert raw[:10] == header(0x04)
    # keys sorted bytewise, floats always float64
    expected = msgpack.packb(
        {"a": 1.5, "b": [1, 2, {"a": None, "c": "d"}], "big": 2**63, "neg": -5, "t": True}
    )
    assert raw[10:] == expected
    out = kv["d"]
    assert out == value
    assert list(out) == sorted(value)  # key order is sorted
    assert list(out["b"][2]) == ["a", "c"]


def test_msgpack_float_is_float64_even_when_whole(kv, db_path, raw_row):
    kv["l"] = [1.0, 0.5]
    assert raw_row(db_path, "l")[10:] == b"\x92\xcb" + struct.pack(">d", 1.0) + b"\xcb" + struct.pack(">d", 0.5)
    assert kv["l"] == [1.0, 0.5]
    assert type(kv["l"][0]) is float


def test_nested_tuple_becomes_list(kv, db_path, raw_row):
    kv["l"] = [1, (2, 3), {"x": (4,)}]
    assert raw_row(db_path, "l")[:10] == header(0x04)
    assert kv["l"] == [1, [2, 3], {"x": [4]}]


def test_empty_dict_and_list(kv):
    kv["d"] = {}
    kv["l"] = []
    assert kv["d"] == {} and kv["l"] == []


def test_dict_subclass_and_list_subclass(kv, db_path, raw_row):
    class D(dict):
        pass

    class L(list):
        pass

    kv["d"] = D(a=1)
    kv["l"] = L([1, 2])
    assert raw_row(db_path, "d")[:10] == header(0x04)
    assert kv["d"] == {"a": 1}
    assert kv["l"] == [1, 2]


@pytest.mark.parametrize(
    "value",
    [
        {"arr": np.arange(5, dtype=np.int32)},
        {"raw": b"bytes inside"},
        {1: "int key"},
        [1, 2**70],
        [complex(1, 2), "custom objects are outside the model"],
    ],
)
def test_outside_msgpack_model_pickles_whole_value(kv, db_path, raw_row, value):
    kv["p"] = value
    raw = raw_row(db_path, "p")
    assert raw[:10] == header(0x01)
    assert raw[10:] == pickle.dumps(value)
    out = kv["p"]
    if isinstance(value, dict) and "arr" in value:
        assert out.keys() == value.keys()
        assert out["arr"].dtype == np.int32
        np.testing.assert_array_equal(out["arr"], value["arr"])
    else:
        assert out == value


# ------------------------------------------------------- pickled values

@pytest.mark.parametrize("value", [(1, "two", 3.0), {1, 2, 3}, None, frozenset({"a"}), complex(1, 2)])
def test_other_objects_are_pickled(kv, db_path, raw_row, value):
    kv["o"] = value
    raw = raw_row(db_path, "o")
    assert raw == header(0x01) + pickle.dumps(value)
    out = kv["o"]
    assert out == value and type(out) is type(value)


def test_bytearray_is_pickled_under_auto_pack(kv, db_path, raw_row):
    kv["ba"] = bytearray(b"abc")
    assert raw_row(db_path, "ba") == header(0x01) + pickle.dumps(bytearray(b"abc"))
    assert kv["ba"] == bytearray(b"abc")


def test_use_pickle_false_refuses_and_keeps_data(kv, db_path, raw_row):
    kv["keep"] = (1, 2)  # pickled while allowed
    kv["x"] = "old"
    kv.enable_auto_pack(use_pickle=False)
    for bad in ({1, 2}, None, (1, 2), {"arr": b"bytes"}):
        with pytest.raises(InvalidArgument):
            kv["x"] = bad
    assert kv["x"] == "old"
    assert kv["keep"] == (1, 2)  # reading pickled values still works
    kv["y"] = {"ok": [1, 2]}     # msgpack-able still fine
    assert kv["y"] == {"ok": [1, 2]}
    assert raw_row(db_path, "x") == header(0x06) + b"old"


# ----------------------------------------------------------------- numpy

@pytest.mark.parametrize(
    "arr",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        np.linspace(-1, 1, 9, dtype=np.float64),
        np.arange(-60, 60, dtype=np.int8).reshape(2, 3, 20),
        np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 12,
        np.array([[1, -2**31], [2**31 - 1, 0]], dtype=np.int32),
        np.array([2**62, -(2**62), 5], dtype=np.int64),
        np.arange(200, dtype=np.uint8),
        np.arange(10, dtype=np.uint16).reshape(5, 2) * 6000,
        np.array([0, 2**32 - 1, 7], dtype=np.uint32),
        np.array([2**64 - 1, 0], dtype=np.uint64),
        np.zeros((2, 0, 3), dtype=np.float32),
        np.ones((1, 1, 1, 1, 2), dtype=np.float64),
    ],
    ids=lambda a: f"{a.dtype.name}{list(a.shape)}",
)
def test_numpy_round_trip_and_layout(kv, db_path, raw_row, arr):
    kv["a"] = arr
    raw = raw_row(db_path, "a")
    assert raw == header(0x02) + vector_payload(arr)
    out = kv["a"]
    assert isinstance(out, np.ndarray)
    assert out.dtype == arr.dtype
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_numpy_non_contiguous_and_big_endian(kv):
    base = np.arange(40, dtype=np.float64).reshape(5, 8)
    view = base[:, ::2]
    kv["v"] = view
    np.testing.assert_array_equal(kv["v"], view)
    be = np.arange(6, dtype=">i4")
    kv["be"] = be
    out = kv["be"]
    np.testing.assert_array_equal(out, be)


def test_numpy_scalar_is_a_0d_vector_read_back_with_shape_1(kv):
    kv["s"] = np.float64(2.5)
    out = kv["s"]
    assert isinstance(out, np.ndarray) and out.shape == (1,) and out[0] == 2.5


def test_numpy_unsupported_dtypes_fall_back_to_pickle(kv, db_path, raw_row):
    for i, arr in enumerate(
        [np.array([True, False, True]), np.arange(4, dtype=np.float16), np.array([1 + 2j])]
    ):
        kv[f"x{i}"] = arr
        assert raw_row(db_path, f"x{i}")[:10] == header(0x01)
        out = kv[f"x{i}"]
        assert out.dtype == arr.dtype
        np.testing.assert_array_equal(out, arr)


def test_short_vector_quirk_reads_back_as_number(kv):
    # [type][ndim][dim u32][2 x u8] = 8 bytes: decoded by the 8-byte rule
    kv["v"] = np.array([1, 2], dtype=np.uint8)
    out = kv["v"]
    assert not isinstance(out, np.ndarray)
    assert isinstance(out, (int, float))


# -------------------------------------------------------------- wrappers

def test_wrapper_msgpack(kv, db_path, raw_row):
    kv["m"] = MsgPack({"z": 1, "a": [1.0, "x"]})
    assert raw_row(db_path, "m") == header(0x04) + msgpack.packb({"a": [1.0, "x"], "z": 1})
    assert kv["m"] == {"a": [1.0, "x"], "z": 1}


def test_wrapper_json(kv, db_path, raw_row):
    obj = {"b": [1, 2.5, None, True], "a": "é"}
    kv["j"] = Json(obj)
    assert raw_row(db_path, "j") == header(0x03) + json.dumps(obj).encode("utf-8")
    assert kv["j"] == obj


def test_wrapper_cbor(kv, db_path, raw_row):
    obj = {"k": 1.5, "list": [1, "two", None], "n": -3}
    kv["c"] = Cbor(obj)
    raw = raw_row(db_path, "c")
    assert raw[:10] == header(0x05)
    assert cbor2.loads(raw[10:]) == obj
    # shortest exact float: 1.5 fits a half float (0xf9)
    assert b"\xf9\x3e\x00" in raw[10:]
    assert kv["c"] == obj


def test_wrapper_pickle(kv, db_path, raw_row):
    obj = {"set": {1, 2}, "t": (1,)}
    kv["p"] = Pickle(obj)
    assert raw_row(db_path, "p") == header(0x01) + pickle.dumps(obj)
    assert kv["p"] == obj
    kv["pb"] = Pickle(b"bytes")  # a wrapper is not bytes: pickled (row 2)
    assert raw_row(db_path, "pb") == header(0x01) + pickle.dumps(b"bytes")
    assert kv["pb"] == b"bytes"


def test_wrapper_repr_and_attributes():
    assert repr(MsgPack([1])) == "MsgPack([1])"
    assert repr(Json({"a": 1})) == "Json({'a': 1})"
    assert repr(Cbor("x")) == "Cbor('x')"
    assert repr(Pickle(None)) == "Pickle(None)"
    w = EncodingWrapper(5, "json")
    assert (w.data, w.encoding_name) == (5, "json")
    assert repr(w) == "EncodingWrapper(5)"
    assert MsgPack(1).encoding_name == "msgpack"
    assert Json(1).encoding_name == "json"
    assert Cbor(1).encoding_name == "cbor"
    assert Pickle(1).encoding_name == "pickle"


def test_duck_typed_wrapper(kv, db_path, raw_row):
    class W:
        encoding_name = "json"
        data = [1, 2]

    kv["w"] = W()
    assert raw_row(db_path, "w") == header(0x03) + b"[1, 2]"
    assert kv["w"] == [1, 2]


def test_unknown_wrapper_and_failing_wrappers_keep_data(kv, db_path, raw_row):
    kv["w"] = "before"
    with pytest.raises(InvalidArgument, match="Unknown encoding wrapper"):
        kv["w"] = EncodingWrapper(1, "yaml")
    with pytest.raises(InvalidArgument):
        kv["w"] = MsgPack({"b": b"bytes are outside the model"})
    with pytest.raises(InvalidArgument):
        kv["w"] = Cbor({1: "non-str key"})
    assert kv["w"] == "before"
    assert raw_row(db_path, "w") == header(0x06) + b"before"


# ------------------------------------------------------ headers switch

def test_headers_off_stores_bare_payloads(kv, db_path, raw_row):
    kv.disable_headers()
    assert kv.headers_enabled() is False
    assert kv.auto_pack_enabled() is True
    kv["s"] = "abc"
    kv["i"] = 7
    kv["d"] = {"a": 1}
    kv["b"] = b"raw"
    assert raw_row(db_path, "s") == b"abc"
    assert raw_row(db_path, "i") == struct.pack("<q", 7)
    assert raw_row(db_path, "d") == msgpack.packb({"a": 1})
    assert raw_row(db_path, "b") == b"raw"
    # bare payloads read back as raw bytes (original behaviour)
    assert kv["s"] == b"abc"
    assert kv["i"] == struct.pack("<q", 7)
    assert kv["d"] == msgpack.packb({"a": 1})
    kv.enable_headers()
    assert kv.headers_enabled() is True
    kv["s"] = "abc"
    assert kv["s"] == "abc"


# ---------------------------------------------------- auto-pack switch

def test_auto_pack_off(kv, db_path, raw_row):
    kv["packed"] = {"a": 1}
    kv.disable_auto_pack()
    assert kv.auto_pack_enabled() is False
    assert kv.headers_enabled() is True  # untouched
    # reads return stored bytes, header included
    assert kv["packed"] == header(0x04) + msgpack.packb({"a": 1})
    kv["b"] = b"raw"
    kv["ba"] = bytearray(b"from bytearray")
    kv["mv"] = memoryview(b"from memoryview")
    assert raw_row(db_path, "ba") == b"from bytearray"
    assert raw_row(db_path, "mv") == b"from memoryview"
    assert kv["ba"] == b"from bytearray" and type(kv["ba"]) is bytes
    for bad in ("str", 1, 1.5, {"a": 1}, None):
        with pytest.raises(InvalidArgument, match="value must be bytes-like"):
            kv["b"] = bad
    assert kv["b"] == b"raw"
    kv.enable_auto_pack()
    assert kv.auto_pack_enabled() is True and kv.headers_enabled() is True
    assert kv["packed"] == {"a": 1}


def test_enable_auto_pack_turns_headers_on(kv):
    kv.disable_headers()
    kv.disable_auto_pack()
    kv.enable_auto_pack()
    assert kv.headers_enabled() is True


def test_switches_are_per_instance(db_path):
    with KVault(db_path) as a, KVault(db_path) as b:
        a.disable_auto_pack()
        assert b.auto_pack_enabled() is True
        b["s"] = "text"
        assert a["s"] == header(0x06) + b"text"
        assert b["s"] == "text"
    with KVault(db_path) as c:  # not persisted
        assert c.auto_pack_enabled() is True and c.headers_enabled() is True


# ---------------------------------------------------- header detection

@pytest.mark.parametrize(
    "blob",
    [
        MAGIC + bytes([1, 4, 0, 0, 0, 0]) + b"XX" + b"\x01",   # closing magic wrong
        MAGIC + bytes([2, 4, 0, 0, 0, 0]) + CLOSE + b"\x01",   # version 2
        MAGIC + bytes([1, 7, 0, 0, 0, 0]) + CLOSE + b"\x01",   # unknown id
        MAGIC + bytes([1, 4, 0, 0, 1, 0]) + CLOSE + b"\x01",   # reserved byte set
        MAGIC + bytes([1, 0xFF, 0, 0, 0, 0]) + CLOSE + b"xx",  # reserved encoding
        header(0x06) + b"\xff\xfe invalid utf-8",
        header(0x04) + b"\xc1",                                 # never-used msgpack byte
    ],
)
def test_malformed_header_raises_invalid_argument_data_intact(kv, db_path, raw_put, raw_row, blob):
    kv["good"] = {"still": "here"}
    raw_put(db_path, "bad", blob)
    with pytest.raises(InvalidArgument):
        kv["bad"]
    with pytest.raises(InvalidArgument):
        kv.get("bad")
    assert raw_row(db_path, "bad") == blob  # reading did not alter it
    assert kv["good"] == {"still": "here"}
    kv.disable_auto_pack()
    assert kv["bad"] == blob  # raw read works


def test_corrupt_pickle_payload_raises_mapped_error(kv, db_path, raw_put, raw_row):
    blob = header(0x01) + b"not a pickle"
    raw_put(db_path, "p", blob)
    with pytest.raises(KohakuVaultError):
        kv["p"]
    assert raw_row(db_path, "p") == blob


def test_set_inside_list_goes_to_msgpack_as_array(kv, db_path, raw_row):
    kv["s"] = [{"s": {3, 1, 2}}]
    assert raw_row(db_path, "s")[:10] == header(0x04)
    out = kv["s"]
    assert sorted(out[0]["s"]) == [1, 2, 3] and isinstance(out[0]["s"], list)


def test_reserved_encoding_message(kv, db_path, raw_put):
    raw_put(db_path, "r", MAGIC + bytes([1, 0xFF, 0, 0, 0, 0]) + CLOSE)
    with pytest.raises(InvalidArgument, match="Reserved encoding type"):
        kv["r"]


def test_header_detection_edges(kv, db_path, raw_put):
    raw_put(db_path, "short", MAGIC + b"\x01\x06")         # < 10 bytes: raw
    raw_put(db_path, "nomagic", b"\x00" * 20)                # no magic: raw
    raw_put(db_path, "flags", MAGIC + bytes([1, 6, 0x55, 0, 0, 0]) + CLOSE + b"hi")  # flags ignored
    raw_put(db_path, "rawid", header(0x00) + b"payload")   # id 0 -> payload bytes
    raw_put(db_path, "json", header(0x03) + b'{"a": [1]}')
    raw_put(db_path, "cbor", header(0x05) + cbor2.dumps({"b": 1, "a": 2.0}))
    raw_put(db_path, "dp_empty", header(0x02))
    raw_put(db_path, "dp_utf8", header(0x02) + "not a vector".encode())
    raw_put(db_path, "dp_bytes", header(0x02) + b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7")
    assert kv["short"] == MAGIC + b"\x01\x06"
    assert kv["nomagic"] == b"\x00" * 20
    assert kv["flags"] == "hi"
    assert kv["rawid"] == b"payload"
    assert kv["json"] == {"a": [1]}
    out = kv["cbor"]
    assert out == {"a": 2.0, "b": 1} and list(out) == ["a", "b"]
    assert kv["dp_empty"] == b""
    assert kv["dp_utf8"] == "not a vector"
    assert kv["dp_bytes"] == b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7"


def test_raw_blob_starting_with_magic_quirk(kv):
    # A raw bytes value of 10+ bytes that begins with 89 4B but is not a
    # valid header is stored fine but fails to read while auto-pack is on.
    blob = MAGIC + b"not a header at all"
    kv["q"] = blob
    with pytest.raises(InvalidArgument):
        kv["q"]
    kv.disable_auto_pack()
    assert kv["q"] == blob
