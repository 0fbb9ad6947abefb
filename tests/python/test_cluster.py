"""Cluster mode (docs/replication.md): three kvault-writer processes on
127.0.0.1 replicate through libraft over real TCP sockets.

One test walks the whole first slice: a leader is elected; keys written
through the leader (a KVault attached to the leader's file) reach both
followers' SQLite files and are read by a KVault attached to a follower; a
follower refuses writes naming the leader; the leader is killed with
SIGKILL, a survivor leads within 2 s and takes writes, and the two
survivors' files end up with equal contents (per-key hashes).
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from kohakuvault import KVault, TextVault
from kohakuvault.errors import KohakuVaultError
from kohakuvault.launch import writer_status

from conftest import die_with_parent
from test_shared_mode import WRITER

pytestmark = pytest.mark.skipif(WRITER is None, reason="kvault-writer is not built")

# Failover bound of the acceptance: a new leader within this many seconds
# of the old one's death.
FAILOVER_S = 2.0


def free_ports(n):
    """n TCP ports of 127.0.0.1 free right now (bound to port 0, released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Node:
    """One kvault-writer of the cluster, with its own directory."""

    def __init__(self, root, node_id, spec, join=False, extra=()):
        self.id = node_id
        self.join = join
        self.extra = list(extra)
        self.dir = os.path.join(root, f"node{node_id}")
        os.makedirs(self.dir)
        self.db = os.path.join(self.dir, "db.sqlite")
        self.log = os.path.join(self.dir, "writer.log")
        self.spec = spec
        self.proc = None

    def start(self):
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [WRITER, "--cluster", self.spec, "--node-id", str(self.id),
                 "--commit-interval-ms", "10", "--cache-size", "64M", "--shards", "2",
                 *(["--join"] if self.join else []), *self.extra, self.db],
                stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=die_with_parent)
        line = self.proc.stdout.readline()
        assert line.startswith("ready"), f"node {self.id} failed: {line!r}\n{self.logs()}"

    def status(self):
        return writer_status(self.db, timeout=2.0) if self.alive() else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig):
        if self.alive():
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def logs(self):
        with open(self.log) as f:
            return f.read()


def wait_leader(nodes, timeout):
    """The node that leads and takes writes, once exactly one does (polling
    each node's STATUS); fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        leaders = []
        for n in nodes:
            st = n.status()
            if st and st["cluster_role"] == "leader" and st["cluster_accepts_writes"] == "1":
                leaders.append(n)
        if len(leaders) == 1:
            return leaders[0]
        assert time.monotonic() < deadline, \
            f"no single leader after {timeout} s: {[n.status() for n in nodes]}"
        time.sleep(0.02)


def rows(db):
    """{key: value} of the kv table of db's file, read with sqlite3."""
    con = sqlite3.connect(db, timeout=10)
    try:
        return dict(con.execute("SELECT key, value FROM kv").fetchall())
    finally:
        con.close()


def key_hashes(db):
    """{key: sha256(value)} of db's file."""
    return {k: hashlib.sha256(v).hexdigest() for k, v in rows(db).items()}


def wait_rows(db, want, timeout):
    """Until db's file holds every key of want (bytes keys) with its value."""
    deadline = time.monotonic() + timeout
    while True:
        have = rows(db)
        missing = [k for k, v in want.items() if have.get(k) != v]
        if not missing:
            return have
        assert time.monotonic() < deadline, \
            f"{db}: {len(missing)} of {len(want)} keys missing after {timeout} s " \
            f"(e.g. {missing[:3]})"
        time.sleep(0.05)


