"""Shared mode over the life of a writer, with real processes and files
(docs/shared-mode.md, "Objects opened before the writer", "When the writer
stops", "Busy databases"): objects opened before a writer started, a writer
that stops or dies while objects are attached, embedded stores of several
processes on one file, and the writer's client counts.

Every test starts its own writers on a temp database and stops them in
``finally``; child processes are always reaped. Timeouts are bounded.
"""

import contextlib
import multiprocessing as mp
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import threading
import time

import pytest

from kohakuvault import KVault, TextVault
from kohakuvault.errors import KohakuVaultError

from test_shared_mode import WRITER, Writer, _reap

needs_writer = pytest.mark.skipif(WRITER is None, reason="kvault-writer is not built")


def _rows(db, table="kv"):
    con = sqlite3.connect(db)
    try:
        return dict(con.execute(f"SELECT key, value FROM {table}").fetchall())
    finally:
        con.close()


def _put_waits_for_next_writer(kv, db, key, value):
    """kv[key] = value in a thread while no writer serves db; 1 s later a
    writer starts (from this thread: a writer's parent-death signal follows
    the thread that started it). The put must return once that writer
    serves, attached. Returns the writer."""
    box = {}

    def body():
        try:
            kv[key] = value
            box["result"] = None
        except Exception as exc:  # reported to the test, which asserts on it
            box["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    time.sleep(1.0)
    w = Writer(db)
    t.join(timeout=60)
    assert box == {"result": None}
    assert kv.shared
    return w


# ---- 1. objects opened before the writer ------------------------------------


@needs_writer
def test_object_opened_before_the_writer_routes_its_next_write(tmp_path):
    """early=KVault(db) (auto, embedded); a writer starts; early's next
    write goes through the writer, so an attached reader sees it at once."""
    db = str(tmp_path / "early.db")
    early = KVault(db)
    early["k"] = 1
    assert not early.shared
    w = Writer(db)
    try:
        att = KVault(db)
        assert att.shared
        assert att["k"] == 1  # cached by the segment now
        early["k"] = 2
        assert early.shared, "the write after the writer started must attach"
        assert att["k"] == 2
        assert early["k"] == 2  # reads its own write
        early.put_many([("a", b"1"), ("b", b"2")])
        assert early.delete("a")
        assert att.get("a") is None and att["b"] == b"2"
        att.close()
        early.close()
    finally:
        w.kill(signal.SIGTERM)
    assert _rows(db)[b"b"] == b"2"


def _early_child(db, conn):
    """Opened before any writer; writes when told, reports its mode."""
    kv = KVault(db)
    conn.send(kv.shared)
    while True:
        msg = conn.recv()
        if msg is None:
            break
        key, value = msg
        kv[key] = value
        conn.send(kv.shared)
    kv.close()


@needs_writer
def test_object_of_another_process_opened_before_the_writer(tmp_path):
    """The newcomer's case across processes: early in a child, opened before
    the writer; after the writer started, its write is seen by an attached
    reader in this process, never the old value."""
    db = str(tmp_path / "early2.db")
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_early_child, args=(db, child))
    p.start()
    w = None
    try:
        assert parent.recv() is False
        parent.send(("k", 1))
        assert parent.recv() is False
        w = Writer(db)
        att = KVault(db)
        assert att["k"] == 1
        parent.send(("k", 2))
        assert parent.recv() is True
        assert att["k"] == 2
        att.close()
        parent.send(None)
    finally:
        _reap(p)
        if w:
            w.kill(signal.SIGTERM)
    assert p.exitcode == 0


def _hammer(db, seconds, conn):
    """Embedded ("auto") object writing key hot = 0, 1, 2, ... and one key
    per write, as fast as it can; sends the last acknowledged value."""
    kv = KVault(db)
    conn.send("go")
    i = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        i += 1
        kv.put_many([("hot", i), (f"n{i:07d}", i)])
    conn.send((i, kv.shared))
    kv.close()


@needs_writer
def test_writer_starting_during_embedded_writes_misses_none(tmp_path):
    """A writer starts while another process writes embedded as fast as it
    can and this process reads the hot key through the writer: every write
    the child had acknowledged is present, and the hot key reads its last
    value (no write committed embedded is missed by the writer's cache)."""
    db = str(tmp_path / "race.db")
    KVault(db).close()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_hammer, args=(db, 3.0, child))
    p.start()
    w = None
    try:
        assert parent.recv() == "go"
        time.sleep(0.5)
        w = Writer(db)
        att = KVault(db, shared=True)
        while not parent.poll():
            att.get("hot")  # keeps the key in the writer's cache
        last, routed = parent.recv()
        assert routed, "the child's object must have attached"
        assert att["hot"] == last
        att.close()
    finally:
        _reap(p)
        if w:
            w.kill(signal.SIGTERM)
    rows = _rows(db)
    assert all(rows.get(f"n{i:07d}".encode()) is not None for i in range(1, last + 1))


