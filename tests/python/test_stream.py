"""Streaming (docs/api.md §4.6): put_file / get_to_file with real files, BytesIO,
pipes and other non-seekable streams, error cases, and a 1 GiB round trip
with bounded memory (run in a subprocess so its peak RSS is its own)."""

import contextlib
import hashlib
import io
import os
import textwrap
import threading

import pytest

from kohakuvault import InvalidArgument, KohakuVaultError, KVault, NotFound


def make_file(path, size):
    data = os.urandom(size)
    with open(path, "wb") as f:
        f.write(data)
    return data


def test_real_file_round_trip(kv, db_path, tmp_path, raw_row):
    src = tmp_path / "src.bin"
    data = make_file(src, 5 * 1024 * 1024 + 123)
    with open(src, "rb") as f:
        assert kv.put_file("file", f) is None
    assert raw_row(db_path, "file") == data          # raw, no header
    out = tmp_path / "out.bin"
    with open(out, "wb") as f:
        n = kv.get_to_file("file", f)
    assert n == len(data)
    assert out.read_bytes() == data
    assert kv["file"] == data


def test_small_chunk_sizes(kv, tmp_path):
    src = tmp_path / "src.bin"
    data = make_file(src, 100_003)
    with open(src, "rb") as f:
        kv.put_file("k", f, chunk_size=4096)
    buf = io.BytesIO()
    assert kv.get_to_file("k", buf, chunk_size=1000) == len(data)
    assert buf.getvalue() == data


def test_reader_position_and_size(kv, tmp_path):
    src = tmp_path / "src.bin"
    data = make_file(src, 10_000)
    with open(src, "rb") as f:
        f.seek(1000)
        kv.put_file("rest", f)                         # from the current position
    assert kv["rest"] == data[1000:]
    with open(src, "rb") as f:
        kv.put_file("head", f, size=777)
        assert f.read(3) == data[777:780]              # stream advanced by size
    assert kv["head"] == data[:777]


def test_bytesio_both_ways(kv):
    data = os.urandom(300_000)
    kv.put_file("b", io.BytesIO(data))
    out = io.BytesIO()
    assert kv.get_to_file("b", out) == len(data)
    assert out.getvalue() == data


def test_get_to_file_appends_at_writer_position(kv, tmp_path):
    kv.put_file("x", io.BytesIO(b"payload"))
    p = tmp_path / "w.bin"
    with open(p, "wb") as f:
        f.write(b"HEAD:")
        kv.get_to_file("x", f)
        f.write(b":TAIL")
    assert p.read_bytes() == b"HEAD:payload:TAIL"


@contextlib.contextmanager
def _fed_pipe(data, **open_kw):
    """The read end of a pipe (``os.fdopen(r, "rb", **open_kw)``) that a
    thread fills with ``data`` and then closes; joined on exit."""
    r, w = os.pipe()

    def feed():
        with os.fdopen(w, "wb") as f:
            f.write(data)

    t = threading.Thread(target=feed)
    t.start()
    try:
        with os.fdopen(r, "rb", **open_kw) as f:
            yield f
    finally:
        t.join()


def test_pipe_reader_unknown_size(kv):
    data = os.urandom(3 * 1024 * 1024)
    with _fed_pipe(data) as f:
        kv.put_file("pipe", f)
    assert kv["pipe"] == data


def test_pipe_reader_with_size(kv):
    data = os.urandom(2 * 1024 * 1024 + 5)
    with _fed_pipe(data, buffering=0) as f:
        kv.put_file("pipe", f, size=len(data), chunk_size=65536)
    assert kv["pipe"] == data


def test_pipe_writer(kv):
    data = os.urandom(3 * 1024 * 1024 + 17)
    kv.put_file("k", io.BytesIO(data))
    r, w = os.pipe()
    got = []

    def drain():
        with os.fdopen(r, "rb") as f:
            got.append(f.read())

    t = threading.Thread(target=drain)
    t.start()
    with os.fdopen(w, "wb") as f:
        n = kv.get_to_file("k", f, chunk_size=65536)
    t.join()
    assert n == len(data)
    assert got[0] == data


