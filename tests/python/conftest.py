"""Shared pytest fixtures: temporary database files and open vaults.

Every fixture works on real SQLite files under pytest's ``tmp_path``;
nothing is mocked. Vaults opened by a fixture are closed afterwards.
"""

import sqlite3

import pytest

from kohakuvault import KVault


# ---- shared mode -------------------------------------------------------
# `pytest --shared-mode` runs every test that uses `db_path` against a
# kvault-writer serving that file, so `KVault(db_path)` attaches
# (docs/shared-mode.md); `raw_row` then first asks the writer to commit.


def die_with_parent():
    """``preexec_fn`` for writer processes started by tests: the kernel sends
    SIGTERM when the test process dies (prctl PR_SET_PDEATHSIG), so a test
    run killed from outside leaves no kvault-writer behind."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def pytest_addoption(parser):
    parser.addoption("--shared-mode", action="store_true", default=False,
                     help="serve db_path with a kvault-writer (KVault attaches)")


# Embedded-only behaviour, documented in docs/shared-mode.md: the writer
# creates the file and the "kv" table before any test code runs, and an
# attached process never sees SQLite's busy state (the writer owns writes).
_EMBEDDED_ONLY = {
    "test_tables_share_one_file": "the writer creates the 'kv' table when it starts",
    "test_page_size_only_on_new_file": "the writer creates the file (page size fixed then)",
    "test_busy_without_retries_raises_database_busy": "attached writes never see SQLITE_BUSY",
    "test_busy_is_retried_with_backoff": "attached writes never see SQLITE_BUSY",
    "test_busy_open_is_retried": "an attached open never takes SQLite's write lock",
    "test_busy_open_without_retries_raises_database_busy":
        "an attached open never takes SQLite's write lock",
    "test_textvault_schema_and_pragmas":
        "the writer's own kohakuvault_meta table is in the served file",
}


# The embedded write-back cache (values invisible to SQLite until a flush,
# flush thresholds, locking) is replaced in shared mode by the ring and the
# writer's group commit (docs/shared-mode.md, "Differences").
_EMBEDDED_ONLY_MODULES = {"test_cache.py": "embedded write-back cache semantics"}


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--shared-mode"):
        return
    for item in items:
        reason = _EMBEDDED_ONLY.get(item.originalname or item.name) or \
            _EMBEDDED_ONLY_MODULES.get(item.fspath.basename)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"embedded-only: {reason}"))


def _writer_binary():
    """The writer to serve db_path with (kohakuvault._writer.writer_binary)."""
    import os

    from kohakuvault._writer import writer_binary

    return writer_binary(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

@pytest.fixture
def shared_mode(request):
    """True when the suite runs with --shared-mode."""
    return request.config.getoption("--shared-mode")


@pytest.fixture
def db_path(tmp_path, shared_mode):
    """Path (``str``) of a database file that does not exist yet (with
    --shared-mode: created and served by a kvault-writer for the test)."""
    path = str(tmp_path / "test.db")
    if not shared_mode:
        yield path
        return
    import signal
    import subprocess

    exe = _writer_binary()
    if exe is None:
        pytest.fail("--shared-mode: kvault-writer is not built")
    proc = subprocess.Popen([exe, path], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, preexec_fn=die_with_parent)
    try:
        assert proc.stdout.readline().startswith("ready")
        yield path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _commit_if_served(path, table):
    """Shared mode: make the writer commit everything applied."""
    if table != "kv":
        return
    try:
        from kohakuvault import _kvault
    except ImportError:
        return
    if hasattr(_kvault, "_attach_served") and _kvault._attach_served(path, table):
        from kohakuvault import KVault

        with KVault(path, shared=True) as kv:
            kv.flush_cache()


@pytest.fixture
def kv(db_path):
    """A fresh ``KVault`` on ``db_path`` with default options."""
    vault = KVault(db_path)
    yield vault
    vault.close()


@pytest.fixture
def raw_row():
    """``raw_row(path, key, table="kv")``: the stored value of ``key`` read
    with the stdlib ``sqlite3`` module (``None`` when absent), bypassing
    kohakuvault entirely. ``str`` keys are looked up as their UTF-8 BLOB."""

    def read(path, key, table="kv"):
        if isinstance(key, str):
            key = key.encode("utf-8")
        _commit_if_served(path, table)
        con = sqlite3.connect(path)
        try:
            row = con.execute(f"SELECT value FROM {table} WHERE key = ?", (key,)).fetchone()
        finally:
            con.close()
        return None if row is None else bytes(row[0])

    return read


@pytest.fixture
def raw_put():
    """``raw_put(path, key, value, table="kv")``: upsert a row with the
    stdlib ``sqlite3`` module (keys bound as BLOBs, like kohakuvault)."""

    def write(path, key, value, table="kv"):
        if isinstance(key, str):
            key = key.encode("utf-8")
        con = sqlite3.connect(path, timeout=10)
        try:
            with con:
                con.execute(
                    f"INSERT OR REPLACE INTO {table}(key, value) VALUES (?, ?)", (key, value)
                )
        finally:
            con.close()

    return write


@pytest.fixture
def run_threads():
    """``run_threads(body, n)``: run ``body(i)`` for i in range(n), each in
    its own thread, join them (120 s each) and return the exceptions raised."""
    import threading

    def run(body, n):
        errors = []

        def worker(i):
            try:
                body(i)
            except Exception as e:  # reported to the test, which asserts on it
                errors.append(e)

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=120)
        return errors

    return run


@pytest.fixture
def run_script():
    """``run_script(source, *args)``: run ``source`` with this interpreter in
    a child process (15 min limit), print its output, assert it exited with
    status 0 and return the CompletedProcess."""
    import subprocess
    import sys

    def run(source, *args):
        proc = subprocess.run(
            [sys.executable, "-c", source, *args],
            capture_output=True,
            text=True,
            timeout=900,
        )
        print(proc.stdout, proc.stderr)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    return run
