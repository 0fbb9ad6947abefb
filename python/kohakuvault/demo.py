"""Demo: several processes ingest and verify real files in one vault.

Run with ``python -m kohakuvault.demo [options]``; the repository's
``scripts/demo`` builds the project first and runs this with the writer and
launcher of that build.

Shared mode (the default): the vault is served by one ``kvault-writer``,
started with ``kvault-launch serve DB`` (docs/shared-mode.md), and four
worker processes attach to it (``KVault(db, shared=True)``):

1. **Ingest** by two producer processes. The file list is every regular file
   under ``--source`` (default ``/usr/share/doc``; symlinks and other
   non-regular entries are skipped and counted) under the key
   ``doc/<relative path>``, plus the word list ``--words`` (default
   ``/usr/share/dict/words``) under ``dict/words``. The list is sorted by key
   and split deterministically: producer ``p`` takes entries ``i`` with
   ``i % 2 == p``. Each file's bytes are stored raw under its key (files of
   1 MiB or more are streamed with ``put_file``, which in shared mode hands
   the file descriptor to the writer), and an auto-packed metadata dict
   ``{"size", "mtime", "mode", "sha256"}`` under ``meta/<key>``.
   Three columns (:class:`ColumnVault`, embedded on the same file: columns are
   not served by the writer) get one row per file: ``path`` (``str:utf8``),
   ``size`` (``i64``) and ``mtime`` (``f64``).
2. **Verify** by two reader processes: reader ``r`` reads every blob that the
   *other* producer wrote (entries with ``i % 2 == 1 - r``), so each blob is
   checked once and by a process that did not write it: its SHA-256 must
   equal that of the source file read again from disk (or of the same
   relative path under ``--verify-source``) and its metadata's ``sha256`` and
   ``size``.
3. **Random reads**: each reader then reads uniformly random keys (blobs and
   metadata) for ``--read-seconds`` and reports ops/s and its hit rate in the
   shared cache (the attached object's own hit/miss counters: a hit is a key
   served from the shared segment, a miss one read from SQLite).
4. A summary table; the writer is stopped by SIGTERM to the launcher, which
   lets the writer commit everything pending and exit.

``--embedded`` runs the same job without a writer: all four processes open
the file embedded (``shared=False``); the producers then contend on SQLite's
write lock and rely on the busy timeout and retries.

Exit status: 0 when every file verified; 1 on any mismatch or failure of a
worker process or of the writer; 2 on bad arguments; 130 when interrupted.
Every process started (launcher, writer, workers) is stopped on error,
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import hashlib
import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback

from tqdm import tqdm

LARGE = 1 << 20          # files at least this big are streamed (put_file / get_to_file)
READ_PIECE = 1 << 20     # piece size for hashing files from disk
META = "meta/"
DOC = "doc/"
WORDS_KEY = "dict/words"
PRODUCERS = 2
READERS = 2
COLUMN_BATCH = 256       # rows a producer appends to the columns at once
PROGRESS_EVERY = 0.1     # seconds between progress messages of a worker
COLUMNS = (("path", "str:utf8"), ("size", "i64"), ("mtime", "f64"))


# ---------------------------------------------------------------- helpers

class _HashWriter:
    """File-like sink for get_to_file: hashes and counts what it receives."""

    def __init__(self):
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        return len(b)


def _hash_path(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            piece = f.read(READ_PIECE)
            if not piece:
                return h.hexdigest()
            h.update(piece)


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies
    (prctl PR_SET_PDEATHSIG), so a killed demo leaves no process behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def scan(source: str):
    """Walk ``source`` without following symlinks. Returns (files, skipped):
    files is a list of (relative path, absolute path) of regular files sorted
    by relative path; skipped counts symlinks and other non-regular
    entries."""
    files = []
    skipped = {"symlink": 0, "not regular": 0}
    for root, dirs, names in os.walk(source, followlinks=False):
        for d in dirs:
            if os.path.islink(os.path.join(root, d)):
                skipped["symlink"] += 1
        for name in names:
            full = os.path.join(root, name)
            try:
                st = os.lstat(full)
            except OSError:
                skipped["not regular"] += 1
                continue
            if stat.S_ISLNK(st.st_mode):
                skipped["symlink"] += 1
            elif not stat.S_ISREG(st.st_mode):
                skipped["not regular"] += 1
            else:
                files.append((os.path.relpath(full, source), full))
    files.sort()
    return files, skipped


# ------------------------------------------------------- worker processes

def _open_kv(db: str, embedded: bool):
    from .proxy import KVault

    # Embedded: the producers contend on SQLite's write lock; a few more
    # busy retries than the default make a long flush of the other process
    # an ordinary wait rather than an error.
    if embedded:
        return KVault(db, shared=False, retries=8)
    return KVault(db, shared=True)


def _worker(kind: str, idx: int, args: tuple, q) -> None:
    """Body of every worker process: runs ``producer`` or ``reader`` and
    reports ("done", kind, idx, result) or ("error", kind, idx, text)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (SIGTERM)
    try:
        fn = _producer if kind == "producer" else _reader
        result = fn(idx, q, *args)
        q.put(("done", kind, idx, result))
    except BaseException:  # noqa: BLE001 - reported to the parent, then exit 1
        q.put(("error", kind, idx, traceback.format_exc()))
        q.close()
        q.join_thread()
        sys.exit(1)
    q.close()
    q.join_thread()


