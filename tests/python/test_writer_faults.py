"""The writer against clients that misbehave or vanish: what it must survive
without leaking, hanging or losing a write (real writer processes)."""

import os
import signal
import subprocess
import sys

from test_shared_mode import ROOT, WRITER, Writer, _rows, pytestmark  # noqa: F401  (skip rule)

LAUNCH = os.path.join(ROOT, "scripts", "kvault-launch")


def _fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_status_connections_do_not_leak_descriptors(tmp_path):
    """A connection that never attaches (each `kvault-launch status`) is
    closed by the writer when the peer hangs up."""
    db = str(tmp_path / "fd.db")
    w = Writer(db)
    try:
        env = dict(os.environ, KVAULT_WRITER=WRITER)
        status = [sys.executable, LAUNCH, "status", db]
        subprocess.run(status, check=True, capture_output=True, env=env, timeout=30)
        before = _fds(w.proc.pid)
        for _ in range(30):
            out = subprocess.run(status, check=True, capture_output=True, text=True, env=env,
                                 timeout=30)
            assert "attached" in out.stdout
        # the last hang-up is seen at the writer's next socket poll (<= 1 ms
        # when idle wakes it; its idle wait is at most 100 ms)
        subprocess.run(status, check=True, capture_output=True, env=env, timeout=30)
        assert _fds(w.proc.pid) <= before + 1
    finally:
        w.kill(signal.SIGTERM)


def _ignore_sigxfsz():
    """preexec_fn: a write past RLIMIT_FSIZE fails with EFBIG (like a full
    disk) instead of killing the process with SIGXFSZ."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_sigterm_with_a_failing_final_commit_exits_and_keeps_the_writes(tmp_path):
    """SIGTERM while the disk is full: the writer retries its final commit for
    a bounded time, exits non-zero, and leaves every applied put in its segment;
    the next writer replays them."""
    from kohakuvault import KVault

    db = str(tmp_path / "full.db")
    KVault(db, shared=False).close()     # the file, made before the writer starts
    proc = subprocess.Popen([WRITER, "--commit-interval-ms", "600000", db],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ignore_sigxfsz)
    try:
        assert proc.stdout.readline().startswith("ready")
        # its shared memory is allocated: from now on no file it writes may
        # grow past 256 KiB more than the database has
        import resource

        limit = os.path.getsize(db) + (256 << 10)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
        values = {b"big%03d" % i: bytes([i % 251]) * 8192 for i in range(200)}
        child = os.fork()
        if child == 0:                     # a client that puts and is gone
            code = 1
            try:
                kv = KVault(db, shared=True)
                for k, v in values.items():
                    kv[k] = v              # applied: in the segment, not committed
                code = 0
            finally:
                os._exit(code)
        assert os.waitpid(child, 0)[1] == 0
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read()
        assert rc != 0, err
        assert "stays in segment" in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    w = Writer(db)                         # no limit: replays the segment
    try:
        w.kill(signal.SIGTERM)
        assert w.proc.returncode == 0
    finally:
        w.kill()
    rows = _rows(db)
    for k, v in values.items():
        assert rows.get(k) == v, k


# ---- hand-made control messages (workers/clients.c, shm/include/kvshm/proto.h)

import socket  # noqa: E402
import struct  # noqa: E402

MSG = struct.Struct("<IIiIQ")   # struct kvshm_msg: magic, type, status, len, arg
MAGIC, PUT_FILE, STATUS, REPLY = 0x4B565031, 2, 6, 0x100


def _socket_name(db):
    with open(os.path.realpath(db) + "-kvault") as f:
        reg = dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line)
    return "\0" + reg["socket"]


def _control_socket(db=None, name=None):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(10)
    s.connect(name or _socket_name(db))
    return s


def test_put_file_of_a_pipe_is_refused_and_the_writer_keeps_serving(tmp_path):
    """A client that hands the writer a pipe that never delivers must not
    stall the writer's loop (every other client with it)."""
    from kohakuvault import KVault

    db = str(tmp_path / "pipe.db")
    w = Writer(db)
    r, wr = os.pipe()
    try:
        s = _control_socket(db)
        key = b"from-a-pipe"
        msg = MSG.pack(MAGIC, PUT_FILE, 0, 8 + len(key), 1 << 20) + struct.pack("<Q", 65536) + key
        s.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", r))])
        reply = s.recv(65536)            # times out (10 s) if the loop is stuck on the pipe
        _magic, typ, status, length, _arg = MSG.unpack_from(reply)
        assert typ == PUT_FILE | REPLY and status != 0
        assert b"regular file" in reply[MSG.size:MSG.size + length]
        s.close()
        kv = KVault(db, shared=True)
        kv["after"] = b"served"
        assert kv["after"] == b"served"
        assert "from-a-pipe" not in kv
        kv.close()
    finally:
        os.close(r)
        os.close(wr)
        w.kill(signal.SIGTERM)


