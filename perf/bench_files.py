#!/usr/bin/env python3
"""Real files and a training-loader read pattern: kohakuvault vs sqlite3 and plain files.

Two workloads over values users actually store (kilobytes to hundreds of
kilobytes, not 100 bytes):

1. **Real files.** Every regular file under ``--dir`` (default: this
   interpreter's standard library, without ``site-packages``,
   ``dist-packages`` and ``__pycache__``) is read from disk and stored under
   its relative path, then read back once by a fresh process in the same
   order. Stores: the stdlib ``sqlite3`` module (one table
   ``files(path TEXT PRIMARY KEY, data BLOB)``, all rows in one
   transaction), an embedded ``KVault`` (``put_many``, one transaction) and
   an attached ``KVault`` served by a ``kvault-writer`` (``put_many``, the
   default write mode). Printed as MB/s of file bytes.
2. **Loader.** ``--samples`` values of 50-200 KB (uniform sizes from a fixed
   seed, random bytes) are stored, then ``--workers`` forked processes each
   read their share of one shuffled permutation of the keys, as a PyTorch
   ``DataLoader`` over a map-style dataset does. Stores: one file per
   sample in a directory, ``sqlite3``, embedded and attached ``KVault``
   (writer with its default segment). Printed as samples/s over all
   workers.

Every figure is the median of ``--repeat`` rounds, each on a fresh copy of
the store (the OS page cache is not dropped: "first read" is the first
read by a process that has not seen the data, which is what a job restarted
on a warm machine sees). The targets checked at the end are ratios within
this run.

    PYTHONPATH=... /usr/bin/python3 perf/bench_files.py [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "perf"))
from targets import report  # noqa: E402

SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages"}


# ---- inputs ---------------------------------------------------------------

def collect(top: str) -> list[tuple[str, str]]:
    """(key, absolute path) of every regular file under ``top``, sorted, with
    SKIP_DIRS pruned and symlinks not followed."""
    out = []
    for d, dirs, files in os.walk(top):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS)
        for f in sorted(files):
            p = os.path.join(d, f)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append((os.path.relpath(p, top), p))
    return out


def loader_values(n: int, seed: int = 7) -> list[bytes]:
    """``n`` random values of 50,000-200,000 bytes (fixed sizes). None
    begins with the auto-pack header magic ``89 4B``: KVault reads such a
    raw value as a header (docs/api.md §3.1), which fails for random bytes
    (1 value in 65,536)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        v = os.urandom(rng.randint(50_000, 200_000))
        out.append(b"\x00" + v[1:] if v[:2] == b"\x89K" else v)
    return out


# ---- stores: open for writing, put all, open for reading, get -------------

def writer_binary() -> str:
    from kohakuvault._writer import writer_binary as find

    path = find(ROOT)
    if not path:
        sys.exit("kvault-writer is not built (scripts/build)")
    return path


