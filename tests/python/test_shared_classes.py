"""TextVault and VectorKVault through the writer (docs/shared-mode.md,
"Every class through the writer"): while a kvault-writer serves the file,
their writes are table operations the writer applies (EXEC), their reads
stay on the object's own connection.

Real writer processes on temp databases, real child processes; every
writer is stopped in ``finally`` and every child reaped.
"""

import multiprocessing as mp
import os
import signal
import sqlite3
import time

import numpy as np
import pytest

from kohakuvault import KVault, TextVault, VectorKVault

from test_shared_mode import WRITER, Writer, _reap

pytestmark = pytest.mark.skipif(WRITER is None, reason="kvault-writer is not built")


def _execs(db, failed=False):
    """The writer's count of table operations received (STATUS) that are
    writes of the stores (the requests for blocks of ids of pipelined
    inserts, and their returns, aside), or of those that failed."""
    with KVault(db) as kv:
        status = dict(line.split("=", 1) for line in kv._native.status().splitlines())
    if failed:
        return int(status["execs_failed"])
    return int(status["execs"]) - int(status["exec_leases"])


def _dump(db):
    """Every table of the stores as sorted rows (FTS5 shadow tables aside),
    and the schema: what an embedded and an attached run must leave alike.
    The writer's own tables (kv, kohakuvault_meta with its committed
    sequence) are not the stores'."""
    con = sqlite3.connect(db)
    try:
        names = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE"
            " 'sqlite_%' AND name NOT LIKE 'kv%' AND name != 'kohakuvault_meta'"
            " AND name NOT LIKE '%\\_data' ESCAPE '\\'"
            " AND name NOT LIKE '%\\_idx' ESCAPE '\\' AND name NOT LIKE '%\\_docsize' ESCAPE '\\'"
            " AND name NOT LIKE '%\\_config' ESCAPE '\\' AND name NOT LIKE '%\\_content' ESCAPE '\\'"
            " ORDER BY name")]
        schema = sorted(r[0] for r in con.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'kv%'"
            " AND name != 'kohakuvault_meta'"))
        return schema, {n: sorted(con.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr)
                        for n in names}
    finally:
        con.close()