def test_malformed_control_packets_are_refused_and_the_writer_keeps_serving(tmp_path):
    """Every malformed request packet (short, bad magic, wrong length, unknown
    type, wrong payload size for its type) gets a "bad request: <reason>"
    reply on the same connection, and the writer keeps serving: nothing it
    was sent is applied."""
    from kohakuvault import KVault

    db = str(tmp_path / "packets.db")
    w = Writer(db)
    bad = {
        b"\x01\x02": "shorter than the message header",
        MSG.pack(0xDEADBEEF, STATUS, 0, 0, 0): "bad magic",
        MSG.pack(MAGIC, STATUS, 0, 5, 0): "payload length",
        MSG.pack(MAGIC, 99, 0, 0, 0): "unknown request type",
        MSG.pack(MAGIC, STATUS, 0, 3, 0) + b"abc": "unexpected payload",
        MSG.pack(MAGIC, 1, 0, 4, 0) + b"\0" * 4: "attach: bad request size",
        MSG.pack(MAGIC, PUT_FILE, 0, 8, 0) + b"\0" * 8: "put_file: key missing",
        MSG.pack(MAGIC, 3, 0, 0, 0): "feature: bad name length",
    }
    try:
        s = _control_socket(db)
        for packet, reason in bad.items():
            s.send(packet)
            reply = s.recv(65536)
            _magic, _typ, status, length, _arg = MSG.unpack_from(reply)
            text = reply[MSG.size:MSG.size + length].decode()
            assert status != 0 and text.startswith("bad request: ") and reason in text, (packet, text)
        s.send(MSG.pack(MAGIC, STATUS, 0, 0, 0))   # the same connection still works
        _magic, typ, status, _len, _arg = MSG.unpack_from(s.recv(65536))
        assert typ == STATUS | REPLY and status == 0
        s.close()
        with KVault(db, shared=True) as kv:
            kv["after"] = b"served"
            assert kv["after"] == b"served"
            assert len(kv) == 1
    finally:
        w.kill(signal.SIGTERM)


