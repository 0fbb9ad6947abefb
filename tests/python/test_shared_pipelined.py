"""Pipelined TextVault inserts through the writer (docs/shared-mode.md,
"Pipelined inserts"): an attached insert takes its id from a block the
writer granted the object and returns without waiting for the writer's
reply; reads and other writes of the object wait for the object's inserts
first; a writer killed under inserting processes loses no insert whose
call returned and applies none twice; a process killed right after its
inserts returned loses none of them.

Each test runs real kvault-writer processes and forked inserting
processes on a file of its own, and stops and reaps them all.
"""

import contextlib
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from kohakuvault import TextVault

from test_shared_classes import _status, start_workers
from test_shared_mode import WRITER, Writer, _reap

pytestmark = pytest.mark.skipif(WRITER is None, reason="kvault-writer is not built")


def _docs(db, table="text_vault"):
    """(id, text) of every document, read with the sqlite3 module."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        return sorted(con.execute(f'SELECT rowid, content FROM "{table}"').fetchall())


def test_ids_are_those_an_embedded_object_returns(tmp_path):
    """One object, a fresh table: 600 inserts through the writer (several
    blocks of ids, most of them pipelined) return 1..600 as embedded
    inserts do, and a second object after close() goes on at 601."""
    served, emb = str(tmp_path / "served.db"), str(tmp_path / "emb.db")
    w = Writer(served)
    try:
        tv, te = TextVault(served), TextVault(emb)
        got = [tv.insert(f"doc {i}", i) for i in range(600)]
        assert got == [te.insert(f"doc {i}", i) for i in range(600)] == list(range(1, 601))
        tv.close()
        te.close()
        tv, te = TextVault(served), TextVault(emb)
        assert tv.insert("after", 0) == te.insert("after", 0) == 601
        tv.close()
        te.close()
        st = _status(served)
        assert st["exec_leases"] > 0          # blocks asked for: the inserts were pipelined
        assert st["exec_batch_max"] > 1       # and committed in groups
        assert st["execs_failed"] == 0
    finally:
        w.kill(signal.SIGTERM)
    assert [d for d, _ in _docs(served)] == list(range(1, 602))


def test_reads_wait_for_the_objects_own_inserts(tmp_path):
    """Every read of the object sees its pipelined inserts at once; another
    process sees them once the inserting object has read or closed."""
    db = str(tmp_path / "ryw.db")
    w = Writer(db)
    try:
        tv = TextVault(db)
        other = TextVault(db)
        for i in range(50):
            doc = tv.insert(f"word{i} common", i)
            assert tv.get_by_id(doc) == (f"word{i} common", i)
            assert [h[0] for h in tv.search(f"word{i}")] == [doc]
            assert len(tv) == i + 1
            assert tv.exists(doc)
        assert len(other) == 50
        ids = [tv.insert(f"late{i}", i) for i in range(20)]
        tv.close()   # waits for its inserts
        assert [other.get_by_id(d)[1] for d in ids] == list(range(20))
        other.close()
    finally:
        w.kill(signal.SIGTERM)


def _inserter(db, worker, n, conn):
    """Insert n documents tagged with this worker; every 50 a read (which
    waits for the commit of the inserts before it): report the ids, and
    how many were acknowledged by such a read, as each read returns."""
    try:
        tv = TextVault(db)
        for i in range(n):
            conn.send(("id", i, tv.insert(f"w{worker} d{i}", f"{worker}:{i}")))
            if i % 50 == 49:
                tv.count()
                conn.send(("acked", i + 1))
        tv.close()
        conn.send(("done", n))
    except Exception as exc:  # reported to the test, which asserts on it
        conn.send(("error", repr(exc)))


def _collect(conns, procs, timeout=180, done=lambda k: False):
    """Messages of the inserters until each is done or failed (done(k):
    inserter k was seen done already)."""
    got = {k: [] for k in range(len(conns))}
    left = set(k for k in got if not done(k))
    deadline = time.time() + timeout
    while left and time.time() < deadline:
        for k in list(left):
            while k in left and conns[k].poll(0.01):
                m = conns[k].recv()
                got[k].append(m)
                if m[0] in ("done", "error"):
                    left.discard(k)
    assert not left, "an inserter did not finish"
    return got


def _check(db, got, n):
    """Every id an inserter was given holds its document, once; no document
    is there twice."""
    docs = _docs(db)
    by_id = dict(docs)
    assert len(by_id) == len(docs)
    texts = [t for _, t in docs]
    assert len(set(texts)) == len(texts), "a document landed twice"
    for k, msgs in got.items():
        assert msgs[-1] == ("done", n), msgs[-1]
        ids = [m for m in msgs if m[0] == "id"]
        assert [m[1] for m in ids] == list(range(n))
        for _, i, doc in ids:
            assert by_id.get(doc) == f"w{k} d{i}"
    assert len(docs) == len(got) * n


@contextlib.contextmanager
def _inserting(path, n, create=lambda db: TextVault(db).close(), target=_inserter):
    """A served file at `path` (its table made by create(db)) and 2 forked
    target processes of n inserts each (_inserter's messages): yields (db,
    writers, pipes, processes); a test that starts another writer appends
    it to `writers`. All are stopped and reaped at the end."""
    db = str(path)
    create(db)
    writers, procs = [Writer(db)], []
    try:
        pipes, procs = start_workers("fork", db, target, 2, n)
        yield db, writers, pipes, procs
    finally:
        _reap(*procs)
        for w in writers:
            w.kill(signal.SIGTERM)


def kill_under_inserters(db, writers, conns, procs, n, restart):
    """Once both inserters had a read acknowledged, kill -9 the writer
    (and start a new one when `restart`); then collect every message until
    both are done: {inserter: messages}, the processes reaped."""
    acked = 0
    deadline = time.time() + 60
    pending = {k: [] for k in range(2)}
    while acked < 2 and time.time() < deadline:
        for k, c in enumerate(conns):
            while acked < 2 and pending[k][-1:] != [("done", n)] and c.poll(0.01):
                m = c.recv()
                pending[k].append(m)
                acked += m == ("acked", 50)
    assert acked == 2
    writers[0].kill(signal.SIGKILL)
    if restart:
        time.sleep(0.2)
        writers.append(Writer(db))
    got = _collect(conns, procs, done=lambda k: pending[k][-1:] == [("done", n)])
    for k in got:
        got[k] = pending[k] + got[k]
    _reap(*procs)
    return got


def test_two_processes_insert_at_once(tmp_path):
    """2 processes pipeline 400 inserts each at once: no call fails, ids
    are distinct, every document is there once under the id its insert
    returned."""
    with _inserting(tmp_path / "two.db", 400) as (db, _, conns, procs):
        got = _collect(conns, procs)
        _reap(*procs)
        _check(db, got, 400)
        assert _status(db)["execs_failed"] == 0


@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "not-restarted"])
def test_writer_killed_under_inserting_processes(tmp_path, restart):
    """kill -9 of the writer while 2 processes pipeline inserts: a new
    writer takes the unanswered inserts again (restarted), or each process
    applies them on its own connection (not restarted); every insert whose
    call returned is there once, under its id."""
    with _inserting(tmp_path / "kill.db", 3000) as (db, writers, conns, procs):
        _check(db, kill_under_inserters(db, writers, conns, procs, 3000, restart), 3000)


def _insert_and_die(db, n, conn):
    """Insert n documents, report the ids, then die (SIGKILL) without
    closing the object or reading."""
    tv = TextVault(db)
    ids = [tv.insert(f"doomed {i}", i) for i in range(n)]
    conn.send(ids)
    conn.close()
    os.kill(os.getpid(), signal.SIGKILL)


def _started_inserter(target, db, n):
    """Fork a process running target(db, n, pipe): (it, the ids it sent)."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=target, args=(db, n, child))
    p.start()
    return p, parent.recv()