def _plain(x):
    """x with numpy arrays as lists (comparable with ==)."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    return x


def _outcome(fn):
    try:
        return ("ok", _plain(fn()))
    except Exception as exc:  # compared between the two modes
        cause = exc.__cause__
        return ("raised", type(exc).__name__, str(exc),
                type(cause).__name__ if cause else None, str(cause) if cause else None)


def _script(db):
    """One fixed sequence of writes and reads on both classes; returns the
    outcome of every call."""
    out = []
    tv = TextVault(db, columns=["title", "body"])
    one = TextVault(db, table="notes")
    vk = VectorKVault(db, dimensions=4)
    vl = VectorKVault(db, table="vl2", dimensions=3, metric="l2")
    steps = [
        lambda: tv.insert({"title": "alpha", "body": "first doc"}, {"n": 1}),
        lambda: tv.insert({"title": "beta", "body": "second doc"}, b"raw"),
        lambda: tv.insert({"title": "gamma"}, b"missing column"),
        lambda: tv.update(1, value="changed"),
        lambda: tv.update(2, texts={"title": "beta2", "body": "second doc again"}),
        lambda: tv.update(999, value=b"x"),
        lambda: tv.update(999, texts={"title": "t", "body": "b"}),
        lambda: tv.delete(2),
        lambda: tv.delete(2),
        lambda: tv.search("doc", with_texts=True),
        lambda: tv.get_by_id(1),
        lambda: tv.get_by_id(2),
        lambda: one.insert("a single column", [1, 2, 3]),
        lambda: one.insert("x" * 200_000, b"big text: travels in a memfd"),
        lambda: one.search("single"),
        lambda: one.count_matches("x" * 10),
        lambda: vk.insert([1, 0, 0, 0], b"a"),
        lambda: vk.insert([0, 1, 0, 0], {"b": 2}),
        lambda: vk.insert([1, 2, 3], b"wrong dims"),
        lambda: vk.insert([float("nan"), 0, 0, 0], b"nan"),
        lambda: vk.update(1, vector=[0, 0, 1, 0]),
        lambda: vk.update(1, value=b"a2"),
        lambda: vk.update(999, value=b"x"),
        lambda: vk.update(999, vector=[1, 1, 1, 1]),
        # not the highest id: a pipelining object's next ids stay above a
        # deleted highest id (docs/shared-mode.md, "Pipelined inserts")
        lambda: vk.delete(1),
        lambda: vk.delete(1),
        lambda: vk.insert_many(np.eye(4, dtype=np.float32), [b"e0", "e1", 2, None]),
        # ids of 10,000 rows do not fit one reply packet: the memfd carries them
        lambda: len(vk.insert_many(np.random.default_rng(7).random((10_000, 4), dtype=np.float32),
                                   [i for i in range(10_000)])),
        lambda: vk.search([0, 0, 1, 0], k=3),
        lambda: vk.get_by_id(2),
        lambda: vl.insert([1, 2, 3], b"l2"),
        lambda: vl.search([1, 2, 3], k=1),
        lambda: len(vk),
        lambda: one.clear(),
        lambda: len(one),
    ]
    for step in steps:
        out.append(_outcome(step))
    for s in (tv, one, vk, vl):
        s.close()
    return out


def test_same_results_exceptions_and_tables_attached_and_embedded(tmp_path):
    """The same script on an embedded file and on a served one: every
    result and exception (type, message, native cause) is the same, the
    files hold the same tables, and the served run went through the writer."""
    emb = str(tmp_path / "emb.db")
    att = str(tmp_path / "att.db")
    embedded = _script(emb)
    w = Writer(att)
    try:
        attached = _script(att)
        execs = _execs(att)
    finally:
        w.kill(signal.SIGTERM)
    for i, (a, b) in enumerate(zip(embedded, attached)):
        assert a == b, f"step {i}: embedded {a!r} attached {b!r}"
    assert len(embedded) == len(attached)
    # every write of the script that reaches the engine was one EXEC: 22
    # (the missing column and the wrong dimensions fail before, in Python;
    # the vector with a NaN before it is sent: that insert is pipelined)
    assert execs == 22
    assert _dump(emb) == _dump(att)


def test_reads_its_own_writes_and_other_processes_see_them(tmp_path):
    db = str(tmp_path / "ryw.db")
    w = Writer(db)
    try:
        tv = TextVault(db)
        vk = VectorKVault(db, dimensions=2)
        other = TextVault(db, table="text_vault")
        before = _execs(db)
        for i in range(50):
            doc = tv.insert(f"word{i} common", i)
            assert tv.get_by_id(doc) == (f"word{i} common", i)
            assert [h[0] for h in tv.search(f"word{i}")] == [doc]
            assert other.get_by_id(doc)[1] == i
            row = vk.insert([i, 1], i)
            assert vk.get_by_id(row)[1] == i
        assert _execs(db) - before == 100
        assert len(tv) == 50 and len(vk) == 50
        for s in (tv, vk, other):
            s.close()
    finally:
        w.kill(signal.SIGTERM)


def test_object_opened_before_the_writer_routes_its_next_write(tmp_path):
    """Opened embedded with no writer; a writer starts; the next write goes
    through the writer (its count moves) and lands exactly once."""
    db = str(tmp_path / "early.db")
    tv = TextVault(db)
    vk = VectorKVault(db, dimensions=2)
    tv.insert("before the writer", 0)
    vk.insert([1, 0], 0)
    w = Writer(db)
    try:
        assert _execs(db) == 0
        assert tv.insert("after the writer", 1) == 2
        assert vk.insert([0, 1], 1) == 2
        assert _execs(db) == 2
        assert len(tv) == 2 and len(vk) == 2
    finally:
        w.kill(signal.SIGTERM)
    tv.close()
    vk.close()


def test_writer_stopped_cleanly_continues_embedded_within_a_second(tmp_path):
    db = str(tmp_path / "stop.db")
    w = Writer(db)
    tv = TextVault(db)
    vk = VectorKVault(db, dimensions=2)
    try:
        tv.insert("served", 0)
        vk.insert([1, 0], 0)
        assert _execs(db) == 2
    finally:
        w.kill(signal.SIGTERM)
    t0 = time.monotonic()
    assert tv.insert("embedded now", 1) == 2
    assert vk.insert([0, 1], 1) == 2
    assert time.monotonic() - t0 < 1.0
    # and the next writer gets the writes again
    w = Writer(db)
    try:
        assert tv.insert("served again", 2) == 3
        assert _execs(db) == 1
    finally:
        w.kill(signal.SIGTERM)
    assert [t for t, _ in (tv.get_by_id(i) for i in (1, 2, 3))] == [
        "served", "embedded now", "served again"]
    tv.close()
    vk.close()


def test_shared_off_keeps_writes_embedded(tmp_path, monkeypatch):
    db = str(tmp_path / "off.db")
    w = Writer(db)
    try:
        monkeypatch.setenv("KVAULT_SHARED", "off")
        tv = TextVault(db)
        tv.insert("not through the writer", 0)
        monkeypatch.delenv("KVAULT_SHARED")
        assert _execs(db) == 0
        tv.close()
    finally:
        w.kill(signal.SIGTERM)


def _status(db):
    """The writer's STATUS lines as a dict of ints (numeric ones)."""
    with KVault(db) as kv:
        lines = kv._native.status().splitlines()
    return {k: int(v) for k, v in (l.split("=", 1) for l in lines) if v.isdigit()}



