"""scripts/kvault-launch with real processes: serve with worker commands,
status, and stop (which ends a serving launcher instead of restarting)."""

import os
import subprocess
import sys
import time

import pytest

from kohakuvault import KVault

from conftest import SPAWN_PASS

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
    with KVault(db) as kv:  # embedded; the spawned-shared pass starts a new writer
        assert kv.shared == SPAWN_PASS and kv["k"] == b"v"


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


# ---------------------------------------------------------------------------
# Command lines: help, option validation, log stamps (kvault-launch and the
# `kohakuvault` command, `python -m kohakuvault`)
# ---------------------------------------------------------------------------

import argparse
import json
import re
import sqlite3

from kohakuvault import ColumnVault
from kohakuvault import cli as kv_cli
from kohakuvault import launch as kv_launch

ISO_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d ")


def _subparsers(parser):
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action


@pytest.mark.parametrize("build", [kv_launch.build_parser, kv_cli.build_parser])
def test_every_command_and_option_has_help(build):
    sub = _subparsers(build())
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert set(helps) == set(sub.choices)
    for name, parser in sub.choices.items():
        assert helps[name] and parser.description, name
        for action in parser._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}"


def test_help_shows_defaults_and_names_every_command():
    r = subprocess.run([sys.executable, "-m", "kohakuvault", "--help"], capture_output=True,
                       text=True)
    assert r.returncode == 0
    for name in ("serve", "status", "stop", "clean", "stat", "dump", "check"):
        assert re.search(rf"^\s+{name}\s+\S", r.stdout, re.M), name
    r = subprocess.run([sys.executable, LAUNCH, "serve", "--help"], capture_output=True,
                       text=True)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "--shards N shards of the writer's shared-memory segment (default: 4)" in text
    assert "(default: 256M)" in text and "(default: 20)" in text
    for name in ("status", "stop", "clean"):
        r = subprocess.run([sys.executable, LAUNCH, name, "--help"], capture_output=True,
                           text=True)
        assert r.returncode == 0 and len(r.stdout.split("\n\n")[1]) > 40, r.stdout


