"""kvault-launch: run kohakuvault in shared mode (docs/shared-mode.md).

    kvault-launch serve DB [--shards N] [--cache-size SIZE] [--readers N]
                           [--commit-interval-ms MS] [--synchronous LEVEL]
                           [--port P] [--unix PATH] [--bind ADDR]
                           [--requirepass-file FILE] [--io auto|epoll|uring]
                           [--group GROUP] [--cluster ID@HOST:PORT,... --node-id ID]
                           [--snapshot-entries N] [--join] [-- COMMAND ...]
    kvault-launch cluster DB add ID@HOST:PORT | remove ID
    kvault-launch status DB
    kvault-launch stop DB
    kvault-launch clean DB

serve: checks its options (a bad value: a message naming the option, exit
status 2, nothing started), starts kvault-writer for DB, waits until it is
ready, then
  - with COMMAND: runs COMMAND --readers times as worker processes
    (environment: KVAULT_DB=DB, KVAULT_WORKER=i);
  - with --port and/or --unix: runs --readers kvault-reader processes that
    serve DB to Redis clients (RESP2, docs/resp.md). TCP: every reader binds
    --bind:--port (default 127.0.0.1) with SO_REUSEPORT and the kernel spreads
    connections over them. Unix: the launcher creates the socket (mode 0600,
    or 0660 and GROUP with --group) and hands the same listening socket to
    every reader. A reader that dies
    is restarted at once (within 1 s); its clients reconnect.
  (COMMAND and --port/--unix exclude each other.) It restarts the writer if
it dies (a replacement that fails to start -- killed while it recovers,
/dev/shm full -- is retried after 0.1 s, doubling up to 5 s, each failure
reported on stderr), and on Ctrl-C/SIGTERM stops the workers or readers, then
lets the writer commit everything and exit. Without COMMAND it serves until
interrupted. Exit status: the first non-zero worker status, else 0.
--group GROUP (a name or gid) is passed to the writer: processes of other
users in that group may attach, and the writer's files get mode 0660 and
that group (docs/security.md).
--cluster ID@HOST:PORT,... with --node-id ID runs the writer as node ID of a
cluster (docs/replication.md): start `serve` on each node with the same
--cluster and its own --node-id. The elected leader's writer takes writes and
replicates every committed batch through Raft; the other nodes apply them to
their own file and shared memory (their processes read locally) and refuse
writes, naming the leader. Raft's state is kept in DB.raft/. A snapshot of
the database is taken every --snapshot-entries entries. --join starts a node
that is added to a running cluster (its --cluster also names itself): it
waits for the leader instead of bootstrapping.

cluster: a membership change through the leader's writer (DB is the
leader's file): `add ID@HOST:PORT` adds a node started with `serve --join`
(it catches up from the log or a snapshot, then votes), `remove ID` removes
one. Waits until the configuration holds the change and prints the members.

status: prints the writer's figures (keys cached, hits/misses, applied and
committed sequence, memory used, attached processes), read over its socket;
in a cluster also the node's role, term, commit index, applied index, lag
and leader; then one line per reader (pid, alive, open connections, connections
accepted, commands served; from the stats file each reader rewrites every
second, DB-kvault-reader.i).

stop: SIGTERM to the writer named in the registry; waits until it has exited.
  If that writer died (kill -9, a crash) and none replaced it: recovers, as
  clean does.

clean: for a writer that died without a successor, starts a writer that
  commits the dead one's applied writes (replayed from its shared memory)
  and removes that shared memory, then stops it. Nothing to do otherwise.

The writer binary: $KVAULT_WRITER, else the build tree's (build/*/workers/
of the checkout this code runs from), else the one installed with the package
(kohakuvault/bin/), else `kvault-writer` on PATH. The reader binary likewise:
$KVAULT_READER, else `kvault-reader` beside the writer, then the same places.

Installed by pip as the `kvault-launch` command (and `kohakuvault serve|
status|stop|clean`); in a checkout, scripts/kvault-launch runs this file.
Log lines on stderr start with an ISO-8601 local time stamp.
"""
import argparse
import datetime
import glob
import grp
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import time

from ._writer import native_binary

REG_SUFFIX = "-kvault"
PROTO_MAGIC = 0x4B565031
MSG_STATUS = 6
MSG_CLUSTER = 9
MSG_REPLY = 0x100
MSG = struct.Struct("<IIiIQ")  # kvshm_msg: magic, type, status, len, arg