def start_workers(method, db, target, nproc, n):
    """Start nproc processes (multiprocessing start method `method`)
    running target(db, k, n, pipe) for k = 0..nproc-1; return our ends of
    their pipes and the processes."""
    ctx = mp.get_context(method)
    pipes, procs = [], []
    for k in range(nproc):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=target, args=(db, k, n, child))
        p.start()
        procs.append(p)
        pipes.append(parent)
    return pipes, procs


def _run_workers(db, target, nproc, n):
    """Run target(db, k, n, conn) in nproc spawned processes at once under
    a writer of db; return what each sent and the writer's STATUS after
    they exited."""
    w = Writer(db)
    procs = []
    try:
        pipes, procs = start_workers("spawn", db, target, nproc, n)
        results = [c.recv() for c in pipes]
        _reap(*procs)
        return results, _status(db)
    finally:
        w.kill(signal.SIGTERM)
        _reap(*procs)


def _insert_rounds(db, worker, n, tag, bad_every=0):
    """Insert n TextVault documents and n vectors tagged with this worker
    (and `tag`); every bad_every-th round (0: never) also update a document
    that does not exist. Return the ids, the vector ids, the calls that
    raised unexpectedly and the exception types of the updates."""
    tv = TextVault(db)
    vk = VectorKVault(db, dimensions=4)
    ids, vids, errors, failures = [], [], [], []
    for i in range(n):
        try:
            ids.append(tv.insert(f"w{worker} doc{i} {tag}{worker}x{i}", f"{worker}:{i}"))
            vids.append(vk.insert([worker, i, 1, 0], f"{worker}:{i}"))
        except Exception as exc:  # reported to the test, which asserts on it
            errors.append(repr(exc))
        if bad_every and i % bad_every == 0:
            try:
                tv.update(10**9, "nothing", value=b"v")
            except Exception as exc:  # the expected failure, checked by the test
                failures.append(type(exc).__name__)
    tv.close()
    vk.close()
    return ids, vids, errors, failures


def _inserter(db, worker, n, conn):
    """Insert n TextVault documents and n vectors tagged with this worker;
    send back the ids and the calls that raised."""
    conn.send(_insert_rounds(db, worker, n, "tag")[:3])