def test_shared_false_stays_embedded(tmp_path):
    """shared=False: the user opted out; the object keeps writing SQLite
    directly whatever serves the file (docs/shared-mode.md)."""
    db = str(tmp_path / "optout.db")
    kv = KVault(db, shared=False)
    kv["a"] = b"1"
    if WRITER is not None:
        w = Writer(db)
        try:
            kv["a"] = b"2"
            assert not kv.shared
        finally:
            w.kill(signal.SIGTERM)
    kv.close()
    assert _rows(db)[b"a"] == (b"2" if WRITER else b"1")


# ---- 2. when the writer stops ------------------------------------------------


@needs_writer
def test_clean_stop_continues_embedded_within_a_second(tmp_path):
    """After a clean stop (SIGTERM, as `kvault-launch stop` sends), the next
    write of an "auto" object continues embedded within 1 s; everything
    acknowledged before is there, and later reads work."""
    db = str(tmp_path / "stop.db")
    w = Writer(db)
    try:
        kv = KVault(db)
        assert kv.shared
        for i in range(100):
            kv[f"before{i}"] = i
        kv.put("piped", b"p", write_mode="pipelined")
    finally:
        assert w.kill(signal.SIGTERM) == 0
    t0 = time.monotonic()
    kv["after"] = b"y"
    assert time.monotonic() - t0 < 1.0
    assert not kv.shared
    assert kv["after"] == b"y" and kv["piped"] == b"p"
    assert all(kv[f"before{i}"] == i for i in range(100))
    kv.close()
    rows = _rows(db)
    assert rows[b"after"] == b"y" and len(rows) == 102


@needs_writer
def test_stop_then_restart_routes_again(tmp_path):
    """stop -> the object continues embedded -> a new writer starts -> the
    next write attaches again; an attached reader never reads stale data."""
    db = str(tmp_path / "cycle.db")
    kv = KVault(db)
    for round_ in range(3):
        w = Writer(db)
        try:
            reader = KVault(db, shared=True)
            kv["k"] = round_
            assert kv.shared
            assert reader["k"] == round_
            reader.close()
        finally:
            w.kill(signal.SIGTERM)
        kv["k"] = round_ + 100
        assert not kv.shared
        assert kv["k"] == round_ + 100
    kv.close()
    assert _rows(db)[b"k"] is not None


@needs_writer
def test_shared_true_reads_after_stop_and_writes_wait_for_a_new_writer(tmp_path):
    """shared=True: after a clean stop, reads are served from the process's
    own connection at once; a write waits for the next writer."""
    db = str(tmp_path / "strict.db")
    w = Writer(db)
    kv = KVault(db, shared=True)
    kv["x"] = b"1"
    w.kill(signal.SIGTERM)
    t0 = time.monotonic()
    assert kv["x"] == b"1"
    assert kv.get("missing") is None
    assert time.monotonic() - t0 < 1.0
    w = _put_waits_for_next_writer(kv, db, "y", b"2")
    try:
        assert kv["y"] == b"2" and kv["x"] == b"1"
        kv.close()
    finally:
        w.kill(signal.SIGTERM)
    assert _rows(db)[b"y"] == b"2"


@needs_writer
def test_auto_reads_survive_a_killed_writer(tmp_path):
    """kill -9 without a restart: reads of an "auto" object keep working
    (never the 60 s wait); a write of a shared=True object waits for the
    restarted writer (an "auto" one continues embedded: the next test)."""
    db = str(tmp_path / "killed.db")
    w = Writer(db, "--commit-interval-ms", "3600000")
    kv = KVault(db)
    req = KVault(db, shared=True)
    kv["a"] = b"1"  # applied, not committed
    w.kill()
    t0 = time.monotonic()
    assert kv["a"] == b"1"  # still in the dead writer's segment
    assert kv.get("zz") is None
    assert time.monotonic() - t0 < 1.0
    w = _put_waits_for_next_writer(req, db, "b", b"2")
    try:
        req.close()
        kv.close()
    finally:
        w.kill(signal.SIGTERM)
    rows = _rows(db)
    assert rows[b"a"] == b"1" and rows[b"b"] == b"2"


