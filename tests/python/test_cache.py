"""The KVault write-back cache (docs/api.md §4.7): flush rules, lock, the
context managers, the flush daemon, and that no write is ever dropped."""

import io
import threading
import time

import pytest

from kohakuvault import InvalidArgument, KVault


def stored(path, key):
    """Whether `key` has a row, seen by a separate connection."""
    import sqlite3

    con = sqlite3.connect(path)
    try:
        kb = key.encode() if isinstance(key, str) else key
        return con.execute("SELECT 1 FROM kv WHERE key=?", (kb,)).fetchone() is not None
    finally:
        con.close()


def test_cache_visibility(kv, db_path):
    kv.enable_cache(cap_bytes=1 << 20, flush_threshold=1 << 19)
    kv["a"] = {"x": 1}
    kv["b"] = b"raw"
    assert kv["a"] == {"x": 1}            # get sees the cache
    assert kv.get("b") == b"raw"
    out = io.BytesIO()
    assert kv.get_to_file("b", out) == 3  # get_to_file too
    assert out.getvalue() == b"raw"
    assert len(kv) == 0                   # len, exists, in, keys: SQLite only
    assert kv.exists("a") is False
    assert "a" not in kv
    assert list(kv.keys()) == []
    assert not stored(db_path, "a")
    assert kv.flush_cache() == 2
    assert kv.flush_cache() == 0          # empty
    assert len(kv) == 2 and stored(db_path, "a")
    assert kv["a"] == {"x": 1}


def test_overwrite_in_cache_keeps_latest(kv):
    kv.enable_cache(cap_bytes=1 << 20, flush_threshold=1 << 19)
    kv["k"] = 1
    kv["k"] = 2
    assert kv["k"] == 2
    assert kv.flush_cache() == 1
    assert kv["k"] == 2


def test_flush_threshold_triggers_flush(kv, db_path):
    kv.enable_cache(cap_bytes=10_000, flush_threshold=1_000)
    for i in range(9):
        kv[f"k{i}"] = b"x" * 98           # 100 bytes each with the 2-byte key
    assert len(kv) == 0
    kv["k9"] = b"x" * 98                  # counter reaches 1000 -> flush
    assert len(kv) == 10


def test_value_larger_than_cap_bypasses(kv, db_path):
    kv.enable_cache(cap_bytes=1_000, flush_threshold=900)
    kv["small"] = b"s" * 10
    kv["big"] = b"B" * 2_000              # flushes the cache, then writes directly
    assert stored(db_path, "big")
    assert stored(db_path, "small")
    assert kv["big"] == b"B" * 2_000


def test_overflow_flushes_then_caches(kv, db_path):
    kv.enable_cache(cap_bytes=1_000, flush_threshold=100_000)
    kv["a"] = b"a" * 598                  # 600 bytes
    kv["b"] = b"b" * 598                  # would exceed 1000: flush 'a', cache 'b'
    assert stored(db_path, "a")
    assert not stored(db_path, "b")
    assert kv["b"] == b"b" * 598
    assert kv.flush_cache() == 1


def test_delete_drops_cached_entry(kv, db_path):
    kv.enable_cache(cap_bytes=1 << 20, flush_threshold=1 << 19)
    kv["k"] = b"v"
    del kv["k"]                            # may-fix: no KeyError, entry dropped
    assert kv.get("k") is None
    kv.flush_cache()
    assert not stored(db_path, "k")
    kv["s"] = b"stored"
    kv.flush_cache()
    kv["s"] = b"cached"
    assert kv.delete("s") is True
    kv.flush_cache()
    assert kv.get("s") is None and not stored(db_path, "s")


def test_lock_cache_refuses_flush_but_never_drops(kv, db_path):
    kv.enable_cache(cap_bytes=2_000, flush_threshold=1_000)
    with kv.lock_cache() as nothing:
        assert nothing is None
        for i in range(50):                # far beyond threshold and cap
            kv[f"k{i:02d}"] = bytes([i]) * 98
        assert kv.flush_cache() == 0
        kv["huge"] = b"H" * 5_000          # larger than the cap: written directly
        assert stored(db_path, "huge")
        for i in range(50):
            assert kv[f"k{i:02d}"] == bytes([i]) * 98
    assert kv.flush_cache() >= 0
    kv.disable_cache()
    assert len(kv) == 51
    for i in range(50):
        assert kv[f"k{i:02d}"] == bytes([i]) * 98


def test_disable_while_locked_writes_entries(kv, db_path):
    kv.enable_cache(cap_bytes=1 << 20, flush_threshold=1 << 19)
    with kv.lock_cache():
        kv["a"] = 1
        kv["b"] = 2
        kv.disable_cache()
    assert stored(db_path, "a") and stored(db_path, "b")
    assert kv["a"] == 1


