"""What TextVault and VectorKVault share (docs/api.md §3.6, §7, §8).

Both proxies wrap one native store object (``_TextVault`` or
``_VectorKVault``, python/ext/store_py.c) held in ``self._vault`` whose
methods raise builtin exceptions. This module holds the parts whose meaning is
the same for both: the exception mapping of §2.3 (:func:`mapped`), the
id-based calls, the §3.6 switches, ``close`` and the dict-protocol dunders.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, TypeVar

from . import _kvault, _safety
from . import errors as E

_F = TypeVar("_F", bound=Callable[..., Any])

__all__ = ["mapped", "StoreProxy"]


# The busy policy of every class (docs/shared-mode.md, "Busy databases"),
# KVault's: each attempt waits up to BUSY_TIMEOUT seconds for SQLite's write
# lock (KVault's connections have that busy timeout), then up to `retries`
# attempts in total, sleeping backoff_base, 2*backoff_base, ... between them.
BUSY_TIMEOUT = 5.0
# Sleeps between polls of one attempt, seconds: the schedule of SQLite's own
# busy handler (sqliteDefaultBusyCallback, src/main.c of SQLite 3.40), so a
# store waits on a busy file as a KVault connection does.
_BUSY_POLL = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.025, 0.025, 0.05, 0.05, 0.1)


def _busy_retry(store: Any, fn: Callable[..., Any], args: Any, kwargs: Any,
                first: BaseException) -> Any:
    """Run ``fn(*args, **kwargs)`` again after it raised ``first`` (mapped to
    DatabaseBusy), under the store's busy policy (``busy_timeout``,
    ``retries``, ``backoff_base``); returns its result, or raises the last
    error mapped, chained from the native one."""
    timeout = float(getattr(store, "busy_timeout", BUSY_TIMEOUT))
    attempts = max(1, int(getattr(store, "retries", 1)))
    backoff = float(getattr(store, "backoff_base", 0.0))
    exc = first
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        deadline = time.monotonic() + timeout
        polls = 0
        ran = attempt == 0  # the first attempt made its first call already
        while True:
            if ran:
                if time.monotonic() >= deadline:
                    break
                time.sleep(_BUSY_POLL[min(polls, len(_BUSY_POLL) - 1)])
                polls += 1
            ran = True
            try:
                return fn(*args, **kwargs)
            except Exception as again:
                err = E.map_call_exception(again)
                if not isinstance(err, E.DatabaseBusy):
                    raise err from again
                exc = again
    raise E.map_call_exception(exc) from exc


def mapped(fn: _F) -> _F:
    """Decorate a proxy method so that any exception it raises leaves as
    ``map_exception(ex)`` chained ``from ex`` (docs/api.md §2.3): ValueError /
    TypeError → InvalidArgument, "Query returned no rows" → NotFound,
    "locked"/"busy" → DatabaseBusy, other RuntimeError → KohakuVaultError,
    OSError → IoError, a KohakuVaultError unchanged; an OverflowError (an
    int argument beyond int64) → InvalidArgument. A busy error is first
    retried under the store's busy policy (:class:`StoreProxy`)."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as ex:
            err = E.map_call_exception(ex)
            if not isinstance(err, E.DatabaseBusy) or not args:
                raise err from ex
            return _busy_retry(args[0], fn, args, kwargs, ex)

    return call  # type: ignore[return-value]


