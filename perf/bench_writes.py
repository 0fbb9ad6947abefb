#!/usr/bin/env python3
"""Shared-mode writes against the stores users would pick instead, in one run.

Every workload puts 100-byte values under 16-byte keys; every peer is
measured in the same run, on the same machine state. Each figure is the
median of --repeat runs (default 3) of --seconds each; ops/s of several
processes are summed. Workloads (row names as in the tables):

- ``put, each acknowledged, 1 proc`` / ``2 proc``: every put has returned
  before the next starts. KVault attached (returns once the writer applied
  it), KVault embedded (one transaction per put, no cache), sqlite3
  autocommit (``isolation_level=None``, WAL, synchronous=NORMAL, ``INSERT OR
  REPLACE``), redis-server ``SET`` unpipelined (redis-py over a unix socket,
  a private server with ``--save "" --appendonly no``), lmdb with one write
  transaction per put (``sync=False``).
- ``pipelined put, 1 proc``: KVault attached pipelined (a put returns once
  in the ring; the time includes the final ``flush()``, the barrier that
  waits until every put is applied), lmdb nosync with one write transaction per 1000 puts,
  redis-py pipelines of 100 ``SET``, sqlite3 one transaction per 1000.
- ``mixed: writer rate`` / ``mixed: reader rate``: one process writes
  acknowledged puts (sqlite3: commit per 100 rows; lmdb: transaction per
  100; redis: unpipelined ``SET``; KVault attached: applied) over 100,000
  prefilled keys while another ``get``s the same keys in random order
  (lmdb: one read transaction per 1000 gets, so it sees new commits).
- ``put latency under load, 2 proc``: p50 and p99 of every put's duration
  (``time.perf_counter_ns``) while 2 processes put as fast as they can;
  KVault attached applied vs sqlite3 autocommit.
- ``put, each acknowledged, 1 core (taskset -c 0)``: the writer and the
  client pinned to CPU 0 (KVault attached applied), vs sqlite3 autocommit
  pinned the same way.

The targets of issue #14 are checked on ratios within this run; the exit
status is 1 (figures written) when one is missed.

    .venv/bin/python perf/bench_writes.py [--quick] [--seconds S] [--repeat N] [--json PATH]
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
import tempfile
import time
import traceback
from array import array

from targets import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NKEYS = 100_000   # key space of each writing process, and of the mixed workload
CHUNK = 1000      # puts between two looks at the clock (and lmdb/sqlite3 batches)
VALUES = [bytes([65 + r]) * 100 for r in range(26)]
# Every pass over a key space stores another value: SQLite skips rewriting a
# cell whose content is unchanged, which would time commits that write nothing.

W_PUT1 = "put, each acknowledged, 1 proc"
W_PUT2 = "put, each acknowledged, 2 proc"
W_PIPE = "pipelined put, 1 proc"
W_MIXW = "mixed: writer rate"
W_MIXR = "mixed: reader rate"
W_LAT = "put latency under load, 2 proc"
W_CORE = "put, each acknowledged, 1 core (taskset -c 0)"

STORES = {
    "attached": "KVault attached (applied)",
    "attached_pipelined": "KVault attached (pipelined, + final flush)",
    "embedded": "KVault embedded (autocommit, no cache)",
    "sqlite3": "sqlite3 autocommit (WAL, NORMAL)",
    "sqlite3_batch": "sqlite3 (one transaction per 1000)",
    "redis": "redis-server SET (unpipelined)",
    "redis_pipe": "redis-server SET (pipeline of 100)",
    "lmdb": "lmdb (one write txn per put, nosync)",
    "lmdb_batch": "lmdb (one write txn per 1000, nosync)",
}
MIXED = {
    "attached": "KVault attached (applied puts; kv[k])",
    "sqlite3": "sqlite3 (commit per 100; SELECT)",
    "lmdb": "lmdb (txn per 100, nosync; read txn per 1000 gets)",
    "redis": "redis-server (SET unpipelined; GET)",
}
SQL_PUT = "INSERT OR REPLACE INTO kv(key, value) VALUES (?, ?)"


def put_keys(wid: int) -> list[bytes]:
    """The 16-byte keys process ``wid`` (< 10) writes."""
    return [b"p%d-%013d" % (wid, i) for i in range(NKEYS)]


MIX_KEYS = [b"mix-%012d" % i for i in range(NKEYS)]


# ---- the write modes of an attached KVault ----------------------------------

def open_attached(path: str, mode: str):
    """An attached KVault whose puts return once applied (``mode="applied"``)
    or once in the ring (``"pipelined"``)."""
    from kohakuvault import KVault

    return KVault(path, shared=True, write_mode=mode)


def barrier(kv) -> None:
    """Returns once every put of ``kv`` made so far is applied (a writer
    crash then loses none of them)."""
    kv.flush()


# ---- stores, opened inside the measuring process ----------------------------

def sqlite_open(path: str):
    con = sqlite3.connect(path, isolation_level=None, timeout=60)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB)")
    return con


def lmdb_open(path: str):
    import lmdb

    return lmdb.open(path, map_size=1 << 30, sync=False, max_readers=64)


def batched(begin_commit, step: int):
    """A chunk function running ``step`` puts per transaction;
    ``begin_commit()`` returns (put, commit) for a fresh transaction."""
    def chunk(keys, v):
        for i in range(0, len(keys), step):
            put, commit = begin_commit()
            for k in keys[i:i + step]:
                put(k, v)
            commit()
    return chunk


def open_writer(kind: str, where: str, step: int):
    """(put, chunk, finish, close) for the writing role ``kind``: ``put(k, v)``
    for the kinds that put one key per call (``chunk`` is None), else
    ``chunk(keys, v)`` running ``step`` puts per transaction or pipeline
    (``put`` is None). Both return once acknowledged, except the pipelined
    KVault whose ``finish()`` is the barrier."""
    nothing = lambda: None  # noqa: E731
    if kind in ("attached", "attached_pipelined"):
        if kind == "attached":
            kv = open_attached(where, "applied")
            return kv.__setitem__, None, nothing, kv.close
        kv = open_attached(where, "pipelined")
        return kv.__setitem__, None, (lambda: barrier(kv)), kv.close
    if kind == "embedded":
        from kohakuvault import KVault

        kv = KVault(where, shared=False)
        return kv.__setitem__, None, nothing, kv.close
    if kind in ("sqlite3", "sqlite3_batch"):
        con = sqlite_open(where)
        ex = con.execute
        put = lambda k, v: ex(SQL_PUT, (k, v))  # noqa: E731
        if kind == "sqlite3":
            return put, None, nothing, con.close

        def begin_commit():
            ex("BEGIN")
            return put, lambda: ex("COMMIT")
        return None, batched(begin_commit, step), nothing, con.close
    if kind in ("redis", "redis_pipe"):
        import redis

        r = redis.Redis(unix_socket_path=where)
        if kind == "redis":
            return r.set, None, nothing, r.close

        def begin_commit():
            p = r.pipeline(transaction=False)
            return p.set, p.execute
        return None, batched(begin_commit, step), nothing, r.close
    if kind in ("lmdb", "lmdb_batch"):
        env = lmdb_open(where)
        if kind == "lmdb":
            def put(k, v):
                with env.begin(write=True) as txn:
                    txn.put(k, v)
            return put, None, nothing, env.close

        def begin_commit():
            txn = env.begin(write=True)
            return txn.put, txn.commit
        return None, batched(begin_commit, step), nothing, env.close
    raise ValueError(kind)


def open_reader(kind: str, where: str):
    """(chunk(keys), close()) doing one ``get`` per key of the chunk."""
    if kind == "attached":
        from kohakuvault import KVault

        kv = KVault(where, shared=True)
        get = kv.__getitem__
        close = kv.close
    elif kind == "sqlite3":
        con = sqlite_open(where)
        ex = con.execute
        get = lambda k: ex("SELECT value FROM kv WHERE key=?", (k,)).fetchone()  # noqa: E731
        close = con.close
    elif kind == "redis":
        import redis

        r = redis.Redis(unix_socket_path=where)
        get, close = r.get, r.close
    elif kind == "lmdb":
        env = lmdb_open(where)

        def chunk(keys):
            with env.begin() as txn:
                g = txn.get
                for k in keys:
                    g(k)
        return chunk, env.close
    else:
        raise ValueError(kind)

    def chunk(keys):
        for k in keys:
            get(k)
    return chunk, close


# ---- one measuring process ---------------------------------------------------

def timed_loop(chunk, chunks, values, seconds):
    """Runs ``chunk`` over ``chunks`` (rotating ``values`` per pass when
    given) until ``seconds`` passed; returns (operations, t0)."""
    n = r = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        c = chunks[r % len(chunks)]
        if values is None:
            chunk(c)
        else:
            chunk(c, values[(r // len(chunks)) % len(values)])
        n += len(c)
        r += 1
    return n, t0


def worker(spec: dict, go, q) -> None:
    """Measures one role (spec: role, kind, where, wid, seconds, step, latency,
    pin) after ``go`` is set; puts ("done", result) or ("error", text) on q."""
    try:
        if spec.get("pin") is not None:
            os.sched_setaffinity(0, {spec["pin"]})
        lat = None
        if spec["role"] == "read":
            chunk, close = open_reader(spec["kind"], spec["where"])
            finish, values = (lambda: None), None
            order = MIX_KEYS[:]
            random.Random(spec["wid"]).shuffle(order)
            chunks = [order[i:i + CHUNK] for i in range(0, len(order), CHUNK)]
        else:
            put, chunk, finish, close = open_writer(spec["kind"], spec["where"],
                                                    spec.get("step", 1))
            keys = MIX_KEYS if spec["role"] == "mixed" else put_keys(spec["wid"])
            chunks = [keys[i:i + CHUNK] for i in range(0, len(keys), CHUNK)]
            values = VALUES
            if spec.get("latency"):
                lat = array("q")
                rec, ns = lat.append, time.perf_counter_ns

                def chunk(keys, v):
                    for k in keys:
                        a = ns()
                        put(k, v)
                        rec(ns() - a)
            elif chunk is None:
                def chunk(keys, v):
                    for k in keys:
                        put(k, v)
        q.put(("ready", spec["wid"]))
        go.wait()
        n, t0 = timed_loop(chunk, chunks, values, spec["seconds"])
        finish()
        dt = time.perf_counter() - t0
        close()
        q.put(("done", {"wid": spec["wid"], "role": spec["role"], "ops": n, "seconds": dt,
                        "lat": lat.tobytes() if lat is not None else None}))
    except BaseException:  # reported to the parent, which fails the run
        q.put(("error", traceback.format_exc()))


def run(specs: list[dict], seconds: float) -> list[dict]:
    """Starts one spawned process per spec, releases them together once all
    opened their store, returns their results (spec order)."""
    ctx = mp.get_context("spawn")
    q, go = ctx.Queue(), ctx.Event()
    procs = []
    for i, s in enumerate(specs):
        s = dict(s, seconds=seconds, wid=s.get("wid", i))
        procs.append(ctx.Process(target=worker, args=(s, go, q)))
    for p in procs:
        p.start()
    results = []
    try:
        for _ in procs:
            msg = q.get(timeout=120)
            if msg[0] == "error":
                raise RuntimeError(msg[1])
        go.set()
        for _ in procs:
            msg = q.get(timeout=seconds + 300)
            if msg[0] == "error":
                raise RuntimeError(msg[1])
            results.append(msg[1])
    finally:
        reap(procs)
    results.sort(key=lambda r: r["wid"])
    return results


def reap(children: list, terminate: bool = False, timeout: float = 60.0) -> None:
    """Waits until every child (``subprocess.Popen`` or ``multiprocessing.Process``)
    has exited, sending SIGTERM first when ``terminate``; SIGKILL to those
    still running ``timeout`` seconds later."""
    def alive(c):
        return c.poll() is None if isinstance(c, subprocess.Popen) else c.is_alive()

    def wait(c, seconds):
        if isinstance(c, subprocess.Popen):
            try:
                c.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                pass
        else:
            c.join(seconds)

    if terminate:
        for c in children:
            if alive(c):
                c.terminate()
    deadline = time.monotonic() + timeout
    for c in children:
        wait(c, max(0.0, deadline - time.monotonic()))
        if alive(c):
            c.kill()
            wait(c, None)


def rate(results: list[dict], role=None) -> float:
    """ops/s summed over the processes (of ``role`` when given)."""
    return sum(r["ops"] / r["seconds"] for r in results if role is None or r["role"] == role)


def percentiles(results: list[dict]) -> tuple[float, float]:
    """(p50, p99) in microseconds of every recorded put of ``results``."""
    lat = array("q")
    for r in results:
        lat.frombytes(r["lat"])
    s = sorted(lat)
    return s[len(s) // 2] / 1e3, s[min(len(s) - 1, int(len(s) * 0.99))] / 1e3


# ---- setup of the stores -----------------------------------------------------

def writer_binary() -> str:
    from kohakuvault._writer import writer_binary as find

    path = find(ROOT)
    if not path:
        sys.exit("kvault-writer is not built (scripts/build)")
    return path


def start_writer(db: str, pin=None) -> subprocess.Popen:
    """A kvault-writer serving ``db`` (on CPU ``pin`` only, when given)."""
    pre = (lambda: os.sched_setaffinity(0, {pin})) if pin is not None else None
    w = subprocess.Popen([writer_binary(), db], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, preexec_fn=pre)
    line = w.stdout.readline()
    if not line.startswith("ready"):
        w.kill()
        raise RuntimeError(f"kvault-writer did not start: {line!r}")
    return w


def start_redis(tmp: str) -> tuple[subprocess.Popen, str]:
    sock = os.path.join(tmp, "redis.sock")
    rs = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock,
                           "--save", "", "--appendonly", "no", "--dir", tmp],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    for _ in range(500):
        if os.path.exists(sock):
            try:
                redis.Redis(unix_socket_path=sock).ping()
                return rs, sock
            except redis.ConnectionError:
                pass
        time.sleep(0.02)
    rs.kill()
    raise RuntimeError("redis-server did not start")


def prefill(where: dict) -> None:
    """The mixed workload's 100,000 keys in every store it uses."""
    from kohakuvault import KVault

    v = VALUES[0]
    with KVault(where["attached"], shared=True) as kv:
        kv.put_many([(k, v) for k in MIX_KEYS])
        kv.flush_cache()
    con = sqlite_open(where["sqlite3"])
    con.execute("BEGIN")
    con.executemany(SQL_PUT, [(k, v) for k in MIX_KEYS])
    con.execute("COMMIT")
    con.close()
    env = lmdb_open(where["lmdb"])
    with env.begin(write=True) as txn:
        for k in MIX_KEYS:
            txn.put(k, v)
    env.close()
    import redis

    r = redis.Redis(unix_socket_path=where["redis"])
    r.mset({k: v for k in MIX_KEYS})
    r.close()