@pytest.mark.parametrize("args,option", [
    (["--cache-size", "lots"], "--cache-size"),
    (["--cache-size", "0"], "--cache-size"),
    (["--cache-size", "12Q"], "--cache-size"),
    (["--shards", "0"], "--shards"),
    (["--shards", "-2"], "--shards"),
    (["--shards", "257"], "--shards"),
    (["--readers", "0"], "--readers"),
    (["--commit-interval-ms", "soon"], "--commit-interval-ms"),
    (["--port", "70000"], "--port"),
    (["--group", "kv-no-such-group"], "--group"),
])
def test_bad_serve_options_start_no_writer(tmp_path, args, option):
    db = str(tmp_path / "bad.db")
    r = subprocess.run([sys.executable, LAUNCH, "serve", db, *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert f"argument {option}: expected" in r.stderr and repr(args[1]) in r.stderr, r.stderr
    # no writer ran: it would have created the file and its registry
    assert not os.path.exists(db) and not os.path.exists(db + "-kvault")


@pytest.mark.parametrize("size,expected", [
    ("256M", 256 << 20), ("1G", 1 << 30), ("1048576", 1048576), ("64KiB", 64 << 10),
    ("2mb", 2 << 20), ("1.5G", 3 << 29),
])
def test_sizes_parse_like_the_writer(size, expected):
    assert kv_launch.parse_size(size) == expected


@pytest.mark.parametrize("args,option", [
    (["--shards", "0"], "--shards"),
    (["--shards", "4x"], "--shards"),
    (["--cache-size", "lots"], "--cache-size"),
    (["--commit-interval-ms", "-1"], "--commit-interval-ms"),
    (["--synchronous", "sometimes"], "--synchronous"),
    (["--group", "kv-no-such-group"], "--group"),
])
def test_writer_rejects_bad_options_naming_them(tmp_path, args, option):
    db = str(tmp_path / "w.db")
    r = subprocess.run([WRITER, *args, db], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert f"kvault-writer: {option}: expected" in r.stderr, r.stderr
    assert not os.path.exists(db)


def test_log_lines_carry_iso_timestamps(tmp_path):
    db = str(tmp_path / "log.db")
    p = _launch("serve", db, stderr=subprocess.PIPE, text=True)
    try:
        _wait_serving(db)
        assert subprocess.run([sys.executable, LAUNCH, "stop", db]).returncode == 0
        assert p.wait(timeout=60) == 0
        lines = p.stderr.read().splitlines()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    launcher = [ln for ln in lines if " kvault-launch[" in ln]
    writer = [ln for ln in lines if " kvault-writer[" in ln]
    assert launcher and writer, lines
    for ln in launcher + writer:
        assert ISO_STAMP.match(ln), ln


# ---------------------------------------------------------------------------
# stat / dump / check on real files
# ---------------------------------------------------------------------------

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "kohakuvault", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def vault(tmp_path):
    """A file with a KVault table (300 keys), a fixed-size column (5000
    i64) and a variable-size column (200 strings); WAL checkpointed."""
    db = str(tmp_path / "v.db")
    with KVault(db, shared=False) as kv:
        for i in range(300):
            kv[f"key{i:03d}"] = b"x" * i
        kv["num"] = 42
        kv["doc"] = {"a": [1, 2]}
    cv = ColumnVault(db)
    cv.create_column("ints", "i64").extend(list(range(5000)))
    cv.create_column("names", "str:utf8").extend([f"name-{i}" for i in range(200)])
    del cv
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return db


def test_stat_counts_tables(vault):
    r = _cli("stat", vault, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    rows = {t["table"]: t for t in info["tables"]}
    assert rows["kv"]["rows"] == 302
    assert rows["col_meta"]["rows"] == 3          # ints, names_data, names_idx
    assert rows["kv"]["bytes"] >= sum(range(300))
    assert info["page_size"] * info["page_count"] == os.path.getsize(vault)
    assert info["journal_mode"] == "wal" and info["freelist_pages"] >= 0
    text = _cli("stat", vault)
    assert text.returncode == 0
    assert re.search(r"^kv\s+302\s+\d+$", text.stdout, re.M), text.stdout


def test_dump_keys_sizes_and_values(vault):
    r = _cli("dump", vault)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(lines) == 302
    sizes = {ln["key"]: ln["size"] for ln in lines}
    assert all(sizes[f"key{i:03d}"] == i for i in range(300))
    r = _cli("dump", vault, "--values", "--limit", "400")
    values = {ln["key"]: ln for ln in map(json.loads, r.stdout.splitlines())}
    assert values["num"]["value"] == 42 and values["doc"]["value"] == {"a": [1, 2]}
    assert values["key003"]["value_hex"] == "787878"
    assert _cli("dump", vault, "--table", "nope").returncode == 1


def test_check_passes_a_good_vault(vault):
    r = _cli("check", vault)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


def test_check_finds_an_overwritten_page(vault):
    con = sqlite3.connect(vault)
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name='kv'").fetchone()[0]
    page = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    with open(vault, "r+b") as f:          # the kv table's root b-tree page
        f.seek((root - 1) * page + 8)
        f.write(b"\xff" * 512)
    r = _cli("check", vault)
    assert r.returncode == 1, r.stdout
    assert "integrity_check" in r.stdout or "cannot read" in r.stdout


def test_check_finds_broken_column_invariants(vault):
    con = sqlite3.connect(vault)
    con.execute("UPDATE col_meta SET length = length + 1 WHERE name = 'ints'")
    con.execute("UPDATE col_chunks SET bytes_used = 3 WHERE col_id = "
                "(SELECT col_id FROM col_meta WHERE name = 'names_data')")
    con.execute("UPDATE kohakuvault_meta SET value = '9' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    r = _cli("check", vault)
    assert r.returncode == 1
    assert "column 'ints': length 5001" in r.stdout
    assert "column 'names': element 0" in r.stdout
    assert "schema_version is '9'" in r.stdout


def test_serve_group_reaches_the_writer_and_the_unix_socket(tmp_path):
    """serve --group passes the group to kvault-writer, and the RESP unix
    socket the launcher creates gets mode 0660 and that group."""
    import grp
    import stat as st

    args = kv_launch.build_parser().parse_args(["serve", str(tmp_path / "g.db"), "--group",
                                                "users"])
    cmd = kv_launch.writer_command(args)
    assert cmd[cmd.index("--group") + 1] == "users"
    assert "--group" not in kv_launch.writer_command(
        kv_launch.build_parser().parse_args(["serve", str(tmp_path / "g.db")]))
    if os.geteuid() != 0:
        pytest.skip("needs root to give the socket a group it is not in")
    gid = grp.getgrnam("users").gr_gid
    path = str(tmp_path / "g.sock")
    s = kv_launch.listen_unix(path, kv_launch.group_id("users"))
    try:
        info = os.stat(path)
        assert (st.S_IMODE(info.st_mode), info.st_gid) == (0o660, gid)
    finally:
        s.close()
    s = kv_launch.listen_unix(path)
    s.close()
    assert st.S_IMODE(os.stat(path).st_mode) == 0o600
