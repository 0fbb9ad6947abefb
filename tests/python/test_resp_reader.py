"""kvault-reader end to end with real processes and sockets (docs/resp.md):
redis-cli, redis-py, values shared with KVault, pipelining, limits, AUTH,
both event loops, a differential test against a private redis-server, and
the launcher restarting a reader killed under load.

Every test starts its own kvault-writer and readers on a temp database and
stops them in ``finally``; sockets live in a short temp directory (unix
socket paths are limited to 107 bytes).
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from kohakuvault import KVault
from kohakuvault._writer import writer_binary

from conftest import die_with_parent

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH = os.path.join(ROOT, "scripts", "kvault-launch")
WRITER = writer_binary(ROOT)
READER = os.path.join(os.path.dirname(WRITER), "kvault-reader") if WRITER else None
pytestmark = pytest.mark.skipif(not READER or not os.path.exists(READER),
                                reason="kvault-writer / kvault-reader are not built")
IO_MODES = ["epoll", "uring"]


def _uring_ok():
    r = subprocess.run([READER, "--io", "uring", "--help"], capture_output=True)
    return r.returncode == 0


# ---- processes -------------------------------------------------------------

class Proc:
    """A child process that prints one ``ready`` line once serving."""

    def __init__(self, cmd, **kw):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, preexec_fn=die_with_parent, **kw)
        self.ready = self.proc.stdout.readline()
        if not self.ready.startswith("ready"):
            self.proc.kill()
            raise AssertionError(f"{cmd[0]} failed: {self.ready!r} {self.proc.stderr.read()}")

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stop_clean(self):
        """Stop; assert a clean exit (status 0), showing stderr if not."""
        rc = self.stop()
        assert rc == 0, f"exit {rc}: {self.proc.stderr.read()[-4000:]}"


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="kvr", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Served:
    def __init__(self, db, sock, writer, reader):
        self.db, self.sock, self.writer, self.reader = db, sock, writer, reader


def _serve(tmp_path, sockdir, *reader_args, io="auto"):
    db = str(tmp_path / "r.db")
    w = Proc([WRITER, db])
    sock = os.path.join(sockdir, "r.sock")
    try:
        r = Proc([READER, "--unix", sock, "--io", io, *reader_args, db])
    except Exception:
        w.stop()
        raise
    return Served(db, sock, w, r)


@pytest.fixture(params=IO_MODES)
def served(request, tmp_path, sockdir):
    if request.param == "uring" and not _uring_ok():
        pytest.skip("io_uring multishot is not available")
    s = _serve(tmp_path, sockdir, io=request.param)
    try:
        yield s
    finally:
        s.reader.stop_clean()
        s.writer.stop()


# ---- a raw RESP client: bytes in, the raw bytes of each reply out -----------

def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Raw:
    def __init__(self, path=None, port=None):
        if path:
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.s.connect(path)
        else:
            self.s = socket.create_connection(("127.0.0.1", port))
        self.s.settimeout(30)
        self.buf = b""

    def close(self):
        self.s.close()

    def _fill(self):
        d = self.s.recv(1 << 16)
        if not d:
            raise EOFError
        self.buf += d

    def _line(self, pos):
        while True:
            i = self.buf.find(b"\r\n", pos)
            if i >= 0:
                return i
            self._fill()

    def _reply_end(self, pos):
        """End offset of the reply starting at pos (reading more as needed)."""
        e = self._line(pos)
        kind, body = self.buf[pos:pos + 1], self.buf[pos + 1:e]
        if kind in b"+-:":
            return e + 2
        n = int(body)
        if kind == b"$":
            if n < 0:
                return e + 2
            while len(self.buf) < e + 2 + n + 2:
                self._fill()
            return e + 2 + n + 2
        assert kind == b"*", self.buf[pos:pos + 80]
        p = e + 2
        for _ in range(max(n, 0)):
            while len(self.buf) <= p:
                self._fill()
            p = self._reply_end(p)
        return p

    def reply(self):
        while not self.buf:
            self._fill()
        end = self._reply_end(0)
        r, self.buf = self.buf[:end], self.buf[end:]
        return r

    def call(self, *args):
        self.s.sendall(encode(*args))
        return self.reply()

    def closed(self):
        """True once the server closed the connection (after the replies)."""
        try:
            while True:
                d = self.s.recv(1 << 16)
                if not d:
                    return True
                self.buf += d
        except (ConnectionResetError, socket.timeout):
            return False


def parse(raw):
    """A reply's value: bytes, int, list, None; errors as ('err', text)."""
    def go(p):
        e = raw.index(b"\r\n", p)
        kind, body = raw[p:p + 1], raw[p + 1:e]
        if kind == b"+":
            return body, e + 2
        if kind == b"-":
            return ("err", body), e + 2
        if kind == b":":
            return int(body), e + 2
        n = int(body)
        if kind == b"$":
            return (None, e + 2) if n < 0 else (raw[e + 2:e + 2 + n], e + 4 + n)
        out, p = [], e + 2
        for _ in range(n):
            v, p = go(p)
            out.append(v)
        return out, p
    return go(0)[0]


