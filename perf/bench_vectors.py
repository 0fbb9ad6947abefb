#!/usr/bin/env python3
"""Vector search and insert: VectorKVault against numpy and sqlite-vec, in one run.

Data: --n random float32 vectors of --dims dimensions (default 100,000 x 384,
seed 1), cosine, k = 10; queries are other random vectors. Every figure is
the median of --repeat timings. Rows (workload / store):

- ``search 1 query, 1 thread``: VectorKVault(threads=1).search; numpy
  ``matrix @ q`` + ``argpartition`` (+ sorting the k) on the same unit
  vectors held in memory; sqlite-vec ``vec0`` (``vector MATCH ? AND k = 10``)
  when its loadable extension is found (``$KVAULT_VEC0``, else
  /tmp/package/vec0.so: ``cd /tmp && npm pack sqlite-vec-linux-x64@0.1.9 &&
  tar xzf sqlite-vec-linux-x64-0.1.9.tgz``); without it that row is skipped
  and the run says so.
- ``search 1 query, all threads``: VectorKVault with one scan thread per CPU.
- ``search_many 64 queries (per query)`` against ``64 single searches (per
  query)``, both 1 thread.
- ``insert_many``: the --n vectors in one call (one transaction), and
  sqlite-vec's inserts of the same rows in one transaction. The call returns
  once the transaction is committed to the WAL; the handle's checkpointer
  thread copies the WAL into the database file afterwards, so
  ``insert_many + close`` also times closing the handle, which waits for
  that copy (the data are then in the database file).
- ``single inserts``: --single inserts, each its own transaction, into a fresh
  table; sqlite-vec the same way (autocommit).

Searches are timed after one warm-up call (VectorKVault loads its in-memory
copy of the vectors then). Figures are queries/s or vectors/s. The targets
are checked on ratios within this run; the exit status is 1 (figures
written) when one is missed.

    .venv/bin/python perf/bench_vectors.py [--quick] [--n N] [--dims D] [--repeat R] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time

import numpy as np
from targets import report

K = 10
BATCH = 64

W_ONE = "search 1 query, 1 thread"
W_ALL = "search 1 query, all threads"
W_MANY = "search_many 64 queries (per query)"
W_SINGLES = "64 single searches (per query)"
W_BULK = "insert_many (one transaction)"
W_BULK_CLOSE = "insert_many + close (WAL checkpointed)"
W_SINGLE = "single inserts (one transaction each)"


def vec0_path() -> str | None:
    """sqlite-vec's loadable extension, if present."""
    for p in (os.environ.get("KVAULT_VEC0"), "/tmp/package/vec0.so"):
        if p and os.path.exists(p if p.endswith(".so") else p + ".so"):
            return p[:-3] if p.endswith(".so") else p
    return None


