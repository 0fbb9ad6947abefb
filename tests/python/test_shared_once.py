"""Exactly-once writes through the writer (docs/shared-mode.md, "Exactly
once"): a write the writer committed and then could not answer, because it
was killed (SIGKILL) between its commit and its reply, is applied once and
returns what the writer applied, never a second time on the object's own
connection.

The writer runs with a small LD_PRELOAD library (built here with the C
compiler) whose ``send`` and ``sendmmsg`` raise SIGKILL in the writer itself just before
its N-th reply to a table operation (EXEC): the operation is committed and
the reply never leaves. Real writer, real files, real sockets.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from kohakuvault import ColumnVault, KVault, TextVault, VectorKVault
from kohakuvault.errors import KohakuVaultError

from test_shared_mode import WRITER, Writer, die_with_parent

pytestmark = pytest.mark.skipif(WRITER is None, reason="kvault-writer is not built")

_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* the N-th EXEC reply (KVAULT_TEST_KILL_AT_EXEC_REPLY=N) kills the process */
static long left = -1;

/* 1 when the message starting with buf[0..n) is the N-th EXEC reply */
static int fatal(const void *buf, size_t n)
{
    if (left < 0) {
        const char *e = getenv("KVAULT_TEST_KILL_AT_EXEC_REPLY");
        left = e ? atol(e) : 0;
    }
    uint32_t hdr[2];
    if (n < sizeof hdr) return 0;
    memcpy(hdr, buf, sizeof hdr);
    return hdr[0] == 0x4b565031u && hdr[1] == (7u | 0x100u) && left > 0 && --left == 0;
}

ssize_t send(int fd, const void *buf, size_t n, int flags)
{
    static ssize_t (*real)(int, const void *, size_t, int);
    if (!real) real = (ssize_t (*)(int, const void *, size_t, int))dlsym(RTLD_NEXT, "send");
    if (fatal(buf, n)) raise(SIGKILL);
    return real(fd, buf, n, flags);
}

/* the writer sends a pass's replies to one client in one sendmmsg: the
 * ones before the N-th go, then the process dies */
int sendmmsg(int fd, struct mmsghdr *v, unsigned int vlen, int flags)
{
    static int (*real)(int, struct mmsghdr *, unsigned int, int);
    if (!real) real = (int (*)(int, struct mmsghdr *, unsigned int, int))dlsym(RTLD_NEXT, "sendmmsg");
    for (unsigned int i = 0; i < vlen; i++) {
        const struct iovec *iov = v[i].msg_hdr.msg_iov;
        if (v[i].msg_hdr.msg_iovlen && fatal(iov[0].iov_base, iov[0].iov_len)) {
            if (i) real(fd, v, i, flags);
            raise(SIGKILL);
        }
    }
    return real(fd, v, vlen, flags);
}
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    d = tmp_path_factory.mktemp("shim")
    src, lib = d / "killreply.c", d / "killreply.so"
    src.write_text(_SHIM)
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(src), "-ldl"],
                   check=True, capture_output=True)
    return str(lib)


class KillingWriter:
    """A kvault-writer that kills itself (SIGKILL) just before its n-th
    EXEC reply, after that operation's commit."""

    def __init__(self, db, shim, n):
        env = dict(os.environ, LD_PRELOAD=shim, KVAULT_TEST_KILL_AT_EXEC_REPLY=str(n))
        self.proc = subprocess.Popen([WRITER, db], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env,
                                     preexec_fn=die_with_parent)
        line = self.proc.stdout.readline()
        assert line.startswith("ready"), f"writer failed: {line!r}"

    def wait_killed(self):
        assert self.proc.wait(timeout=60) == -signal.SIGKILL

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)


def _status(db):
    """The writer's STATUS lines as a dict of ints (numeric ones)."""
    with KVault(db) as kv:
        lines = kv._native.status().splitlines()
    return {k: int(v) for k, v in (l.split("=", 1) for l in lines) if v.isdigit()}


