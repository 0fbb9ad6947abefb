#!/usr/bin/env python3
"""kvault-launch: run kohakuvault in shared mode (docs/shared-mode.md).

    kvault-launch serve DB [--shards N] [--cache-size SIZE] [--readers N]
                           [--commit-interval-ms MS] [--synchronous LEVEL]
                           [--port P] [--unix PATH] [--bind ADDR]
                           [--requirepass-file FILE] [--io auto|epoll|uring]
                           [-- COMMAND ...]
    kvault-launch status DB
    kvault-launch stop DB
    kvault-launch clean DB

serve: starts kvault-writer for DB, waits until it is ready, then
  - with COMMAND: runs COMMAND --readers times as worker processes
    (environment: KVAULT_DB=DB, KVAULT_WORKER=i);
  - with --port and/or --unix: runs --readers kvault-reader processes that
    serve DB to Redis clients (RESP2, docs/resp.md). TCP: every reader binds
    --bind:--port (default 127.0.0.1) with SO_REUSEPORT and the kernel spreads
    connections over them. Unix: the launcher creates the socket (mode 0600)
    and hands the same listening socket to every reader. A reader that dies
    is restarted at once (within 1 s); its clients reconnect.
  (COMMAND and --port/--unix exclude each other.) It restarts the writer if
it dies (a replacement that fails to start -- killed while it recovers,
/dev/shm full -- is retried after 0.1 s, doubling up to 5 s, each failure
reported on stderr), and on Ctrl-C/SIGTERM stops the workers or readers, then lets the
writer commit everything and exit. Without COMMAND it serves until
interrupted. Exit status: the first non-zero worker status, else 0.

status: prints the writer's figures (keys cached, hits/misses, applied and
committed sequence, memory used, attached processes), read over its socket,
then one line per reader (pid, alive, open connections, connections
accepted, commands served; from the stats file each reader rewrites every
second, DB-kvault-reader.i).

stop: SIGTERM to the writer named in the registry; waits until it has exited.
  If that writer died (kill -9, a crash) and none replaced it: recovers, as
  clean does.

clean: for a writer that died without a successor, starts a writer that
  commits the dead one's applied writes (replayed from its shared memory)
  and removes that shared memory, then stops it. Nothing to do otherwise.

The writer binary: $KVAULT_WRITER, else `kvault-writer` next to this script's
build tree (build/*/workers/), else on PATH. The reader binary likewise:
$KVAULT_READER, else `kvault-reader` beside the writer, in the build tree,
or on PATH.
"""
import argparse
import glob
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time

REG_SUFFIX = "-kvault"
PROTO_MAGIC = 0x4B565031
MSG_STATUS = 6
MSG_REPLY = 0x100
MSG = struct.Struct("<IIiIQ")  # kvshm_msg: magic, type, status, len, arg


def find_binary(name, env_var, beside=None):
    """$env_var, else `name` in the directory of `beside`, else the newest
    build/*/workers/name of this tree, else PATH."""
    env = os.environ.get(env_var)
    if env:
        return env
    if beside:
        cand = os.path.join(os.path.dirname(beside), name)
        if os.path.exists(cand):
            return cand
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cands = sorted(glob.glob(os.path.join(root, "build", "*", "workers", name)),
                   key=os.path.getmtime, reverse=True)
    if cands:
        return cands[0]
    w = shutil.which(name)
    if w:
        return w
    sys.exit(f"kvault-launch: {name} not found (set {env_var})")


def find_writer():
    return find_binary("kvault-writer", "KVAULT_WRITER")


def find_reader():
    return find_binary("kvault-reader", "KVAULT_READER", beside=find_writer())


def reader_stats_path(db, i):
    return os.path.realpath(db) + f"{REG_SUFFIX}-reader.{i}"


def read_registry(db):
    path = os.path.realpath(db) + REG_SUFFIX
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def writer_status(db, timeout=5.0):
    """The writer's STATUS reply as a dict, or None if no writer serves DB."""
    reg = read_registry(db)
    if not reg or reg.get("state") != "ready" or not pid_alive(int(reg.get("pid", "0"))):
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(timeout)
    try:
        s.connect("\0" + reg["socket"])
        s.send(MSG.pack(PROTO_MAGIC, MSG_STATUS, 0, 0, 0))
        data = s.recv(65536)
    except OSError:
        return None
    finally:
        s.close()
    _magic, typ, status, length, _arg = MSG.unpack_from(data)
    if typ != MSG_STATUS | MSG_REPLY or status != 0:
        return None
    text = data[MSG.size:MSG.size + length].decode()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def writer_command(args):
    cmd = [find_writer()]
    if args.shards:
        cmd += ["--shards", str(args.shards)]
    if args.cache_size:
        cmd += ["--cache-size", args.cache_size]
    if args.commit_interval_ms is not None:
        cmd += ["--commit-interval-ms", str(args.commit_interval_ms)]
    if args.synchronous:
        cmd += ["--synchronous", args.synchronous]
    if args.table:
        cmd += ["--table", args.table]
    cmd.append(args.db)
    return cmd


