"""Write modes and batches (docs/shared-mode.md, "Write modes").

``KVault(path, write_mode="applied" | "pipelined")``, ``put(..., write_mode=,
sync=)``, ``flush()``, ``put_many``, ``update``, ``delete_many``: in shared
mode against a real kvault-writer process (and other attached processes),
and in embedded mode where the calls have a meaning there.
"""

import contextlib
import multiprocessing as mp
import signal
import sqlite3

import pytest

from kohakuvault import KVault
from kohakuvault.errors import InvalidArgument

from test_shared_mode import WRITER, Writer, pipe_child


# A writer that commits only when asked (sync=True, len(), keys(), close):
# what plain sqlite3 sees is then exactly what was committed on request.
NO_AUTO_COMMIT = ("--commit-interval-ms", "3600000", "--batch-size", "100000000")


@contextlib.contextmanager
def serving(tmp_path, name, *extra):
    """(path, Writer) of tmp_path/name served by a kvault-writer started
    with the options `extra`; the writer is stopped on exit."""
    if WRITER is None:
        pytest.skip("kvault-writer is not built")
    path = str(tmp_path / name)
    w = Writer(path, *extra)
    try:
        yield path, w
    finally:
        w.kill(signal.SIGTERM)


@pytest.fixture(params=["embedded", "shared"])
def db(request, tmp_path):
    """A database path, served by a kvault-writer for the "shared" run."""
    if request.param == "embedded":
        yield str(tmp_path / "modes.db")
        return
    with serving(tmp_path, "modes.db") as (path, _):
        yield path


def _open(path, **kw):
    """KVault on path, attached exactly when a writer serves it."""
    return KVault(path, **kw)


def _sqlite_rows(path):
    """Every committed row, read with the stdlib sqlite3 module (no commit
    is requested from a writer)."""
    con = sqlite3.connect(path)
    try:
        return dict(con.execute("SELECT key, value FROM kv").fetchall())
    finally:
        con.close()


def _reader(db, conn):
    """Child process: for each list of keys received, reply with their
    values (None when missing) read through its own attached KVault."""
    kv = KVault(db, shared=True)
    while True:
        keys = conn.recv()
        if keys is None:
            break
        conn.send([kv.get(k) for k in keys])
    kv.close()


# ---- the option ------------------------------------------------------------


def test_write_mode_default_and_property(db):
    with _open(db) as kv:
        assert kv.write_mode == "applied"
        assert kv._native.write_mode == "applied"
    with _open(db, write_mode="pipelined") as kv:
        assert kv.write_mode == "pipelined"
        assert kv._native.write_mode == "pipelined"
    with _open(db, write_mode="applied") as kv:
        assert kv.write_mode == "applied"


@pytest.mark.parametrize("bad", ["", "Applied", "sync", None, 1, b"pipelined", "quorum"])
def test_write_mode_validation(tmp_path, bad):
    path = str(tmp_path / "v.db")
    with pytest.raises(InvalidArgument, match="'applied', 'pipelined' or 'replicated'"):
        KVault(path, write_mode=bad)
    with KVault(path) as kv:
        if bad is not None:   # None is "the object's mode" for one call
            with pytest.raises(InvalidArgument, match="'applied', 'pipelined' or 'replicated'"):
                kv.put("k", 1, write_mode=bad)
            assert "k" not in kv
        with pytest.raises(ValueError, match="'applied', 'pipelined' or 'replicated'"):
            kv._native.put("k", 1, write_mode="nope")


def test_write_mode_is_keyword_only(tmp_path):
    with pytest.raises(TypeError):
        KVault(str(tmp_path / "k.db"), "pipelined")  # noqa: positional is not accepted


# ---- pipelined: read your own writes ----------------------------------------


def test_pipelined_put_is_read_back_at_once(db):
    with _open(db, write_mode="pipelined") as kv:
        for i in range(300):
            kv[f"k{i}"] = i
            assert kv[f"k{i}"] == i
            assert f"k{i}" in kv
            assert kv.exists(f"k{i}")
            assert kv.get(f"k{i}") == i
        kv.put("p", "v", write_mode="pipelined")
        assert kv["p"] == "v"
        assert len(kv) == 301
        assert sorted(kv.keys(prefix="k"))[:3] == [b"k0", b"k1", b"k10"]
        kv.flush()
        assert len(kv) == 301


def test_pipelined_put_replaces_the_hot_cached_value(db):
    with _open(db, write_mode="pipelined") as kv:
        kv["h"] = "v0"
        kv.flush()
        assert kv["h"] == "v0"
        assert kv["h"] == "v0"
        if kv.shared:
            # the value is served from the hot-value cache now
            before = kv._native.counters()[2]
            assert kv["h"] == "v0"
            assert kv._native.counters()[2] == before + 1
        for i in range(1, 200):
            kv["h"] = f"v{i}"
            assert kv["h"] == f"v{i}"
            del kv["h"]
            assert kv.get("h") is None
            assert "h" not in kv
            kv["h"] = f"w{i}"
            assert kv["h"] == f"w{i}"