def test_lock_cleared_on_exception(kv):
    kv.enable_cache(cap_bytes=1 << 20, flush_threshold=1 << 19)
    with pytest.raises(RuntimeError):
        with kv.lock_cache():
            kv["a"] = 1
            raise RuntimeError("inside")
    assert kv.flush_cache() == 1  # no longer locked


def test_close_flushes_even_when_locked(db_path):
    kv = KVault(db_path)
    kv.enable_cache(cap_bytes=1 << 20, flush_threshold=1 << 19)
    kv["x"] = "cached"
    cm = kv.lock_cache()
    cm.__enter__()
    kv["y"] = "cached while locked"
    kv.close()
    with KVault(db_path) as again:
        assert again["x"] == "cached"
        assert again["y"] == "cached while locked"


def test_reenable_flushes_existing_cache(kv, db_path):
    kv.enable_cache(cap_bytes=1 << 20, flush_threshold=1 << 19)
    kv["a"] = 1
    kv.enable_cache(cap_bytes=1 << 20, flush_threshold=1 << 19)  # may-fix: flush first
    assert stored(db_path, "a")
    assert kv["a"] == 1


def test_cache_context_manager(kv, db_path):
    with kv.cache(cap_bytes=4_000) as v:
        assert v is kv
        for i in range(9):
            v[f"k{i}"] = b"x" * 98         # 900 bytes < 1000 (= cap // 4)
        assert len(kv) == 0
        v["k9"] = b"x" * 98                # reaches cap // 4 -> flush
        assert len(kv) == 10
        v["tail"] = b"t"
        assert not stored(db_path, "tail")
    assert stored(db_path, "tail")         # flushed on exit
    kv["after"] = b"a"                     # cache disabled: direct write
    assert stored(db_path, "after")


def test_cache_context_manager_flushes_on_exception(kv, db_path):
    with pytest.raises(ZeroDivisionError):
        with kv.cache():
            kv["a"] = "x"
            1 / 0
    assert stored(db_path, "a")
    kv["b"] = "y"
    assert stored(db_path, "b")


def test_cache_context_manager_without_auto_flush_still_writes(kv, db_path):
    with kv.cache(auto_flush=False):
        kv["a"] = "x"
    assert stored(db_path, "a")           # disable_cache flushes anyway


def test_enable_cache_is_keyword_only_and_validated(kv):
    with pytest.raises(TypeError):
        kv.enable_cache(1000, 100)
    with pytest.raises(InvalidArgument):
        kv.enable_cache(cap_bytes=0, flush_threshold=10)
    with pytest.raises(InvalidArgument):
        kv.enable_cache(cap_bytes=100, flush_threshold=10, flush_interval=0)
    kv["x"] = 1
    assert kv["x"] == 1


def test_flush_cache_without_cache(kv):
    kv["a"] = 1
    assert kv.flush_cache() == 0


def _wait_stored(db_path, key, deadline):
    while time.monotonic() < deadline:
        if stored(db_path, key):
            return time.monotonic()
        time.sleep(0.02)
    return None


def test_daemon_flushes_within_interval(db_path):
    interval = 1.0
    slack = 0.35  # scheduling on a shared 2-core machine
    with KVault(db_path) as kv:
        kv.enable_cache(cap_bytes=1 << 24, flush_threshold=1 << 23, flush_interval=interval)
        assert kv._daemon is not None and kv._daemon.daemon
        for key in ("first", "second"):
            t0 = time.monotonic()
            kv[key] = b"v"
            assert not stored(db_path, key)
            seen = _wait_stored(db_path, key, t0 + interval + 0.5 + slack + 2.0)
            assert seen is not None, "daemon never flushed"
            assert seen - t0 <= interval + 0.5 + slack, f"flushed after {seen - t0:.2f}s"
        t = kv._daemon
        kv.disable_cache()
        assert not t.is_alive()
        assert kv._daemon is None


def test_daemon_replaced_and_stopped_by_close(db_path):
    kv = KVault(db_path)
    kv.enable_cache(cap_bytes=1 << 20, flush_threshold=1 << 19, flush_interval=5.0)
    first = kv._daemon
    kv.enable_cache(cap_bytes=1 << 20, flush_threshold=1 << 19, flush_interval=0.5)
    assert not first.is_alive()
    second = kv._daemon
    assert second.is_alive()
    kv["k"] = 1
    kv.close()
    assert not second.is_alive()
    with KVault(db_path) as again:
        assert again["k"] == 1


def test_concurrent_puts_with_daemon_lose_nothing(db_path):
    with KVault(db_path) as kv:
        kv.enable_cache(cap_bytes=64_000, flush_threshold=16_000, flush_interval=0.2)
        errors = []

        def writer(tid):
            try:
                for i in range(2_000):
                    kv[f"t{tid}/{i:05d}"] = {"tid": tid, "i": i}
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        kv.disable_cache()
        assert len(kv) == 6_000
        assert kv["t2/01999"] == {"tid": 2, "i": 1999}
