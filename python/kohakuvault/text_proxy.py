"""TextVault: full-text search with SQLite FTS5 and BM25 ranking (docs/api.md §7).

The native ``_TextVault`` (python/ext/text_py.c over engine/text.c) does the
SQLite work with the GIL released; this module adds argument shaping
(``str``/``dict`` texts); the exception mapping
(:func:`kohakuvault.errors.map_exception`), the id-based calls, the §3.6
switches and the dict protocol come from :mod:`kohakuvault._store`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple, Union

from ._kvault import _TextVault
from ._store import StoreProxy, mapped

Texts = Union[str, Dict[str, str]]

__all__ = ["TextVault"]


def _phrase(query: Any, escape: Any) -> Any:
    """The query of an escaped search: NUL characters become spaces. The
    tokenizer separates tokens at NUL as at a space, but FTS5's query parser
    stops reading at a NUL, which would leave the phrase unterminated."""
    if escape and isinstance(query, str) and "\0" in query:
        return query.replace("\0", " ")
    return query


def _valid_column_name(name: Any) -> bool:
    """Non-empty str of Unicode letters/digits and ``_`` (docs/api.md §7.1)."""
    return isinstance(name, str) and name != "" and all(ch.isalnum() or ch == "_" for ch in name)


class TextVault(StoreProxy):
    """Full-text store with BM25 ranking, one document per FTS5 row.

    ``TextVault(path, table="text_vault", columns=None)``: ``columns`` defaults
    to ``["content"]``. Each column name must be non-empty and consist of
    Unicode letters, digits and ``_``, else :class:`ValueError` (the
    constructor's errors are not mapped). Values are encoded per docs/api.md §3
    (auto-pack and headers on by default). Every method except the
    constructor and the re-wrapping dunders raises the mapped hierarchy of
    :mod:`kohakuvault.errors`.

    Thread safety: calls on one instance are serialised by the native object;
    SQLite work runs with the GIL released.
    """

    def __init__(self, path: Union[str, os.PathLike], table: str = "text_vault",
                 columns: Optional[List[str]] = None):
        cols = ["content"] if columns is None else list(columns)
        if not cols:
            raise ValueError("columns must contain at least one column name")
        for c in cols:
            if not _valid_column_name(c):
                raise ValueError(
                    f"Invalid column name: {c!r} (use letters, digits and underscores only)")
        self._vault = _TextVault(os.fspath(path), table, cols)
        self.path = path
        self.table = table
        self._columns = cols

    # ------------------------------------------------------------ helpers

    @property
    def columns(self) -> List[str]:
        """Column names (a new list)."""
        return list(self._columns)

    def _texts_list(self, texts: Texts) -> List[str]:
        if isinstance(texts, dict):
            missing = [c for c in self._columns if c not in texts]
            if missing:
                raise ValueError(f"Missing columns in texts: {missing}")
            return [texts[c] for c in self._columns]
        if isinstance(texts, str):
            if len(self._columns) != 1:
                raise ValueError(
                    f"Multi-column TextVault requires a dict of texts for columns {self._columns}")
            return [texts]
        raise TypeError(f"texts must be a str or a dict, got {type(texts).__name__}")

    # ------------------------------------------------------------ methods

    @mapped
    def insert(self, texts: Texts, value: Any, metadata: Optional[Dict[str, Any]] = None) -> int:
        """Insert a document; returns its id (the FTS rowid).

        ``texts``: a ``str`` (single column) or a dict holding every column
        (extra keys ignored). ``value`` is encoded per docs/api.md §3 (with
        auto-pack off it must be bytes, bytearray or a sequence of ints).
        ``metadata`` must be a dict or ``None`` and is ignored.
        Raises InvalidArgument (missing columns, bad types), DatabaseBusy,
        KohakuVaultError.
        """
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError("metadata must be a dict or None")
        return self._vault.insert(self._texts_list(texts), value)

    @mapped
    def search(self, query: str, k: int = 10, column: Optional[str] = None,
               escape: bool = True) -> List[Tuple[int, float, Any]]:
        """BM25 search: ``[(id, score, value)]``, best first (score = -bm25 > 0).

        ``escape=True`` searches the whole query as one phrase (special
        characters are safe; an all-whitespace query gives ``[]``);
        ``escape=False`` passes FTS5 syntax through (``AND``, ``OR``,
        ``NOT``, ``NEAR()``, ``prefix*``, ``col:term``). ``column`` restricts
        the match to one column (unknown → InvalidArgument).
        """
        return self._vault.search(_phrase(query, escape), k, column, escape)

    @mapped
    def search_with_text(self, query: str, k: int = 10, column: Optional[str] = None,
                         escape: bool = True) -> List[Tuple[int, float, Texts, Any]]:
        """As :meth:`search`, returning ``[(id, score, texts, value)]``; texts
        is a ``str`` (one column) or a dict column → text."""
        return self._vault.search(_phrase(query, escape), k, column, escape, True)

    @mapped
    def search_with_snippets(self, query: str, k: int = 10, snippet_column: Optional[str] = None,
                             snippet_tokens: int = 10, highlight_start: str = "**",
                             highlight_end: str = "**",
                             escape: bool = True) -> List[Tuple[int, float, str, Any]]:
        """As :meth:`search`, returning ``[(id, score, snippet, value)]``.

        The snippet is FTS5 ``snippet(table, col, highlight_start,
        highlight_end, '...', snippet_tokens)`` of ``snippet_column``
        (default: the first column; unknown → InvalidArgument). The match is
        not restricted to that column.
        """
        if snippet_column is None:
            idx = 0
        elif snippet_column in self._columns:
            idx = self._columns.index(snippet_column)
        else:
            raise ValueError(
                f"Column '{snippet_column}' not found. Available columns: {self._columns}")
        return self._vault.search_with_snippets(_phrase(query, escape), k, idx, snippet_tokens,
                                                highlight_start, highlight_end, escape)

    @mapped
    def get(self, key: str) -> Any:
        """Value of the first document whose first column contains ``key`` as
        a phrase. Missing → KohakuVaultError; multi-column → InvalidArgument."""
        return self._vault.get(key)

    @mapped
    def get_by_id(self, id: int) -> Tuple[Texts, Any]:
        """``(texts, value)`` of document ``id``; missing →
        KohakuVaultError("ID <id> not found")."""
        return self._vault.get_by_id(id)

    @mapped
    def update(self, id: int, texts: Optional[Texts] = None, value: Any = None) -> None:
        """Replace the texts (all columns; unknown id: no-op) and/or the value
        (unknown id → NotFound) of document ``id``. Both ``None`` →
        InvalidArgument; ``None`` itself cannot be stored this way."""
        if texts is None and value is None:
            raise ValueError("Must provide either texts or value to update")
        t = None if texts is None else self._texts_list(texts)
        self._vault.update(id, t, value)

    @mapped
    def count_matches(self, query: str) -> int:
        """Documents matching the raw FTS5 ``query`` (never escaped); syntax
        errors → KohakuVaultError."""
        return self._vault.count_matches(query)

    def info(self) -> Dict[str, Any]:
        """``{"table": str, "columns": list, "count": int}``."""
        return {"table": self.table, "columns": self.columns, "count": self.count()}

    @mapped
    def clear(self) -> None:
        """Delete every document and value."""
        self._vault.clear()

    @mapped
    def keys(self, limit: int = 10000, offset: int = 0) -> List[int]:
        """Document ids in table order, at most ``limit`` after ``offset``."""
        return self._vault.keys(limit, offset)

    # ------------------------------------------------------------ protocol

    def _key_error(self, text: str) -> KeyError:
        """``tv[text]`` on a miss raises ``KeyError(text)``."""
        return KeyError(text)

    def __delitem__(self, text: str) -> None:
        """Delete the best BM25 phrase match for ``text``; none → ``KeyError(text)``."""
        results = self.search(text, k=1)
        if not results:
            raise KeyError(text)
        self.delete(results[0][0])

    _repr_name = "TextVault"

    def _repr_fields(self) -> str:
        return f"columns={self._columns!r}"
