"""Bulk column appends (one operation of 16 MiB or more): the engine then
preallocates the WAL/database blocks and runs a writeback helper thread
(engine/col_fixed.c, "Bulk writes"). Contents, file integrity and the
connection settings must be exactly as for small appends."""

import os
import sqlite3

import numpy as np

from kohakuvault import ColumnVault, KVault

BIG = 3_000_000  # 24 MB of i64: over the 16 MiB bulk threshold


def _integrity(path):
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        pages, size = (con.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size"))
    finally:
        con.close()
    # preallocation keeps file sizes (FALLOC_FL_KEEP_SIZE): nothing past the pages
    assert os.path.getsize(path) <= pages * size


def test_bulk_extend_reads_back_and_keeps_the_file_sound(tmp_path):
    path = str(tmp_path / "bulk.db")
    src = np.arange(BIG, dtype=np.int64) * 7 - 3
    cv = ColumnVault(path)
    col = cv.create_column("x", "i64")
    col.append(-1)  # the bulk write starts inside a partly filled chunk
    col.extend(src)
    assert len(col) == BIG + 1
    assert col[0] == -1 and col[-1] == src[-1]
    assert np.array_equal(col.to_numpy()[1:], src)
    col.extend(src[::-1].copy())  # a second bulk write after the first
    back = col.to_numpy()
    assert np.array_equal(back[1:BIG + 1], src) and np.array_equal(back[BIG + 1:], src[::-1])
    # random reads after the bulk writes (the page cache is back to its size)
    rng = np.random.default_rng(1)
    for i in rng.integers(1, BIG, 200):
        assert col[int(i)] == src[int(i) - 1]
    cv.checkpoint()
    del col, cv
    _integrity(path)
    cv = ColumnVault(path)
    assert np.array_equal(cv["x"].to_numpy()[1:BIG + 1], src)


def test_bulk_extend_beside_a_kvault_in_the_same_file(tmp_path):
    path = str(tmp_path / "shared.db")
    kv = KVault(path)
    kv["before"] = b"1"
    cv = ColumnVault(kv)
    vec = cv.create_column("v", "vec:f32:8")
    arr = np.random.default_rng(2).standard_normal((BIG // 4, 8)).astype(np.float32)  # 24 MB
    vec.extend(arr)
    kv["after"] = b"2"
    assert np.array_equal(vec[:], arr)
    assert kv["before"] == b"1" and kv["after"] == b"2"
    kv.close()
    _integrity(path)
