"""A KVault on a table the writer does not serve (docs/shared-mode.md,
"Every class through the writer"): while a kvault-writer serves the file
for its table (``--table``, default ``kv``), a ``KVault`` on any other
table reads through its own connection and sends every write to the writer
as a table operation (EXEC, class KV), which commits it before replying.

Real writer processes on temp databases, real child processes; every
writer is stopped in ``finally`` and every child reaped.
"""

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from kohakuvault import KVault, KohakuVaultError

from test_shared_classes import _run_workers
from test_shared_mode import WRITER, Writer

pytestmark = pytest.mark.skipif(WRITER is None, reason="kvault-writer is not built")


def _status(db):
    """The writer's STATUS lines as a dict of ints (numeric ones)."""
    with KVault(db) as kv:
        lines = kv._native.status().splitlines()
    return {k: int(v) for k, v in (line.split("=", 1) for line in lines) if v.isdigit()}


def _rows(db, table):
    con = sqlite3.connect(db)
    try:
        return sorted(con.execute(f"SELECT key, value FROM {table}").fetchall())
    finally:
        con.close()


def _outcome(fn):
    try:
        return ("ok", fn())
    except BaseException as exc:  # compared between the two modes
        return ("raised", type(exc).__name__, str(exc))


def _script(kv):
    """A fixed sequence of KVault calls (writes, reads, failures); the
    outcome of every call."""
    out = []
    steps = [
        lambda: kv.__setitem__("a", 1),
        lambda: kv.__setitem__(b"b", {"x": [1, 2.5, None]}),
        lambda: kv.put("c", "text"),
        lambda: kv["a"],
        lambda: kv.get("missing", "dflt"),
        lambda: kv.put_many([("d", b"raw"), ("e", 2), ("a", "again")]),
        lambda: (kv["a"], kv["d"], len(kv)),
        lambda: kv.delete("e"),
        lambda: kv.delete("e"),
        lambda: kv.delete_many(["a", "zz", "c", "a"]),
        lambda: kv.__delitem__("nope"),
        lambda: kv["nope"],
        lambda: kv.__setitem__(3, "bad key type"),
        lambda: kv.put(None, "bad key type"),
        lambda: kv.__setitem__("obj", object()),
        lambda: kv.put_file("f", io.BytesIO(b"0123456789" * 1000)),
        lambda: kv.get("f")[:10],
        lambda: kv.__setitem__("big", bytes(range(256)) * 1200),   # sent in a memfd
        lambda: kv["big"] == bytes(range(256)) * 1200,
        lambda: kv.pop("d"),
        lambda: kv.setdefault("s", 7),
        lambda: kv.setdefault("s", 8),
        lambda: kv.update({"u1": 1, "u2": [2]}),
        lambda: kv.enable_headers(),
        lambda: sorted(kv.keys()),
        lambda: ("u1" in kv, "gone" in kv, kv.exists("u2")),
        lambda: kv.enable_cache(),
        lambda: kv.__setitem__("cached", 9),
        lambda: kv["cached"],
        lambda: kv.flush_cache(),
        lambda: kv.disable_cache(),
        lambda: kv.close(),
        lambda: kv.__setitem__("after", 1),
        lambda: kv["a"],
    ]
    for step in steps:
        out.append(_outcome(step))
    return out


def test_results_equal_embedded(tmp_path):
    """The same calls on table "other": embedded with no writer, and routed
    through a writer serving "kv": same results, same exceptions, same
    rows."""
    emb, routed = str(tmp_path / "emb.db"), str(tmp_path / "routed.db")
    want = _script(KVault(emb, table="other", shared=False))
    w = Writer(routed)
    try:
        kv = KVault(routed, table="other")
        assert kv.shared and kv._native.attached
        before = _status(routed)["execs"]
        got = _script(kv)
        status = _status(routed)
        assert status["execs"] - before >= 10
        assert status["execs_failed"] == 0
    finally:
        w.kill(signal.SIGTERM)
    assert got == want
    assert _rows(routed, "other") == _rows(emb, "other")


def test_attached_and_routed_in_one_process(tmp_path):
    db = str(tmp_path / "both.db")
    w = Writer(db)
    try:
        kv, other = KVault(db), KVault(db, table="other")
        assert kv.shared and other.shared
        assert kv._native.generation is not None      # the segment's
        assert other._native.generation is None       # its own connection's reads
        for i in range(100):
            kv[f"k{i}"] = i
            other[f"k{i}"] = -i
            assert other[f"k{i}"] == -i                # reads its own write at once
        assert [kv[f"k{i}"] for i in range(100)] == list(range(100))
        assert [other[f"k{i}"] for i in range(100)] == [-i for i in range(100)]
        assert len(other) == 100
        # committed on return: another connection sees it now
        assert len(_rows(db, "other")) == 100
        kv.close()
        other.close()
    finally:
        w.kill(signal.SIGTERM)
    assert len(_rows(db, "kv")) == 100


def test_read_cache_drops_a_value_overwritten_by_its_own_routed_write(tmp_path):
    db = str(tmp_path / "rc.db")
    w = Writer(db)
    try:
        other = KVault(db, table="other")
        other["k"] = "old"
        for _ in range(3):
            assert other["k"] == "old"                 # kept by the read cache
        other["k"] = "new"
        assert other["k"] == "new"
        other.put_many([("k", "newer")])
        assert other["k"] == "newer"
        del other["k"]
        assert other.get("k") is None
        other.close()
    finally:
        w.kill(signal.SIGTERM)