def start_writer(db: str) -> subprocess.Popen:
    """A kvault-writer with default settings serving ``db``."""
    w = subprocess.Popen([writer_binary(), db], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    line = w.stdout.readline()
    if not line.startswith("ready"):
        w.kill()
        raise RuntimeError(f"kvault-writer did not start: {line!r}")
    return w


def stop_writer(w: subprocess.Popen) -> None:
    w.terminate()
    try:
        w.wait(timeout=60)
    except subprocess.TimeoutExpired:
        w.kill()
        w.wait()


def store_put(kind: str, where: str, pairs) -> None:
    """Stores every (str key, bytes value) of ``pairs`` in ``kind`` at ``where``."""
    if kind == "files":
        os.makedirs(where, exist_ok=True)
        for k, v in pairs:
            with open(os.path.join(where, k), "wb") as f:
                f.write(v)
    elif kind == "sqlite3":
        con = sqlite3.connect(where)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE IF NOT EXISTS files(path TEXT PRIMARY KEY, data BLOB)")
        with con:
            con.executemany("INSERT OR REPLACE INTO files VALUES (?, ?)", pairs)
        con.close()
    else:
        from kohakuvault import KVault

        with KVault(where, shared=(kind == "attached")) as kv:
            assert kv.shared == (kind == "attached")
            kv.put_many(pairs)
            kv.flush()


def store_getter(kind: str, where: str):
    """(get(key) -> bytes, close()) for ``kind`` at ``where``."""
    if kind == "files":
        def get(k):
            with open(os.path.join(where, k), "rb") as f:
                return f.read()
        return get, (lambda: None)
    if kind == "sqlite3":
        con = sqlite3.connect(where)
        cur = con.cursor()

        def get(k):
            return cur.execute("SELECT data FROM files WHERE path=?", (k,)).fetchone()[0]
        return get, con.close
    from kohakuvault import KVault

    kv = KVault(where, shared=(kind == "attached"))
    assert kv.shared == (kind == "attached")
    return kv.__getitem__, kv.close


def read_worker(kind: str, where: str, keys: list, go, q) -> None:
    """Reads ``keys`` once after ``go`` is set; puts (bytes read, seconds) on ``q``."""
    get, close = store_getter(kind, where)
    go.wait()
    t0 = time.perf_counter()
    n = 0
    for k in keys:
        n += len(get(k))
    q.put((n, time.perf_counter() - t0))
    close()


def parallel_read(kind: str, where: str, shares: list[list]) -> tuple[int, float]:
    """Forked readers, one per share, started together: (bytes, wall seconds)."""
    ctx = mp.get_context("fork")
    go, q = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=read_worker, args=(kind, where, s, go, q)) for s in shares]
    for p in procs:
        p.start()
    time.sleep(0.2)  # every reader opened its store
    t0 = time.perf_counter()
    go.set()
    got = [q.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise RuntimeError(f"{kind} reader exited with {p.exitcode}")
    return sum(n for n, _ in got), wall


def path_of(kind: str, tmp: str) -> str:
    return os.path.join(tmp, "files" if kind == "files" else f"{kind}.db")


# ---- workloads ------------------------------------------------------------

def real_files_round(kinds, files, tmp) -> dict:
    """One round of the real-files workload: {kind: (ingest s, read s)}."""
    total = sum(os.path.getsize(p) for _, p in files)
    out = {}
    for kind in kinds:
        where = path_of(kind, tmp)
        w = start_writer(where) if kind == "attached" else None
        try:
            t0 = time.perf_counter()
            pairs = []
            for k, p in files:
                with open(p, "rb") as f:
                    pairs.append((k, f.read()))
            store_put(kind, where, pairs)
            ingest = time.perf_counter() - t0
            del pairs
            n, read = parallel_read(kind, where, [[k for k, _ in files]])
            assert n == total, (kind, n, total)
        finally:
            if w:
                stop_writer(w)
        out[kind] = (ingest, read)
    return out


def loader_round(kinds, values, workers, tmp, seed) -> dict:
    """One round of the loader workload: {kind: read seconds}."""
    keys = [f"sample-{i:07d}" for i in range(len(values))]
    order = keys[:]
    random.Random(seed).shuffle(order)
    shares = [order[i::workers] for i in range(workers)]
    total = sum(len(v) for v in values)
    out = {}
    for kind in kinds:
        where = path_of(kind, tmp)
        w = start_writer(where) if kind == "attached" else None
        try:
            store_put(kind, where, list(zip(keys, values)))
            n, read = parallel_read(kind, where, shares)
            assert n == total, (kind, n, total)
        finally:
            if w:
                stop_writer(w)
        out[kind] = read
    return out


def clean(tmp: str) -> None:
    for name in os.listdir(tmp):
        p = os.path.join(tmp, name)
        shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--dir", default=sysconfig.get_paths()["stdlib"],
                    help="directory whose files the real-files workload stores")
    ap.add_argument("--samples", type=int, default=8000,
                    help="values of the loader workload (50-200 KB each)")
    ap.add_argument("--workers", type=int, default=4, help="reader processes of the loader")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; figures are medians")
    ap.add_argument("--quick", action="store_true", help="1 round, 1,000 loader samples")
    ap.add_argument("--tmp", default=None, help="scratch directory (default: a new one in $TMPDIR)")
    ap.add_argument("--json", default=None, help="write rows and targets here")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeat, args.samples = 1, 1000

    files = collect(args.dir)
    if not files:
        sys.exit(f"bench_files: no files under {args.dir}")
    mb = sum(os.path.getsize(p) for _, p in files) / 1e6
    values = loader_values(args.samples)
    lmb = sum(len(v) for v in values) / 1e6
    tmp = tempfile.mkdtemp(prefix="kvbench-files-", dir=args.tmp)
    fkinds = ("sqlite3", "embedded", "attached")
    lkinds = ("files", "sqlite3", "embedded", "attached")
    fr, lr = [], []
    try:
        for r in range(args.repeat):
            fr.append(real_files_round(fkinds, files, tmp))
            clean(tmp)
            lr.append(loader_round(lkinds, values, args.workers, tmp, seed=r))
            clean(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    fig = {}
    print(f"real files: {len(files):,} files, {mb:,.1f} MB from {args.dir}")
    print(f"{'store':10} {'ingest MB/s':>12} {'first read MB/s':>16}")
    for kind in fkinds:
        ing = mb / statistics.median(x[kind][0] for x in fr)
        rd = mb / statistics.median(x[kind][1] for x in fr)
        fig[("ingest", kind)], fig[("read", kind)] = ing, rd
        print(f"{kind:10} {ing:12,.1f} {rd:16,.1f}")
        for op, v in (("ingest", ing), ("first read", rd)):
            rows.append({"workload": f"real files {op} ({len(files):,} files, {mb:.0f} MB)",
                         "store": kind, "ops_per_s": len(files) * v / mb, "mb_per_s": v})
    print(f"\nloader: {args.samples:,} samples of 50-200 KB ({lmb:,.0f} MB), "
          f"{args.workers} forked workers, shuffled")
    print(f"{'store':10} {'samples/s':>12} {'MB/s':>10}")
    for kind in lkinds:
        s = statistics.median(x[kind] for x in lr)
        fig[("loader", kind)] = args.samples / s
        print(f"{kind:10} {args.samples / s:12,.0f} {lmb / s:10,.1f}")
        rows.append({"workload": f"loader read 50-200 KB, {args.workers} proc", "store": kind,
                     "ops_per_s": args.samples / s, "mb_per_s": lmb / s,
                     "processes": args.workers})

    def check(name, a, b, need):
        v = fig[a] / fig[b]
        return {"target": name, "value": v, "need": f">= {need:g}x", "met": v >= need}

    checks = [
        check("real files ingest, embedded / sqlite3", ("ingest", "embedded"), ("ingest", "sqlite3"), 2),
        check("real files ingest, attached / sqlite3", ("ingest", "attached"), ("ingest", "sqlite3"), 2),
        check("real files first read, embedded / sqlite3", ("read", "embedded"), ("read", "sqlite3"), 2),
        check("real files first read, attached / sqlite3", ("read", "attached"), ("read", "sqlite3"), 2),
        check("loader, attached / embedded", ("loader", "attached"), ("loader", "embedded"), 1),
        check("loader, embedded / sqlite3", ("loader", "embedded"), ("loader", "sqlite3"), 1),
    ]
    return report(checks, f"targets for large values (median of {args.repeat})", args.json,
                  {"results": rows, "files": len(files), "mb": mb, "loader_mb": lmb})


if __name__ == "__main__":
    sys.exit(main())
