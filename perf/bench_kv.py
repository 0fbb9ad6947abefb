#!/usr/bin/env python3
"""KVault (embedded) against stdlib sqlite3 and python3-lmdb, in one run.

Workloads, for 100 B and 16 KiB values and N keys (default 50,000):

- put: N single-key writes into an empty store.
    * sqlite3: one transaction, ``INSERT OR REPLACE`` per key (statement
      cached by the sqlite3 module); WAL, synchronous=NORMAL.
    * lmdb: one write transaction, ``txn.put`` per key.
    * KVault cache off: ``kv[k] = v`` per key (each its own transaction,
      which is what a caller without a cache gets).
    * KVault cache on: ``kv[k] = v`` per key with the write-back cache
      (cap 64 MiB, flush threshold 16 MiB), final ``flush_cache()`` timed.
    * KVault put_many: one ``kv.put_many(pairs)`` of all N pairs (one
      transaction, as sqlite3's), the batch row of the targets.
- get: N hot reads of every key in a shuffled order (fixed seed), after a
  warm-up pass over all keys.
    * sqlite3: ``con.execute("SELECT value FROM kv WHERE key=?", (k,))
      .fetchone()[0]`` (prepared once, reused from the module's cache).
    * lmdb: ``txn.get(k)`` inside one read transaction.
    * KVault: ``kv[k]``, cache off and on.

sqlite3 gets the same table shape as KVault (``key BLOB PRIMARY KEY NOT
NULL, value BLOB NOT NULL``) and the same mmap_size / cache_size, so the
comparison is about per-call work, not configuration. Each workload runs
``--repeat`` times (default 3) and the median is reported; ratios are taken
within this run. MB/s counts value bytes only. The targets checked at the
end (exit status 1 when one is missed): hot get 100 B >= 2x sqlite3; get
16 KiB (cache off) >= 0.5x lmdb and >= 3x sqlite3; put 16 KiB batch
(put_many) >= 2x sqlite3.

usage: bench_kv.py [--n 50000] [--repeat 3] [--dir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time

import lmdb

import kohakuvault
from kohakuvault import KVault

from harness import cpu_model  # perf/harness.py, beside this script
from targets import report  # perf/targets.py

SIZES = (100, 16384)
MMAP = 268435456
CACHE_KB = 100000


def machine() -> dict:
    return {
        "cpu": cpu_model("unknown"),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "lmdb": lmdb.version(),
        "kohakuvault": kohakuvault.__version__,
    }


# ----------------------------------------------------------------- stores

def sqlite_open(path):
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute(f"PRAGMA mmap_size={MMAP}")
    con.execute(f"PRAGMA cache_size=-{CACHE_KB}")
    con.execute("CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL)")
    return con


def sqlite_put(path, keys, value):
    con = sqlite_open(path)
    t0 = time.perf_counter()
    con.execute("BEGIN")
    ex = con.execute
    for k in keys:
        ex("INSERT OR REPLACE INTO kv(key, value) VALUES (?, ?)", (k, value))
    con.execute("COMMIT")
    dt = time.perf_counter() - t0
    con.close()
    return dt


def sqlite_get(path, order):
    con = sqlite_open(path)
    ex = con.execute
    sql = "SELECT value FROM kv WHERE key=?"
    for k in order:  # warm-up
        ex(sql, (k,)).fetchone()
    t0 = time.perf_counter()
    for k in order:
        ex(sql, (k,)).fetchone()[0]
    dt = time.perf_counter() - t0
    con.close()
    return dt


def lmdb_put(path, keys, value):
    env = lmdb.open(path, map_size=4 << 30, subdir=True)
    t0 = time.perf_counter()
    with env.begin(write=True) as txn:
        put = txn.put
        for k in keys:
            put(k, value)
    dt = time.perf_counter() - t0
    env.close()
    return dt


def lmdb_get(path, order):
    env = lmdb.open(path, map_size=4 << 30, subdir=True, readonly=True, lock=False)
    with env.begin() as txn:
        get = txn.get
        for k in order:
            get(k)
        t0 = time.perf_counter()
        for k in order:
            get(k)
        dt = time.perf_counter() - t0
    env.close()
    return dt


def kvault_put(path, keys, value, cache):
    kv = KVault(path)
    if cache:
        kv.enable_cache(cap_bytes=64 << 20, flush_threshold=16 << 20)
    t0 = time.perf_counter()
    for k in keys:
        kv[k] = value
    if cache:
        kv.flush_cache()
    dt = time.perf_counter() - t0
    kv.close()
    return dt


def kvault_put_many(path, keys, value):
    kv = KVault(path)
    pairs = [(k, value) for k in keys]
    t0 = time.perf_counter()
    kv.put_many(pairs)
    dt = time.perf_counter() - t0
    kv.close()
    return dt


def kvault_get(path, order, cache):
    kv = KVault(path)
    if cache:
        kv.enable_cache(cap_bytes=64 << 20, flush_threshold=16 << 20)
    for k in order:
        kv[k]
    t0 = time.perf_counter()
    for k in order:
        kv[k]
    dt = time.perf_counter() - t0
    kv.close()
    return dt


SYSTEMS = ("sqlite3", "lmdb", "KVault (cache off)", "KVault (cache on)")
PUT_ONLY = ("KVault (put_many)",)


def run(n: int, repeat: int, base: str) -> list[dict]:
    keys = [f"key{i:08d}".encode() for i in range(n)]
    order = keys[:]
    random.Random(42).shuffle(order)
    results = []
    for size in SIZES:
        value = os.urandom(size)
        times = {("put", s): [] for s in SYSTEMS + PUT_ONLY}
        times.update({("get", s): [] for s in SYSTEMS})
        for r in range(repeat):
            paths = {s: os.path.join(base, f"{size}-{r}-{i}")
                     for i, s in enumerate(SYSTEMS + PUT_ONLY)}
            os.makedirs(paths["lmdb"])
            times[("put", "sqlite3")].append(sqlite_put(paths["sqlite3"] + ".db", keys, value))
            times[("put", "lmdb")].append(lmdb_put(paths["lmdb"], keys, value))
            times[("put", "KVault (cache off)")].append(
                kvault_put(paths["KVault (cache off)"] + ".db", keys, value, False))
            times[("put", "KVault (cache on)")].append(
                kvault_put(paths["KVault (cache on)"] + ".db", keys, value, True))
            times[("put", "KVault (put_many)")].append(
                kvault_put_many(paths["KVault (put_many)"] + ".db", keys, value))
            times[("get", "sqlite3")].append(sqlite_get(paths["sqlite3"] + ".db", order))
            times[("get", "lmdb")].append(lmdb_get(paths["lmdb"], order))
            times[("get", "KVault (cache off)")].append(
                kvault_get(paths["KVault (cache off)"] + ".db", order, False))
            times[("get", "KVault (cache on)")].append(
                kvault_get(paths["KVault (cache on)"] + ".db", order, True))
            for s, p in paths.items():
                if s == "lmdb":
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    for suffix in (".db", ".db-wal", ".db-shm"):
                        try:
                            os.unlink(p + suffix)
                        except FileNotFoundError:
                            pass
            print(f"  {size} B values: repetition {r + 1}/{repeat} done", file=sys.stderr)
        for op in ("put", "get"):
            row = {}
            systems = SYSTEMS + PUT_ONLY if op == "put" else SYSTEMS
            for s in systems:
                med = statistics.median(times[(op, s)])
                row[s] = {
                    "op": op,
                    "value_bytes": size,
                    "system": s,
                    "seconds_median": med,
                    "seconds_all": times[(op, s)],
                    "ops_per_s": n / med,
                    "mb_per_s": n * size / med / 1e6,
                }
            for s in systems:
                row[s]["vs_sqlite3"] = row[s]["ops_per_s"] / row["sqlite3"]["ops_per_s"]
                row[s]["vs_lmdb"] = row[s]["ops_per_s"] / row["lmdb"]["ops_per_s"]
                results.append(row[s])
    return results


def table(results: list[dict]) -> str:
    lines = [
        "| op | value | system | ops/s | MB/s | vs sqlite3 | vs lmdb |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        size = "100 B" if r["value_bytes"] == 100 else f"{r['value_bytes'] // 1024} KiB"
        lines.append(
            f"| {r['op']} | {size} | {r['system']} | {r['ops_per_s']:,.0f} | "
            f"{r['mb_per_s']:,.1f} | {r['vs_sqlite3']:.2f}x | {r['vs_lmdb']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50_000, help="keys per workload (default 50000)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions; the median is reported")
    ap.add_argument("--dir", default=None, help="directory for the database files (default: a temp dir)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    base = tempfile.mkdtemp(prefix="bench_kv-", dir=args.dir)
    try:
        info = machine()
        print(f"machine: {info['cpu']}, {info['cores']} cores, kernel {info['kernel']}, "
              f"SQLite {info['sqlite']}, Python {info['python']}, lmdb {info['lmdb']}", file=sys.stderr)
        results = run(args.n, args.repeat, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"KVault (embedded) vs sqlite3 vs lmdb: {args.n:,} keys, median of {args.repeat} runs\n")
    print(table(results))
    fig = {(r["op"], r["value_bytes"], r["system"]): r for r in results}

    def check(name, op, size, system, vs, need):
        v = fig[(op, size, system)][f"vs_{vs}"]
        return {"target": name, "value": v, "need": f">= {need:g}x", "met": v >= need}

    checks = [
        check("hot get 100 B, KVault / sqlite3", "get", 100, "KVault (cache off)", "sqlite3", 2),
        check("get 16 KiB, KVault / lmdb", "get", 16384, "KVault (cache off)", "lmdb", 0.5),
        check("get 16 KiB, KVault / sqlite3", "get", 16384, "KVault (cache off)", "sqlite3", 3),
        check("put 16 KiB batch, KVault put_many / sqlite3", "put", 16384, "KVault (put_many)",
              "sqlite3", 2),
    ]
    return report(checks, f"targets (median of {args.repeat})", args.json,
                  {"machine": info, "n": args.n, "repeat": args.repeat, "results": results})


if __name__ == "__main__":
    sys.exit(main())
