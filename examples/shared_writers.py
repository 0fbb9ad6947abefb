#!/usr/bin/env python3
"""Several processes writing and reading one KVault through a kvault-writer.

``KVault(path, shared="spawn")`` starts a writer for the file if none serves
it (exactly one, even when processes race) and attaches to it; the writer
stops by itself once the last client has been gone for the linger time.
Each worker writes its own keys (one worker with ``write_mode="pipelined"``
and a ``flush()`` barrier), waits for the others, then reads and checks
every other worker's keys. Without a kvault-writer program (set
KVAULT_WRITER, or put it on PATH) the same code runs with the file opened
directly.

    KVAULT_WRITER=build/release/workers/kvault-writer python examples/shared_writers.py
"""
import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time

from kohakuvault import KVault


def value(worker, j):
    return {"worker": worker, "j": j, "payload": "x" * (j % 50)}


def worker(path, i, workers, keys, barrier, results):
    mode = "pipelined" if i == 0 else "applied"
    with KVault(path, shared="spawn", write_mode=mode) as kv:
        t0 = time.perf_counter()
        kv.put_many([(f"w{i}/{j:06d}", value(i, j)) for j in range(keys // 2)])  # one batch
        for j in range(keys // 2, keys):
            kv[f"w{i}/{j:06d}"] = value(i, j)                                   # one by one
        kv.flush()  # every write of this object applied: visible to all processes
        elapsed = time.perf_counter() - t0
        barrier.wait(timeout=120)
        bad = 0
        for other in range(workers):
            for j in range(0, keys, 7):
                bad += kv.get(f"w{other}/{j:06d}") != value(other, j)
        results.put((i, kv.shared, mode, keys / elapsed, bad))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", help="vault file (default: a new temporary file)")
    ap.add_argument("--workers", type=int, default=3, help="processes (default 3)")
    ap.add_argument("--keys", type=int, default=2000, help="keys per process (default 2000)")
    ap.add_argument("--linger-ms", type=int, default=500,
                    help="how long the spawned writer stays after its last client (default 500)")
    args = ap.parse_args()
    os.environ.setdefault("KVAULT_LINGER_MS", str(args.linger_ms))
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or os.path.join(tmp, "shared.db")
        # The parent's object starts the writer and keeps it serving while the workers run.
        with KVault(path, shared="spawn") as kv:
            print("mode:", "attached to a kvault-writer" if kv.shared else
                  "embedded (no kvault-writer found: set KVAULT_WRITER)")
            ctx = mp.get_context("spawn")
            barrier, results = ctx.Barrier(args.workers), ctx.Queue()
            procs = [ctx.Process(target=worker,
                                 args=(path, i, args.workers, args.keys, barrier, results))
                     for i in range(args.workers)]
            for p in procs:
                p.start()
            rows = sorted(results.get(timeout=300) for _ in procs)
            for p in procs:
                p.join(timeout=60)
            errors = sum(p.exitcode != 0 for p in procs)
            for i, shared, mode, rate, bad in rows:
                print(f"worker {i}: shared={shared} write_mode={mode} {rate:,.0f} puts/s, "
                      f"{bad} wrong values read")
                errors += bad
            count = len(kv)   # attached: the writer commits first, so every write is counted
            expected = args.workers * args.keys
            print(f"{count} keys in the vault (expected {expected})")
            errors += count != expected
    print("shared-mode check passed" if not errors else f"shared-mode check FAILED ({errors})")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
