"""``KVault``: the key-value store (Python side).

The per-call work (auto-pack encoding/decoding, SQLite statements, the
write-back cache, blob streaming) happens in the native class
``kohakuvault._kvault._KVault``. This module adds what Python does best: the
``Mapping`` protocol, the busy-retry loop, the mapping of native errors to
:mod:`kohakuvault.errors`, context managers and the cache flush daemon.

Hot paths (``kv[k]``, ``kv[k] = v``, ``get``, ``put``, ``k in kv``) call the
native bound method directly inside ``try:``; the retry/mapping machinery
runs only when the native call raised.
"""

from __future__ import annotations

import functools
import os
import re
import reprlib
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import contextmanager

from . import _forksafe, _kvault, _safety
from .errors import (
    InvalidArgument,
    KohakuVaultError,
    NotFound,
    map_exception,
    open_check,
    open_failure_text,
    map_call_exception,
)

__all__ = ["KVault"]

_CLOSED_MSG = "Cannot operate on closed KVault"
# Defaults of every option, from the native module (python/ext/kv_backend.h).
_DEFAULTS = _kvault.KV_DEFAULTS
_MISSING = object()
# "No limit" for key listings that should see every key (__iter__, clear).
_ALL_KEYS = 1 << 62
# Flush daemon wake-up period, seconds (docs/api.md §4.7).
_DAEMON_TICK = 0.5
# The write modes (docs/shared-mode.md, "Write modes"); the first is the default.
_WRITE_MODES = ("applied", "pipelined", "replicated")


def _key_bytes(key):
    """The key as stored: ``str`` → UTF-8 bytes, anything else unchanged
    (also a ``str`` without a UTF-8 form: the native call refuses it)."""
    if isinstance(key, str):
        try:
            return key.encode("utf-8")
        except UnicodeEncodeError:
            return key
    return key


def _check_write_mode(write_mode):
    if not isinstance(write_mode, str) or write_mode not in _WRITE_MODES:
        raise InvalidArgument(
            f"write_mode must be 'applied', 'pipelined' or 'replicated', got {write_mode!r}"
        )


def _check_chunk(chunk_size):
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise InvalidArgument(f"chunk_size must be a positive int, got {chunk_size!r}")
    if chunk_size > sys.maxsize:
        raise InvalidArgument(
            f"chunk_size must be a positive int of at most {sys.maxsize}, got {chunk_size}")


# Integer options of the constructor and the C type range the native layer
# holds them in: (name, lowest, highest). A Python int outside the range is an
# InvalidArgument naming the option (instead of the converter's OverflowError
# "Python int too large to convert to C ..."); other types are left to the
# native layer's own checks.
_INT_OPTIONS = (
    ("page_size", -(2**31), 2**31 - 1),
    ("mmap_size", -(2**63), 2**63 - 1),
    ("cache_kb", -(2**63), 2**63 - 1),
    ("read_cache_bytes", -sys.maxsize - 1, sys.maxsize),
)


def _check_int_options(values):
    for name, low, high in _INT_OPTIONS:
        v = values[name]
        if isinstance(v, int) and not isinstance(v, bool) and not low <= v <= high:
            raise InvalidArgument(f"{name} must be between {low} and {high}, got {v}")


def _flush_daemon(native, interval: float, stop: threading.Event) -> None:
    """Body of the cache flush daemon thread (docs/api.md §4.7).

    Wakes every 0.5 s; flushes when at least ``interval`` seconds passed
    since its last flush that wrote something. Errors are ignored (a busy
    database simply makes the next tick try again; the entries stay cached).
    Holds only the native object, so it never keeps the proxy alive.
    """
    last = time.monotonic()
    while not stop.wait(_DAEMON_TICK):
        now = time.monotonic()
        if now - last < interval:
            continue
        try:
            if native.closed:
                return
            if native.flush_cache() > 0:
                last = now
        except Exception:  # noqa: BLE001 - documented: daemon errors are ignored
            pass


