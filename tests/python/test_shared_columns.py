"""ColumnVault through the writer (docs/shared-mode.md, "Every class
through the writer"): while a kvault-writer serves the file, column writes
(create, extend/append, item and slice assignment, insert, delete, clear,
delete_column, the write-back cache's flushes) are table operations the
writer applies (EXEC, class COLUMN); reads stay on the vault's own
connection.

Real writer processes on temp databases, real child processes; every
writer is stopped in ``finally`` and every child reaped.
"""

import gc
import multiprocessing as mp
import os
import signal
import sqlite3
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from kohakuvault import ColumnVault

from test_shared_classes import _execs, _outcome
from test_shared_mode import WRITER, Writer

pytestmark = pytest.mark.skipif(WRITER is None, reason="kvault-writer is not built")


def _dump(db):
    """The column tables as rows: what an embedded and an attached run must
    leave alike."""
    con = sqlite3.connect(db)
    try:
        schema = sorted(r[0] for r in con.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name LIKE 'col%'"))
        return schema, {t: con.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                        for t in ("col_meta", "col_chunks")}
    finally:
        con.close()


def _script(db):
    """One fixed sequence of column writes and reads; the outcome of every call."""
    cv = ColumnVault(db)
    a = cv.create_column("a", "i64")
    s = cv.create_column("s", "str")
    f = cv.create_column("f", "f64")
    steps = [
        lambda: a.extend(np.arange(50_000, dtype=np.int64)),  # 400 KB: the memfd carries it
        lambda: a.extend([1, 2, 3]),
        lambda: a.append(7),
        lambda: a.extend(["x"]),
        lambda: a.__setitem__(5, -5),
        lambda: a.__setitem__(slice(10, 13), [100, 101, 102]),
        lambda: a.__setitem__(10**6, 1),
        lambda: a.insert(0, -1),
        lambda: a.insert(10**6, 1),
        lambda: a.__delitem__(2),
        lambda: a.__delitem__(10**6),
        lambda: (len(a), a[0], a[5], a[11], a[-1]),
        lambda: a[49_990:50_010],
        lambda: s.extend(["one", "two", "three" * 1000, ""]),
        lambda: s.append("four"),
        lambda: s.__setitem__(1, "a longer second value"),
        lambda: s.__setitem__(slice(0, 2), ["x", "y"]),
        lambda: s.insert(0, "no"),
        lambda: s.__delitem__(0),
        lambda: list(s),
        lambda: f.extend(np.linspace(0, 1, 1000)),
        lambda: float(f[999]),
        lambda: cv.create_column("a", "i64"),
        lambda: cv.create_column("bad", "nonsense"),
        lambda: sorted(cv.list_columns()),
        lambda: f.clear(),
        lambda: len(f),
        lambda: cv.delete_column("f"),
        lambda: cv.delete_column("f"),
        lambda: cv.delete_column("s"),
    ]
    out = [_outcome(step) for step in steps]
    del cv
    return out


def test_same_results_exceptions_and_tables_attached_and_embedded(tmp_path):
    """The same script on an embedded file and on a served one: the same
    results and exceptions, the same column tables, and the served run's
    writes went through the writer (one EXEC per write call)."""
    runs = {}
    for where in ("embedded", "attached"):
        db = str(tmp_path / f"{where}.db")
        w = Writer(db) if where == "attached" else None
        try:
            runs[where] = (_script(db), _dump(db), _execs(db) if w else 0)
        finally:
            if w:
                w.kill(signal.SIGTERM)
    (emb, emb_tables, _), (att, att_tables, execs) = runs["embedded"], runs["attached"]
    assert len(emb) == len(att)
    assert [i for i, (x, y) in enumerate(zip(emb, att)) if x != y] == [], list(zip(emb, att))
    # 3 creates, 15 column writes, the duplicate create, 3 drops (the other
    # steps fail in Python first or only read)
    assert execs == 22
    assert emb_tables == att_tables


def test_one_operation_per_extend_and_reads_see_the_writes(tmp_path):
    db = str(tmp_path / "ryw.db")
    w = Writer(db)
    try:
        cv = ColumnVault(db)
        other = ColumnVault(db)
        col = cv.create_column("x", "i64")
        seen = other["x"]
        before = _execs(db)
        for i in range(30):
            col.extend(np.arange(i * 1000, (i + 1) * 1000, dtype=np.int64))
            assert len(col) == (i + 1) * 1000
            assert col[i * 1000 + 999] == i * 1000 + 999
            assert len(seen) == (i + 1) * 1000          # another object: its read cache
            assert seen[i * 1000] == i * 1000           # notices the writer's commits
        assert _execs(db) - before == 30
        assert np.array_equal(np.array(list(col)),
                              np.arange(30_000))
        del cv
        del other
    finally:
        w.kill(signal.SIGTERM)


def test_write_back_cache_flushes_through_the_writer(tmp_path):
    db = str(tmp_path / "cache.db")
    cv = ColumnVault(db)
    col = cv.create_column("c", "i64")
    var = cv.create_column("v", "bytes")
    col.enable_cache(1 << 20, 1 << 19)
    var.enable_cache(1 << 20, 1 << 19)
    col.append(-1)            # cached before any writer serves the file
    var.append(b"early")
    w = Writer(db)
    try:
        for i in range(200):
            col.append(i)
            var.append(b"v%d" % i)
        assert _execs(db) == 0                     # still in the caches
        assert col.flush_cache() == 201 * 8
        assert _execs(db) == 1
        var.disable_cache()
        assert _execs(db) == 2
        assert list(col) == [-1, *range(200)]
        assert list(var) == [b"early", *(b"v%d" % i for i in range(200))]
        col.append(500)
        del col, var, cv                           # a closing column's cache goes too
        gc.collect()
        assert _execs(db) == 3
        assert len(ColumnVault(db)["c"]) == 202
    finally:
        w.kill(signal.SIGTERM)


def _extender(db, worker, n):
    """Extend two columns n times with values tagged by worker; return the
    failures."""
    cv = ColumnVault(db)
    nums, names = cv["nums"], cv["names"]
    errors = []
    for i in range(n):
        try:
            nums.extend(np.arange(100, dtype=np.int64) + (worker * 1_000_000 + i * 100))
            names.extend([f"{worker}:{i}:{j}" for j in range(5)])
        except Exception as exc:  # reported to the test, which asserts on it
            errors.append(repr(exc))
    del cv
    return errors


def test_three_processes_extend_through_the_writer(tmp_path):
    db = str(tmp_path / "three.db")
    cv = ColumnVault(db)
    cv.create_column("nums", "i64")
    cv.create_column("names", "str")
    del cv
    n = 60
    w = Writer(db)
    try:
        with ProcessPoolExecutor(3, mp_context=mp.get_context("spawn")) as pool:
            results = list(pool.map(_extender, [db] * 3, range(3), [n] * 3, timeout=300))
        execs, failed = _execs(db), _execs(db, failed=True)
    finally:
        w.kill(signal.SIGTERM)
    assert results == [[], [], []]
    assert (execs, failed) == (3 * 2 * n, 0)
    cv = ColumnVault(db)
    nums = sorted(cv["nums"])
    assert nums == sorted(k * 1_000_000 + i for k in range(3) for i in range(n * 100))
    names = list(cv["names"])
    assert sorted(names) == sorted(f"{k}:{i}:{j}" for k in range(3) for i in range(n)
                                   for j in range(5))
    # each extend landed whole: a worker's 5 names are adjacent
    for at in range(0, len(names), 5):
        assert len({x.rsplit(":", 1)[0] for x in names[at:at + 5]}) == 1
    del cv


def test_vault_opened_before_the_writer_routes_its_next_write(tmp_path):
    db = str(tmp_path / "early.db")
    cv = ColumnVault(db)
    col = cv.create_column("x", "i64")
    col.extend([1, 2])
    w = Writer(db)
    try:
        assert _execs(db) == 0
        col.extend([3, 4])
        cv.create_column("y", "str")
        assert _execs(db) == 2
        assert list(col) == [1, 2, 3, 4]
    finally:
        w.kill(signal.SIGTERM)
    del cv


def test_writer_stopped_cleanly_continues_embedded_within_a_second(tmp_path):
    db = str(tmp_path / "stop.db")
    w = Writer(db)
    cv = ColumnVault(db)
    col = cv.create_column("x", "i64")
    try:
        col.extend([1, 2])
        assert _execs(db) == 2
    finally:
        w.kill(signal.SIGTERM)
    t0 = time.monotonic()
    col.extend([3])
    col[0] = 10
    assert time.monotonic() - t0 < 1.0
    w = Writer(db)
    try:
        col.append(4)
        assert _execs(db) == 1
    finally:
        w.kill(signal.SIGTERM)
    assert list(col) == [10, 2, 3, 4]
    del cv



def test_forked_child_extends_through_the_writer(tmp_path):
    """In a forked child the inherited vault opens its own connection, and
    its own connection to the writer, at its first write."""
    db = str(tmp_path / "fork.db")
    w = Writer(db)
    try:
        cv = ColumnVault(db)
        col = cv.create_column("x", "i64")
        col.extend([1, 2])
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child reports its length, or the failure, and exits
            try:
                col.extend([100, 101])
                os.write(wfd, str(len(col)).encode())
            except Exception as exc:  # reported to the test, which asserts on it
                os.write(wfd, repr(exc).encode()[:4000])
            os._exit(0)
        os.close(wfd)
        got = os.read(rfd, 4096).decode()
        os.close(rfd)
        os.waitpid(pid, 0)
        assert got == "4"
        col.extend([3])
        assert _execs(db) == 4
        assert list(col) == [1, 2, 100, 101, 3]
        del col, cv
    finally:
        w.kill(signal.SIGTERM)


def _col_id(db, name):
    with sqlite3.connect(db) as con:
        return con.execute("SELECT col_id FROM col_meta WHERE name = ?", (name,)).fetchone()[0]


def _stale_handle_outcome(db):
    """A handle whose column another object deleted, and whose col_id a new
    column took: what its write does, and what the new column holds."""
    cv1 = ColumnVault(db)
    a = cv1.create_column("a", "i64")
    a.extend([1, 2, 3])
    old_id = _col_id(db, "a")
    cv2 = ColumnVault(db)
    cv2.delete_column("a")
    b = cv2.create_column("b", "i64")
    b.extend([7, 8])
    reused = _col_id(db, "b") == old_id
    got = _outcome(lambda: a.append(9))
    after = list(cv2["b"])
    del a, b, cv1, cv2
    gc.collect()
    return reused, got, after


def test_a_stale_handle_never_writes_into_the_column_that_took_its_id(tmp_path):
    """The writer checks the name a routed column write names against the
    row of its col_id: a handle whose column was deleted (its id reused by a
    new column) fails as embedded, and the new column stays intact."""
    results = {}
    for where in ("embedded", "attached"):
        db = str(tmp_path / f"{where}.db")
        w = Writer(db) if where == "attached" else None
        try:
            results[where] = _stale_handle_outcome(db)
        finally:
            if w:
                w.kill(signal.SIGTERM)
    for where, (reused, got, after) in results.items():
        assert reused, where
        assert after == [7, 8], (where, after)
        assert got[:2] == ("raised", "RuntimeError") and "no longer exists" in got[2], (where, got)
    assert results["embedded"][1] == results["attached"][1]
