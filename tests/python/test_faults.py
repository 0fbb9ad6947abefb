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


def _in_child(body):
    """Run body() in a forked child; returns its exit status (0: no exception)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


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


# ---- B. fork() while another thread is inside a call -----------------------

@pytest.mark.parametrize("mode", ["embedded", "attached"])
def test_fork_while_a_thread_is_inside_a_call(tmp_path, mode):
    db = str(tmp_path / "fork.db")
    w = Writer(db) if mode == "attached" else None
    kv = KVault(db, shared=mode == "attached")
    stop = threading.Event()

    def hammer():
        i = 0
        while not stop.is_set():
            kv[f"t{i % 64}"] = i
            kv.get(f"t{(i * 7) % 64}", None)
            i += 1

    t = threading.Thread(target=hammer)
    t.start()
    pids = []
    try:
        for c in range(8):
            time.sleep(0.02)
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    for j in range(50):
                        kv[f"c{c}:{j}"] = j
                        assert kv[f"c{c}:{j}"] == j
                    kv.get("t1", None)
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        deadline = time.monotonic() + 25
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
        assert not hung, f"{len(hung)} of 8 children hung"
        assert list(codes.values()) == [0] * 8
    finally:
        stop.set()
        t.join(timeout=30)
    kv.flush()
    for c in range(8):
        assert [kv[f"c{c}:{j}"] for j in range(50)] == list(range(50))
    kv.close()
    if w:
        assert w.kill(signal.SIGTERM) == 0


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