def test_process_killed_after_its_inserts_returned_loses_none(tmp_path):
    """Inserts whose call returned were sent to the writer: the process
    dying at once (kill -9, no close) loses none of them."""
    db = str(tmp_path / "client.db")
    TextVault(db).close()
    w = Writer(db)
    try:
        p, ids = _started_inserter(_insert_and_die, db, 300)
        p.join(timeout=60)
        assert p.exitcode == -signal.SIGKILL
        tv = TextVault(db)
        deadline = time.time() + 10
        while len(tv) < 300 and time.time() < deadline:
            time.sleep(0.05)
        assert len(tv) == 300
        assert [tv.get_by_id(d) for d in ids] == [(f"doomed {i}", i) for i in range(300)]
        tv.close()
    finally:
        w.kill(signal.SIGTERM)


def raise_alike(calls, served, embedded):
    """Each call(store) raises on the served store what it raises on the
    embedded one: the same type and message."""
    for call in calls:
        with pytest.raises(Exception) as att:
            call(served)
        with pytest.raises(Exception) as emb:
            call(embedded)
        assert (att.type, str(att.value)) == (emb.type, str(emb.value))


def test_a_bad_insert_raises_at_the_call_and_loses_nothing(tmp_path):
    """Between pipelined inserts, an insert the engine would refuse raises
    at its own call (checked before it is sent), as embedded, and the
    inserts around it are all there with consecutive ids."""
    db, emb = str(tmp_path / "bad.db"), str(tmp_path / "emb.db")
    w = Writer(db)
    try:
        tv = TextVault(db, columns=["title", "body"])
        te = TextVault(emb, columns=["title", "body"])
        for t in (tv, te):
            t.disable_auto_pack()
        ids = [tv.insert({"title": f"t{i}", "body": "b"}, b"v") for i in range(40)]
        calls = [lambda t: t.insert({"title": "only"}, b"v"),
                 lambda t: t.insert({"title": "t", "body": "b"}, "a str value"),
                 lambda t: t.insert(["too", "many", "texts"], b"v")]
        raise_alike(calls, tv, te)
        ids += [tv.insert({"title": f"u{i}", "body": "b"}, b"v") for i in range(40)]
        assert ids == list(range(1, 81))
        assert len(tv) == 80
        tv.close()
        te.close()
        assert _status(db)["execs_failed"] == 0
    finally:
        w.kill(signal.SIGTERM)


