"""KVault: constructor, every method of docs/api.md §4, closed behaviour, bad
inputs. Real SQLite files; layout checks use the stdlib sqlite3 module."""

import collections.abc
import os
import pathlib
import sqlite3
import threading
import time

import pytest

import kohakuvault
from kohakuvault import (
    DatabaseBusy,
    InvalidArgument,
    KohakuVaultError,
    KVault,
    NotFound,
)

CLOSED = "Cannot operate on closed KVault"


def pragma(path, name):
    con = sqlite3.connect(path)
    try:
        return con.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        con.close()


def meta_features(path):
    con = sqlite3.connect(path)
    try:
        row = con.execute("SELECT value FROM kohakuvault_meta WHERE key='kv_features'").fetchone()
    finally:
        con.close()
    if row is None:
        return None
    v = row[0]
    return v.decode() if isinstance(v, bytes) else v


# ---------------------------------------------------------------- package

def test_package_exports():
    assert kohakuvault.__version__ == "0.1.0"
    order = [
        "KVault", "VectorKVault", "TextVault", "Column", "ColumnVault", "VarSizeColumn",
        "DataPacker", "CSBTree", "SkipList", "MsgPack", "Json", "Cbor", "Pickle",
        "KohakuVaultError", "NotFound", "DatabaseBusy", "InvalidArgument", "IoError",
        "_CSBTREE_AVAILABLE", "_DATAPACKER_AVAILABLE",
    ]
    present = [n for n in order if n in kohakuvault.__all__]
    assert kohakuvault.__all__ == present  # exact docs/api.md order
    for n in kohakuvault.__all__:
        assert getattr(kohakuvault, n) is not None
    for n in ("KVault", "MsgPack", "Json", "Cbor", "Pickle", "KohakuVaultError",
              "NotFound", "DatabaseBusy", "InvalidArgument", "IoError"):
        assert n in kohakuvault.__all__
    from kohakuvault.proxy import KVault as K2
    assert K2 is KVault
    assert os.path.exists(os.path.join(os.path.dirname(kohakuvault.__file__), "py.typed"))


# ------------------------------------------------------------ constructor

def test_schema_layout(kv, db_path):
    con = sqlite3.connect(db_path)
    sql = dict(con.execute("SELECT name, sql FROM sqlite_master WHERE type='table'").fetchall())
    con.close()
    assert "kv" in sql and "kohakuvault_meta" in sql
    norm = " ".join(sql["kv"].split()).lower()
    assert "key blob primary key not null" in norm
    assert "value blob not null" in norm
    assert "without rowid" not in norm
    assert meta_features(db_path) is None  # opening writes no features


@pytest.mark.parametrize("kind", ["str", "pathlib", "pathlike"])
def test_path_kinds(tmp_path, kind):
    target = tmp_path / f"{kind}.db"

    class P:
        def __fspath__(self):
            return str(target)

    path = {"str": str(target), "pathlib": target, "pathlike": P()}[kind]
    with KVault(path) as kv:
        kv["a"] = b"1"
        assert kv._path == str(target)
    assert target.exists()
    with KVault(str(target)) as kv:
        assert kv["a"] == b"1"


def test_bad_path_type_is_invalid_argument():
    with pytest.raises(InvalidArgument):
        KVault(12345)
    with pytest.raises(InvalidArgument):
        KVault(None)


def test_memory_database():
    with KVault(":memory:") as kv:
        kv["x"] = {"a": 1}
        assert kv["x"] == {"a": 1}
        assert len(kv) == 1
    with KVault(":memory:") as kv:  # a fresh one
        assert len(kv) == 0


def test_file_uri(tmp_path):
    p = tmp_path / "uri.db"
    with KVault(f"file:{p}") as kv:
        kv["k"] = b"v"
    assert p.exists()
    with KVault(str(p)) as kv:
        assert kv["k"] == b"v"


def test_parent_directories_created(tmp_path):
    p = tmp_path / "a" / "b" / "c" / "x.db"
    with KVault(p) as kv:
        kv["k"] = 1
    assert p.exists()


def test_tables_share_one_file(db_path):
    with KVault(db_path, table="first") as a, KVault(db_path, table="second") as b:
        a["k"] = "from a"
        b["k"] = "from b"
        assert a["k"] == "from a" and b["k"] == "from b"
        assert len(a) == 1 and len(b) == 1
    con = sqlite3.connect(db_path)
    names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    con.close()
    assert {"first", "second", "kohakuvault_meta"} <= names
    assert "kv" not in names


