"""Typed columns in a kohakuvault file: ``ColumnVault``, ``Column``, ``VarSizeColumn``.

The columns live in the ``col_meta``/``col_chunks`` tables of the same SQLite
file a :class:`~kohakuvault.KVault` uses (docs/api.md §6). Element packing,
chunked storage, the write-back cache and bulk paths (``extend`` from numpy,
whole-range reads) are C (``kohakuvault._kvault``); this module adds the
``MutableSequence`` protocol, index normalisation and the exact exceptions of
docs/api.md §6.5/§6.6.

Also exported (docs/api.md §1.2): ``parse_dtype``, ``pack_i64`` /
``unpack_i64``, ``pack_i32`` / ``unpack_i32``, ``pack_f64`` / ``unpack_f64``,
``pack_bytes`` / ``unpack_bytes``, ``DTYPE_INFO``, ``get_packer``,
``get_unpacker``.
"""

from __future__ import annotations

import os
import struct
import threading
import weakref
from collections.abc import MutableSequence
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional

from . import _forksafe, _kvault
from ._kvault import DataPacker, _ColumnVault
from .errors import InvalidArgument, NotFound, open_check, open_failure_text

__all__ = [
    "Column",
    "VarSizeColumn",
    "ColumnVault",
    "parse_dtype",
    "pack_i64",
    "unpack_i64",
    "pack_i32",
    "unpack_i32",
    "pack_f64",
    "unpack_f64",
    "pack_bytes",
    "unpack_bytes",
    "DTYPE_INFO",
    "get_packer",
    "get_unpacker",
]

# the write-back cache sizes are KVault's (one table: _kvault.KV_DEFAULTS)
_DEFAULT_CAP = _kvault.KV_DEFAULTS["cache_cap_bytes"]
_DEFAULT_THRESHOLD = _kvault.KV_DEFAULTS["cache_flush_threshold"]

# ---------------------------------------------------------------------------
# struct helpers (docs/api.md §1.2)
# ---------------------------------------------------------------------------


def pack_i64(v: int) -> bytes:
    """8-byte little-endian int64."""
    return struct.pack("<q", v)


def unpack_i64(b: bytes, offset: int = 0) -> int:
    """int64 from 8 little-endian bytes at ``offset``."""
    return struct.unpack_from("<q", b, offset)[0]


def pack_i32(v: int) -> bytes:
    """4-byte little-endian int32."""
    return struct.pack("<i", v)


def unpack_i32(b: bytes, offset: int = 0) -> int:
    """int32 from 4 little-endian bytes at ``offset``."""
    return struct.unpack_from("<i", b, offset)[0]


def pack_f64(v: float) -> bytes:
    """8-byte little-endian float64."""
    return struct.pack("<d", v)


def unpack_f64(b: bytes, offset: int = 0) -> float:
    """float64 from 8 little-endian bytes at ``offset``."""
    return struct.unpack_from("<d", b, offset)[0]


def pack_bytes(v: bytes, size: int) -> bytes:
    """``v`` zero-padded to ``size`` bytes; ``ValueError`` if longer."""
    if len(v) > size:
        raise ValueError(f"Data too long: {len(v)} > {size}")
    return bytes(v) + b"\x00" * (size - len(v))


def unpack_bytes(b: bytes, offset: int = 0, size: Optional[int] = None) -> bytes:
    """``size`` bytes at ``offset`` (the rest of the buffer when ``size`` is None)."""
    return bytes(b[offset:] if size is None else b[offset : offset + size])


#: Built-in struct codecs of the scalar dtypes (the ``use_rust_packer=False`` path).
DTYPE_INFO = {
    "i64": {"size": 8, "pack": pack_i64, "unpack": unpack_i64},
    "f64": {"size": 8, "pack": pack_f64, "unpack": unpack_f64},
}


def parse_dtype(dtype: str) -> tuple[bool, int]:
    """Return ``(is_varsize, elem_size)`` of a dtype via :class:`DataPacker`.

    Raises ``ValueError("Invalid dtype: ...")`` for an unparseable dtype.
    """
    p = DataPacker(dtype)
    return p.is_varsize, p.elem_size


def get_packer(dtype: str) -> Callable[[Any], bytes]:
    """``pack`` function of a dtype (DataPacker's, bound)."""
    return DataPacker(dtype).pack


