"""Stores pickle as their path and options and reopen the file when
unpickled, so ``spawn`` workers (DataLoader-style) can receive them."""

import multiprocessing as mp
import pickle

import numpy as np
import pytest

from kohakuvault import ColumnVault, KVault, TextVault, VectorKVault


def _child_read(objs, out):
    """Runs in a spawned process: read what the parent wrote, through the
    unpickled objects."""
    kv, cv, col, var, tv, vkv = objs
    out.put({
        "kv": (kv[b"a"], kv[b"cached"], kv.auto_pack_enabled()),
        "cv": list(cv["nums"]),
        "col": (len(col), col[-1]),
        "var": list(var),
        "tv": [hit[2] for hit in tv.search("hello")],
        "vkv": vkv.search([1.0, 0.0, 0.0], k=1)[0][2],
    })
    kv[b"from_child"] = "hi"
    kv.close()


def test_spawn_child_reads_parent_values(tmp_path):
    db = str(tmp_path / "a.db")
    kv = KVault(db, shared=False)
    kv[b"a"] = {"x": [1, 2]}
    kv.enable_cache(cap_bytes=1 << 20, flush_threshold=1 << 20)
    kv[b"cached"] = 42  # only in the write-back cache until pickling flushes it
    cv = ColumnVault(db)
    nums = cv.create_column("nums", "i64")
    nums.extend([1, 2, 3])
    nums.enable_cache()
    nums.append(4)  # cached append: flushed when the column is pickled
    var = cv.create_column("words", "str")
    var.extend(["a", "bc"])
    tv = TextVault(str(tmp_path / "t.db"))
    tv.insert("hello there", "greeting")
    vkv = VectorKVault(str(tmp_path / "v.db"), dimensions=3, metric="l2")
    vkv.insert(np.array([1.0, 0.0, 0.0], dtype=np.float32), "east")

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_child_read, args=((kv, cv, nums, var, tv, vkv), out))
    proc.start()
    got = out.get(timeout=60)
    proc.join(60)
    assert proc.exitcode == 0
    assert got == {
        "kv": ({"x": [1, 2]}, 42, True),
        "cv": [1, 2, 3, 4],
        "col": (4, 4),
        "var": ["a", "bc"],
        "tv": ["greeting"],
        "vkv": "east",
    }
    assert kv[b"from_child"] == "hi"
    kv.close()


def test_options_and_switches_are_carried(tmp_path):
    db = str(tmp_path / "a.db")
    kv = KVault(db, shared=False, table="other", chunk_size=4096)
    kv.disable_headers()
    kv[b"k"] = 5
    copy = pickle.loads(pickle.dumps(kv))
    assert copy._table == "other" and copy._chunk_size == 4096
    assert copy.auto_pack_enabled() and not copy.headers_enabled()
    assert copy[b"k"] == kv[b"k"]
    copy.close()
    kv.close()

    tv = TextVault(str(tmp_path / "t.db"), table="docs", columns=["title", "body"])
    tv.disable_auto_pack()
    tv2 = pickle.loads(pickle.dumps(tv))
    assert (tv2.table, tv2.columns, tv2.auto_pack_enabled()) == ("docs", ["title", "body"], False)

    vkv = VectorKVault(str(tmp_path / "v.db"), table="vv", dimensions=8, metric="l1", threads=1)
    v2 = pickle.loads(pickle.dumps(vkv))
    assert (v2.table, v2.dimensions, v2.metric, v2._threads) == ("vv", 8, "l1", 1)


def test_unpicklable_states_are_refused(tmp_path):
    mem = KVault(":memory:", shared=False)
    with pytest.raises(TypeError, match="in-memory"):
        pickle.dumps(mem)
    mem.close()
    with pytest.raises(ValueError, match="closed"):
        pickle.dumps(mem)

    kv = KVault(str(tmp_path / "a.db"), shared=False)
    kv.enable_cache()
    with kv.lock_cache():
        kv[b"k"] = 1
        with pytest.raises(TypeError, match="lock_cache"):
            pickle.dumps(kv)
    assert pickle.loads(pickle.dumps(kv))[b"k"] == 1  # flushed once unlocked
    kv.close()

    tv = TextVault(str(tmp_path / "t.db"))
    tv.close()
    with pytest.raises(ValueError, match="closed"):
        pickle.dumps(tv)
