#!/usr/bin/env python3
"""Metrics from several processes into ColumnVault columns, then read back.

Each worker process (think: one training run of a sweep, or one rank of a
job) logs its own columns, ``<run>/step`` (i64), ``<run>/loss`` and
``<run>/lr`` (f64), into one shared file, buffering appends in a column
cache. Columns of different processes never interleave, so no lock is
needed. Afterwards the parent reads slices and numpy windows of every run.

    python examples/metrics_logging.py --workers 4 --steps 2000
"""
import argparse
import math
import multiprocessing as mp
import os
import sys
import tempfile

from kohakuvault import ColumnVault

FIELDS = {"step": "i64", "loss": "f64", "lr": "f64"}


def metrics(run, step):
    """The deterministic loss and learning rate of ``run`` at ``step``."""
    lr = 1e-3 * (0.5 * (1 + math.cos(math.pi * step / 1000)))
    return 2.0 * math.exp(-step / (200 + 50 * run)) + 0.01 * run, lr


def worker(path, run, steps, flush_every):
    """One process: its own ColumnVault on the path, its own columns."""
    cv = ColumnVault(path)
    cols = {f: cv.ensure(f"run{run}/{f}", dt) for f, dt in FIELDS.items()}
    cv.enable_cache(cap_bytes=1 << 20, flush_threshold=64 << 10)
    for step in range(steps):
        loss, lr = metrics(run, step)
        cols["step"].append(step)
        cols["loss"].append(loss)
        cols["lr"].append(lr)
        if (step + 1) % flush_every == 0:
            cv.flush_cache()          # make progress visible to readers
    cv.disable_cache()                # final flush


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", help="vault file, must not exist (default: a new temporary file)")
    ap.add_argument("--workers", type=int, default=3, help="logging processes (default 3)")
    ap.add_argument("--steps", type=int, default=500, help="steps per process (default 500)")
    ap.add_argument("--flush-every", type=int, default=100, help="flush the cache every N steps")
    ap.add_argument("--start-method", default="spawn", choices=["spawn", "fork", "forkserver"])
    args = ap.parse_args()
    if args.db and os.path.exists(args.db):
        ap.error(f"{args.db} exists already")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or os.path.join(tmp, "metrics.db")
        ctx = mp.get_context(args.start_method)
        procs = [ctx.Process(target=worker, args=(path, r, args.steps, args.flush_every))
                 for r in range(args.workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failed = [p.exitcode for p in procs if p.exitcode != 0]
        print(f"{args.workers} processes ({args.start_method}) logged {args.steps} steps each "
              f"to {path}")

        cv = ColumnVault(path)
        errors = len(failed)
        for run in range(args.workers):
            step, loss, lr = (cv[f"run{run}/{f}"] for f in FIELDS)
            n = len(loss)
            if not n == len(step) == len(lr) == args.steps:
                print(f"run{run}: lengths {len(step)}, {n}, {len(lr)}; expected {args.steps}")
                errors += 1
                continue
            last = loss[-5:]                       # a slice: a list of floats
            window = loss.to_numpy(n // 2, n)      # the second half as one numpy array
            want = [metrics(run, s)[0] for s in step[-5:]]
            if last != want or step[:3] != [0, 1, 2]:
                errors += 1
            print(f"run{run}: {n} rows, loss {loss[0]:.3f} -> {last[-1]:.3f}, "
                  f"mean of 2nd half {window.mean():.4f}, lr at step 250 {lr[250 % n]:.2e}")
        print(f"columns: {len(cv.list_columns())}")
    print("metrics check passed" if not errors else f"metrics check FAILED ({errors} errors)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