# ---- the workloads -----------------------------------------------------------

def measure(args, where: dict, pin_where: dict) -> tuple[list[dict], dict]:
    """Every row (and a {(workload, kind): figure} lookup for the targets)."""
    rows, fig = [], {}

    def med(specs, pick):
        return statistics.median(pick(run(specs, args.seconds)) for _ in range(args.repeat))

    def add(workload, kind, ops, names=STORES, **extra):
        fig[(workload, kind)] = ops
        rows.append({"workload": workload, "store": names[kind], "ops_per_s": ops, **extra})
        print(f"{workload:48} {names[kind]:52} {ops:>12,.0f}/s", flush=True)

    ack = ("attached", "embedded", "sqlite3", "redis", "lmdb")
    for nproc, workload in ((1, W_PUT1), (2, W_PUT2)):
        for kind in ack:
            specs = [{"role": "put", "kind": kind, "where": where[kind]} for _ in range(nproc)]
            add(workload, kind, med(specs, rate), processes=nproc)
    batch = {"attached_pipelined": 1, "lmdb_batch": 1000, "redis_pipe": 100, "sqlite3_batch": 1000}
    for kind, step in batch.items():
        spec = {"role": "put", "kind": kind, "where": where[kind], "step": step}
        add(W_PIPE, kind, med([spec], rate), processes=1)
    for kind in MIXED:
        step = {"sqlite3": 100, "lmdb": 100}.get(kind, 1)
        specs = [{"role": "mixed", "kind": kind + ("_batch" if step > 1 else ""),
                  "where": where[kind], "step": step},
                 {"role": "read", "kind": kind, "where": where[kind]}]
        res = [run(specs, args.seconds) for _ in range(args.repeat)]
        add(W_MIXW, kind, statistics.median(rate(r, "mixed") for r in res), MIXED, processes=2)
        add(W_MIXR, kind, statistics.median(rate(r, "read") for r in res), MIXED, processes=2)
    for kind in ("attached", "sqlite3"):
        specs = [{"role": "put", "kind": kind, "where": where[kind], "latency": True}
                 for _ in range(2)]
        res = [run(specs, args.seconds) for _ in range(args.repeat)]
        p = [percentiles(r) for r in res]
        p50 = statistics.median(x[0] for x in p)
        p99 = statistics.median(x[1] for x in p)
        load = statistics.median(rate(r) for r in res)
        fig[(W_LAT, kind)] = p99
        rows.append({"workload": W_LAT, "store": STORES[kind], "p50_us": p50, "p99_us": p99,
                     "load_ops_per_s": load, "processes": 2})
        print(f"{W_LAT:48} {STORES[kind]:52} p50 {p50:,.1f} us  p99 {p99:,.1f} us "
              f"({load:,.0f}/s)", flush=True)
    for kind in ("attached", "sqlite3"):
        spec = {"role": "put", "kind": kind, "where": pin_where[kind], "pin": args.cpu}
        add(W_CORE, kind, med([spec], rate), processes=1)
    return rows, fig


