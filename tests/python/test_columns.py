"""ColumnVault / Column / VarSizeColumn (docs/api.md §6): every method, errors,
caches, reopen, sharing the file with KVault and stdlib sqlite3."""

import gc
import os
import sqlite3
import threading
import time

import numpy as np
import pytest

from kohakuvault import Column, ColumnVault, InvalidArgument, KVault, NotFound, VarSizeColumn
from kohakuvault import column_proxy as cp


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "c.db")


def test_vault_schema_and_listing(path):
    cv = ColumnVault(path)
    a = cv.create_column("a", "i64")
    s = cv.create_column("s", "str")
    assert isinstance(a, Column) and isinstance(s, VarSizeColumn)
    a.extend([1, 2, 3])
    s.append("x")
    assert cv.list_columns() == [("a", "i64", 3), ("s_data", "str", 0), ("s_idx", "adaptive_idx", 1)]
    assert repr(cv) == "ColumnVault(3 columns)"
    assert cv["a"] is a and cv.ensure("a", "f64") is a
    assert isinstance(cv.ensure("new", "f64"), Column)
    with pytest.raises(NotFound):
        cv["missing"]
    with pytest.raises(InvalidArgument, match="Unknown dtype"):
        cv.create_column("bad", "i32")
    with pytest.raises(InvalidArgument, match="Invalid bytes dtype"):
        cv.create_column("bad", "bytes:x")
    with pytest.raises(RuntimeError):
        cv.create_column("a", "i64")
    with pytest.raises(InvalidArgument, match="No packer for dtype"):
        cv.create_column("np", "bytes:4", use_rust_packer=False)
    con = sqlite3.connect(path)
    row = con.execute("SELECT dtype, elem_size, length, chunk_bytes, min_chunk_bytes, max_chunk_bytes"
                      " FROM col_meta WHERE name='a'").fetchone()
    assert row == ("i64", 8, 3, 131072, 131072, 16777216)
    assert con.execute("SELECT value FROM kohakuvault_meta WHERE key='schema_version'").fetchone() == ("2",)
    assert con.execute("SELECT journal_mode FROM pragma_journal_mode").fetchone() == ("wal",)
    con.close()
    assert cv.delete_column("a") is True
    assert cv.delete_column("s") is True  # may-fix: logical name deletes the pair
    assert cv.delete_column("nothing") is False
    with pytest.raises(NotFound):
        cv["a"]
    cv.checkpoint()


def test_vault_alignment_and_paths(tmp_path, path):
    cv = ColumnVault(path, min_chunk_bytes=100, max_chunk_bytes=1000)
    cv.create_column("v", "vec:f32:8")  # elem 33
    con = sqlite3.connect(path)
    assert con.execute("SELECT min_chunk_bytes, max_chunk_bytes, chunk_bytes FROM col_meta").fetchone() == (132, 990, 132)
    con.close()
    with pytest.raises(RuntimeError, match="Cannot align chunk sizes"):
        ColumnVault(path, min_chunk_bytes=10, max_chunk_bytes=20).create_column("w", "bytes:30")
    with pytest.raises(Exception):
        ColumnVault(str(tmp_path / "no" / "such" / "x.db"))
    import pathlib
    assert ColumnVault(pathlib.Path(path))["v"]._elem_size == 33


def test_column_sequence_behaviour(path):
    cv = ColumnVault(path)
    c = cv.create_column("x", "i64")
    c.extend([])
    c.extend(range(5))
    c.append(5)
    assert len(c) == 6 and c[-1] == 5 and c[0] == 0 and c[True] == 1
    assert c[1:4] == [1, 2, 3] and c[4:1] == [] and c[-2:] == [4, 5]
    with pytest.raises(ValueError, match="Step slicing not supported"):
        c[::2]
    with pytest.raises(IndexError, match=r"Column index out of range: 6 \(length=6\)"):
        c[6]
    with pytest.raises(TypeError, match="Column indices must be integers or slices"):
        c["1"]
    c[0] = 10
    c[1:3] = [11, 12]
    c[3:3] = [99, 98]  # empty slice: no-op
    with pytest.raises(ValueError, match="Slice length mismatch: slice has 2 elements, but 1 values provided"):
        c[0:2] = [1]
    with pytest.raises(ValueError, match="Step slicing not supported for setitem"):
        c[::2] = [1, 2, 3]
    del c[0]
    with pytest.raises(TypeError, match="Column indices must be integers"):
        del c[0:1]
    c.insert(0, -1)
    c.insert(-100, -2)
    c.insert(100, 100)
    assert list(c) == [-2, -1, 11, 12, 3, 4, 5, 100]
    assert 12 in c and c.index(12) == 3 and c.count(5) == 1
    assert c.pop() == 100
    c.remove(-2)
    c.reverse()
    assert list(reversed(c)) == [-1, 11, 12, 3, 4, 5]
    c += [7]
    assert c[-1] == 7
    assert repr(c) == "Column(name='x', dtype='i64', length=7)"
    assert c._name == "x" and c._dtype == "i64" and c._elem_size == 8 and c._chunk_bytes == 16777216
    assert c._length == 7 and isinstance(c._col_id, int)
    before = c[:]
    for bad, exc in ((1.5, TypeError), ("x", TypeError), (2**70, ValueError)):
        with pytest.raises(exc):
            c.append(bad)
        with pytest.raises(exc):
            c[0] = bad
        with pytest.raises(exc):
            c.extend([1, bad])
    assert c[:] == before
    c.clear()
    assert len(c) == 0 and c[:] == []