def test_peer_of_another_user_is_refused(tmp_path):
    """The control socket is abstract (no file mode protects it): the writer
    checks SO_PEERCRED and closes connections of other users."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    db = str(tmp_path / "cred.db")
    w = Writer(db)
    try:
        s = _control_socket(db)          # root: answered
        s.send(MSG.pack(MAGIC, STATUS, 0, 0, 0))
        assert MSG.unpack_from(s.recv(65536))[1] == STATUS | REPLY
        s.close()
        name = _socket_name(db)          # the registry is 0600: read it as root
        child = os.fork()
        if child == 0:
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)         # nobody
                s = _control_socket(name=name)
                try:
                    s.send(MSG.pack(MAGIC, STATUS, 0, 0, 0))
                    code = 0 if s.recv(65536) == b"" else 2
                except OSError:
                    code = 0             # reset by the writer: refused too
            finally:
                os._exit(code)
        assert os.waitpid(child, 0)[1] == 0
    finally:
        w.kill(signal.SIGTERM)


def _put_values(db, n, q):
    from kohakuvault import KVault

    kv = KVault(db, shared=True)
    for i in range(n):
        kv[b"p%05d" % i] = b"v%05d" % i + bytes(8186)
    kv.close()
    q.put(n)


def test_a_cache_full_of_reads_leaves_room_for_writes(tmp_path):
    """Reads fill (and fragment) a small segment before the first write: the
    next memtable's block is kept aside, so writes still apply, the writer
    stops cleanly and logs no flood."""
    import multiprocessing as mp

    from kohakuvault import KVault

    db = str(tmp_path / "small.db")
    kv = KVault(db, shared=False)          # the file, filled before the writer starts
    for i in range(5000):
        kv[b"k%05d" % i] = b"v" + bytes([i % 251]) * 4095
    kv.close()
    proc = subprocess.Popen([WRITER, "--memtable-size", "1M", "--cache-size", "12M", db],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("ready")
        kv = KVault(db, shared=True)
        for i in range(5000):
            assert kv[b"k%05d" % i][1] == i % 251
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_put_values, args=(db, 3000, q))
        p.start()
        p.join(120)
        alive = p.is_alive()
        if alive:
            p.kill()
            p.join()
        assert not alive, "puts stalled"
        assert q.get(timeout=5) == 3000
        assert kv[b"p02999"][:6] == b"v02999"
        kv.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert len(proc.stderr.read().splitlines()) < 50
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(_rows(db)) == 8000


def test_a_writer_that_cannot_commit_fails_waiting_puts_then_recovers(tmp_path):
    """The disk fills while serving: puts that need room in a full memtable
    get a KohakuVaultError naming the cause, as an embedded put on a full
    disk does (they used to block silently); applied
    puts stay safe; once space returns the writer commits and puts go on."""
    import resource

    from kohakuvault import KVault
    from kohakuvault.errors import KohakuVaultError

    db = str(tmp_path / "fills.db")
    KVault(db, shared=False).close()     # the file, made before the writer starts
    proc = subprocess.Popen([WRITER, "--memtable-size", "1M", db], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_ignore_sigxfsz)
    try:
        assert proc.stdout.readline().startswith("ready")
        limit = os.path.getsize(db) + (512 << 10)   # the soft limit: raised again below
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        kv = KVault(db, shared=True)
        done, err = 0, None
        for i in range(5000):                 # 40 MB: far past the limit
            try:
                kv[b"f%05d" % i] = b"v" + bytes([i % 251]) * 8191
                done += 1
            except KohakuVaultError as e:
                err = e
                break
        assert err is not None and "cannot commit" in str(err), err
        assert done > 0
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        kv[b"after"] = b"space is back"       # waits for a commit, then applies
        for i in range(done):
            assert kv[b"f%05d" % i][1] == i % 251
        kv.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows = _rows(db)
    assert rows[b"after"] == b"space is back"
    assert all(rows[b"f%05d" % i][1] == i % 251 for i in range(done + 1))


def test_start_removes_shared_memory_of_dead_writers(tmp_path):
    """Writers killed before they served leave segments no registry names;
    the next writer of the database removes them (and only those)."""
    db = str(tmp_path / "sweep.db")
    w = Writer(db)
    name = None
    try:
        with open(os.path.realpath(db) + "-kvault") as f:
            reg = dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line)
        prefix = reg["segment"].rsplit("-", 2)[0].lstrip("/")
        # a dead writer's leftovers: generation 99 of a pid that no longer runs
        dead = subprocess.Popen(["true"])
        dead.wait()
        name = f"{prefix}-99-{dead.pid}"
        for suffix in ("", "-slots"):
            with open(f"/dev/shm/{name}{suffix}", "wb") as f:
                f.write(b"x" * 4096)
        other = f"/dev/shm/kvault-{'0' * 16}-1-{dead.pid}"   # another database's
        with open(other, "wb") as f:
            f.write(b"y")
        w.kill(signal.SIGKILL)
        w.start()                               # replays, then sweeps
        assert not os.path.exists(f"/dev/shm/{name}")
        assert not os.path.exists(f"/dev/shm/{name}-slots")
        assert os.path.exists(other)
        os.unlink(other)
    finally:
        w.kill(signal.SIGTERM)
