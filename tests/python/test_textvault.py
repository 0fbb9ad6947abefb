"""TextVault (docs/api.md §7): FTS5 layout, BM25 scores, escaping, CRUD, errors, switches."""

import sqlite3

import numpy as np
import pytest

from kohakuvault import InvalidArgument, KohakuVaultError, NotFound, TextVault


@pytest.fixture
def tv(db_path):
    return TextVault(db_path)


def test_textvault_schema_and_pragmas(db_path):
    tv = TextVault(db_path, table="docs", columns=["title", "body"])
    tv.insert({"title": "t", "body": "b"}, b"v")
    con = sqlite3.connect(db_path)
    rows = dict(con.execute("SELECT name, sql FROM sqlite_master WHERE type='table'").fetchall())
    assert "USING fts5(" in rows["docs"] and "value_ref UNINDEXED" in rows["docs"]
    assert "id INTEGER PRIMARY KEY AUTOINCREMENT, value BLOB NOT NULL" in rows["docs_values"]
    assert "sqlite_sequence" in rows
    assert "kohakuvault_meta" not in rows
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # the document row points at its value row
    ref = con.execute("SELECT value_ref FROM docs").fetchone()[0]
    assert con.execute("SELECT value FROM docs_values WHERE id=?", (ref,)).fetchone()[0] == b"v"
    con.close()


def test_textvault_constructor_defaults_and_attributes(db_path):
    tv = TextVault(db_path)
    assert tv.columns == ["content"]
    assert tv.path == db_path and tv.table == "text_vault"
    assert tv.auto_pack_enabled() is True and tv.headers_enabled() is True
    assert len(tv) == 0
    assert repr(tv) == f"TextVault(path={db_path!r}, table='text_vault', columns=['content'], count=0)"


@pytest.mark.parametrize("bad", [["invalid column"], ["valid", ""], ["a-b"], [1]])
def test_textvault_bad_column_names_raise_plain_valueerror(db_path, bad):
    with pytest.raises(ValueError) as ei:
        TextVault(db_path, columns=bad)
    assert not isinstance(ei.value, KohakuVaultError)


def test_textvault_unicode_column_names_ok(db_path):
    tv = TextVault(db_path, columns=["título", "本文"])
    i = tv.insert({"título": "hola mundo", "本文": "text"}, b"x")
    assert tv.get_by_id(i) == ({"título": "hola mundo", "本文": "text"}, b"x")
    assert [r[0] for r in tv.search("hola", column="título")] == [i]


def test_textvault_insert_forms(db_path):
    tv = TextVault(db_path)
    a = tv.insert("Hello world", b"1")
    b = tv.insert({"content": "Hello dict", "extra": "ignored"}, b"2", metadata={"m": 1})
    assert b > a >= 1
    with pytest.raises(InvalidArgument):
        tv.insert({"other": "x"}, b"3")
    with pytest.raises(InvalidArgument):
        tv.insert("x", b"3", metadata=["not", "a", "dict"])
    multi = TextVault(db_path, table="m", columns=["title", "body"])
    with pytest.raises(InvalidArgument):
        multi.insert("plain string", b"v")
    with pytest.raises(InvalidArgument):
        multi.insert({"title": "only title"}, b"v")
    assert len(tv) == 2 and len(multi) == 0


def test_textvault_scores_are_negated_bm25_descending(db_path, tv):
    tv.insert("python python python programming", b"doc1")
    tv.insert("python programming and a much longer tail of unrelated words", b"doc2")
    tv.insert("javascript programming", b"doc3")
    res = tv.search("python", k=10)
    assert [r[2] for r in res] == [b"doc1", b"doc2"]
    assert all(isinstance(r[0], int) and isinstance(r[1], float) and r[1] > 0 for r in res)
    assert res[0][1] > res[1][1]
    con = sqlite3.connect(db_path)
    bm = [x[0] for x in con.execute(
        "SELECT bm25(text_vault) FROM text_vault WHERE text_vault MATCH '\"python\"' "
        "ORDER BY bm25(text_vault)")]
    con.close()
    assert [r[1] for r in res] == pytest.approx([-x for x in bm])