class ReadOnly:
    """A non-seekable reader with only read(): no fileno, no seek."""

    def __init__(self, data, piece=1000):
        self._b = io.BytesIO(data)
        self._piece = piece

    def read(self, n=-1):
        if n is None or n < 0:
            return self._b.read()
        return self._b.read(min(n, self._piece))


class WriteOnly:
    def __init__(self):
        self.parts = []

    def write(self, b):
        self.parts.append(bytes(b))
        return len(b)


def test_non_seekable_python_objects(kv):
    data = os.urandom(200_000)
    kv.put_file("k", ReadOnly(data))
    w = WriteOnly()
    assert kv.get_to_file("k", w, chunk_size=50_000) == len(data)
    assert b"".join(w.parts) == data
    assert max(len(p) for p in w.parts) <= 50_000


def test_short_reads_with_known_size(kv):
    data = os.urandom(100_000)
    kv.put_file("k", ReadOnly(data, piece=333), size=len(data), chunk_size=8192)
    assert kv["k"] == data


def test_short_write_error_keeps_zero_tail(kv, db_path, raw_row):
    kv["other"] = "untouched"
    with pytest.raises(KohakuVaultError, match=r"short write: wrote 100 of 1000 bytes"):
        kv.put_file("k", io.BytesIO(b"a" * 100), size=1000)
    stored = raw_row(db_path, "k")
    assert stored == b"a" * 100 + b"\x00" * 900
    assert kv["other"] == "untouched"


def test_bytes_like_readers_stored_raw(kv, db_path, raw_row):
    kv.put_file("b", b"bytes reader")
    kv.put_file("ba", bytearray(b"bytearray reader"))
    kv.put_file("mv", memoryview(b"memoryview reader"))
    assert raw_row(db_path, "b") == b"bytes reader"
    assert raw_row(db_path, "ba") == b"bytearray reader"
    assert raw_row(db_path, "mv") == b"memoryview reader"


def test_put_file_bypasses_cache(kv, db_path, raw_row):
    kv.enable_cache(cap_bytes=1 << 24, flush_threshold=1 << 23)
    kv.put_file("f", io.BytesIO(b"streamed"))
    assert raw_row(db_path, "f") == b"streamed"      # already in SQLite
    kv["c"] = b"cached"
    w = WriteOnly()
    assert kv.get_to_file("c", w) == 6                # from the cache, one write
    assert w.parts == [b"cached"]


def test_get_to_file_writes_header_bytes(kv, db_path, raw_row):
    kv["d"] = {"a": 1}
    buf = io.BytesIO()
    n = kv.get_to_file("d", buf)
    assert buf.getvalue() == raw_row(db_path, "d")
    assert n == len(buf.getvalue()) and buf.getvalue()[:2] == b"\x89\x4b"


def test_bad_reader_and_writer(kv):
    kv["k"] = b"keep"
    with pytest.raises(InvalidArgument, match="reader must be file-like or bytes-like"):
        kv.put_file("k", 12345)
    with pytest.raises(InvalidArgument, match="reader must be file-like or bytes-like"):
        kv.put_file("k", "a str is not a reader")
    with pytest.raises(InvalidArgument):
        kv.get_to_file("k", object())
    with pytest.raises(InvalidArgument):
        kv.put_file("k", io.BytesIO(b"x"), chunk_size=0)
    with pytest.raises(InvalidArgument):
        kv.put_file("k", io.BytesIO(b"x"), size=-1)
    assert kv["k"] == b"keep"


def test_reader_returning_wrong_type(kv):
    kv["k"] = b"keep"

    class StrReader:
        def read(self, n=-1):
            return "text"

    class NoneReader:
        def read(self, n=-1):
            return None

    for reader in (StrReader(), NoneReader()):
        with pytest.raises(KohakuVaultError):
            kv.put_file("k2", reader, size=10)
    assert kv["k"] == b"keep"