class KVault(Mapping):
    """A key-value store in one SQLite table, with auto-packed values.

    ``KVault`` is a :class:`collections.abc.Mapping` (``==`` compares as a
    dict; instances are unhashable) with the mutating methods of a dict
    added. Keys are ``bytes`` or ``str`` (stored as UTF-8 bytes, always
    bound as BLOBs); keys come back as ``bytes``. Values go through
    auto-pack (see docs/api.md §3): ``bytes`` are stored raw, other values get a
    10-byte header and a MessagePack / JSON / CBOR / UTF-8 / pickle /
    DataPacker payload.

    Args:
        path: ``str``, :class:`pathlib.Path` or any ``os.PathLike``;
            ``":memory:"`` and ``file:`` URIs are accepted. Parent
            directories are created.
        chunk_size: default piece size in bytes for :meth:`put_file` and
            :meth:`get_to_file` (default 1 MiB).
        retries: attempts per call when SQLite reports busy/locked (default
            4). ``retries=0`` (docs/api.md §2.4) is
            treated as 1: every call is attempted at least once.
        backoff_base: first sleep between busy attempts, in seconds; it
            doubles after each attempt (defaults give 0.02, 0.04, 0.08 s).
        table: table name; must be a plain SQL identifier. Several vaults
            with different tables may share one file.
        enable_wal: ``journal_mode=WAL`` and ``wal_autocheckpoint=1000``.
        page_size: SQLite page size in bytes, applied only when the file is
            new (default 32768).
        mmap_size: ``PRAGMA mmap_size`` in bytes (default 256 MiB).
        cache_kb: SQLite page cache in KiB (``PRAGMA cache_size=-cache_kb``).
        shared: ``"auto"`` (default) attaches to a ``kvault-writer`` when one
            serves the file and opens it embedded otherwise, following a
            writer that starts or stops later; ``"spawn"`` also starts a
            writer when none serves the file; ``True`` requires a writer;
            ``False`` always opens embedded. The environment variable
            ``KVAULT_SHARED`` (``auto``, ``spawn``, ``off``, ``require``)
            replaces the default. See docs/shared-mode.md.
        read_cache_bytes: bytes of the process-local read cache (default
            32 MiB; 0 turns it off). Embedded: hot ``get`` calls are served
            from it without touching SQLite as long as SQLite's WAL-index
            header shows no commit since the value was read, so a read never
            returns a value older than the last commit made before it began
            (docs/storage-layout.md); off outside WAL mode. Attached: small
            values (up to 16 KiB) whose decoded type is immutable are kept
            as Python objects and served as long as the writer has applied
            no write to their key's stripe since (docs/shared-mode.md).
        write_mode: when writes (:meth:`put`, ``kv[k] = v``,
            :meth:`put_many`, :meth:`update`, :meth:`delete`,
            :meth:`delete_many`) return. ``"applied"`` (default): once every
            process sees the write. ``"pipelined"``: shared mode, once the
            write is in this process's submission ring; this object reads
            its own writes at once, other processes see them when the writer
            applies them, and :meth:`flush` waits for that. Embedded, both
            modes apply the write before returning. ``"replicated"``: once
            the write is committed, as ``put(..., sync=True)``: shared mode,
            the writer committed it to SQLite, and in a cluster a quorum of
            nodes stored it (docs/replication.md); embedded, committed (the
            write-back cache, if any, flushed). See docs/shared-mode.md,
            "Write modes".
        unpickle: keyword-only. ``True``: values stored with the pickle
            encoding are read with ``pickle.loads`` (which runs code from the
            file) and values that need pickle are written with it. ``False``
            (safe mode, for files you do not trust): reading a pickled value
            raises :class:`InvalidArgument` naming the key, without calling
            ``pickle.loads``, and writing a value that needs pickle raises
            :class:`InvalidArgument` (so the process never writes what it
            could not read). ``None`` (default): the environment variable
            ``KVAULT_UNPICKLE`` (``0``/``false``/``no``/``off`` turn it off),
            else ``True``. See docs/security.md, "Untrusted files".

    Pickling: a vault pickles as its path and constructor options and
    reopens the file when unpickled (see :meth:`__reduce__`); pending
    write-back cache entries are flushed first.

    Always set: ``synchronous=NORMAL``, ``temp_store=MEMORY``, busy timeout
    5000 ms.

    Raises:
        InvalidArgument: ``path`` is not path-like, bad table name, a
            ``write_mode`` other than ``"applied"``/``"pipelined"``/
            ``"replicated"``, an
            integer option outside its range, a bad ``shared`` or
            ``unpickle`` value, or other bad parameter.
        DatabaseBusy: the file stayed locked through every retry.
        KohakuVaultError: SQLite refused to open or set up the file; the
            message names the path ("<path> is a directory, not a database
            file", "<path> is not a SQLite database file ...").

    Thread safety: one instance may be used from several threads; the native
    object serialises calls with an internal mutex and releases the GIL
    while it waits on SQLite. Several processes may open the same file.
    """

    # ------------------------------------------------------------------ setup

    def __init__(
        self,
        path,
        *,
        chunk_size: int = _DEFAULTS["chunk_size"],
        retries: int = _DEFAULTS["retries"],
        backoff_base: float = _DEFAULTS["backoff_base"],
        table: str = _DEFAULTS["table"],
        enable_wal: bool = _DEFAULTS["enable_wal"],
        page_size: int = _DEFAULTS["page_size"],
        mmap_size: int = _DEFAULTS["mmap_size"],
        cache_kb: int = _DEFAULTS["cache_kb"],
        shared="auto",
        read_cache_bytes: int = _DEFAULTS["read_cache_bytes"],
        write_mode: str = _WRITE_MODES[0],
        unpickle=None,
    ):
        self._closed = True  # until the native object exists (repr, close)
        self._native = None
        self._daemon = None
        self._daemon_stop = None
        self._cache_locked = False
        try:
            fspath = os.fspath(path)
        except TypeError as exc:
            raise InvalidArgument(str(exc)) from exc
        if isinstance(fspath, bytes):
            fspath = os.fsdecode(fspath)
        _check_chunk(chunk_size)
        _check_int_options(locals())
        unpickle = _safety.unpickle_setting(unpickle, InvalidArgument)
        try:
            retries = int(retries)
            backoff_base = float(backoff_base)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(str(exc)) from exc
        if backoff_base < 0:
            raise InvalidArgument("backoff_base must be >= 0")
        _check_write_mode(write_mode)
        self._path = fspath
        self._table = table
        self._chunk_size = chunk_size
        self._retries = max(1, retries)
        self._backoff_base = backoff_base
        self._write_mode = write_mode
        self._unpickle = unpickle
        # constructor options, for pickling (__reduce__)
        self._options = dict(
            chunk_size=chunk_size, retries=retries, backoff_base=backoff_base, table=table,
            enable_wal=enable_wal, page_size=page_size, mmap_size=mmap_size,
            cache_kb=cache_kb, shared=shared, read_cache_bytes=read_cache_bytes,
            write_mode=write_mode, unpickle=unpickle,
        )
        open_check(fspath, KohakuVaultError)

        self._closed = False  # so that _fail maps open errors instead of "closed"
        # shared mode: docs/shared-mode.md
        attach_deadline = time.monotonic() + _ATTACH_RETRY_S
        while True:
            attach, route = _attach(fspath, table, shared)
            self._shared_at_open = attach != _EMBEDDED
            try:
                native_cls = functools.partial(
                    _kvault._KVault,
                    read_cache_bytes=read_cache_bytes,
                    attach=attach,
                    write_mode=write_mode,
                    route=route,
                )
                native = self._call(
                    native_cls,
                    fspath,
                    table,
                    chunk_size,
                    bool(enable_wal),
                    page_size,
                    mmap_size,
                    cache_kb,
                )
                break
            except KohakuVaultError as exc:
                if self._shared_at_open and not isinstance(exc, InvalidArgument) \
                        and time.monotonic() < attach_deadline:
                    # The writer stopped (a spawned one lingering out) between
                    # the look at its registry and the attach: look again
                    # (spawn a new one, open embedded or wait, per shared=).
                    time.sleep(0.02)
                    continue
                self._closed = True
                text = open_failure_text(fspath, str(exc))
                if text is None or isinstance(exc, InvalidArgument):
                    raise
                raise KohakuVaultError(text) from exc
            except BaseException:
                self._closed = True
                raise
        _safety.apply_safe_mode(native, unpickle)
        self._native = native
        # Bound native methods, looked up once: the hot paths below do one
        # instance-attribute lookup and one C call.
        self._nget = native.get
        self._nget_or = native.get_or
        self._nput = native.put
        self._nexists = native.exists

    @property
    def shared(self) -> bool:
        """Whether the object is attached to a kvault-writer now (on a
        table the writer does not serve: whether its writes go through
        it). With
        ``shared="auto"`` this changes when a writer starts (the next write
        attaches) or stops cleanly or dies (the object continues embedded,
        or with ``"spawn"`` attaches to a writer it starts); see
        docs/shared-mode.md."""
        native = self._native
        if native is None or native.closed:
            return self._shared_at_open
        return native.attached

    # ------------------------------------------------------ error machinery

    def _fail(self, exc, fn, args, key):
        """Slow path after a native call ``fn(*args)`` raised ``exc``.

        Closed vault → ``ValueError``; a busy error → retried up to
        ``retries`` attempts in total with exponential backoff; everything
        else → the mapped exception at once. Returns ``fn``'s result when a
        retry succeeds.
        """
        if self._closed:
            raise ValueError(_CLOSED_MSG) from None
        if not isinstance(exc, _kvault.BusyError):
            raise map_call_exception(exc, key=key) from exc
        delay = self._backoff_base
        for _ in range(self._retries - 1):
            time.sleep(delay)
            delay *= 2
            try:
                return fn(*args)
            except Exception as again:  # noqa: BLE001 - mapped below
                if self._closed:
                    raise ValueError(_CLOSED_MSG) from None
                exc = again
                if not isinstance(again, _kvault.BusyError):
                    raise map_call_exception(again, key=key) from again
        raise map_call_exception(exc, key=key) from exc

    def _call(self, fn, *args, key=None):
        """Run a native call through the retry loop and error mapping."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - mapped in _fail
            return self._fail(exc, fn, args, key)

    def _n(self):
        """The native object, or ``ValueError`` when closed."""
        if self._closed:
            raise ValueError(_CLOSED_MSG)
        return self._native

    # --------------------------------------------------------- hot paths

    def __getitem__(self, key):
        """``kv[key]``: the decoded value (docs/api.md §3.3).

        Raises:
            KeyError: ``key`` (as passed) is not stored (nor in the cache).
            InvalidArgument: key is not ``bytes``/``str``; malformed header.
            ValueError: the vault is closed.
        """
        try:
            return self._nget(key)
        except Exception as exc:  # noqa: BLE001
            try:
                return self._fail(exc, self._nget, (key,), key)
            except NotFound:
                raise KeyError(key) from None

    def get(self, key, default=None):
        """The decoded value of ``key``, or ``default`` when it is missing.

        Looks in the write-back cache first, then SQLite.

        Raises:
            InvalidArgument: key is not ``bytes``/``str``; the stored value
                has a malformed header.
            ValueError: the vault is closed.
        """
        try:
            return self._nget_or(key, default)
        except Exception as exc:  # noqa: BLE001
            return self._fail(exc, self._nget_or, (key, default), key)

    def put(self, key, value, *, sync: bool = False, write_mode=None) -> None:
        """Store ``value`` under ``key`` (insert or replace).

        Auto-pack on: any value, encoded per docs/api.md §3.2. Auto-pack off:
        ``bytes``, ``bytearray`` or ``memoryview`` (copied). Goes through the
        write-back cache when one is enabled.

        Args:
            sync: return once the value is committed to SQLite (shared mode:
                the writer committed it; embedded: the write-back cache, if
                any, is flushed), whatever the write mode.
            write_mode: ``"applied"``, ``"pipelined"`` or ``"replicated"``
                for this call;
                ``None`` (default): the vault's :attr:`write_mode`.

        Raises:
            InvalidArgument: bad key type; value not bytes-like with
                auto-pack off (``"value must be bytes-like (or enable
                auto-pack)"``); value not encodable (``use_pickle=False``,
                unknown wrapper, msgpack/cbor wrapper failure); a
                ``write_mode`` other than ``"applied"``/``"pipelined"``/
                ``"replicated"``.
            DatabaseBusy: still locked after the retries.
            ValueError: the vault is closed.
        """
        if sync or write_mode is not None:
            self._put_with(key, value, sync, write_mode)
            return
        try:
            self._nput(key, value)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc, self._nput, (key, value), key)

    def _put_with(self, key, value, sync, write_mode) -> None:
        """``put`` with ``sync=True`` or a ``write_mode`` for this call."""
        native = self._n()
        options = {"sync": True} if sync else {}
        if write_mode is not None:
            _check_write_mode(write_mode)
            options["write_mode"] = write_mode
        self._call(functools.partial(native.put, **options), key, value, key=key)

    def put_many(self, items) -> None:
        """Store every ``(key, value)`` pair of ``items`` as one batch.

        Args:
            items: a Mapping (its ``.items()`` are used) or an iterable of
                ``(key, value)`` pairs.

        Every pair is checked (key type, value encodable) before any is
        stored. Embedded without a write-back cache: one transaction; with
        a cache each pair follows the cache rules of :meth:`put`. Shared
        mode: every record enters the ring, the writer is woken once, and
        the call waits once (``"applied"``) or not at all
        (``"pipelined"``).

        Raises:
            InvalidArgument: a malformed pair, a bad key or value (nothing
                is stored).
            DatabaseBusy: still locked after the retries.
            ValueError: the vault is closed.
        """
        native = self._n()
        src = items.items() if isinstance(items, Mapping) else items
        try:
            pairs = [(k, v) for k, v in src]
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(
                f"put_many expects a mapping or (key, value) pairs: {exc}"
            ) from exc
        self._call(native.put_many, pairs)

    @property
    def write_mode(self) -> str:
        """``"applied"``, ``"pipelined"`` or ``"replicated"``: when writes return (set at
        construction; docs/shared-mode.md, "Write modes")."""
        return self._write_mode

    def flush(self) -> None:
        """Barrier: return once every write this object made is applied.

        Shared mode: every attached process then sees them, and a crash of
        the writer loses none of them (the next writer replays applied
        records); a machine crash may (use ``sync=True`` or
        :meth:`flush_cache` for committed). Embedded: flushes the
        write-back cache if one is enabled and not locked (like
        :meth:`flush_cache`), else does nothing.

        Raises:
            DatabaseBusy / KohakuVaultError: writing cached entries failed.
            ValueError: the vault is closed.
        """
        self._call(self._n().flush)

    def __setitem__(self, key, value) -> None:
        """``kv[key] = value``: same as :meth:`put`."""
        try:
            self._nput(key, value)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc, self._nput, (key, value), key)

    def __contains__(self, key) -> bool:
        """``key in kv``: whether a row exists in SQLite (the write-back
        cache is not consulted). Any exception (bad key type, closed vault,
        busy after retries) gives ``False``."""
        try:
            return self._nexists(key)
        except Exception as exc:  # noqa: BLE001
            try:
                return self._fail(exc, self._nexists, (key,), key)
            except Exception:  # noqa: BLE001 - documented: any error → False
                return False

    # ------------------------------------------------------ other methods

    def exists(self, key) -> bool:
        """Whether ``key`` has a row in SQLite (the cache is not consulted).

        Raises:
            InvalidArgument: key is not ``bytes``/``str``.
            ValueError: the vault is closed.
        """
        return self._call(self._n().exists, key, key=key)

    def delete(self, key) -> bool:
        """Delete ``key``. Returns ``True`` if a stored row or a value still
        waiting in the write-back cache was removed.

        (A value still waiting in the write-back cache is dropped too, so
        ``kv[k] = v; del kv[k]``
        behaves like a dict.)

        Raises:
            InvalidArgument: key is not ``bytes``/``str``.
            ValueError: the vault is closed.
        """
        return self._call(self._n().delete, key, key=key)

    def delete_many(self, keys) -> int:
        """Delete every key of ``keys`` (an iterable of ``bytes``/``str``)
        as one batch; returns how many distinct keys had a stored row or a
        value waiting in the write-back cache, as :meth:`delete` counts.

        Embedded: one transaction. Shared mode: every key is looked up, then
        every record enters the ring, the writer is woken once and the call
        waits once (``"applied"``) or not at all (``"pipelined"``).

        Raises:
            InvalidArgument: ``keys`` is a single key or not iterable, or a
                key is not ``bytes``/``str`` (nothing is deleted).
            ValueError: the vault is closed.
        """
        native = self._n()
        if isinstance(keys, (str, bytes, bytearray, memoryview)):
            raise InvalidArgument("delete_many expects an iterable of keys, not one key")
        if not isinstance(keys, (list, tuple)):
            try:
                keys = list(keys)
            except TypeError as exc:
                raise InvalidArgument(f"delete_many expects an iterable of keys: {exc}") from exc
        return self._call(native.delete_many, keys)

    def __delitem__(self, key) -> None:
        """``del kv[key]``; ``KeyError(key)`` when nothing was deleted."""
        if not self.delete(key):
            raise KeyError(key)

    def __len__(self) -> int:
        """Number of rows in SQLite (``SELECT COUNT(*)``); values still in
        the write-back cache are not counted."""
        return self._call(self._n().count)

    def keys(self, prefix=None, limit: int = _DEFAULTS["keys_limit"]):
        """Generator of keys (``bytes``) in ascending bytewise order.

        Args:
            prefix: ``bytes``/``str`` or ``None``. Selects keys with
                ``prefix <= k < prefix + b"\\xff"`` (so keys continuing the
                prefix with a 0xFF byte are not listed — format quirk).
            limit: at most this many keys in total (default 10000).

        The write-back cache is not consulted. Being a generator, argument
        errors and the closed check surface at the first ``next()``.

        Raises (on iteration):
            InvalidArgument: bad prefix type or limit.
            ValueError: the vault is closed.
        """
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InvalidArgument(f"limit must be an int, got {type(limit).__name__}")
        it = self._call(self._n().keys, prefix, limit)
        nxt = it.__next__
        while True:
            try:
                k = nxt()
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001
                if self._closed:
                    raise ValueError(_CLOSED_MSG) from None
                raise map_call_exception(exc) from exc
            yield k

    def __iter__(self):
        """Iterate over every stored key, bytewise order (like
        ``keys()`` but without its 10000-key default limit)."""
        return self.keys(limit=_ALL_KEYS)

    def values(self):
        """Generator of decoded values, ``get(k)`` for each ``k`` in
        ``keys()`` (so at most 10000, like ``keys()``)."""
        for k in self.keys():
            yield self.get(k)

    def items(self):
        """Generator of ``(key bytes, value)`` pairs in ``keys()`` order (at
        most 10000, like ``keys()``)."""
        for k in self.keys():
            yield k, self.get(k)

    def pop(self, key, default=None):
        """Remove ``key`` and return its value; ``default`` if it is missing.

        (As ``dict.pop`` with a default; unlike it, a missing key without a
        default gives ``None``, not ``KeyError``.)

        Raises:
            InvalidArgument: key is not ``bytes``/``str``.
            ValueError: the vault is closed.
        """
        value = self.get(key, _MISSING)
        if value is _MISSING:
            return default
        self.delete(key)
        return value

    def setdefault(self, key, default):
        """The value of ``key``; if missing, store ``default`` and return it.

        (Returns ``default`` itself, whatever its type, as
        ``dict.setdefault`` does.)
        """
        value = self.get(key, _MISSING)
        if value is not _MISSING:
            return value
        self.put(key, default)
        return default

    def update(self, other, **kwargs) -> None:
        """Store every pair of ``other`` then of ``kwargs``.

        Args:
            other: a Mapping (its ``.items()`` are used) or an iterable of
                ``(key, value)`` pairs.
            kwargs: more pairs (``str`` keys).

        All pairs go as one :meth:`put_many` batch: without a write-back
        cache one transaction (all or none are stored when one pair is bad);
        with a cache each pair follows the cache rules of :meth:`put`; in
        shared mode one wake-up of the writer and one wait (none when
        ``write_mode="pipelined"``).

        Raises:
            InvalidArgument: a bad key or value, or a malformed pair.
            ValueError: the vault is closed.
        """
        src = other.items() if isinstance(other, Mapping) else other
        try:
            pairs = [(k, v) for k, v in src]
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"update expects a mapping or (key, value) pairs: {exc}") from exc
        pairs.extend(kwargs.items())
        if pairs:
            self._call(self._n().put_many, pairs)

    def clear(self) -> None:
        """Delete every key.

        Not limited to 10000 keys like :meth:`keys`: the cache is flushed
        first (unless locked) and
        keys are deleted until none is left. Values held in a *locked* cache
        are not visible to this call and are written when it unlocks.
        """
        native = self._n()
        if not self._cache_locked:
            self.flush_cache()
        while True:
            batch = list(self.keys(limit=_DEFAULTS["keys_limit"]))
            if not batch:
                return
            self._call(native.delete_many, batch)

    # ---------------------------------------------------------- streaming

    def put_file(self, key, reader, *, size=None, chunk_size=None) -> None:
        """Stream a file-like object (or bytes-like) into ``key``.

        The value is stored raw (no header), outside the write-back cache,
        through SQLite's incremental blob API: a zero blob of the final size
        is inserted, then filled in ``chunk_size`` pieces (reads kept in
        flight with io_uring when ``reader`` has a real ``fileno()``).
        Memory use is a few chunks, whatever the size.

        Args:
            key: ``bytes``/``str``.
            reader: an object with ``read(n) -> bytes`` (files, ``BytesIO``,
                pipes, sockets...) or a ``bytes``/``bytearray``/``memoryview``
                (stored raw like ``bytes``, without going through
                auto-pack).
            size: bytes to store; default: what remains from the current
                position (``fstat`` for regular files, else seek to end and
                back); if that is unknown (pipes), the stream is read whole
                into memory and stored.
            chunk_size: piece size in bytes; default the vault's
                ``chunk_size``.

        Raises:
            InvalidArgument: ``reader`` has no ``read`` (``"reader must be
                file-like or bytes-like"``), ``read`` returned a non-bytes
                object, bad ``size``/``chunk_size``.
            KohakuVaultError: the stream ended early (``"short write: wrote
                X of Y bytes"``; the row then keeps a zero-filled tail).
            IoError: the OS failed reading the file.
            ValueError: the vault is closed.

        A busy database is retried only when ``reader`` is seekable (it is
        rewound to its starting position first).
        """
        native = self._n()
        if isinstance(reader, (bytes, bytearray, memoryview)):
            self._call(native.put, key, bytes(reader), key=key)
            return
        if not hasattr(reader, "read"):
            raise InvalidArgument("reader must be file-like or bytes-like")
        _check_chunk(chunk_size)
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise InvalidArgument(f"size must be a non-negative int, got {size!r}")
        chunk = chunk_size if chunk_size is not None else self._chunk_size
        start = _tell(reader)
        args = (key, reader, size, chunk)
        try:
            native.put_file(*args)
        except Exception as exc:  # noqa: BLE001
            if start is None:
                self._fail_no_retry(exc, key)
            self._fail(exc, _rewinding(native.put_file, reader, start), args, key)

    def get_to_file(self, key, writer, *, chunk_size=None) -> int:
        """Write the stored bytes of ``key`` to ``writer``; returns the
        number of bytes written.

        The bytes are written exactly as stored (a packed value includes its
        10-byte header; nothing is decoded). A value still in the write-back
        cache is written with one ``write()``; a stored value is streamed in
        ``chunk_size`` pieces (writes kept in flight with io_uring when
        ``writer`` has a real ``fileno()``), so memory use is a few chunks.

        Args:
            key: ``bytes``/``str``.
            writer: an object with ``write(b)``: files, ``BytesIO``, pipes,
                sockets... A ``write`` that reports fewer bytes than it was
                given raises :class:`IoError` (``"short write: ..."``).
            chunk_size: piece size in bytes; default the vault's
                ``chunk_size``.

        Returns:
            int, bytes written.

        Raises:
            NotFound: ``key`` is missing (``.key`` is the key as bytes).
            InvalidArgument: ``writer`` has no ``write``; bad ``chunk_size``.
            IoError / KohakuVaultError: writing failed.
            ValueError: the vault is closed.
        """
        native = self._n()
        if not hasattr(writer, "write"):
            raise InvalidArgument("writer must be file-like (have a write method)")
        _check_chunk(chunk_size)
        chunk = chunk_size if chunk_size is not None else self._chunk_size
        kb = _key_bytes(key)
        start = _tell(writer)
        args = (key, writer, chunk)
        try:
            return native.get_to_file(*args)
        except Exception as exc:  # noqa: BLE001
            if start is None:
                self._fail_no_retry(exc, kb)
            return self._fail(exc, _rewinding(native.get_to_file, writer, start), args, kb)

    def _fail_no_retry(self, exc, key):
        if self._closed:
            raise ValueError(_CLOSED_MSG) from None
        raise map_call_exception(exc, key=key) from exc

    # ----------------------------------------------------- write-back cache

    def enable_cache(
        self,
        *,
        cap_bytes: int = _DEFAULTS["cache_cap_bytes"],
        flush_threshold: int = _DEFAULTS["cache_flush_threshold"],
        flush_interval: float | None = None,
    ) -> None:
        """Install an in-memory write-back cache for :meth:`put`.

        Puts are kept in memory (encoded) and written in one transaction per
        flush. A value with ``len(key)+len(value) > cap_bytes`` bypasses the
        cache (after a flush); a put that would overflow ``cap_bytes``
        flushes first; reaching ``flush_threshold`` bytes flushes. ``get``
        and ``get_to_file`` see cached values; ``len``, ``in``, ``exists``
        and ``keys`` see only SQLite. An existing cache is flushed first
        (never dropped).

        Args:
            cap_bytes: cache capacity in bytes (key + encoded value sizes).
            flush_threshold: flush when the cached bytes reach this.
            flush_interval: seconds; if given, a daemon thread flushes within
                about ``flush_interval + 0.5`` s of a write (replacing a
                running daemon).

        Raises:
            InvalidArgument: non-positive sizes or interval.
            ValueError: the vault is closed.
        """
        native = self._n()
        for name, v in (("cap_bytes", cap_bytes), ("flush_threshold", flush_threshold)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise InvalidArgument(f"{name} must be a positive int, got {v!r}")
        if flush_interval is not None:
            try:
                flush_interval = float(flush_interval)
            except (TypeError, ValueError) as exc:
                raise InvalidArgument(f"flush_interval must be a number: {exc}") from exc
            if not flush_interval > 0:
                raise InvalidArgument("flush_interval must be > 0")
        self._call(native.enable_cache, cap_bytes, flush_threshold)
        if flush_interval is not None:
            self._stop_daemon()
            self._start_daemon(native, flush_interval)
            _forksafe.track(self)

    def _start_daemon(self, native, interval: float) -> None:
        stop = threading.Event()
        t = threading.Thread(
            target=_flush_daemon,
            args=(native, interval, stop),
            name="kohakuvault-kv-flush",
            daemon=True,
        )
        self._daemon_stop = stop
        self._daemon = t
        self._daemon_interval = interval
        t.start()

    def _after_fork_in_child(self) -> None:
        """In a forked child (kohakuvault._forksafe): the parent's flush
        daemon does not exist here; start the child's own."""
        if self._daemon is not None and not self._closed:
            self._start_daemon(self._native, self._daemon_interval)

    def _stop_daemon(self) -> None:
        t, stop = self._daemon, self._daemon_stop
        self._daemon = self._daemon_stop = None
        if t is not None:
            stop.set()
            t.join(timeout=2.0)

    def disable_cache(self) -> None:
        """Stop the flush daemon, flush the cache and remove it.

        While the cache is locked the entries are written directly anyway
        (never dropped). No-op without a cache.

        Raises:
            DatabaseBusy / KohakuVaultError: writing the entries failed
                (they stay cached).
            ValueError: the vault is closed.
        """
        native = self._n()
        self._stop_daemon()
        self._call(native.disable_cache)

    def flush_cache(self) -> int:
        """Write every cached entry in one transaction; returns the number
        of entries written. 0 when closed, without a cache, when it is empty
        or while it is locked (a locked cache refuses every flush)."""
        if self._closed:
            return 0
        return self._call(self._native.flush_cache)

    @contextmanager
    def cache(
        self,
        cap_bytes: int = _DEFAULTS["cache_cap_bytes"],
        flush_threshold=None,
        auto_flush: bool = True,
    ):
        """Context manager: enable the write-back cache for a block.

        Args:
            cap_bytes: cache capacity in bytes (default 64 MiB).
            flush_threshold: bytes that trigger a flush; ``None`` means
                ``cap_bytes // 4``.
            auto_flush: flush on exit (the cache is disabled on exit anyway,
                which also flushes).

        Yields the vault. On exit, also on exception, the cache is flushed
        and disabled.
        """
        if flush_threshold is None:
            flush_threshold = max(1, cap_bytes // 4) if isinstance(cap_bytes, int) else 0
        self.enable_cache(cap_bytes=cap_bytes, flush_threshold=flush_threshold)
        try:
            yield self
        finally:
            if not self._closed:
                if auto_flush:
                    self.flush_cache()
                self.disable_cache()

    @contextmanager
    def lock_cache(self):
        """Context manager: while inside, the cache refuses every flush
        (explicit, threshold, daemon); puts that do not fit the cap are
        written directly instead of being dropped. Yields ``None``.

        Raises:
            ValueError: the vault is closed.
        """
        native = self._n()
        self._call(native.set_cache_locked, True)
        self._cache_locked = True
        try:
            yield None
        finally:
            self._cache_locked = False
            if not self._closed:
                self._call(native.set_cache_locked, False)

    # ------------------------------------------------------------ switches

    def enable_auto_pack(self, use_pickle: bool = True) -> None:
        """Turn auto-pack on (and headers on). ``use_pickle=False`` refuses
        values that need pickle (reading pickled values still works).
        Records feature ``auto_pack_v1`` in ``kohakuvault_meta``."""
        native = self._n()
        self._call(native.enable_auto_pack, bool(use_pickle))
        self._call(native.enable_headers)
        self._call(native.record_feature, "auto_pack_v1")

    def disable_auto_pack(self) -> None:
        """Turn auto-pack off: puts require bytes-like values and reads
        return the stored bytes (headers included). Headers switch kept."""
        self._call(self._n().disable_auto_pack)

    def auto_pack_enabled(self) -> bool:
        """Whether auto-pack is on (it starts on)."""
        return self._call(self._n().auto_pack_enabled)

    def enable_headers(self) -> None:
        """Write the 10-byte header on packed values (the default). Records
        feature ``headers_v1`` in ``kohakuvault_meta``."""
        native = self._n()
        self._call(native.enable_headers)
        self._call(native.record_feature, "headers_v1")

    def disable_headers(self) -> None:
        """Store packed payloads bare (they then read back as raw bytes)."""
        self._call(self._n().disable_headers)

    def headers_enabled(self) -> bool:
        """Whether headers are written (they start on)."""
        return self._call(self._n().headers_enabled)

    # -------------------------------------------------------- maintenance

    def checkpoint(self) -> None:
        """``PRAGMA wal_checkpoint(PASSIVE)``; errors are ignored; no-op
        when closed."""
        if self._closed:
            return
        try:
            self._native.checkpoint()
        except Exception:  # noqa: BLE001 - documented: errors swallowed
            pass

    def optimize(self) -> None:
        """``PRAGMA optimize; VACUUM`` (rewrites the file; needs no open
        transaction on this connection).

        Raises:
            DatabaseBusy / KohakuVaultError: SQLite refused.
            ValueError: the vault is closed.
        """
        self._call(self._n().optimize)

    def close(self) -> None:
        """Stop the flush daemon, flush the cache (a locked cache's entries
        are written directly, never dropped), checkpoint and close.
        Idempotent. The vault is marked closed even if the flush raises
        (the exception then propagates, mapped). Called from inside one of
        the vault's own calls (a ``put_file`` reader, a ``get_to_file``
        writer) it raises :class:`KohakuVaultError` and the vault stays
        open."""
        if self._closed:
            return
        native = self._native
        try:
            self._stop_daemon()
            try:
                native.close()
            except Exception as exc:  # noqa: BLE001
                raise map_call_exception(exc) from exc
        finally:
            # the native object is closed even when its flush failed; it
            # stays open only when it refused a re-entrant close
            self._closed = native.closed

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    def __reduce__(self):
        """Pickle as the path and constructor options (plus the auto-pack and
        header switches); unpickling reopens the file, e.g. in a
        ``multiprocessing`` worker started with ``spawn``.

        Writes this object holds only in memory are made durable first:
        :meth:`flush` runs (the write-back cache is flushed; shared mode
        waits until the writer applied every write). What is not carried:
        the write-back cache setting and its daemon, and ``use_pickle``.
        ``unpickle`` is carried as the effective setting, so a safe-mode
        vault stays in safe mode in the receiving process.

        Raises:
            ValueError: the vault is closed.
            TypeError: the vault is on ``":memory:"`` (the receiver would
                open another, empty database), or its write-back cache is
                locked (:meth:`lock_cache`) and holds writes that could not
                be flushed.
        """
        _safety.check_picklable("KVault", self._path, self._closed)
        native = self._n()
        if self._cache_locked and native.cache_enabled():
            raise TypeError(
                "cannot pickle a KVault inside lock_cache(): its cached writes are "
                "not in the file yet and a locked cache cannot be flushed")
        self.flush()
        return (_safety.reopen, (type(self), (self._path,), dict(self._options),
                                 _safety.switch_state(self)))

    def __repr__(self) -> str:
        if self._closed:
            return f"KVault({self._path!r}, status=closed, keys=?)"
        try:
            n = self._native.count()
        except Exception:  # noqa: BLE001
            n = "?"
        return f"KVault({self._path!r}, status=open, keys={n})"


# KVAULT_SHARED values and the shared= setting each stands for.
_SHARED_ENV = {"auto": "auto", "spawn": "spawn", "off": False, "require": True}
# How long a writer started by shared="spawn" stays after its last client
# detached (milliseconds; KVAULT_LINGER_MS overrides).
_SPAWN_LINGER_MS = 2000
# How long an open keeps deciding again when the writer it chose to attach
# to went away before the attach completed (seconds).
_ATTACH_RETRY_S = 10.0
# Writers started by this process (kept so that they are not reported as
# still running when the Popen objects are collected; they outlive us).
_SPAWNED = []


def _shared_setting(shared):
    """The ``shared=`` setting in force: ``KVAULT_SHARED`` (``auto``,
    ``spawn``, ``off``, ``require``) replaces the default ``"auto"``; an
    explicit ``True``, ``False`` or ``"spawn"`` wins."""
    env = os.environ.get("KVAULT_SHARED")
    if shared == "auto" and env:
        if env not in _SHARED_ENV:
            raise InvalidArgument(
                f"KVAULT_SHARED must be one of {', '.join(_SHARED_ENV)}, got {env!r}"
            )
        return _SHARED_ENV[env]
    return shared


def _spawn_writer(path, table):
    """Start a kvault-writer for ``path`` unless one serves it (for any
    table): exactly one even when processes race (an ``flock`` on
    ``<db>-kvault.spawn``). It serves ``table`` through its segment, the
    table of the object that started it; a ``KVault`` on another table of
    the file writes through it as table operations. The writer runs in its
    own session, logs to ``<db>-kvault.log`` and stops
    ``KVAULT_LINGER_MS`` (default 2000) after its last client detached.
    Returns when a writer serves the file or it failed to start (then the
    caller opens the file embedded, following a writer that appears)."""
    import fcntl
    import shutil
    import subprocess

    from ._writer import writer_binary

    exe = writer_binary() or shutil.which("kvault-writer")
    real = os.path.realpath(path)
    os.makedirs(os.path.dirname(real) or ".", exist_ok=True)
    def private(name, flags):   # created 0600, as the writer's own files (docs/security.md)
        return os.open(name, flags, 0o600)

    with open(real + "-kvault.spawn", "a", opener=private) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if exe is None or _kvault._exec_served(path):
            return
        linger = os.environ.get("KVAULT_LINGER_MS", str(_SPAWN_LINGER_MS))
        with open(real + "-kvault.log", "ab", opener=private) as log:
            proc = subprocess.Popen(
                [exe, "--table", table, "--linger-ms", linger, real],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                start_new_session=True, close_fds=True,
            )
        line = proc.stdout.readline()  # "ready <segment>" once serving
        proc.stdout.close()
        _SPAWNED.append(proc)
        if not line.startswith(b"ready"):
            proc.wait()


# A table name the engine accepts (engine/conn.c, kvi_table_name_valid): a
# plain SQL identifier of at most 128 ASCII letters, digits and underscores,
# not starting with a digit.
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _check_table(table):
    """``InvalidArgument`` for a table name no writer can serve, with the
    message an embedded open gives, before the registry is looked at."""
    if not isinstance(table, str):
        raise InvalidArgument(f"table must be a str, not {type(table).__name__}")
    if not _TABLE_NAME.fullmatch(table):
        raise InvalidArgument(f"Invalid table name: {reprlib.repr(table)[1:-1]}")


# _KVault(attach=...): embedded, attached, routed (a table the writer of the
# file does not serve, written through it: docs/shared-mode.md).
_EMBEDDED, _ATTACHED, _ROUTED = 0, 1, 2


def _attach(path, table, shared):
    """``(attach, route)`` for ``KVault(path, shared=...)``: whether the
    object attaches to a kvault-writer (``_KVault(..., attach=_ATTACHED)``),
    routes its writes through one that serves the file for another table
    (``_ROUTED``) or opens the file embedded (``_EMBEDDED``), and whether it
    follows the writer afterwards (``route=True``).

    ``"auto"``: attached when a kvault-writer serves ``path`` for ``table``
    (its registry lock is held), routed when one serves it for another
    table, else embedded; it follows the writer: an
    embedded object attaches at its first write after a writer started, an
    attached one continues embedded after its writer stopped cleanly.
    ``"spawn"``: as ``"auto"``, after starting a writer when none serves the
    file (``_spawn_writer``), and ``route=2``: a writer that dies under the
    attached object is replaced (the native object calls ``_spawn_writer``).
    ``True``: attached or routed, or ``KohakuVaultError`` when no writer
    serves the file. ``False``: always embedded.
    ``KVAULT_SHARED`` replaces the default (``_shared_setting``).
    """
    shared = _shared_setting(shared)
    if shared is False or shared is None:
        return _EMBEDDED, False
    if shared not in ("auto", "spawn", True):
        raise InvalidArgument(
            "shared must be 'auto', 'spawn', True or False, got "
            f"{reprlib.repr(shared)} ({type(shared).__name__})"
        )
    _check_table(table)
    auto = shared in ("auto", "spawn")
    if shared == "spawn" and path != ":memory:" and not path.startswith("file:") \
            and not _kvault._exec_served(path):
        _spawn_writer(path, table)
    # route 2: "spawn" also replaces a writer that dies under the object
    route = 2 if shared == "spawn" else auto
    if _kvault._attach_served(path, table):
        return _ATTACHED, route
    if _kvault._exec_served(path):
        return _ROUTED, route
    if shared is True:
        raise KohakuVaultError(
            f"shared=True: no kvault-writer serves {path!r} (table {table!r}); "
            f"start one with `kvault-launch serve {path}"
            + (f" --table {table}`" if table != "kv" else "`")
        )
    return _EMBEDDED, route


def _tell(stream):
    """Current position of a seekable stream, or ``None``."""
    try:
        if hasattr(stream, "seekable") and not stream.seekable():
            return None
        return stream.tell()
    except Exception:  # noqa: BLE001 - not seekable
        return None


def _rewinding(fn, stream, pos):
    """``fn`` wrapped so each retry first seeks ``stream`` back to ``pos``."""

    def call(*args):
        stream.seek(pos)
        return fn(*args)

    return call