def try_start_writer(args):
    """(process, None) once the writer serves, or (None, reason) when it
    exited before it was ready (its own message went to stderr)."""
    proc = subprocess.Popen(writer_command(args), stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "ready <segment>" once serving
    if line.startswith("ready"):
        return proc, None
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    rc = proc.returncode
    why = f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"
    return None, why


def start_writer(args):
    proc, why = try_start_writer(args)
    if proc is None:
        sys.exit(f"kvault-launch: writer failed to start ({why}; its message is above)")
    return proc


RESTART_BACKOFF = (0.1, 5.0)   # seconds: first retry, longest wait between retries


def restart_writer(args, stop):
    """Start the writer again until it serves or a stop is requested: a
    replacement that dies while it recovers, or finds /dev/shm full, is tried
    again after a wait that doubles up to RESTART_BACKOFF[1]. Returns the
    process, or None when stopped first."""
    wait = RESTART_BACKOFF[0]
    while not stop["flag"]:
        proc, why = try_start_writer(args)
        if proc is not None:
            return proc
        print(f"kvault-launch: writer failed to start ({why}); retrying in {wait:g} s",
              file=sys.stderr, flush=True)
        deadline = time.monotonic() + wait
        while not stop["flag"] and time.monotonic() < deadline:
            time.sleep(0.05)
        wait = min(wait * 2, RESTART_BACKOFF[1])
    return None


def listen_unix(path):
    """A listening unix stream socket at path, created with mode 0600 (a
    stale socket file there is replaced)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    s.listen(511)
    return s


class Readers:
    """The kvault-reader processes of `serve --port/--unix`: started,
    restarted when one dies, stopped."""

    def __init__(self, args):
        self.args = args
        self.binary = find_reader()
        self.usock = listen_unix(args.unix) if args.unix else None
        self.procs = [None] * max(1, args.readers)
        for i in range(len(self.procs)):
            self.start(i, wait_ready=True)

    def start(self, i, wait_ready=False):
        a = self.args
        cmd = [self.binary, "--stats-file", reader_stats_path(a.db, i)]
        fds = ()
        if a.port is not None:
            cmd += ["--port", str(a.port), "--bind", a.bind]
        if self.usock is not None:
            cmd += ["--listen-fd", str(self.usock.fileno())]
            fds = (self.usock.fileno(),)
        if a.requirepass_file:
            cmd += ["--requirepass-file", a.requirepass_file]
        if a.io:
            cmd += ["--io", a.io]
        if a.table:
            cmd += ["--table", a.table]
        cmd.append(a.db)
        p = subprocess.Popen(cmd, pass_fds=fds, stdout=subprocess.PIPE, text=True)
        self.procs[i] = p
        if wait_ready:
            line = p.stdout.readline()
            if not line.startswith("ready"):
                p.wait(timeout=10)
                raise SystemExit(f"kvault-launch: reader failed to start (exit {p.returncode})")
            print(f"kvault-launch: reader {i} pid {p.pid} {line.strip()}", file=sys.stderr,
                  flush=True)

    def check(self):
        """Restart every reader that has exited."""
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                print(f"kvault-launch: reader {i} (pid {p.pid}) exited ({p.returncode}); "
                      "restarting", file=sys.stderr, flush=True)
                p.stdout.close()
                self.start(i)

    def stop(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.terminate()
        for i, p in enumerate(self.procs):
            if not p:
                continue
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            try:
                os.unlink(reader_stats_path(self.args.db, i))
            except FileNotFoundError:
                pass
        if self.usock is not None:
            self.usock.close()
            try:
                os.unlink(self.args.unix)
            except FileNotFoundError:
                pass


def cmd_serve(args):
    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True

    command = args.command
    serve_resp = args.port is not None or args.unix is not None
    if command and serve_resp:
        sys.exit("kvault-launch: give either COMMAND or --port/--unix, not both")
    if args.port is not None and not 0 < args.port < 65536:
        sys.exit("kvault-launch: --port must be 1..65535 (every reader binds the same port)")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    writer = start_writer(args)
    print(f"kvault-launch: writer pid {writer.pid} serves {args.db}", file=sys.stderr, flush=True)
    workers = []
    readers = None
    if command:
        for i in range(max(1, args.readers)):
            env = dict(os.environ, KVAULT_DB=args.db, KVAULT_WORKER=str(i))
            workers.append(subprocess.Popen(command, env=env))
    rc = 0
    try:
        if serve_resp:
            readers = Readers(args)
        while not stop["flag"]:
            if writer.poll() is not None:
                if writer.returncode == 0:
                    # Exit 0 is a drained, requested stop (SIGTERM, e.g. from
                    # `kvault-launch stop`): stop serving instead of restarting.
                    print("kvault-launch: writer stopped cleanly; stopping", file=sys.stderr,
                          flush=True)
                    break
                print(f"kvault-launch: writer exited ({writer.returncode}); restarting",
                      file=sys.stderr, flush=True)
                writer = restart_writer(args, stop)
                if writer is None:
                    break
            if workers and all(w.poll() is not None for w in workers):
                break
            if readers is not None:
                readers.check()
            time.sleep(0.1)
    finally:
        if readers is not None:
            readers.stop()
        for w in workers:
            if w.poll() is None:
                w.terminate()
        for w in workers:
            try:
                w.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
            if w.returncode and not rc:
                rc = w.returncode if w.returncode > 0 else 1
        if writer is not None and writer.poll() is None:
            writer.terminate()  # the writer commits everything, then exits 0
            writer.wait()
    return rc


def cmd_status(args):
    st = writer_status(args.db)
    if st is None:
        print(f"no writer serves {args.db}")
        return 1
    for k in ("db", "pid", "generation", "shards", "keys_cached", "keys_in_memtables", "hits",
              "misses", "miss_loads", "applied_seq", "committed_seq", "pending", "memory_used",
              "memory_total", "attached", "commits", "evicted_keys", "replayed"):
        if k in st:
            print(f"{k:18} {st[k]}")
    rows = []
    for path in sorted(glob.glob(reader_stats_path(args.db, "*"))):
        if path.endswith(".tmp"):
            continue
        try:
            with open(path) as f:
                r = dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line)
        except OSError:
            continue
        alive = pid_alive(int(r.get("pid", "0")))
        rows.append((path.rsplit(".", 1)[1], r, alive))
    if rows:
        print(f"{'reader':8} {'pid':>8} {'alive':>5} {'io':>6} {'connections':>11} "
              f"{'accepted':>9} {'commands':>12}")
        for i, r, alive in rows:
            print(f"{i:8} {r.get('pid', '?'):>8} {'yes' if alive else 'no':>5} "
                  f"{r.get('io', '?'):>6} {r.get('connections', '?'):>11} "
                  f"{r.get('total_connections', '?'):>9} {r.get('commands', '?'):>12}")
    return 0


def recover(db):
    """A writer of db died without a successor: its segment in /dev/shm may
    hold applied writes that no commit holds. Start a writer (it replays them
    into SQLite and removes the old segment), then stop it. Returns 0 when
    done, 1 when the writer could not start."""
    proc, why = try_start_writer(argparse.Namespace(
        shards=None, cache_size=None, commit_interval_ms=None, synchronous=None, table=None,
        db=db))
    if proc is None:
        print(f"kvault-launch: recovery of {db} failed: writer {why}", file=sys.stderr)
        return 1
    proc.terminate()
    proc.wait()
    print(f"recovered {db}: the dead writer's applied writes are committed and its shared "
          "memory is removed")
    return 0 if proc.returncode == 0 else 1


def dead_writer(db):
    """The registry of db names a writer that is gone (killed, crashed)."""
    reg = read_registry(db)
    return bool(reg and reg.get("state") == "ready" and not pid_alive(int(reg.get("pid", "0"))))


def cmd_clean(args):
    if dead_writer(args.db):
        return recover(args.db)
    if writer_status(args.db) is not None:
        print(f"a writer serves {args.db}: nothing to clean")
    else:
        print(f"nothing to clean for {args.db}")
    return 0


def cmd_stop(args):
    if dead_writer(args.db):
        return recover(args.db)
    reg = read_registry(args.db)
    if not reg or reg.get("state") != "ready":
        print(f"no writer serves {args.db}")
        return 1
    pid = int(reg["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return 0
    deadline = time.monotonic() + 60
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return 0 if not pid_alive(pid) else 1


def main(argv=None):
    p = argparse.ArgumentParser(prog="kvault-launch", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="start the writer (and workers, or RESP readers)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("db")
    s.add_argument("--shards", type=int)
    s.add_argument("--cache-size")
    s.add_argument("--readers", type=int, default=1,
                   help="worker processes (with COMMAND) or RESP readers (with --port/--unix)")
    s.add_argument("--commit-interval-ms", type=int)
    s.add_argument("--synchronous", choices=["off", "normal", "full", "extra"])
    s.add_argument("--table")
    s.add_argument("--port", type=int, help="serve RESP on this TCP port (kvault-reader)")
    s.add_argument("--unix", help="serve RESP on this unix socket (mode 0600)")
    s.add_argument("--bind", default="127.0.0.1", help="TCP address of --port")
    s.add_argument("--requirepass-file", help="clients must AUTH with this file's first line")
    s.add_argument("--io", choices=["auto", "epoll", "uring"], help="readers' event loop")
    for name, text in (("status", "print the writer's figures and its readers"),
                       ("stop", "stop the writer (it commits everything first); if it died,"
                                " recover its uncommitted writes"),
                       ("clean", "recover the writes and remove the shared memory of a writer"
                                 " that died without a successor")):
        q = sub.add_parser(name, help=text, description=text)
        q.add_argument("db")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    args = p.parse_args(argv)
    args.command = command
    return {"serve": cmd_serve, "status": cmd_status, "stop": cmd_stop,
            "clean": cmd_clean}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