def test_three_processes_insert_through_the_writer(tmp_path):
    """3 processes insert TextVault and VectorKVault rows at once through a
    writer: no call fails (no `database is locked`), every insert is present
    exactly once, and search and k-NN results equal those of an embedded
    rebuild of the same rows."""
    db = str(tmp_path / "three.db")
    n = 150
    results, status = _run_workers(db, _inserter, 3, n)
    execs, failed = status["execs"] - status["exec_leases"], status["execs_failed"]
    for ids, vids, errors in results:
        assert errors == []
        assert len(ids) == n and len(vids) == n
    assert (execs, failed) == (3 * 2 * n, 0)
    all_ids = [i for ids, _, _ in results for i in ids]
    assert len(set(all_ids)) == 3 * n
    tv = TextVault(db)
    vk = VectorKVault(db, dimensions=4)
    assert len(tv) == 3 * n and len(vk) == 3 * n
    for k in range(3):
        for i in range(0, n, 7):
            assert tv.count_matches(f'"tag{k}x{i}"') == 1
    # an embedded rebuild of the same rows, in the same id order. Pipelined
    # inserts take their ids from blocks each process asked for, so the
    # served documents' and vectors' ids need not follow on without a gap:
    # the rebuild's ids are mapped (in the same order)
    rebuilt = str(tmp_path / "rebuilt.db")
    rt = TextVault(rebuilt, columns=["content"])
    rv = VectorKVault(rebuilt, dimensions=4)
    docs = {}
    for doc in tv.keys(limit=10_000):
        text, value = tv.get_by_id(doc)
        docs[doc] = rt.insert(text, value)
    assert sorted(docs) == sorted(all_ids)
    assert list(docs.values()) == list(range(1, 3 * n + 1))
    all_vids = sorted(v for _, vids, _ in results for v in vids)
    assert len(set(all_vids)) == 3 * n
    rows = {}
    for row in all_vids:   # the same order: ties of equal distance rank alike
        vec, value = vk.get_by_id(row)
        rows[row] = rv.insert(vec, value)
    assert list(rows.values()) == list(range(1, 3 * n + 1))
    for q in ("doc7", "w1", "tag2x14", "doc"):
        assert [(docs[h[0]],) + tuple(h[1:]) for h in tv.search(q, k=20)] == [
            tuple(h) for h in rt.search(q, k=20)]
    for q in ([0, 3, 1, 0], [2, 100, 1, 0], [1, 149, 1, 0]):
        assert [rows[h[0]] for h in vk.search(q, k=10)] == [h[0] for h in rv.search(q, k=10)]
    for s in (tv, vk, rt, rv):
        s.close()


def _forked_insert(tv, vk, conn):
    """In a forked child: the inherited stores make their own connection to
    the writer at their first write."""
    try:
        conn.send((tv.insert("from the child", 1), vk.insert([0, 1], 1)))
    except Exception as exc:  # reported to the test, which asserts on it
        conn.send(repr(exc))


def test_forked_child_writes_through_its_own_connection(tmp_path):
    db = str(tmp_path / "fork.db")
    w = Writer(db)
    try:
        tv = TextVault(db)
        vk = VectorKVault(db, dimensions=2)
        assert tv.insert("from the parent", 0) == 1
        assert vk.insert([1, 0], 0) == 1
        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_forked_insert, args=(tv, vk, child))
        p.start()
        assert parent.recv() == (2, 2)
        _reap(p)
        # the parent's connection to the writer is still its own
        assert tv.insert("parent again", 2) == 3
        assert vk.insert([1, 1], 2) == 3
        assert _execs(db) == 6
        tv.close()
        vk.close()
    finally:
        w.kill(signal.SIGTERM)


def test_writer_killed_without_restart_continues_embedded(tmp_path):
    """kill -9 and no new writer: the next write runs on the object's own
    connection within a second; nothing is lost or doubled."""
    db = str(tmp_path / "killed.db")
    w = Writer(db)
    tv = TextVault(db)
    try:
        for i in range(20):
            tv.insert(f"served {i}", i)
    finally:
        w.kill(signal.SIGKILL)
    t0 = time.monotonic()
    assert tv.insert("embedded after the kill", 20) == 21
    assert time.monotonic() - t0 < 1.0
    assert len(tv) == 21
    assert [tv.get_by_id(i)[1] for i in range(1, 22)] == list(range(21))
    tv.close()