def get_unpacker(dtype: str) -> Callable[..., Any]:
    """``unpack(data, offset=0)`` function of a dtype (DataPacker's, bound)."""
    return DataPacker(dtype).unpack


# ---------------------------------------------------------------------------
# columns
# ---------------------------------------------------------------------------


def _as_index(i: Any, msg: str) -> int:
    if isinstance(i, int):
        return int(i)
    if hasattr(i, "__index__") and not isinstance(i, (float, str, bytes)):
        return i.__index__()  # numpy integers and other __index__ objects (docs/api.md §6.5)
    raise TypeError(msg)


def _reopen_column(path: str, bounds: tuple, name: str, raw: bool):
    """Unpickling a column: open ``path`` and return column ``name``."""
    vault = ColumnVault(path, *bounds)
    return vault._columns.setdefault(name, vault._wrap(name, raw))


def _as_list(values: Iterable[Any]) -> list:
    """``list(values)``; a ``MemoryError`` (typically from a ``__len__`` or
    ``__length_hint__`` reporting far more items than exist or fit) gets a
    message saying what was being built and the reported length."""
    try:
        return list(values)
    except MemoryError as exc:
        try:
            n = len(values)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - only for the message
            n = "?"
        raise MemoryError(
            f"extend: out of memory collecting the values of a {type(values).__name__} "
            f"whose __len__() reports {n} items; pass a list, a numpy array or an "
            "iterator of the real items") from exc


@contextmanager
def _cache_scope(owner: Any, cap_bytes: int, flush_threshold: int):
    """``owner.enable_cache(...)``, yield ``owner``, ``owner.disable_cache()``
    (which flushes) on exit: the ``cache()`` context of columns and vaults."""
    owner.enable_cache(cap_bytes, flush_threshold)
    try:
        yield owner
    finally:
        owner.disable_cache()