@pytest.mark.parametrize("name", ["bad name", "kv; DROP TABLE x", "1abc", "", "a-b", 'x"y', "t(1)"])
def test_bad_table_name(db_path, name):
    with pytest.raises(InvalidArgument, match="Invalid table name"):
        KVault(db_path, table=name)


def test_page_size_only_on_new_file(db_path):
    with KVault(db_path, page_size=4096) as kv:
        kv["a"] = b"x"
    assert pragma(db_path, "page_size") == 4096
    with KVault(db_path, page_size=65536) as kv:
        kv["b"] = b"y"
        assert kv["a"] == b"x"
    assert pragma(db_path, "page_size") == 4096


def test_default_page_size(kv, db_path):
    kv["a"] = b"x"
    assert pragma(db_path, "page_size") == 32768


def test_wal_switch(tmp_path):
    a = str(tmp_path / "wal.db")
    b = str(tmp_path / "nowal.db")
    with KVault(a) as kv:
        kv["k"] = b"v"
    with KVault(b, enable_wal=False) as kv:
        kv["k"] = b"v"
        assert not os.path.exists(b + "-wal")
    assert pragma(a, "journal_mode") == "wal"
    assert pragma(b, "journal_mode") == "delete"


def _db_file_mapped(path):
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        return any(line.rstrip().endswith(" " + real) for line in f)


def test_mmap_size(tmp_path):
    p0 = str(tmp_path / "nommap.db")
    p1 = str(tmp_path / "mmap.db")
    with KVault(p0, mmap_size=0) as kv:
        kv["k"] = b"v" * 1000
        assert kv["k"] == b"v" * 1000
        assert not _db_file_mapped(p0)
    with KVault(p1) as kv:
        kv["k"] = b"v" * 1000
    with KVault(p1) as kv:  # reopened: pages now live in the main file
        assert kv["k"] == b"v" * 1000
        assert _db_file_mapped(p1)  # default 256 MiB mmap maps the db file


def test_cache_kb_and_chunk_size_accepted(db_path):
    with KVault(db_path, cache_kb=2000, chunk_size=4096) as kv:
        kv["k"] = b"z" * 10000
        sizes = []

        class W:
            def write(self, b):
                sizes.append(len(b))
                return len(b)

        assert kv.get_to_file("k", W()) == 10000
        assert sum(sizes) == 10000 and max(sizes) <= 4096  # default chunk used
    with pytest.raises(InvalidArgument):
        KVault(db_path, chunk_size=0)


def test_retries_zero_is_treated_as_one(db_path):
    with KVault(db_path, retries=0, backoff_base=0.0) as kv:
        kv["a"] = 1
        assert kv["a"] == 1
        assert kv._retries == 1


