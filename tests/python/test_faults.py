"""Fault injection against real processes: a dead writer's replay next to
embedded writes, fork() during a call, unbounded put_file streams, kill -9
of the writer in the middle of commits, a client stopped with SIGSTOP, and
a process of another user (docs/reliability.md quotes the figures)."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from kohakuvault import KVault

from test_shared_mode import WRITER, Writer

pytestmark = pytest.mark.skipif(WRITER is None, reason="kvault-writer is not built")


def _spawn(body):
    """Fork a child that runs body() and exits 0, or 1 (its traceback on
    stderr) if it raised. Returns the child's pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(code)
    return pid


def _in_child(body):
    """Run body() in a forked child; returns its exit status (0: no exception)."""
    return os.waitpid(_spawn(body), 0)[1]


def _embedded(db):
    return KVault(db, shared=False)


# ---- A. a dead writer's replay never undoes a newer embedded commit ------

def _acked_then_writer_killed(db, items):
    """A writer that commits only at exit; a client puts `items` (each
    acknowledged: applied) and exits; the writer is killed with SIGKILL.
    Returns the (dead) Writer."""
    w = Writer(db, "--commit-interval-ms", "600000")

    def client():
        kv = KVault(db, shared=True)
        for k, v in items.items():
            kv[k] = v

    assert _in_child(client) == 0
    w.kill(signal.SIGKILL)
    return w


def test_embedded_open_after_writer_kill_replays_first(tmp_path):
    db = str(tmp_path / "a.db")
    _embedded(db).close()
    w = _acked_then_writer_killed(db, {"k1": "old-acked", "k2": "acked-only"})
    try:
        with _embedded(db) as e:
            assert e["k2"] == "acked-only"     # replayed by the embedded open
            e["k1"] = "new-embedded"
        w.start()                              # finds nothing left to replay
        with KVault(db, shared=True) as kv:
            assert kv["k1"] == "new-embedded"
            assert kv["k2"] == "acked-only"
            st = dict(line.split("=", 1) for line in kv._native.status().splitlines())
            assert st["replayed"] == "0"
        assert w.kill(signal.SIGTERM) == 0
    finally:
        w.kill()
    with _embedded(db) as e:
        assert e["k1"] == "new-embedded" and e["k2"] == "acked-only"


@pytest.mark.parametrize("shared", [False, "auto"])
def test_embedded_object_opened_before_the_writer_replays_at_its_commit(tmp_path, shared):
    """The object was open (embedded) before the writer started and died:
    its commit guard sees the unreplayed segment, the replay runs, then the
    write."""
    db = str(tmp_path / "g.db")
    e = KVault(db, shared=shared)
    e["k0"] = "before"
    assert not e.shared
    w = _acked_then_writer_killed(db, {"k1": "old-acked", "k2": "acked-only"})
    try:
        e["k1"] = "new-embedded"
        assert not e.shared
        assert e["k2"] == "acked-only"
        w.start()
        with KVault(db, shared=True) as kv:
            assert kv["k1"] == "new-embedded" and kv["k2"] == "acked-only"
        assert w.kill(signal.SIGTERM) == 0
    finally:
        e.close()
        w.kill()
    with _embedded(db) as e:
        assert e["k1"] == "new-embedded"


def test_concurrent_embedded_opens_replay_once(tmp_path):
    """Several processes open the file embedded right after the writer
    died: exactly one replays; every one writes after the replay."""
    db = str(tmp_path / "c.db")
    _embedded(db).close()
    w = _acked_then_writer_killed(db, {f"k{i}": "old" for i in range(200)})
    pids = []
    for c in range(4):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with _embedded(db) as e:
                    e[f"k{c}"] = f"new{c}"
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    assert [os.waitpid(p, 0)[1] for p in pids] == [0] * 4
    w.start()
    w.kill(signal.SIGTERM)
    with _embedded(db) as e:
        assert [e[f"k{c}"] for c in range(4)] == [f"new{c}" for c in range(4)]
        assert all(e[f"k{i}"] == "old" for i in range(4, 200))