class _ColumnBase(MutableSequence):
    """Shared machinery of Column and VarSizeColumn (not public)."""

    _BATCH = 1000

    def __init__(self, handle, name: str, dtype: str) -> None:
        self._h = handle
        info = handle.info
        self._name = name
        self._dtype = dtype
        self._col_id = info["col_id"]
        self._chunk_bytes = info["max_chunk"]
        self._cache_enabled = False

    # -- length -------------------------------------------------------------
    def __len__(self) -> int:
        """Number of elements, including appends still in the column cache."""
        return self._h.length()

    @property
    def _length(self) -> int:
        return self._h.length()

    # -- helpers ------------------------------------------------------------
    def _slice_bounds(self, s: slice, msg: str) -> tuple[int, int]:
        start, stop, step = s.indices(len(self))
        if step != 1:
            raise ValueError(msg)
        return start, max(start, stop)

    def _set_slice(self, s: slice, values: Iterable[Any]) -> None:
        start, stop = self._slice_bounds(s, "Step slicing not supported for setitem")
        if stop <= start:
            return  # empty slice: no-op, values ignored (docs/api.md §6.5)
        values = list(values)
        if len(values) != stop - start:
            raise ValueError(
                f"Slice length mismatch: slice has {stop - start} elements, "
                f"but {len(values)} values provided"
            )
        self._check_values(values)
        self._h.write(start, values)

    def _check_values(self, values: list) -> None:
        """Per-dtype value checks before packing (VarSizeColumn: bytes)."""

    #: IndexError text for an int index outside the column (per class).
    _OUT_OF_RANGE = "Column index out of range: {i} (length={n})"

    def _position(self, idx: Any, msg: str) -> int:
        """0-based position of int index ``idx`` (negative counts from the
        end); ``TypeError(msg)`` for a non-int, ``IndexError`` out of range."""
        i = _as_index(idx, msg)
        n = len(self)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(self._OUT_OF_RANGE.format(i=i, n=n))
        return j

    # -- MutableSequence ----------------------------------------------------
    def __delitem__(self, idx) -> None:
        if isinstance(idx, slice) or not hasattr(idx, "__index__"):
            raise TypeError("Column indices must be integers")
        self._h.delete(self._position(idx, "Column indices must be integers"))

    def append(self, value: Any) -> None:
        """Pack ``value`` with the column's DataPacker and append it (cached when
        the cache is enabled). ``TypeError``/``ValueError`` leave the column unchanged."""
        self._check_values([value])
        self._h.append(value)

    def extend(self, values: Iterable[Any]) -> None:
        """Append every value in one C call and one transaction.

        ``values`` may be a list or any iterable; for ``i64``/``f64`` a numpy
        array (or any C-contiguous int64/float64 buffer) is written straight
        from its memory. All values are packed before anything is written, so
        a bad value leaves the column unchanged.
        """
        if isinstance(values, (list, tuple)):
            if not values:
                return
        elif not (hasattr(values, "__array__") or isinstance(values, memoryview)):
            values = _as_list(values)
            if not values:
                return
        if isinstance(values, (list, tuple)):
            self._check_values(values)
        self._h.extend(values)

    def clear(self) -> None:
        """Flush the cache, then set the length to 0 (chunks are kept and reused)."""
        self._h.clear()

    def __iter__(self) -> Iterator[Any]:
        n = len(self)
        i = 0
        while i < n:
            j = min(n, i + self._BATCH)
            yield from self._h.read(i, j)
            i = j

    # -- cache --------------------------------------------------------------
    def enable_cache(self, cap_bytes: int = _DEFAULT_CAP, flush_threshold: int = _DEFAULT_THRESHOLD) -> None:
        """Buffer appends in memory (docs/api.md §6.7): an append that would pass
        ``cap_bytes`` flushes first; reaching ``flush_threshold`` bytes flushes.
        Re-enabling flushes the previous cache first."""
        self._h.enable_cache(int(cap_bytes), int(flush_threshold))
        self._cache_enabled = True

    def disable_cache(self) -> None:
        """Flush and remove the cache (no-op when not enabled)."""
        if self._cache_enabled:
            self._h.disable_cache()
            self._cache_enabled = False

    def flush_cache(self) -> int:
        """Write cached appends in one transaction; returns the bytes written (0 if off)."""
        if not self._cache_enabled:
            return 0
        return self._h.flush_cache()

    def cache(self, cap_bytes: int = _DEFAULT_CAP, flush_threshold: int = _DEFAULT_THRESHOLD):
        """Context manager: enable the cache, yield the column, disable (flush) on exit."""
        return _cache_scope(self, cap_bytes, flush_threshold)

    def __reduce__(self):
        """Pickle as the vault's path and the column's name; unpickling opens
        the file again and returns that column (of a new ``ColumnVault``).
        This column's cache is flushed first; the cache setting is not
        carried."""
        path, bounds, name, raw = self._reopen
        self.flush_cache()
        return (_reopen_column, (path, bounds, name, raw))

    def _cache_idle(self) -> float:
        return self._h.cache_idle()


class Column(_ColumnBase):
    """Fixed-size column (docs/api.md §6.5): a ``MutableSequence`` of packed elements
    of ``elem_size`` bytes. Made by :class:`ColumnVault` only.

    Indices: ints (negative count from the end); slices with step 1 return
    lists. Errors: ``IndexError`` out of range, ``TypeError`` wrong index or
    value type, ``ValueError`` step slices, size/shape/encoding problems. A
    failed operation leaves the column unchanged.
    """

    def __init__(self, handle, name: str, dtype: str, raw_struct: bool = False) -> None:
        super().__init__(handle, name, dtype)
        self._elem_size = handle.info["elem_size"]
        self._np_kind = {"i64": "<i8", "f64": "<f8"}.get(dtype.split(":")[0])

    def __getitem__(self, idx):
        """``col[i]`` → value (negative ``i`` counts from the end;
        ``IndexError("Column index out of range: i (length=n)")``);
        ``col[a:b]`` → list (``slice.indices`` semantics; step ≠ 1 →
        ``ValueError("Step slicing not supported")``); other index types →
        ``TypeError``. One native call: answered from the vault's read cache
        (validated by SQLite's WAL-index header) when nothing was committed
        since it was filled, else read through SQLite."""
        return self._h.getitem(idx)

    def __setitem__(self, idx, value) -> None:
        if isinstance(idx, slice):
            self._set_slice(idx, value)
            return
        self._h.write(self._position(idx, "Column indices must be integers or slices"), [value])

    def insert(self, index: int, value: Any) -> None:
        """Insert before ``index`` (clamped like ``list.insert``); shifts later
        elements up. At the end it is ``append``."""
        n = len(self)
        i = _as_index(index, "Column indices must be integers")
        i = max(0, n + i) if i < 0 else min(i, n)
        if i == n:
            self.append(value)
        else:
            self._h.insert(i, value)

    def to_numpy(self, start: int = 0, stop: Optional[int] = None):
        """Extension: elements ``[start, stop)`` as a numpy array read in one
        buffer. ``i64`` → int64, ``f64`` → float64; other dtypes →
        ``(n, elem_size)`` uint8 rows of packed bytes."""
        if self._np_kind is not None:
            return self._h.read_numpy(start, stop)  # one native call
        import numpy as np

        n = len(self)
        start, stop, _ = slice(start, stop).indices(n)
        stop = max(start, stop)
        raw = self._h.read_raw(start, stop)
        return np.frombuffer(raw, dtype=np.uint8).reshape(stop - start, self._elem_size)

    def __repr__(self) -> str:
        return f"Column(name={self._name!r}, dtype={self._dtype!r}, length={len(self)})"


