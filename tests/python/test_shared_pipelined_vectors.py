"""Pipelined VectorKVault inserts through the writer (docs/shared-mode.md,
"Pipelined inserts"): as TextVault's, an attached insert takes its id from
a block the writer granted the object and returns without waiting for the
reply. Vectors add the chunk layout: rows arrive out of id order (two
processes fill two blocks at once), yet chunks stay cut in id order, every
row at or below the last chunk's largest id sits in a chunk and every row
above it is unchunked (docs/storage-layout.md), also after a writer killed
under inserting processes.

Each test runs real kvault-writer processes and forked inserting
processes on a file of its own, and stops and reaps them all.
"""

import contextlib
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from kohakuvault import VectorKVault

from test_shared_classes import _status, start_workers
from test_shared_mode import WRITER, Writer, _reap
from test_shared_pipelined import _collect, kill_under_inserters, raise_alike
from test_shared_pipelined import _inserting as text_inserting

pytestmark = pytest.mark.skipif(WRITER is None, reason="kvault-writer is not built")

# 4096 float32 dimensions: 16 KiB rows, chunks of 64 rows (the smallest),
# so a few hundred inserts cut several chunks.
DIMS = 4096
CHUNK = 64
TABLE = "vec_kvault"


def _vec(worker, i):
    """The vector of insert i of a worker: distinct, reproducible."""
    return np.random.default_rng(worker * 100_003 + i).standard_normal(DIMS).astype(np.float32)


def _layout(db, table=TABLE):
    """Check the chunk layout with the sqlite3 module and return {id:
    vector bytes}: chunks full and cut in ascending id order, each chunked
    row's map entry pointing at its slot, rows up to the last chunk's
    largest id chunked and the rows above it unchunked."""
    rows = {}
    with contextlib.closing(sqlite3.connect(db)) as con:
        top = 0
        slots = {}
        for cid, size, rowids, vecs in con.execute(
                f'SELECT c.chunk_id, c.size, c.rowids, v.vectors FROM "{table}_chunks" c '
                f'JOIN "{table}_chunk_vectors" v USING (chunk_id) ORDER BY c.chunk_id'):
            ids = np.frombuffer(rowids, np.int64)[:size]
            assert size == CHUNK
            assert ids[0] > top and (np.diff(ids) > 0).all(), f"chunk {cid} out of id order"
            top = int(ids[-1])
            for j, i in enumerate(ids):
                slots[int(i)] = (cid, j)
                rows[int(i)] = vecs[j * DIMS * 4:(j + 1) * DIMS * 4]
        for i, cid, off, vec in con.execute(
                f'SELECT id, chunk_id, chunk_offset, vector FROM "{table}"'):
            if i <= top:
                assert (cid, off) == slots[i], f"row {i} below the chunks is not in its slot"
            else:
                assert cid is None and len(vec) == DIMS * 4, f"row {i} above the chunks"
                rows[i] = vec
    return rows