def wait_equal_files(nodes, timeout):
    """Until the nodes' files hold the same keys with the same values
    (per-key hashes); fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        hashes = [key_hashes(n.db) for n in nodes]
        if all(h == hashes[0] for h in hashes):
            return
        assert time.monotonic() < deadline, \
            f"the files differ after {timeout} s: {[len(h) for h in hashes]} keys"
        time.sleep(0.2)


@pytest.fixture
def cluster(tmp_path):
    ports = free_ports(3)
    spec = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(ports))
    nodes = [Node(str(tmp_path), i + 1, spec) for i in range(3)]
    for n in nodes:
        n.start()
    try:
        yield nodes
    finally:
        for n in nodes:
            n.kill(signal.SIGTERM)
        for n in nodes:  # Raft's preallocated log segments: megabytes each
            shutil.rmtree(n.db + ".raft", ignore_errors=True)


def test_replicate_refuse_failover(cluster):
    nodes = cluster
    leader = wait_leader(nodes, timeout=15)
    followers = [n for n in nodes if n is not leader]

    # writes through the leader reach every follower's file
    first = {f"k{i:05d}".encode(): f"value {i}".encode() * 3 for i in range(2000)}
    with KVault(leader.db, shared=True) as kv:
        for k, v in first.items():
            kv[k] = v
        kv.flush()
    for f in followers:
        wait_rows(f.db, first, timeout=10)

    # ... and a process attached to a follower reads them from that node
    with KVault(followers[0].db, shared=True) as kf:
        assert kf[b"k00007"] == first[b"k00007"]
        assert kf[b"k01999"] == first[b"k01999"]
        # a follower refuses writes, naming the leader
        leader_name = leader.status()["cluster_node"]
        with pytest.raises(KohakuVaultError, match=f"not the leader; leader is {leader_name}"):
            kf[b"refused"] = b"x"
        # a value too large for the ring goes over the socket (put_file): refused too
        with pytest.raises(KohakuVaultError, match=f"not the leader; leader is {leader_name}"):
            kf[b"refused-large"] = b"x" * (3 << 20)
    # table operations of the other classes are not replicated: refused too
    # (a TextVault insert, a KVault on a table the writer does not serve)
    tf = TextVault(followers[0].db)
    try:
        with pytest.raises(KohakuVaultError, match=f"not the leader; leader is {leader_name}"):
            tf.insert("refused document", b"v")
    finally:
        tf.close()
    with KVault(followers[0].db, table="aux") as af:
        with pytest.raises(KohakuVaultError, match=f"not the leader; leader is {leader_name}"):
            af[b"refused"] = b"x"
    stored = rows(followers[0].db)
    assert b"refused" not in stored and b"refused-large" not in stored
    con = sqlite3.connect(followers[0].db)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        if "aux" in tables:
            assert con.execute("SELECT count(*) FROM aux").fetchone()[0] == 0
    finally:
        con.close()

    # kill -9 of the leader: a survivor leads within FAILOVER_S
    leader.kill(signal.SIGKILL)
    t0 = time.monotonic()
    new = wait_leader(followers, timeout=15)
    elapsed = time.monotonic() - t0
    assert elapsed < FAILOVER_S, f"new leader after {elapsed:.2f} s"
    old_term = int(new.status()["cluster_term"])

    # the new leader takes writes, and both survivors end up equal
    second = {f"n{i:05d}".encode(): os.urandom(40) for i in range(1000)}
    with KVault(new.db, shared=True) as kv:
        for k, v in second.items():
            kv[k] = v
        kv.flush()
    want = {**first, **second}
    for n in followers:
        wait_rows(n.db, want, timeout=10)
    a, b = (key_hashes(n.db) for n in followers)
    assert a == b
    assert set(a) == set(want)

    st = new.status()
    assert int(st["cluster_term"]) >= old_term
    assert st["cluster_role"] == "leader"
    other = followers[1] if new is followers[0] else followers[0]
    assert other.status()["cluster_leader"] == st["cluster_node"]


def put_all(db, items):
    """Write items through a KVault attached to db's writer, committed."""
    with KVault(db, shared=True) as kv:
        for k, v in items.items():
            kv[k] = v
        kv.put(b"barrier", b"%d" % len(items), sync=True)


def test_restarted_nodes_catch_up(cluster):
    """A follower killed with SIGKILL and started again catches up from the
    Raft log; after all three stop (SIGTERM) and start again, a leader is
    elected, takes writes, and all three files are equal."""
    nodes = cluster
    leader = wait_leader(nodes, timeout=15)
    victim = next(n for n in nodes if n is not leader)
    a = {f"a{i:04d}".encode(): os.urandom(30) for i in range(500)}
    put_all(leader.db, a)
    wait_rows(victim.db, a, timeout=10)
    victim.kill(signal.SIGKILL)
    b = {f"b{i:04d}".encode(): os.urandom(30) for i in range(500)}
    put_all(leader.db, b)
    victim.start()
    wait_rows(victim.db, {**a, **b}, timeout=15)

    for n in nodes:
        n.kill(signal.SIGTERM)
    for n in nodes:
        assert n.proc.returncode == 0, n.logs()
        n.start()
    leader = wait_leader(nodes, timeout=15)
    c = {f"c{i:04d}".encode(): os.urandom(30) for i in range(500)}
    put_all(leader.db, c)
    want = {**a, **b, **c}
    for n in nodes:
        wait_rows(n.db, want, timeout=15)
    hashes = [key_hashes(n.db) for n in nodes]
    assert hashes[0] == hashes[1] == hashes[2]
    assert set(hashes[0]) == set(want) | {b"barrier"}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_stopped_nodes_file_refuses_writes_without_its_writer(cluster, sig):
    """A follower's writer killed (its segment left behind) or stopped
    cleanly: a process that opens its file without a writer (shared="auto"
    or embedded) reads it but cannot write it, nothing is replayed into it
    and no single-node writer starts on it, since the cluster may not have
    those writes; the restarted node catches up and the files end up equal."""
    nodes = cluster
    leader = wait_leader(nodes, timeout=15)
    follower = next(n for n in nodes if n is not leader)
    a = {f"a{i:03d}".encode(): os.urandom(20) for i in range(100)}
    put_all(leader.db, a)
    wait_rows(follower.db, a, timeout=15)
    follower.kill(sig)
    before = key_hashes(follower.db)
    for shared in ("auto", False):
        with KVault(follower.db, shared=shared) as kv:
            assert kv[b"a050"] == a[b"a050"]
            with pytest.raises(KohakuVaultError, match=f"copy of cluster node {follower.id}"):
                kv[b"local"] = b"diverges"
    # nor may a single-node writer (one a client spawns, or `serve` without
    # --cluster) serve it
    single = subprocess.run([WRITER, follower.db], capture_output=True, text=True, timeout=60)
    assert single.returncode != 0 and f"copy of cluster node {follower.id}" in single.stderr, \
        single.stderr
    assert key_hashes(follower.db) == before, "the node's file was written without its writer"
    follower.start()
    b = {f"b{i:03d}".encode(): os.urandom(20) for i in range(100)}
    put_all(leader.db, b)
    for n in nodes:
        wait_rows(n.db, {**a, **b}, timeout=15)
    wait_equal_files(nodes, timeout=15)
    assert b"local" not in rows(follower.db)