def test_textvault_escape_true_is_one_phrase(tv):
    tv.insert("machine learning is fun", b"1")
    tv.insert("learning machine", b"2")
    assert [r[2] for r in tv.search("machine learning")] == [b"1"]
    assert tv.search("   ") == []
    assert tv.search("") == []


def test_textvault_special_characters_are_safe_when_escaped(tv):
    tv.insert("What is this?", b"doc1")
    tv.insert("C++ programming guide", b"doc2")
    tv.insert("Contact: test@email.com", b"doc3")
    tv.insert("Price > 100", b"doc4")
    tv.insert('He said "hello" to me', b"doc5")
    assert len(tv.search("What is this?")) == 1
    assert len(tv.search("C++")) == 1
    assert len(tv.search("test@email.com")) == 1
    assert len(tv.search("Price > 100")) == 1
    assert [r[2] for r in tv.search('"hello"')] == [b"doc5"]
    assert tv.search("AND OR NOT") == []


def test_textvault_raw_fts5_syntax(tv):
    tv.insert("apple banana cherry", b"doc1")
    tv.insert("apple orange", b"doc2")
    tv.insert("banana grape", b"doc3")
    assert [r[2] for r in tv.search("apple AND banana", escape=False)] == [b"doc1"]
    assert len(tv.search("apple OR grape", escape=False)) == 3
    assert [r[2] for r in tv.search("apple NOT orange", escape=False)] == [b"doc1"]
    assert len(tv.search("ban*", escape=False)) == 2
    assert tv.search("", escape=False) == []
    with pytest.raises(KohakuVaultError):
        tv.search('"unbalanced', escape=False)


def test_textvault_column_filter(db_path):
    tv = TextVault(db_path, columns=["title", "body"])
    tv.insert({"title": "Python Guide", "body": "Learn programming basics"}, b"doc1")
    tv.insert({"title": "Java Guide", "body": "Python comparison included"}, b"doc2")
    assert [r[2] for r in tv.search("Python", column="body")] == [b"doc2"]
    assert [r[2] for r in tv.search("Python", column="title")] == [b"doc1"]
    assert [r[2] for r in tv.search("title:Python", escape=False)] == [b"doc1"]
    with pytest.raises(InvalidArgument):
        tv.search("Python", column="nope")


def test_textvault_search_limit_and_k(tv):
    for i in range(20):
        tv.insert(f"Document number {i} with keyword", b"v")
    assert len(tv.search("keyword", k=5)) == 5
    assert len(tv.search("keyword", k=100)) == 20


def test_textvault_search_with_text(db_path):
    tv = TextVault(db_path, columns=["title", "body"])
    tv.insert({"title": "Test Title", "body": "Test body content"}, b"value")
    ((i, score, texts, value),) = tv.search_with_text("Test")
    assert texts == {"title": "Test Title", "body": "Test body content"} and value == b"value"
    single = TextVault(db_path, table="s")
    single.insert("just text", 7)
    assert single.search_with_text("text")[0][2:] == ("just text", 7)


def test_textvault_search_with_snippets(db_path):
    tv = TextVault(db_path, columns=["title", "body"])
    tv.insert({"title": "Python", "body": "A long document about Python programming. Python is great."}, b"v")
    ((_, _, snip, val),) = tv.search_with_snippets("Python", snippet_column="body",
                                                  highlight_start="<b>", highlight_end="</b>")
    assert "<b>Python</b>" in snip and val == b"v"
    ((_, _, snip2, _),) = tv.search_with_snippets("Python")
    assert snip2 == "**Python**"  # default: first column, ** markers
    with pytest.raises(InvalidArgument):
        tv.search_with_snippets("Python", snippet_column="missing")
    long_doc = TextVault(db_path, table="long")
    long_doc.insert(" ".join(["filler"] * 50 + ["needle"] + ["filler"] * 50), b"x")
    ((_, _, s, _),) = long_doc.search_with_snippets("needle", snippet_tokens=5)
    assert "**needle**" in s and "..." in s