def test_column_value_kinds(path):
    cv = ColumnVault(path)
    b = cv.create_column("b", "bytes:4")
    b.append(b"ab")
    assert b[0] == b"ab\x00\x00"
    with pytest.raises(ValueError, match="Data too long"):
        b.append(b"abcde")
    s = cv.create_column("s", "str:6")
    s.append("hi")
    assert s[0] == "hi"
    m = cv.create_column("m", "msgpack:16")
    m.append({"k": 1})
    assert m[0] == {"k": 1}
    v = cv.create_column("v", "vec:u8:2:2")
    v.append([[1, 2], [3, 4]])
    assert v[0].shape == (2, 2) and v[0].dtype == np.uint8
    with pytest.raises(ValueError, match="Shape mismatch"):
        v.append([1, 2, 3, 4])
    v.extend(np.zeros((3, 2, 2), np.uint8))
    assert len(v) == 4
    f = cv.create_column("f", "f64")
    f.extend(np.linspace(0, 1, 11))
    f.extend(np.arange(3, dtype=np.int32))  # other numpy dtypes are cast once
    assert f[10] == 1.0 and f[-1] == 2.0
    assert np.array_equal(f.to_numpy()[:2], [0.0, 0.1])


def test_varsize_behaviour(path):
    cv = ColumnVault(path, min_chunk_bytes=64, max_chunk_bytes=128)
    c = cv.create_column("b", "bytes")
    c.extend([b"a", b"bb", b"x" * 300])  # larger than max: own chunk
    c.append(b"")
    assert c[:] == [b"a", b"bb", b"x" * 300, b""]
    with pytest.raises(TypeError, match="Value must be bytes"):
        c.append(bytearray(b"x"))
    with pytest.raises(TypeError, match="Value must be bytes"):
        c[0] = "str"
    c[0] = b"longer value"
    c[1] = b""
    assert c[:2] == [b"longer value", b""]
    with pytest.raises(IndexError, match="Index out of range: 9"):
        c[9] = b"x"
    with pytest.raises(IndexError, match="Column index out of range: 9"):
        c[9]
    with pytest.raises(ValueError, match="Step slicing not supported for variable-size columns"):
        c[::2]
    with pytest.raises(NotImplementedError, match="Insert not supported for variable-size columns"):
        c.insert(0, b"x")
    del c[0]
    assert c[0] == b"" and len(c) == 3
    assert repr(c) == "VarSizeColumn(name='b', length=3)"
    c.clear()
    assert len(c) == 0
    c.append(b"after clear")
    assert c[:] == [b"after clear"]
    m = cv.create_column("m", "msgpack")
    m.extend([{"a": i} for i in range(250)])
    assert list(m)[249] == {"a": 249}
    assert cv.list_columns()[-1] == ("m_idx", "adaptive_idx", 250)
    raw = cv.create_column("r", "str", use_rust_packer=False)
    raw.append(b"\xff raw")
    assert raw[0] == b"\xff raw"


def test_caches(path):
    cv = ColumnVault(path)
    c = cv.create_column("x", "i64")
    s = cv.create_column("s", "str")
    assert c.flush_cache() == 0
    with cv.cache(cap_bytes=1 << 20, flush_threshold=1 << 19):
        c.extend([1, 2])
        s.append("a")
        assert len(c) == 2 and len(s) == 1
        other = ColumnVault(path)
        assert len(other["x"]) == 0  # still cached
        assert c[1] == 2  # reads see cached appends (may-fix)
        c.append(3)
        assert cv.flush_cache() == 8 + 1  # 3 (x) + "a" (s, still cached)
    assert len(ColumnVault(path)["x"]) == 3
    with c.cache() as cc:
        assert cc is c
        c.append(4)
    assert not c._cache_enabled
    c.enable_cache(cap_bytes=64, flush_threshold=32)
    for i in range(10):
        c.append(i)
    with cv.lock_cache():
        assert cv._cv.cache_locked()
        assert c.flush_cache() >= 0  # manual flushes still run
    c.append(77)
    assert c[-1] == 77