# ---- 3. busy databases: one policy for every class -----------------------------


def _text_inserter(db, seconds, q):
    tv = TextVault(db)
    ok = failed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            tv.insert(f"document {os.getpid()} {ok}", {"n": ok})
            ok += 1
        except KohakuVaultError as exc:
            failed += 1
            q.put(("error", repr(exc)))
            break
    q.put((ok, failed))
    tv.close()


def test_three_processes_insert_into_one_textvault(tmp_path):
    """3 embedded processes insert TextVault rows at once for 3 s: every
    insert succeeds (they wait on the busy file as KVault does)."""
    db = str(tmp_path / "text.db")
    TextVault(db).close()  # schema first
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_text_inserter, args=(db, 3.0, q)) for _ in range(3)]
    for p in procs:
        p.start()
    try:
        results = [q.get(timeout=120) for _ in procs]
    finally:
        _reap(*procs)
    assert all(isinstance(r[0], int) for r in results), results
    assert sum(r[1] for r in results) == 0, results
    total = sum(r[0] for r in results)
    assert total > 30
    tv = TextVault(db)
    assert tv.count() == total
    tv.close()


def test_store_busy_policy_is_configurable(tmp_path):
    """A store waits on a locked file (busy_timeout) and succeeds once the
    lock goes; with busy_timeout=0 and retries=1 it fails at once."""
    from kohakuvault.errors import DatabaseBusy

    db = str(tmp_path / "busy.db")
    tv = TextVault(db)
    con = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    con.execute("BEGIN IMMEDIATE")
    try:
        tv.busy_timeout, tv.retries = 0, 1
        t0 = time.monotonic()
        with pytest.raises(DatabaseBusy):
            tv.insert("x", b"1")
        assert time.monotonic() - t0 < 0.5
        del tv.busy_timeout, tv.retries  # the class defaults again
        threading.Timer(0.5, lambda: con.execute("COMMIT")).start()
        assert tv.insert("y", b"2") >= 1
    finally:
        time.sleep(0.6)
        con.close()
    assert tv.count() == 1
    tv.close()


# ---- 4. client counts of the writer ---------------------------------------------


def _status(kv):
    return dict(line.split("=", 1) for line in kv._native.status().splitlines())


def _wait_attached(kv, want, timeout=10.0):
    """The writer's `attached` count once it equals want (or the last seen)."""
    deadline = time.monotonic() + timeout
    while True:
        n = int(_status(kv)["attached"])
        if n == want or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


def _attach_and_wait(db, conn, fork_holder):
    """Attach, write, optionally fork a child that keeps the inherited
    connection open without using it, then wait to be killed or told.
    Sends ("attached", pid of that child or None)."""
    kv = KVault(db, shared=True)
    kv[f"p{os.getpid()}"] = 1
    holder = None
    if fork_holder:
        holder = os.fork()
        if holder == 0:  # holds the inherited socket, never uses kv
            time.sleep(60)
            os._exit(0)
    conn.send(("attached", holder))
    conn.recv()
    kv.close()


@needs_writer
def test_status_counts_only_live_clients(tmp_path):
    """5 processes attach; 2 exit, 3 are killed -9 (one of them left a forked
    child holding its connection): `attached` falls back to this process
    while that child still runs."""
    db = str(tmp_path / "count.db")
    w = Writer(db)
    ctx = mp.get_context("fork")
    procs, conns, holders = [], [], []
    kv = KVault(db, shared=True)
    try:
        for i in range(5):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_attach_and_wait, args=(db, child, i == 4))
            p.start()
            procs.append(p)
            conns.append(parent)
        for c in conns:
            msg, holder = c.recv()
            assert msg == "attached"
            if holder:
                holders.append(holder)
        assert _wait_attached(kv, 6) == 6
        for c in conns[:2]:
            c.send("exit")
        for p in procs[2:]:
            os.kill(p.pid, signal.SIGKILL)
        _reap(*procs[:4])
        os.waitpid(procs[4].pid, 0)  # not join: the holder keeps its sentinel open
        assert holders and os.kill(holders[0], 0) is None  # still running
        assert _wait_attached(kv, 1) == 1
        kv["still"] = b"works"
        assert kv["still"] == b"works"
        kv.close()
    finally:
        for h in holders:
            with contextlib.suppress(ProcessLookupError):
                os.kill(h, signal.SIGKILL)
        _reap(*procs)
        w.kill(signal.SIGTERM)


