"""Shared pytest fixtures: temporary database files and open vaults.

Every fixture works on real SQLite files under pytest's ``tmp_path``;
nothing is mocked. Vaults opened by a fixture are closed afterwards.
"""

import os
import sqlite3

import pytest

from kohakuvault import KVault


# ---- the spawned-shared pass -------------------------------------------
# `KVAULT_SHARED=spawn pytest ...` (the second pass of scripts/test) runs the
# whole suite with every `KVault` opened with the default `shared=` starting
# or attaching to a kvault-writer for its file (docs/shared-mode.md, "The
# test suite's two passes"); `raw_row` then first asks the writer to commit.

SPAWN_PASS = os.environ.get("KVAULT_SHARED") == "spawn"


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


# Tests that check embedded-only behaviour by nature ("file::test", or
# "file::test[params]" for one case: reason), skipped in the spawned-shared
# pass; the same list, with the same reasons, is in docs/shared-mode.md
# ("The test suite's two passes").
_WRITE_BACK = ("the embedded write-back cache: what SQLite holds before and after a "
               "flush (attached, a put is applied at once and committed by the "
               "writer's group commit)")
_OPENED_EMBEDDED = ("needs a KVault opened embedded with the default shared='auto' "
                    "before a writer serves its file (with KVAULT_SHARED=spawn the open "
                    "starts one)")
EMBEDDED_ONLY = {
    "test_shared_lifecycle.py::test_object_opened_before_the_writer_routes_its_next_write":
        _OPENED_EMBEDDED,
    "test_shared_lifecycle.py::test_object_of_another_process_opened_before_the_writer":
        _OPENED_EMBEDDED,
    "test_shared_lifecycle.py::test_writer_starting_during_embedded_writes_misses_none":
        _OPENED_EMBEDDED,
    "test_shared_lifecycle.py::test_stop_then_restart_routes_again": _OPENED_EMBEDDED,
    "test_faults.py::test_embedded_object_opened_before_the_writer_replays_at_its_commit[auto]":
        _OPENED_EMBEDDED,
    "test_shared_kv_tables.py::test_object_opened_before_the_writer_routes_its_next_write":
        _OPENED_EMBEDDED,
    "test_kvault.py::test_page_size_only_on_new_file":
        "the writer creates the file (page size fixed then)",
    "test_kvault.py::test_busy_without_retries_raises_database_busy":
        "attached writes never see SQLITE_BUSY",
    "test_kvault.py::test_busy_is_retried_with_backoff": "attached writes never see SQLITE_BUSY",
    "test_kvault.py::test_busy_open_is_retried": "an attached open never takes SQLite's write lock",
    "test_kvault.py::test_busy_open_without_retries_raises_database_busy":
        "an attached open never takes SQLite's write lock",
    "test_kvault.py::test_wal_switch":
        "a writer keeps its file in WAL mode whatever enable_wal= says",
    "test_kvault.py::test_mmap_size":
        "attached reads come from the shared segment: the own connection may never map the file",
    "test_cache.py::test_cache_visibility": _WRITE_BACK,
    "test_cache.py::test_overwrite_in_cache_keeps_latest": _WRITE_BACK,
    "test_cache.py::test_flush_threshold_triggers_flush": _WRITE_BACK,
    "test_cache.py::test_value_larger_than_cap_bypasses": _WRITE_BACK,
    "test_cache.py::test_overflow_flushes_then_caches": _WRITE_BACK,
    "test_cache.py::test_lock_cache_refuses_flush_but_never_drops": _WRITE_BACK,
    "test_cache.py::test_cache_context_manager": _WRITE_BACK,
    "test_cache.py::test_cache_context_manager_flushes_on_exception": _WRITE_BACK,
    "test_cache.py::test_daemon_flushes_within_interval": _WRITE_BACK,
}


def pytest_collection_modifyitems(config, items):
    if not SPAWN_PASS:
        return
    for item in items:
        base = item.fspath.basename
        reason = EMBEDDED_ONLY.get(f"{base}::{item.name}") or \
            EMBEDDED_ONLY.get(f"{base}::{item.originalname}")
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"embedded-only: {reason}"))


# ---- shared memory of killed writers -----------------------------------
# A writer killed with SIGKILL leaves its segment in /dev/shm for the next
# writer of its file to replay (docs/shared-mode.md, "Recovery"); once a
# test's files are gone no writer of them will come, and the segment would
# hold its memory until the machine restarts. When the session ends, the
# objects that appeared during it are removed if their writer (the pid that
# ends the name) is dead and they are older than a minute (a test of a
# concurrent run may still be about to replay a younger one).

_SHM = "/dev/shm"


def _writer_pid(name):
    """The writer pid that ends the name of a kvault shared-memory object
    ("kvault-<hash>-<generation>-<pid>[-slots]"), or None."""
    if not name.startswith("kvault-"):
        return None
    base = name[:-len("-slots")] if name.endswith("-slots") else name
    tail = base.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session", autouse=True)
def remove_segments_of_dead_writers():
    import time

    before = set(os.listdir(_SHM)) if os.path.isdir(_SHM) else set()
    yield
    if not os.path.isdir(_SHM):
        return
    now = time.time()
    for name in set(os.listdir(_SHM)) - before:
        pid = _writer_pid(name)
        if pid is None or _pid_alive(pid):
            continue
        path = os.path.join(_SHM, name)
        try:
            if now - os.stat(path).st_mtime > 60:
                os.unlink(path)
        except FileNotFoundError:
            pass


@pytest.fixture
def db_path(tmp_path):
    """Path (``str``) of a database file that does not exist yet (in the
    spawned-shared pass, the first ``KVault`` opened on it starts its
    writer)."""
    return str(tmp_path / "test.db")


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
