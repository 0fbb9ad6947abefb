"""Shared mode end to end with real processes: a kvault-writer per test,
attached KVault objects in this and other processes (docs/shared-mode.md).

Every test starts its own writer on a unique temp database and kills it in
``finally``; child processes are always reaped. Timeouts are bounded.
"""

import contextlib
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from kohakuvault import KVault
from kohakuvault._writer import writer_binary
from kohakuvault.errors import KohakuVaultError

from conftest import die_with_parent

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


WRITER = writer_binary(ROOT)
pytestmark = pytest.mark.skipif(WRITER is None, reason="kvault-writer is not built")


class Writer:
    """A kvault-writer process for one database (started ready)."""

    def __init__(self, db, *extra):
        self.db = db
        self.extra = extra
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([WRITER, *self.extra, self.db], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True,
                                     preexec_fn=die_with_parent)
        line = self.proc.stdout.readline()
        assert line.startswith("ready"), f"writer failed: {line!r}"

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)
        return self.proc.returncode


@pytest.fixture
def served(tmp_path):
    db = str(tmp_path / "shared.db")
    w = Writer(db)
    try:
        yield db, w
    finally:
        w.kill(signal.SIGTERM)


def _rows(db):
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT key, value FROM kv").fetchall())
    finally:
        con.close()


def test_shared_auto_attaches_and_false_stays_embedded(served):
    db, _ = served
    with KVault(db) as kv:
        assert kv.shared
        kv["a"] = b"1"
    with KVault(db, shared=False) as kv:
        assert not kv.shared


def test_shared_true_without_writer_is_a_clear_error(tmp_path):
    with pytest.raises(KohakuVaultError, match="no kvault-writer serves"):
        KVault(str(tmp_path / "none.db"), shared=True)


def _reader_proc(db, conn):
    kv = KVault(db, shared=True)
    while True:
        key = conn.recv()
        if key is None:
            break
        conn.send(kv.get(key))
    kv.close()


def _reap(*procs):
    """Join each process (None is skipped), killing one still alive after 30 s."""
    for p in procs:
        if p is None:
            continue
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
            p.join()