# ---- redis-cli ---------------------------------------------------------------

def cli(s, *args, extra=()):
    r = subprocess.run(["redis-cli", "-s", s.sock, *extra, *args], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.skipif(not shutil.which("redis-cli"), reason="redis-cli (redis-tools) missing")
def test_redis_cli_set_get_scan_info(served):
    assert cli(served, "SET", "a", "1").strip() == "OK"
    assert cli(served, "GET", "a").strip() == "1"
    cli(served, "SET", "ab", "2")
    cli(served, "SET", "b", "3")
    assert sorted(cli(served, "SCAN", "0", "MATCH", "a*").split("\n")[1:3]) == ["a", "ab"]
    info = cli(served, "INFO")
    assert "redis_version:" in info and "db0:keys=3" in info and "vault_generation:" in info
    assert "# Vault" in info
    assert cli(served, "GET", "missing").strip() == ""
    assert "unknown command 'FLUSHALL'" in cli(served, "FLUSHALL")


# ---- redis-py ------------------------------------------------------------------

redis = pytest.importorskip("redis")


def test_redis_py_get_set_mget_pipeline_scan_iter(served):
    r = redis.Redis(unix_socket_path=served.sock)
    assert r.ping()
    assert r.set("k1", b"v1") is True
    assert r.get("k1") == b"v1"
    assert r.get("nope") is None
    assert r.mset({"k2": b"v2", "k3": b"\x00\r\nbinary"})
    assert r.mget("k1", "k2", "k3", "nope") == [b"v1", b"v2", b"\x00\r\nbinary", None]
    p = r.pipeline(transaction=False)
    for i in range(100):
        p.set(f"p{i}", i)
    p.get("p7")
    p.delete("p0", "p1", "absent")
    p.exists("p2", "p2", "p0")
    res = p.execute()
    assert res[:100] == [True] * 100 and res[100] == b"7" and res[101] == 2 and res[102] == 2
    assert sorted(r.scan_iter(match="p*", count=7)) == sorted(f"p{i}".encode()
                                                                for i in range(2, 100))
    assert sorted(r.scan_iter(match="k?")) == [b"k1", b"k2", b"k3"]
    assert r.dbsize() == 101
    assert r.echo("hi") == b"hi"
    info = r.info()
    assert info["db0"]["keys"] == 101 and "vault_applied_seq" in info
    r.client_setname("me")
    assert r.client_getname() == "me"
    assert r.delete("k1") == 1 and r.get("k1") is None
    with pytest.raises(redis.ResponseError, match="not supported"):
        r.set("x", 1, ex=10)
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        redis.Redis(unix_socket_path=served.sock, db=1).ping()
    r.close()


def test_values_shared_with_kvault(served):
    r = redis.Redis(unix_socket_path=served.sock)
    with KVault(served.db) as kv:
        assert kv.shared
        kv["from_py"] = b"raw bytes \x00\xff"
        kv.put("packed", {"a": 1})       # auto-packed: RESP returns the stored bytes
        r.set("from_resp", b"\x01\x02")
        assert r.get("from_py") == b"raw bytes \x00\xff"
        packed = r.get("packed")
        assert packed and packed != b'{"a": 1}'
        assert kv["from_resp"] == b"\x01\x02"
        r.set("packed_copy", packed)      # the stored bytes round-trip to the same value
        assert kv["packed_copy"] == {"a": 1}
    r.close()


# ---- protocol ------------------------------------------------------------------

def test_pipeline_of_mixed_commands_is_answered_in_order(served):
    c = Raw(served.sock)
    n = 2000
    batch = b"".join(encode("SET", f"k{i}", f"v{i}") + encode("GET", f"k{i}") for i in range(n))
    c.s.sendall(batch + b"PING\r\n")
    for i in range(n):
        assert c.reply() == b"+OK\r\n"
        assert c.reply() == b"$%d\r\nv%d\r\n" % (len(str(i)) + 1, i)
    assert c.reply() == b"+PONG\r\n"
    c.close()


def test_pipelined_sets_are_acknowledged_in_order_once_visible_everywhere(served):
    """Pipelined SET k_i / GET k_i batches on several connections at once
    (each batch spans several receive rounds): every connection gets its
    replies in request order with the new values, and a GET on another
    connection to a second reader process, sent only after a +OK arrived,
    sees that SET's value."""
    n, writers = 1500, 4
    sock2 = os.path.join(os.path.dirname(served.sock), "r2.sock")
    other = Proc([READER, "--unix", sock2, served.db])
    setup = Raw(served.sock)
    for w in range(writers):
        setup.s.sendall(b"".join(encode("SET", f"w{w}:{i}", "old") for i in range(n)))
        assert all(setup.reply() == b"+OK\r\n" for _ in range(n))
    # the writer stopped: no +OK, and the other reader still sees the old value
    c, watcher = Raw(served.sock), Raw(sock2)
    os.kill(served.writer.proc.pid, signal.SIGSTOP)
    try:
        c.s.sendall(encode("SET", "w0:0", "held"))
        c.s.settimeout(0.5)
        with pytest.raises(socket.timeout):
            c.reply()
        assert parse(watcher.call("GET", "w0:0")) == b"old"
    finally:
        os.kill(served.writer.proc.pid, signal.SIGCONT)
    c.s.settimeout(30)
    assert c.reply() == b"+OK\r\n"
    assert parse(watcher.call("GET", "w0:0")) == b"held"
    assert parse(c.call("GET", "w0:0")) == b"held"
    c.close()
    watcher.close()
    errors = []

    def writer(w):
        try:
            c, watcher = Raw(served.sock), Raw(sock2)
            vals = [f"new{w}.{i}".encode() for i in range(n)]
            c.s.sendall(b"".join(encode("SET", f"w{w}:{i}", vals[i]) + encode("GET", f"w{w}:{i}")
                                 for i in range(n)))
            for i in range(n):
                r = c.reply()
                if r != b"+OK\r\n":
                    errors.append(f"SET reply {i}: {r!r}")
                    return
                seen = parse(watcher.call("GET", f"w{w}:{i}"))   # after its +OK arrived
                if seen != vals[i]:
                    errors.append(f"GET w{w}:{i} on another connection after +OK: {seen!r}")
                    return
                r = parse(c.reply())
                if r != vals[i]:
                    errors.append(f"pipelined GET w{w}:{i}: {r!r}")
                    return
            c.close()
            watcher.close()
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(repr(e))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    other.stop_clean()
    assert not errors, errors[:5]
    # a client that sends its SETs and closes its side still gets every +OK
    c = Raw(served.sock)
    c.s.sendall(b"".join(encode("SET", f"eof{i}", i) for i in range(n)))
    c.s.shutdown(socket.SHUT_WR)
    assert all(c.reply() == b"+OK\r\n" for _ in range(n))
    assert c.closed()
    c.close()
    assert Raw(served.sock).call("GET", f"eof{n - 1}") == b"$%d\r\n%d\r\n" % (len(str(n - 1)), n - 1)


def test_requests_split_at_every_byte(served):
    c = Raw(served.sock)
    req = encode("SET", "split", "a\r\nb") + encode("GET", "split") + b"ECHO  x\r\n"
    for i in range(len(req)):
        c.s.sendall(req[i:i + 1])
        time.sleep(0.0005)
    assert [c.reply() for _ in range(3)] == [b"+OK\r\n", b"$4\r\na\r\nb\r\n", b"$1\r\nx\r\n"]
    c.close()


@pytest.mark.parametrize("bad, err", [
    (b"*1\r\n$99999999\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*99999999\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*2\r\n$3\r\nGET\r\n:1\r\n", b"-ERR Protocol error: expected '$', got ':'\r\n"),
    (b"*x\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*1\r\n$-5\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"A" * 70000, b"-ERR Protocol error: too big inline request\r\n"),
    (b'GET "a\r\n', b"-ERR Protocol error: unbalanced quotes in request\r\n"),
])
def test_malformed_or_oversized_request_closes_only_that_client(tmp_path, sockdir, bad, err):
    s = _serve(tmp_path, sockdir, "--max-bulk", "1M", "--max-args", "1000")
    try:
        other = Raw(s.sock)
        assert other.call("SET", "keep", "1") == b"+OK\r\n"
        c = Raw(s.sock)
        assert c.call("PING") == b"+PONG\r\n"
        c.s.sendall(bad)
        assert c.reply() == err
        assert c.closed()
        assert other.call("GET", "keep") == b"$1\r\n1\r\n"   # everyone else still served
        other.close()
    finally:
        s.reader.stop_clean()
        s.writer.stop()


def test_hello_select_auth_and_errors(tmp_path, sockdir):
    pw = tmp_path / "pass"
    pw.write_text("s3cret\n")
    s = _serve(tmp_path, sockdir, "--requirepass-file", str(pw))
    try:
        c = Raw(s.sock)
        assert c.call("GET", "a") == b"-NOAUTH Authentication required.\r\n"
        assert c.call("AUTH", "wrong").startswith(b"-WRONGPASS")
        assert c.call("HELLO", "2", "AUTH", "default", "wrong").startswith(b"-WRONGPASS")
        assert c.call("AUTH", "someone", "s3cret").startswith(b"-WRONGPASS")
        assert c.call("HELLO", "3") == b"-NOPROTO unsupported protocol version\r\n"
        assert c.call("AUTH", "default", "s3cret") == b"+OK\r\n"
        hello = parse(c.call("HELLO", "2", "AUTH", "default", "s3cret", "SETNAME", "cli"))
        assert hello[hello.index(b"proto") + 1] == 2
        assert parse(c.call("CLIENT", "GETNAME")) == b"cli"
        assert c.call("SELECT", "0") == b"+OK\r\n"
        assert c.call("SELECT", "1") == b"-ERR DB index is out of range\r\n"
        assert c.call("SET", "k", "v", "NX").startswith(b"-ERR SET option 'NX' is not supported")
        assert c.call("GET") == b"-ERR wrong number of arguments for 'get' command\r\n"
        assert c.call("NOPE", "x", "y") == (b"-ERR unknown command 'NOPE', with args beginning "
                                            b"with: 'x' 'y' \r\n")
        assert parse(c.call("COMMAND", "COUNT")) >= 15
        assert parse(c.call("CLIENT", "SETNAME", "")) == b"OK"
        assert parse(c.call("CLIENT", "GETNAME")) is None
        assert c.call("QUIT") == b"+OK\r\n" and c.closed()
        r = redis.Redis(unix_socket_path=s.sock, password="s3cret")
        assert r.set("a", "1") and r.get("a") == b"1"
        r.close()
    finally:
        s.reader.stop_clean()
        s.writer.stop()


def test_unix_socket_is_private(served):
    assert os.stat(served.sock).st_mode & 0o777 == 0o600


# ---- differential test against redis-server --------------------------------------

KEYS = [f"k{i}" for i in range(12)] + ["a", "ab", "abc", "b", "ba"]
PATTERNS = ["*", "k*", "a*", "k1?", "[ab]*", "k[0-4]", "*b*", "b", "zz*"]


def _random_commands(seed, n):
    rnd = random.Random(seed)

    def val():
        return bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 40)))

    cmds = []
    for _ in range(n):
        op = rnd.random()
        k = rnd.choice(KEYS)
        if op < 0.22:
            cmds.append(("SET", k, val()))
        elif op < 0.44:
            cmds.append(("GET", k))
        elif op < 0.52:
            cmds.append(("DEL", *rnd.sample(KEYS, rnd.randrange(1, 4))))
        elif op < 0.60:
            cmds.append(("EXISTS", *[rnd.choice(KEYS) for _ in range(rnd.randrange(1, 4))]))
        elif op < 0.68:
            cmds.append(("MGET", *rnd.sample(KEYS, rnd.randrange(1, 5))))
        elif op < 0.74:
            pairs = []
            for kk in rnd.sample(KEYS, rnd.randrange(1, 4)):
                pairs += [kk, val()]
            cmds.append(("MSET", *pairs))
        elif op < 0.77:
            cmds.append(("DBSIZE",))
        elif op < 0.80:
            cmds.append(("PING",) if rnd.random() < 0.5 else ("PING", val()))
        elif op < 0.84:
            cmds.append(("ECHO", val()))
        elif op < 0.88:
            cmds.append(("SCAN", "0", "MATCH", rnd.choice(PATTERNS), "COUNT",
                         str(rnd.randrange(1, 8))))
        else:   # errors: unknown commands and wrong arities
            cmds.append(rnd.choice([
                ("FOO",), ("FOO", k, val()), ("GET",), ("GET", k, k), ("SET", k),
                ("MSET", k), ("MSET", k, "1", k), ("ECHO",), ("PING", "a", "b"),
                ("DEL",), ("EXISTS",), ("MGET",), ("DBSIZE", k), ("NOSUCHCMD", k, "x"),
                ("get",), ("sEt", k, val()),
            ]))
    return cmds