def _records(db):
    con = sqlite3.connect(db)
    try:
        return con.execute(
            "SELECT count(*) FROM kohakuvault_meta WHERE key LIKE 'exec:%'").fetchone()[0]
    finally:
        con.close()


def test_text_insert_committed_by_a_killed_writer_lands_once(tmp_path, shim):
    """The 3rd insert is committed, then its writer dies before replying:
    the call returns that insert's id, read from its record, and the
    document is there once; the next insert runs embedded."""
    db = str(tmp_path / "text.db")
    tv = TextVault(db)
    w = KillingWriter(db, shim, 3)
    try:
        assert [tv.insert(f"doc {i}", i) for i in range(2)] == [1, 2]
        assert tv.insert("the killed writer's", 2) == 3
        w.wait_killed()
        assert len(tv) == 3
        assert [tv.get_by_id(i) for i in (1, 2, 3)] == [("doc 0", 0), ("doc 1", 1),
                                                       ("the killed writer's", 2)]
        assert len(tv.search("killed")) == 1
        assert tv.insert("embedded", 3) == 4
        assert len(tv) == 4
    finally:
        w.kill()
        tv.close()


_CHILD = """
import sys
from kohakuvault import TextVault
tv = TextVault(sys.argv[1])
print("sending", flush=True)
print(tv.insert("two", 2), flush=True)
tv.close()
"""


def test_text_insert_resent_to_the_next_writer_lands_once(tmp_path, shim):
    """The writer dies after committing an insert and a new writer is ready
    before the object notices (the object's process is stopped meanwhile):
    the object sends the insert again, to the new writer, which answers
    from the record instead of applying it."""
    db = str(tmp_path / "resend.db")
    tv = TextVault(db)
    w = KillingWriter(db, shim, 2)
    child = None
    try:
        assert tv.insert("one", 1) == 1   # EXEC reply 1
        os.kill(w.proc.pid, signal.SIGSTOP)
        child = subprocess.Popen([sys.executable, "-c", _CHILD, db], stdout=subprocess.PIPE,
                                 text=True, preexec_fn=die_with_parent)
        assert child.stdout.readline().strip() == "sending"
        time.sleep(0.5)   # its request waits in the stopped writer's socket
        os.kill(child.pid, signal.SIGSTOP)
        os.kill(w.proc.pid, signal.SIGCONT)
        w.wait_killed()   # committed the insert, died before reply 2
        w2 = Writer(db)
        try:
            os.kill(child.pid, signal.SIGCONT)
            assert child.stdout.readline().strip() == "2"
            assert child.wait(timeout=60) == 0
            assert len(tv) == 2
            assert tv.insert("three", 3) == 3
            assert _status(db)["exec_replayed"] == 1
        finally:
            w2.kill(signal.SIGTERM)
        assert [tv.get_by_id(i)[1] for i in (1, 2, 3)] == [1, 2, 3]
    finally:
        if child and child.poll() is None:
            child.kill()
        w.kill()
        tv.close()


def test_vector_insert_many_committed_by_a_killed_writer_lands_once(tmp_path, shim):
    """insert_many's ids come back from the record of the killed writer's
    commit (a run of ids, stored in 16 bytes), every vector once."""
    db = str(tmp_path / "vec.db")
    vk = VectorKVault(db, dimensions=4)
    w = KillingWriter(db, shim, 2)
    try:
        assert vk.insert(np.ones(4, np.float32), b"first") == 1
        rows = np.arange(400, dtype=np.float32).reshape(100, 4) + 1
        ids = vk.insert_many(rows, [b"v%d" % i for i in range(100)])
        w.wait_killed()
        assert list(ids) == list(range(2, 102))
        assert vk.count() == 101
        assert vk.get_by_id(101)[1] == b"v99"
    finally:
        w.kill()
        vk.close()


def test_column_extend_committed_by_a_killed_writer_lands_once(tmp_path, shim):
    """A ColumnVault extend the killed writer committed is there once."""
    db = str(tmp_path / "col.db")
    cv = ColumnVault(db)
    col = cv.create_column("x", "i64")
    w = KillingWriter(db, shim, 1)
    try:
        col.extend(list(range(1000)))
        w.wait_killed()
        assert len(col) == 1000
        col.extend([7])
        assert len(col) == 1001
        assert list(col[998:1001]) == [998, 999, 7]
    finally:
        w.kill()