@contextlib.contextmanager
def pipe_child(target, db):
    """Run target(db, conn) in a spawned process; yields this side's end of
    the pipe. On exit: joined (killed after 30 s), and it must have exited 0."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=target, args=(db, child))
    p.start()
    try:
        yield parent
    finally:
        _reap(p)
    assert p.exitcode == 0


def test_read_your_writes_across_processes(served):
    db, _ = served
    with pipe_child(_reader_proc, db) as conn:
        kv = KVault(db, shared=True)
        for i in range(300):
            kv[f"k{i}"] = f"v{i}"
            conn.send(f"k{i}")  # B reads right after A's put returned
            assert conn.recv() == f"v{i}"
        conn.send(None)
        kv.close()


def test_sync_put_is_committed(served):
    db, _ = served
    kv = KVault(db, shared=True)
    kv.put("durable", b"yes", sync=True)
    assert _rows(db)[b"durable"] == b"yes"
    kv.close()


def _fork_child(kv, q):
    try:
        assert kv["from_parent"] == 1
        kv["from_child"] = 2
        q.put("ok")
    except BaseException as exc:  # report to the parent
        q.put(repr(exc))


def test_forked_child_reads_and_writes(served):
    db, _ = served
    kv = KVault(db, shared=True)
    kv["from_parent"] = 1
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_fork_child, args=(kv, q))
    p.start()
    try:
        assert q.get(timeout=30) == "ok"
    finally:
        _reap(p)
    assert kv["from_child"] == 2
    kv["after_fork"] = 3
    assert kv["after_fork"] == 3
    kv.close()


def test_kill_writer_loses_no_applied_write(tmp_path):
    """kill -9 the writer with 100,000 applied-but-uncommitted writes pending;
    the relaunched writer replays them: every one is in SQLite, once."""
    db = str(tmp_path / "crash.db")
    n = 100_000
    w = Writer(db, "--commit-interval-ms", "3600000", "--batch-size", "100000000",
               "--memtable-size", "32M", "--cache-size", "1G")
    try:
        kv = KVault(db, shared=True)
        kv._native.enable_cache(64 << 20)  # batch into the ring (no flush daemon)
        for i in range(n):
            kv[f"key{i:06d}".encode()] = f"value{i}".encode()
        kv._native.put_many([])  # waits until every ring record is applied
        st = dict(l.split("=", 1) for l in kv._native.status().splitlines())
        assert int(st["applied_seq"]) >= n
        assert int(st["committed_seq"]) == 0, "the writer must not have committed yet"
        assert len(_rows(db)) == 0
        w.kill(signal.SIGKILL)
        w.start()  # replays the old segment
        rows = _rows(db)
        assert len(rows) == n
        assert all(rows[f"key{i:06d}".encode()] == f"value{i}".encode() for i in range(n))
        con = sqlite3.connect(db)
        seq = con.execute("SELECT value FROM kohakuvault_meta WHERE key='writer_seq:kv'").fetchone()
        con.close()
        assert int(seq[0]) == n  # each write applied exactly once: n sequence numbers
        # the attached object re-attaches by itself and keeps working
        kv.put("after", b"1", sync=True)
        assert _rows(db)[b"after"] == b"1"
        kv.close()
    finally:
        w.kill(signal.SIGTERM)


def _busy_writer(db):
    kv = KVault(db, shared=True)
    i = 0
    while True:
        kv[f"c{i % 100}"] = i
        i += 1


def test_kill_client_mid_write_others_carry_on(served):
    db, _ = served
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_busy_writer, args=(db,))
    p.start()
    try:
        time.sleep(1.5)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.join(timeout=30)
    kv = KVault(db, shared=True)
    for i in range(1000):
        kv[f"mine{i}"] = i
    assert all(kv[f"mine{i}"] == i for i in range(1000))
    kv.put("last", 1, sync=True)
    assert b"last" in _rows(db)
    kv.close()


def test_put_file_get_to_file_attached(served, tmp_path):
    db, _ = served
    src = tmp_path / "src.bin"
    size = 1 << 30  # 1 GiB
    with open(src, "wb") as f:
        for i in range(size >> 20):
            f.write(os.urandom(1 << 16) * 16)
    kv = KVault(db, shared=True)
    with open(src, "rb") as f:
        kv.put_file("blob", f)
    dst = tmp_path / "dst.bin"
    with open(dst, "wb") as f:
        assert kv.get_to_file("blob", f) == size
    with open(src, "rb") as a, open(dst, "rb") as b:
        while True:
            x, y = a.read(1 << 20), b.read(1 << 20)
            assert x == y
            if not x:
                break
    kv.close()


def test_sigterm_commits_everything(tmp_path):
    db = str(tmp_path / "term.db")
    w = Writer(db, "--commit-interval-ms", "3600000", "--batch-size", "100000000")
    try:
        kv = KVault(db, shared=True)
        for i in range(1000):
            kv[f"t{i}"] = b"x"
        assert len(_rows(db)) == 0
        assert w.kill(signal.SIGTERM) == 0
        assert len(_rows(db)) == 1000
    finally:
        w.kill(signal.SIGKILL)


# ---- 2 writer + 2 reader processes with a model check ------------------------

STRESS_S = float(os.environ.get("KV_SHARED_STRESS_S", "30"))
NKEYS = 200


def _stress_writer(db, wid, published, deadline, q):
    """Writes w<wid>:<k> with increasing counters; publishes each counter
    after its put returned (applied: visible to everyone)."""
    try:
        kv = KVault(db, shared=True)
        n = 0
        while time.time() < deadline:
            k = n % NKEYS
            c = n // NKEYS + 1
            kv[f"w{wid}:{k}"] = c
            kv[f"s:{k}"] = (wid, c)  # contended keys, both writers
            published[wid * NKEYS + k] = c
            n += 1
        final = {f"w{wid}:{k}": published[wid * NKEYS + k] for k in range(NKEYS)}
        kv.close()
        q.put(("ok", wid, n, final))
    except BaseException as exc:  # includes DatabaseBusy: must never happen
        q.put(("error", wid, repr(exc), None))


def _stress_reader(db, rid, published, deadline, q):
    import random

    try:
        kv = KVault(db, shared=True)
        rng = random.Random(rid)
        seen = {}
        reads = 0
        while time.time() < deadline:
            wid = rng.randrange(2)
            k = rng.randrange(NKEYS)
            lo = published[wid * NKEYS + k]  # published before this read began
            v = kv.get(f"w{wid}:{k}", 0)
            hi = published[wid * NKEYS + k] + 1
            assert isinstance(v, int) and lo <= v <= hi, (wid, k, lo, v, hi)
            assert v >= seen.get((wid, k), 0), "went back in time"
            seen[(wid, k)] = v
            s = kv.get(f"s:{k}")
            assert s is None or (isinstance(s, (list, tuple)) and len(s) == 2 and s[0] in (0, 1)), s
            reads += 1
        kv.close()
        q.put(("ok", rid, reads, None))
    except BaseException as exc:
        q.put(("error", rid, repr(exc), None))


def test_two_writers_two_readers_model_check(served):
    db, _ = served
    ctx = mp.get_context("spawn")
    published = ctx.Array("q", 2 * NKEYS, lock=False)
    q = ctx.Queue()
    deadline = time.time() + STRESS_S + 2  # + process start-up
    procs = [ctx.Process(target=_stress_writer, args=(db, i, published, deadline, q))
             for i in range(2)]
    procs += [ctx.Process(target=_stress_reader, args=(db, i, published, deadline, q))
              for i in range(2)]
    for p in procs:
        p.start()
    results = []
    try:
        for _ in procs:
            results.append(q.get(timeout=STRESS_S + 120))
    finally:
        _reap(*procs)
    errors = [r for r in results if r[0] != "ok"]
    assert not errors, errors
    kv = KVault(db, shared=True)
    kv.flush_cache()
    kv.close()
    rows = _rows(db)
    for status, _wid, n, final in results:
        if final is None:
            continue
        assert n > 0
        with KVault(db, shared=False) as emb:
            for key, c in final.items():
                assert emb[key] == c, key
    assert len(rows) == 3 * NKEYS


def _status(kv):
    return {k: int(v) if v.isdigit() else v
            for k, v in (l.split("=", 1) for l in kv._native.status().splitlines())}


def test_misses_are_loaded_into_the_cache(tmp_path):
    db = str(tmp_path / "miss.db")
    with KVault(db, shared=False) as emb:  # rows the writer never saw
        for i in range(100):
            emb[f"old{i}"] = i
    w = Writer(db)
    try:
        # read_cache_bytes=0: no hot-value copies, every read asks the segment
        kv = KVault(db, shared=True, read_cache_bytes=0)
        assert all(kv[f"old{i}"] == i for i in range(100))  # misses: read SQLite
        hits0, misses0, _ = kv._native.counters()
        assert misses0 >= 100
        deadline = time.time() + 10
        while _status(kv)["miss_loads"] < 100 and time.time() < deadline:
            kv.put("tick", 1)  # wakes the writer
            time.sleep(0.05)
        assert _status(kv)["miss_loads"] >= 100
        assert all(kv[f"old{i}"] == i for i in range(100))  # now segment hits
        hits1, misses1, hot = kv._native.counters()
        assert misses1 == misses0 and hits1 >= hits0 + 100 and hot == 0
        kv.close()
    finally:
        w.kill(signal.SIGTERM)


def test_small_segment_evicts_and_never_drops_a_write(tmp_path):
    """A segment much smaller than the data: the writer commits and evicts
    (backpressure); every write is stored and readable."""
    db = str(tmp_path / "small.db")
    w = Writer(db, "--cache-size", "24M", "--memtable-size", "1M", "--shards", "2")
    try:
        kv = KVault(db, shared=True)
        n = 150_000
        for i in range(n):
            kv[b"key%08d" % i] = b"v" * 200  # ~40 MB of values
        for i in range(0, n, 997):
            assert kv[b"key%08d" % i] == b"v" * 200
        assert len(kv) == n
        st = _status(kv)
        assert st["keys_cached"] + st["keys_in_memtables"] < n  # not everything fits: evicted
        assert st["memory_used"] <= st["memory_total"]
        kv.close()
    finally:
        w.kill(signal.SIGTERM)


# ---- the commit pipeline: bounded steps, rings drained between them ---------


def _load_putter(db, wid, seconds, q):
    """Puts 100-byte values as fast as it can for `seconds`; reports how many."""
    try:
        kv = KVault(db, shared=True)
        put = kv._native.put
        values = [bytes([65 + r]) * 100 for r in range(26)]
        n = 0
        end = time.time() + seconds
        while time.time() < end:
            v = values[n // 1000 % 26]
            for i in range(1000):
                put(b"p%d-%06d" % (wid, i), v)
            n += 1000
        kv.close()
        q.put(("ok", wid, n))
    except BaseException as exc:
        q.put(("error", wid, repr(exc)))


def _run_putters(db, nproc, seconds, during=None):
    """nproc _load_putter processes; `during(kv)` runs in this process while
    they put. Returns the putters' results."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_load_putter, args=(db, i, seconds, q)) for i in range(nproc)]
    for p in procs:
        p.start()
    try:
        if during:
            during()
        return [q.get(timeout=seconds + 120) for _ in procs]
    finally:
        _reap(*procs)