class _Progress:
    """Rate-limited ("progress", phase, bytes, files) messages to the parent."""

    def __init__(self, q, phase: str):
        self.q, self.phase = q, phase
        self.nbytes = self.nfiles = 0
        self.last = time.monotonic()

    def add(self, nbytes: int, force: bool = False) -> None:
        self.nbytes += nbytes
        self.nfiles += 1
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_EVERY:
            self.flush()
            self.last = now

    def flush(self) -> None:
        if self.nbytes or self.nfiles:
            self.q.put(("progress", self.phase, self.nbytes, self.nfiles))
            self.nbytes = self.nfiles = 0

    def done(self) -> None:
        """Flush and tell the parent this worker finished the phase."""
        self.flush()
        self.q.put(("phase_done", self.phase))


def _append_columns(cv, lock_path: str, rows: list) -> None:
    """Append ``rows`` of (path, size, mtime) to the three columns.

    Row alignment across the producers: each producer appends its rows in
    batches, and a whole batch (the three ``extend`` calls) is appended
    while it holds an exclusive ``fcntl.flock`` on ``lock_path``; so the
    three columns always grow by the same batch at the same time and row
    ``i`` of ``path``, ``size`` and ``mtime`` describe the same file. The
    batches of the two producers interleave in the order they take the lock.
    """
    if not rows:
        return
    paths = [r[0] for r in rows]
    sizes = [r[1] for r in rows]
    mtimes = [r[2] for r in rows]
    with open(lock_path, "a") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        try:
            cv["path"].extend(paths)
            cv["size"].extend(sizes)
            cv["mtime"].extend(mtimes)
        finally:
            fcntl.flock(lf, fcntl.LOCK_UN)
    rows.clear()


def _producer(idx: int, q, db: str, embedded: bool, entries: list, lock_path: str) -> dict:
    """Store ``entries`` [(key, path)]: blob, metadata, column rows.
    Returns {"stored": [(key, path, size, mtime)], "unreadable": n, "bytes": n,
    "seconds": s}."""
    from .column_proxy import ColumnVault

    prog = _Progress(q, "ingest")
    stored, rows = [], []
    unreadable = nbytes = 0
    wall0, t0 = time.time(), time.perf_counter()
    kv = _open_kv(db, embedded)
    cv = ColumnVault(db)
    try:
        with kv.cache(cap_bytes=32 << 20):
            for key, path in entries:
                try:
                    f = open(path, "rb")
                except OSError:
                    unreadable += 1
                    continue
                with f:
                    st = os.fstat(f.fileno())
                    if st.st_size >= LARGE:
                        h = hashlib.sha256()
                        while True:
                            piece = f.read(READ_PIECE)
                            if not piece:
                                break
                            h.update(piece)
                        f.seek(0)
                        kv.put_file(key, f, size=st.st_size)
                        size = st.st_size
                    else:
                        try:
                            data = f.read()
                        except OSError:
                            unreadable += 1
                            continue
                        h = hashlib.sha256(data)
                        kv[key] = data
                        size = len(data)
                kv[META + key] = {
                    "size": size,
                    "mtime": st.st_mtime,
                    "mode": stat.S_IMODE(st.st_mode),
                    "sha256": h.hexdigest(),
                }
                stored.append((key, path, size, st.st_mtime))
                rows.append((key, size, st.st_mtime))
                if len(rows) >= COLUMN_BATCH:
                    _append_columns(cv, lock_path, rows)
                nbytes += size
                prog.add(size)
            _append_columns(cv, lock_path, rows)
        # leaving cache(): flushed; in shared mode that waits for the commit
    finally:
        kv.close()
        del cv
    prog.done()
    return {"stored": stored, "unreadable": unreadable, "bytes": nbytes,
            "seconds": time.perf_counter() - t0, "start": wall0, "end": time.time()}


