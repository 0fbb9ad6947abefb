#!/usr/bin/env python3
"""Cluster mode (docs/replication.md): replication throughput, the latency of
a put acknowledged by a quorum, and failover time.

Three ``kvault-writer --cluster`` nodes on 127.0.0.1 (one machine: the
network is loopback, and the nodes share its cores), 100-byte values under
16-byte keys, one client process:

- applied ``kv[k] = v`` on the leader, then the time until both followers'
  files hold the last sequence: puts per second written, and replicated
  (written and applied on both followers);
- the same applied puts on a single writer without ``--cluster``;
- ``put(k, v, sync=True)`` latency (median, p99) on the leader (returns once
  a quorum stored the batch) and on the single writer (returns at the local
  commit);
- quorum-acknowledged puts from 1 and 2 client processes: rounds of ROUND
  puts, each round acknowledged by one ``put(sync=True)`` (on the leader it
  returns once a quorum stored the round; on the single writer, at its
  local commit): acknowledged puts per second;
- reads: ``kv[k]`` of keys written before, one process attached to a
  follower, and to the single writer: gets per second (median of 3,
  alternated);
- failover: the leader is killed with SIGKILL; seconds until a survivor
  leads and takes writes. Target (checked in this run): under 2 s.

    .venv/bin/python perf/bench_cluster.py [--puts N] [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_writes import start_writer, writer_binary  # noqa: E402  (perf/ is not a package)
from targets import report  # noqa: E402

from kohakuvault import KVault  # noqa: E402
from kohakuvault.launch import writer_status  # noqa: E402

VALUE = b"v" * 100
FAILOVER_S = 2.0
ROUND = 1000   # puts per quorum-acknowledged round


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_cluster(tmp: str) -> list[tuple[str, subprocess.Popen]]:
    """Three nodes, each (db path, process), started ready."""
    spec = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(free_ports(3)))
    nodes = []
    for i in range(3):
        db = os.path.join(tmp, f"node{i + 1}.db")
        p = subprocess.Popen([writer_binary(), "--cluster", spec, "--node-id", str(i + 1), db],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if not p.stdout.readline().startswith("ready"):
            raise RuntimeError(f"node {i + 1} did not start")
        nodes.append((db, p))
    return nodes


def leader_of(nodes, timeout: float = 20.0):
    """The (db, process) that leads and takes writes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for db, p in nodes:
            st = writer_status(db, timeout=2.0) if p.poll() is None else None
            if st and st.get("cluster_accepts_writes") == "1":
                return db, p
        time.sleep(0.005)
    raise RuntimeError("no leader")


def committed(db: str) -> int:
    st = writer_status(db, timeout=2.0)
    return int(st["committed_seq"]) if st else -1


def puts(db: str, n: int, prefix: bytes) -> float:
    """Seconds for n applied puts through a KVault attached to db."""
    with KVault(db, shared=True) as kv:
        t0 = time.perf_counter()
        for i in range(n):
            kv[prefix + b"%015d" % i] = VALUE
        kv.flush()
        return time.perf_counter() - t0


def sync_latency(db: str, n: int, prefix: bytes) -> tuple[float, float]:
    """Median and p99 in microseconds of put(sync=True)."""
    out = []
    with KVault(db, shared=True) as kv:
        for i in range(n):
            t0 = time.perf_counter_ns()
            kv.put(prefix + b"%015d" % i, VALUE, sync=True)
            out.append((time.perf_counter_ns() - t0) / 1000.0)
    out.sort()
    return statistics.median(out), out[int(len(out) * 0.99)]


def _rounds(db: str, n: int, prefix: bytes, q) -> None:
    """Client process of quorum_puts: n puts in rounds of ROUND, each round
    acknowledged by a put(sync=True); puts its seconds on q."""
    with KVault(db, shared=True) as kv:
        t0 = time.perf_counter()
        for r in range(0, n, ROUND):
            for i in range(r, min(n, r + ROUND)):
                kv[prefix + b"%015d" % i] = VALUE
            kv.put(prefix + b"round", b"%d" % r, sync=True)
        q.put(time.perf_counter() - t0)


