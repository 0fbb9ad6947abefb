"""TextVault: full-text search with SQLite FTS5 and BM25 ranking (API.md §7).

The native ``_TextVault`` (python/ext/text_py.c over engine/text.c) does the
SQLite work with the GIL released; this module adds argument shaping
(``str``/``dict`` texts), the dict protocol and exception mapping
(:func:`kohakuvault.errors.map_exception`).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple, Union

from . import errors as E
from ._kvault import _TextVault

Texts = Union[str, Dict[str, str]]

__all__ = ["TextVault"]


def _valid_column_name(name: Any) -> bool:
    """Non-empty str of Unicode letters/digits and ``_`` (API.md §7.1)."""
    return isinstance(name, str) and name != "" and all(ch.isalnum() or ch == "_" for ch in name)


class TextVault:
    """Full-text store with BM25 ranking, one document per FTS5 row.

    ``TextVault(path, table="text_vault", columns=None)``: ``columns`` defaults
    to ``["content"]``. Each column name must be non-empty and consist of
    Unicode letters, digits and ``_``, else :class:`ValueError` (the
    constructor's errors are not mapped). Values are encoded per API.md §3
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

    def insert(self, texts: Texts, value: Any, metadata: Optional[Dict[str, Any]] = None) -> int:
        """Insert a document; returns its id (the FTS rowid).

        ``texts``: a ``str`` (single column) or a dict holding every column
        (extra keys ignored). ``value`` is encoded per API.md §3 (with
        auto-pack off it must be bytes, bytearray or a sequence of ints).
        ``metadata`` must be a dict or ``None`` and is ignored.
        Raises InvalidArgument (missing columns, bad types), DatabaseBusy,
        KohakuVaultError.
        """
        try:
            if metadata is not None and not isinstance(metadata, dict):
                raise TypeError("metadata must be a dict or None")
            return self._vault.insert(self._texts_list(texts), value)
        except Exception as ex:
            raise E.map_exception(ex) from ex

    def search(self, query: str, k: int = 10, column: Optional[str] = None,
               escape: bool = True) -> List[Tuple[int, float, Any]]:
        """BM25 search: ``[(id, score, value)]``, best first (score = -bm25 > 0).

        ``escape=True`` searches the whole query as one phrase (special
        characters are safe; an all-whitespace query gives ``[]``);
        ``escape=False`` passes FTS5 syntax through (``AND``, ``OR``,
        ``NOT``, ``NEAR()``, ``prefix*``, ``col:term``). ``column`` restricts
        the match to one column (unknown → InvalidArgument).
        """
        try:
            return self._vault.search(query, k, column, escape)
        except Exception as ex:
            raise E.map_exception(ex) from ex

    def search_with_text(self, query: str, k: int = 10, column: Optional[str] = None,
                         escape: bool = True) -> List[Tuple[int, float, Texts, Any]]:
        """As :meth:`search`, returning ``[(id, score, texts, value)]``; texts
        is a ``str`` (one column) or a dict column → text."""
        try:
            return self._vault.search(query, k, column, escape, True)
        except Exception as ex:
            raise E.map_exception(ex) from ex

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
        try:
            if snippet_column is None:
                idx = 0
            elif snippet_column in self._columns:
                idx = self._columns.index(snippet_column)
            else:
                raise ValueError(
                    f"Column '{snippet_column}' not found. Available columns: {self._columns}")
            return self._vault.search_with_snippets(query, k, idx, snippet_tokens,
                                                    highlight_start, highlight_end, escape)
        except Exception as ex:
            raise E.map_exception(ex) from ex

    def get(self, key: str) -> Any:
        """Value of the first document whose first column contains ``key`` as
        a phrase. Missing → KohakuVaultError; multi-column → InvalidArgument."""
        try:
            return self._vault.get(key)
        except Exception as ex:
            raise E.map_exception(ex) from ex

    def get_by_id(self, id: int) -> Tuple[Texts, Any]:
        """``(texts, value)`` of document ``id``; missing →
        KohakuVaultError("ID <id> not found")."""
        try:
            return self._vault.get_by_id(id)
        except Exception as ex:
            raise E.map_exception(ex) from ex

    def delete(self, id: int) -> None:
        """Remove document ``id`` and its value; an unknown id does nothing."""
        try:
            self._vault.delete(id)
        except Exception as ex:
            raise E.map_exception(ex) from ex

    def update(self, id: int, texts: Optional[Texts] = None, value: Any = None) -> None:
        """Replace the texts (all columns; unknown id: no-op) and/or the value
        (unknown id → NotFound) of document ``id``. Both ``None`` →
        InvalidArgument; ``None`` itself cannot be stored this way."""
        try:
            if texts is None and value is None:
                raise ValueError("Must provide either texts or value to update")
            t = None if texts is None else self._texts_list(texts)
            self._vault.update(id, t, value)
        except Exception as ex:
            raise E.map_exception(ex) from ex

    def exists(self, id: int) -> bool:
        """Whether document ``id`` exists (ids only; a str → InvalidArgument)."""
        try:
            return self._vault.exists(id)
        except Exception as ex:
            raise E.map_exception(ex) from ex

    def count(self) -> int:
        """Number of documents (rows of the FTS table)."""
        try:
            return self._vault.count()
        except Exception as ex:
            raise E.map_exception(ex) from ex

    def count_matches(self, query: str) -> int:
        """Documents matching the raw FTS5 ``query`` (never escaped); syntax
        errors → KohakuVaultError."""
        try:
            return self._vault.count_matches(query)
        except Exception as ex:
            raise E.map_exception(ex) from ex

    def info(self) -> Dict[str, Any]:
        """``{"table": str, "columns": list, "count": int}``."""
        return {"table": self.table, "columns": self.columns, "count": self.count()}

    def clear(self) -> None:
        """Delete every document and value."""
        try:
            self._vault.clear()
        except Exception as ex:
            raise E.map_exception(ex) from ex

    def keys(self, limit: int = 10000, offset: int = 0) -> List[int]:
        """Document ids in table order, at most ``limit`` after ``offset``."""
        try:
            return self._vault.keys(limit, offset)
        except Exception as ex:
            raise E.map_exception(ex) from ex

    def close(self) -> None:
        """Close the connection (extension; idempotent). The connection also
        closes when the object is garbage-collected."""
        self._vault.close()

    # ------------------------------------------------------------ switches (§3.6)

    def enable_auto_pack(self, use_pickle: bool = True) -> None:
        """Auto-pack on (also turns headers on); ``use_pickle`` allows the
        pickle fallback."""
        self._vault.enable_auto_pack(use_pickle)

    def disable_auto_pack(self) -> None:
        """Auto-pack off: values must be bytes-like; reads return stored bytes."""
        self._vault.disable_auto_pack()

    def auto_pack_enabled(self) -> bool:
        """Whether auto-pack is on."""
        return self._vault.auto_pack_enabled()

    def enable_headers(self) -> None:
        """Write the 10-byte header for non-bytes values."""
        self._vault.enable_headers()

    def disable_headers(self) -> None:
        """Store encoded payloads without a header."""
        self._vault.disable_headers()

    def headers_enabled(self) -> bool:
        """Whether headers are on."""
        return self._vault.headers_enabled()

    # ------------------------------------------------------------ protocol

    def __setitem__(self, text: str, value: Any) -> None:
        """``tv[text] = value`` is ``insert(text, value)`` (duplicates allowed)."""
        self.insert(text, value)

    def __getitem__(self, text: str) -> Any:
        """``get(text)``; any KohakuVaultError becomes ``KeyError(text)``."""
        try:
            return self.get(text)
        except E.KohakuVaultError:
            raise KeyError(text) from None

    def __delitem__(self, text: str) -> None:
        """Delete the best BM25 phrase match for ``text``; none → ``KeyError(text)``."""
        results = self.search(text, k=1)
        if not results:
            raise KeyError(text)
        self.delete(results[0][0])

    def __len__(self) -> int:
        return self.count()

    def __contains__(self, id: int) -> bool:
        """``id in tv`` tests document ids, not texts."""
        return self.exists(id)

    def __repr__(self) -> str:
        return (f"TextVault(path={self.path!r}, table={self.table!r}, "
                f"columns={self._columns!r}, count={self.count()})")