def test_stopped_leader_steps_down(cluster):
    """A leader stopped with SIGSTOP (cut off, as in a partition) is replaced;
    when it runs again it follows the new leader, refuses writes naming it,
    and gets the writes made meanwhile: all three files end up equal."""
    nodes = cluster
    old = wait_leader(nodes, timeout=15)
    others = [n for n in nodes if n is not old]
    a = {f"a{i:04d}".encode(): os.urandom(30) for i in range(300)}
    put_all(old.db, a)
    old.proc.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        new = wait_leader(others, timeout=15)
        assert time.monotonic() - t0 < FAILOVER_S
        b = {f"b{i:04d}".encode(): os.urandom(30) for i in range(300)}
        put_all(new.db, b)
    finally:
        old.proc.send_signal(signal.SIGCONT)
    want = {**a, **b}
    wait_rows(old.db, want, timeout=15)
    deadline = time.monotonic() + 10
    while old.status()["cluster_leader"] != new.status()["cluster_node"]:
        assert time.monotonic() < deadline, old.status()
        time.sleep(0.05)
    with KVault(old.db, shared=True) as kv:
        assert kv[b"b0299"] == b[b"b0299"]
        with pytest.raises(KohakuVaultError, match="not the leader; leader is "
                           + new.status()["cluster_node"]):
            kv[b"refused"] = b"x"
    for n in nodes:
        wait_rows(n.db, want, timeout=10)
    hashes = [key_hashes(n.db) for n in nodes]
    assert hashes[0] == hashes[1] == hashes[2]


def write_in_thread(write):
    """Run write() in a thread: (the started thread, a dict that gets "ok",
    the time it returned, or "error", the KohakuVaultError's text)."""
    done = {}

    def run():
        try:
            write()
            done["ok"] = time.monotonic()
        except KohakuVaultError as e:
            done["error"] = str(e)

    t = threading.Thread(target=run)
    t.start()
    return t, done


def test_sync_put_waits_for_the_cluster(cluster):
    """put(sync=True) on the leader returns only once a quorum stored the
    batch: with both followers stopped (SIGSTOP) it does not return; after
    SIGCONT it returns (or, if the leader stepped down meanwhile, fails with
    the refusal) -- never before the followers ran again."""
    nodes = cluster
    leader = wait_leader(nodes, timeout=15)
    followers = [n for n in nodes if n is not leader]
    with KVault(leader.db, shared=True) as kv:
        kv.put(b"warm", b"1", sync=True)
        for f in followers:
            f.proc.send_signal(signal.SIGSTOP)
        t, done = write_in_thread(lambda: kv.put(b"held", b"2", sync=True))
        time.sleep(0.3)
        returned_early = dict(done)
        resumed = time.monotonic()
        for f in followers:
            f.proc.send_signal(signal.SIGCONT)
        t.join(timeout=20)
        assert not t.is_alive(), "put(sync=True) still waiting 20 s after the followers resumed"
    assert not returned_early, f"put(sync=True) returned with no follower running: {done}"
    if "ok" in done:
        assert done["ok"] >= resumed
        for f in followers:
            wait_rows(f.db, {b"held": b"2"}, timeout=10)
    else:
        assert "not the leader" in done["error"]