def test_textvault_get_phrase_and_errors(db_path, tv):
    tv.insert("unique_key_123", b"my_value")
    tv.insert("another key", b"other")
    assert tv.get("unique_key_123") == b"my_value"
    assert tv.get("another") == b"other"  # phrase containment, not equality
    with pytest.raises(KohakuVaultError) as ei:
        tv.get("nonexistent_key")
    assert type(ei.value) is KohakuVaultError  # not NotFound, not KeyError
    with pytest.raises(KohakuVaultError):
        tv.get("it's")  # quotes are bound, not spliced
    multi = TextVault(db_path, table="m", columns=["a", "b"])
    multi.insert({"a": "x", "b": "y"}, b"v")
    with pytest.raises(InvalidArgument):
        multi.get("x")


def test_textvault_get_by_id(db_path, tv):
    i = tv.insert("Hello world", b"test value")
    assert tv.get_by_id(i) == ("Hello world", b"test value")
    with pytest.raises(KohakuVaultError, match="ID 99999 not found"):
        tv.get_by_id(99999)


def test_textvault_update(tv):
    i = tv.insert("Original text", b"value")
    tv.update(i, texts="Updated text")
    assert tv.get_by_id(i) == ("Updated text", b"value")
    assert tv.search("Original") == [] and len(tv.search("Updated")) == 1
    tv.update(i, value={"new": 1})
    assert tv.get_by_id(i)[1] == {"new": 1}
    tv.update(999, texts="no-op")  # unknown id: texts are a no-op
    with pytest.raises(NotFound):
        tv.update(999, value=b"x")
    with pytest.raises(InvalidArgument):
        tv.update(i)
    assert len(tv) == 1


def test_textvault_delete_exists_count_keys_clear(db_path, tv):
    ids = [tv.insert(f"Doc {i}", b"value") for i in range(10)]
    assert tv.keys() == ids
    assert tv.keys(limit=3) == ids[:3]
    assert tv.keys(limit=3, offset=3) == ids[3:6]
    assert tv.count() == 10 and len(tv) == 10
    tv.delete(ids[0])
    tv.delete(12345)  # unknown: silently nothing
    assert not tv.exists(ids[0]) and tv.exists(ids[1])
    assert ids[1] in tv and 99999 not in tv
    with pytest.raises(InvalidArgument):
        "Doc 1" in tv  # `in` tests ids
    tv.clear()
    assert len(tv) == 0 and tv.keys() == []
    con = sqlite3.connect(db_path)
    assert con.execute("SELECT COUNT(*) FROM text_vault_values").fetchone()[0] == 0
    con.close()


def test_textvault_count_matches_raw(tv):
    for t in ["apple banana", "apple orange", "banana grape", "cherry melon"]:
        tv.insert(t, b"1")
    assert tv.count_matches("apple") == 2
    assert tv.count_matches("apple OR cherry") == 3
    assert tv.count_matches("pineapple") == 0
    with pytest.raises(KohakuVaultError):
        tv.count_matches("AND AND (")


def test_textvault_info(db_path):
    tv = TextVault(db_path, columns=["title", "content"])
    tv.insert({"title": "Test", "content": "Hello"}, b"value")
    assert tv.info() == {"table": "text_vault", "columns": ["title", "content"], "count": 1}


def test_textvault_dict_protocol(tv):
    tv["my_key"] = b"my_value"
    tv["my_key"] = b"dup"  # duplicates allowed
    assert len(tv) == 2
    assert tv["my_key"] == b"my_value"
    with pytest.raises(KeyError) as ei:
        tv["nonexistent"]
    assert ei.value.args == ("nonexistent",)
    del tv["my_key"]
    assert len(tv) == 1
    del tv["my_key"]
    with pytest.raises(KeyError):
        del tv["my_key"]


@pytest.mark.parametrize("value", [
    {"name": "test", "value": 123, "nested": {"key": "value"}},
    [1, 2, 3, "four", 5.0],
    42, 3.5, "hello world", b"\xff\xd8raw", None, (1, 2),
])
def test_textvault_auto_pack_round_trip(tv, value):
    i = tv.insert("doc", value)
    assert tv.get_by_id(i)[1] == value
    assert tv.search("doc")[0][2] == value