# The checkout this file runs from, when scripts/kvault-launch runs it (set
# by that wrapper); None for the installed package.
SOURCE_ROOT = None


def log(msg):
    """One launcher log line on stderr: ISO-8601 local time, name, pid."""
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")
    print(f"{stamp} kvault-launch[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def fail(msg):
    """Log msg and exit with status 1."""
    log(msg)
    sys.exit(1)


def find_binary(name, env_var, beside=None):
    """$env_var, else `name` in the directory of `beside`, else
    _writer.native_binary's places (build tree, package, PATH)."""
    env = os.environ.get(env_var)
    if env:
        return env
    if beside:
        cand = os.path.join(os.path.dirname(beside), name)
        if os.access(cand, os.X_OK):
            return cand
    found = native_binary(name, SOURCE_ROOT)
    if found:
        return found
    fail(f"{name} not found (set {env_var}, or install the package with pip)")


def find_writer():
    return find_binary("kvault-writer", "KVAULT_WRITER")


def find_reader():
    return find_binary("kvault-reader", "KVAULT_READER", beside=find_writer())


def reader_stats_path(db, i):
    return os.path.realpath(db) + f"{REG_SUFFIX}-reader.{i}"


def registry_complete(text):
    """The lines of registry text ``text`` up to its ``end=`` line when that
    line counts the bytes before it (a whole text; what follows is a longer
    predecessor's tail), else None (empty, partial, or an end line counting
    other bytes: a writer is rewriting the file)."""
    at = 0
    for line in text.splitlines(keepends=True):
        if line.startswith("end="):
            ok = line.endswith("\n") and line[4:-1].isdigit() and int(line[4:-1]) == at
            return text[:at] if ok else None
        at += len(line.encode())
    return None


def read_registry(db, tries=50, pause=0.0002):
    """The fields of db's registry as a dict, or None when there is no
    file. A text that is not whole is read again for up to ~10 ms (the
    writer writes the new text, then truncates the file to it); if none
    was whole, an empty dict."""
    path = os.path.realpath(db) + REG_SUFFIX
    for _ in range(tries):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            return None
        body = registry_complete(text)
        if body is not None:
            return dict(line.split("=", 1) for line in body.splitlines() if "=" in line)
        time.sleep(pause)
    return {}


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def writer_request(db, typ, payload=b"", timeout=5.0):
    """Send one control request of type typ to the writer serving DB:
    (status, reply text), or None if no writer serves DB or it did not
    answer."""
    reg = read_registry(db)
    if not reg or reg.get("state") != "ready" or not pid_alive(int(reg.get("pid", "0"))):
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(timeout)
    try:
        s.connect("\0" + reg["socket"])
        s.send(MSG.pack(PROTO_MAGIC, typ, 0, len(payload), 0) + payload)
        data = s.recv(65536)
    except OSError:
        return None
    finally:
        s.close()
    _magic, rtyp, status, length, _arg = MSG.unpack_from(data)
    if rtyp != typ | MSG_REPLY:
        return None
    return status, data[MSG.size:MSG.size + length].decode(errors="replace")


def writer_status(db, timeout=5.0):
    """The writer's STATUS reply as a dict, or None if no writer serves DB."""
    r = writer_request(db, MSG_STATUS, timeout=timeout)
    if r is None or r[0] != 0:
        return None
    return dict(line.split("=", 1) for line in r[1].splitlines() if "=" in line)


def writer_command(args):
    """The kvault-writer command line for args (options left None are the
    writer's own defaults)."""
    cmd = [find_writer()]
    for opt, value in (("--shards", args.shards), ("--cache-size", args.cache_size),
                       ("--commit-interval-ms", args.commit_interval_ms),
                       ("--synchronous", args.synchronous), ("--table", args.table),
                       ("--group", getattr(args, "group", None)),
                       ("--cluster", getattr(args, "cluster", None)),
                       ("--node-id", getattr(args, "node_id", None)),
                       ("--snapshot-entries", getattr(args, "snapshot_entries", None))):
        if value is not None:
            cmd += [opt, str(value)]
    if getattr(args, "join", False):
        cmd.append("--join")
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
        fail(f"writer failed to start ({why}; its message is above)")
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
        log(f"writer failed to start ({why}); retrying in {wait:g} s")
        deadline = time.monotonic() + wait
        while not stop["flag"] and time.monotonic() < deadline:
            time.sleep(0.05)
        wait = min(wait * 2, RESTART_BACKOFF[1])
    return None


def listen_unix(path, group=None):
    """A listening unix stream socket at path, created with mode 0600, or
    0660 and owned by group (a gid) when given (a stale socket file there is
    replaced)."""
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
    if group is not None:
        os.chown(path, -1, group)
        os.chmod(path, 0o660)
    s.listen(511)
    return s


def terminate_all(procs, timeout=10):
    """SIGTERM every process of procs still running, then wait for each;
    one that has not exited after timeout seconds is killed."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Readers:
    """The kvault-reader processes of `serve --port/--unix`: started,
    restarted when one dies, stopped."""

    def __init__(self, args):
        self.args = args
        self.binary = find_reader()
        self.usock = listen_unix(args.unix, group_id(args.group)) if args.unix else None
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
                fail(f"reader failed to start (exit {p.returncode})")
            log(f"reader {i} pid {p.pid} {line.strip()}")

    def check(self):
        """Restart every reader that has exited."""
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                log(f"reader {i} (pid {p.pid}) exited ({p.returncode}); restarting")
                p.stdout.close()
                self.start(i)

    def stop(self):
        terminate_all([p for p in self.procs if p])
        for i, p in enumerate(self.procs):
            if not p:
                continue
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
        print("kvault-launch serve: error: give either COMMAND or --port/--unix, not both",
              file=sys.stderr)
        return 2
    if args.join and args.cluster is None:
        print("kvault-launch serve: error: --join needs --cluster and --node-id",
              file=sys.stderr)
        return 2
    if (args.cluster is None) != (args.node_id is None):
        print("kvault-launch serve: error: --cluster and --node-id go together",
              file=sys.stderr)
        return 2
    if args.cluster is not None and args.node_id not in args.cluster:
        print(f"kvault-launch serve: error: --node-id {args.node_id} is not among the nodes "
              f"of --cluster {','.join(f'{i}@{a}' for i, a in args.cluster.items())}",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    writer = start_writer(args)
    log(f"writer pid {writer.pid} serves {args.db}")
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
                    log("writer stopped cleanly; stopping")
                    break
                log(f"writer exited ({writer.returncode}); restarting")
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
        terminate_all(workers)
        for w in workers:
            if w.returncode and not rc:
                rc = w.returncode if w.returncode > 0 else 1
        if writer is not None and writer.poll() is None:
            writer.terminate()  # the writer commits everything, then exits 0
            writer.wait()
    return rc


# The writer's cluster figures (STATUS keys) that `status` prints, and their labels.
CLUSTER_STATUS = (("cluster_node", "node"), ("cluster_role", "role"),
                  ("cluster_term", "term"), ("cluster_leader", "leader"),
                  ("cluster_commit_index", "commit_index"),
                  ("cluster_last_applied", "applied_index"), ("cluster_lag", "lag"),
                  ("cluster_match_index", "match_index"),
                  ("cluster_accepts_writes", "accepts_writes"),
                  ("cluster_members", "members"))


def cmd_status(args):
    st = writer_status(args.db)
    if st is None:
        print(f"no writer serves {args.db}")
        return 1
    for k in ("db", "pid", "generation", "shards", "keys_cached", "keys_in_memtables", "hits",
              "misses", "miss_loads", "miss_declined", "applied_seq", "committed_seq", "pending", "memory_used",
              "memory_total", "attached", "commits", "evicted_keys", "replayed", "execs",
              "execs_failed", "exec_batches", "exec_batched_ops", "exec_batch_max"):
        if k in st:
            print(f"{k:18} {st[k]}")
    for k, label in CLUSTER_STATUS:
        if k in st:
            print(f"{label:18} {st[k]}")
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
        log(f"recovery of {db} failed: writer {why}")
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


SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*(?:([KMGT])(?:I?B)?|B)?\s*", re.IGNORECASE)


def parse_size(text):
    """Bytes of a size written as a number with an optional K/M/G/T suffix
    (powers of 1024; "KiB", "MB" and "B" spellings accepted, as by
    kvault-writer): "256M", "1G", "1048576". argparse type for --cache-size."""
    m = SIZE_RE.fullmatch(text)
    value = float(m.group(1)) * SIZE_SUFFIXES[(m.group(2) or "").upper()] if m else 0
    if not 1 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(
            f"expected a size in bytes with an optional K/M/G suffix (e.g. 256M, 1G, "
            f"1048576), got {text!r}")
    return int(value)


def int_range(lo, hi=None):
    """argparse type: an integer in lo..hi (hi None: no upper bound)."""
    def parse(text):
        try:
            value = int(text, 10)
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            bound = f"{lo}..{hi}" if hi is not None else f"at least {lo}"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {text!r}")
        return value
    parse.__name__ = "integer"
    return parse


def cluster_spec(text):
    """argparse type of --cluster: ID@HOST:PORT,... as {id: "HOST:PORT"}
    (IDs distinct, >= 1; PORT 1..65535); passed to the writer as written."""
    nodes = {}
    for item in text.split(","):
        ident, _, addr = item.partition("@")
        host, _, port = addr.rpartition(":")
        ok = ident.isdigit() and int(ident) >= 1 and host and port.isdigit() \
            and 1 <= int(port) <= 65535 and " " not in item
        if not ok or int(ident) in nodes:
            raise argparse.ArgumentTypeError(
                f"expected ID@HOST:PORT,... with distinct IDs >= 1, got {text!r}")
        nodes[int(ident)] = addr
    return ClusterNodes(nodes, text)


class ClusterNodes(dict):
    """The nodes of --cluster ({id: "HOST:PORT"}); str() is the text given."""

    def __init__(self, nodes, text):
        super().__init__(nodes)
        self.text = text

    def __str__(self):
        return self.text


def group_id(name):
    """The gid of a group given by name or number (None: None). argparse
    type of --group, which kvault-writer checks the same way."""
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        pass
    try:
        return grp.getgrgid(int(name)).gr_gid
    except (KeyError, ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"expected the name or gid of an existing group, got {name!r} (getent group)"
        ) from None


def group_name(text):
    """argparse type of --group: the text, once it names a group."""
    group_id(text)
    return text


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions kept as written, every option's default shown (an option
    whose default is "not given" says nothing)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


MAX_SHARDS = 256   # KVSHM_MAX_SHARDS (shm/include/kvshm/kvshm.h)

def cmd_cluster(args):
    """Change the cluster's membership through the leader's writer. `add
    ID@HOST:PORT` adds the node (started with `serve --join`), first as a
    spare, then, once its log caught up, as a voter; `remove ID` removes a
    node. Waits until the configuration holds the change (STATUS
    cluster_members), printing it."""
    db = os.path.realpath(args.db)
    text = f"{args.action} {args.node}".encode()
    r = writer_request(db, MSG_CLUSTER, text)
    if r is None:
        fail(f"no writer serves {db}")
    status, msg = r
    if status != 0:
        fail(msg)
    log(msg)
    node_id = args.node.split("@", 1)[0]
    deadline = time.monotonic() + args.timeout
    while True:
        st = writer_status(db) or {}
        members = {m.split("@", 1)[0]: m for m in st.get("cluster_members", "-").split(",")
                   if "@" in m}
        done = (node_id in members and members[node_id].endswith(":voter")
                if args.action == "add" else node_id not in members)
        if done and st.get("cluster_change") == "-":
            print(f"members {st['cluster_members']}")
            return 0
        if st.get("cluster_change_error", "-") != "-":
            fail(f"{st['cluster_change_error']} (members {st.get('cluster_members')})")
        if time.monotonic() > deadline:
            fail(f"the {args.action} of node {node_id} did not complete in {args.timeout:g} s "
                 f"(members {st.get('cluster_members')}, change {st.get('cluster_change')}; "
                 "the writer's log says why)")
        time.sleep(0.05)


COMMANDS = {
    "status": ("print the writer's figures (keys cached, hits, sequences, memory, attached "
               "processes) and one line per RESP reader", cmd_status),
    "stop": ("stop the writer (it commits everything first) and wait until it has exited; if "
             "it died without a successor, recover its uncommitted writes as clean does",
             cmd_stop),
    "clean": ("for a writer that died without a successor: commit its applied writes "
              "(replayed from its shared memory) and remove that shared memory", cmd_clean),
}


def add_commands(sub):
    """Add serve, status, stop and clean to an argparse subparsers object
    (used by kvault-launch and by `python -m kohakuvault`)."""
    s = sub.add_parser("serve", help="start the writer for DB (and worker processes, or RESP "
                       "readers) and serve until interrupted",
                       description=__doc__, formatter_class=HelpFormatter)
    s.add_argument("db", metavar="DB", help="database file (created if missing)")
    s.add_argument("--shards", metavar="N", type=int_range(1, MAX_SHARDS), default=4,
                   help="shards of the writer's shared-memory segment")
    s.add_argument("--cache-size", metavar="SIZE", type=parse_size, default="256M",
                   help="bytes of the shared cache segment (suffix K/M/G)")
    s.add_argument("--readers", metavar="N", type=int_range(1), default=1,
                   help="worker processes (with COMMAND) or RESP readers (with --port/--unix)")
    s.add_argument("--commit-interval-ms", metavar="MS", type=int_range(0), default=20,
                   help="group-commit interval of the writer, milliseconds")
    s.add_argument("--synchronous", metavar="LEVEL", choices=["off", "normal", "full", "extra"],
                   default="normal",
                   help="SQLite synchronous level of the writer's commits: %(choices)s")
    s.add_argument("--table", metavar="NAME", default="kv", help="key-value table served")
    s.add_argument("--port", metavar="PORT", type=int_range(1, 65535),
                   help="serve RESP on this TCP port (kvault-reader; every reader binds it)")
    s.add_argument("--unix", metavar="PATH", help="serve RESP on this unix socket (mode 0600)")
    s.add_argument("--bind", metavar="ADDR", default="127.0.0.1", help="TCP address of --port")
    s.add_argument("--requirepass-file", metavar="FILE",
                   help="clients must AUTH with this file's first line")
    s.add_argument("--io", metavar="LOOP", choices=["auto", "epoll", "uring"], default="auto",
                   help="the RESP readers' event loop: %(choices)s")
    s.add_argument("--group", metavar="GROUP", type=group_name,
                   help="also serve processes of other users in GROUP (name or gid): the "
                   "writer's files and the --unix socket get mode 0660 and that group")
    s.add_argument("--cluster", metavar="ID@HOST:PORT,...", type=cluster_spec,
                   help="run as a node of this cluster (docs/replication.md); with --node-id")
    s.add_argument("--node-id", metavar="ID", type=int_range(1),
                   help="this node's ID among those of --cluster")
    s.add_argument("--snapshot-entries", metavar="N", type=int_range(2),
                   help="cluster: a snapshot of the database every N Raft entries (the "
                   "writer's default: 16384)")
    s.add_argument("--join", action="store_true",
                   help="this node is added to a running cluster (`kvault-launch cluster DB add` "
                   "on the leader): it does not bootstrap, it waits for the leader")
    s.set_defaults(func=cmd_serve)
    c = sub.add_parser("cluster", help="add a node to the cluster, or remove one (ask the "
                       "leader's DB)", description=cmd_cluster.__doc__,
                       formatter_class=HelpFormatter)
    c.add_argument("db", metavar="DB", help="database file of the leader node")
    c.add_argument("action", choices=["add", "remove"],
                   help="add a node (started with `serve --join`), or remove one")
    c.add_argument("node", metavar="NODE", help="add: ID@HOST:PORT; remove: ID")
    c.add_argument("--timeout", metavar="S", type=float, default=120.0,
                   help="seconds to wait until the change is committed")
    c.set_defaults(func=cmd_cluster)
    for name, (text, func) in COMMANDS.items():
        q = sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)
        q.add_argument("db", metavar="DB", help="database file")
        q.set_defaults(func=func)
    return s


def split_command(argv):
    """(arguments, COMMAND): argv split at the first `--`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def build_parser():
    """The argparse parser of the `kvault-launch` command."""
    p = argparse.ArgumentParser(prog="kvault-launch", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    add_commands(p.add_subparsers(dest="cmd", required=True, metavar="COMMAND"))
    return p


def main(argv=None):
    """Entry point of the `kvault-launch` command."""
    argv, command = split_command(argv)
    args = build_parser().parse_args(argv)
    args.command = command
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
