"""map_exception rules (docs/api.md §2.3) and the exception classes (§2.1)."""

import pytest

from kohakuvault import (
    DatabaseBusy,
    InvalidArgument,
    IoError,
    KohakuVaultError,
    NotFound,
)
from kohakuvault.errors import map_exception


def test_hierarchy_and_no_builtin_bases():
    for cls in (NotFound, DatabaseBusy, InvalidArgument, IoError):
        assert issubclass(cls, KohakuVaultError)
        for builtin in (KeyError, ValueError, TypeError, OSError, LookupError):
            assert not issubclass(cls, builtin)
    assert issubclass(KohakuVaultError, Exception)


def test_notfound_message_and_key():
    e = NotFound(b"abc")
    assert e.key == b"abc"
    assert str(e) == "Key not found: b'abc'"
    e = NotFound("x")
    assert e.key == "x"
    assert str(e) == "Key not found: 'x'"


def test_databasebusy_default_message():
    assert str(DatabaseBusy()) == "database is busy/locked"
    assert str(DatabaseBusy("database is locked")) == "database is locked"


def test_ioerror_with_and_without_cause():
    cause = OSError(5, "Input/output error")
    e = IoError("reading failed", cause)
    assert str(e) == f"reading failed: {cause}"
    assert e.__cause__ is cause
    e = IoError("plain")
    assert str(e) == "plain"
    assert e.__cause__ is None


def test_rule1_kohakuvault_error_unchanged():
    for exc in (KohakuVaultError("x"), NotFound(b"k"), DatabaseBusy(), InvalidArgument("a")):
        assert map_exception(exc) is exc
        assert map_exception(exc, key=b"other") is exc


@pytest.mark.parametrize("text", ["Key not found", "KEY NOT FOUND in table", "Query returned no rows"])
def test_rule2_not_found(text):
    m = map_exception(RuntimeError(text), key=b"k1")
    assert type(m) is NotFound and m.key == b"k1"
    m = map_exception(RuntimeError(text))
    assert type(m) is NotFound and m.key == b"<unknown>"


@pytest.mark.parametrize("text", ["database is locked", "Database BUSY", "table locked"])
def test_rule3_busy(text):
    m = map_exception(RuntimeError(text), key=b"k")
    assert type(m) is DatabaseBusy
    assert str(m) == text


def test_rule2_wins_over_rule3():
    m = map_exception(RuntimeError("key not found while locked"))
    assert type(m) is NotFound


def test_rule4_other_runtime_error():
    m = map_exception(RuntimeError("disk I/O error"))
    assert type(m) is KohakuVaultError
    assert str(m) == "disk I/O error"


@pytest.mark.parametrize("exc", [TypeError("key must be bytes or str"), ValueError("bad")])
def test_rule5_type_value(exc):
    m = map_exception(exc)
    assert type(m) is InvalidArgument
    assert str(m) == str(exc)


def test_rule6_oserror():
    exc = FileNotFoundError(2, "No such file")
    m = map_exception(exc)
    assert type(m) is IoError
    assert m.__cause__ is exc
    assert str(m) == f"OS error during I/O: {exc}"


@pytest.mark.parametrize("exc", [KeyError("k"), IndexError("i"), ZeroDivisionError("z")])
def test_rule7_anything_else(exc):
    m = map_exception(exc)
    assert type(m) is KohakuVaultError
    assert str(m) == str(exc)


# ---- hostile input gets a clear error (and nothing stored is lost) --------

import sqlite3  # noqa: E402

from kohakuvault import ColumnVault, CSBTree, KVault, TextVault  # noqa: E402

# A valid 10-byte header (docs/api.md §3.1) for encoding id `enc`.
def _header(enc):
    return bytes([0x89, 0x4B, 0x01, enc, 0, 0, 0, 0, 0x56, 0x4B])


def _store_raw(kv, key, blob):
    kv.disable_auto_pack()
    kv[key] = blob
    kv.enable_auto_pack()


