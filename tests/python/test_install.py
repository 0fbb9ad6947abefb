"""Installation as a user does it: `pip install <checkout>` into a fresh venv
outside the checkout, then only what that install put on PATH (no
$KVAULT_WRITER, no build tree in sight): the `kvault-launch` command serves a
vault with the packaged kvault-writer, a KVault(shared=True) in the venv's
python writes and reads through it, `kvault-launch status` shows it and
`kvault-launch stop` ends it.

pip reuses the CMake build that $KVAULT_WRITER belongs to
(KV_PYEXT_BUILD_DIR, setup.py), so the install compiles nothing new."""

import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WRITER = os.environ.get("KVAULT_WRITER")
BUILD = os.path.dirname(os.path.dirname(WRITER)) if WRITER else None
pytestmark = pytest.mark.skipif(
    not BUILD or not os.path.exists(os.path.join(BUILD, "CMakeCache.txt")),
    reason="KVAULT_WRITER does not name a kvault-writer inside a CMake build directory")

PUT_GET = """
import sys
from kohakuvault import KVault
kv = KVault(sys.argv[1], shared=True)
kv["installed"] = {"ok": 1}
kv.put("raw", b"bytes", sync=True)
print(kv.shared, kv["installed"]["ok"], kv["raw"].decode())
kv.close()
"""

SHARED_WITHOUT_WRITER = """
import sys
from kohakuvault import KVault
try:
    KVault(sys.argv[1], shared=True)
except Exception as exc:
    print(exc)
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """(venv directory, environment) after `pip install <checkout>`."""
    top = tmp_path_factory.mktemp("install")
    env_dir = str(top / "venv")
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", env_dir],
                   check=True, timeout=300)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KVAULT_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.path.join(env_dir, "bin") + ":/usr/bin:/bin"
    r = subprocess.run([os.path.join(env_dir, "bin", "pip"), "install", "-q",
                        "--no-build-isolation", "--no-deps", "--no-index", ROOT],
                       env=dict(env, KV_PYEXT_BUILD_DIR=BUILD), cwd=str(top),
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    return env_dir, env, top


def _run(venv, *cmd, **kw):
    env_dir, env, top = venv
    return subprocess.run(list(cmd), env=env, cwd=str(top), capture_output=True, text=True,
                          timeout=120, **kw)


def test_console_scripts_and_packaged_binaries(venv):
    env_dir, _env, _top = venv
    for name in ("kohakuvault", "kvault-launch", "kvault-writer", "kvault-reader"):
        assert os.access(os.path.join(env_dir, "bin", name), os.X_OK), name
    r = _run(venv, "python", "-c", "import kohakuvault, os; print(kohakuvault.__file__)")
    pkg = os.path.dirname(r.stdout.strip())
    assert pkg.startswith(env_dir), r.stdout + r.stderr   # the install, not the checkout
    for name in ("kvault-writer", "kvault-reader"):
        assert os.access(os.path.join(pkg, "bin", name), os.X_OK), name
    r = _run(venv, "kvault-writer", "--help")
    assert r.returncode == 0 and "usage: kvault-writer" in r.stdout, r.stderr
    r = _run(venv, "kvault-reader", "--help")
    assert r.returncode == 0 and "kvault-reader" in r.stdout + r.stderr
    for cmd in (["kvault-launch", "--help"], ["kohakuvault", "--help"],
                ["python", "-m", "kohakuvault", "--help"]):
        r = _run(venv, *cmd)
        assert r.returncode == 0 and "serve" in r.stdout and "status" in r.stdout, cmd


def test_installed_launcher_serves_a_shared_vault(venv):
    env_dir, env, top = venv
    db = str(top / "served.db")
    r = _run(venv, "python", "-c", SHARED_WITHOUT_WRITER, db)
    assert f"kvault-launch serve {db}" in r.stdout and "scripts/" not in r.stdout, r.stdout
    serve = subprocess.Popen(["kvault-launch", "serve", db], env=env, cwd=str(top),
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            st = _run(venv, "kvault-launch", "status", db)
            if st.returncode == 0:
                break
            assert serve.poll() is None, serve.stderr.read()
            assert time.monotonic() < deadline, "no writer came up"
            time.sleep(0.1)
        figures = dict(line.split(None, 1) for line in st.stdout.splitlines() if line.strip())
        assert figures["db"].strip() == os.path.realpath(db)
        exe = os.path.realpath(f"/proc/{figures['pid'].strip()}/exe")
        assert exe.startswith(env_dir) and exe.endswith("kohakuvault/bin/kvault-writer"), exe

        r = _run(venv, "python", "-c", PUT_GET, db)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["True", "1", "bytes"]
        st = _run(venv, "kvault-launch", "status", db)
        assert st.returncode == 0
        figures = dict(line.split(None, 1) for line in st.stdout.splitlines() if line.strip())
        assert int(figures["applied_seq"]) >= 2

        assert _run(venv, "kvault-launch", "stop", db).returncode == 0
        assert serve.wait(timeout=60) == 0
        assert "stopped cleanly" in serve.stderr.read()
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, 9)
            serve.wait()
    r = _run(venv, "kvault-launch", "status", db)
    assert r.returncode == 1 and "no writer" in r.stdout
    r = _run(venv, "kohakuvault", "dump", db, "--values")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == [   # 10-byte header + msgpack {"ok": 1}
        '{"key": "installed", "size": 15, "value": {"ok": 1}}',
        '{"key": "raw", "size": 5, "value_hex": "6279746573"}',
    ]