def test_textvault_auto_pack_numpy_and_nested_array(tv):
    arr = np.arange(3, dtype=np.int64)
    i = tv.insert("doc", arr)
    np.testing.assert_array_equal(tv.get_by_id(i)[1], arr)
    emb = np.random.randn(16).astype(np.float32)
    j = tv.insert("chunk", {"embedding": emb, "doc_id": "d1"})
    got = tv.get_by_id(j)[1]
    assert got["doc_id"] == "d1"
    np.testing.assert_array_equal(got["embedding"], emb)


def test_textvault_switches(db_path, tv):
    tv.disable_headers()
    i = tv.insert("doc", "text")
    assert tv.get_by_id(i)[1] == b"text"  # bare payload reads back as bytes
    tv.enable_auto_pack()
    assert tv.headers_enabled() is True
    tv.disable_auto_pack()
    assert tv.auto_pack_enabled() is False
    j = tv.insert("raw", bytearray(b"\x01\x02"))
    k = tv.insert("raw2", [1, 2, 3])
    assert tv.get_by_id(j)[1] == b"\x01\x02" and tv.get_by_id(k)[1] == b"\x01\x02\x03"
    with pytest.raises(InvalidArgument):
        tv.insert("nope", "a str value")
    with pytest.raises(InvalidArgument):
        tv.insert("nope", 5)
    tv.enable_auto_pack()
    h = tv.insert("header", 5)
    tv.disable_auto_pack()
    assert tv.get_by_id(h)[1][:2] == b"\x89K"  # stored bytes include the header


def test_textvault_pathlike_and_reopen(tmp_path):
    p = tmp_path / "sub" / "t.db"
    tv = TextVault(p)
    i = tv.insert("persisted text", [1, 2])
    tv.close()
    tv2 = TextVault(str(p))
    assert tv2.get_by_id(i) == ("persisted text", [1, 2])


def test_textvault_busy_maps_to_databasebusy(db_path, tv):
    from kohakuvault import DatabaseBusy

    tv.insert("x", b"1")
    con = sqlite3.connect(db_path, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(DatabaseBusy):
            tv.insert("blocked", b"2")
    finally:
        con.execute("ROLLBACK")
        con.close()
    assert len(tv) == 1


def test_textvault_threads_share_one_instance(tv, run_threads):
    def worker(n):
        for i in range(50):
            tv.insert(f"thread{n} doc{i} common", i)
            tv.search("common", k=3)

    errors = run_threads(worker, 4)
    assert not errors
    assert len(tv) == 200
    assert tv.count_matches("common") == 200


def test_textvault_close_is_idempotent_and_later_calls_raise(db_path, tv):
    i = tv.insert("kept after close", b"v")
    assert tv._vault.closed is False
    tv.close()
    tv.close()
    assert tv._vault.closed is True
    for call in (tv.count, lambda: tv.get_by_id(i), lambda: tv.delete(i), lambda: tv.exists(i),
                 lambda: tv.search("kept"), lambda: tv.insert("x", b"y"), tv.clear, tv.keys):
        with pytest.raises(InvalidArgument, match="Cannot operate on closed TextVault") as ei:
            call()
        assert type(ei.value.__cause__) is ValueError  # the native error, chained
    assert TextVault(db_path).get_by_id(i) == ("kept after close", b"v")


def test_textvault_exists_and_delete_id_arguments(tv):
    i = tv.insert("doc", b"v")
    assert tv.exists(i) and not tv.exists(i + 1)
    assert not tv.exists(2**80)  # beyond int64: no such rowid, not an error
    with pytest.raises(InvalidArgument):
        tv.exists("1")
    with pytest.raises(InvalidArgument):
        tv.delete("1")
    with pytest.raises(KohakuVaultError):
        tv.get_by_id(2**80)
    assert tv._vault.delete(i) is True and tv._vault.delete(i) is False
    assert len(tv) == 0
