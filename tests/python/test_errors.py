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