def test_minority_leader_refuses_quorum_writes_and_rejoins(cluster):
    """A partition that leaves the leader alone (both followers stopped with
    SIGSTOP): within a few election timeouts the leader steps down, and a
    quorum write on it (put(sync=True)) fails with a clear error instead of
    waiting; once the followers run again the three nodes elect a leader by
    themselves, quorum writes succeed, and all files are equal."""
    nodes = cluster
    leader = wait_leader(nodes, timeout=15)
    followers = [n for n in nodes if n is not leader]
    before = {f"p{i:03d}".encode(): os.urandom(20) for i in range(100)}
    put_all(leader.db, before)
    for f in followers:
        f.proc.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 10
        while leader.status()["cluster_accepts_writes"] == "1":
            assert time.monotonic() < deadline, "the cut-off leader still takes writes after 10 s"
            time.sleep(0.05)
        t0 = time.monotonic()
        with KVault(leader.db, shared=True) as kv:
            with pytest.raises(KohakuVaultError, match="not the leader"):
                kv.put(b"minority", b"x", sync=True)
            assert kv[b"p050"] == before[b"p050"]   # reads go on
        assert time.monotonic() - t0 < 5
    finally:
        for f in followers:
            f.proc.send_signal(signal.SIGCONT)
    new = wait_leader(nodes, timeout=15)
    after = {f"q{i:03d}".encode(): os.urandom(20) for i in range(100)}
    put_all(new.db, after)
    want = {**before, **after}
    for n in nodes:
        wait_rows(n.db, want, timeout=15)
    assert all(b"minority" not in rows(n.db) for n in nodes)
    hashes = [key_hashes(n.db) for n in nodes]
    assert hashes[0] == hashes[1] == hashes[2]


def test_launcher_serve_cluster_and_status(tmp_path):
    """kvault-launch serve --cluster/--node-id starts a node (a one-node
    cluster leads itself); kvault-launch status prints role, term and commit
    index."""
    port, = free_ports(1)
    db = str(tmp_path / "one.sqlite")
    env = dict(os.environ, KVAULT_WRITER=WRITER)
    launch = [sys.executable, "-m", "kohakuvault.launch"]
    proc = subprocess.Popen([*launch, "serve", db, "--cluster", f"7@127.0.0.1:{port}",
                             "--node-id", "7"], env=env, stderr=subprocess.DEVNULL,
                            preexec_fn=die_with_parent)
    try:
        deadline = time.monotonic() + 20
        while True:
            st = writer_status(db, timeout=2.0)
            if st and st.get("cluster_accepts_writes") == "1":
                break
            assert proc.poll() is None, "kvault-launch serve exited"
            assert time.monotonic() < deadline, f"node did not lead: {st}"
            time.sleep(0.05)
        with KVault(db, shared=True) as kv:
            kv["a"] = b"1"
            kv.flush()
        out = subprocess.run([*launch, "status", db], env=env, capture_output=True, text=True,
                             timeout=30).stdout
        fields = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
        assert fields["role"] == "leader"
        assert fields["node"] == f"7@127.0.0.1:{port}"
        assert int(fields["term"]) >= 1
        assert int(fields["commit_index"]) >= 2  # bootstrap configuration + barrier + batch
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(db + ".raft", ignore_errors=True)


LAUNCH = [sys.executable, "-m", "kohakuvault.launch", "serve"]


@pytest.mark.parametrize("program, argv, text", [
    ("launch", ["--cluster", "1@127.0.0.1:1"], "--cluster and --node-id go together"),
    ("launch", ["--cluster", "1@127.0.0.1:1", "--node-id", "2"], "is not among the nodes"),
    ("launch", ["--cluster", "x@127.0.0.1:1", "--node-id", "1"], "expected ID@HOST:PORT"),
    ("launch", ["--cluster", "1@127.0.0.1:70000", "--node-id", "1"], "expected ID@HOST:PORT"),
    ("writer", ["--cluster", "1@127.0.0.1:1,1@127.0.0.1:2", "--node-id", "1"], "given twice"),
    ("writer", ["--cluster", "1@127.0.0.1", "--node-id", "1"], "is not ID@HOST:PORT"),
    ("writer", ["--cluster", "1@127.0.0.1:5"], "is not among the nodes"),
    ("writer", ["--node-id", "1"], "--node-id needs --cluster"),
    ("writer", ["--join"], "--join needs --cluster"),
    ("launch", ["--join"], "--join needs --cluster"),
])
def test_bad_cluster_options_are_refused(tmp_path, program, argv, text):
    """kvault-launch serve and kvault-writer refuse bad --cluster/--node-id
    values: exit status 2, a message, no database created."""
    db = str(tmp_path / "x.sqlite")
    cmd = [*LAUNCH, db, *argv] if program == "launch" else [WRITER, *argv, db]
    r = subprocess.run(cmd, env=dict(os.environ, KVAULT_WRITER=WRITER), capture_output=True,
                       text=True, timeout=30)
    assert (r.returncode, text in r.stderr, os.path.exists(db)) == (2, True, False), r.stderr