# ---- 5. shared="spawn" / KVAULT_SHARED ----------------------------------------------


def _spawn_client(db, i, go, q):
    go.wait(30)
    kv = KVault(db, shared="spawn")
    kv[f"w{i}"] = i
    q.put((i, kv.shared, kv._native.generation))
    kv.close()


def _registry(db):
    """The registry's fields; empty for a moment while the writer rewrites
    it (ftruncate, then pwrite)."""
    text = open(os.path.realpath(db) + "-kvault").read()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@needs_writer
def test_spawn_starts_exactly_one_writer_for_racing_processes(tmp_path, monkeypatch):
    """8 processes open KVault(db, shared="spawn") at once: one writer is
    started (generation 1), all attach to it and write; it stops by itself
    after the last one detached plus its linger, and logs next to the file."""
    # the default linger (2 s) spans the children's start-up, so that one
    # writer serves them all
    monkeypatch.delenv("KVAULT_LINGER_MS", raising=False)
    db = str(tmp_path / "spawn" / "auto.db")
    ctx = mp.get_context("spawn")
    go, q = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_spawn_client, args=(db, i, go, q)) for i in range(8)]
    for p in procs:
        p.start()
    go.set()
    try:
        got = [q.get(timeout=120) for _ in procs]
    finally:
        _reap(*procs)
    assert all(p.exitcode == 0 for p in procs)
    assert all(shared and gen == 1 for _, shared, gen in got), got
    deadline = time.monotonic() + 15
    while _registry(db).get("state") != "stopped":
        assert time.monotonic() < deadline, "the spawned writer did not stop"
        time.sleep(0.1)
    assert _registry(db)["generation"] == "1"
    assert "stopping" in open(os.path.realpath(db) + "-kvault.log").read()
    for suffix in ("-kvault.log", "-kvault.spawn"):   # private, as the registry
        assert os.stat(os.path.realpath(db) + suffix).st_mode & 0o777 == 0o600, suffix
    rows = _rows(db)
    assert all(rows[f"w{i}".encode()] is not None for i in range(8))


@needs_writer
def test_kvault_shared_environment_variable(tmp_path, monkeypatch):
    """KVAULT_SHARED replaces the default shared="auto": spawn, require
    (shared=True), off (shared=False); an unknown value is refused."""
    from kohakuvault.errors import InvalidArgument

    db = str(tmp_path / "env.db")
    monkeypatch.setenv("KVAULT_SHARED", "require")
    with pytest.raises(KohakuVaultError, match="no kvault-writer serves"):
        KVault(db)
    monkeypatch.setenv("KVAULT_SHARED", "off")
    with KVault(db) as kv:
        assert not kv.shared
    monkeypatch.setenv("KVAULT_SHARED", "bogus")
    with pytest.raises(InvalidArgument, match="KVAULT_SHARED"):
        KVault(db)
    monkeypatch.setenv("KVAULT_SHARED", "spawn")
    monkeypatch.setenv("KVAULT_LINGER_MS", "200")
    with KVault(db) as kv:
        assert kv.shared
        kv["a"] = b"1"
    with KVault(db, shared=False) as kv:  # explicit wins
        assert not kv.shared
    deadline = time.monotonic() + 15
    while _registry(db).get("state") != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert _rows(db)[b"a"] == b"1"


def _open_write_close_loop(db, i, seconds, q):
    """Open, write, close, then pause 20 to 200 ms (a little longer each
    round, cycling; the writer notices a departure within its idle wait of
    up to 100 ms, then lingers 40 ms), for ``seconds``; so that some opens
    meet the writer as it stops. Sends the number of rounds."""
    try:
        end = time.monotonic() + seconds
        r = 0
        while time.monotonic() < end:
            with KVault(db, shared="spawn") as kv:
                kv[f"p{i}:{r}"] = r
            time.sleep(0.02 + 0.003 * (r % 60) + 0.005 * i)
            r += 1
        q.put((i, r))
    except BaseException as exc:  # reported to the test, which asserts on it
        q.put((i, repr(exc)))


