"""scripts/kvault-launch with real processes: serve with worker commands,
status, and stop (which ends a serving launcher instead of restarting)."""

import os
import subprocess
import sys
import time

import pytest

from kohakuvault import KVault

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH = os.path.join(ROOT, "scripts", "kvault-launch")
WRITER = os.environ.get("KVAULT_WRITER")
pytestmark = pytest.mark.skipif(not WRITER or not os.path.exists(WRITER),
                                reason="KVAULT_WRITER does not name a built kvault-writer")

WORKER = (
    "import os; from kohakuvault import KVault; "
    "kv = KVault(os.environ['KVAULT_DB'], shared=True); "
    "kv['worker/' + os.environ['KVAULT_WORKER']] = {'pid': os.getpid()}; kv.close()"
)


def _launch(*args, **kw):
    return subprocess.Popen([sys.executable, LAUNCH, *args], **kw)


def _wait_serving(db, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run([sys.executable, LAUNCH, "status", db], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout
        time.sleep(0.1)
    raise AssertionError(f"no writer came up for {db}")


def test_serve_runs_workers_then_drains(tmp_path):
    db = str(tmp_path / "w.db")
    p = _launch("serve", db, "--readers", "2", "--", sys.executable, "-c", WORKER)
    try:
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
    with KVault(db, shared=False) as kv:  # the writer is gone: embedded read of the file
        assert sorted(kv.keys(prefix=b"worker/")) == [b"worker/0", b"worker/1"]
        assert isinstance(kv["worker/0"]["pid"], int)


def test_stop_ends_a_serving_launcher(tmp_path):
    db = str(tmp_path / "s.db")
    p = _launch("serve", db, stderr=subprocess.PIPE, text=True)
    try:
        status = _wait_serving(db)
        assert "generation" in status and "committed_seq" in status
        with KVault(db) as kv:
            assert kv.shared
            kv.put("k", b"v", sync=True)
        assert subprocess.run([sys.executable, LAUNCH, "stop", db]).returncode == 0
        assert p.wait(timeout=30) == 0  # not restarted
        assert "stopped cleanly" in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
    r = subprocess.run([sys.executable, LAUNCH, "status", db], capture_output=True, text=True)
    assert r.returncode == 1 and "no writer" in r.stdout
    with KVault(db) as kv:
        assert not kv.shared and kv["k"] == b"v"


def _registry(db):
    with open(os.path.realpath(db) + "-kvault") as f:
        return dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line)


def test_writer_killed_while_recovering_is_restarted_with_backoff(tmp_path):
    """kill -9 of the writer, then of its replacement as soon as it exists:
    the launcher keeps restarting (it used to exit 1) and the writes of an
    attached client that returned survive."""
    import signal

    db = str(tmp_path / "r.db")
    p = _launch("serve", db, "--commit-interval-ms", "600000", stderr=subprocess.PIPE, text=True)
    try:
        _wait_serving(db)
        kv = KVault(db, shared=True)
        for i in range(100):
            kv[f"k{i}"] = i            # applied, not committed (long interval)
        first = int(_registry(db)["pid"])
        os.kill(first, signal.SIGKILL)
        # the replacement: killed as soon as it is seen, before or while it replays
        deadline = time.monotonic() + 20
        killed = 0
        while time.monotonic() < deadline and killed < 2:
            out = subprocess.run(["pgrep", "-f", f"kvault-writer.*{db}"], capture_output=True,
                                 text=True).stdout.split()
            for pid in map(int, out):
                if pid != first:
                    os.kill(pid, signal.SIGKILL)
                    first = pid
                    killed += 1
            time.sleep(0.005)
        assert killed >= 1
        _wait_serving(db, timeout=30)
        assert p.poll() is None, p.stderr.read()
        assert [kv[f"k{i}"] for i in range(100)] == list(range(100))
        kv.close()
        subprocess.run([sys.executable, LAUNCH, "stop", db], check=True, timeout=90)
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_stop_and_clean_recover_a_dead_writer(tmp_path):
    """A writer killed -9 with no successor: `stop` (and `clean`) commit its
    applied writes and remove its shared memory."""
    import signal

    db = str(tmp_path / "d.db")
    w = subprocess.Popen([WRITER, "--commit-interval-ms", "600000", db], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert w.stdout.readline().startswith("ready")
        seg = _registry(db)["segment"]
        child = os.fork()
        if child == 0:                 # a client that writes and is gone
            code = 1
            try:
                kv = KVault(db, shared=True)
                kv["survives"] = b"yes"
                code = 0
            finally:
                os._exit(code)
        assert os.waitpid(child, 0)[1] == 0
        w.kill()
        w.wait()
        assert os.path.exists("/dev/shm" + seg)
        r = subprocess.run([sys.executable, LAUNCH, "clean", db], capture_output=True, text=True,
                           timeout=90)
        assert r.returncode == 0, r.stderr
        assert "recovered" in r.stdout
        assert not os.path.exists("/dev/shm" + seg)
        with KVault(db, shared=False) as kv:
            assert kv["survives"] == b"yes"
        r = subprocess.run([sys.executable, LAUNCH, "clean", db], capture_output=True, text=True,
                           timeout=90)
        assert r.returncode == 0 and "nothing to clean" in r.stdout
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