def _scan_all(c, pattern, count):
    keys, cur = set(), b"0"
    while True:
        cur, batch = parse(c.call("SCAN", cur, "MATCH", pattern, "COUNT", count))
        keys.update(batch)
        if cur == b"0":
            return keys


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server missing")
def test_differential_against_redis_server(tmp_path, sockdir):
    """10,000 seeded random commands to redis-server and to kvault-reader;
    every reply compared byte for byte, except SCAN: cursors differ by
    design, so the set of keys of a full iteration is compared instead."""
    rsock = os.path.join(sockdir, "redis.sock")
    rs = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", rsock,
                           "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                          stdout=subprocess.DEVNULL, preexec_fn=die_with_parent)
    s = _serve(tmp_path, sockdir)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(rsock):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        ref, kv = Raw(rsock), Raw(s.sock)
        cmds = _random_commands(20261207, 10_000)
        i = 0
        while i < len(cmds):
            if cmds[i][0] == "SCAN":
                _, _, _, pat, _, cnt = cmds[i]
                assert _scan_all(kv, pat, cnt) == _scan_all(ref, pat, cnt), cmds[i]
                i += 1
                continue
            j = i
            while j < len(cmds) and j - i < 50 and cmds[j][0] != "SCAN":
                j += 1
            batch = b"".join(encode(*c) for c in cmds[i:j])   # pipelined, as one send
            ref.s.sendall(batch)
            kv.s.sendall(batch)
            for c in cmds[i:j]:
                a, b = ref.reply(), kv.reply()
                assert b == a, (c, a, b)
            i = j
        ref.close()
        kv.close()
    finally:
        rs.terminate()
        rs.wait(timeout=30)
        s.reader.stop_clean()
        s.writer.stop()