def test_attached_auto_object_continues_embedded_after_a_client_replayed(tmp_path):
    """An "auto" object attached to a writer that is killed waits for a
    restart; once an embedded open replayed the dead writer's records (and
    marked the registry stopped), it continues embedded as after a clean
    stop, with its own acknowledged writes and the embedded one intact."""
    db = str(tmp_path / "auto.db")
    w = Writer(db, "--commit-interval-ms", "600000")
    kv = KVault(db)
    assert kv.shared
    kv["mine"] = "acked"                       # applied, not committed
    w.kill(signal.SIGKILL)
    with _embedded(db) as e:                   # replays, then writes
        assert e["mine"] == "acked"
        e["other"] = "embedded"
    t0 = time.monotonic()
    kv["after"] = "continues"
    assert time.monotonic() - t0 < 10          # not the 60 s re-attach wait
    assert not kv.shared
    assert kv["mine"] == "acked" and kv["other"] == "embedded"
    kv.close()
    with _embedded(db) as e:
        assert e["after"] == "continues"


# ---- B. fork() while another thread is inside a call -----------------------

def _reap(pids, timeout):
    """Wait up to `timeout` s for every child; kill those still running.
    Returns ({pid: status}, [pids that hung])."""
    deadline = time.monotonic() + timeout
    codes = {}
    while len(codes) < len(pids) and time.monotonic() < deadline:
        for p in pids:
            if p not in codes:
                r, status = os.waitpid(p, os.WNOHANG)
                if r:
                    codes[p] = status
        time.sleep(0.02)
    hung = [p for p in pids if p not in codes]
    for p in hung:
        os.kill(p, signal.SIGKILL)
        os.waitpid(p, 0)
    return codes, hung


def _fork_while_hammered(step, child, forks=8):
    """A thread calls step(i) for i = 0, 1, ... while the main thread forks
    `forks` children, 20 ms apart, each running child(c) (c = 0..forks-1)
    and exiting 0 unless it raised. Every child must finish within 25 s with
    exit 0, and the hammering thread must never fail. Returns the number of
    steps the thread completed."""
    stop = threading.Event()
    done, errors = [0], []

    def hammer():
        try:
            while not stop.is_set():
                step(done[0])
                done[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=hammer)
    t.start()
    pids = []
    try:
        for c in range(forks):
            time.sleep(0.02)
            pids.append(_spawn(lambda: child(c)))
        # the forks happened during calls; now let the children have the
        # file's write lock (an endless embedded writer would starve them)
        stop.set()
        t.join(timeout=30)
        codes, hung = _reap(pids, 25)
        assert not hung, f"{len(hung)} of {forks} children hung"
        assert list(codes.values()) == [0] * forks
    finally:
        stop.set()
        t.join(timeout=30)
    assert not errors, errors
    return done[0]


@pytest.mark.parametrize("mode", ["embedded", "attached"])
def test_fork_while_a_thread_is_inside_a_call(tmp_path, mode):
    db = str(tmp_path / "fork.db")
    w = Writer(db) if mode == "attached" else None
    kv = KVault(db, shared=mode == "attached")

    def step(i):
        kv[f"t{i % 64}"] = i
        kv.get(f"t{(i * 7) % 64}", None)

    def child(c):
        for j in range(50):
            kv[f"c{c}:{j}"] = j
            assert kv[f"c{c}:{j}"] == j
        kv.get("t1", None)

    _fork_while_hammered(step, child)
    kv.flush()
    for c in range(8):
        assert [kv[f"c{c}:{j}"] for j in range(50)] == list(range(50))
    kv.close()
    if w:
        assert w.kill(signal.SIGTERM) == 0


def _text_case(tmp_path):
    """TextVault: insert + search. Returns (step, child, check(steps))."""
    from kohakuvault import TextVault

    tv = TextVault(str(tmp_path / "text.db"))

    def step(i):
        tv.insert(f"hammer document number {i}", i)
        tv.search("hammer", k=5)

    def child(c):
        for j in range(20):
            tv.insert(f"child{c} document {j}", f"{c}:{j}")
        hits = tv.search(f"child{c}", k=50)
        assert sorted(v for _, _, v in hits) == sorted(f"{c}:{j}" for j in range(20))

    def check(steps):
        for c in range(8):
            assert len(tv.search(f"child{c}", k=50)) == 20
        assert tv.count() == steps + 8 * 20

    return step, child, check