def _values(db, table=TABLE):
    """{id: stored value bytes} through the map's value_ref."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        return dict(con.execute(f'SELECT t.id, v.value FROM "{table}" t '
                                f'JOIN "{table}_values" v ON v.id = t.value_ref'))


def _inserter(db, worker, n, conn):
    """Insert n vectors tagged with this worker; every 50 a read (which
    waits for the commit of the inserts before it): report each id, and
    how many inserts a read acknowledged."""
    try:
        vk = VectorKVault(db, dimensions=DIMS, metric="l2")
        vk.disable_auto_pack()
        for i in range(n):
            conn.send(("id", i, vk.insert(_vec(worker, i), f"{worker}:{i}".encode())))
            if i % 50 == 49:
                len(vk)
                conn.send(("acked", i + 1))
        vk.close()
        conn.send(("done", n))
    except Exception as exc:  # reported to the test, which asserts on it
        conn.send(("error", repr(exc)))


def _check(db, got, n):
    """Every id an inserter was given holds its vector and value, once; the
    layout holds; nothing else is stored."""
    rows, values = _layout(db), _values(db)
    assert len(rows) == len(values) == len(got) * n
    for k, msgs in got.items():
        assert msgs[-1] == ("done", n), msgs[-1]
        ids = [m for m in msgs if m[0] == "id"]
        assert [m[1] for m in ids] == list(range(n))
        for _, i, vid in ids:
            assert values[vid] == f"{k}:{i}".encode()
            assert rows[vid] == _vec(k, i).tobytes()


def _inserting(path, n):
    """A served file and 2 forked _inserter processes of n vector inserts
    each (test_shared_pipelined._inserting)."""
    return text_inserting(path, n, create=lambda db: VectorKVault(
        db, dimensions=DIMS, metric="l2").close(), target=_inserter)


def test_vector_ids_are_those_an_embedded_object_returns(tmp_path):
    """One object, a fresh table: 300 inserts through the writer (several
    blocks of ids, most pipelined) return 1..300 as embedded inserts do,
    and a new object after close() goes on at 301."""
    served, emb = str(tmp_path / "served.db"), str(tmp_path / "emb.db")
    w = Writer(served)
    try:
        vs = VectorKVault(served, dimensions=DIMS, metric="l2")
        ve = VectorKVault(emb, dimensions=DIMS, metric="l2")
        got = [vs.insert(_vec(0, i), i) for i in range(300)]
        assert got == [ve.insert(_vec(0, i), i) for i in range(300)] == list(range(1, 301))
        vs.close()
        ve.close()
        vs = VectorKVault(served, dimensions=DIMS, metric="l2")
        assert vs.insert(_vec(0, 300), 300) == 301
        vs.close()
        st = _status(served)
        assert st["exec_leases"] > 0   # blocks asked for: the inserts were pipelined
        assert st["execs_failed"] == 0
    finally:
        w.kill(signal.SIGTERM)
    rows = _layout(served)
    assert sorted(rows) == list(range(1, 302))
    assert rows == _layout(emb) | {301: _vec(0, 300).tobytes()}


def test_reads_and_searches_see_the_objects_own_inserts(tmp_path):
    """Each vector the object inserted is found by its next search and
    get_by_id at once, pipelined or not."""
    db = str(tmp_path / "ryw.db")
    w = Writer(db)
    try:
        vk = VectorKVault(db, dimensions=DIMS, metric="l2")
        for i in range(80):
            vid = vk.insert(_vec(1, i), i)
            if i % 7 == 0:
                hits = vk.search(_vec(1, i), k=1)
                assert hits[0][0] == vid and hits[0][1] == pytest.approx(0.0, abs=1e-3)
                vec, value = vk.get_by_id(vid)
                assert value == i and np.array_equal(np.asarray(vec, np.float32), _vec(1, i))
        assert len(vk) == 80
        vk.close()
    finally:
        w.kill(signal.SIGTERM)


def test_two_processes_insert_vectors_at_once(tmp_path):
    """2 processes pipeline 400 inserts each at once, their blocks of ids
    interleaving: no call fails, ids are distinct, every vector and value
    is there once under its id, and the chunks are cut in id order."""
    with _inserting(tmp_path / "two.db", 400) as (db, _, conns, procs):
        got = _collect(conns, procs)
        _reap(*procs)
        _check(db, got, 400)
        assert _status(db)["execs_failed"] == 0
    vk = VectorKVault(db, dimensions=DIMS, metric="l2")
    vk.disable_auto_pack()
    for k, i in ((0, 0), (0, 399), (1, 123), (1, 399)):
        hits = vk.search(_vec(k, i), k=1)
        assert vk.get_by_id(hits[0][0])[1] == f"{k}:{i}".encode()
    vk.close()


@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "not-restarted"])
def test_writer_killed_under_vector_inserters(tmp_path, restart):
    """kill -9 of the writer while 2 processes pipeline vector inserts: a
    new writer (restarted) or each process's own connection (not
    restarted) applies the unanswered ones, at ids blocks of the dead
    writer gave, below chunks cut since; every insert whose call returned
    is there once, under its id, and the layout holds."""
    n = 1500
    with _inserting(tmp_path / "kill.db", n) as (db, writers, conns, procs):
        _check(db, kill_under_inserters(db, writers, conns, procs, n, restart), n)


def test_a_bad_vector_raises_at_the_call_and_loses_nothing(tmp_path):
    """Between pipelined inserts, a vector the engine would refuse raises at
    its own call (checked before it is sent) with the embedded exception,
    and the inserts around it are all there with consecutive ids."""
    db, emb = str(tmp_path / "bad.db"), str(tmp_path / "emb.db")
    w = Writer(db)
    try:
        vs = VectorKVault(db, dimensions=8)
        ve = VectorKVault(emb, dimensions=8)
        ids = [vs.insert([float(i + 1)] * 8, i) for i in range(40)]
        calls = [lambda v: v.insert([1.0] * 7, 0),
                 lambda v: v.insert([1.0] * 7 + [math.nan], 0),
                 lambda v: v.insert([1.0] * 7 + ["x"], 0)]
        raise_alike(calls, vs, ve)
        ids += [vs.insert([float(i + 1)] * 8, i) for i in range(40, 80)]
        assert ids == list(range(1, 81))
        assert len(vs) == 80
        vs.close()
        ve.close()
        assert _status(db)["execs_failed"] == 0
    finally:
        w.kill(signal.SIGTERM)


def _insert_unshared(db, n):
    """Insert n vectors in one insert_many from a process that opens the
    file embedded (KVAULT_SHARED=off): their ids."""
    code = ("import sys, numpy as np; from kohakuvault import VectorKVault; "
            f"vk = VectorKVault(sys.argv[1], dimensions={DIMS}, metric='l2'); "
            "n = int(sys.argv[2]); "
            f"rows = np.random.default_rng(7).standard_normal((n, {DIMS})).astype(np.float32); "
            "print(*vk.insert_many(rows, [b'outsider'] * n)); vk.close()")
    env = dict(os.environ, KVAULT_SHARED="off")
    out = subprocess.run([sys.executable, "-c", code, db, str(n)], env=env, check=True,
                         capture_output=True, text=True, timeout=60)
    return [int(x) for x in out.stdout.split()]


def test_embedded_inserts_keep_off_the_block_and_its_chunks(tmp_path):
    """An object holds a block of ids from the writer; a process that opens
    the file embedded meanwhile inserts 2 chunks' worth of rows, which cuts
    chunks above the object's block: its rows take ids past the block, and
    the object's next inserts, below those chunks, unpack them: all are
    stored under the ids they returned, with the layout intact."""
    db = str(tmp_path / "mixed.db")
    VectorKVault(db, dimensions=DIMS, metric="l2").close()
    w = Writer(db)
    try:
        vk = VectorKVault(db, dimensions=DIMS, metric="l2")
        vk.disable_auto_pack()
        ids = [vk.insert(_vec(2, i), b"m%d" % i) for i in range(40)]
        assert len(vk) == 40
        others = _insert_unshared(db, 2 * CHUNK)
        assert min(others) > max(ids)
        ids += [vk.insert(_vec(2, i), b"m%d" % i) for i in range(40, 300)]
        assert not set(others) & set(ids)
        assert len(vk) == 300 + 2 * CHUNK
        vk.close()
    finally:
        w.kill(signal.SIGTERM)
    rows, values = _layout(db), _values(db)
    assert [values[i] for i in ids] == [b"m%d" % i for i in range(300)]
    assert [rows[i] for i in ids] == [_vec(2, i).tobytes() for i in range(300)]
    assert all(values[o] == b"outsider" for o in others)


def test_an_idle_block_goes_back_before_the_next_insert(tmp_path):
    """An object whose block of ids gave no id for 5 s gives it back (the
    writer stops holding chunks back for a block idle 15 s) and asks for a
    new one before its next insert: the ids go on past the old block's
    rest, and nothing is lost."""
    db = str(tmp_path / "idle.db")
    w = Writer(db)
    try:
        vk = VectorKVault(db, dimensions=8)
        ids = [vk.insert([float(i + 1)] * 8, i) for i in range(6)]   # blocks of 1, 2, 4
        leases = _status(db)["exec_leases"]
        time.sleep(5.5)
        ids.append(vk.insert([7.0] * 8, 6))
        assert _status(db)["exec_leases"] == leases + 2   # the rest back, a new block
        ids += [vk.insert([float(i + 1)] * 8, i) for i in range(7, 20)]
        assert ids == sorted(set(ids)) and len(vk) == 20
        assert [vk.get_by_id(d)[1] for d in ids] == list(range(20))
        vk.close()
    finally:
        w.kill(signal.SIGTERM)
