"""The demo program (python -m kohakuvault.demo, run by scripts/demo) on a
small generated source folder, in shared mode (a real kvault-writer started
by scripts/kvault-launch, four attached worker processes) and embedded.

Each run is a real process tree; the read phase is kept short (1 s).
"""

import hashlib
import os
import random
import re
import shutil
import subprocess
import sys

import pytest

from kohakuvault import ColumnVault, KVault, _kvault
from kohakuvault._writer import writer_binary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = os.path.join(ROOT, "scripts", "kvault-launch")
NFILES = 300  # regular files in the generated folder, the big one included


WRITER = writer_binary(ROOT)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A folder of NFILES regular files in nested directories (sizes 0 B to
    64 KiB, one of 5 MiB, a non-ASCII name), plus a symlink the demo must
    skip, and a small word list. Returns (folder, word list, {rel: bytes})."""
    base = tmp_path_factory.mktemp("demo-src")
    src = base / "src"
    rng = random.Random(7)
    files = {}
    for i in range(NFILES - 2):
        rel = os.path.join(f"pkg{i % 7}", f"sub{i % 3}", *(["deep"] * (i % 4)), f"file{i}.txt")
        files[rel] = rng.randbytes(rng.choice((0, 1, 100, 3000, 20000, 65536)))
    files["big/archive.bin"] = rng.randbytes(5 * 1024 * 1024 + 17)
    files["pkg0/r\u00e9sum\u00e9 \u65e5\u672c.txt"] = "caf\u00e9\n".encode() * 50
    for rel, data in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    os.symlink("pkg0", src / "link-to-pkg0")
    os.symlink("big/archive.bin", src / "link-to-big")
    words = base / "words"
    words.write_text("".join(f"word{i}\n" for i in range(5000)))
    return str(src), str(words), files


def _run(*args, timeout=300):
    env = dict(os.environ, KVAULT_LAUNCH=LAUNCHER)
    if WRITER:
        env["KVAULT_WRITER"] = WRITER
    return subprocess.run([sys.executable, "-m", "kohakuvault.demo", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _modes():
    shared = pytest.param(False, id="shared",
                          marks=pytest.mark.skipif(WRITER is None,
                                                   reason="kvault-writer is not built"))
    return [shared, pytest.param(True, id="embedded")]


@pytest.mark.parametrize("embedded", _modes())
def test_demo_ingests_verifies_and_reads(source, tmp_path, embedded):
    src, words, files = source
    db = str(tmp_path / "demo.db")
    args = ["--source", src, "--words", words, "--db", db, "--read-seconds", "1"]
    r = _run(*args, *(["--embedded"] if embedded else []))
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    out = r.stdout
    n = len(files) + 1  # + the word list
    nbytes = sum(len(b) for b in files.values()) + os.path.getsize(words)

    # the printed summary
    assert f"PASS: {n} files verified, 0 mismatches" in out
    assert re.search(r"^mismatches 0$", out, re.M)
    assert f"files     {n} stored of {n} ({nbytes:,} bytes); skipped 2 symlinks" in out
    assert f"columns   path/size/mtime: {n} rows each (= {n} files)" in out
    assert f"{2 * n} keys" in out
    for phase, who in (("ingest", "producer 0"), ("ingest", "producer 1"), ("ingest", "all"),
                       ("verify", "reader 0"), ("verify", "reader 1"), ("verify", "all")):
        m = re.search(rf"^{phase}\s+{who}\s+(\d+)\s+([\d.,]+)\s+([\d.]+)\s+([\d.,]+)$", out, re.M)
        assert m, f"no {phase}/{who} row in:\n{out}"
        assert float(m.group(4).replace(",", "")) > 0
    assert sum(int(m) for m in re.findall(r"^ingest\s+producer \d\s+(\d+)", out, re.M)) == n
    assert sum(int(m) for m in re.findall(r"^verify\s+reader \d\s+(\d+)", out, re.M)) == n
    rows = re.findall(r"^random\s+reader \d\s+([\d.]+)\s+([\d,]+)\s+(\S+)$", out, re.M)
    assert len(rows) == 2, out
    for seconds, ops, hit in rows:
        assert float(seconds) >= 1.0 and int(ops.replace(",", "")) > 0
        if embedded:
            assert hit == "n/a"
        else:
            assert re.fullmatch(r"\d+\.\d%", hit), hit
    if not embedded:
        assert "committed sequence" in out  # the writer stopped cleanly
        assert not _kvault._attach_served(db, "kv"), "the writer still serves the vault"

    # every file is in the vault, with its metadata and its column row
    with KVault(db, shared=False) as kv:
        assert len(kv) == 2 * n
        for rel, data in files.items():
            key = "doc/" + rel
            assert kv[key] == data, key
            meta = kv["meta/" + key]
            assert meta["size"] == len(data)
            assert meta["sha256"] == hashlib.sha256(data).hexdigest()
            assert meta["mtime"] == os.stat(os.path.join(src, rel)).st_mtime
        with open(words, "rb") as f:
            assert kv["dict/words"] == f.read()
        assert "doc/link-to-pkg0" not in kv and "doc/link-to-big" not in kv
    cv = ColumnVault(db)
    paths, sizes, mtimes = list(cv["path"]), list(cv["size"]), list(cv["mtime"])
    assert len(paths) == len(sizes) == len(mtimes) == n
    assert sorted(paths) == sorted(["doc/" + rel for rel in files] + ["dict/words"])
    for p, s, m in zip(paths, sizes, mtimes):  # rows aligned across the two producers
        full = words if p == "dict/words" else os.path.join(src, p[len("doc/"):])
        assert (s, m) == (os.path.getsize(full), os.stat(full).st_mtime), p


@pytest.mark.parametrize("embedded", _modes())
def test_demo_mismatch_against_another_copy_exits_nonzero(source, tmp_path, embedded):
    """--verify-source: a copy of the folder in which one file differs (same
    size, one byte changed) and one is missing: two mismatches, exit 1."""
    src, words, files = source
    copy = tmp_path / "copy"
    shutil.copytree(src, copy, symlinks=True)
    changed = next(rel for rel in sorted(files) if "deep" in rel and len(files[rel]) > 100)
    data = bytearray(files[changed])
    data[len(data) // 2] ^= 0xFF
    (copy / changed).write_bytes(bytes(data))
    os.remove(copy / "big" / "archive.bin")
    db = str(tmp_path / "demo.db")
    r = _run("--source", src, "--words", words, "--db", db, "--read-seconds", "0.2",
             "--verify-source", str(copy), *(["--embedded"] if embedded else []))
    assert r.returncode == 1, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert re.search(r"^mismatches 2$", r.stdout, re.M), r.stdout
    assert f"MISMATCH doc/{changed}: sha256 differs from {copy / changed}" in r.stdout
    assert "MISMATCH doc/big/archive.bin: source unreadable" in r.stdout
    assert "FAIL: 2 mismatches" in r.stdout
    if not embedded:
        assert not _kvault._attach_served(db, "kv")


def test_demo_refuses_an_existing_db(source, tmp_path):
    src, words, _ = source
    db = tmp_path / "exists.db"
    db.write_bytes(b"")
    r = _run("--source", src, "--words", words, "--db", str(db), "--embedded")
    assert r.returncode == 2
    assert "exists" in r.stderr
    assert db.read_bytes() == b""


def test_demo_rejects_a_missing_source(tmp_path):
    r = _run("--source", str(tmp_path / "nope"), "--embedded")
    assert r.returncode == 2
    assert "is not a directory" in r.stderr