def test_flush_is_a_barrier_for_other_processes(tmp_path):
    with serving(tmp_path, "barrier.db") as (path, _):
        with pipe_child(_reader, path) as conn:
            kv = KVault(path, shared=True, write_mode="pipelined")
            keys = [f"k{i}" for i in range(3000)]
            for i, k in enumerate(keys):
                kv[k] = i
            kv.flush()
            conn.send(keys)
            assert conn.recv() == list(range(3000))
            # deletes and batches too
            assert kv.delete_many(keys[:1000]) == 1000
            kv.put_many([(k, -1) for k in keys[1000:2000]])
            kv.update({"u": "x"})
            kv.flush()
            conn.send(keys + ["u"])
            assert conn.recv() == [None] * 1000 + [-1] * 1000 + list(range(2000, 3000)) + ["x"]
            # a large pipelined batch: the ring holds records the writer has
            # not applied yet when put_many returns; flush() waits for them
            kv.put_many([(f"b{i:06d}", i) for i in range(100_000)])
            kv.flush()
            conn.send(["b099999", "b099998", "b050000"])
            assert conn.recv() == [99_999, 99_998, 50_000]
            # a per-call "applied" put is seen by the other process at once
            kv.put("now", 7, write_mode="applied")
            conn.send(["now"])
            assert conn.recv() == [7]
            conn.send(None)
            kv.close()


def test_flush_then_writer_crash_loses_nothing(tmp_path):
    with serving(tmp_path, "crash.db", *NO_AUTO_COMMIT) as (path, w):
        kv = KVault(path, shared=True, write_mode="pipelined")
        n = 20_000
        for i in range(n):
            kv[f"key{i:06d}"] = f"value{i}".encode()
        kv.delete_many([f"key{i:06d}" for i in range(0, n, 10)])
        # the ring still holds most of this batch when put_many returns
        kv.put_many([(f"bat{i:06d}", b"b") for i in range(100_000)])
        kv.flush()
        assert len(_sqlite_rows(path)) == 0, "flush() must not need a commit"
        w.kill(signal.SIGKILL)
        w.start()  # replays the applied records of the old segment
        rows = _sqlite_rows(path)
        assert len(rows) == n - n // 10 + 100_000
        assert all(rows[f"key{i:06d}".encode()] == f"value{i}".encode()
                   for i in range(n) if i % 10)
        assert all(rows[f"bat{i:06d}".encode()] == b"b" for i in range(100_000))
        kv.put("after", b"1")  # re-attaches by itself
        assert kv["after"] == b"1"
        kv.close()


def test_sync_put_in_pipelined_mode_is_committed(tmp_path):
    with serving(tmp_path, "sync.db", *NO_AUTO_COMMIT) as (path, _):
        kv = KVault(path, shared=True, write_mode="pipelined")
        kv.put("before", b"b")
        kv.put("late", b"l")
        kv.flush()
        assert _sqlite_rows(path) == {}  # applied, not committed
        kv.put("s", b"committed", sync=True)
        rows = _sqlite_rows(path)
        assert rows[b"s"] == b"committed"
        assert rows[b"before"] == b"b"  # committed with everything before it
        kv.put("t", b"x", sync=True, write_mode="pipelined")
        assert _sqlite_rows(path)[b"t"] == b"x"
        kv.close()


def test_embedded_flush_writes_the_write_back_cache(tmp_path):
    path = str(tmp_path / "emb.db")
    with KVault(path, shared=False, write_mode="pipelined") as kv:
        kv["plain"] = b"p"
        assert _sqlite_rows(path) == {b"plain": b"p"}  # pipelined changes nothing here
        assert kv.flush() is None
        kv.enable_cache()
        kv["cached"] = b"c"
        assert b"cached" not in _sqlite_rows(path)
        with kv.lock_cache():
            kv.flush()  # a locked cache refuses, as flush_cache() does
            assert b"cached" not in _sqlite_rows(path)
        assert kv.flush() is None
        assert _sqlite_rows(path)[b"cached"] == b"c"
        kv.disable_cache()
    kv = KVault(path, shared=False)
    kv.close()
    with pytest.raises(ValueError):
        kv.flush()