@needs_writer
def test_spawn_open_while_the_writer_lingers_out(tmp_path, monkeypatch):
    """Processes open, write and close KVault(db, shared="spawn") in a loop
    with pauses around a short linger: an open that chose to attach while
    the writer was stopping looks again (attaches to or spawns the next
    writer) instead of failing; every write lands. (A writer lingers out
    only once it is 10 s old: the loop runs 16 s.)"""
    db = str(tmp_path / "linger.db")
    monkeypatch.setenv("KVAULT_LINGER_MS", "40")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    nproc = 2
    procs = [ctx.Process(target=_open_write_close_loop, args=(db, i, 16.0, q))
             for i in range(nproc)]
    for p in procs:
        p.start()
    try:
        got = dict(q.get(timeout=300) for _ in procs)
    finally:
        _reap(*procs)
    assert all(isinstance(got[i], int) for i in range(nproc)), got
    deadline = time.monotonic() + 15
    while _registry(db).get("state") != "stopped":
        assert time.monotonic() < deadline, "the spawned writer did not stop"
        time.sleep(0.05)
    rows = _rows(db)
    assert all(rows[f"p{i}:{r}".encode()] is not None
               for i in range(nproc) for r in range(got[i]))
    assert int(_registry(db)["generation"]) > 1  # writers did linger out in between