def test_commit_in_steps_with_applies_between(tmp_path):
    """Under sustained put load from 2 processes, every commit runs as
    bounded steps (freeze, inserts, commit, one fold per shard) and the
    rings are drained between the steps: records are applied while a commit
    is in flight, and no commit had to be finished in one piece."""
    db = str(tmp_path / "steps.db")
    # a long interval: batches of many records, inserted over many steps
    w = Writer(db, "--commit-interval-ms", "200")
    try:
        results = _run_putters(db, 2, 3.0)
        assert all(r[0] == "ok" for r in results), results
        kv = KVault(db, shared=True)
        kv.put("last", b"1", sync=True)
        st = _status(kv)
        kv.close()
        assert st["commits"] >= 2
        shards = st["shards"]
        # freeze + >= 1 insert + commit + one fold per shard, per commit
        assert st["commit_steps"] >= st["commits"] * (3 + shards)
        assert st["commit_insert_steps"] > st["commits"], "some batch took several insert steps"
        assert st["applies_during_commit"] > 0, "rings drained between the steps"
        assert st["commit_sync"] == 0, "no commit finished in one piece"
        assert st["commit_phase"] == "idle"
        rows = _rows(db)
        assert len(rows) == 2001
        total = sum(r[2] for r in results)
        assert st["records"] >= total
    finally:
        w.kill(signal.SIGTERM)