class StoreProxy:
    """Base of TextVault and VectorKVault: members that mean the same on both.

    Subclasses set ``self._vault`` (the native object), ``self.path`` and
    ``self.table`` and the class attribute ``_repr_name``, and define
    ``insert(key, value)``, ``get(key)``, ``_key_error(key)`` (the
    ``KeyError`` that ``store[key]`` raises on a miss) and ``_repr_fields()``
    (the middle of the repr).

    Busy files: every mapped call follows the busy policy below.

    Thread safety: calls on one instance are serialised by the native object;
    SQLite work runs with the GIL released.
    """

    _vault: Any
    path: Any
    table: str
    _repr_name = "StoreProxy"

    #: Busy policy (docs/shared-mode.md, "Busy databases"), KVault's: a call
    #: that finds the file locked waits up to ``busy_timeout`` seconds
    #: (polling on SQLite's busy-handler schedule), and is attempted up to
    #: ``retries`` times in total with sleeps of ``backoff_base``, doubling.
    #: Set on an instance to change it for that store; ``retries = 1`` with
    #: ``busy_timeout = 0`` fails at once.
    busy_timeout: float = BUSY_TIMEOUT
    retries: int = _kvault.KV_DEFAULTS["retries"]
    backoff_base: float = _kvault.KV_DEFAULTS["backoff_base"]

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

    def _switches(self) -> Any:
        """The native object, for a switch call: InvalidArgument once the
        store is closed, as every other method raises."""
        if self._vault.closed:
            raise E.InvalidArgument(f"Cannot operate on closed {self._repr_name}")
        return self._vault

    def enable_auto_pack(self, use_pickle: bool = True) -> None:
        """Auto-pack on (also turns headers on); ``use_pickle`` allows the
        pickle fallback."""
        self._switches().enable_auto_pack(use_pickle)

    def disable_auto_pack(self) -> None:
        """Auto-pack off: values must be bytes-like; reads return stored bytes."""
        self._switches().disable_auto_pack()

    def auto_pack_enabled(self) -> bool:
        """Whether auto-pack is on."""
        return self._switches().auto_pack_enabled()

    def enable_headers(self) -> None:
        """Write the 10-byte header for non-bytes values."""
        self._switches().enable_headers()

    def disable_headers(self) -> None:
        """Store encoded payloads without a header."""
        self._switches().disable_headers()

    def headers_enabled(self) -> bool:
        """Whether headers are on."""
        return self._switches().headers_enabled()

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

    # ------------------------------------------------------------ pickling

    def _open_native(self, factory: Callable[..., Any], path: Any, unpickle: Any,
                     *args: Any, **kwargs: Any) -> Any:
        """Open the native store on ``path`` (the constructors' shared part).

        A directory or a file that is not a database raises ``RuntimeError``
        naming the path (the constructors raise raw builtins, docs/api.md
        §7.1, §8.1); ``unpickle`` (``None``/``True``/``False``) is resolved
        with ``KVAULT_UNPICKLE`` (``ValueError`` for a bad value) and applied.
        """
        fspath = os.fsdecode(os.fspath(path))
        self._unpickle = _safety.unpickle_setting(unpickle, ValueError)
        E.open_check(fspath, RuntimeError)
        # the busy policy of the store's calls: opening creates the tables
        # and switches the file to WAL, which another process may hold up
        attempts = max(1, int(self.retries))
        for attempt in range(attempts):
            try:
                native = factory(fspath, *args, **kwargs)
                break
            except _kvault.BusyError:
                if attempt + 1 == attempts:
                    raise
                time.sleep(float(self.backoff_base) * (2 ** attempt))
            except (RuntimeError, OSError) as exc:
                text = E.open_failure_text(fspath, str(exc))
                if text is None:
                    raise
                raise RuntimeError(text) from exc
        _safety.apply_safe_mode(native, self._unpickle)
        return native

    def _reopen_args(self) -> tuple[tuple, dict]:
        """``(args, kwargs)`` that reopen this store (subclasses)."""
        raise NotImplementedError

    def __reduce__(self) -> Any:
        """Pickle as the path and constructor options (with the auto-pack
        and header switches); unpickling opens the file again, e.g. in a
        ``multiprocessing`` worker started with ``spawn``. Every write is
        already in the file (these stores have no write-back cache), and
        ``unpickle`` is carried as the effective setting. ``use_pickle`` and
        the busy policy attributes are not carried. A closed store raises
        ``ValueError``; one on ``":memory:"`` raises ``TypeError``."""
        fspath = os.fsdecode(os.fspath(self.path))
        _safety.check_picklable(self._repr_name, fspath, bool(self._vault.closed))
        args, kwargs = self._reopen_args()
        kwargs["unpickle"] = self._unpickle
        return (_safety.reopen, (type(self), args, kwargs, _safety.switch_state(self)))

    def __repr__(self) -> str:
        return (f"{self._repr_name}(path={self.path!r}, table={self.table!r}, "
                f"{self._repr_fields()}, count={self.count()})")
