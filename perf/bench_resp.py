#!/usr/bin/env python3
"""kvault-reader vs redis-server under redis-benchmark, same run.

Starts, on private ports of 127.0.0.1:
  - `kvault-launch serve DB --readers 2 --port P` (a kvault-writer and two
    kvault-readers sharing the port with SO_REUSEPORT);
  - `redis-server --port Q --save '' --appendonly no` (otherwise its default
    configuration);
then runs, for each server in turn and for -P 1 and -P 16,

    redis-benchmark -t get,set -n N -c 50 -d 100 [-P 16] --csv

(N = 200,000; --quick: 50,000) and takes the median requests/s of --repeat
runs. Targets, as ratios within this run (docs/resp.md, "Performance"):
GET >= 2x redis-server and SET >= 1.5x unpipelined; GET >= 2x and SET >= 1x
with -P 16. Each row also carries the benchmark client's CPU use (user+sys
seconds / wall seconds of redis-benchmark): near 1.0, the single-threaded
client, not the server, sets the pace.

    .venv/bin/python perf/bench_resp.py [--quick] [--repeat N] [--json PATH]
"""

import argparse
import csv
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from targets import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "scripts", "kvault-launch")
KV, RS = "kvault-reader x2", "redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"bench_resp: nothing answers on port {port}")


def run_benchmark(port: int, n: int, pipeline: int) -> tuple[dict, float]:
    """{test: requests/s} of one redis-benchmark run, and the client's CPU share."""
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "get,set", "-n", str(n),
           "-c", "50", "-d", "100", "-P", str(pipeline), "--csv"]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = p.stdout.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit(f"bench_resp: {' '.join(cmd)} exited {p.returncode}")
    rps = {}
    for row in csv.reader(io.StringIO(out)):
        if len(row) >= 2 and row[0] in ("GET", "SET"):
            rps[row[0]] = float(row[1])
    if set(rps) != {"GET", "SET"}:
        sys.exit(f"bench_resp: unexpected redis-benchmark output:\n{out}")
    return rps, (ru.ru_utime + ru.ru_stime) / wall


def targets(fig: dict) -> list[dict]:
    def ratio(name, op, pipeline, need):
        a, b = fig[(op, pipeline, KV)], fig[(op, pipeline, RS)]
        value = a / b if b else float("inf")
        return {"target": name, "value": value, "need": f">= {need:g}x", "met": value >= need}

    return [ratio("GET kvault-reader x2 / redis-server", "GET", 1, 2),
            ratio("SET kvault-reader x2 / redis-server", "SET", 1, 1.5),
            ratio("GET -P 16 kvault-reader x2 / redis-server", "GET", 16, 2),
            ratio("SET -P 16 kvault-reader x2 / redis-server", "SET", 16, 1)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="50,000 requests, one repetition")
    ap.add_argument("--requests", type=int, default=200_000, help="redis-benchmark -n")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions; the median is reported")
    ap.add_argument("--json", metavar="PATH", help="write the rows as JSON (for perf/run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.repeat = 50_000, 1
    for tool in ("redis-benchmark", "redis-server"):
        if not shutil.which(tool):
            sys.exit(f"bench_resp: {tool} is missing (scripts/setup installs it)")

    tmp = tempfile.mkdtemp(prefix="bench_resp-")
    procs = []
    kv_port, rs_port = free_port(), free_port()
    try:
        procs.append(subprocess.Popen(
            [sys.executable, LAUNCH, "serve", os.path.join(tmp, "r.db"), "--readers", "2",
             "--port", str(kv_port)], stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(rs_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL))
        wait_port(kv_port)
        wait_port(rs_port)
        runs = {}
        for pipeline in (1, 16):
            for rep in range(args.repeat):
                # alternate which server goes first, so drift hits both alike
                order = [(KV, kv_port), (RS, rs_port)][:: 1 if rep % 2 == 0 else -1]
                for store, port in order:
                    rps, cpu = run_benchmark(port, args.requests, pipeline)
                    for op, v in rps.items():
                        runs.setdefault((op, pipeline, store), []).append((v, cpu))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    rows, fig = [], {}
    for (op, pipeline, store), vals in runs.items():
        med = statistics.median(v for v, _ in vals)
        fig[(op, pipeline, store)] = med
        rows.append({"workload": f"{op}, 100 B, 50 clients" + (f", -P {pipeline}" if pipeline > 1 else ""),
                     "store": store, "ops_per_s": med, "op": op, "pipeline": pipeline,
                     "client_cpu_share": round(statistics.median(c for _, c in vals), 3),
                     "requests": args.requests, "repeat": args.repeat})
    rows.sort(key=lambda r: (r["pipeline"], r["op"], r["store"]))
    for r in rows:
        print(f"{r['workload']:32} {r['store']:18} {r['ops_per_s']:>12,.0f} req/s   "
              f"client CPU {r['client_cpu_share']:.2f}")
    return report(targets(fig), f"targets (median of {args.repeat} runs of {args.requests:,} "
                  f"requests, ratios within this run)", args.json,
                  {"requests": args.requests, "repeat": args.repeat, "results": rows}, width=46)

if __name__ == "__main__":
    sys.exit(main())