def _verify_one(kv, key: str, source_path: str, size: int):
    """The reason ``key`` does not match ``source_path``, or None."""
    if size >= LARGE:
        sink = _HashWriter()
        n = kv.get_to_file(key, sink)
        got, got_size = sink.h.hexdigest(), n
    else:
        value = kv.get(key)
        if not isinstance(value, bytes):
            return f"stored value is {type(value).__name__}, not bytes"
        got, got_size = hashlib.sha256(value).hexdigest(), len(value)
    try:
        want = _hash_path(source_path)
    except OSError as exc:
        return f"source unreadable: {exc}"
    meta = kv.get(META + key)
    if got_size != size:
        return f"size {got_size} != {size}"
    if got != want:
        return f"sha256 differs from {source_path}"
    if not isinstance(meta, dict) or meta.get("sha256") != got or meta.get("size") != size:
        return f"metadata mismatch: {meta!r}"
    return None


def _reader(idx: int, q, db: str, embedded: bool, entries: list, all_keys: list,
            read_seconds: float, seed: int) -> dict:
    """Verify ``entries`` [(key, verify path, size)], then random reads of
    ``all_keys`` for ``read_seconds``. Returns figures and mismatches."""
    kv = _open_kv(db, embedded)
    try:
        prog = _Progress(q, "verify")
        bad = []
        nbytes = 0
        wall0, t0 = time.time(), time.perf_counter()
        for key, path, size in entries:
            try:
                why = _verify_one(kv, key, path, size)
            except Exception as exc:  # noqa: BLE001 - a failed read is a mismatch
                why = f"read failed: {type(exc).__name__}: {exc}"
            if why:
                bad.append((key, why))
            nbytes += size
            prog.add(size)
        prog.done()
        t_verify = time.perf_counter() - t0
        wall1 = time.time()

        counters = getattr(kv._native, "counters", None) if kv.shared else None
        # (segment hits, misses, hot-cache hits): a hot-cache hit is a hit too
        h0, m0, hh0 = counters() if counters else (0, 0, 0)
        rng = random.Random(seed)
        get = kv.get
        nkeys = len(all_keys)
        ops = 0
        t0 = time.perf_counter()
        deadline = t0 + read_seconds
        now = last = t0
        reported = 0
        while nkeys and now < deadline:
            for i in rng.choices(range(nkeys), k=256):
                get(all_keys[i])
            ops += 256
            now = time.perf_counter()
            if now - last >= PROGRESS_EVERY:
                q.put(("progress", "random reads", ops - reported, 0))
                reported, last = ops, now
        t_read = now - t0
        q.put(("progress", "random reads", ops - reported, 0))
        q.put(("phase_done", "random reads"))
        h1, m1, hh1 = counters() if counters else (0, 0, 0)
    finally:
        kv.close()
    return {"verified": len(entries), "bytes": nbytes, "verify_seconds": t_verify,
            "start": wall0, "end": wall1,
            "bad": bad, "ops": ops, "read_seconds": t_read,
            "hits": (h1 - h0) + (hh1 - hh0), "misses": m1 - m0, "counted": counters is not None}


# ------------------------------------------------------------ the writer

def _find_launcher(given):
    if given:
        return given
    env = os.environ.get("KVAULT_LAUNCH")
    if env:
        return env
    # build tree: <root>/build/<name>/python/kohakuvault/demo.py
    here = os.path.dirname(os.path.abspath(__file__))
    cand = os.path.join(here, "..", "..", "..", "..", "scripts", "kvault-launch")
    if os.path.isfile(cand):
        return os.path.normpath(cand)
    return shutil.which("kvault-launch")


def _writer_env():
    """Environment for the launcher: the writer of the same build as this
    package when running from a build tree (``<build>/workers``) and no
    ``KVAULT_WRITER`` is set."""
    from ._writer import writer_binary

    env = dict(os.environ)
    writer = writer_binary()
    if writer:
        env["KVAULT_WRITER"] = writer
    return env