def test_writer_reports_its_address_in_use(tmp_path):
    """A node whose Raft address is taken exits 1 at start, naming the
    address, instead of serving without replication."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        addr = f"127.0.0.1:{s.getsockname()[1]}"
        db = str(tmp_path / "x.sqlite")
        r = subprocess.run([WRITER, "--cluster", f"1@{addr}", "--node-id", "1", db],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"node 1@{addr}" in r.stderr and "cannot start" in r.stderr, r.stderr
    assert not r.stdout.startswith("ready")


# ---- quorum writes while the leader is killed ----------------------------

TOTAL_KEYS = 100_000
ROUND = 1000        # keys per round; a round is acknowledged by one put(sync=True)
EXIT_DEPOSED = 75   # a writer that lost the lead holding uncommitted writes (cluster.h)


def value_of(key):
    """The value every write of key stores (48 bytes), on every retry."""
    return hashlib.sha256(key).digest()[:16] * 3


def find_leader_db(dbs, timeout=30):
    """The file of the node that takes writes now (its STATUS)."""
    deadline = time.monotonic() + timeout
    while True:
        for db in dbs:
            st = writer_status(db, timeout=0.5)
            if st and st.get("cluster_accepts_writes") == "1":
                return db
        assert time.monotonic() < deadline, "no node takes writes"
        time.sleep(0.02)


def quorum_client(dbs, cid, nclients, out, total=TOTAL_KEYS):
    """Client cid of nclients (a process of its own): writes its share of
    `total` keys in rounds of ROUND puts through the leader, each round
    acknowledged by a put(sync=True) of b"round/<cid>" (which returns once
    a quorum stored every put before it); appends each acknowledged round's
    key count to out. A round that fails (the leader died or stepped down)
    is written again, whole, through the node that leads then."""
    keys = [f"key{i:06d}".encode() for i in range(cid, total, nclients)]
    kv = None
    with open(out, "a") as log:
        for r in range(0, len(keys), ROUND):
            chunk = keys[r:r + ROUND]
            while True:
                try:
                    if kv is None:
                        kv = KVault(find_leader_db(dbs), shared=True)
                    for k in chunk:
                        kv[k] = value_of(k)
                    kv.put(b"round/%d" % cid, b"%d" % (r + len(chunk)), sync=True)
                    break
                except KohakuVaultError as e:
                    print(f"client {cid}: round {r} again: {e}", file=sys.stderr)
                    if kv is not None:
                        try:
                            kv.close()
                        except KohakuVaultError:
                            pass
                    kv = None
                    time.sleep(0.05)
            log.write(f"{r + len(chunk)}\n")
            log.flush()
    kv.close()


def start_quorum_client(dbs, cid, nclients, out, total=TOTAL_KEYS):
    """quorum_client in a process of its own."""
    here = os.path.dirname(os.path.abspath(__file__))
    return subprocess.Popen(
        [sys.executable, "-c",
         "import sys, json; sys.path.insert(0, sys.argv[1]); import test_cluster as t; "
         "t.quorum_client(json.loads(sys.argv[2]), *map(int, sys.argv[3:5]), sys.argv[5], "
         "int(sys.argv[6]))",
         here, json.dumps(dbs), str(cid), str(nclients), out, str(total)],
        env=dict(os.environ, KVAULT_WRITER=WRITER), preexec_fn=die_with_parent)


class Supervisor(threading.Thread):
    """Starts a node again when its writer exited while the test did not
    stop it (killed by the test, or deposed: exit EXIT_DEPOSED), as
    `kvault-launch serve` does."""

    def __init__(self, nodes):
        super().__init__(daemon=True)
        self.nodes = nodes
        self.halt = threading.Event()
        self.exits = []

    def run(self):
        while not self.halt.is_set():
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None and not self.halt.is_set():
                    self.exits.append((n.id, n.proc.returncode))
                    n.start()
            time.sleep(0.05)


class FollowerReader(threading.Thread):
    """A client that reads b"round/0" and b"round/1" through a follower's
    writer without pause and checks that neither value ever goes back. It
    reads one follower per connection: when its node leads or is to be
    killed (avoid), it moves to another follower, as a new client."""

    def __init__(self, nodes):
        super().__init__(daemon=True)
        self.nodes = nodes
        self.halt = threading.Event()
        self.avoid = None
        self.node = None
        self.reads = 0
        self.regressions = []

    def pick(self):
        for n in self.nodes:
            st = n.status()
            if n.db != self.avoid and st and st["cluster_role"] == "follower":
                return n
        return None

    def run(self):
        while not self.halt.is_set():
            node = self.pick()
            if node is None:
                time.sleep(0.02)
                continue
            self.node = node
            last = {}
            try:
                with KVault(node.db, shared=True) as kv:
                    while not self.halt.is_set() and node.db != self.avoid:
                        st = node.status()
                        if not st or st["cluster_role"] != "follower":
                            break
                        for c in (0, 1):
                            v = kv.get(b"round/%d" % c)
                            n = int(v) if v is not None else 0
                            if n < last.get(c, 0):
                                self.regressions.append((node.id, c, last[c], n))
                            last[c] = n
                        self.reads += 1
            except KohakuVaultError:
                pass
            self.node = None


def acked_keys(out, cid, nclients, total=TOTAL_KEYS):
    """The keys of client cid's acknowledged rounds (its log out)."""
    if not os.path.exists(out):
        return []
    with open(out) as f:
        done = max((int(line) for line in f if line.strip()), default=0)
    keys = [f"key{i:06d}".encode() for i in range(cid, total, nclients)]
    return keys[:done]