class VarSizeColumn(_ColumnBase):
    """Variable-size column (docs/api.md §6.6): physical rows ``<name>_data`` and
    ``<name>_idx``. ``insert`` is not supported (``NotImplementedError``);
    updates of any size are. Dtype ``bytes`` takes and returns ``bytes``
    instances only. Made by :class:`ColumnVault` only."""

    _BATCH = 100
    _OUT_OF_RANGE = "Index out of range: {i}"

    def __init__(self, handle, name: str, dtype: str, raw: bool = False) -> None:
        super().__init__(handle, name, dtype)
        self._elem_size = 0
        self._bytes_only = raw or dtype.split(":")[0] == "bytes"

    def _check_values(self, values: list) -> None:
        if self._bytes_only:
            for v in values:
                if not isinstance(v, bytes):
                    raise TypeError("Value must be bytes")

    def __getitem__(self, idx):
        """``col[i]`` → value (``IndexError("Column index out of range: i")``);
        ``col[a:b]`` → list (step ≠ 1 → ``ValueError``); other index types →
        ``TypeError``. One native call."""
        return self._h.getitem(idx)

    def __setitem__(self, idx, value) -> None:
        if isinstance(idx, slice):
            self._set_slice(idx, value)
            return
        j = self._position(idx, "Column indices must be integers or slices")
        self._check_values([value])
        self._h.write(j, [value])

    def insert(self, index: int, value: Any) -> None:
        """Always ``NotImplementedError`` (docs/api.md §6.6)."""
        raise NotImplementedError("Insert not supported for variable-size columns. Use append instead.")

    def __repr__(self) -> str:
        return f"VarSizeColumn(name={self._name!r}, length={len(self)})"


# ---------------------------------------------------------------------------
# vault
# ---------------------------------------------------------------------------


def _daemon(vault_ref: "weakref.ref[ColumnVault]", stop: threading.Event, interval: float) -> None:
    """Flush fixed-size columns idle for ``interval`` s, every 0.5 s, unless locked."""
    while not stop.wait(0.5):
        cv = vault_ref()
        if cv is None:
            return
        try:
            if cv._cv.cache_locked():
                continue
            for col in list(cv._columns.values()):
                if isinstance(col, Column) and col._cache_enabled and col._cache_idle() >= interval:
                    col.flush_cache()
        except Exception:
            pass
        finally:
            del cv