def _vector_case(tmp_path):
    """VectorKVault: insert + search (each child's vectors are found by
    themselves, the nearest at distance 0)."""
    from kohakuvault import VectorKVault

    vk = VectorKVault(str(tmp_path / "vec.db"), dimensions=4)
    rng = random.Random(7)

    def vec(c, j):
        return [float(c + 1), float(j + 1), 1.0, 0.5]

    def step(i):
        vk.insert([rng.uniform(-1, 0) for _ in range(4)], i)   # never near vec(c, j)
        vk.search([0.1, 0.2, 0.3, 0.4], k=3)

    def child(c):
        for j in range(20):
            vk.insert(vec(c, j), f"{c}:{j}")
        for j in range(20):
            assert vk.search(vec(c, j), k=1)[0][2] == f"{c}:{j}"

    def check(steps):
        for c in range(8):
            for j in range(20):
                assert vk.search(vec(c, j), k=1)[0][2] == f"{c}:{j}"
        assert vk.count() == steps + 8 * 20

    return step, child, check


def _column_case(tmp_path):
    """ColumnVault: Column append + slice; each child appends to a column
    of its own, created by the parent before the forks."""
    from kohakuvault import ColumnVault

    cv = ColumnVault(str(tmp_path / "col.db"))
    h = cv.create_column("h", "i64")
    for c in range(8):
        cv.create_column(f"c{c}", "i64")

    def step(i):
        h.append(i)
        assert h[max(0, i - 4):i + 1] == list(range(max(0, i - 4), i + 1))
        cv["h"]   # through the proxy's lock

    def child(c):
        col = cv[f"c{c}"]
        for j in range(50):
            col.append(j)
        assert col[0:50] == list(range(50))
        assert len(h) >= 1 and h[0] == 0

    def check(steps):
        for c in range(8):
            assert cv[f"c{c}"][0:50] == list(range(50))
        assert h[0:steps] == list(range(steps))

    return step, child, check


@pytest.mark.parametrize("case", [_text_case, _vector_case, _column_case],
                         ids=["TextVault", "VectorKVault", "ColumnVault"])
def test_fork_while_a_thread_is_inside_a_call_of_every_store(tmp_path, case):
    """The KVault guarantee for every SQLite-backed class: children forked
    while another thread is inside a call use the same object (their own
    connection), the parent goes on, and nothing is lost."""
    step, child, check = case(tmp_path)
    steps = _fork_while_hammered(step, child)
    check(steps)


def _stored(db):
    """Elements of column "v" in the file, read through a new connection."""
    from kohakuvault import ColumnVault

    v = ColumnVault(db)["v"]
    return v[0:len(v)]


def test_fork_of_a_column_vault_with_cache_and_flush_daemon(tmp_path):
    """A ColumnVault with its write-back cache and flush daemon on, forked
    while another thread holds the proxy's lock: the child gets a new lock,
    an empty cache (the parent's cached elements stay the parent's to write,
    so none is written twice) and a flush daemon of its own, which writes
    the child's appends; the parent's daemon and cache keep working."""
    from kohakuvault import ColumnVault

    db = str(tmp_path / "cached.db")
    cv = ColumnVault(db)
    col = cv.create_column("v", "i64")
    cv.enable_cache(flush_interval=0.2)
    for i in range(100):
        col.append(i)            # cached in the parent, not yet written
    held, release = threading.Event(), threading.Event()

    def holder():
        with cv._lock:
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)

    def child():
        assert cv["v"] is col    # takes the proxy's lock
        for i in range(1000, 1050):
            col.append(i)
        mine = set(range(1000, 1050))
        deadline = time.monotonic() + 10   # no explicit flush: the daemon's
        while time.monotonic() < deadline and not mine <= set(_stored(db)):
            time.sleep(0.1)
        assert mine <= set(_stored(db))

    try:
        pid = _spawn(child)
        codes, hung = _reap([pid], 25)
        assert not hung, "the child hung"
        assert codes[pid] == 0
    finally:
        release.set()
        t.join(timeout=30)
    col.append(100)
    deadline = time.monotonic() + 10   # the parent's daemon flushes too
    while time.monotonic() < deadline and len(_stored(db)) < 151:
        time.sleep(0.1)
    assert sorted(_stored(db)) == list(range(101)) + list(range(1000, 1050))