def test_quorum_writes_survive_three_leader_kills(cluster, tmp_path):
    """The acceptance test of cluster mode: 2 client processes write 100k
    keys with quorum acknowledgement while the leader is killed -9 three
    times. Each time a new leader takes writes within FAILOVER_S; at the end
    every acknowledged key is on every node with its value, the three files
    are equal (per-key hashes), and a client reading followers saw the
    acknowledged counters only grow."""
    nodes = cluster
    dbs = [n.db for n in nodes]
    sup = Supervisor(nodes)
    sup.start()
    reader = FollowerReader(nodes)
    reader.start()
    outs = [str(tmp_path / f"client{c}.log") for c in range(2)]
    clients = [start_quorum_client(dbs, c, 2, outs[c]) for c in range(2)]
    failovers = []
    try:
        def acked():
            return sum(len(acked_keys(o, c, 2)) for c, o in enumerate(outs))

        for mark in (0.2, 0.45, 0.7):
            deadline = time.monotonic() + 120
            while acked() < mark * TOTAL_KEYS:
                assert all(p.poll() is None for p in clients), "a client exited early"
                assert time.monotonic() < deadline, f"stuck at {acked()} acknowledged keys"
                time.sleep(0.05)
            leader = wait_leader(nodes, timeout=15)
            reader.avoid = leader.db
            while reader.node is leader:
                time.sleep(0.01)
            term = int(leader.status()["cluster_term"])
            leader.proc.kill()
            t0 = time.monotonic()
            # a leader of a later term (the restarted node may win it, too)
            while True:
                new = wait_leader(nodes, timeout=15)
                st = new.status()
                if st and int(st["cluster_term"]) > term:
                    break
                assert time.monotonic() - t0 < 15, "no new leader after 15 s"
                time.sleep(0.01)
            failovers.append(time.monotonic() - t0)
            reader.avoid = None
        for p in clients:
            assert p.wait(timeout=150) == 0
        reader.halt.set()
        reader.join(timeout=30)
        check_quorum_run(nodes, outs, failovers, reader, sup)
    finally:
        for p in clients:
            if p.poll() is None:
                p.kill()
        reader.halt.set()
        reader.join(timeout=30)
        # (the nodes the supervisor restarted get SIGTERM as its thread ends:
        # die_with_parent)
        sup.halt.set()
        sup.join(timeout=30)


def check_quorum_run(nodes, outs, failovers, reader, sup):
    """The end checks of test_quorum_writes_survive_three_leader_kills,
    while the nodes run."""
    assert all(t < FAILOVER_S for t in failovers), f"failovers took {failovers} s"
    want = {}
    for c, o in enumerate(outs):
        for k in acked_keys(o, c, 2):
            want[k] = value_of(k)
    assert len(want) == TOTAL_KEYS
    try:
        for n in nodes:
            wait_rows(n.db, want, timeout=60)
    except AssertionError:
        keys = ("cluster_role", "cluster_term", "cluster_commit_index", "cluster_last_applied",
                "cluster_last_index", "committed_seq", "applied_seq", "cluster_proposed",
                "cluster_applied_entries", "cluster_skipped_entries", "refused_writes",
                "cluster_refused_writes")
        for n in nodes:
            st = n.status() or {}
            print(n.id, {k: st.get(k) for k in keys}, file=sys.stderr)
        raise
    wait_equal_files(nodes, timeout=30)
    assert reader.reads > 100 and not reader.regressions, (reader.reads, reader.regressions[:5])
    print(f"failovers {[round(t, 2) for t in failovers]} s; restarts {sup.exits}; "
          f"follower reads {reader.reads}")