class _Launcher:
    """``kvault-launch serve DB`` as a child process (own session, so a
    terminal's Ctrl-C reaches the demo, which then stops the workers first
    and the writer last). Its output goes to a log file."""

    def __init__(self, launcher: str, db: str, log_path: str, cache_size: str):
        from . import _kvault

        self.log_path = log_path
        self.log = open(log_path, "w")
        cmd = [sys.executable, launcher, "serve", db]
        if cache_size:
            cmd += ["--cache-size", cache_size]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=_writer_env(),
                                     start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 30
        while not _kvault._attach_served(db, "kv"):
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvault-launch exited ({self.proc.returncode}) before the "
                                   f"writer was ready:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the writer was not ready after 30 s:\n{self.tail()}")
            time.sleep(0.05)

    def tail(self, n: int = 20) -> str:
        if not self.log.closed:
            self.log.flush()
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 120.0):
        """SIGTERM the launcher: it SIGTERMs the writer, which commits
        everything pending and exits. Returns the launcher's exit status
        (killed after ``timeout`` seconds: -9)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def _launcher_status(launcher: str, db: str) -> dict:
    """``kvault-launch status DB`` as a dict (empty if it failed)."""
    try:
        out = subprocess.run([sys.executable, launcher, "status", db], capture_output=True,
                             text=True, timeout=30, env=_writer_env()).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split(None, 1) for line in out.splitlines() if len(line.split(None, 1)) == 2)


# ------------------------------------------------------------ orchestration

class _Failed(Exception):
    pass


def _run_phase(ctx, q, kind: str, jobs: list, bars: list) -> list:
    """Start one process per job and return their results in job order.

    ``bars``: [(phase, total, unit)]: one progress bar per phase of the
    workers, fed by their ("progress", phase, amount, files) messages; a
    bar closes when every worker has sent ("phase_done", phase), and the
    next one opens. Raises _Failed if a worker fails (the caller's cleanup
    terminates the others)."""
    procs = []
    for i, job in enumerate(jobs):
        p = ctx.Process(target=_worker, args=(kind, i, job, q), name=f"{kind}-{i}")
        p.start()
        procs.append(p)
    _run_phase.live = procs
    results = [None] * len(jobs)
    errors = []
    dead_since = {}
    done_count = {phase: 0 for phase, _, _ in bars}
    open_bars = {}

    def bar_for(phase):
        if phase not in open_bars:
            _, total, unit = next(b for b in bars if b[0] == phase)
            open_bars[phase] = tqdm(total=total, unit=unit, unit_scale=True, desc=phase,
                                    file=sys.stderr, dynamic_ncols=True, mininterval=0.2)
        return open_bars[phase]

    bar_for(bars[0][0])
    try:
        while True:
            try:
                msg = q.get(timeout=0.1)
            except queue.Empty:
                msg = None
            if msg is not None:
                if msg[0] == "progress":
                    bar_for(msg[1]).update(msg[2])
                elif msg[0] == "phase_done":
                    done_count[msg[1]] += 1
                    if done_count[msg[1]] == len(procs):
                        bar_for(msg[1]).close()
                elif msg[0] == "done":
                    results[msg[2]] = msg[3]
                elif msg[0] == "error":
                    errors.append(f"{msg[1]} {msg[2]} failed:\n{msg[3]}")
                continue
            if errors:
                break
            if all(r is not None for r in results):
                break
            now = time.monotonic()
            for i, p in enumerate(procs):
                if results[i] is None and p.exitcode is not None:
                    # exited without a result: give its last messages a moment
                    dead_since.setdefault(i, now)
                    if now - dead_since[i] > 2.0:
                        errors.append(f"{kind} {i} exited with status {p.exitcode} "
                                      f"without a result")
            if errors:
                break
    finally:
        for bar in open_bars.values():
            bar.close()
    if errors:
        raise _Failed("\n".join(errors))
    for p in procs:
        p.join()
    _run_phase.live = []
    return results


_run_phase.live = []


def _stop_children(procs) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()


def _check_columns(db: str, stored: list) -> tuple[int, list]:
    """Row count of the three columns and a list of problems: unequal
    lengths, a row whose size/mtime do not belong to its path, a file
    without a row or with two."""
    from .column_proxy import ColumnVault

    cv = ColumnVault(db)
    paths = list(cv["path"])
    sizes = list(cv["size"])
    mtimes = list(cv["mtime"])
    del cv
    bad = []
    if not (len(paths) == len(sizes) == len(mtimes)):
        bad.append(("<columns>", f"lengths differ: path {len(paths)}, size {len(sizes)}, "
                                 f"mtime {len(mtimes)}"))
        return len(paths), bad
    want = {key: (size, mtime) for key, size, mtime in stored}
    seen = set()
    for p, s, m in zip(paths, sizes, mtimes):
        if p in seen:
            bad.append((p, "two column rows"))
        seen.add(p)
        if want.get(p, (None, None)) != (s, m):
            bad.append((p, f"column row size/mtime {s}/{m} != {want.get(p)}"))
    for key in want.keys() - seen:
        bad.append((key, "no column row"))
    return len(paths), bad


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f}"


def _rate(n: int, s: float) -> str:
    return f"{n / 1e6 / s:,.1f}" if s > 0 else "-"


def _print_summary(mode, source, words, db, db_bytes, keys, files_total, skipped, unreadable,
                   prod, t_ingest, readers, t_verify, rows, bad, writer_note):
    nbytes = sum(r["bytes"] for r in prod)
    nfiles = sum(len(r["stored"]) for r in prod)
    print()
    print(f"kohakuvault demo ({mode})")
    print(f"source    {source}" + (f" + {words}" if words else ""))
    print(f"vault     {db} ({_mb(db_bytes)} MB, {keys} keys)")
    print(f"files     {nfiles} stored of {files_total} ({nbytes:,} bytes); skipped "
          f"{skipped['symlink']} symlinks, {skipped['not regular']} non-regular, "
          f"{unreadable} unreadable")
    hdr = f"{'phase':<8} {'process':<11} {'files':>7} {'MB':>9} {'s':>7} {'MB/s':>8} " \
          f"{'ops/s':>10} {'hit rate':>9}"
    print()
    print(hdr)
    print("-" * len(hdr))
    for i, r in enumerate(prod):
        print(f"{'ingest':<8} {'producer ' + str(i):<11} {len(r['stored']):>7} "
              f"{_mb(r['bytes']):>9} {r['seconds']:>7.2f} {_rate(r['bytes'], r['seconds']):>8}")
    print(f"{'ingest':<8} {'all':<11} {nfiles:>7} {_mb(nbytes):>9} {t_ingest:>7.2f} "
          f"{_rate(nbytes, t_ingest):>8}")
    vbytes = sum(r["bytes"] for r in readers)
    for i, r in enumerate(readers):
        print(f"{'verify':<8} {'reader ' + str(i):<11} {r['verified']:>7} {_mb(r['bytes']):>9} "
              f"{r['verify_seconds']:>7.2f} {_rate(r['bytes'], r['verify_seconds']):>8}")
    print(f"{'verify':<8} {'all':<11} {sum(r['verified'] for r in readers):>7} {_mb(vbytes):>9} "
          f"{t_verify:>7.2f} {_rate(vbytes, t_verify):>8}")
    for i, r in enumerate(readers):
        ops_s = r["ops"] / r["read_seconds"] if r["read_seconds"] > 0 else 0.0
        looked = r["hits"] + r["misses"]
        hit = f"{100.0 * r['hits'] / looked:.1f}%" if r["counted"] and looked else "n/a"
        print(f"{'random':<8} {'reader ' + str(i):<11} {'':>7} {'':>9} {r['read_seconds']:>7.2f} "
              f"{'':>8} {ops_s:>10,.0f} {hit:>9}")
    total_ops = sum(r["ops"] / r["read_seconds"] for r in readers if r["read_seconds"] > 0)
    print(f"{'random':<8} {'all':<11} {'':>7} {'':>9} {'':>7} {'':>8} {total_ops:>10,.0f}")
    print()
    print(f"columns   path/size/mtime: {rows} rows each ({'=' if rows == nfiles else '!='} "
          f"{nfiles} files)")
    if mode.startswith("shared"):
        print("hit rate  per reader process: its own hits/(hits+misses) in the shared cache "
              "during the random reads")
    else:
        print("hit rate  n/a: embedded processes have no shared cache")
    if writer_note:
        print(f"writer    {writer_note}")
    print(f"mismatches {len(bad)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m kohakuvault.demo",
        description="Two producer processes ingest real files into one vault through a "
        "kvault-writer (or embedded with --embedded); two reader processes verify every "
        "SHA-256 and then read random keys.",
    )
    ap.add_argument("--source", default="/usr/share/doc",
                    help="folder to ingest, stored under doc/<relative path> "
                         "(default: /usr/share/doc)")
    ap.add_argument("--words", default="/usr/share/dict/words",
                    help="word list stored as dict/words (default: /usr/share/dict/words; "
                         "'' for none)")
    ap.add_argument("--verify-source", default=None, metavar="DIR",
                    help="verify the doc/ blobs against another copy of the source folder: "
                         "DIR/<relative path> instead of --source (e.g. a backup or mirror); "
                         "any file that differs or is missing there is a mismatch")
    ap.add_argument("--db", default=None,
                    help="vault file to create; must not exist yet (default: a temporary "
                         "file, removed afterwards)")
    ap.add_argument("--embedded", action="store_true",
                    help="no writer: all processes open the file embedded")
    ap.add_argument("--read-seconds", type=float, default=10.0,
                    help="duration of each reader's random-read phase (default: 10)")
    ap.add_argument("--cache-size", default="512M",
                    help="shared mode: the writer's --cache-size (default: 512M)")
    ap.add_argument("--launcher", default=None,
                    help="path of kvault-launch (default: $KVAULT_LAUNCH, the source tree's "
                         "scripts/kvault-launch, or PATH)")
    ap.add_argument("--seed", type=int, default=1, help="random-read seed (default: 1)")
    args = ap.parse_args(argv)

    source = os.path.abspath(args.source)
    if not os.path.isdir(source):
        print(f"demo: --source {args.source!r} is not a directory", file=sys.stderr)
        return 2
    verify_root = os.path.abspath(args.verify_source) if args.verify_source else source
    if args.verify_source and not os.path.isdir(verify_root):
        print(f"demo: --verify-source {args.verify_source!r} is not a directory", file=sys.stderr)
        return 2
    words = os.path.abspath(args.words) if args.words else None
    if words and not os.path.isfile(words):
        print(f"demo: --words {args.words!r} is not a file", file=sys.stderr)
        return 2
    if args.read_seconds < 0:
        print("demo: --read-seconds must be >= 0", file=sys.stderr)
        return 2
    launcher = None
    if not args.embedded:
        launcher = _find_launcher(args.launcher)
        if not launcher or not os.path.isfile(launcher):
            print("demo: kvault-launch not found (give --launcher or set KVAULT_LAUNCH)",
                  file=sys.stderr)
            return 2
    if args.db is not None and os.path.lexists(args.db):
        print(f"demo: --db {args.db!r} exists; give a new path (the demo checks that the "
              f"vault holds exactly the files it ingested)", file=sys.stderr)
        return 2

    workdir = tempfile.mkdtemp(prefix="kohakuvault-demo-")
    db = os.path.abspath(args.db) if args.db else os.path.join(workdir, "demo.db")
    os.makedirs(os.path.dirname(db), exist_ok=True)
    lock_path = os.path.join(workdir, "columns.lock")
    mode = "embedded: 4 processes open the file directly" if args.embedded else \
        "shared: kvault-writer + 4 attached processes"

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    writer = None
    rc = 1
    try:
        t0 = time.perf_counter()
        files, skipped = scan(source)
        entries = [(DOC + rel, full) for rel, full in files]
        if words:
            entries.append((WORDS_KEY, words))
        entries.sort()
        print(f"demo: {mode}")
        print(f"demo: {len(entries)} files to ingest from {source}"
              + (f" and {words}" if words else "") + f" (scan {time.perf_counter() - t0:.2f} s)")

        # The columns exist before any producer starts (two processes
        # creating the same column would collide).
        from .column_proxy import ColumnVault

        cv = ColumnVault(db)
        for name, dtype in COLUMNS:
            cv.create_column(name, dtype)
        del cv

        if not args.embedded:
            writer = _Launcher(launcher, db, os.path.join(workdir, "writer.log"),
                               args.cache_size)
            st = _launcher_status(launcher, db)
            print(f"demo: kvault-writer pid {st.get('pid', '?')} serves {db} "
                  f"({st.get('shards', '?')} shards, {int(st.get('memory_total', 0)) >> 20} MiB "
                  f"segment)")

        # 1. ingest: producer p takes entries i % PRODUCERS == p
        jobs = [(db, args.embedded, entries[p::PRODUCERS], lock_path) for p in range(PRODUCERS)]
        sizes = 0
        for _, full in entries:
            try:
                sizes += os.stat(full).st_size
            except OSError:
                pass
        prod = _run_phase(ctx, q, "producer", jobs, [("ingest", sizes, "B")])
        # wall time from the first producer's start to the last one's end
        t_ingest = max(r["end"] for r in prod) - min(r["start"] for r in prod)
        unreadable = sum(r["unreadable"] for r in prod)

        # what was stored, in entry order, with the path to verify against
        stored = sorted(s[:3] for r in prod for s in r["stored"])
        stored_set = {key for key, _, _ in stored}
        bad = []
        # the columns must hold one aligned row per stored file
        col_stored = [(key, size, mtime) for r in prod for key, _, size, mtime in r["stored"]]
        rows, col_bad = _check_columns(db, col_stored)
        bad += col_bad

        # 2. verify (reader r: the entries producer 1 - r wrote) + random reads
        def verify_path(key, path):
            if key.startswith(DOC):
                return os.path.join(verify_root, key[len(DOC):])
            return path

        idx = {key: i for i, (key, _) in enumerate(entries)}
        per_reader = [[] for _ in range(READERS)]
        for key, path, size in stored:
            per_reader[(READERS - 1) - idx[key] % READERS].append((key, verify_path(key, path), size))
        all_keys = [k for key, _, _ in stored for k in (key, META + key)]
        jobs = [(db, args.embedded, per_reader[r], all_keys, args.read_seconds, args.seed + r)
                for r in range(READERS)]
        total = sum(size for _, _, size in stored)
        readers = _run_phase(ctx, q, "reader", jobs,
                             [("verify", total, "B"), ("random reads", None, "op")])
        t_verify = max(r["end"] for r in readers) - min(r["start"] for r in readers)
        for r in readers:
            bad += r["bad"]

        # 3. stop the writer (drain), then count what the file holds
        writer_note = ""
        if writer is not None:
            st = _launcher_status(launcher, db)
            lrc = writer.stop()
            log = writer.tail(1000)
            writer = None
            stopped = [ln for ln in log.splitlines() if "stopped:" in ln]
            if lrc != 0 or not stopped:
                bad.append(("<writer>", f"did not stop cleanly (launcher exit {lrc}):\n{log}"))
            else:
                writer_note = (stopped[-1].split("stopped: ", 1)[1] + "; segment hits "
                               f"{st.get('hits', '?')}, misses {st.get('misses', '?')}, "
                               f"keys cached {st.get('keys_cached', '?')}")
                restarts = log.count("restarting")
                if restarts:  # the launcher restarted a dead writer; workers re-attached
                    writer_note += f"; restarted {restarts} times (see kvault-launch)"
        from .proxy import KVault

        with KVault(db, shared=False) as kv:
            keys = len(kv)
            missing = [key for key in sorted(stored_set) if key not in kv or META + key not in kv]
        for key in missing[:100]:
            bad.append((key, "not in the vault after the writer stopped"))
        if keys != 2 * len(stored):
            bad.append(("<vault>", f"{keys} keys, expected {2 * len(stored)}"))
        db_bytes = sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))

        _print_summary(mode, source, words, db, db_bytes, keys, len(entries), skipped,
                       unreadable, prod, t_ingest, readers, t_verify, rows, bad, writer_note)
        for key, why in bad[:20]:
            print(f"MISMATCH {key}: {why}")
        if bad:
            print(f"FAIL: {len(bad)} mismatches")
            rc = 1
        else:
            print(f"PASS: {len(stored)} files verified, 0 mismatches")
            rc = 0
    except _Failed as exc:
        print(f"demo: FAIL: {exc}", file=sys.stderr)
        rc = 1
    except KeyboardInterrupt:
        print("demo: interrupted; stopping the workers and the writer", file=sys.stderr)
        rc = 130
    except Exception:  # noqa: BLE001 - any other failure: report, clean up, exit 1
        traceback.print_exc()
        rc = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        _stop_children(_run_phase.live)
        if writer is not None:
            lrc = writer.stop()
            if rc != 0:
                print(f"demo: writer log (launcher exit {lrc}):\n{writer.tail()}", file=sys.stderr)
        q.close()
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        shutil.rmtree(workdir, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
