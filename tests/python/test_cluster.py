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

    def __init__(self, root, node_id, spec):
        self.id = node_id
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
                 "--commit-interval-ms", "10", "--cache-size", "64M", "--shards", "2", self.db],
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
        done = {}

        def put():
            try:
                kv.put(b"held", b"2", sync=True)
                done["ok"] = time.monotonic()
            except KohakuVaultError as e:
                done["error"] = str(e)

        t = threading.Thread(target=put)
        t.start()
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