class ColumnVault:
    """Container of typed columns in one SQLite file (docs/api.md §6.1).

    ``ColumnVault(kvault_or_path, min_chunk_bytes=131072, max_chunk_bytes=16777216)``:
    ``kvault_or_path`` is a path (``str`` or ``os.PathLike``) or an object with
    a ``_path`` attribute (a :class:`KVault`); the vault always opens its own
    connection (WAL, synchronous=NORMAL, busy timeout 5000 ms). Parent
    directories are not created. There is no ``close()``: dropping the last
    reference flushes column caches and closes the connection.

    Opening a directory or a file that is not a database raises
    ``RuntimeError`` naming the path. A missing column raises
    :class:`NotFound` whose message keeps ``Key not found: '<name>'`` and
    names the file and the columns it has. A ``ColumnVault`` (and a column)
    pickles as the path (and the column name) and reopens the file when
    unpickled, after flushing column caches.

    Thread-safe: native calls are serialised and release the GIL.
    """

    def __init__(self, kvault_or_path, min_chunk_bytes: int = 131072, max_chunk_bytes: int = 16777216) -> None:
        if isinstance(kvault_or_path, str):
            path = kvault_or_path
        elif hasattr(kvault_or_path, "_path"):
            path = os.fspath(kvault_or_path._path)
        elif isinstance(kvault_or_path, os.PathLike):
            path = os.fspath(kvault_or_path)
        else:
            raise TypeError(f"ColumnVault needs a path or a KVault, got {type(kvault_or_path).__name__}")
        self._path = path
        self._chunk_bounds = (int(min_chunk_bytes), int(max_chunk_bytes))
        open_check(path, RuntimeError)
        try:
            self._cv = _ColumnVault(path, *self._chunk_bounds)
        except RuntimeError as exc:
            text = open_failure_text(path, str(exc))
            if text is None:
                raise
            raise RuntimeError(text) from exc
        self._columns: dict[str, _ColumnBase] = {}
        self._daemon: Optional[threading.Thread] = None
        self._daemon_stop: Optional[threading.Event] = None
        self._daemon_interval = 0.0
        self._lock = threading.RLock()
        _forksafe.track(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child (kohakuvault._forksafe): a new lock (another
        thread of the parent may have held this one) and, if the parent ran
        the flush daemon, a daemon of the child's own."""
        self._lock = threading.RLock()
        if self._daemon is not None:
            self._daemon = None
            self._start_daemon(self._daemon_interval)

    def _start_daemon(self, interval: float) -> None:
        self._daemon_interval = interval
        self._daemon_stop = threading.Event()
        self._daemon = threading.Thread(
            target=_daemon, args=(weakref.ref(self), self._daemon_stop, interval),
            daemon=True, name="kohakuvault-column-flush")
        self._daemon.start()

    # -- columns ------------------------------------------------------------
    def _wrap(self, name: str, raw: bool = False) -> _ColumnBase:
        h = self._cv.open_column(name, raw)
        info = h.info
        if info["is_var"]:
            col = VarSizeColumn(h, name, info["dtype"], raw=raw)
        else:
            col = Column(h, name, info["dtype"])
        col._reopen = (self._path, self._chunk_bounds, name, raw)
        return col

    def create_column(self, name: str, dtype: str, chunk_bytes: Optional[int] = None, use_rust_packer: bool = True):
        """Create column ``name`` of ``dtype`` and return its proxy (cached).

        Fixed dtypes (``elem_size > 0``) make one ``col_meta`` row, others the
        ``<name>_data``/``<name>_idx`` pair. ``chunk_bytes`` is ignored.
        Raises ``InvalidArgument("Unknown dtype: …")`` (``"Invalid bytes dtype: …"``
        for a malformed ``bytes:`` form, ``"No packer for dtype: …"`` with
        ``use_rust_packer=False`` and a fixed dtype other than i64/f64), raw
        ``RuntimeError`` for a duplicate name.
        """
        try:
            packer = DataPacker(dtype)
        except ValueError as exc:
            if dtype.startswith("bytes:"):
                raise InvalidArgument(f"Invalid bytes dtype: {dtype} ({exc})") from exc
            raise InvalidArgument(f"Unknown dtype: {dtype} ({exc})") from exc
        if not use_rust_packer and not packer.is_varsize and dtype.split(":")[0] not in DTYPE_INFO:
            raise InvalidArgument(f"No packer for dtype: {dtype}")
        with self._lock:
            self._cv.create_column(name, dtype)
            col = self._wrap(name, raw=not use_rust_packer and packer.is_varsize)
            self._columns[name] = col
            return col

    def __getitem__(self, name: str):
        """The column ``name`` (the same object every time); ``NotFound(name)`` if absent."""
        with self._lock:
            col = self._columns.get(name)
            if col is not None:
                return col
            try:
                col = self._wrap(name)
            except KeyError:
                raise NotFound(name, detail=self._missing_detail(name)) from None
            self._columns[name] = col
            return col

    def _missing_detail(self, name: str) -> str:
        """``column 'x' not found in <path>; columns: a, b`` for NotFound."""
        rows = self._cv.list_columns()
        idx = {phys for phys, dtype, _n in rows if dtype == "adaptive_idx"}
        names = []
        for phys, dtype, _n in rows:
            if phys in idx:
                continue  # the index half of a variable-size column
            if phys.endswith("_data") and phys[:-5] + "_idx" in idx:
                phys = phys[:-5]
            names.append(phys)
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        return (f"column {name!r} not found in {self._path}; "
                + (f"columns: {shown}" if names else "it has no columns")
                + "; create it with create_column(name, dtype) or ensure(name, dtype)")

    def ensure(self, name: str, dtype: str, chunk_bytes: Optional[int] = None, use_rust_packer: bool = True):
        """``cv[name]``, or ``create_column`` when it does not exist (dtype of an
        existing column is not checked)."""
        try:
            return self[name]
        except NotFound:
            return self.create_column(name, dtype, chunk_bytes, use_rust_packer)

    def list_columns(self) -> list[tuple[str, str, int]]:
        """Physical ``col_meta`` rows ``(name, dtype, length)`` by ``col_id``; a
        variable-size column shows as ``<n>_data`` (length 0) and ``<n>_idx``."""
        return self._cv.list_columns()

    def delete_column(self, name: str) -> bool:
        """Forget the cached proxy and delete column ``name`` and its chunks
        (a variable-size column's logical name deletes both rows). Returns
        ``True`` if something was deleted."""
        with self._lock:
            col = self._columns.pop(name, None)
            if col is not None and col._cache_enabled:
                try:
                    col._h.disable_cache()
                except Exception:
                    pass
            return self._cv.delete_column(name)

    def checkpoint(self) -> None:
        """Passive WAL checkpoint; errors are ignored."""
        try:
            self._cv.checkpoint()
        except Exception:
            pass

    # -- caches -------------------------------------------------------------
    def enable_cache(self, cap_bytes: int = _DEFAULT_CAP, flush_threshold: int = _DEFAULT_THRESHOLD,
                     flush_interval: Optional[float] = None) -> None:
        """Enable the cache on every column known to this instance; with
        ``flush_interval`` (seconds) start the idle-flush daemon if none runs."""
        with self._lock:
            for col in self._columns.values():
                col.enable_cache(cap_bytes, flush_threshold)
            if flush_interval is not None and self._daemon is None:
                self._start_daemon(float(flush_interval))

    def disable_cache(self) -> None:
        """Stop the daemon (join ≤ 2 s), then disable (flush) every column cache."""
        with self._lock:
            if self._daemon is not None:
                self._daemon_stop.set()
                if self._daemon is not threading.current_thread():
                    self._daemon.join(2.0)
                self._daemon = None
                self._daemon_stop = None
            for col in self._columns.values():
                col.disable_cache()

    def flush_cache(self) -> int:
        """Flush every column cache of this vault; returns total bytes written."""
        with self._lock:
            return sum(col.flush_cache() for col in self._columns.values())

    def cache(self, cap_bytes: int = _DEFAULT_CAP, flush_threshold: int = _DEFAULT_THRESHOLD):
        """Context manager: ``enable_cache``, yield the vault, ``disable_cache`` on exit."""
        return _cache_scope(self, cap_bytes, flush_threshold)

    @contextmanager
    def lock_cache(self):
        """Context manager: while inside, the flush daemon skips its flushes
        (manual flushes still run). Yields ``None``."""
        self._cv.set_cache_locked(True)
        try:
            yield None
        finally:
            self._cv.set_cache_locked(False)

    def __repr__(self) -> str:
        return f"ColumnVault({self._cv.count_columns()} columns)"

    def __reduce__(self):
        """Pickle as the path and chunk bounds; unpickling opens the file
        again (e.g. in a ``multiprocessing`` worker started with ``spawn``).
        Column caches are flushed first so the receiver sees every append;
        caches and the flush daemon are not carried."""
        self.flush_cache()
        return (ColumnVault, (self._path, *self._chunk_bounds))

    def __del__(self) -> None:
        try:
            if self._daemon_stop is not None:
                self._daemon_stop.set()
            self._cv.checkpoint()
        except Exception:
            pass