def quorum_puts(db: str, n: int, clients: int, prefix: bytes) -> float:
    """Acknowledged puts per second of `clients` processes writing n puts in
    all (quorum-acknowledged rounds), from the slowest client's time."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    ps = [ctx.Process(target=_rounds, args=(db, n // clients, prefix + b"%d" % c, q))
          for c in range(clients)]
    for p in ps:
        p.start()
    times = [q.get(timeout=600) for _ in ps]
    for p in ps:
        p.join()
    return (n // clients) * clients / max(times)


def reads(db: str, n: int, prefix: bytes, nkeys: int) -> float:
    """Gets per second of n kv[k] of keys prefix+%015d below nkeys (a
    stride through them), one process attached to db."""
    keys = [prefix + b"%015d" % (i * 7919 % nkeys) for i in range(n)]
    with KVault(db, shared=True) as kv:
        t0 = time.perf_counter()
        for k in keys:
            kv[k]
        return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--puts", type=int, default=100000, help="applied puts per run")
    ap.add_argument("--syncs", type=int, default=1000, help="sync puts per run")
    ap.add_argument("--quorum-puts", type=int, default=20000,
                    help="puts per run of acknowledged rounds (kept below what fills the "
                    "default segment: with two clients writing, a full segment's eviction "
                    "and allocation costs, the same for both stores, would be measured "
                    "instead of replication; docs/replication.md)")
    ap.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    ap.add_argument("--quick", action="store_true", help="20,000 puts, 200 sync puts")
    args = ap.parse_args(argv)
    if args.quick:
        args.puts, args.syncs, args.quorum_puts = 20000, 200, 10000
    rows, procs = [], []
    tmp = tempfile.mkdtemp(prefix="kv-cluster-")
    try:
        single = os.path.join(tmp, "single.db")
        procs.append(start_writer(single))
        nodes = start_cluster(tmp)
        procs += [p for _, p in nodes]
        leader, lp = leader_of(nodes)
        followers = [db for db, _ in nodes if db != leader]

        # first, while the caches are empty: see --quorum-puts
        for clients in (1, 2):
            for store, db in (("single writer", single), ("cluster leader (3 nodes)", leader)):
                rate = quorum_puts(db, args.quorum_puts, clients, b"q%d" % clients)
                rows.append({"workload": f"acknowledged put, rounds of {ROUND}, {clients} "
                             f"client{'s' if clients > 1 else ''}", "store": store,
                             "ops_per_s": rate})
        s = puts(single, args.puts, b"a")
        rows.append({"workload": "applied put, 100 B", "store": "single writer",
                     "ops_per_s": args.puts / s})
        t0 = time.perf_counter()
        s = puts(leader, args.puts, b"a")
        target = committed(leader)
        while min(committed(f) for f in followers) < target:
            time.sleep(0.002)
        both = time.perf_counter() - t0
        rows.append({"workload": "applied put, 100 B", "store": "cluster leader (3 nodes)",
                     "ops_per_s": args.puts / s})
        rows.append({"workload": "applied put, 100 B, until on both followers",
                     "store": "cluster (3 nodes)", "ops_per_s": args.puts / both})
        for store, db in (("single writer", single), ("cluster leader (3 nodes)", leader)):
            p50, p99 = sync_latency(db, args.syncs, b"s")
            rows.append({"workload": "put(sync=True), 100 B", "store": store,
                         "p50_us": p50, "p99_us": p99})
        # alternated, median of 3 each: the other store's writer may still
        # be folding or checkpointing after the writes above
        got = {"single writer": [], "cluster follower": []}
        for _ in range(3):
            for store, db in (("single writer", single), ("cluster follower", followers[0])):
                got[store].append(reads(db, args.puts, b"a", args.puts))
        for store, rates in got.items():
            rows.append({"workload": "get 100 B, 1 process, median of 3", "store": store,
                         "ops_per_s": statistics.median(rates)})

        lp.send_signal(signal.SIGKILL)
        lp.wait()
        t0 = time.monotonic()
        leader_of([n for n in nodes if n[0] != leader])
        failover = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{'workload':52} {'store':26} {'ops/s':>12} {'p50 us':>9} {'p99 us':>9}")
    for r in rows:
        print(f"{r['workload']:52} {r['store']:26} {r.get('ops_per_s', 0):12,.0f} "
              f"{r.get('p50_us', 0):9.0f} {r.get('p99_us', 0):9.0f}")
    checks = [{"target": "new leader after kill -9 of the leader, s", "value": failover,
               "need": f"< {FAILOVER_S:g}", "met": failover < FAILOVER_S}]
    return report(checks, "targets of cluster mode (docs/replication.md)", args.json,
                  {"puts": args.puts, "syncs": args.syncs, "results": rows})


if __name__ == "__main__":
    sys.exit(main())
