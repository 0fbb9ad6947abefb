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
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
            p.join()
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
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
            p.join()
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
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
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