def _hold_write_lock(path, seconds, ready):
    con = sqlite3.connect(path, timeout=30, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT OR REPLACE INTO kv(key, value) VALUES (?, ?)", (b"holder", b"1"))
    ready.set()
    time.sleep(seconds)
    con.execute("COMMIT")
    con.close()


def _lock_held_for(path, seconds, hold=_hold_write_lock):
    """Starts a thread holding ``path``'s write lock for ``seconds`` (through
    ``hold``) and returns it once the lock is taken (join it to wait for the
    release)."""
    ready = threading.Event()
    t = threading.Thread(target=hold, args=(path, seconds, ready))
    t.start()
    ready.wait()
    return t


def test_busy_without_retries_raises_database_busy(db_path):
    with KVault(db_path, retries=1) as kv:
        kv["x"] = b"old"
        t = _lock_held_for(db_path, 7.0)
        start = time.monotonic()
        with pytest.raises(DatabaseBusy):
            kv["x"] = b"new"
        assert time.monotonic() - start >= 4.5  # the 5 s busy timeout ran first
        t.join()
        assert kv["x"] == b"old"
        kv["x"] = b"new"  # lock gone: works
        assert kv["x"] == b"new"


def test_busy_is_retried_with_backoff(db_path):
    with KVault(db_path, retries=3, backoff_base=0.5) as kv:
        kv["x"] = b"old"
        t = _lock_held_for(db_path, 6.0)
        start = time.monotonic()
        kv["x"] = b"new"  # attempt 1 busy after 5 s, attempt 2 after the lock is gone
        elapsed = time.monotonic() - start
        t.join()
        assert elapsed >= 5.0
        assert kv["x"] == b"new"
        assert kv["holder"] == b"1"


def _hold_lock_on_new_file(path, seconds, ready):
    # a WAL file without the kv table, its write lock held: KVault's open
    # has to create the table and meets SQLite's busy state
    con = sqlite3.connect(path, timeout=30, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("BEGIN IMMEDIATE")
    con.execute("CREATE TABLE other(x)")
    ready.set()
    time.sleep(seconds)
    con.execute("COMMIT")
    con.close()


def test_busy_open_is_retried(db_path):
    # The open's busy error goes through the same retry loop as any call.
    t = _lock_held_for(db_path, 6.0, _hold_lock_on_new_file)
    start = time.monotonic()
    with KVault(db_path, retries=3, backoff_base=0.5) as kv:
        elapsed = time.monotonic() - start
        t.join()
        assert elapsed >= 5.0  # attempt 1 busy after 5 s, attempt 2 after the release
        kv["x"] = b"v"
        assert kv["x"] == b"v"


def test_busy_open_without_retries_raises_database_busy(db_path):
    t = _lock_held_for(db_path, 7.0, _hold_lock_on_new_file)
    try:
        with pytest.raises(DatabaseBusy):
            KVault(db_path, retries=1)
    finally:
        t.join()
    with KVault(db_path, retries=1) as kv:  # lock gone: opens
        assert len(kv) == 0


# --------------------------------------------------------- dict protocol

def test_mapping_protocol(kv):
    assert isinstance(kv, collections.abc.Mapping)
    kv["a"] = 1
    kv[b"b"] = "two"
    assert kv == {b"a": 1, b"b": "two"}
    assert kv != {b"a": 1}
    with pytest.raises(TypeError):
        hash(kv)


def test_getitem_setitem_str_and_bytes_keys(kv):
    kv["k"] = b"v1"
    assert kv[b"k"] == b"v1"
    kv[b"k"] = b"v2"  # upsert
    assert kv["k"] == b"v2"
    assert len(kv) == 1
    kv["ключ"] = 5
    assert kv["ключ".encode()] == 5
    kv[b"\x00\xff"] = b"binary key"
    assert kv[b"\x00\xff"] == b"binary key"


def test_missing_key_is_keyerror_with_key_as_passed(kv):
    with pytest.raises(KeyError) as ei:
        kv["nope"]
    assert ei.value.args[0] == "nope"
    with pytest.raises(KeyError) as ei:
        kv[b"nope"]
    assert ei.value.args[0] == b"nope"


def test_text_key_row_is_a_different_key(kv, db_path):
    con = sqlite3.connect(db_path)
    with con:
        con.execute("INSERT INTO kv(key, value) VALUES ('t', X'01')")
    con.close()
    assert kv.get("t") is None
    kv["t"] = b"blob key"
    assert kv["t"] == b"blob key"
    assert len(kv) == 2


@pytest.mark.parametrize("bad", [1, 1.5, None, ("a",), ["a"], bytearray(b"a")])
def test_bad_key_types(kv, bad):
    kv["keep"] = b"v"
    with pytest.raises(InvalidArgument):
        kv[bad]
    with pytest.raises(InvalidArgument):
        kv[bad] = b"x"
    with pytest.raises(InvalidArgument):
        kv.put(bad, b"x")
    with pytest.raises(InvalidArgument):
        kv.get(bad)
    with pytest.raises(InvalidArgument):
        kv.delete(bad)
    with pytest.raises(InvalidArgument):
        kv.exists(bad)
    assert (bad in kv) is False
    assert kv["keep"] == b"v" and len(kv) == 1


def test_get_default(kv):
    assert kv.get("missing") is None
    assert kv.get("missing", 5) == 5
    sentinel = object()
    assert kv.get("missing", sentinel) is sentinel
    kv["p"] = [1]
    assert kv.get("p", 5) == [1]


def test_put_returns_none(kv):
    assert kv.put("a", {"x": 1}) is None
    assert kv["a"] == {"x": 1}


def test_delete_and_delitem(kv):
    kv["a"] = 1
    assert kv.delete("a") is True
    assert kv.delete("a") is False
    assert "a" not in kv
    kv["b"] = 2
    del kv["b"]
    with pytest.raises(KeyError) as ei:
        del kv["b"]
    assert ei.value.args[0] == "b"


def test_contains_and_exists(kv):
    kv["a"] = b""
    assert "a" in kv and b"a" in kv
    assert kv.exists("a") is True
    assert kv.exists("b") is False
    assert "b" not in kv
    assert 123 not in kv  # any exception -> False


def test_len(kv):
    assert len(kv) == 0
    for i in range(25):
        kv[f"k{i}"] = i
    assert len(kv) == 25


# ----------------------------------------------------------------- keys

def test_keys_order_prefix_limit(kv):
    names = [b"b", b"a", b"ab", b"a\x00", b"a\xff", b"a\xfe", b"\xff\x01", b"c", b"abc"]
    for n in names:
        kv[n] = b"1"
    assert list(kv.keys()) == sorted(names)
    assert all(type(k) is bytes for k in kv.keys())
    # prefix <= k < prefix + 0xff: "a\xff" is not listed (quirk)
    assert list(kv.keys(prefix=b"a")) == [b"a", b"a\x00", b"ab", b"abc", b"a\xfe"]
    assert list(kv.keys(prefix="ab")) == [b"ab", b"abc"]
    assert list(kv.keys(prefix=b"zz")) == []
    # prefix b"" skips keys starting with 0xff (quirk); None lists all
    assert b"\xff\x01" not in list(kv.keys(prefix=b""))
    assert b"\xff\x01" in list(kv.keys())
    assert list(kv.keys(limit=3)) == sorted(names)[:3]
    assert list(kv.keys(prefix=b"a", limit=2)) == [b"a", b"a\x00"]
    assert list(kv.keys(limit=0)) == []


def test_keys_default_limit_10000_and_iter_all(kv):
    kv.update((f"k{i:06d}", b"") for i in range(10050))
    assert len(kv) == 10050
    ks = list(kv.keys())
    assert len(ks) == 10000
    assert ks == sorted(ks)
    assert len(list(kv.keys(limit=20000))) == 10050
    # __iter__ lists every key (no 10000 cap, docs/api.md §4.5)
    every = list(kv)
    assert len(every) == 10050 and every[-1] == b"k010049"


def test_keys_is_lazy_generator(kv):
    kv["a"] = 1
    g = kv.keys(prefix=123)  # no error yet
    with pytest.raises(InvalidArgument):
        next(g)
    g = kv.keys()
    kv.close()
    with pytest.raises(ValueError, match=CLOSED):
        next(g)


def test_values_items_iter(kv):
    data = {b"x": 1, b"a": "s", b"m": [1, 2], b"b": b"raw"}
    for k, v in data.items():
        kv[k] = v
    order = sorted(data)
    assert list(kv) == order
    assert list(kv.values()) == [data[k] for k in order]
    assert list(kv.items()) == [(k, data[k]) for k in order]
    assert dict(kv) == data


# ------------------------------------------------- pop/setdefault/update

def test_pop(kv):
    kv["a"] = {"v": 1}
    assert kv.pop("a") == {"v": 1}
    assert "a" not in kv
    assert kv.pop("a") is None
    assert kv.pop("a", "dflt") == "dflt"  # may-fix: the default is returned


def test_setdefault(kv, db_path, raw_row):
    assert kv.setdefault("a", b"first") == b"first"
    assert kv.setdefault("a", b"second") == b"first"
    assert kv.setdefault("n", 5) == 5  # may-fix: the default itself
    assert kv["n"] == 5
    assert kv.setdefault("d", {"x": [1]}) == {"x": [1]}
    assert kv["d"] == {"x": [1]}
    assert raw_row(db_path, "a") == b"first"


def test_update_forms(kv):
    kv.update({"a": 1, b"b": 2})
    kv.update([("c", 3), (b"d", 4)])
    kv.update((("e", 5),), f=6, g="seven")
    kv.update({}, h=8)
    assert dict(kv) == {b"a": 1, b"b": 2, b"c": 3, b"d": 4, b"e": 5, b"f": 6, b"g": "seven", b"h": 8}
    with pytest.raises(TypeError):
        kv.update()  # `other` is required


def test_update_bad_input_keeps_data(kv):
    kv["a"] = "old"
    with pytest.raises(InvalidArgument):
        kv.update([("a", "new"), (5, "bad key")])
    with pytest.raises(InvalidArgument):
        kv.update([("a", "new"), ("x",)])
    with pytest.raises(InvalidArgument):
        kv.update(42)
    assert kv["a"] == "old"
    assert len(kv) == 1


def test_clear_deletes_everything(kv):
    kv.update((f"k{i}", i) for i in range(10500))
    kv[b"\xff\xff"] = b"high key"
    kv.enable_cache(cap_bytes=1 << 20, flush_threshold=1 << 19)
    kv["cached"] = b"only in cache"
    kv.clear()
    kv.disable_cache()
    assert len(kv) == 0
    assert kv.get("cached") is None
    assert list(kv) == []


# ---------------------------------------------- switches and the meta row

def test_features_recorded_in_meta(db_path):
    with KVault(db_path) as kv:
        assert meta_features(db_path) is None
        kv.disable_headers()
        kv.disable_auto_pack()
        assert meta_features(db_path) is None
        kv.enable_headers()
        assert meta_features(db_path) == "headers_v1"
        kv.enable_auto_pack()
        assert meta_features(db_path) == "headers_v1,auto_pack_v1"
        kv.enable_headers()
        kv.enable_auto_pack(use_pickle=False)
        assert meta_features(db_path) == "headers_v1,auto_pack_v1"
    with KVault(db_path) as kv:
        assert meta_features(db_path) == "headers_v1,auto_pack_v1"


def test_switch_defaults(kv):
    assert kv.auto_pack_enabled() is True
    assert kv.headers_enabled() is True


# ----------------------------------------------------------- maintenance

def test_checkpoint_moves_wal_into_main_file(db_path):
    marker = b"CHECKPOINT-MARKER-7f3a9c"
    with KVault(db_path) as kv:
        kv["m"] = marker
        with open(db_path, "rb") as f:
            assert marker not in f.read()  # only in the WAL so far
        assert kv.checkpoint() is None
        with open(db_path, "rb") as f:
            assert marker in f.read()


def test_optimize_vacuums(db_path):
    with KVault(db_path) as kv:
        kv.update((f"k{i}", os.urandom(2000)) for i in range(2000))
        kv.checkpoint()
        for k in list(kv.keys()):
            kv.delete(k)
        kv.checkpoint()
        before = os.path.getsize(db_path)
        kv["keep"] = "value"
        assert kv.optimize() is None
        kv.checkpoint()
        after = os.path.getsize(db_path)
        assert kv["keep"] == "value"
    assert after < before / 4


# ------------------------------------------------------------ lifecycle

def test_close_idempotent_and_closed_errors(db_path):
    kv = KVault(db_path)
    kv["a"] = 1
    kv.close()
    kv.close()
    assert kv.closed is True
    calls = [
        lambda: kv["a"],
        lambda: kv.__setitem__("a", 2),
        lambda: kv.put("a", 2),
        lambda: kv.get("a"),
        lambda: kv.delete("a"),
        lambda: kv.__delitem__("a"),
        lambda: kv.exists("a"),
        lambda: len(kv),
        lambda: list(kv.keys()),
        lambda: list(kv),
        lambda: list(kv.values()),
        lambda: list(kv.items()),
        lambda: kv.pop("a"),
        lambda: kv.setdefault("a", 1),
        lambda: kv.update({"a": 1}),
        lambda: kv.clear(),
        lambda: kv.put_file("a", b"x"),
        lambda: kv.get_to_file("a", open(os.devnull, "wb")),
        lambda: kv.enable_cache(),
        lambda: kv.disable_cache(),
        lambda: kv.lock_cache().__enter__(),
        lambda: kv.cache().__enter__(),
        lambda: kv.enable_headers(),
        lambda: kv.disable_headers(),
        lambda: kv.headers_enabled(),
        lambda: kv.enable_auto_pack(),
        lambda: kv.disable_auto_pack(),
        lambda: kv.auto_pack_enabled(),
        lambda: kv.optimize(),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=CLOSED):
            call()
    assert ("a" in kv) is False
    assert kv.flush_cache() == 0
    assert kv.checkpoint() is None
    assert repr(kv) == f"KVault({db_path!r}, status=closed, keys=?)"
    with KVault(db_path) as again:
        assert again["a"] == 1


def test_context_manager(db_path):
    with KVault(db_path) as kv:
        assert isinstance(kv, KVault)
        kv["a"] = 1
    assert kv.closed
    with pytest.raises(RuntimeError, match="boom"):
        with KVault(db_path) as kv2:
            raise RuntimeError("boom")
    assert kv2.closed


def test_repr(kv, db_path):
    assert repr(kv) == f"KVault({db_path!r}, status=open, keys=0)"
    kv["a"] = 1
    kv["b"] = 2
    assert repr(kv) == f"KVault({db_path!r}, status=open, keys=2)"


def test_errors_are_kohakuvault_errors(kv):
    with pytest.raises(NotFound) as ei:
        kv.get_to_file("missing", open(os.devnull, "wb"))
    assert ei.value.key == b"missing"
    assert isinstance(ei.value, KohakuVaultError)


def test_data_survives_reopen(db_path):
    with KVault(db_path) as kv:
        kv.update({f"k{i}": {"i": i} for i in range(100)})
    with KVault(pathlib.Path(db_path)) as kv:
        assert len(kv) == 100
        assert kv["k42"] == {"i": 42}