def _writer_proc(db, k, n, conn):
    """Child: n puts and a put_many on table "other", then what failed."""
    errors = []
    try:
        kv = KVault(db, table="other", retries=1)
        for i in range(n):
            try:
                kv[f"p{k}:{i}"] = i
            except Exception as exc:  # reported to the parent
                errors.append(repr(exc))
        kv.put_many([(f"m{k}:{i}", i) for i in range(n)])
        conn.send((kv.shared, errors))
        kv.close()
    except Exception as exc:  # reported to the parent
        conn.send((None, [repr(exc)]))


def test_two_processes_write_a_second_table_through_one_writer(tmp_path):
    """Two processes write table "other" at once, with one busy attempt
    each (retries=1): the writer makes every write, none sees SQLite's
    write lock."""
    db = str(tmp_path / "two.db")
    n = 300
    results, status = _run_workers(db, _writer_proc, 2, n)
    for shared, errors in results:
        assert shared is True
        assert errors == []
    assert status["execs"] >= 2 * (n + 1)
    assert status["execs_failed"] == 0
    rows = dict(_rows(db, "other"))
    assert len(rows) == 4 * n
    with KVault(db, table="other", shared=False) as kv:
        assert all(kv[f"p{k}:{i}"] == i and kv[f"m{k}:{i}"] == i
                   for k in range(2) for i in range(n))


def _write_through_a_new_writer(db, kv, key, value):
    """Start a writer of db, make one write with kv: it goes through the
    writer (one table operation more); stop the writer."""
    w = Writer(db)
    try:
        before = _status(db)["execs"]
        kv[key] = value
        assert kv.shared
        assert _status(db)["execs"] - before == 1
    finally:
        w.kill(signal.SIGTERM)


def test_object_opened_before_the_writer_routes_its_next_write(tmp_path):
    """Opened embedded with no writer; a writer of "kv" starts; the next
    write of the "other" table goes through it (its count moves) and lands
    once; after the writer stops the object writes embedded again, and the
    next writer gets its writes again."""
    db = str(tmp_path / "early.db")
    other = KVault(db, table="other")
    other["before"] = 0
    assert not other.shared
    _write_through_a_new_writer(db, other, "after", 1)
    assert other["after"] == 1 and other["before"] == 0
    t0 = time.monotonic()
    other["embedded"] = 2
    assert time.monotonic() - t0 < 1.0
    assert not other.shared
    _write_through_a_new_writer(db, other, "served again", 3)
    assert sorted(other.keys()) == [b"after", b"before", b"embedded", b"served again"]
    other.close()


def test_shared_true_routes_a_table_the_writer_does_not_serve(tmp_path):
    db = str(tmp_path / "req.db")
    with pytest.raises(KohakuVaultError, match="no kvault-writer serves"):
        KVault(db, table="other", shared=True)
    w = Writer(db)
    try:
        with KVault(db, table="other", shared=True) as other:
            other["k"] = "v"
            assert other.shared
        assert _rows(db, "other")[0][0] == b"k"
    finally:
        w.kill(signal.SIGTERM)


def test_spawn_two_tables_share_one_writer(tmp_path):
    """shared="spawn" on two tables of one file: the first opener's table is
    served through the segment, the other goes through the same writer;
    one writer process runs."""
    db = str(tmp_path / "spawn.db")
    code = f"""
import os, sys
from kohakuvault import KVault
db = {db!r}
a = KVault(db, table="first", shared="spawn")
b = KVault(db, table="second", shared="spawn")
a["k"] = "from a"
b["k"] = "from b"
assert a["k"] == "from a" and b["k"] == "from b"
assert a.shared and b.shared
assert a._native.generation is not None and b._native.generation is None
st = dict(l.split("=", 1) for l in a._native.status().splitlines())
print(st["table"], int(st["execs"]) >= 1)
a.close(); b.close()
"""
    env = dict(os.environ, KVAULT_WRITER=WRITER, KVAULT_LINGER_MS="200")
    env.pop("KVAULT_SHARED", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["first", "True"]
    # the writer lingers out; both tables hold their rows
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _served(db):
        time.sleep(0.05)
    assert _rows(db, "first") and _rows(db, "second")
    with KVault(db, table="second", shared=False) as b:
        assert b["k"] == "from b"


def _served(db):
    from kohakuvault import _kvault
    return _kvault._exec_served(db)


def test_forked_child_writes_through_its_own_handle(tmp_path):
    """A routed object used in a forked child opens its own connection and
    its own connection to the writer there; the parent's keep working."""
    db = str(tmp_path / "fork.db")
    w = Writer(db)
    try:
        other = KVault(db, table="other")
        other["parent"] = 1
        before = _status(db)["execs"]
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                other["child"] = 2
                code = 0 if other["child"] == 2 and other["parent"] == 1 else 3
            finally:
                os._exit(code)
        _, st = os.waitpid(pid, 0)
        assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0
        assert _status(db)["execs"] - before == 1
        assert other["child"] == 2
        other["parent again"] = 3
        assert other["parent again"] == 3
        other.close()
    finally:
        w.kill(signal.SIGTERM)
