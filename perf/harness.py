#!/usr/bin/env python3
"""Runs every kohakuvault benchmark in one process tree and publishes the figures.

Each benchmark under perf/ runs as a child process with ``--json``; this
harness collects their rows into one list of ``{suite, workload, store,
ops_per_s, ...}`` records, writes

- ``perf/results/latest.json``: machine description + every row,
- ``perf/results/latest.md``: one markdown table per suite,
- ``perf/results/latest.png``: ops/s per workload and store (log scale),

and regenerates the figures section of ``docs/performance.md`` (between the
``<!-- perf/run:begin -->`` and ``<!-- perf/run:end -->`` markers) from them.

usage: perf/run [--quick] [--only SUITE ...] [--no-docs] [--replot]

``--only`` runs some suites and keeps the others' rows from the previous
``latest.json``; the generated section names the suites kept and the date
each was measured.

``--quick`` shrinks every workload for a pass of about two minutes; the full
run stays under fifteen minutes on a 2-core machine. A suite that fails is
reported and the others still run; the exit status is non-zero if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERF = os.path.join(ROOT, "perf")
RESULTS = os.path.join(PERF, "results")
DOC = os.path.join(ROOT, "docs", "performance.md")
BEGIN, END = "<!-- perf/run:begin -->", "<!-- perf/run:end -->"


def cpu_model(default: str) -> str:
    """The CPU's model name from /proc/cpuinfo, or ``default`` when it has none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


def machine() -> dict:
    """CPU model, cores, kernel, SQLite and Python versions of this machine."""
    return {
        "cpu": cpu_model(platform.processor() or "unknown"),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "sqlite": sqlite3.sqlite_version,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": os.getloadavg()[0],
    }


def suites(build: str, quick: bool) -> list[dict]:
    """The benchmarks, each a command that writes its JSON to {json}."""
    py = sys.executable
    c_bench = os.path.join(build, "perf", "bench_shm_lookup")
    out = [
        {"name": "kv", "title": "KVault (embedded) vs sqlite3 vs lmdb",
         "cmd": [py, os.path.join(PERF, "bench_kv.py"), "--json", "{json}"]
                + (["--n", "10000", "--repeat", "1"] if quick else [])},
        {"name": "columns", "title": "Columns vs sqlite3 and numpy",
         "cmd": [py, os.path.join(PERF, "bench_columns.py"), "--json", "{json}"]
                + (["--n", "1000000", "--repeats", "1"] if quick else [])},
        {"name": "shm", "title": "Shared segment lookups (C) vs LMDB",
         "cmd": [c_bench] + (["200000", "400000", "1"] if quick else ["1000000", "2000000", "5"]),
         "needs": c_bench, "parse": parse_shm_table},
        {"name": "vectors", "title": "Vector search and inserts vs numpy and sqlite-vec",
         "cmd": [py, os.path.join(PERF, "bench_vectors.py"), "--json", "{json}"]
                + (["--quick"] if quick else [])},
        {"name": "shared", "title": "Attached processes vs embedded, lmdb, diskcache, redis",
         "cmd": [py, os.path.join(PERF, "bench_shared.py"), "--json", "{json}"]
                + (["--quick"] if quick else []),
         "needs": os.path.join(PERF, "bench_shared.py")},
        {"name": "writes", "title": "Shared-mode writes vs sqlite3, redis, lmdb, embedded",
         "cmd": [py, os.path.join(PERF, "bench_writes.py"), "--json", "{json}"]
                + (["--quick"] if quick else [])},
        {"name": "classes", "title": "TextVault and VectorKVault inserts through the writer vs embedded",
         "cmd": [py, os.path.join(PERF, "bench_classes.py"), "--json", "{json}"]
                + (["--quick"] if quick else [])},
        {"name": "takeover", "title": "First put after the writer is killed (kill -9)",
         "cmd": [py, os.path.join(PERF, "bench_takeover.py"), "--json", "{json}"]
                + (["--quick"] if quick else [])},
        {"name": "files", "title": "Real files and a training loader vs sqlite3 and plain files",
         "cmd": [py, os.path.join(PERF, "bench_files.py"), "--json", "{json}"]
                + (["--quick"] if quick else [])},
        {"name": "cluster", "title": "Cluster mode: replication, quorum-acknowledged puts, failover",
         "cmd": [py, os.path.join(PERF, "bench_cluster.py"), "--json", "{json}"]
                + (["--quick"] if quick else [])},
        {"name": "resp", "title": "kvault-reader (RESP) vs redis-server, redis-benchmark",
         "cmd": [py, os.path.join(PERF, "bench_resp.py"), "--json", "{json}"]
                + (["--quick"] if quick else []),
         "needs": os.path.join(build, "workers", "kvault-reader")},
    ]
    return out


