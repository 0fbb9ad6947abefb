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