class _GatedKey(int):
    """An int key whose comparisons, while `gate` is set, report that they
    started and wait for the release: an operation stays in progress."""

    gate = None   # (started, release) events

    def _wait(self):
        if _GatedKey.gate:
            _GatedKey.gate[0].set()
            _GatedKey.gate[1].wait(30)

    def __lt__(self, other):
        self._wait()
        return int(self) < int(other)

    def __gt__(self, other):
        self._wait()
        return int(self) > int(other)


@pytest.mark.parametrize("name", ["CSBTree", "SkipList"])
def test_fork_while_a_thread_is_inside_a_tree_operation(name):
    """In-memory trees: a child forked while another thread's insert waits
    in a comparison (the SkipList's lock / the CSBTree's guard is held) can
    use the tree; the parent's insert completes."""
    import kohakuvault

    tree = getattr(kohakuvault, name)()
    for i in range(0, 40, 2):
        tree.insert(i, i)
    started, release = threading.Event(), threading.Event()
    _GatedKey.gate = (started, release)
    t = threading.Thread(target=tree.insert, args=(_GatedKey(7), "gated"))
    t.start()
    try:
        assert started.wait(10)

        def child():
            _GatedKey.gate = None
            tree.insert(41, 41)
            assert tree.keys() == list(range(0, 40, 2)) + [41]

        pid = _spawn(child)
        codes, hung = _reap([pid], 25)
        assert not hung and codes[pid] == 0
    finally:
        release.set()
        _GatedKey.gate = None
        t.join(timeout=30)
    assert not t.is_alive()
    assert tree.keys() == sorted(list(range(0, 40, 2)) + [7])