def parse_shm_table(stdout: str) -> dict:
    """Rows of bench_shm_lookup's markdown table, as {"results": [...]}.

    The C benchmark prints ``| structure | 1 process ops/s | vs LMDB |
    2 processes ops/s | vs LMDB |`` with figures such as ``2.18M``.
    """
    def num(txt: str) -> float:
        txt = txt.strip().replace(",", "")
        scale = {"k": 1e3, "M": 1e6, "G": 1e9}.get(txt[-1:], 1.0)
        return float(txt[:-1] if txt[-1:] in "kMG" else txt) * scale

    m = re.search(r"hot point lookups, (\d+) keys", stdout)
    keys = f"{int(m.group(1)):,} keys" if m else "keys"
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not re.match(r"^[0-9.,]+[kMG]?$", cells[1]):
            continue
        rows.append({"workload": f"point lookup, {keys}, 1 proc", "store": cells[0],
                     "ops_per_s": num(cells[1]), "processes": 1})
        rows.append({"workload": f"point lookup, {keys}, 2 proc", "store": cells[0],
                     "ops_per_s": num(cells[3]), "processes": 2})
    rows.sort(key=lambda r: r["processes"])
    return {"results": rows}


LATENCY = ("p50_us", "p99_us")


def normalise(suite: str, data: dict) -> list[dict]:
    """Maps each benchmark's own row shape onto {suite, workload, store, ops_per_s},
    or {suite, workload, store, p50_us, p99_us} for a latency row."""
    rows = []
    for r in data.get("results", []):
        workload = r.get("workload")
        if workload is None:
            parts = [str(r.get("op", "?"))]
            if "value_bytes" in r:
                vb = r["value_bytes"]
                parts.append(f"{vb} B" if vb < 1024 else f"{vb // 1024} KiB")
            if "processes" in r:
                parts.append(f"{r['processes']} proc")
            workload = " ".join(parts)
        store = r.get("store") or r.get("system") or r.get("impl") or "?"
        if r.get("p99_us") is not None:
            rows.append({"suite": suite, "workload": workload, "store": store,
                         **{k: float(r[k]) for k in LATENCY},
                         **{k: v for k, v in r.items() if k in ("load_ops_per_s", "processes")}})
            continue
        if r.get("ops_per_s") is None:
            continue
        rows.append({"suite": suite, "workload": workload, "store": store,
                     "ops_per_s": float(r["ops_per_s"]),
                     **{k: v for k, v in r.items()
                        if k in ("mb_per_s", "seconds_median", "seconds", "processes")}})
    return rows


def suite_targets(suite: str, data: dict) -> list[dict]:
    """A benchmark's own target checks ({target, value, need, met}), tagged with its suite."""
    return [{"suite": suite, **t} for t in data.get("targets", [])]


def tables(rows: list[dict], titles: dict, checks=()) -> str:
    """One markdown table per suite (ops/s, ratio against the fastest row of
    the workload), then its latency rows (p50/p99, lower is better) and its
    target checks, when it has any."""
    out = []
    for suite in dict.fromkeys(r["suite"] for r in rows):
        out.append(f"### {titles.get(suite, suite)}\n")
        srows = [r for r in rows if r["suite"] == suite and "ops_per_s" in r]
        if srows:
            out.append("| workload | store | ops/s | vs fastest in workload |")
            out.append("|---|---|---:|---:|")
        best = {}
        for r in srows:
            best[r["workload"]] = max(best.get(r["workload"], 0.0), r["ops_per_s"])
        for r in srows:
            rel = r["ops_per_s"] / best[r["workload"]] if best[r["workload"]] else 0.0
            out.append(f"| {r['workload']} | {r['store']} | {r['ops_per_s']:,.0f} | {rel:.2f} |")
        lrows = [r for r in rows if r["suite"] == suite and "p99_us" in r]
        if lrows:
            out += ["", "| workload | store | p50 µs | p99 µs | ops/s meanwhile |",
                    "|---|---|---:|---:|---:|"]
            out += [f"| {r['workload']} | {r['store']} | {r['p50_us']:,.1f} | "
                    f"{r['p99_us']:,.1f} | {r.get('load_ops_per_s', 0):,.0f} |" for r in lrows]
        sch = [c for c in checks if c["suite"] == suite]
        if sch:
            out += ["", "| target (ratios within this run) | measured | needed | met |",
                    "|---|---:|---|---|"]
            out += [f"| {c['target']} | {c['value']:,.2f} | {c['need']} | "
                    f"{'yes' if c['met'] else '**no**'} |" for c in sch]
        out.append("")
    return "\n".join(out)


