#!/usr/bin/env python3
"""Latency of one write at each level of docs/shared-mode.md ("Write modes").

One process attached to a private ``kvault-writer``, 100-byte values under
16-byte keys, nothing else running against the writer. For each level the
duration of every call is taken with ``time.perf_counter_ns`` and the median
and p99 are printed (microseconds):

- pipelined ``kv[k] = v`` (``write_mode="pipelined"``): the record is in the
  ring; the run ends with a ``flush()``, outside the timings;
- applied ``kv[k] = v`` (the default mode): the writer applied it;
- committed ``put(k, v, sync=True)``: the writer committed it to SQLite;
- applied ``put_many`` of 1,000 pairs, per pair (the call's duration / 1,000).

    .venv/bin/python perf/bench_write_levels.py [--calls N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_writes import start_writer  # noqa: E402  (perf/ is not a package)

from kohakuvault import KVault  # noqa: E402

VALUE = b"v" * 100


def timed(call, keys) -> list[float]:
    """Durations in microseconds of ``call(k)`` for every key."""
    out = []
    clock = time.perf_counter_ns
    for k in keys:
        t0 = clock()
        call(k)
        out.append((clock() - t0) / 1000.0)
    return out


def p99(xs: list[float]) -> float:
    return sorted(xs)[int(len(xs) * 0.99)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20000, help="calls per level (sync: 1/20 of it)")
    ap.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    args = ap.parse_args(argv)
    n = args.calls
    rows = []
    with tempfile.TemporaryDirectory(prefix="kv-levels-") as tmp:
        db = os.path.join(tmp, "levels.db")
        KVault(db).close()
        w = start_writer(db)
        try:
            levels = []
            with KVault(db, shared=True, write_mode="pipelined") as kv:
                keys = [b"p%015d" % i for i in range(n)]
                levels.append(("pipelined", "kv[k] = v", timed(lambda k: kv.put(k, VALUE), keys)))
                kv.flush()
            with KVault(db, shared=True) as kv:
                keys = [b"a%015d" % i for i in range(n)]
                levels.append(("applied", "kv[k] = v", timed(lambda k: kv.put(k, VALUE), keys)))
                keys = [b"s%015d" % i for i in range(max(100, n // 20))]
                levels.append(("committed", "put(k, v, sync=True)",
                               timed(lambda k: kv.put(k, VALUE, sync=True), keys)))
                batches = [[(b"b%09d-%05d" % (j, i), VALUE) for i in range(1000)]
                           for j in range(max(20, n // 1000))]
                per_pair = [d / 1000.0 for d in timed(kv.put_many, batches)]
                levels.append(("applied, batch", "put_many of 1,000 pairs (per pair)", per_pair))
        finally:
            w.terminate()
            w.wait()
    print(f"{'level':16} {'call':38} {'median us':>10} {'p99 us':>10} {'calls':>7}")
    for level, call, d in levels:
        med, hi = statistics.median(d), p99(d)
        print(f"{level:16} {call:38} {med:10.2f} {hi:10.2f} {len(d):7}")
        rows.append({"level": level, "call": call, "median_us": med, "p99_us": hi,
                     "calls": len(d)})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