def test_partition_under_load_minority_refuses_and_rejoins(cluster, tmp_path):
    """A partition under write load: a client writes quorum-acknowledged
    rounds through the leader when both followers stop (SIGSTOP). The cut-off
    leader acknowledges nothing more: the client's round fails with a clear
    error (the leader steps down, and is deposed for the writes it held: its
    supervisor restarts it). Once the followers run again the three nodes
    elect a leader by themselves, the client finishes through it, and every
    acknowledged key is on every node; the files are equal."""
    nodes = cluster
    sup = Supervisor(nodes)
    sup.start()
    total = 40_000
    out = str(tmp_path / "client.log")
    client = None
    try:
        leader = wait_leader(nodes, timeout=15)
        followers = [n for n in nodes if n is not leader]
        client = start_quorum_client([n.db for n in nodes], 0, 1, out, total)
        deadline = time.monotonic() + 60
        while len(acked_keys(out, 0, 1, total)) < 5000:
            assert client.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        for f in followers:
            f.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(0.5)   # the rounds in flight when the partition began
            cut = len(acked_keys(out, 0, 1, total))
            time.sleep(2.5)   # > 2 election timeouts: the leader stepped down
            assert len(acked_keys(out, 0, 1, total)) == cut, \
                "the cut-off leader acknowledged quorum writes"
            st = leader.status()
            assert st is None or st["cluster_accepts_writes"] == "0", st
        finally:
            for f in followers:
                f.proc.send_signal(signal.SIGCONT)
        assert client.wait(timeout=120) == 0
        want = {k: value_of(k) for k in acked_keys(out, 0, 1, total)}
        assert len(want) == total
        for n in nodes:
            wait_rows(n.db, want, timeout=30)
        wait_equal_files(nodes, timeout=30)
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        sup.halt.set()
        sup.join(timeout=30)


def launch_cluster(db, action, node):
    """`kvault-launch cluster DB ACTION NODE` (a membership change through
    the leader's writer), as a completed process."""
    return subprocess.run([sys.executable, "-m", "kohakuvault.launch", "cluster", db, action,
                           node, "--timeout", "60"],
                          env=dict(os.environ, KVAULT_WRITER=WRITER), capture_output=True,
                          text=True, timeout=120)


def test_membership_add_and_remove_a_node(cluster, tmp_path):
    """A fourth node started with --join is added at run time (`kvault-launch
    cluster DB add`): it catches up from the log (keys written before it
    joined and after) and becomes a voter. Then a follower is removed
    (`cluster DB remove`) and stopped: the three voters left keep a quorum,
    so when the leader is killed a new one is elected among them and takes
    writes; the restarted old leader catches up, and the three members'
    files are equal."""
    nodes = cluster
    leader = wait_leader(nodes, timeout=15)
    a = {f"a{i:04d}".encode(): os.urandom(30) for i in range(500)}
    put_all(leader.db, a)

    port, = free_ports(1)
    addr4 = f"4@127.0.0.1:{port}"
    n4 = Node(str(tmp_path), 4, nodes[0].spec + "," + addr4, join=True)
    try:
        n4.start()
        assert n4.status()["cluster_role"] != "leader"
        r = launch_cluster(leader.db, "add", addr4)
        assert r.returncode == 0, r.stderr
        assert f"{addr4}:voter" in r.stdout, r.stdout
        wait_rows(n4.db, a, timeout=30)
        b = {f"b{i:04d}".encode(): os.urandom(30) for i in range(500)}
        put_all(leader.db, b)
        wait_rows(n4.db, {**a, **b}, timeout=30)

        # a bad request and a non-leader are refused with a reason
        r = launch_cluster(leader.db, "remove", "x")
        assert r.returncode != 0 and "expected a node ID" in r.stderr, r.stderr
        follower = next(n for n in nodes if n is not leader)
        r = launch_cluster(follower.db, "remove", "4")
        assert r.returncode != 0 and "not the leader" in r.stderr, r.stderr

        victim = follower
        r = launch_cluster(leader.db, "remove", str(victim.id))
        assert r.returncode == 0, r.stderr
        assert f"{victim.id}@" not in leader.status()["cluster_members"]
        victim.kill(signal.SIGTERM)
        members = [n for n in nodes if n is not victim] + [n4]

        leader.proc.kill()
        new = wait_leader([n for n in members if n is not leader], timeout=15)
        c = {f"c{i:04d}".encode(): os.urandom(30) for i in range(500)}
        put_all(new.db, c)
        leader.start()
        want = {**a, **b, **c}
        for n in members:
            wait_rows(n.db, want, timeout=30)
        hashes = [key_hashes(n.db) for n in members]
        assert hashes[0] == hashes[1] == hashes[2]
        assert b"c0001" not in rows(victim.db)   # removed before c was written
    finally:
        n4.kill(signal.SIGTERM)
        shutil.rmtree(n4.db + ".raft", ignore_errors=True)