def test_fork_from_inside_a_call_of_the_same_object(tmp_path):
    """A put_file reader that forks (starts a process) while the vault's own
    call holds its lock: the fork hooks must not wait for that lock (the
    forking thread holds it), and both processes go on."""
    db = str(tmp_path / "self.db")
    kv = KVault(db, shared=False)
    kv["before"] = b"1"
    forked = []

    class ForkingReader:
        def __init__(self):
            self.left = 3

        def read(self, n=-1):
            if self.left == 3:
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                forked.append(pid)
            if not self.left:
                return b""
            self.left -= 1
            return b"x" * 10

    result = {}

    def body():
        try:
            kv.put_file("streamed", ForkingReader(), size=30)
            result["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["exc"] = exc

    t = threading.Thread(target=body, daemon=True)   # a hang must not block exit
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "put_file hung in the fork hooks"
    assert result == {"ok": True}, result
    assert os.waitpid(forked[0], 0)[1] == 0
    assert kv["streamed"] == b"x" * 30 and kv["before"] == b"1"
    kv.close()


# ---- C. put_file of a stream that never ends ------------------------------

class _Endless:
    """A reader whose read(n) always returns n bytes (never b''); it records
    the largest shared-memory file of this process seen while reading."""

    def __init__(self):
        self.calls = 0
        self.bytes = 0
        self.largest_memfd = 0

    def read(self, n=-1):
        self.calls += 1
        if self.calls % 64 == 0:
            for fd in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:"):
                        self.largest_memfd = max(self.largest_memfd, os.fstat(int(fd)).st_size)
                except OSError:
                    pass
        n = 65536 if n is None or n < 0 else min(n, 65536)
        self.bytes += n
        return b"\xab" * n


@pytest.mark.parametrize("mode", ["embedded", "attached"])
def test_put_file_of_an_endless_stream_reads_size_bytes_not_into_memory(tmp_path, mode):
    """Both modes read exactly `size` bytes of a stream that never ends and
    store them; the attached mode spools them to disk, not shared memory."""
    db = str(tmp_path / "endless.db")
    w = Writer(db) if mode == "attached" else None
    try:
        kv = KVault(db, shared=mode == "attached")
        size = 48 << 20
        r = _Endless()
        kv.put_file("big", r, size=size, chunk_size=1 << 16)
        assert r.bytes == size
        assert r.largest_memfd < 16 << 20, r.largest_memfd   # the 4 MiB ring only
        got = kv.get("big")
        assert len(got) == size and got[:4] == b"\xab" * 4 and got[-1:] == b"\xab"
        # unknown size: one read() without a size, in both modes
        r2 = _Endless()
        r2.seek = None   # not seekable
        kv.put_file("once", r2)
        assert r2.calls == 1 and len(kv.get("once")) == 65536
        kv.close()
    finally:
        if w:
            assert w.kill(signal.SIGTERM) == 0


# ---- D. kill -9 of the writer at random points of its commits --------------

def _sequential_putter(db, prefix, acked):
    """Puts prefix+00000000, prefix+00000001, ... (applied: acknowledged when
    put returns) and publishes how many returned, until it is killed."""
    try:
        kv = KVault(db, shared=True)
        i = 0
        while True:
            kv[prefix + b"%08d" % i] = b"v%08d" % i
            i += 1
            acked.value = i
    finally:
        os._exit(1)


ROUNDS = int(os.environ.get("KV_KILL_ROUNDS", "100"))
# the test's time budget: on a loaded machine it stops after this many
# seconds once MIN_ROUNDS are done (KV_KILL_SECONDS=0: no budget)
BUDGET_S = float(os.environ.get("KV_KILL_SECONDS", "25"))
MIN_ROUNDS = 20


def test_kill9_of_the_writer_during_commits_loses_no_acknowledged_put():
    """ROUNDS rounds (fewer when BUDGET_S runs out first): a new client puts (a few hundred acknowledged) while
    the writer commits every 2 ms; SIGKILL of the writer at a random moment
    (then of the client, whose puts cannot be acknowledged any more); the
    restarted writer replays; every put acknowledged before the kill is in
    SQLite (the replay had to add some in most rounds: they were applied
    but not committed) and the file passes integrity_check (every 10
    rounds and at the end). Prints the figures that docs/reliability.md quotes."""
    import multiprocessing as mp
    import sqlite3

    # on tmpfs: a kill -9 loses no page cache, so the file system does not
    # change what is tested, and ~300 fsyncs on a loaded disk would not
    # fit the time budget
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix="kvtest-kill9-", dir="/dev/shm")
    db = os.path.join(tmp, "kill9.db")
    seed = int(os.environ.get("KV_KILL_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    w = Writer(db, "--commit-interval-ms", "2", "--cache-size", "48M", "--memtable-size", "1M",
               "--shards", "1")
    ctx = mp.get_context("fork")
    replays = total = rounds = 0
    t0 = time.monotonic()
    con = sqlite3.connect(db, timeout=30)
    count = "SELECT count(*) FROM kv WHERE key >= ? AND key < ?"
    try:
        for rnd in range(ROUNDS):
            if BUDGET_S and rnd >= MIN_ROUNDS and time.monotonic() - t0 > BUDGET_S:
                break
            rounds = rnd + 1
            prefix = b"r%03d:" % rnd
            acked = ctx.Value("q", 0, lock=False)
            client = ctx.Process(target=_sequential_putter, args=(db, prefix, acked))
            client.start()
            try:
                deadline = time.monotonic() + 20
                while acked.value < 200:                 # a few hundred acknowledged
                    assert time.monotonic() < deadline, f"seed {seed} round {rnd}: stuck"
                    time.sleep(0.001)
                time.sleep(rng.uniform(0, 0.005))
                w.kill(signal.SIGKILL)
                n = acked.value                          # nothing is acked without a writer
            finally:
                client.kill()
                client.join()
            span = (prefix, prefix + b"%08d" % n)
            committed = con.execute(count, span).fetchone()[0]
            w.start()                                    # replays before it serves
            present = con.execute(count, span).fetchone()[0]
            assert present == n, f"seed {seed} round {rnd}: {n} acked, {present} in SQLite"
            replays += committed < n                     # the replay had acked records to add
            total += n
            if rnd % 10 == 9:
                check = con.execute("PRAGMA integrity_check").fetchone()[0]
                assert check == "ok", f"seed {seed} round {rnd}: {check}"
        w.kill(signal.SIGTERM)
        check = con.execute("PRAGMA integrity_check").fetchone()[0]
        assert check == "ok", f"seed {seed} at the end: {check}"
    finally:
        con.close()
        w.kill(signal.SIGTERM)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"kill9: {rounds} rounds, {total} acked puts, 0 lost, {replays} restarts "
          f"replayed acked but uncommitted puts, integrity ok, {time.monotonic() - t0:.1f} s, "
          f"seed {seed}")
    assert replays > 0, "no kill found applied but uncommitted records"