@pytest.mark.parametrize("payload", [b"\xc1", b"\x92\x01", b"\xd9"], ids=["c1", "short-array", "short-str"])
def test_garbage_messagepack_names_key(tmp_path, payload):
    kv = KVault(str(tmp_path / "a.db"), shared=False)
    _store_raw(kv, b"bad", _header(0x04) + payload)
    kv[b"good"] = {"a": 1}
    for read in (lambda: kv[b"bad"], lambda: kv.get(b"bad")):
        with pytest.raises(InvalidArgument) as info:
            read()
        msg = str(info.value)
        assert "b'bad'" in msg and "corrupt MessagePack" in msg
    assert kv[b"good"] == {"a": 1}
    kv.close()


def test_negative_column_length_names_column(tmp_path):
    path = str(tmp_path / "c.db")
    cv = ColumnVault(path)
    col = cv.create_column("x", "i64")
    col.extend([1, 2, 3])
    con = sqlite3.connect(path)
    con.execute("UPDATE col_meta SET length = -5 WHERE name = 'x'")
    con.commit()
    con.close()
    # opened afresh: refused when the column is opened
    with pytest.raises(RuntimeError) as info:
        ColumnVault(path)["x"]
    msg = str(info.value)
    assert "'x'" in msg and "negative length (-5)" in msg and "corrupt" in msg
    # already open: refused when the length is read, not a ValueError from len()
    with pytest.raises(RuntimeError) as info:
        len(col)
    msg = str(info.value)
    assert "'x'" in msg and "-5" in msg and "corrupt" in msg


def test_textvault_key_with_nul_is_looked_up(tmp_path):
    tv = TextVault(str(tmp_path / "t.db"))
    tv.insert("a\x00b rest", 7)
    assert tv.get("a\x00b") == 7
    assert [hit[2] for hit in tv.search("a\x00b")] == [7]
    with pytest.raises(KohakuVaultError, match="No document found"):
        tv.get("c\x00d")


def test_shared_deeply_nested_value(tmp_path):
    nest = []
    for _ in range(100_000):
        nest = [nest]
    with pytest.raises(InvalidArgument) as info:
        KVault(str(tmp_path / "a.db"), shared=nest)
    msg = str(info.value)
    assert "'auto', 'spawn', True or False" in msg and len(msg) < 200


class _HugeLen:
    """Claims 2**40 items but yields one."""

    def __len__(self):
        return 2**40

    def __iter__(self):
        return iter([1.0])


def test_extend_with_lying_len(tmp_path):
    col = ColumnVault(str(tmp_path / "c.db")).create_column("y", "f64")
    col.append(0.5)
    with pytest.raises(MemoryError) as info:
        col.extend(_HugeLen())
    msg = str(info.value)
    assert "extend" in msg and str(2**40) in msg
    assert list(col) == [0.5]


@pytest.mark.parametrize("arg,exc,item", [("ab", ValueError, "#0 is 'a'"), ([1], TypeError, "#0 is 1"),
                                          ([("j", 2), "x"], ValueError, "#1 is 'x'")])
def test_csbtree_update_non_pairs(arg, exc, item):
    t = CSBTree()
    with pytest.raises(exc) as info:
        t.update(arg)
    msg = str(info.value)
    assert "(key, value) pairs" in msg and "items()" in msg and item in msg
    t.update([("k", "v")])
    assert t["k"] == "v"


@pytest.mark.parametrize("option,value", [
    ("chunk_size", 2**63), ("page_size", 2**40), ("mmap_size", 2**64),
    ("cache_kb", -(2**70)), ("read_cache_bytes", 2**64),
])
def test_out_of_range_int_options(tmp_path, option, value):
    with pytest.raises(InvalidArgument) as info:
        KVault(str(tmp_path / "a.db"), **{option: value})
    msg = str(info.value)
    assert option in msg and str(value) in msg
    assert "C ssize_t" not in msg and "too large to convert" not in msg