# ---- launcher --------------------------------------------------------------------

def _reader_pids(db):
    """{reader index: (pid, alive)} from `kvault-launch status`."""
    r = subprocess.run([sys.executable, LAUNCH, "status", db], capture_output=True, text=True)
    lines = r.stdout.splitlines()
    if not any(line.startswith("reader ") for line in lines):
        return {}
    rows = lines[[i for i, line in enumerate(lines) if line.startswith("reader ")][0] + 1:]
    return {int(f[0]): (int(f[1]), f[2]) for f in (line.split() for line in rows)}


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(x) for x in f.read().split()}


def test_launcher_restarts_a_killed_reader_under_load(tmp_path, sockdir):
    db = str(tmp_path / "l.db")
    sock = os.path.join(sockdir, "l.sock")
    p = subprocess.Popen([sys.executable, LAUNCH, "serve", db, "--readers", "2", "--unix", sock],
                         stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
    stop = threading.Event()
    done = {"ops": 0, "reconnects": 0, "errors": []}

    def load(n):
        r = redis.Redis(unix_socket_path=sock, socket_timeout=10)
        i = 0
        while not stop.is_set():
            try:
                r.set(f"t{n}:{i}", i)
                assert r.get(f"t{n}:{i}") == str(i).encode()
                i += 1
                done["ops"] += 1
            except (redis.ConnectionError, redis.TimeoutError):
                done["reconnects"] += 1      # the reader was killed: reconnect, go on
                time.sleep(0.01)
            except Exception as e:        # noqa: BLE001 -- reported by the test
                done["errors"].append(repr(e))
                return

    err = ""
    try:
        deadline = time.monotonic() + 30
        pids = {}
        while len(pids) < 2 or any(alive != "yes" for _, alive in pids.values()):
            assert time.monotonic() < deadline, "readers did not come up"
            time.sleep(0.1)
            pids = _reader_pids(db)
        threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        before = done["ops"]
        victim = pids[0][0]
        old = _children(p.pid)
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        while not (_children(p.pid) - old):
            assert time.monotonic() - t0 < 5, "reader not restarted"
            time.sleep(0.01)
        restarted_after = time.monotonic() - t0
        assert restarted_after <= 1.0, restarted_after
        time.sleep(1.5)
        now = _reader_pids(db)
        assert now[0][0] != victim and now[0][1] == "yes" and now[1] == pids[1]
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not done["errors"], done["errors"]
        assert done["ops"] > before + 10        # clients went on after the kill
    finally:
        stop.set()
        p.send_signal(signal.SIGTERM)
        try:
            _, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
    assert p.returncode == 0
    assert "reader 0 (pid %d) exited (-9); restarting" % victim in err
    with KVault(db) as kv:                    # the writer is gone: acknowledged SETs are there
        assert kv["t0:0"] == b"0"
