"""Files with sqlite-vec vec0 tables (docs/api.md §8.4, made by the real
extension: tests/data/vec0/README.md) open read-only without the extension,
search like a numpy brute force, refuse writes naming migrate_vec0, migrate
in place and search (and write) again after migration."""

import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

import kohakuvault
from kohakuvault import InvalidArgument, KohakuVaultError, VectorKVault

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "vec0")

# file, table, metric, dims, rows written
FIXTURES = [
    ("f32_cosine.db", "vec_kvault", "cosine", 16, 300),
    ("f32_l2.db", "docs", "l2", 8, 1100),
    ("f32_l1.db", "items", "l1", 12, 250),
]


def deleted(rowid):
    return rowid >= 3 and (rowid - 3) % 7 == 0


def fixture(tmp_path, name):
    """A private copy of a fixture file and its vectors (row i = rowid i+1)."""
    dst = tmp_path / name
    shutil.copy(os.path.join(DATA, name), dst)
    data = np.load(os.path.join(DATA, name.replace(".db", ".npy")))
    return str(dst), data


def reference(data, q, metric, k):
    """Brute-force k-NN over the live rows in float64: [(rowid, distance)]."""
    ids = np.array([i + 1 for i in range(len(data)) if not deleted(i + 1)])
    x = data[ids - 1].astype(np.float64)
    q = np.asarray(q, dtype=np.float64)
    if metric == "cosine":
        d = 1.0 - (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    elif metric == "l2":
        d = np.sqrt(((x - q) ** 2).sum(axis=1))
    else:
        d = np.abs(x - q).sum(axis=1)
    order = np.lexsort((ids, d))[:k]
    return [(int(ids[i]), float(d[i])) for i in order]


def check_search(vkv, data, metric, dims, seed):
    rng = np.random.default_rng(seed)
    for _ in range(5):
        q = rng.standard_normal(dims).astype(np.float32)
        for k in (1, 10, 2000):
            got = vkv.search(q, k=k)
            want = reference(data, q, metric, k)
            assert [g[0] for g in got] == [w[0] for w in want]
            assert [g[1] for g in got] == pytest.approx([w[1] for w in want], abs=1e-5)
            assert [g[2] for g in got] == [f"v{g[0] - 1}".encode() for g in got]


@pytest.mark.parametrize("name,table,metric,dims,rows", FIXTURES)
def test_vec0_fixture_opens_read_only_and_searches(tmp_path, name, table, metric, dims, rows):
    path, data = fixture(tmp_path, name)
    vkv = VectorKVault(path, table=table, dimensions=dims, metric=metric)
    live = [r for r in range(1, rows + 1) if not deleted(r)]
    assert vkv.count() == len(live) == len(vkv)
    assert vkv.exists(1) and not vkv.exists(3) and 3 not in vkv
    vec, val = vkv.get_by_id(live[-1])
    np.testing.assert_allclose(vec, data[live[-1] - 1], rtol=1e-6)
    assert val == f"v{live[-1] - 1}".encode()
    with pytest.raises(KohakuVaultError, match="ID 3 not found"):
        vkv.get_by_id(3)
    check_search(vkv, data, metric, dims, seed=dims)
    many = vkv.search_many(np.stack([data[0], data[5]]), k=3)
    assert [m[0][0] for m in many] == [1, 6]
    # writes refuse with a message naming the converter; nothing changes
    for call in (lambda: vkv.insert(data[0], b"x"), lambda: vkv.delete(1),
                 lambda: vkv.update(1, value=b"x")):
        with pytest.raises(InvalidArgument, match="migrate_vec0"):
            call()
    assert vkv.count() == len(live)


@pytest.mark.parametrize("name,table,metric,dims,rows", FIXTURES)
def test_vec0_fixture_migrates_in_place(tmp_path, name, table, metric, dims, rows):
    path, data = fixture(tmp_path, name)
    live = [r for r in range(1, rows + 1) if not deleted(r)]
    assert kohakuvault.migrate_vec0(path, table) == len(live)
    con = sqlite3.connect(path)
    names = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    assert table in names and f"{table}_values" in names
    assert not any(n.startswith(f"{table}_vector_chunks0") or n == f"{table}_rowids" for n in names)
    assert "VIRTUAL" not in con.execute("SELECT sql FROM sqlite_master WHERE name=?", (table,)).fetchone()[0]
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    vkv = VectorKVault(path, table=table, dimensions=dims, metric=metric)
    assert vkv.count() == len(live)
    check_search(vkv, data, metric, dims, seed=dims + 1)
    # writable now: the ids continue after the largest one
    new = vkv.insert(data[0], b"new")
    assert new == max(live) + 1
    assert vkv.search(data[0], k=2)[0][0] in (1, new)
    vkv.delete(1)
    assert not vkv.exists(1)
    # a second migration finds no vec0 table
    with pytest.raises(InvalidArgument, match="not a sqlite-vec vec0 table"):
        kohakuvault.migrate_vec0(path, table)


def test_vec0_migrate_cli_and_errors(tmp_path):
    path, data = fixture(tmp_path, "f32_l1.db")
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "kohakuvault.migrate_vec0", path, "items"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "vectors converted" in out.stdout
    assert out.stderr == ""  # no runpy warning about the module
    bad = subprocess.run([sys.executable, "-m", "kohakuvault.migrate_vec0", path, "nope"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "not a sqlite-vec vec0 table" in bad.stderr
    with pytest.raises(InvalidArgument):
        kohakuvault.migrate_vec0(path, "bad name;")


def test_vec0_open_with_other_dimensions_is_refused(tmp_path):
    path, _ = fixture(tmp_path, "f32_l2.db")
    with pytest.raises(ValueError, match="8-dimension"):
        VectorKVault(path, table="docs", dimensions=4, metric="l2")


def test_vec0_migrate_module_import_keeps_the_function_callable(tmp_path):
    import importlib

    path, _ = fixture(tmp_path, "f32_cosine.db")
    importlib.import_module("kohakuvault.migrate_vec0")  # rebinds the package attribute
    assert kohakuvault.migrate_vec0(path, "vec_kvault") == 300 - len([r for r in range(1, 301) if deleted(r)])