def _rewrite_registry(path, texts, stop):
    """Hold the registry's lock (as a writer does) and rewrite it in a loop
    with the writer's method: the new text over the old one, then truncate
    to its length."""
    import fcntl

    fd = os.open(path, os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    i = 0
    while not stop.is_set():
        data = texts[i % len(texts)].encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        i += 1
    os.close(fd)


def _sealed(body):
    """Registry text `body` with its end line."""
    return body + f"end={len(body.encode())}\n"


@needs_writer
def test_registry_rewritten_in_a_loop_is_never_read_partial(tmp_path):
    """A process rewrites the registry (texts of two lengths) while this
    one reads it thousands of times through the native reader (what
    attach and the store routing use) and the launcher's: every read sees
    a whole text naming a served file, never an empty or partial one."""
    from kohakuvault import _kvault
    from kohakuvault.launch import read_registry, registry_complete

    db = str(tmp_path / "reg.db")
    w = Writer(db)
    path = os.path.realpath(db) + "-kvault"
    with open(path) as f:
        text = f.read()
    w.kill(signal.SIGTERM)
    body = registry_complete(text)
    assert body is not None and "state=" in body
    ready = "".join(l if not l.startswith("state=") else "state=ready\n"
                    for l in body.splitlines(keepends=True))
    longer = ready.replace("state=ready\n", "state=ready\n" + "x" * 300 + "=1\n")
    texts = [_sealed(ready), _sealed(longer)]
    assert registry_complete(texts[0] + texts[1][len(texts[0]):]) == ready
    assert registry_complete(texts[0][:-3]) is None
    assert registry_complete("") is None
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    p = ctx.Process(target=_rewrite_registry, args=(path, texts, stop))
    p.start()
    try:
        deadline = time.monotonic() + 10
        while registry_complete(open(path).read()) != ready and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        bad = []
        for i in range(3000):
            reg = read_registry(db)
            if not reg or reg.get("state") != "ready" or reg.get("table") != "kv":
                bad.append(("launch", reg))
            if i % 3 == 0 and not _kvault._attach_served(db, "kv"):
                bad.append(("native", i))
        assert bad == []
    finally:
        stop.set()
        _reap(p)


# ---- 6. a writer killed -9 that nobody restarts ---------------------------------


def _kill_registry_writer(db):
    """kill -9 the writer named in db's registry; returns once it is gone."""
    pid = int(_registry(db)["pid"])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, "the killed writer did not go"
        time.sleep(0.01)


def _stop_registry_writer(db):
    with contextlib.suppress(Exception):
        reg = _registry(db)
        if reg.get("state") == "ready":
            os.kill(int(reg["pid"]), signal.SIGTERM)


@needs_writer
def test_spawn_replaces_a_killed_writer_within_a_second(tmp_path, monkeypatch):
    """shared="spawn", its writer killed -9 and nobody restarts it: the next
    put starts a new writer (generation 2) and goes through it within about
    a second (far from the 60 s restart wait); every acknowledged write is
    there once, in order (the last value of an overwritten key wins)."""
    monkeypatch.delenv("KVAULT_LINGER_MS", raising=False)
    db = str(tmp_path / "spawnkill.db")
    kv = KVault(db, shared="spawn")
    try:
        assert kv.shared and kv._native.generation == 1
        for i in range(200):
            kv[f"k{i}"] = i
        kv["x"] = 1
        _kill_registry_writer(db)
        t0 = time.monotonic()
        kv["x"] = 2
        took = time.monotonic() - t0
        assert took < 5.0, took
        assert kv.shared and kv._native.generation == 2
        assert _registry(db)["generation"] == "2"
        assert kv["x"] == 2 and all(kv[f"k{i}"] == i for i in range(200))
        kv.close()
    finally:
        _stop_registry_writer(db)
    deadline = time.monotonic() + 15
    while _registry(db).get("state") != "stopped":
        assert time.monotonic() < deadline, "the spawned writer did not stop"
        time.sleep(0.05)
    rows = _rows(db)
    assert len(rows) == 201
    assert KVault(db, shared=False)["x"] == 2


@needs_writer
def test_auto_continues_embedded_after_a_killed_writer(tmp_path, monkeypatch):
    """shared="auto", its writer killed -9 with applied, uncommitted
    records and nobody restarts it: the next put continues embedded within
    about a second, after replaying the dead writer's records once (an
    overwritten key keeps the newer value; a later open replays nothing)."""
    monkeypatch.delenv("KVAULT_SHARED", raising=False)   # "auto", also in the spawn pass
    db = str(tmp_path / "autokill.db")
    w = Writer(db, "--commit-interval-ms", "3600000")
    try:
        kv = KVault(db)
        assert kv.shared
        for i in range(200):
            kv[f"k{i}"] = i
        kv["x"] = 1
        assert _rows(db) == {}   # applied, not committed
        w.kill()
        t0 = time.monotonic()
        kv["x"] = 2
        took = time.monotonic() - t0
        assert took < 5.0, took
        assert not kv.shared
        assert _registry(db)["state"] == "stopped"
        rows = _rows(db)
        assert len(rows) == 201
        assert KVault(db, shared=False)["x"] == 2
        with KVault(db) as again:   # nothing left to replay over x
            assert again["x"] == 2 and not again.shared
        assert kv["x"] == 2 and all(kv[f"k{i}"] == i for i in range(200))
        kv.close()
    finally:
        w.kill(signal.SIGTERM)


def _spawn_after_kill_client(db, i, ready, go, again, q):
    try:
        kv = KVault(db, shared="spawn")
        kv[f"c{i}"] = 0
        ready.put(kv._native.generation)
        go.wait(60)
        t0 = time.monotonic()
        kv[f"c{i}"] = 1
        took = time.monotonic() - t0
        again.wait(60)
        kv[f"c{i}"] = 2   # embedded ones notice the new writer here
        q.put((i, took, kv.shared, kv._native.generation if kv.shared else 0))
        kv.close()
    except BaseException as exc:  # reported to the test, which asserts on it
        q.put((i, repr(exc), None, None))


@needs_writer
def test_racing_spawn_clients_after_a_kill_start_one_writer(tmp_path, monkeypatch):
    """4 processes attached in "spawn" mode; the writer is killed -9; all
    write at once: exactly one new writer starts (generation 2), every
    write lands."""
    monkeypatch.delenv("KVAULT_LINGER_MS", raising=False)
    db = str(tmp_path / "race.db")
    ctx = mp.get_context("spawn")
    ready, q = ctx.Queue(), ctx.Queue()
    go, again = ctx.Event(), ctx.Event()
    with KVault(db, shared="spawn") as first:   # the writer outlives it (linger)
        first["seed"] = 1
        procs = [ctx.Process(target=_spawn_after_kill_client, args=(db, i, ready, go, again, q))
                 for i in range(4)]
        for p in procs:
            p.start()
        try:
            gens = [ready.get(timeout=120) for _ in procs]
            assert gens == [1] * 4
            _kill_registry_writer(db)
            go.set()
            deadline = time.monotonic() + 30
            while _registry(db).get("generation") != "2" or _registry(db).get("state") != "ready":
                assert time.monotonic() < deadline, "no new writer"
                time.sleep(0.02)
            again.set()
            got = [q.get(timeout=120) for _ in procs]
        finally:
            go.set()
            again.set()
            _reap(*procs)
            _stop_registry_writer(db)
    assert all(isinstance(took, float) and took < 5.0 for _, took, _, _ in got), got
    assert all(shared and gen == 2 for _, _, shared, gen in got), got
    assert _registry(db)["generation"] == "2"
    deadline = time.monotonic() + 15
    while _registry(db).get("state") != "stopped":
        assert time.monotonic() < deadline, "the spawned writer did not stop"
        time.sleep(0.05)
    assert _registry(db)["generation"] == "2"
    with KVault(db, shared=False) as after:
        assert after["seed"] == 1 and all(after[f"c{i}"] == 2 for i in range(4))