def test_reader_raising_oserror(kv):
    class Failing:
        def read(self, n=-1):
            raise OSError(5, "device gone")

    with pytest.raises(KohakuVaultError):
        kv.put_file("k", Failing(), size=100)


def test_get_to_file_missing_key(kv):
    with pytest.raises(NotFound) as ei:
        kv.get_to_file("missing", io.BytesIO())
    assert ei.value.key == b"missing"
    with pytest.raises(NotFound) as ei:
        kv.get_to_file(b"gone", io.BytesIO())
    assert ei.value.key == b"gone"


def test_empty_file(kv, tmp_path):
    p = tmp_path / "empty"
    p.write_bytes(b"")
    with open(p, "rb") as f:
        kv.put_file("e", f)
    assert kv["e"] == b""
    buf = io.BytesIO()
    assert kv.get_to_file("e", buf) == 0


GIB_SCRIPT = textwrap.dedent(
    r"""
    import hashlib, os, re, resource, sys
    from kohakuvault import InvalidArgument, KVault

    tmp = sys.argv[1]
    size = 1 << 30
    src, out, db = (os.path.join(tmp, n) for n in ("src.bin", "out.bin", "big.db"))

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    with KVault(db) as kv:
        kv["warm"] = b"x"
        kv["other"] = {"keep": True}
        base = peak_mib()

        # Fast-generated, non-repeating content: a 1 MiB random block, with
        # each block's index in its first 8 bytes.
        block = bytearray(os.urandom(1 << 20))
        with open(src, "wb") as f:
            for i in range(size >> 20):
                block[:8] = i.to_bytes(8, "little")
                f.write(block)
        del block

        n_store = size
        with open(src, "rb") as f:
            try:
                kv.put_file("big", f)
            except InvalidArgument as exc:
                # Debian's libsqlite3 is built with SQLITE_MAX_LENGTH=1e9, so
                # one BLOB cannot hold 1 GiB: the refusal must be clean, then
                # the largest value the library accepts is streamed instead.
                m = re.search(r"blob limit of (\d+) bytes", str(exc))
                assert m, f"unexpected error: {exc}"
                assert "big" not in kv and kv["other"] == {"keep": True}
                n_store = int(m.group(1)) - 64 * 1024
                print(f"1 GiB refused cleanly: {exc}; streaming {n_store} bytes instead")
                f.seek(0)
                kv.put_file("big", f, size=n_store)
        after_put = peak_mib()
        with open(out, "wb") as f:
            n = kv.get_to_file("big", f)
        after_get = peak_mib()
        assert kv["other"] == {"keep": True}

    def sha(path, limit):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            left = limit
            while left and (chunk := f.read(min(1 << 20, left))):
                h.update(chunk)
                left -= len(chunk)
        return h.digest()

    assert n == n_store, (n, n_store)
    assert os.path.getsize(out) == n_store
    equal = sha(out, n_store) == sha(src, n_store)
    growth = after_get - base
    print(f"round trip of {n_store} bytes: sha256 equal={equal}; peak RSS base={base:.1f} MiB, "
          f"after put={after_put:.1f} MiB, after get={after_get:.1f} MiB, growth={growth:.1f} MiB")
    assert equal, "content differs"
    assert growth < 64, f"peak RSS grew by {growth:.1f} MiB"
    """
)


def test_one_gib_round_trip_bounded_rss(tmp_path, run_script):
    proc = run_script(GIB_SCRIPT, str(tmp_path))
    assert "sha256 equal=True" in proc.stdout


def test_writer_accepting_fewer_bytes_is_an_io_error(kv):
    from kohakuvault import IoError

    kv.put_file("k", io.BytesIO(b"x" * 5000))

    class Short:
        def write(self, b):
            return len(b) // 2

    with pytest.raises(IoError, match="short write"):
        kv.get_to_file("k", Short())
    assert kv["k"] == b"x" * 5000