def test_records_go_when_the_objects_close(tmp_path):
    """One record per object that wrote through the writer, replaced by each
    write, deleted when the object closes."""
    db = str(tmp_path / "gc.db")
    w = Writer(db)
    try:
        tv, tv2 = TextVault(db), TextVault(db)
        for i in range(20):
            tv.insert(f"a {i}", i)
            tv2.insert(f"b {i}", i)
        assert _records(db) == 2
        tv.close()
        deadline = time.monotonic() + 10
        while _records(db) != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _records(db) == 1
        tv2.close()
        while _records(db) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _records(db) == 0
    finally:
        w.kill(signal.SIGTERM)


def test_bulk_column_extends_through_the_writer(tmp_path):
    """Extends of 16 MB and more (the bulk path: its writeback helper runs
    until the COMMIT of the writer's transaction, which also holds the
    record) land whole and once."""
    db = str(tmp_path / "bulk.db")
    cv = ColumnVault(db)
    col = cv.create_column("x", "i64")
    w = Writer(db)
    try:
        data = np.arange(2_500_000, dtype=np.int64)   # 20 MB
        col.extend(data)
        col.extend(data[:10])
        assert _status(db)["execs"] >= 2
    finally:
        w.kill(signal.SIGTERM)
    assert len(col) == 2_500_010
    got = col.to_numpy()
    assert np.array_equal(got[:2_500_000], data) and list(got[-10:]) == list(range(10))


@pytest.mark.parametrize("restart", [False, True], ids=["own-connection", "next-writer"])
def test_pipelined_failure_whose_reply_died_with_its_writer_is_raised(tmp_path, shim, restart):
    """A pipelined vector insert fails at the writer (its id was taken by a
    program that ignores the leases) in the same group as later inserts
    that commit; the writer dies before the failure's reply leaves. The
    record of the group names the failed insert, so the object's next call
    raises that failure (from its own connection, or from the next writer
    answering the re-sent insert) instead of taking it for applied."""
    db = str(tmp_path / "fail.db")
    vk = VectorKVault(db, dimensions=4)
    # EXEC replies: 1 id 1 (the first insert), 2 LEASE(1), 3 id 2, 4
    # LEASE(2), 5-6 ids 3-4, 7 LEASE(4), 8-11 ids 5-8, 12 LEASE(8), 13 id 9,
    # 14.. ids 10..: the writer dies before reply 16, id 12's
    w = KillingWriter(db, shim, 16)
    w2 = None
    try:
        ids = [vk.insert([i, 1, 0, 0], i) for i in range(9)]
        assert ids == list(range(1, 10))
        os.kill(w.proc.pid, signal.SIGSTOP)
        con = sqlite3.connect(db, timeout=30)
        with con:   # a program that ignores the leases takes id 12
            ref = con.execute("INSERT INTO vec_kvault_values(value) VALUES (x'00')").lastrowid
            con.execute("INSERT INTO vec_kvault(id, value_ref, vector) VALUES (12, ?, ?)",
                        (ref, np.zeros(4, np.float32).tobytes()))
        con.close()
        ids += [vk.insert([i, 1, 0, 0], i) for i in range(9, 16)]   # ids 10..16, one group
        assert ids == list(range(1, 17))
        os.kill(w.proc.pid, signal.SIGCONT)
        w.wait_killed()
        if restart:
            w2 = Writer(db)
        with pytest.raises(KohakuVaultError, match="vector id 12 is already stored"):
            len(vk)
        assert len(vk) == 16   # every other insert stored once, and the outsider
        got = {i: vk.get_by_id(i)[1] for i in ids if i != 12}
        assert got == {i: v for v, i in enumerate(ids) if i != 12}
    finally:
        if w2:
            w2.kill(signal.SIGTERM)
        w.kill()
        vk.close()