def targets(fig: dict) -> list[dict]:
    """The targets of issue #14, as ratios within this run."""
    def ratio(name, a, b, need):
        value = fig[a] / fig[b] if fig[b] else float("inf")
        return {"target": name, "value": value, "need": f">= {need:g}x",
                "met": value >= need}

    out = [
        ratio("attached applied 1 proc / sqlite3 autocommit 1 proc",
              (W_PUT1, "attached"), (W_PUT1, "sqlite3"), 8),
        ratio("attached applied 1 proc / redis unpipelined 1 proc",
              (W_PUT1, "attached"), (W_PUT1, "redis"), 5),
        ratio("attached applied 2 proc total / 1 proc",
              (W_PUT2, "attached"), (W_PUT1, "attached"), 1),
        ratio("attached pipelined 1 proc / lmdb batched nosync",
              (W_PIPE, "attached_pipelined"), (W_PIPE, "lmdb_batch"), 1),
        ratio("mixed writer: attached / sqlite3", (W_MIXW, "attached"), (W_MIXW, "sqlite3"), 5),
        ratio("mixed reader: attached / lmdb", (W_MIXR, "attached"), (W_MIXR, "lmdb"), 0.8),
        ratio("embedded autocommit 1 proc / sqlite3 autocommit 1 proc",
              (W_PUT1, "embedded"), (W_PUT1, "sqlite3"), 1),
        ratio("1 core: attached applied / sqlite3 autocommit",
              (W_CORE, "attached"), (W_CORE, "sqlite3"), 1),
    ]
    p99 = fig[(W_LAT, "attached")]
    out.append({"target": "attached applied put p99 under load from 2 proc (us)",
                "value": p99, "need": "<= 2000", "met": p99 <= 2000})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions; the median is reported")
    ap.add_argument("--quick", action="store_true", help="0.5 s per measurement, one repetition")
    ap.add_argument("--cpu", type=int, default=0, help="the CPU of the 1-core workload")
    ap.add_argument("--json", metavar="PATH", help="write the rows as JSON (for perf/run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.repeat = 0.5, 1

    tmp = tempfile.mkdtemp(prefix="bench_writes-")
    procs = []
    try:
        where = {k: os.path.join(tmp, k + ".db") for k in ("attached", "embedded", "sqlite3")}
        where["attached_pipelined"] = where["attached"]
        where["sqlite3_batch"] = where["sqlite3"]
        procs.append(start_writer(where["attached"]))
        from kohakuvault import KVault

        KVault(where["embedded"], shared=False).close()
        sqlite_open(where["sqlite3"]).close()
        where["lmdb"] = where["lmdb_batch"] = os.path.join(tmp, "lmdb")
        lmdb_open(where["lmdb"]).close()
        rs, sock = start_redis(tmp)
        procs.append(rs)
        where["redis"] = where["redis_pipe"] = sock
        prefill(where)
        # the 1-core workload: its own writer, pinned like its client
        pin_where = {"attached": os.path.join(tmp, "pinned.db"),
                     "sqlite3": os.path.join(tmp, "pinned-sqlite3.db")}
        procs.append(start_writer(pin_where["attached"], pin=args.cpu))
        sqlite_open(pin_where["sqlite3"]).close()
        rows, fig = measure(args, where, pin_where)
    finally:
        reap(procs, terminate=True)
        shutil.rmtree(tmp, ignore_errors=True)

    return report(targets(fig), f"targets of issue #14 (median of {args.repeat} x "
                  f"{args.seconds:g} s, ratios within this run)", args.json,
                  {"seconds": args.seconds, "repeat": args.repeat, "results": rows})

if __name__ == "__main__":
    sys.exit(main())