def test_sync_puts_under_load_return_after_their_commit(tmp_path):
    """A sync put returns only once a commit covers it, also while other
    processes keep the writer busy and commits run in steps."""
    db = str(tmp_path / "syncload.db")
    w = Writer(db)
    try:
        def syncs():
            kv = KVault(db, shared=True)
            con = sqlite3.connect(db)
            try:
                for i in range(40):
                    kv.put(f"sync{i}", f"v{i}".encode(), sync=True)
                    row = con.execute("SELECT value FROM kv WHERE key=?",
                                      (f"sync{i}".encode(),)).fetchone()
                    assert row == (f"v{i}".encode(),), i
            finally:
                con.close()
                kv.close()

        results = _run_putters(db, 2, 2.0, during=syncs)
        assert all(r[0] == "ok" for r in results), results
    finally:
        w.kill(signal.SIGTERM)


def _sync_child(db, q):
    try:
        kv = KVault(db, shared=True)
        kv.put("synced", b"1", sync=True)
        kv.close()
        q.put("ok")
    except BaseException as exc:
        q.put(repr(exc))


def test_kill_writer_mid_insert_steps_loses_nothing(tmp_path):
    """kill -9 the writer while a long batch is being inserted into SQLite
    step by step (its transaction open, nothing committed): the relaunched
    writer replays every applied record, once."""
    db = str(tmp_path / "midcommit.db")
    n = 150_000
    w = Writer(db, "--commit-interval-ms", "3600000", "--batch-size", "100000000",
               "--memtable-size", "32M", "--cache-size", "1G")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = None
    try:
        kv = KVault(db, shared=True)
        kv._native.enable_cache(64 << 20)  # batch into the ring (no flush daemon)
        for i in range(n):
            kv[f"key{i:06d}".encode()] = f"value{i}".encode()
        kv._native.put_many([])  # every ring record applied
        st = _status(kv)
        assert st["applied_seq"] == n and st["committed_seq"] == 0
        # a SYNC from another process starts the commit of all n records
        p = ctx.Process(target=_sync_child, args=(db, q))
        p.start()
        deadline = time.time() + 60
        while True:
            st = _status(kv)  # served between the commit's steps
            if st["commit_phase"] == "insert" and st["commit_insert_steps"] >= 2:
                break
            assert st["commits"] == 0, "the batch was committed before the kill"
            assert time.time() < deadline, st
        w.kill(signal.SIGKILL)
        assert len(_rows(db)) == 0, "nothing of the batch was committed"
        w.start()  # replays the old segment
        assert q.get(timeout=60) == "ok"  # the child's sync put came through
        rows = _rows(db)
        assert len(rows) == n + 1
        assert all(rows[f"key{i:06d}".encode()] == f"value{i}".encode() for i in range(n))
        con = sqlite3.connect(db)
        seq = con.execute("SELECT value FROM kohakuvault_meta WHERE key='writer_seq:kv'").fetchone()
        con.close()
        assert int(seq[0]) == n + 1  # each write applied exactly once
        kv.put("after", b"1", sync=True)
        assert _rows(db)[b"after"] == b"1"
        kv.close()
    finally:
        _reap(p)
        w.kill(signal.SIGTERM)
