"""Mistakes a new user makes get one exception of the documented class
whose message says what was wrong and what is valid (docs/api.md §2.5)."""

import re

import pytest

from kohakuvault import (
    ColumnVault,
    DataPacker,
    InvalidArgument,
    KohakuVaultError,
    KVault,
    NotFound,
    TextVault,
    VectorKVault,
)


# ---- a directory or another file where a database file belongs -----------

# Each class raises its documented kind for a file it cannot open: KVault's
# opening errors are mapped (§4.1), the others raise raw builtins (§6.1, §7.1,
# §8.1).
OPENERS = [
    ("KVault", lambda p: KVault(p), KohakuVaultError),
    ("ColumnVault", lambda p: ColumnVault(p), RuntimeError),
    ("TextVault", lambda p: TextVault(p), RuntimeError),
    ("VectorKVault", lambda p: VectorKVault(p, dimensions=4), RuntimeError),
]


@pytest.mark.parametrize("name,opener,exc", OPENERS, ids=[o[0] for o in OPENERS])
def test_directory_is_not_a_database(tmp_path, name, opener, exc):
    d = tmp_path / "adir"
    d.mkdir()
    with pytest.raises(exc) as info:
        opener(str(d))
    assert type(info.value) is exc
    assert f"{d} is a directory, not a database file" in str(info.value)
    assert list(d.iterdir()) == []  # nothing was created inside it


@pytest.mark.parametrize("name,opener,exc", OPENERS, ids=[o[0] for o in OPENERS])
def test_text_file_is_not_a_database(tmp_path, name, opener, exc):
    f = tmp_path / "notes.txt"
    f.write_text("these are notes, not a database\n" * 200)
    before = f.read_bytes()
    with pytest.raises(exc) as info:
        opener(str(f))
    assert type(info.value) is exc
    msg = str(info.value)
    assert str(f) in msg and "not a SQLite database file" in msg
    assert f.read_bytes() == before  # the file is left alone


# ---- ColumnVault ----------------------------------------------------------


def test_ensure_keeps_existing_column_whatever_the_dtype(tmp_path):
    # docs/api.md §6.1: "an existing column's dtype is not checked"; ensure
    # returns the existing column, so its dtype is visible on the result.
    cv = ColumnVault(str(tmp_path / "c.db"))
    col = cv.create_column("x", "f64")
    col.append(1.5)
    got = cv.ensure("x", "i64")
    assert got is col
    assert got._dtype == "f64"
    assert got[0] == 1.5


def test_missing_column_names_column_file_and_existing_columns(tmp_path):
    path = str(tmp_path / "c.db")
    cv = ColumnVault(path)
    cv.create_column("w1_ts", "i64")
    cv.create_column("notes", "str")  # variable-size: listed by its own name
    with pytest.raises(NotFound) as info:
        cv["w2_ts"]
    e = info.value
    assert e.key == "w2_ts"
    msg = str(e)
    assert msg.startswith("Key not found: 'w2_ts'")  # docs/api.md §2.1
    assert f"column 'w2_ts' not found in {path}" in msg
    assert "w1_ts" in msg and "notes" in msg and "notes_data" not in msg
    assert "create_column" in msg


def test_create_column_bad_dtype_lists_valid_spellings(tmp_path):
    cv = ColumnVault(str(tmp_path / "c.db"))
    with pytest.raises(InvalidArgument) as info:
        cv.create_column("x", "f32")
    msg = str(info.value)
    assert msg.startswith("Unknown dtype: f32")
    assert "vec:f32" in msg and "i64" in msg
    assert cv.list_columns() == []


# ---- DataPacker -----------------------------------------------------------


def test_datapacker_unknown_dtype_lists_grammar():
    with pytest.raises(ValueError) as info:
        DataPacker("f32")
    msg = str(info.value)
    assert msg.startswith("Invalid dtype: Unknown dtype: f32")
    for spelling in ("i64", "f64", "str", "bytes", "msgpack", "cbor", "vec:"):
        assert spelling in msg
    # f32 exists only as a vector element type: the message says so
    assert "vec:f32" in msg
    assert DataPacker("vec:f32").is_varsize


# ---- TextVault ------------------------------------------------------------


def test_fts5_syntax_error_names_query_and_escape(tmp_path):
    tv = TextVault(str(tmp_path / "t.db"))
    tv.insert("hello world", 1)
    for call in (lambda: tv.search("hello AND (", escape=False),
                 lambda: tv.search_with_text("hello AND (", escape=False),
                 lambda: tv.count_matches("hello AND (")):
        with pytest.raises(KohakuVaultError) as info:
            call()
        msg = str(info.value)
        assert "'hello AND ('" in msg
        assert "FTS5 syntax error" in msg
        assert "escape=True" in msg
    # the escaped form of the same text is a valid (phrase) query
    assert tv.search("hello AND (") == []


def test_count_matches_unknown_column_filter(tmp_path):
    tv = TextVault(str(tmp_path / "t.db"))
    tv.insert("vec f32 0", 1)
    with pytest.raises(KohakuVaultError) as info:
        tv.count_matches("vec:f32:0")
    msg = str(info.value)
    assert "'vec:f32:0'" in msg and "column" in msg and "'vec'" in msg
    assert "content" in msg  # the valid column names
    assert tv.count_matches('"vec:f32:0"') == 1  # quoting, as the message says


def test_textvault_get_missing_is_kohakuvaulterror(tmp_path):
    # docs/api.md §2.5 / §7.2: a miss in get() is KohakuVaultError (not
    # NotFound, not KeyError); tv[text] turns it into KeyError.
    tv = TextVault(str(tmp_path / "t.db"))
    tv.insert("hello", 1)
    with pytest.raises(KohakuVaultError) as info:
        tv.get("absent")
    assert type(info.value) is KohakuVaultError
    assert "absent" in str(info.value)
    with pytest.raises(KeyError):
        tv["absent"]


def test_datapacker_message_keeps_other_dtype_errors():
    # the hint is only for an unknown kind; other dtype errors say their own thing
    with pytest.raises(ValueError, match=re.escape("Invalid dtype: Unknown vector element type")):
        DataPacker("vec:f16")