def _insert_loop(db, conn):
    """Insert documents and vectors as fast as possible until the parent
    says stop; report the ids and any failure."""
    tv = TextVault(db)
    vk = VectorKVault(db, dimensions=2)
    out = []
    try:
        i = 0
        while not (i % 16 == 0 and conn.poll()):
            out.append((tv.insert(f"doc number{i}", i), vk.insert([i, 1], i)))
            if i == 10:
                conn.send("writing")
            i += 1
        conn.recv()
        conn.send(out)
    except Exception as exc:  # reported to the test, which asserts on it
        conn.send(repr(exc))
    tv.close()
    vk.close()


def test_writers_starting_and_stopping_under_a_writing_process(tmp_path):
    """A process inserts without pause while writers start and stop cleanly
    twice: every call succeeds, each row lands exactly once, in order."""
    db = str(tmp_path / "churn.db")
    TextVault(db).close()
    VectorKVault(db, dimensions=2).close()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_insert_loop, args=(db, child))
    p.start()
    served = 0
    try:
        assert parent.recv() == "writing"
        for _ in range(2):
            time.sleep(0.3)
            w = Writer(db)
            try:
                time.sleep(0.5)
                served += _execs(db)
            finally:
                w.kill(signal.SIGTERM)
        time.sleep(0.3)   # and after the last writer stopped
        parent.send("stop")
        got = parent.recv()
    finally:
        _reap(p)
    assert isinstance(got, list), got
    n = len(got)
    assert got == [(i + 1, i + 1) for i in range(n)]
    assert served > 0, "the writers served none of the writes"
    tv = TextVault(db)
    vk = VectorKVault(db, dimensions=2)
    assert len(tv) == n and len(vk) == n
    assert [tv.get_by_id(i + 1) for i in range(0, n, 97)] == [
        (f"doc number{i}", i) for i in range(0, n, 97)]
    tv.close()
    vk.close()


def _group_worker(db, worker, n, conn):
    """As _inserter, and every 4th round an update of a missing document
    (fails in the writer, inside a group); sends the failures' types too."""
    conn.send(_insert_rounds(db, worker, n, "mark", bad_every=4))


def test_several_clients_operations_commit_in_groups(tmp_path):
    """4 processes write TextVault and VectorKVault rows (two engine
    handles) at once: the writer applies requests that arrive together in
    one transaction per handle (STATUS counts the groups), an update of a
    missing document inside a group fails alone with the embedded
    exception, and every insert is present exactly once."""
    db = str(tmp_path / "group.db")
    n = 120
    emb = TextVault(str(tmp_path / "emb.db"))
    with pytest.raises(Exception) as embedded:
        emb.update(10**9, "nothing", value=b"v")
    emb.close()
    results, status = _run_workers(db, _group_worker, 4, n)
    nfail = len(range(0, n, 4))
    for ids, vids, errors, failures in results:
        assert errors == []
        assert len(ids) == n and len(vids) == n
        assert failures == [embedded.type.__name__] * nfail
    assert status["execs"] - status["exec_leases"] == 4 * (2 * n + nfail)
    assert status["execs_failed"] == 4 * nfail
    assert status["exec_batches"] > 0
    assert status["exec_batched_ops"] >= 2 * status["exec_batches"]
    assert 2 <= status["exec_batch_max"] <= 64
    tv = TextVault(db)
    vk = VectorKVault(db, dimensions=4)
    assert len(tv) == 4 * n and len(vk) == 4 * n
    assert len({i for ids, _, _, _ in results for i in ids}) == 4 * n
    assert len({i for _, vids, _, _ in results for i in vids}) == 4 * n
    for k in range(4):
        for i in range(0, n, 9):
            assert tv.count_matches(f'"mark{k}x{i}"') == 1