def test_snapshots_catch_up_a_lagging_and_a_new_node(tmp_path):
    """With a snapshot every 16 entries the Raft log is compacted: a
    follower killed while 60 batches are written, and a fourth node added
    afterwards, cannot get those entries from the log any more; each gets the
    leader's snapshot (an image of its SQLite file), replaces its file with
    it, restarts (its supervisor) and catches up. All files end up equal."""
    ports = free_ports(4)
    spec = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(ports[:3]))
    extra = ["--snapshot-entries", "16"]
    nodes = [Node(str(tmp_path), i + 1, spec, extra=extra) for i in range(3)]
    n4 = Node(str(tmp_path), 4, spec + f",4@127.0.0.1:{ports[3]}", join=True, extra=extra)
    sup = Supervisor(nodes + [n4])
    try:
        for n in nodes:
            n.start()
        sup.start()
        leader = wait_leader(nodes, timeout=15)
        want = {}
        with KVault(leader.db, shared=True) as kv:
            for r in range(40):
                for i in range(20):
                    want[b"a%02d-%02d" % (r, i)] = os.urandom(20)
                    kv[b"a%02d-%02d" % (r, i)] = want[b"a%02d-%02d" % (r, i)]
                kv.put(b"round", b"%d" % r, sync=True)   # one batch, one entry, each
        want[b"round"] = b"39"
        assert int(leader.status()["cluster_snapshots"]) >= 1

        victim = next(n for n in nodes if n is not leader)
        sup.halt.set()   # the victim stays down while the log moves on
        sup.join()
        victim.kill(signal.SIGKILL)
        with KVault(leader.db, shared=True) as kv:
            for r in range(60):
                kv[b"b%02d" % r] = b"%d" % r
                kv.put(b"round", b"b%d" % r, sync=True)
        want.update({b"b%02d" % r: b"%d" % r for r in range(60)})
        want[b"round"] = b"b59"
        victim.start()
        sup = Supervisor(nodes + [n4])
        sup.start()
        wait_rows(victim.db, want, timeout=60)
        assert "replaced by the snapshot" in victim.logs(), victim.logs()

        n4.start()
        r = launch_cluster(leader.db, "add", f"4@127.0.0.1:{ports[3]}")
        assert r.returncode == 0, r.stderr
        wait_rows(n4.db, want, timeout=60)
        assert "replaced by the snapshot" in n4.logs(), n4.logs()
        with KVault(leader.db, shared=True) as kv:
            kv.put(b"after", b"4", sync=True)
        want[b"after"] = b"4"
        for n in nodes + [n4]:
            wait_rows(n.db, want, timeout=30)
        wait_equal_files(nodes + [n4], timeout=30)
    finally:
        sup.halt.set()
        if sup.is_alive():
            sup.join()
        for n in nodes + [n4]:
            n.kill(signal.SIGTERM)
            shutil.rmtree(n.db + ".raft", ignore_errors=True)


def test_replicated_write_mode_returns_after_the_quorum(cluster):
    """write_mode="replicated": kv[k] = v, put_many and delete return once
    the cluster committed the write (the leader commits a batch to its file
    only after a quorum stored it, so the leader's file holds it at once);
    with both followers stopped such a write does not return."""
    nodes = cluster
    leader = wait_leader(nodes, timeout=15)
    followers = [n for n in nodes if n is not leader]
    with KVault(leader.db, shared=True, write_mode="replicated") as kv:
        assert kv.write_mode == "replicated"
        kv[b"r1"] = b"one"
        assert rows(leader.db)[b"r1"] == b"one"
        kv.put_many({b"r2": b"two", b"r3": b"three"})
        assert rows(leader.db)[b"r3"] == b"three"
        kv.delete(b"r2")
        assert b"r2" not in rows(leader.db)
        for f in followers:
            f.proc.send_signal(signal.SIGSTOP)
        t, done = write_in_thread(lambda: kv.__setitem__(b"held", b"x"))
        time.sleep(0.3)
        returned_early = dict(done)
        for f in followers:
            f.proc.send_signal(signal.SIGCONT)
        t.join(timeout=30)
        assert not t.is_alive(), "a replicated put still waits 30 s after the followers resumed"
    assert not returned_early, f"a replicated put returned with no follower running: {done}"


def test_leader_refuses_what_it_cannot_replicate(cluster):
    """Table operations of the other classes and put_file streams are not
    replicated: the leader refuses them too (clearly), rather than apply
    them to its own file alone; its replicated key-value writes go on."""
    nodes = cluster
    leader = wait_leader(nodes, timeout=15)
    with KVault(leader.db, shared=True) as kv:
        with pytest.raises(KohakuVaultError, match="are not replicated"):
            kv[b"big"] = b"x" * (3 << 20)   # larger than half the ring: put_file
        kv.put(b"small", b"ok", sync=True)
    tv = TextVault(leader.db)
    try:
        with pytest.raises(KohakuVaultError, match="are not replicated"):
            tv.insert("a document", b"v")
    finally:
        tv.close()
    with KVault(leader.db, table="aux") as af:
        with pytest.raises(KohakuVaultError, match="are not replicated"):
            af[b"k"] = b"v"
    for n in nodes:
        wait_rows(n.db, {b"small": b"ok"}, timeout=10)
        assert b"big" not in rows(n.db)