def test_cache_flushed_when_vault_dropped(path):
    def fill():
        cv = ColumnVault(path)
        c = cv.create_column("x", "i64")
        c.enable_cache(cap_bytes=1 << 20, flush_threshold=1 << 19)
        c.append(77)
        assert len(ColumnVault(path)["x"]) == 0

    fill()
    gc.collect()
    assert ColumnVault(path)["x"][:] == [77]  # flushed on close


def test_cache_daemon_flushes_idle_columns(path):
    cv = ColumnVault(path)
    c = cv.create_column("x", "i64")
    cv.enable_cache(flush_interval=0.1)
    c.append(1)
    probe = ColumnVault(path)
    deadline = time.time() + 5
    while len(probe["x"]) == 0 and time.time() < deadline:
        time.sleep(0.1)
    assert len(probe["x"]) == 1
    cv.disable_cache()


def test_reopen_and_share_file_with_kvault(path):
    kv = KVault(path)
    kv["k"] = b"v"
    cv = ColumnVault(kv)
    c = cv.create_column("x", "f64")
    c.extend([1.5, 2.5])
    assert kv["k"] == b"v"
    del c, cv
    gc.collect()
    cv = ColumnVault(path)
    assert cv["x"][:] == [1.5, 2.5]
    con = sqlite3.connect(path)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"col_meta", "col_chunks", "kohakuvault_meta"} <= tables
    con.close()


def test_threads_len_no_deadlock(path):
    ColumnVault(path).create_column("x", "i64").extend([1, 2, 3])
    out = []

    def work():
        out.append(len(ColumnVault(path)["x"]))

    ts = [threading.Thread(target=work) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert out == [3] * 8


def test_helpers():
    assert cp.unpack_i64(cp.pack_i64(-5)) == -5
    assert cp.unpack_i32(cp.pack_i32(7)) == 7
    assert cp.unpack_f64(cp.pack_f64(0.25)) == 0.25
    assert cp.pack_bytes(b"a", 3) == b"a\x00\x00" and cp.unpack_bytes(b"abc", 1) == b"bc"
    assert cp.parse_dtype("i64") == (False, 8) and cp.parse_dtype("str") == (True, 0)
    assert cp.get_unpacker("f64")(cp.get_packer("f64")(1.0)) == 1.0
    assert set(cp.DTYPE_INFO) == {"i64", "f64"}


def test_reads_see_other_connections_and_processes(path):
    """The read cache (validated by the WAL-index header) never serves a
    value another connection or process has since changed."""
    import subprocess
    import sys

    cv1 = ColumnVault(path)
    c1 = cv1.create_column("x", "f64")
    c1.extend(np.arange(1000, dtype=np.float64))
    assert c1[10:13] == [10.0, 11.0, 12.0] and c1[-1] == 999.0  # warm
    assert len(c1) == 1000
    cv2 = ColumnVault(path)
    c2 = cv2["x"]
    c2.extend([1000.0, 1001.0])
    c2[10] = -1.0
    assert len(c1) == 1002
    assert c1[10:13] == [-1.0, 11.0, 12.0]
    assert c1[-1] == 1001.0
    assert c1.to_numpy(10, 11).tolist() == [-1.0]
    code = (
        "import sys; from kohakuvault import ColumnVault; c = ColumnVault(sys.argv[1])['x'];"
        " c[11] = -2.0; c.append(1002.0)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code, path], check=True, env=env)
    assert c1[10:13] == [-1.0, -2.0, 12.0]
    assert len(c1) == 1003 and c1[-1] == 1002.0
    # getitem errors keep the docs/api.md messages
    with pytest.raises(IndexError, match=r"Column index out of range: 1003 \(length=1003\)"):
        c1[1003]
    with pytest.raises(IndexError, match=r"Column index out of range: -1004 \(length=1003\)"):
        c1[-1004]
    with pytest.raises(ValueError, match="Step slicing not supported"):
        c1[0:10:2]
    with pytest.raises(TypeError, match="Column indices must be integers or slices"):
        c1[1.0]
    assert c1[True] == 1.0 and c1[np.int64(2)] == 2.0
    assert c1[5:2] == [] and c1[-2:] == [1001.0, 1002.0]