def plot(rows: list[dict], path: str) -> None:
    """Horizontal bars of ops/s (log scale), grouped by suite and workload
    (latency rows are left to the tables)."""
    rows = [r for r in rows if "ops_per_s" in r]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['workload']} — {r['store']}" for r in rows]
    values = [r["ops_per_s"] for r in rows]
    suites_ = list(dict.fromkeys(r["suite"] for r in rows))
    cmap = plt.get_cmap("tab10")
    colors = [cmap(suites_.index(r["suite"]) % 10) for r in rows]
    height = max(4.0, 0.26 * len(rows) + 1.2)
    fig, ax = plt.subplots(figsize=(11, height))
    y = range(len(rows))[::-1]
    ax.barh(list(y), values, color=colors)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("operations per second (log scale, higher is better)")
    ax.set_title("kohakuvault and peers, one perf/run")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=cmap(i % 10), label=s) for i, s in enumerate(suites_)],
              loc="lower right", fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def keep_previous(rows: list, checks: list, titles: dict, info: dict, build: str) -> None:
    """A run of some suites (--only) keeps the other suites' rows and target
    checks from perf/results/latest.json, each suite with the date it was
    measured (info["suite_dates"]), so that one suite run again does not
    drop the figures of the rest."""
    path = os.path.join(RESULTS, "latest.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        prev = json.load(f)
    ran = set(info["suite_dates"])
    dates = prev.get("machine", {}).get("suite_dates", {})
    old_date = prev.get("machine", {}).get("date", "an earlier run")
    kept = [r for r in prev.get("rows", []) if r["suite"] not in ran]
    for r in kept:
        info["suite_dates"].setdefault(r["suite"], dates.get(r["suite"], old_date))
    rows[:0] = kept
    checks[:0] = [c for c in prev.get("targets", []) if c.get("suite") not in ran]
    names = {s["name"]: s["title"] for s in suites(build, False)}
    for suite in info["suite_dates"]:
        titles.setdefault(suite, names.get(suite, suite))


def update_doc(md: str, info: dict, cmd: str, missed=(), titles=None) -> None:
    """Replaces the generated section of docs/performance.md (appends it if absent).
    ``missed``: suites whose benchmark said its issue's target was not met."""
    miss = ""
    if missed:
        names = ", ".join((titles or {}).get(m, m) for m in missed)
        miss = f"**Targets not met in this run:** {names} (see that benchmark's section above).\n\n"
    dates = info.get("suite_dates", {})
    older = sorted({d for d in dates.values() if d != info["date"]})
    if older:   # some suites kept from earlier runs (perf/run --only)
        miss += "Suites kept from earlier runs: " + "; ".join(
            f"{', '.join((titles or {}).get(s, s) for s, d in dates.items() if d == when)} ({when})"
            for when in older) + ".\n\n"
    section = (
        f"{BEGIN}\n## Figures from the latest `perf/run`\n\n"
        f"Generated by `{cmd}` on {info['date']}: {info['cpu']}, {info['cores']} cores, "
        f"kernel {info['kernel']}, SQLite {info['sqlite']}, Python {info['python']} "
        f"(load average {info['load_before']:.2f} at the start). Every row of a table was "
        f"measured in the same run; raw figures in `perf/results/latest.json`.\n\n{miss}"
        f"![ops/s per workload and store](../perf/results/latest.png)\n\n{md}\n{END}\n"
    )
    text = open(DOC).read() if os.path.exists(DOC) else "# Performance\n\n"
    if BEGIN in text and END in text:
        pre, rest = text.split(BEGIN, 1)
        post = rest.split(END, 1)[1].lstrip("\n")
        text = pre + section + ("\n" + post if post else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(DOC, "w") as f:
        f.write(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run every kohakuvault benchmark and publish the figures.")
    ap.add_argument("--quick", action="store_true", help="small workloads, about two minutes")
    ap.add_argument("--only", nargs="+", metavar="SUITE",
                    help="run only these suites (kv, columns, shm, shared, writes, resp, ...); "
                         "the other suites' figures are kept from perf/results/latest.json")
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/performance.md")
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "release"), help="CMake build directory")
    ap.add_argument("--replot", action="store_true",
                    help="measure nothing: redraw latest.md/.png from perf/results/latest.json")
    args = ap.parse_args(argv)
    if args.replot:
        with open(os.path.join(RESULTS, "latest.json")) as f:
            latest = json.load(f)
        rows = latest["rows"]
        titles = {s["name"]: s["title"] for s in suites(args.build, False)}
        with open(os.path.join(RESULTS, "latest.md"), "w") as f:
            f.write(tables(rows, titles, latest.get("targets", [])))
        plot(rows, os.path.join(RESULTS, "latest.png"))
        return 0

    os.makedirs(RESULTS, exist_ok=True)
    info = machine()
    print(f"perf/run: {info['cpu']}, {info['cores']} cores, kernel {info['kernel']}, "
          f"SQLite {info['sqlite']}{' (quick)' if args.quick else ''}", flush=True)
    rows, checks, failed, missed, titles, timings = [], [], [], [], {}, {}
    with tempfile.TemporaryDirectory(prefix="perf-run-") as tmp:
        for s in suites(args.build, args.quick):
            if args.only and s["name"] not in args.only:
                continue
            titles[s["name"]] = s["title"]
            if "needs" in s and not os.path.exists(s["needs"]):
                print(f"== {s['name']}: skipped ({s['needs']} does not exist)", flush=True)
                continue
            jpath = os.path.join(tmp, f"{s['name']}.json")
            cmd = [c.replace("{json}", jpath) for c in s["cmd"]]
            print(f"== {s['name']}: {' '.join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd)}",
                  flush=True)
            t0 = time.monotonic()
            if "parse" in s:
                # A benchmark without --json: its printed table is parsed.
                proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
                rc = proc.returncode
                sys.stdout.write(proc.stdout)
                if proc.stdout:
                    with open(jpath, "w") as f:
                        json.dump(s["parse"](proc.stdout), f)
            else:
                rc = subprocess.call(cmd, cwd=ROOT)
            timings[s["name"]] = time.monotonic() - t0
            if not os.path.exists(jpath):
                print(f"== {s['name']}: FAILED (exit {rc}, no results)", flush=True)
                failed.append(s["name"])
                continue
            if rc != 0:
                # The benchmark ran but says one of its targets was not met:
                # keep its figures (they are real) and name it at the end.
                print(f"== {s['name']}: exit {rc} (a target was not met; figures kept)", flush=True)
                missed.append(s["name"])
            with open(jpath) as f:
                data = json.load(f)
            rows.extend(normalise(s["name"], data))
            checks.extend(suite_targets(s["name"], data))
    info["seconds_per_suite"] = timings
    info["suite_dates"] = {name: info["date"] for name in titles}
    if args.only:
        keep_previous(rows, checks, titles, info, args.build)
    with open(os.path.join(RESULTS, "latest.json"), "w") as f:
        json.dump({"machine": info, "quick": args.quick, "failed": failed,
                   "targets_missed": missed, "targets": checks, "rows": rows}, f, indent=2)
    md = tables(rows, titles, checks)
    with open(os.path.join(RESULTS, "latest.md"), "w") as f:
        f.write(md)
    if rows:
        plot(rows, os.path.join(RESULTS, "latest.png"))
    if not args.no_docs and rows:
        update_doc(md, info, "perf/run" + (" --quick" if args.quick else ""), missed, titles)
    print(md)
    print(f"perf/run: wrote perf/results/latest.json, latest.md, latest.png"
          f"{', docs/performance.md' if not args.no_docs and rows else ''}; "
          f"{sum(timings.values()):.0f} s in all"
          + (f"; targets missed in: {', '.join(missed)}" if missed else "")
          + (f"; FAILED (no figures): {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