def _insert_unshared(db, text, value):
    """Insert one document from another process that opens the file
    embedded (KVAULT_SHARED=off, never sees the writer): its id."""
    code = ("import sys; from kohakuvault import TextVault; tv = TextVault(sys.argv[1]); "
            "print(tv.insert(sys.argv[2], int(sys.argv[3]))); tv.close()")
    env = dict(os.environ, KVAULT_SHARED="off")
    out = subprocess.run([sys.executable, "-c", code, db, text, str(value)], env=env,
                         check=True, capture_output=True, text=True, timeout=60)
    return int(out.stdout.split()[-1])


def test_an_embedded_insert_keeps_off_the_block_of_ids(tmp_path):
    """An object holds a block of ids from the writer; a process that opens
    the file embedded (it never saw the writer) inserts meanwhile: its
    document takes an id past the block, and the object's next inserts,
    from the block, are all stored under the ids they returned."""
    db = str(tmp_path / "mixed.db")
    TextVault(db).close()
    w = Writer(db)
    try:
        tv = TextVault(db)
        ids = [tv.insert(f"m{i}", i) for i in range(5)]
        assert len(tv) == 5            # committed: max(rowid) + 1 is the block's next id
        other = _insert_unshared(db, "outsider", 99)
        ids += [tv.insert(f"m{i}", i) for i in range(5, 10)]
        assert len(tv) == 11
        assert other not in ids
        tv.close()
    finally:
        w.kill(signal.SIGTERM)
    by_id = dict(_docs(db))
    assert by_id[other] == "outsider"
    assert [by_id.get(d) for d in ids] == [f"m{i}" for i in range(10)]


def _take_id(db, rowid, text="outsider"):
    """Store a document under `rowid` with the sqlite3 module, past every
    lease (as a tool or an older program writing the file would)."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con, con:
        con.execute('INSERT INTO "text_vault"(rowid, content) VALUES (?, ?)', (rowid, text))


def _lease_end(db, table="text_vault"):
    """The next id no block of ids covers (the lease row of kohakuvault_meta;
    0 before the first block)."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con:
        row = con.execute("SELECT value FROM kohakuvault_meta WHERE key = ?",
                          (f"lease:{table}",)).fetchone()
    return int.from_bytes(row[0], sys.byteorder, signed=True) if row else 0


@pytest.mark.parametrize("left", [1, 2], ids=["block-renewal", "inside-block"])
def test_a_failed_pipelined_insert_is_raised_and_the_raising_call_stored_nothing(tmp_path, left):
    """A pipelined insert the writer refuses (its id was taken behind the
    leases' back): the failure is raised by that insert's call or by the
    object's next insert, before that one is sent, also when the next one
    asks for a new block of ids (`left`: ids left in the object's block
    when the refused one takes the first); the call that raised stored
    nothing, every other insert holds its id."""
    db = str(tmp_path / "fail.db")
    TextVault(db).close()
    w = Writer(db)
    try:
        tv = TextVault(db)
        ids = {}
        for i in range(200):                  # until the block has `left` ids left
            d = tv.insert(f"m{i}", i)
            ids[d] = f"m{i}"
            assert len(tv) == len(ids)
            if _lease_end(db) - (d + 1) == left:
                break
        assert _lease_end(db) - (d + 1) == left
        _take_id(db, d + 1)
        calls = []
        for i in range(2):
            try:
                calls.append(tv.insert(f"x{i}", i))
            except Exception as exc:  # the engine's failure, as the embedded call raises it
                calls.append(str(exc))
            time.sleep(0.5)                   # the writer's reply is there for the next call
        raised = [c for c in calls if isinstance(c, str)]
        assert len(raised) == 1 and "constraint" in raised[0], calls
        if isinstance(calls[0], str):         # x0 refused at its own call, x1 stored
            ids[calls[1]] = "x1"
        else:                                 # x0 refused after it returned: x1 raised
            assert calls[0] == d + 1
        ids.update({tv.insert(f"n{i}", i): f"n{i}" for i in range(3)})
        assert len(tv) == len(ids) + 1
        tv.close()
    finally:
        w.kill(signal.SIGTERM)
    assert dict(_docs(db)) == {**ids, d + 1: "outsider"}