def timed(fn, repeat: int) -> float:
    """Median seconds of `repeat` calls of fn()."""
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def vec0_open(path: str, ext: str, dims: int) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None)
    con.enable_load_extension(True)
    con.load_extension(ext)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS v USING vec0("
                f"value_ref INTEGER, vector float[{dims}] distance_metric=cosine)")
    return con


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="stored vectors")
    ap.add_argument("--dims", type=int, default=384)
    ap.add_argument("--single", type=int, default=3000, help="vectors of the single-insert run")
    ap.add_argument("--repeat", type=int, default=5, help="timings per figure; the median is kept")
    ap.add_argument("--quick", action="store_true", help="20,000 vectors, 3 timings")
    ap.add_argument("--json", metavar="PATH", help="write the rows as JSON (for perf/run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.repeat, args.single = 20_000, 3, 1000

    from kohakuvault import VectorKVault

    rng = np.random.default_rng(1)
    data = rng.standard_normal((args.n, args.dims)).astype(np.float32)
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    queries = rng.standard_normal((BATCH, args.dims)).astype(np.float32)
    cores = os.cpu_count() or 1
    ext = vec0_path()
    rows, fig = [], {}

    def add(workload, store, per_s, **extra):
        fig[(workload, store)] = per_s
        rows.append({"workload": workload, "store": store, "ops_per_s": per_s, **extra})
        print(f"{workload:40} {store:44} {per_s:>12,.1f}/s", flush=True)

    tmp = tempfile.mkdtemp(prefix="bench_vectors-")
    try:
        path = os.path.join(tmp, "kv.db")
        vkv = VectorKVault(path, dimensions=args.dims, metric="cosine", threads=1)
        values = list(range(args.n))
        t0 = time.perf_counter()
        vkv.insert_many(data, values)
        t1 = time.perf_counter()
        vkv.close()
        t2 = time.perf_counter()
        add(W_BULK, "kohakuvault", args.n / (t1 - t0))
        add(W_BULK_CLOSE, "kohakuvault", args.n / (t2 - t0))
        vkv = VectorKVault(path, dimensions=args.dims, metric="cosine", threads=1)
        vkv.search(queries[0], k=K)  # loads the in-memory copy
        it = iter(range(10 ** 9))

        def one():
            vkv.search(queries[next(it) % BATCH], k=K)

        add(W_ONE, "kohakuvault", 1 / timed(one, args.repeat * 4))
        allv = VectorKVault(path, dimensions=args.dims, metric="cosine", threads=cores)
        allv.search(queries[0], k=K)
        add(W_ALL, f"kohakuvault ({cores} threads)",
            1 / timed(lambda: allv.search(queries[next(it) % BATCH], k=K), args.repeat * 4))
        add(W_MANY, "kohakuvault", BATCH / timed(lambda: vkv.search_many(queries, k=K), args.repeat))
        add(W_SINGLES, "kohakuvault",
            BATCH / timed(lambda: [vkv.search(q, k=K) for q in queries], args.repeat))

        def np_search():
            q = queries[next(it) % BATCH]
            s = unit @ (q / np.linalg.norm(q))
            top = np.argpartition(-s, K)[:K]
            top[np.argsort(-s[top])]

        add(W_ONE, "numpy matrix @ q + argpartition", 1 / timed(np_search, args.repeat * 4))
        allv.close()
        vkv.close()

        spath = os.path.join(tmp, "single.db")
        single = VectorKVault(spath, dimensions=args.dims, metric="cosine")

        def singles():
            for i in range(args.single):
                single.insert(data[i], i)

        add(W_SINGLE, "kohakuvault", args.single / timed(singles, 1))
        single.close()

        if ext is None:
            print("sqlite-vec: no loadable extension ($KVAULT_VEC0 or /tmp/package/vec0.so): "
                  "its rows are skipped", flush=True)
        else:
            con = vec0_open(os.path.join(tmp, "vec0.db"), ext, args.dims)
            blobs = [u.tobytes() for u in unit]  # cosine vec0 tables hold unit vectors

            def vec0_bulk():
                con.execute("BEGIN")
                con.executemany("INSERT INTO v(value_ref, vector) VALUES (?, ?)",
                                ((i, b) for i, b in enumerate(blobs)))
                con.execute("COMMIT")

            add(W_BULK, "sqlite-vec 0.1.9 vec0", args.n / timed(vec0_bulk, 1))

            def vec0_search():
                q = queries[next(it) % BATCH]
                con.execute("SELECT rowid, distance FROM v WHERE vector MATCH ? AND k = ?",
                            ((q / np.linalg.norm(q)).tobytes(), K)).fetchall()

            vec0_search()
            add(W_ONE, "sqlite-vec 0.1.9 vec0", 1 / timed(vec0_search, args.repeat))
            con.close()
            scon = vec0_open(os.path.join(tmp, "vec0-single.db"), ext, args.dims)

            def vec0_singles():
                for i in range(args.single):
                    scon.execute("INSERT INTO v(value_ref, vector) VALUES (?, ?)", (i, blobs[i]))

            add(W_SINGLE, "sqlite-vec 0.1.9 vec0", args.single / timed(vec0_singles, 1))
            scon.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def ratio(name, a, b, need):
        if a not in fig or b not in fig:
            return {"target": name, "value": 0.0, "need": f">= {need:g}x", "met": False,
                    "note": "not measured (sqlite-vec extension missing)"}
        value = fig[a] / fig[b]
        return {"target": name, "value": value, "need": f">= {need:g}x", "met": value >= need}

    checks = [
        ratio("1 thread search / sqlite-vec", (W_ONE, "kohakuvault"),
              (W_ONE, "sqlite-vec 0.1.9 vec0"), 4),
        ratio("1 thread search / numpy matrix @ q", (W_ONE, "kohakuvault"),
              (W_ONE, "numpy matrix @ q + argpartition"), 1),
        ratio(f"all threads ({cores}) / 1 thread", (W_ALL, f"kohakuvault ({cores} threads)"),
              (W_ONE, "kohakuvault"), 1.6),
        ratio("search_many 64 / 64 single searches", (W_MANY, "kohakuvault"),
              (W_SINGLES, "kohakuvault"), 3),
    ]
    bulk = fig[(W_BULK, "kohakuvault")]
    checks.append({"target": f"insert_many {args.n:,} x {args.dims} (vectors/s)", "value": bulk,
                   "need": ">= 500000", "met": bulk >= 500_000})
    return report(checks, f"targets ({args.n:,} x {args.dims} f32 cosine, k = {K}; median of "
                  f"{args.repeat}; ratios within this run)", args.json,
                  {"n": args.n, "dims": args.dims, "repeat": args.repeat, "results": rows}, width=48)


if __name__ == "__main__":
    sys.exit(main())