# ---- batches -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["applied", "pipelined"])
def test_put_many_update_delete_many(db, mode):
    with _open(db, write_mode=mode) as kv:
        kv.put_many([("a", 1), (b"b", "two"), ("c", [3])])
        kv.put_many({"d": 4.5, "e": None})
        kv.put_many(iter([("f", b"raw")]))
        kv.put_many([])
        assert dict(kv) == {b"a": 1, b"b": "two", b"c": [3], b"d": 4.5, b"e": None, b"f": b"raw"}
        kv.update({"a": 10}, g=7)
        kv.update((f"n{i}", i) for i in range(10_000))
        assert kv["a"] == 10 and kv["g"] == 7 and kv["n9999"] == 9999
        assert len(kv) == 7 + 10_000
        assert kv.delete_many([f"n{i}" for i in range(10_000)]) == 10_000
        assert kv.delete_many(["a", b"a", "a", "missing", "b"]) == 2  # "a" and b"a": one key
        assert kv.delete_many([]) == 0
        assert kv.delete_many(k for k in ["c"]) == 1
        assert kv.delete_many(("c", "d")) == 1
        assert dict(kv) == {b"e": None, b"f": b"raw", b"g": 7}
        kv.flush()
    with _open(db) as kv:   # another object sees the end state
        assert dict(kv) == {b"e": None, b"f": b"raw", b"g": 7}


@pytest.mark.parametrize("mode", ["applied", "pipelined"])
def test_bad_batches_store_nothing(db, mode):
    with _open(db, write_mode=mode) as kv:
        kv["keep"] = 1
        with pytest.raises(InvalidArgument):
            kv.put_many([("a", 1), (5, 2)])
        with pytest.raises(InvalidArgument):
            kv.put_many([("a", 1), ("b",)])
        with pytest.raises(InvalidArgument):
            kv.put_many(42)
        with pytest.raises(InvalidArgument):
            kv.delete_many(["keep", 5])
        with pytest.raises(InvalidArgument):
            kv.delete_many("keep")   # one key, not an iterable of keys
        with pytest.raises(InvalidArgument):
            kv.delete_many(7)
        assert dict(kv) == {b"keep": 1}


@pytest.mark.parametrize("mode", ["applied", "pipelined"])
def test_update_with_a_bad_pair_stores_nothing(db, mode):
    # update() is one put_many batch: every pair is checked before any is
    # submitted, so a bad pair anywhere leaves the vault as it was.
    with _open(db, write_mode=mode) as kv:
        kv["keep"] = 1
        pairs = [(f"k{i}", i) for i in range(5000)]
        with pytest.raises(InvalidArgument):
            kv.update(pairs + [(5, "bad key"), ("after", 1)])
        kv.disable_auto_pack()   # values must now be bytes-like
        with pytest.raises(InvalidArgument, match="bytes-like"):
            kv.update([("x", b"1"), ("y", 2), ("z", b"3")])
        with pytest.raises(InvalidArgument):
            kv.update([("m", b"1"), ("malformed",), ("n", b"2")])
        kv.flush()
        assert len(kv) == 1 and list(kv) == [b"keep"]


@pytest.mark.parametrize("mode", ["applied", "pipelined"])
def test_batches_larger_than_the_ring(db, mode):
    # 6,000 values of 1 KiB fill the 4 MiB ring; a 3 MiB value is sent as a
    # stream (larger than half the ring) between the others.
    big = bytes(range(256)) * (3 * 4096)
    items = [(f"r{i}", bytes([i % 251]) * 1024) for i in range(6000)]
    items.insert(3000, ("big", big))
    with _open(db, write_mode=mode) as kv:
        kv.put_many(items)
        assert kv["big"] == big and kv["r5999"] == bytes([5999 % 251]) * 1024
        kv.flush()
    with _open(db) as other:
        assert other["big"] == big
        assert all(other[k] == v for k, v in items[::500])
        assert other.delete_many([k for k, _ in items]) == 6001
        assert len(other) == 0


def test_put_many_is_applied_for_other_processes_when_it_returns(tmp_path):
    with serving(tmp_path, "applied.db") as (path, _):
        with pipe_child(_reader, path) as conn:
            kv = KVault(path, shared=True)   # applied
            kv.put_many([(f"k{i}", i) for i in range(2000)])
            conn.send([f"k{i}" for i in range(0, 2000, 7)])
            assert conn.recv() == list(range(0, 2000, 7))
            assert kv.delete_many([f"k{i}" for i in range(0, 2000, 7)]) == len(range(0, 2000, 7))
            conn.send([f"k{i}" for i in range(0, 2000, 7)])
            assert conn.recv() == [None] * len(range(0, 2000, 7))
            conn.send(None)
            kv.close()


def test_forked_child_pipelined_writes(tmp_path):
    """A forked child's pipelined writes are its own (own ring), applied by
    flush() before it exits."""
    with serving(tmp_path, "fork.db") as (path, _):
        kv = KVault(path, shared=True, write_mode="pipelined")
        kv["parent"] = 1
        ctx = mp.get_context("fork")
        p = ctx.Process(target=_fork_writes, args=(kv,))
        p.start()
        p.join(timeout=60)
        assert p.exitcode == 0
        assert kv["parent"] == 1
        assert [kv[f"c{i}"] for i in range(100)] == list(range(100))
        kv.close()


def _fork_writes(kv):
    for i in range(100):
        kv[f"c{i}"] = i
    kv.flush()