_HOLD_LOCK = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
con.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
con.execute("COMMIT")
"""


def _lock_holder(db):
    """A process holding the file's write lock until a line on its stdin."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, db], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@contextlib.contextmanager
def _block_with_room(path, room):
    """A served file, an object whose block of ids holds `room` more ids,
    and a list for a lock holder: yields (db, writer, object, ids returned,
    holders). The writer is killed and the holders ended at the end."""
    db = str(path)
    TextVault(db).close()
    w = Writer(db)
    holders = []
    try:
        tv = TextVault(db)
        yield db, w, tv, _fill_until_room(db, tv, room), holders
    finally:
        for h in holders:
            if h.poll() is None:
                h.kill()
                h.wait()
        w.kill(signal.SIGKILL)


def _fill_until_room(db, tv, room):
    """Insert (and read back) until the object's block of ids holds `room`
    more ids: the ids returned."""
    ids = []
    while _lease_end(db) - len(ids) - 1 < room:
        ids.append(tv.insert(f"m{len(ids)}", 0))
        assert len(tv) == len(ids)
    return ids


def test_inserts_the_own_connection_could_not_commit_are_kept(tmp_path):
    """The writer dies (kill -9) with pipelined inserts unanswered while
    another process holds the file's write lock longer than the object
    waits for it (ROUTE_BUSY_MS, 30 s): the read raises, the inserts stay
    the object's, and its next read, the lock released, applies them."""
    with _block_with_room(tmp_path / "keep.db", 20) as (db, w, tv, ids, holders):
        n = len(ids) + 20
        w.proc.send_signal(signal.SIGSTOP)
        ids += [tv.insert(f"m{i}", 0) for i in range(len(ids), n)]   # sent, not answered
        holders.append(_lock_holder(db))
        w.kill(signal.SIGKILL)
        with pytest.raises(RuntimeError, match="locked"):
            tv._vault.count()   # the native call: the proxy would retry a busy file
        assert [d for d, _ in _docs(db)] == ids[:len(ids) - 20]
        holders[0].communicate("\n", timeout=60)
        assert len(tv) == n
        tv.close()
    assert dict(_docs(db)) == {d: f"m{i}" for i, d in enumerate(ids)}


def test_inserts_refused_busy_are_not_taken_for_applied_after_a_kill(tmp_path):
    """Another process holds the write lock: the writer answers the first
    pass of an object's pipelined inserts 'busy' (nothing applied), then
    commits the later ones once the lock is free (its record of the object
    now holds a larger number) and is killed (kill -9) before the object
    read those replies. The object renumbers every insert answered busy
    above the record and applies it itself: none is lost."""
    with _block_with_room(tmp_path / "busy.db", 48) as (db, w, tv, ids, holders):
        base = len(ids)
        holders.append(_lock_holder(db))
        ids += [tv.insert(f"m{i}", 0) for i in range(base, base + 48)]   # 32 a pass
        time.sleep(0.3)            # the first pass's group waits 200 ms for the lock: busy
        holders[0].communicate("\n", timeout=60)
        deadline = time.time() + 10
        while len(_docs(db)) == base and time.time() < deadline:
            time.sleep(0.01)       # a later pass committed the rest
        if len(_docs(db)) in (base, base + 48):
            pytest.skip("the writer's passes did not split around the lock here")
        w.kill(signal.SIGKILL)
        assert len(tv) == base + 48
        tv.close()
    assert dict(_docs(db)) == {d: f"m{i}" for i, d in enumerate(ids)}


def test_a_clean_writer_stop_applies_what_an_exiting_client_sent(tmp_path):
    """A process pipelines inserts and dies without closing while the
    writer is stopped cleanly (SIGTERM) at the same moment: the writer
    reads the socket one last time before it ends, every returned insert
    is stored."""
    for round_ in range(3):
        db = str(tmp_path / f"stop{round_}.db")
        TextVault(db).close()
        w = Writer(db)
        try:
            p, ids = _started_inserter(_insert_and_die, db, 40)
            w.kill(signal.SIGTERM)
            p.join(timeout=60)
        finally:
            w.kill(signal.SIGKILL)
        assert dict(_docs(db)) == {d: f"doomed {i}" for i, d in enumerate(ids)}
