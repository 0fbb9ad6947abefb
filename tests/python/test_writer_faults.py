"""The writer against clients that misbehave or vanish: what it must survive
without leaking, hanging or losing a write (real writer processes)."""

import os
import signal
import subprocess
import sys

from test_shared_mode import ROOT, WRITER, Writer, pytestmark  # noqa: F401  (skip rule)

LAUNCH = os.path.join(ROOT, "scripts", "kvault-launch")


def _fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_status_connections_do_not_leak_descriptors(tmp_path):
    """A connection that never attaches (each `kvault-launch status`) is
    closed by the writer when the peer hangs up."""
    db = str(tmp_path / "fd.db")
    w = Writer(db)
    try:
        env = dict(os.environ, KVAULT_WRITER=WRITER)
        status = [sys.executable, LAUNCH, "status", db]
        subprocess.run(status, check=True, capture_output=True, env=env, timeout=30)
        before = _fds(w.proc.pid)
        for _ in range(30):
            out = subprocess.run(status, check=True, capture_output=True, text=True, env=env,
                                 timeout=30)
            assert "attached" in out.stdout
        # the last hang-up is seen at the writer's next socket poll (<= 1 ms
        # when idle wakes it; its idle wait is at most 100 ms)
        subprocess.run(status, check=True, capture_output=True, env=env, timeout=30)
        assert _fds(w.proc.pid) <= before + 1
    finally:
        w.kill(signal.SIGTERM)