# ---- D. a client stopped with SIGSTOP while others write --------------------

def _rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _reader_writer(db, hits):
    """Reads and writes in a loop (always inside or near a read section)."""
    kv = KVault(db, shared=True)
    i = 0
    while True:
        kv.get(b"s%04d" % (i % 1000), None)
        kv[b"s%04d" % (i % 1000)] = b"x" * 200
        i += 1
        hits.value = i


def test_a_stopped_client_does_not_stall_others_or_grow_the_writer(tmp_path):
    """A client frozen with SIGSTOP in its read/write loop for 6 s: the two
    other clients keep getting puts acknowledged every second, and the
    writer's resident memory stays bounded by its segment."""
    import multiprocessing as mp

    db = str(tmp_path / "stop.db")
    w = Writer(db, "--cache-size", "64M", "--memtable-size", "1M")
    ctx = mp.get_context("fork")
    counters = [ctx.Value("q", 0, lock=False) for _ in range(3)]
    procs = [ctx.Process(target=_reader_writer, args=(db, c)) for c in counters]
    for p in procs:
        p.start()
    try:
        while min(c.value for c in counters) < 1000:
            time.sleep(0.01)
        rss_before = _rss_kib(w.proc.pid)
        os.kill(procs[0].pid, signal.SIGSTOP)
        frozen = counters[0].value
        slow = []
        for second in range(6):
            marks = [c.value for c in counters[1:]]
            time.sleep(1)
            progress = [c.value - m for c, m in zip(counters[1:], marks)]
            if min(progress) == 0:
                slow.append((second, progress))
        assert not slow, f"others stalled while a client was stopped: {slow}"
        assert counters[0].value == frozen
        rss_after = _rss_kib(w.proc.pid)
        # the segment (64 MiB) may become resident; nothing else may grow
        assert rss_after - rss_before < 96 << 10, (rss_before, rss_after)
        os.kill(procs[0].pid, signal.SIGCONT)
        deadline = time.monotonic() + 20
        while counters[0].value < frozen + 100:
            assert time.monotonic() < deadline, "the resumed client makes no progress"
            time.sleep(0.01)
        print(f"sigstop: writer RSS {rss_before} -> {rss_after} KiB, others acked "
              f"{[c.value for c in counters[1:]]} puts")
    finally:
        for p in procs:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
            p.join()
        assert w.kill(signal.SIGTERM) == 0


# ---- D. a process of another user -----------------------------------------

def test_another_user_cannot_read_the_segment_or_registry(tmp_path):
    """The segment, slot file and registry are 0600: a process of another
    uid can neither open them nor attach (the control socket refusing it is
    test_writer_faults.test_peer_of_another_user_is_refused)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    os.chmod(tmp_path, 0o755)
    db = str(tmp_path / "uid.db")
    w = Writer(db)
    try:
        with KVault(db, shared=True) as kv:
            kv["secret"] = b"for root only"
        with open(os.path.realpath(db) + "-kvault") as f:
            reg = dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line)
        paths = [os.path.realpath(db) + "-kvault", "/dev/shm" + reg["segment"],
                 "/dev/shm" + reg["slots"]]
        for p in paths:
            assert os.stat(p).st_mode & 0o077 == 0, p

        def as_nobody():
            os.setgid(65534)
            os.setuid(65534)
            for p in paths:
                for flags in (os.O_RDONLY, os.O_RDWR):
                    try:
                        os.close(os.open(p, flags))
                    except PermissionError:
                        continue
                    raise AssertionError(f"nobody opened {p}")
            from kohakuvault import _kvault

            assert not _kvault._attach_served(db, "kv")
            try:
                KVault(db, shared=True)
            except Exception:   # noqa: BLE001  (any refusal; never an attach)
                return
            raise AssertionError("nobody attached")

        assert _in_child(as_nobody) == 0
    finally:
        assert w.kill(signal.SIGTERM) == 0
