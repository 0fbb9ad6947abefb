"""Regenerate the vec0 fixture files of this directory with the real sqlite-vec.

Needs sqlite-vec's loadable extension (version 0.1.9, Linux x64):

    cd /tmp && npm pack sqlite-vec-linux-x64@0.1.9 && tar xzf sqlite-vec-linux-x64-0.1.9.tgz

then, from the repository root, with Debian's Python (its sqlite3 module can
load extensions):

    /usr/bin/python3 tests/data/vec0/make_fixtures.py [/tmp/package/vec0]

Each fixture is a table declared exactly as sqlite-vec based kohakuvault releases
declare their vector tables (a vec0 virtual table with an INTEGER value_ref
metadata column and one vector column, plus <table>_values), filled with
seeded random vectors (also saved as <fixture>.npy, row i = rowid i+1),
with every 7th row from rowid 3 deleted. Values are raw bytes b"v<i>"
(no encoding header). The tests never run this script.
"""

import os
import sqlite3
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# name, table, vec0 vector declaration, element dtype, dims, rows
FIXTURES = [
    ("f32_cosine.db", "vec_kvault", "float[16] distance_metric=cosine", np.float32, 16, 300),
    ("f32_l2.db", "docs", "float[8]", np.float32, 8, 1100),
    ("f32_l1.db", "items", "float[12] distance_metric=L1", np.float32, 12, 250),
]


def make(ext, name, table, decl, dtype, dims, rows):
    path = os.path.join(HERE, name)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    rng = np.random.default_rng(len(name) * 7919 + dims)
    data = rng.standard_normal((rows, dims)).astype(dtype)
    if "cosine" in decl:  # those releases normalise before storing
        data = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(dtype)
    con = sqlite3.connect(path)
    con.enable_load_extension(True)
    con.load_extension(ext)
    con.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS {table} USING vec0("
                f"value_ref INTEGER, vector {decl})")
    con.execute(f"CREATE TABLE IF NOT EXISTS {table}_values "
                "(id INTEGER PRIMARY KEY AUTOINCREMENT, value BLOB NOT NULL)")
    for i in range(rows):
        cur = con.execute(f"INSERT INTO {table}_values(value) VALUES (?)", (f"v{i}".encode(),))
        ref = cur.lastrowid
        con.execute(f"INSERT INTO {table}(value_ref, vector) VALUES (?, ?)",
                    (ref, struct.pack(f"<{dims}f", *data[i].tolist())))
    # delete every 7th row and its value, as VectorKVault.delete does
    for rowid in range(3, rows + 1, 7):
        ref = con.execute(f"SELECT value_ref FROM {table} WHERE rowid = ?", (rowid,)).fetchone()[0]
        con.execute(f"DELETE FROM {table} WHERE rowid = ?", (rowid,))
        con.execute(f"DELETE FROM {table}_values WHERE id = ?", (ref,))
    con.commit()
    con.execute("VACUUM")
    con.close()
    np.save(os.path.join(HERE, name.replace(".db", ".npy")), data)


def main():
    ext = sys.argv[1] if len(sys.argv) > 1 else "/tmp/package/vec0"
    for fx in FIXTURES:
        make(ext, *fx)


if __name__ == "__main__":
    main()
