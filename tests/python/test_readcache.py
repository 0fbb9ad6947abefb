"""The engine's read cache (engine/readcache.c) seen from Python.

A KVault keeps copies of values it read, valid only while SQLite's
WAL-index header is unchanged. These tests check, across real processes,
that a reader never gets a value older than one committed before its read
began, and that the cache is actually used. ``read_cache_bytes`` is a
keyword-only argument of the native ``_KVault`` (the proxy uses its default
of 32 MiB).
"""

import multiprocessing as mp
import random
import struct
import time

import pytest

from kohakuvault import KVault, _kvault

NKEYS = 16
WRITES = 1500


def _writer(path, committed, go):
    """Child: write increasing versions of random keys; publish each
    version in ``committed`` only after its commit returned."""
    kv = KVault(path)
    rng = random.Random(7)
    go.wait()
    for ver in range(1, WRITES + 1):
        i = rng.randrange(NKEYS)
        kv[f"k{i:02d}"] = struct.pack("<Q", ver)
        committed[i] = ver
        if ver % 400 == 0:
            kv.checkpoint()  # let the WAL restart now and then
        time.sleep(rng.random() * 0.0003)
    kv.close()


def test_other_process_writes_are_seen(db_path):
    kv = KVault(db_path)
    kv.disable_auto_pack()
    kv["k"] = b"v1"
    assert kv["k"] == b"v1"
    assert kv["k"] == b"v1"  # cache hit
    for n in range(2, 6):
        p = mp.get_context("spawn").Process(target=_put_one, args=(db_path, b"k", b"v%d" % n))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert kv["k"] == b"v%d" % n
    p = mp.get_context("spawn").Process(target=_delete_one, args=(db_path, b"k"))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    with pytest.raises(KeyError):
        kv["k"]
    kv.close()


def _put_one(path, key, value):
    kv = KVault(path)
    kv.disable_auto_pack()
    kv[key] = value
    kv.close()


def _delete_one(path, key):
    kv = KVault(path)
    del kv[key]
    kv.close()


def test_randomized_two_process_never_stale(db_path):
    ctx = mp.get_context("spawn")
    kv = KVault(db_path)
    kv.disable_auto_pack()
    for i in range(NKEYS):
        kv[f"k{i:02d}"] = struct.pack("<Q", 0)
    committed = ctx.RawArray("Q", NKEYS)
    go = ctx.Event()
    p = ctx.Process(target=_writer, args=(db_path, committed, go))
    p.start()
    go.set()
    rng = random.Random(11)
    reads = 0
    deadline = time.monotonic() + 240
    while p.is_alive() and time.monotonic() < deadline:
        i = rng.randrange(NKEYS)
        before = committed[i]
        got = struct.unpack("<Q", kv[f"k{i:02d}"])[0]
        assert got >= before, f"stale read of k{i:02d}: version {got}, {before} committed before"
        reads += 1
    p.join(60)
    assert p.exitcode == 0
    for i in range(NKEYS):
        assert struct.unpack("<Q", kv[f"k{i:02d}"])[0] == committed[i]
    kv.close()
    assert reads > 1000
    print(f"reads checked: {reads}")


def test_native_read_cache_kwarg(db_path):
    nat = _kvault._KVault(db_path, read_cache_bytes=0)
    nat.disable_auto_pack()
    nat.put(b"a", b"x")
    assert nat.get(b"a") == b"x"
    nat.close()
    with pytest.raises(TypeError):
        _kvault._KVault(db_path, "kv", 1048576, True, 32768, 268435456, 100000, 1 << 20)
    with pytest.raises(ValueError):
        _kvault._KVault(db_path, read_cache_bytes=-1)
    nat = _kvault._KVault(db_path, read_cache_bytes=1 << 20)
    nat.disable_auto_pack()
    assert nat.get(b"a") == b"x"
    nat.close()


def test_proxy_read_cache_kwarg(db_path):
    """KVault(read_cache_bytes=...) reaches the engine: 0 and a small cap
    both read correctly, a negative size is InvalidArgument, and a value
    written by another connection is seen through a warmed cache."""
    from kohakuvault import InvalidArgument

    with pytest.raises(InvalidArgument):
        KVault(db_path, read_cache_bytes=-1)
    for cap in (0, 1 << 16):
        kv = KVault(db_path, read_cache_bytes=cap)
        kv["k"] = b"old"
        assert kv["k"] == b"old" and kv["k"] == b"old"  # second read may hit
        other = KVault(db_path)
        other["k"] = b"new"
        other.close()
        assert kv["k"] == b"new"
        kv.close()
