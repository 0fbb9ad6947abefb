"""What TextVault and VectorKVault share (API.md §3.6, §7, §8).

Both proxies wrap one native store object (``_TextVault`` or
``_VectorKVault``, python/ext/store_py.c) held in ``self._vault`` whose
methods raise builtin exceptions. This module holds the parts whose meaning is
the same for both: the exception mapping of §2.3 (:func:`mapped`), the
id-based calls, the §3.6 switches, ``close`` and the dict-protocol dunders.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from . import errors as E

_F = TypeVar("_F", bound=Callable[..., Any])

__all__ = ["mapped", "StoreProxy"]


def mapped(fn: _F) -> _F:
    """Decorate a proxy method so that any exception it raises leaves as
    ``map_exception(ex)`` chained ``from ex`` (API.md §2.3): ValueError /
    TypeError → InvalidArgument, "Query returned no rows" → NotFound,
    "locked"/"busy" → DatabaseBusy, other RuntimeError → KohakuVaultError,
    OSError → IoError, a KohakuVaultError unchanged."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as ex:
            raise E.map_exception(ex) from ex

    return call  # type: ignore[return-value]


class StoreProxy:
    """Base of TextVault and VectorKVault: members that mean the same on both.

    Subclasses set ``self._vault`` (the native object), ``self.path`` and
    ``self.table`` and the class attribute ``_repr_name``, and define
    ``insert(key, value)``, ``get(key)``, ``_key_error(key)`` (the
    ``KeyError`` that ``store[key]`` raises on a miss) and ``_repr_fields()``
    (the middle of the repr).

    Thread safety: calls on one instance are serialised by the native object;
    SQLite work runs with the GIL released.
    """

    _vault: Any
    path: Any
    table: str
    _repr_name = "StoreProxy"

    # ------------------------------------------------------------ by id

    @mapped
    def delete(self, id: int) -> None:
        """Remove entry ``id`` (a document or a vector row) and its value; an
        unknown id does nothing."""
        self._vault.delete(id)

    @mapped
    def exists(self, id: int) -> bool:
        """Whether entry ``id`` exists (ids only; a str → InvalidArgument)."""
        return self._vault.exists(id)

    @mapped
    def count(self) -> int:
        """Number of entries (documents of the FTS table / vector rows)."""
        return self._vault.count()

    def close(self) -> None:
        """Close the connection (extension; idempotent). Later calls raise
        InvalidArgument. The connection also closes when the object is
        garbage-collected."""
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

    def __setitem__(self, key: Any, value: Any) -> None:
        """``store[key] = value`` is ``insert(key, value)`` (duplicates allowed)."""
        self.insert(key, value)

    def __getitem__(self, key: Any) -> Any:
        """``get(key)``; any KohakuVaultError becomes the subclass's KeyError."""
        try:
            return self.get(key)
        except E.KohakuVaultError:
            raise self._key_error(key) from None

    def __len__(self) -> int:
        return self.count()

    def __contains__(self, id: int) -> bool:
        """``id in store`` tests ids, not texts or vectors."""
        return self.exists(id)

    def __repr__(self) -> str:
        return (f"{self._repr_name}(path={self.path!r}, table={self.table!r}, "
                f"{self._repr_fields()}, count={self.count()})")
