"""Hostile arguments for every public method, as one table.

Each row of ``ROWS`` names a receiver (an open vault with data in it, a
closed vault, a column, a packer, an ordered map, the package module, or a
scenario), a method, its arguments and the outcomes allowed: the exception
classes docs/api.md names for the case (a subclass is accepted) or ``OK``
(the call returns). Arguments cover wrong types, ``None``, huge and
negative sizes and indices, non-UTF-8 and NUL bytes in keys and names,
empty strings, deep nesting, closed objects, and scenario rows for
re-entrant calls (from ``__del__``, from callbacks the vault makes, from a
signal handler), threads racing ``close()`` and comparisons that mutate the
ordered map they are being compared in.

The rows run in child processes, one per class (``python
test_hostile_args.py <group> <first row>``), each printing one JSON line per
row; a child that dies (segfault) or stops answering (a per-row watchdog,
``faulthandler.dump_traceback_later``) fails that row and a new child goes
on with the next. After its rows a child reopens every seeded store and
compares it with the data written before the rows ran: hostile calls must
not lose or change anything already stored.
"""

from __future__ import annotations

import faulthandler
import gc
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest

import kohakuvault as K
from kohakuvault import (
    ColumnVault,
    CSBTree,
    DataPacker,
    InvalidArgument,
    KohakuVaultError,
    KVault,
    NotFound,
    SkipList,
    TextVault,
    VectorKVault,
)

OK = "ok"  # expected outcome: the call returns normally
IA = InvalidArgument
KVE = KohakuVaultError
# Seconds a single row may take before it counts as a hang.
ROW_TIMEOUT = float(os.environ.get("KV_HOSTILE_ROW_TIMEOUT", "10"))
BIG = (2**63, -(2**63) - 1, 2**40, -(2**40))  # out of int64 range and absurd sizes


class Row(NamedTuple):
    group: str  # child process that runs it (one per class)
    recv: str  # receiver name, see RECEIVERS
    method: str  # attribute called on the receiver
    args: tuple
    kwargs: dict
    expect: tuple  # allowed outcomes: exception classes and/or OK
    note: str  # why the row exists / where its expectation comes from


ROWS: list[Row] = []


def row(group, recv, method, args=(), kwargs=None, expect=(OK,), note=""):
    if not isinstance(expect, tuple):
        expect = (expect,)
    ROWS.append(Row(group, recv, method, tuple(args), dict(kwargs or {}), expect, note))


class Path:
    """Placeholder argument: a path in the child's temporary directory.
    ``Path("seed")`` is the file holding the seeded stores; any other name is
    a fresh file."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"Path({self.name!r})"


def _deep_list(depth):
    v: Any = None
    for _ in range(depth):
        v = [v]
    return v


def _deep_dict(depth):
    v: Any = 1
    for _ in range(depth):
        v = {"a": v}
    return v


def _deep_schema(depth):
    v: Any = {"type": "integer"}
    for _ in range(depth):
        v = {"type": "object", "properties": {"a": v}}
    return v


DEEP_LIST, DEEP_DICT, DEEP_SCHEMA = _deep_list(100_000), _deep_dict(100_000), _deep_schema(50_000)


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("refuses pickling")


class _BadLen(list):
    """A list whose ``len()`` lies."""

    def __len__(self):
        return 2**40


class _RaisingIter:
    def __iter__(self):
        yield (b"hostile/i1", 1)
        raise OSError("iterator failed")


class _BadReader:
    def __init__(self, result):
        self.result = result

    def read(self, n=-1):
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


class _BadWriter:
    def __init__(self, result):
        self.result = result

    def write(self, b):
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def _positive_number(n):
    try:
        return float(n) > 0
    except (TypeError, ValueError):
        return False


# Keys KVault refuses (docs/api.md §2.5: non-str/bytes key → InvalidArgument)
# and keys it must store like any other.
BAD_KEYS = (None, 1, 1.5, 2**63, [], (), object(), "\udcff")
ODD_KEYS = (b"", "", b"\xff\xfe\xfd", b"a\x00b", "a\x00b", b"\x00", "\u2603" * 300, b"k" * 100_000)
# Values that are not numbers where a size, count, limit or index is expected.
NOT_INTS = (None, "1", 1.5, [], object())

# ---------------------------------------------------------------------------
# KVault (docs/api.md §2.5, §4)
# ---------------------------------------------------------------------------
KEYED = ("__getitem__", "get", "exists", "delete", "pop", "__delitem__")
for k in BAD_KEYS:
    for m in KEYED:
        row("KVault", "kv", m, (k,), expect=IA)
    row("KVault", "kv", "__contains__", (k,), note="any error gives False (§4.4)")
    row("KVault", "kv", "put", (k, b"v"), expect=IA)
    row("KVault", "kv", "__setitem__", (k, b"v"), expect=IA)
    row("KVault", "kv", "setdefault", (k, b"v"), expect=IA)
    row("KVault", "kv", "put_many", ([(b"hostile/ok", 1), (k, 2)],), expect=IA)
    row("KVault", "kv", "update", ([(b"hostile/ok", 1), (k, 2)],), expect=IA)
    row("KVault", "kv", "delete_many", ([b"hostile/x", k],), expect=IA)
    if k is not None:
        row("KVault", "kv", "keys", (), {"prefix": k}, expect=IA)
    row("KVault", "kv", "put_file", (k, io.BytesIO(b"abc")), expect=IA)
    row("KVault", "kv", "get_to_file", (k, io.BytesIO()), expect=IA)
for k in ODD_KEYS:
    row("KVault", "kv", "put", (k, b"v"))
    row("KVault", "kv", "get", (k,))
    row("KVault", "kv", "exists", (k,))
    row("KVault", "kv", "__contains__", (k,))
    row("KVault", "kv", "keys", (), {"prefix": k})
    row("KVault", "kv", "delete", (k,))
    row("KVault", "kv", "__getitem__", (k,), expect=KeyError, note="deleted by the row before")
    row("KVault", "kv", "__delitem__", (k,), expect=KeyError)
    row("KVault", "kv", "get_to_file", (k, io.BytesIO()), expect=NotFound)
for v in (DEEP_LIST, DEEP_DICT):
    row("KVault", "kv", "put", (b"hostile/deep", v), expect=(KVE,),
        note="too deep for msgpack → pickle → RecursionError, mapped (§2.3 rule 7)")
row("KVault", "kv", "put", (b"hostile/u", _Unpicklable()), expect=KVE)
row("KVault", "kv", "put", (b"hostile/u", [_Unpicklable()]), expect=KVE)
row("KVault", "kv", "put", (b"hostile/big", 2**200), note="beyond int64: float (§3.2 row 5)")
row("KVault", "kv", "put", (b"hostile/nan", float("nan")))
for n in NOT_INTS[1:] + BIG + (0, -1):
    row("KVault", "kv", "keys", (), {"limit": n},
        expect=(IA,) if not isinstance(n, int) else (OK, IA))
for n in NOT_INTS + BIG + (0, -1):
    if n is None:
        continue
    # A size: 2**40 is valid (a free-space check refuses it before writing),
    # 0 is valid for put_file's size; what does not fit int64 or is negative
    # is a bad value.
    size_ok = (OK, IA, KVE) if n == 2**40 else (IA,)
    row("KVault", "kv", "put_file", (b"hostile/f", io.BytesIO(b"abc")), {"size": n},
        expect=(OK,) if n == 0 else (IA, KVE) if n == 2**40 else IA)
    row("KVault", "kv", "put_file", (b"hostile/f", io.BytesIO(b"abc")), {"chunk_size": n},
        expect=size_ok, note="2**63: also fixed on the errors branch")
    row("KVault", "kv", "get_to_file", (b"seed/b0", io.BytesIO()), {"chunk_size": n},
        expect=size_ok, note="2**63: also fixed on the errors branch")
    row("KVault", "kv", "enable_cache", (), {"cap_bytes": n}, expect=size_ok)
    row("KVault", "kv", "enable_cache", (), {"flush_threshold": n}, expect=size_ok)
    row("KVault", "kv", "enable_cache", (), {"flush_interval": n},
        expect=(OK,) if _positive_number(n) else (IA,), note="any float() > 0 is an interval")
    row("KVault", "kv", "disable_cache")
    row("KVault", "kv", "cache", (), {"cap_bytes": n}, expect=size_ok)
for r in (None, 42, "str", bytearray(b"x"), OSError("boom"), ValueError("boom"), b"x" * 10):
    row("KVault", "kv", "put_file", (b"hostile/f", _BadReader(r)), {"size": 3},
        expect=(IA, KVE) if not isinstance(r, OSError) else KVE)
for w in (None, "str", -1, 2**63, OSError("boom"), ValueError("boom")):
    row("KVault", "kv", "get_to_file", (b"seed/b0", _BadWriter(w)), expect=(OK, IA, KVE))
row("KVault", "kv", "put_file", (b"hostile/f", object()), expect=IA)
row("KVault", "kv", "get_to_file", (b"seed/b0", object()), expect=IA)
row("KVault", "kv", "put_many", (None,), expect=IA)
row("KVault", "kv", "put_many", ([(b"a",)],), expect=IA)
row("KVault", "kv", "put_many", ([b"ab"],), expect=IA, note="two-byte key unpacks as a pair of ints")
row("KVault", "kv", "put_many", (_RaisingIter(),), expect=(IA, KVE, OSError))
row("KVault", "kv", "update", (None,), expect=IA)
row("KVault", "kv", "update", (5,), expect=IA)
row("KVault", "kv", "delete_many", (None,), expect=IA)
row("KVault", "kv", "delete_many", (b"one-key",), expect=IA)
row("KVault", "kv", "put", (b"hostile/w", 1), {"write_mode": "\x00"}, expect=IA)
row("KVault", "kv", "put", (b"hostile/w", 1), {"write_mode": 5}, expect=IA)
row("KVault", "kv", "enable_auto_pack", (None,))
row("KVault", "kv", "optimize")
row("KVault", "kv", "checkpoint")
row("KVault", "kv", "flush")
row("KVault", "kv", "pop", (b"hostile/missing", "dflt"))
row("KVault", "kv", "setdefault", (b"hostile/sd", _Unpicklable()), expect=KVE)
row("KVault", "kv", "put", (b"hostile/s", 1), {"sync": None})
row("KVault", "kv_memory", "put_file", (b"hostile/f", io.BytesIO(b"abc")), {"size": 2**40},
    expect=(IA, KVE), note="in-memory db: more than the physical memory fails before writing")
row("KVault", "kv", "__eq__", (None,))
row("KVault", "kv", "__repr__")
# Constructor (§4.1): opening errors are mapped; the seeded file must survive.
for t in ("", "a\x00b", "\udcff", "kv; DROP TABLE kv", "kv kv", "1kv", None, 5, "k" * 100_000, b"kv"):
    row("KVault", "module", "KVault", (Path("seed"),), {"table": t, "shared": False}, expect=IA)
for p in (None, 5, 1.5, [], b"\x00", "a\x00b"):
    row("KVault", "module", "KVault", (p,), {"shared": False}, expect=(IA, KVE))
row("KVault", "module", "KVault", ("",), {"shared": False}, note="SQLite: a private temporary db")
row("KVault", "module", "KVault", (Path(b"\xff\xfe.db"),), {"shared": False},
    note="a non-UTF-8 file name is a valid Linux path")
for opt in ("chunk_size", "page_size", "mmap_size", "cache_kb", "read_cache_bytes", "retries"):
    for n in NOT_INTS[1:] + BIG + (-1,):
        if opt == "retries":  # int(retries), at least one attempt (§2.4 may fix)
            exp = (IA,) if n in (None, [], "x") or type(n) is object else (OK, IA)
        elif isinstance(n, int) and n in (2**40,) or opt in ("mmap_size", "cache_kb") and isinstance(n, int) and n < 2**63:
            exp = (OK, IA, KVE)  # a large or negative pragma value SQLite clamps
        else:
            exp = (IA, KVE)
        row("KVault", "module", "KVault", (Path("new"),), {opt: n, "shared": False}, expect=exp,
            note="chunk_size=2**63: also fixed on the errors branch")
row("KVault", "module", "KVault", (Path("new"),), {"backoff_base": -1.0, "shared": False}, expect=IA)
row("KVault", "module", "KVault", (Path("new"),), {"backoff_base": "x", "shared": False}, expect=IA)
row("KVault", "module", "KVault", (Path("new"),), {"shared": [[1]]}, expect=IA,
    note="fixed on the errors branch")
row("KVault", "module", "KVault", (Path("new"),), {"write_mode": None, "shared": False}, expect=IA)
# Closed vault (§4.4): ValueError, except the documented no-ops.
CLOSED_KV = [
    ("__getitem__", (b"seed/b0",)), ("get", (b"seed/b0",)), ("put", (b"x", 1)),
    ("__setitem__", (b"x", 1)), ("__delitem__", (b"seed/b0",)), ("delete", (b"seed/b0",)),
    ("exists", (b"seed/b0",)), ("pop", (b"seed/b0",)), ("setdefault", (b"x", 1)),
    ("update", ({b"x": 1},)), ("put_many", ([(b"x", 1)],)), ("delete_many", ([b"seed/b0"],)),
    ("__len__", ()), ("keys", ()), ("values", ()), ("items", ()), ("__iter__", ()),
    ("clear", ()), ("put_file", (b"x", io.BytesIO(b"abc"))),
    ("get_to_file", (b"seed/b0", io.BytesIO())), ("enable_cache", ()), ("disable_cache", ()),
    ("enable_auto_pack", ()), ("disable_auto_pack", ()), ("auto_pack_enabled", ()),
    ("enable_headers", ()), ("disable_headers", ()), ("headers_enabled", ()),
    ("optimize", ()), ("flush", ()), ("lock_cache", ()), ("cache", ()),
]
for m, a in CLOSED_KV:
    row("KVault", "kv_closed", m, a, expect=ValueError, note="§4.4 closed vault")
for m, a in (("checkpoint", ()), ("close", ()), ("flush_cache", ()), ("__repr__", ()),
             ("__contains__", (b"seed/b0",)), ("__exit__", (None, None, None)), ("__enter__", ())):
    row("KVault", "kv_closed", m, a, note="documented no-op / value on a closed vault")
row("KVault", "kv_closed", "put", (None, 1), expect=ValueError, note="closed wins over bad key")

# ---------------------------------------------------------------------------
# ColumnVault, Column, VarSizeColumn (docs/api.md §6; raw builtins there)
# ---------------------------------------------------------------------------
BAD_NAMES = ("", "a\x00b", "\udcff", "x" * 100_000)
for name in (None, 5, b"fixed", []):
    row("Column", "cv", "__getitem__", (name,), expect=(TypeError, NotFound))
    row("Column", "cv", "create_column", (name, "i64"), expect=TypeError)
    row("Column", "cv", "ensure", (name, "i64"), expect=(TypeError, NotFound))
    row("Column", "cv", "delete_column", (name,), expect=TypeError)
for name in BAD_NAMES:
    row("Column", "cv", "__getitem__", (name,), expect=(NotFound, ValueError))
    row("Column", "cv", "delete_column", (name,), expect=(OK, ValueError))
    row("Column", "cv", "create_column", (name, "i64"), expect=(OK, ValueError),
        note="a NUL or lone surrogate cannot be stored as text: ValueError")
for dt in ("", "i64\x00", "\x00", "\udcff", "str:\x00", "vec:f32:\x00", "bytes:-1",
           "bytes:" + "9" * 30, "vec:f32:" + ":".join(["65536"] * 8), "str:utf8:x:y",
           "vec:f32:0", "msgpack:" + str(2**63), None, 5):
    row("Column", "cv", "create_column", ("hostile_dt", dt),
        expect=IA if isinstance(dt, str) else (IA, TypeError))
for n in (2**63, -1, 0, 2**40, "x", None):
    # 2**40 is a valid size (min > max shows at create_column: "Cannot align")
    exp = (OK,) if n == 2**40 else (TypeError, ValueError, OverflowError, RuntimeError)
    row("Column", "module", "ColumnVault", (Path("seed"),), {"min_chunk_bytes": n}, expect=exp)
    row("Column", "module", "ColumnVault", (Path("seed"),), {"max_chunk_bytes": n}, expect=exp)
for p in (None, 5, b"\x00", "a\x00b"):
    row("Column", "module", "ColumnVault", (p,), expect=(TypeError, ValueError))
row("Column", "cv", "create_column", ("fixed", "i64"), expect=RuntimeError, note="duplicate (§2.5)")
row("Column", "cv", "enable_cache", (2**63, 1), expect=(ValueError, OverflowError))
row("Column", "cv", "enable_cache", (-1, -1), expect=ValueError)
row("Column", "cv", "enable_cache", ("x",), expect=(TypeError, ValueError))
row("Column", "cv", "lock_cache")
row("Column", "cv", "checkpoint")
row("Column", "cv", "__repr__")
for recv in ("col", "vcol"):
    for i in BIG + (10**6, -(10**6)):
        row("Column", recv, "__getitem__", (i,), expect=IndexError)
        row("Column", recv, "__setitem__", (i, 1 if recv == "col" else b"x"), expect=IndexError)
        row("Column", recv, "__delitem__", (i,), expect=IndexError)
        row("Column", recv, "__getitem__", (slice(i, None),))
        row("Column", recv, "__getitem__", (slice(0, 2, i),), expect=ValueError)
        row("Column", recv, "__setitem__", (slice(i, i + 1), [1]), note="empty slice: no-op")
    for i in (None, "0", 1.5, b"0", [0], (0,)):
        row("Column", recv, "__getitem__", (i,), expect=TypeError)
        row("Column", recv, "__setitem__", (i, 1), expect=TypeError)
        row("Column", recv, "__delitem__", (i,), expect=TypeError)
    row("Column", recv, "__getitem__", (slice("a", "b"),), expect=TypeError)
    row("Column", recv, "__delitem__", (slice(0, 1),), expect=TypeError)
    row("Column", recv, "extend", (_BadLen([1]),), expect=(OK, TypeError, ValueError),
        note="a list whose __len__ says 2**40: message also on the errors branch")
    row("Column", recv, "extend", (None,), expect=TypeError)
    row("Column", recv, "extend", (5,), expect=TypeError)
    row("Column", recv, "extend", (iter([object()]),), expect=(TypeError, ValueError))
    row("Column", recv, "append", (object(),), expect=(TypeError, ValueError))
    row("Column", recv, "append", (DEEP_LIST,), expect=(TypeError, ValueError, RecursionError))
    row("Column", recv, "enable_cache", (2**63, 2**63), expect=(ValueError, OverflowError))
    row("Column", recv, "enable_cache", (-1, -1), expect=ValueError)
    row("Column", recv, "enable_cache", (None,), expect=TypeError)
    row("Column", recv, "disable_cache")
    row("Column", recv, "flush_cache")
    row("Column", recv, "__repr__")
    row("Column", recv, "index", (object(),), expect=ValueError)
    row("Column", recv, "count", (object(),))
    row("Column", recv, "__contains__", (None,))
for i in BIG:
    row("Column", "icol", "insert", (i, 1), expect=(OK, OverflowError, IndexError),
        note="clamped like list.insert (§6.5); a scratch column: the front moves")
    row("Column", "col", "append", (i,), expect=(OK, OverflowError, TypeError, ValueError))
    row("Column", "col", "to_numpy", (i, None), expect=(OK, IndexError, ValueError, OverflowError))
for v in (None, "1", 1.5, b"12345678", [1]):
    row("Column", "col", "append", (v,), expect=(TypeError, ValueError))
    row("Column", "col", "__setitem__", (0, v), expect=(TypeError, ValueError))
for v in (None, "s", 1, bytearray(b"x"), memoryview(b"x")):
    row("Column", "vcol", "append", (v,), expect=TypeError, note="bytes column takes bytes (§6.6)")
    row("Column", "vcol", "__setitem__", (0, v), expect=TypeError)
row("Column", "vcol", "insert", (0, b"x"), expect=NotImplementedError)
for recv in ("col", "vcol"):
    row("Column", recv, "pop", (2**63,), expect=IndexError)
    row("Column", recv, "pop", (-(2**63),), expect=IndexError)
    row("Column", recv, "remove", (object(),), expect=ValueError)
    row("Column", recv, "__iadd__", (None,), expect=TypeError)
    row("Column", recv, "__reversed__")
row("Column", "col", "to_numpy", ("a", None), expect=TypeError)
row("Column", "cv", "list_columns")
row("Column", "cv", "flush_cache")
row("Column", "cv", "cache", (-1, -1), expect=ValueError)
row("Column", "vcol", "append", (b"\x00\xff" * 10,))
row("Column", "scol", "append", ("\udcff",), expect=ValueError)
row("Column", "scol", "append", ("a\x00b",))
row("Column", "scol", "append", (b"bytes",), expect=TypeError)
row("Column", "mcol", "append", (DEEP_LIST,), expect=ValueError)
row("Column", "mcol", "append", ({1: 2},), expect=ValueError)
# A column whose vault row was deleted (the closest thing to a closed column).
for m, a in (("__len__", ()), ("__getitem__", (0,)), ("append", (1,)), ("extend", ([1, 2],)),
             ("__setitem__", (0, 5)), ("__delitem__", (0,)), ("insert", (0, 1)), ("clear", ()),
             ("__iter__", ()), ("enable_cache", ()), ("flush_cache", ()), ("disable_cache", ()),
             ("__repr__", ())):
    row("Column", "col_deleted", m, a, expect=(OK, RuntimeError),
        note="stale column: RuntimeError 'column N no longer exists' (raw builtin, §6)")
    row("Column", "col_reused", m, a, expect=(OK, RuntimeError),
        note="its col_id now belongs to another column, which must stay intact")

# ---------------------------------------------------------------------------
# TextVault (docs/api.md §7; methods mapped, constructor raw ValueError)
# ---------------------------------------------------------------------------
for q in (None, 5, b"bytes", ["x"]):
    for m in ("search", "search_with_text", "search_with_snippets", "count_matches", "get"):
        row("TextVault", "tv", m, (q,), expect=IA)
for q in ("", "a\x00b", "\x00", "\udcff", '"', "*", "x" * 100_000, "NEAR(", "a OR"):
    for m in ("search", "search_with_text", "search_with_snippets"):
        row("TextVault", "tv", m, (q,), expect=(OK, IA))
        row("TextVault", "tv", m, (q,), {"escape": False}, expect=(OK, IA, KVE))
    row("TextVault", "tv", "get", (q,), expect=(KVE,),
        note="miss → KohakuVaultError (§2.5); NUL fixed on the errors branch")
    row("TextVault", "tv", "count_matches", (q,), expect=(OK, KVE))
    row("TextVault", "tv", "__getitem__", (q,), expect=KeyError)
    row("TextVault", "tv", "insert", (q, b"v"), expect=(OK, IA))
for k in BIG + (0, -1, None, "3", 1.5):
    row("TextVault", "tv", "search", ("alpha",), {"k": k},
        expect=(OK, IA) if isinstance(k, int) else IA)
    row("TextVault", "tv", "search_with_snippets", ("alpha",), {"snippet_tokens": k},
        expect=(OK, IA) if isinstance(k, int) else IA)
    row("TextVault", "tv", "keys", (), {"limit": k}, expect=(OK, IA) if isinstance(k, int) else IA)
    row("TextVault", "tv", "keys", (), {"offset": k}, expect=(OK, IA) if isinstance(k, int) else IA)
for i in BIG + (-1, 0, 10**9):
    row("TextVault", "tv", "get_by_id", (i,), expect=KVE, note="missing id (§2.5)")
    row("TextVault", "tv", "exists", (i,), expect=(OK, IA))
    row("TextVault", "tv", "__contains__", (i,), expect=(OK, IA))
    row("TextVault", "tv", "delete", (i,), expect=(OK, IA), note="unknown id: nothing (§7.2)")
    row("TextVault", "tv", "update", (i, "t"), expect=(OK, IA))
    row("TextVault", "tv", "update", (i, None, b"v"), expect=(NotFound, IA))
for i in (None, "1", 1.5, b"1"):
    for m in ("get_by_id", "exists", "delete"):
        row("TextVault", "tv", m, (i,), expect=IA)
for col in ("nope", "", "\x00", None, 5):
    row("TextVault", "tv", "search", ("alpha",), {"column": col},
        expect=IA if col is not None else OK)
    row("TextVault", "tv", "search_with_snippets", ("alpha",), {"snippet_column": col},
        expect=IA if col is not None else OK)
for hl in (None, 5, "\x00", "\udcff"):
    row("TextVault", "tv", "search_with_snippets", ("alpha",), {"highlight_start": hl},
        expect=(OK, IA) if isinstance(hl, str) else IA)
for t in (None, 5, {"wrong": "x"}, {"content": 5}, {"content": None}, ["alpha"]):
    row("TextVault", "tv", "insert", (t, b"v"), expect=IA)
row("TextVault", "tv", "insert", ("t", b"v", "meta"), expect=IA)
row("TextVault", "tv", "insert", ("t", DEEP_LIST), expect=KVE)
row("TextVault", "tv", "insert", ("t", _Unpicklable()), expect=KVE)
row("TextVault", "tv", "update", (1,), expect=IA)
row("TextVault", "tv", "info")
for q in ("\x00", "", "\udcff", None):
    row("TextVault", "tv", "__delitem__", (q,), expect=(KeyError, IA),
        note="no match: KeyError (§7.2); not a str: InvalidArgument")
for cols in ([""], ["a\x00b"], ["\udcff"], ["a b"], [], [None], ["a", "a"], "content", [5], [b"x"]):
    row("TextVault", "module", "TextVault", (Path("seed"),), {"columns": cols},
        expect=(ValueError, TypeError))
for t in ("", "a\x00b", "\udcff", "t; DROP TABLE text_vault", None, 5):
    row("TextVault", "module", "TextVault", (Path("seed"),), {"table": t},
        expect=(ValueError, TypeError))
for p in (None, 5, "a\x00b"):
    row("TextVault", "module", "TextVault", (p,), expect=(ValueError, TypeError))
for m, a in (("insert", ("t", b"v")), ("search", ("alpha",)), ("search_with_text", ("alpha",)),
             ("search_with_snippets", ("alpha",)), ("get", ("alpha",)), ("get_by_id", (1,)),
             ("delete", (1,)), ("update", (1, "t")), ("exists", (1,)), ("count", ()),
             ("count_matches", ("alpha",)), ("info", ()), ("clear", ()), ("keys", ()),
             ("__len__", ()), ("__contains__", (1,)), ("__setitem__", ("t", b"v")),
             ("__delitem__", ("alpha",)), ("__repr__", ()),
             ("enable_auto_pack", ()), ("disable_auto_pack", ()), ("auto_pack_enabled", ()),
             ("enable_headers", ()), ("disable_headers", ()), ("headers_enabled", ())):
    row("TextVault", "tv_closed", m, a, expect=IA, note="closed store: InvalidArgument (close())")
row("TextVault", "tv_closed", "__getitem__", ("alpha",), expect=KeyError,
    note="tv[text] turns every KohakuVaultError into KeyError (§7.2)")
row("TextVault", "tv_closed", "close", ())

# ---------------------------------------------------------------------------
# VectorKVault (docs/api.md §8)
# ---------------------------------------------------------------------------
V4 = [0.5, 0.25, 0.125, 1.0]
for vec in (None, 5, (1.0, 2.0, 3.0, 4.0), "abcd", [1.0] * 3, [1.0] * 5, [], [None] * 4,
            ["a"] * 4, [[1.0]] * 4, b"\x00" * 15, np.zeros((2, 2), np.float32),
            np.zeros(10**6, np.float32), [float("nan")] * 4, [2**63] * 4):
    exp = (OK, IA) if isinstance(vec, list) and vec and isinstance(vec[0], (float, int)) \
        and len(vec) == 4 else IA
    row("VectorKVault", "vkv", "insert", (vec, b"v"), expect=exp)
    row("VectorKVault", "vkv", "search", (vec,), expect=exp)
    row("VectorKVault", "vkv", "get", (vec,), expect=exp)
    row("VectorKVault", "vkv", "update", (3, vec), expect=exp, note="id 3: not seeded")
for k in BIG + (0, -1, 4097, None, "3", 1.5):
    row("VectorKVault", "vkv", "search", (V4,), {"k": k}, expect=(OK, IA) if isinstance(k, int) else IA)
for m in ("nope", "\x00", 5, "hamming"):
    row("VectorKVault", "vkv", "search", (V4,), {"metric": m}, expect=IA)
    row("VectorKVault", "vkv", "get", (V4,), {"metric": m}, expect=IA)
for i in BIG + (-1, 0, 10**9):
    row("VectorKVault", "vkv", "get_by_id", (i,), expect=KVE)
    row("VectorKVault", "vkv", "exists", (i,), expect=(OK, IA))
    row("VectorKVault", "vkv", "delete", (i,), expect=(OK, IA))
    row("VectorKVault", "vkv", "update", (i, None, b"v"), expect=(NotFound, IA))
for i in (None, "1", 1.5):
    for m in ("get_by_id", "exists", "delete"):
        row("VectorKVault", "vkv", m, (i,), expect=IA)
row("VectorKVault", "vkv", "insert", (V4, b"v", "meta"), expect=IA)
row("VectorKVault", "vkv", "insert", (V4, DEEP_LIST), expect=KVE)
row("VectorKVault", "vkv", "insert_many", ([V4, [1.0] * 3], [1, 2]), expect=IA)
row("VectorKVault", "vkv", "insert_many", ([V4, V4], [1]), expect=IA)
row("VectorKVault", "vkv", "insert_many", (np.zeros((2, 4), np.float32), None), expect=IA)
row("VectorKVault", "vkv", "search_many", ([V4], ), {"k": 2**63}, expect=IA)
row("VectorKVault", "vkv", "update", (1,), expect=IA)
row("VectorKVault", "vkv", "info")
for q in (np.zeros((2, 3), np.float32), [[1.0] * 4, [1.0] * 3], None, [[None] * 4]):
    row("VectorKVault", "vkv", "search_many", (q,), expect=IA)
for kw in ({"dimensions": 0}, {"dimensions": -1}, {"dimensions": 2**63}, {"dimensions": 2**40},
           {"dimensions": None}, {"dimensions": "4"}, {"metric": "\x00"}, {"metric": None},
           {"vector_type": "\x00"}, {"table": ""}, {"table": "a\x00b"}, {"table": "\udcff"},
           {"table": None}, {"table": "t; DROP TABLE vec_kvault"}, {"threads": -1},
           {"threads": 2**63}, {"dimensions": 4, "metric": "hamming", "vector_type": "bit"}):
    row("VectorKVault", "module", "VectorKVault", (Path("seed"),), kw,
        expect=(ValueError, TypeError, RuntimeError, OverflowError))
for m, a in (("insert", (V4, b"v")), ("search", (V4,)), ("get", (V4,)), ("get_by_id", (1,)),
             ("delete", (1,)), ("update", (1, V4)), ("exists", (1,)), ("count", ()),
             ("info", ()), ("__len__", ()), ("__contains__", (1,)), ("__setitem__", (V4, b"v")),
             ("insert_many", ([V4], [1])), ("search_many", ([V4],)), ("__repr__", ()),
             ("enable_auto_pack", ()), ("disable_auto_pack", ()), ("auto_pack_enabled", ()),
             ("enable_headers", ()), ("disable_headers", ()), ("headers_enabled", ())):
    row("VectorKVault", "vkv_closed", m, a, expect=IA, note="closed store: InvalidArgument (close())")
row("VectorKVault", "vkv_closed", "__getitem__", (V4,), expect=KeyError)
row("VectorKVault", "vkv_closed", "close", ())

# ---------------------------------------------------------------------------
# DataPacker (docs/api.md §5: raw ValueError / TypeError)
# ---------------------------------------------------------------------------
for dt in ("", "\x00", "i64\x00", "\udcff", "str:\x00", "str:" + str(2**63), "str:" + str(2**64),
           "bytes:" + str(2**63), "bytes:-1", "vec:f32:" + str(2**63), "vec:f32:" + ":".join(["4096"] * 9),
           "vec:f32:0", "vec:", "vec:f33", "msgpack:" + "9" * 40, "str:4:utf8:x", "str:4:\x00",
           "str:-4", "bytes: 4", "vec:f32:-1"):
    row("DataPacker", "module", "DataPacker", (dt,), expect=(ValueError,),
        note="size overflow: spelled out on the errors branch")
for dt in (None, 5, b"i64"):
    row("DataPacker", "module", "DataPacker", (dt,), expect=TypeError)
row("DataPacker", "module", "DataPacker", ("vec:u8:" + ":".join(["65536"] * 4),),
    expect=(ValueError, OverflowError, MemoryError), note="2**64 elements")
for recv, bad_vals in (("p_i64", (None, "1", 1.5, 2**63, -(2**63) - 1, [])),
                       ("p_f64", (None, "x", [], 10**400)),
                       ("p_str", (None, 5, b"x", "\udcff")),
                       ("p_str4", ("toolong", 5, "\udcff")),
                       ("p_bytes", (None, 5, "s", [256], [-1], [object()])),
                       ("p_bytes4", (b"toolong", None)),
                       ("p_msgpack", (DEEP_LIST, DEEP_DICT, {1: 2}, b"x",
                                      2**64, object(), float("nan") + 1j)),
                       ("p_cbor", (DEEP_LIST, DEEP_DICT, {1: 2}, 2**64, object())),
                       ("p_vec", (None, "abc", [[1, 2], [3]], object(), [1.0] * 3, np.zeros((2, 2)))),
                       ("p_vecany", ("abc", [[1, 2], [3]], object(), {"a": 1})),
                       ("p_schema", ({"n": "x"}, {"m": 1}, DEEP_DICT))):
    for v in bad_vals:
        row("DataPacker", recv, "pack", (v,), expect=(TypeError, ValueError, OverflowError))
    row("DataPacker", recv, "pack_many", (list(bad_vals[:1]) * 2,),
        expect=(TypeError, ValueError, OverflowError))
    row("DataPacker", recv, "pack_many", (None,), expect=TypeError)
    row("DataPacker", recv, "pack_many", (5,), expect=TypeError)
    for data, off in ((b"", 0), (b"\x00" * 7, 0), (b"\xff" * 64, 0), (b"\x00" * 16, 2**63),
                      (b"\x00" * 16, -1), (b"\x00" * 16, -(2**63)), (b"\x00" * 16, 17),
                      (b"\x91" * 200_000 + b"\xc0", 0), (b"\x81" * 200_000, 0),
                      (b"\x9f" * 200_000, 0), (b"\xdd\xff\xff\xff\xff", 0), (b"\xdf\xff\xff\xff\xff", 0),
                      (b"\x01\xff" + b"\xff" * 1020, 0), (b"\x01\x08" + b"\xff\xff\xff\xff" * 8, 0)):
        row("DataPacker", recv, "unpack", (data, off),
            expect=(OK, ValueError, OverflowError, IndexError))
    for data, count, offs in ((b"\x00" * 16, 2**63, None), (b"\x00" * 16, -1, None),
                              (b"\x00" * 16, None, [2**63]), (b"\x00" * 16, None, [-1]),
                              (b"\x00" * 16, None, [5, 2]), (b"\x00" * 16, None, [None]),
                              (b"\x00" * 16, None, "ab"), (b"\x00" * 16, 2**40, [0])):
        row("DataPacker", recv, "unpack_many", (data,), {"count": count, "offsets": offs},
            expect=(OK, ValueError, OverflowError, TypeError, IndexError))
    row("DataPacker", recv, "unpack", (None, 0), expect=TypeError)
    row("DataPacker", recv, "unpack", ("str", 0), expect=TypeError)
    row("DataPacker", recv, "unpack", (b"", "0"), expect=TypeError)
for s in (None, 5, {"type": 5}, {"type": "object", "required": 5},
          {"type": "object", "properties": {"a": {"minimum": "x"}}}, DEEP_SCHEMA):
    row("DataPacker", "DataPacker", "with_json_schema", (s,), expect=(ValueError, TypeError))
for s in (5, b"x", "\x00"):
    row("DataPacker", "DataPacker", "with_cddl_schema", (s,), expect=(OK, TypeError))

# ---------------------------------------------------------------------------
# CSBTree and SkipList (docs/api.md §9)
# ---------------------------------------------------------------------------
for recv in ("csb", "skl"):
    grp = "CSBTree" if recv == "csb" else "SkipList"
    for k in ("str", None, b"x", float("nan"), object(), [1]):
        row(grp, recv, "insert", (k, 1), expect=TypeError, note="not orderable with int keys")
        row(grp, recv, "get", (k,), expect=TypeError)
        row(grp, recv, "remove", (k,), expect=TypeError)
        row(grp, recv, "__contains__", (k,), expect=TypeError)
        row(grp, recv, "__getitem__", (k,), expect=TypeError)
        row(grp, recv, "__delitem__", (k,), expect=TypeError)
        row(grp, recv, "range", (k, 5), expect=TypeError)
    for k in BIG + (10**100, -(10**100), 1.0, True):
        row(grp, recv, "get", (k,))
        row(grp, recv, "range", (k, -k))
    row(grp, recv, "insert", (1,), expect=TypeError)
    row(grp, recv, "insert", (1, 2, 3), expect=TypeError)
    row(grp, recv, "range", (1,), expect=TypeError)
    row(grp, recv, "__getitem__", (-12345,), expect=KeyError)
    row(grp, recv, "__delitem__", (-12345,), expect=KeyError)
    row(grp, recv, "__reduce__", (), expect=TypeError)
    row(grp, recv, "__repr__")
    for m in ("keys", "values", "items", "__iter__", "__len__", "is_empty"):
        row(grp, recv, m)
row("CSBTree", "csb", "get_default", (None, 1), expect=TypeError)
row("CSBTree", "csb", "setdefault", ("s", 1), expect=TypeError)
for p in (None, 5, "ab", [(1,)], [None], [("s", 1)], {"a": 1}, _RaisingIter()):
    # items are indexed as item[0], item[1] (§9): a short item → IndexError
    row("CSBTree", "csb", "update", (p,), expect=(TypeError, ValueError, IndexError, OSError),
        note='update("ab"): clearer message on the errors branch')
row("CSBTree", "csb", "update", ([(1, 2, 3)],), note="item[0], item[1] of a longer item")
for o in (None, "63", 1.5, -1, 0, 2, 2**63, 2**40, 10**6):
    row("CSBTree", "module", "CSBTree", (o,), expect=(OK, TypeError, ValueError, OverflowError, MemoryError))
row("SkipList", "module", "SkipList", (1,), expect=TypeError)

# ---------------------------------------------------------------------------
# Package-level names (python/kohakuvault/__init__.py)
# ---------------------------------------------------------------------------
for cls in ("MsgPack", "Json", "Cbor", "Pickle"):
    row("module", "module", cls, (), expect=TypeError)
    row("module", "module", cls, (None,), note="wrappers hold any object (§3.5)")
for cls in ("KohakuVaultError", "InvalidArgument", "DatabaseBusy"):
    row("module", "module", cls, (None,))
row("module", "module", "NotFound", (None,))
row("module", "module", "NotFound", (), expect=TypeError)
row("module", "module", "IoError", (None, None))
row("module", "module", "migrate_vec0", (Path("seed"), "kv"), expect=(ValueError, IA, KVE))
row("module", "module", "migrate_vec0", (Path("seed"), "a\x00b"), expect=(ValueError, IA, KVE))
row("module", "module", "migrate_vec0", (None, "kv"), expect=(TypeError, IA, KVE))
row("module", "module", "migrate_vec0", (Path("missing"), "\udcff"), expect=(ValueError, IA, KVE))
for name in ("KVault", "ColumnVault", "TextVault", "VectorKVault"):
    row("module", "module", name, (Path("a_dir/"),), expect=(IA, KVE, ValueError, RuntimeError, OSError),
        note="a directory opened as db: message fixed on the errors branch")


# ---------------------------------------------------------------------------
# Scenario rows: re-entrancy, signals, threads racing close(), comparisons
# that mutate the ordered map. Each scenario raises AssertionError (with the
# unexpected exceptions it saw) if a call went wrong.
# ---------------------------------------------------------------------------

def _expect_only(errors, allowed, what):
    bad = [e for e in errors if not isinstance(e, allowed)]
    if bad:
        raise AssertionError(f"{what}: unexpected {[f'{type(e).__name__}: {e}' for e in bad[:5]]}")


class _Finalizer:
    """Calls ``fn`` from ``__del__`` (errors collected in ``sink``)."""

    def __init__(self, fn, sink):
        self.fn, self.sink = fn, sink

    def __del__(self):
        try:
            self.fn()
        except Exception as e:  # noqa: BLE001 - reported by the scenario
            self.sink.append(e)


class _Hook:
    """A value whose pickling (or a stream whose read/write) runs ``fn``,
    i.e. Python code inside a vault call; ``fn`` typically drops the last
    reference to a _Finalizer."""

    def __init__(self, fn, payload=b"abc"):
        self.fn, self.payload = fn, payload

    def __reduce__(self):
        self.fn()
        return (bytes, (b"hook",))

    def read(self, n=-1):
        self.fn()
        out, self.payload = self.payload[: n if n >= 0 else None], self.payload[n if n >= 0 else len(self.payload):]
        return out

    def write(self, b):
        self.fn()
        return len(b)

    def __index__(self):  # an i64 column packs it: Python code inside append
        self.fn()
        return 7


def _reentry_calls(kind, store, ctx):
    """Calls a finalizer or callback makes on ``store`` (closing last)."""
    if kind == "KVault":
        return [lambda: store.get(b"seed/b0"), lambda: store.put(b"hostile/re", 1),
                lambda: store.delete(b"hostile/re"), lambda: list(store.keys(limit=3)),
                store.flush_cache, store.close]
    if kind == "TextVault":
        return [lambda: store.search("alpha"), lambda: store.insert("re", 1), store.count,
                store.close]
    if kind == "VectorKVault":
        return [lambda: store.search(V4), lambda: store.insert(V4, 1), store.count, store.close]
    if kind == "Column":
        return [lambda: store[0], lambda: store.append(7), lambda: len(store), store.flush_cache,
                lambda: ctx.delete_column("scratch")]
    raise AssertionError(kind)


def scenario_reentrant(env, kind, via):
    """Python code running inside a vault call re-enters the vault: a
    ``__del__`` fired by the value's pickling or by a stream's read/write,
    and direct calls from those callbacks. Every call must either work or
    raise the class's own errors; no hang (watchdog), no crash."""
    store, ctx, allowed = env.scratch(kind)
    errors: list = []
    if kind == "KVault":
        ops = [lambda h: store.put(b"hostile/hook", h),
               lambda h: store.put_file(b"hostile/hookf", h, size=3, chunk_size=1),
               lambda h: store.get_to_file(b"seed/b0", h, chunk_size=1)]
    elif kind == "TextVault":
        ops = [lambda h: store.insert("hook", h)]
    elif kind == "VectorKVault":
        ops = [lambda h: store.insert(V4, h)]
    else:
        ops = [store.append]
    for call in _reentry_calls(kind, store, ctx):
        for op in ops:
            holder = [_Finalizer(call, errors)]

            def fire(call=call, holder=holder):
                if via == "del":
                    holder.clear()  # drops the last reference: __del__ runs here
                else:
                    try:
                        call()
                    except Exception as e:  # noqa: BLE001
                        errors.append(e)

            try:
                op(_Hook(fire))
            except Exception as e:  # noqa: BLE001
                errors.append(e)
            holder.clear()
    _expect_only(errors, allowed, f"{kind} re-entered via {via}")


def _under_timer(in_handler, in_loop, seconds, errors):
    """Run ``in_loop(i)`` for ``seconds`` while a timer signal fires every
    0.5 ms and its handler runs ``in_handler(n)``; exceptions of both go to
    ``errors``. Returns how many signals were handled."""
    n = [0]

    def handler(signum, frame):
        n[0] += 1
        try:
            in_handler(n[0])
        except Exception as e:  # noqa: BLE001 - reported by the scenario
            errors.append(e)

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
    try:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            i += 1
            try:
                in_loop(i)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    if n[0] == 0:
        raise AssertionError("the timer never fired")
    return n[0]


def scenario_signal(env, kind):
    """A timer signal fires every 0.5 ms into a loop of vault calls, and the
    handler calls the vault too (also while Python code runs inside a vault
    call: the loop stores values whose packing runs Python code)."""
    store, ctx, allowed = env.scratch(kind)
    errors: list = []
    calls = _reentry_calls(kind, store, ctx)[:-1]  # not the closing call

    def in_loop(i):
        calls[i % len(calls)]()
        if kind == "KVault":
            store.put(b"hostile/sig", _Hook(lambda: None))
        elif kind in ("TextVault", "VectorKVault"):
            store.insert("sig" if kind == "TextVault" else V4, _Hook(lambda: None))
        else:
            store.append(_Hook(lambda: None))

    n = _under_timer(lambda n: calls[n % len(calls)](), in_loop, 0.4, errors)
    _expect_only(errors, allowed, f"{kind} from a signal handler ({n} signals)")


def scenario_iter_after_close(env, kind):
    """An iteration started before close() (KVault) or delete_column
    (Column) goes on afterwards: it may finish from what it read already or
    raise the closed-object error, never crash."""
    store, ctx, allowed = env.scratch(kind)
    it = iter(store)
    next(it)
    _reentry_calls(kind, store, ctx)[-1]()
    gc.collect()
    try:
        for _ in it:
            pass
    except allowed:
        pass


def scenario_close_inside_call(env):
    """KVault.close() from a put_file reader or a get_to_file writer is
    refused (the call in progress holds the vault); the vault stays usable
    and closes after."""
    kv, _ctx, _allowed = env.scratch("KVault")
    refused = []

    def fire():
        try:
            kv.close()
        except KohakuVaultError as e:
            refused.append(e)

    for call in (lambda: kv.put_file(b"hostile/closing", _Hook(fire), size=3, chunk_size=1),
                 lambda: kv.get_to_file(b"hostile/closing", _Hook(fire), chunk_size=1)):
        refused.clear()
        call()
        if not refused or kv.closed or kv.get(b"seed/b0") != SEED_KV[b"seed/b0"]:
            raise AssertionError(f"close inside a stream: refused={refused}, closed={kv.closed}")
    kv.close()
    if not kv.closed:
        raise AssertionError("close() after the call did not close")


def scenario_close_race(env, kind):
    """Four threads call methods in a loop while the main thread closes the
    store (KVault: with its write-back cache and flush daemon running;
    ColumnVault has no close(): it deletes the column instead).
    Every call must work or raise the closed-object error."""
    store, ctx, allowed = env.scratch(kind)
    if kind == "KVault":  # with the write-back cache and its flush daemon running
        store.enable_cache(cap_bytes=4096, flush_threshold=1024, flush_interval=0.01)
    calls = _reentry_calls(kind, store, ctx)[:-1]
    errors: list = []
    stop = threading.Event()

    def worker(j):
        i = j
        while not stop.is_set():
            i += 1
            try:
                calls[i % len(calls)]()
            except Exception as e:  # noqa: BLE001
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(j,)) for j in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    try:
        _reentry_calls(kind, store, ctx)[-1]()
    finally:
        time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(5)
    if any(t.is_alive() for t in threads):
        raise AssertionError("a thread hung after close()")
    _expect_only(errors, allowed, f"{kind} racing close()")


class _MutKey:
    """An int-like key whose comparisons run ``action`` (once ``armed``)."""

    armed = False
    action: Callable[[], Any] = staticmethod(lambda: None)

    def __init__(self, v):
        self.v = v

    def _cmp(self, other):
        if _MutKey.armed:
            _MutKey.armed = False  # one mutation per operation
            try:
                _MutKey.action()
            except RuntimeError as e:  # re-entry refused: the documented outcome
                _MutKey.seen.append(e)
        return other.v if isinstance(other, _MutKey) else other

    def __lt__(self, other):
        return self.v < self._cmp(other)

    def __gt__(self, other):
        return self.v > self._cmp(other)

    def __eq__(self, other):
        return self.v == self._cmp(other)

    def __hash__(self):
        return hash(self.v)

    seen: list = []


def scenario_mutating_compare(env, kind, op, mutation):
    """A key's comparison inserts into / removes from / clears the map
    during ``op``. The map must refuse the re-entry (RuntimeError inside the
    comparison) or cope; afterwards it is a consistent ordered map."""
    t = CSBTree(order=4) if kind == "CSBTree" else SkipList()
    keys = [_MutKey(i) for i in range(0, 200, 2)]
    for k in keys:
        t.insert(k, k.v)
    victim = _MutKey(1000)
    mutations = {
        "insert": lambda: t.insert(_MutKey(-5), -5),
        "remove": lambda: t.remove(keys[10]),
        "clear": t.clear,
        "drop": lambda: keys.clear(),  # drops the test's references to stored keys
    }
    _MutKey.action = staticmethod(mutations[mutation])
    _MutKey.seen = []
    probe = _MutKey(51)
    for _ in range(3):
        _MutKey.armed = True
        try:
            if op == "insert":
                t.insert(probe, 51)
            elif op == "remove":
                t.remove(_MutKey(20))
            elif op == "get":
                t.get(_MutKey(40))
            elif op == "range":
                t.range(_MutKey(10), _MutKey(60))
            elif op == "iter":
                for kk, _v in t:
                    _ = kk < victim
            elif op == "contains":
                _ = _MutKey(30) in t
        except RuntimeError:
            pass  # a re-entrant/concurrent call refused (§9, CSBTree)
    _MutKey.armed = False
    got = [k.v for k in t.keys()]
    if got != sorted(got) or len(got) != len(t) or len(set(got)) != len(got):
        raise AssertionError(f"{kind} inconsistent after {mutation} during {op}: {got[:20]}")
    for v in got:
        if t.get(_MutKey(v)) != v:
            raise AssertionError(f"{kind}: key {v} lost its value")


def scenario_tree_threads(env, kind):
    """Threads insert/remove/iterate while keys' comparisons release the GIL."""
    t = CSBTree(order=4) if kind == "CSBTree" else SkipList()
    errors: list = []

    class Slow(int):
        def __lt__(self, o):
            time.sleep(0)
            return int(self) < int(o)

    def worker(j):
        for i in range(100):
            try:
                k = Slow((i * 7 + j) % 97)
                t.insert(k, j)
                t.get(k)
                if i % 3 == 0:
                    t.remove(k)
                if i % 25 == 0:
                    list(t)
                    t.range(Slow(10), Slow(50))
            except Exception as e:  # noqa: BLE001
                errors.append(e)

    th = [threading.Thread(target=worker, args=(j,)) for j in range(4)]
    for x in th:
        x.start()
    for x in th:
        x.join(10)
    _expect_only(errors, (RuntimeError,) if kind == "CSBTree" else (), f"{kind} threads")
    got = list(t.keys())
    if got != sorted(got):
        raise AssertionError(f"{kind} unordered after threads")


STORES = ("KVault", "TextVault", "VectorKVault", "Column")
for kind in STORES:
    for via in ("del", "callback"):
        row(kind, "scenario", "reentrant", (kind, via))
    row(kind, "scenario", "signal", (kind,))
    row(kind, "scenario", "close_race", (kind,))
    if kind in ("KVault", "Column"):
        row(kind, "scenario", "iter_after_close", (kind,))
row("KVault", "scenario", "close_inside_call")
for kind in ("CSBTree", "SkipList"):
    for op in ("insert", "remove", "get", "range", "iter", "contains"):
        for mutation in ("insert", "remove", "clear", "drop"):
            row(kind, "scenario", "mutating_compare", (kind, op, mutation),
                note="SkipList.remove under a mutating comparison was reported to crash")
    row(kind, "scenario", "tree_threads", (kind,))
    row(kind, "scenario", "signal_tree", (kind,))


def scenario_signal_tree(env, kind):
    """A timer signal's handler inserts/removes while the main loop does the
    same; a refused re-entry (RuntimeError) is the only error allowed."""
    t = CSBTree(order=4) if kind == "CSBTree" else SkipList()
    errors: list = []

    class K(int):
        def __lt__(self, o):
            return int(self) < int(o)

    def in_handler(n):
        t.insert(K(n % 50), 1)
        t.remove(K((n + 7) % 50))
        list(t)

    def in_loop(i):
        t.insert(K(i % 50), i)
        t.get(K((i * 3) % 50))
        t.remove(K((i * 5) % 50))
        t.range(K(5), K(40))

    _under_timer(in_handler, in_loop, 0.3, errors)
    _expect_only(errors, (RuntimeError,), f"{kind} signals")
    got = list(t.keys())
    if got != sorted(got) or len(got) != len(t):
        raise AssertionError(f"{kind} inconsistent after signals")


SCENARIOS = {
    "reentrant": scenario_reentrant,
    "signal": scenario_signal,
    "close_race": scenario_close_race,
    "iter_after_close": scenario_iter_after_close,
    "close_inside_call": scenario_close_inside_call,
    "mutating_compare": scenario_mutating_compare,
    "tree_threads": scenario_tree_threads,
    "signal_tree": scenario_signal_tree,
}

# ---------------------------------------------------------------------------
# The KVault rows again against attached objects: a kvault-writer serves the
# child's seeded file, and "kva" / "kva_closed" are KVault(shared=True)
# objects on it (the scenarios' scratch vaults too). Constructor rows run on
# the served file with shared=True; the in-memory vault and the fresh files
# (which no writer serves) stay with the embedded rows.
# ---------------------------------------------------------------------------
ATTACHED = "KVault-attached"


def _beyond_shared_key_limit(r):
    """A put of a key shared mode refuses: empty, or longer than 4096 bytes
    encoded (docs/shared-mode.md, "Differences from embedded mode")."""
    key = r.args[0] if r.method == "put" and r.args else None
    if isinstance(key, str):
        key = key.encode("utf-8", "surrogatepass")
    return isinstance(key, bytes) and not 1 <= len(key) <= 4096


for r in [r for r in ROWS if r.group == "KVault"]:
    if r.recv in ("kv", "kv_closed"):
        ROWS.append(r._replace(group=ATTACHED, recv="kva" + r.recv[2:],
                               expect=(IA,) if _beyond_shared_key_limit(r) else r.expect))
    elif r.recv == "scenario":
        ROWS.append(r._replace(group=ATTACHED))
    elif (r.recv == "module" and r.args and isinstance(r.args[0], Path)
          and r.args[0].name in ("seed", "new") and r.kwargs.get("shared") is False):
        ROWS.append(r._replace(group=ATTACHED, args=(Path("seed"),) + r.args[1:],
                               kwargs=dict(r.kwargs, shared=True)))

GROUPS = sorted({r.group for r in ROWS})


def scenario_segfault(env):
    import ctypes

    ctypes.string_at(0)  # reads address 0: SIGSEGV


def scenario_hang(env):
    threading.Event().wait()


SCENARIOS.update(segfault=scenario_segfault, hang=scenario_hang)
# Rows of the harness's own test (test_harness_reports_crashes_and_hangs),
# numbered after ROWS and not part of GROUPS.
HARNESS_ROWS = [Row("_harness", "scenario", m, (), {}, (OK,), "") for m in ("segfault", "hang")]
HARNESS_ROWS.append(Row("_harness", "csb", "__len__", (), {}, (OK,), "runs after both"))
ALL_ROWS = ROWS + HARNESS_ROWS

# ---------------------------------------------------------------------------
# Child process: receivers, seeded data, row runner
# ---------------------------------------------------------------------------

SEED_KV = {b"seed/b0": b"raw\x00bytes", b"seed/i": 42, b"seed/s": "text \u2603",
           b"seed/d": {"a": [1, 2]}, "seed/str-key": 1.5, b"seed/\xff": b"x"}
SEED_FIXED = [1, -2, 2**62, 0]
SEED_VAR = [b"", b"\x00\xff", b"abc" * 100]
SEED_STR = ["a", "\u2603", ""]
SEED_VICTIM = [7, 8, 9]
SEED_TEXT = [("alpha beta", b"v1"), ("gamma \u2603 alpha", {"x": 1}), ("delta", 3)]
SEED_VEC = [([1.0, 0.0, 0.0, 0.0], b"v1"), ([0.0, 1.0, 0.0, 0.0], "two")]


def _open_vkv(path):
    return VectorKVault(path, dimensions=4, metric="l2")


# kind → (open a store on a path, write the seed data into an open store)
SEEDED_STORES = {
    "kv": (lambda p: KVault(p, shared=False), lambda kv: kv.update(SEED_KV)),
    "kva": (lambda p: KVault(p, shared=True), lambda kv: kv.update(SEED_KV)),
    "tv": (TextVault, lambda tv: [tv.insert(t, v) for t, v in SEED_TEXT]),
    "vkv": (_open_vkv, lambda vkv: [vkv.insert(v, val) for v, val in SEED_VEC]),
}


def _start_writer(db):
    """A kvault-writer serving db (ready), SIGTERMed if this child dies."""
    from kohakuvault._writer import writer_binary

    from conftest import die_with_parent

    proc = subprocess.Popen([writer_binary(), "--cache-size", "32M", "--shards", "1", db],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=die_with_parent)
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        raise RuntimeError(f"kvault-writer did not start: {proc.stderr.read()[-2000:]}")
    return proc


class Env:
    """The child's receivers, built on first use, and the seeded data to check."""

    def __init__(self, tmp, group=""):
        self.tmp = tmp
        self.seed = os.path.join(tmp, "seed.db")
        self.objs: dict[str, Any] = {}
        self.seeded: set[str] = set()  # stores written with seed data
        self.n = 0
        os.mkdir(os.path.join(tmp, "a_dir"))
        # the attached group: a writer serves the seeded file for every row
        self.writer = _start_writer(self.seed) if group == ATTACHED else None

    def path(self, name):
        if name == "seed":
            return self.seed
        self.n += 1
        if isinstance(name, bytes):
            return os.path.join(os.fsencode(self.tmp), name)
        if name.endswith("/"):
            return os.path.join(self.tmp, name)
        return os.path.join(self.tmp, f"{name}{self.n}.db")

    def resolve(self, a):
        if isinstance(a, Path):
            return self.path(a.name)
        return a

    # seeded stores -------------------------------------------------------
    def _store(self, kind, closed=False):
        """A new KVault ("kv"), TextVault ("tv") or VectorKVault ("vkv") on
        the seed file; the first one writes the seed data."""
        open_store, seed = SEEDED_STORES[kind]
        store = open_store(self.seed)
        if kind == "kva":
            kind = "kv"  # the same data, written through the writer
        if kind not in self.seeded:
            seed(store)
            self.seeded.add(kind)
        if closed:
            store.close()
        return store

    def _cv(self):
        cv = ColumnVault(self.seed)
        if "cv" not in self.seeded:
            cv.create_column("fixed", "i64").extend(SEED_FIXED)
            cv.create_column("var", "bytes").extend(SEED_VAR)
            cv.create_column("str", "str").extend(SEED_STR)
            cv.create_column("mp", "msgpack")
            cv.create_column("doomed", "i64").extend([5, 6])
            self.seeded.add("cv")
        return cv

    def receiver(self, name):
        if name in self.objs:
            return self.objs[name]
        packers = {"p_i64": "i64", "p_f64": "f64", "p_str": "str", "p_str4": "str:4",
                   "p_bytes": "bytes", "p_bytes4": "bytes:4", "p_msgpack": "msgpack",
                   "p_cbor": "cbor", "p_vec": "vec:f32:4", "p_vecany": "vec:f32"}
        if name in packers:
            obj = DataPacker(packers[name])
        elif name == "p_schema":
            obj = DataPacker.with_json_schema(
                {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
        elif name == "module":
            obj = K
        elif name == "DataPacker":
            obj = DataPacker
        elif name == "kv":
            obj = self._store("kv")
        elif name == "kv_memory":
            obj = KVault(":memory:", shared=False)
        elif name == "kv_closed":
            obj = self._store("kv", closed=True)
        elif name == "kva":
            obj = self._store("kva")
        elif name == "kva_closed":
            obj = self._store("kva", closed=True)
        elif name == "cv":
            obj = self._cv()
        elif name == "icol":
            obj = self.receiver("cv").ensure("ins", "i64")
        elif name in ("col", "vcol", "scol", "mcol"):
            obj = self.receiver("cv")[{"col": "fixed", "vcol": "var", "scol": "str", "mcol": "mp"}[name]]
        elif name == "col_reused":
            cv = self.receiver("cv")
            obj = cv.create_column("victim_old", "i64")
            obj.extend([1, 2])
            cv.delete_column("victim_old")
            cv.create_column("victim", "i64").extend(SEED_VICTIM)  # takes the freed col_id
            self.seeded.add("victim")
        elif name == "col_deleted":
            cv = self.receiver("cv")
            obj = cv["doomed"]
            cv.delete_column("doomed")
        elif name == "tv":
            obj = self._store("tv")
        elif name == "tv_closed":
            obj = self._store("tv", closed=True)
        elif name == "vkv":
            obj = self._store("vkv")
        elif name == "vkv_closed":
            obj = self._store("vkv", closed=True)
        elif name == "csb":
            obj = CSBTree(order=4)
            for i in range(50):
                obj.insert(i, -i)
        elif name == "skl":
            obj = SkipList()
            for i in range(50):
                obj.insert(i, -i)
        else:
            raise KeyError(name)
        self.objs[name] = obj
        return obj

    def scratch(self, kind):
        """A fresh store of ``kind`` on the seeded file (so that damage shows
        in the final check), the context its calls need, and the exception
        classes its scenario calls may raise."""
        if kind == "KVault":
            attached = self.writer is not None
            self._store("kva" if attached else "kv").close()
            # closed (ValueError, §4.4) or a re-entrant call refused
            # (KohakuVaultError: it would wait for itself)
            return KVault(self.seed, shared=attached), None, (ValueError, KohakuVaultError)
        if kind == "TextVault":
            self._store("tv").close()
            return TextVault(self.seed), None, (InvalidArgument,)
        if kind == "VectorKVault":
            self._store("vkv").close()
            return _open_vkv(self.seed), None, (InvalidArgument,)
        cv = self._cv()
        col = cv.ensure("scratch", "i64")
        col.extend([1, 2, 3])
        # RuntimeError: "column N no longer exists" once the race deleted it
        return col, cv, (NotFound, IndexError, ValueError, RuntimeError)

    # integrity -----------------------------------------------------------
    def check(self):
        """Problems found comparing the seeded file with the seed data."""
        problems = []
        gc.collect()
        if self.writer is not None:  # it commits everything applied, then the file is read
            self.writer.terminate()
            if self.writer.wait(60) != 0:
                problems.append(f"kvault-writer exited {self.writer.returncode}: "
                                f"{self.writer.stderr.read()[-2000:]}")
        if "kv" in self.seeded:
            with KVault(self.seed, shared=False) as kv:
                for k, v in SEED_KV.items():
                    got = kv.get(k, "<missing>")
                    if got != v:
                        problems.append(f"KVault {k!r}: {got!r} != {v!r}")
        if "cv" in self.seeded:
            cv = ColumnVault(self.seed)
            # rows append to the seeded columns: their first elements must stay
            cols = [("fixed", SEED_FIXED, 1), ("var", SEED_VAR, 1), ("str", SEED_STR, 1)]
            if "victim" in self.seeded:  # no row may touch it at all
                cols.append(("victim", SEED_VICTIM, 0))
            for name, want, prefix in cols:
                got = list(cv[name])
                if (got[: len(want)] if prefix else got) != want:
                    problems.append(f"column {name}: {got[:10]!r} != {want!r}")
        if "tv" in self.seeded:
            tv = TextVault(self.seed)
            for i, (t, v) in enumerate(SEED_TEXT, 1):
                try:
                    got = tv.get_by_id(i)
                except KohakuVaultError as e:
                    got = repr(e)
                if got != (t, v):
                    problems.append(f"TextVault doc {i}: {got!r} != {(t, v)!r}")
            tv.close()
        if "vkv" in self.seeded:
            vkv = _open_vkv(self.seed)
            for i, (vec, val) in enumerate(SEED_VEC, 1):
                try:
                    got_vec, got = vkv.get_by_id(i)
                    ok = got == val and got_vec.tolist() == vec
                except KohakuVaultError as e:
                    ok, got = False, repr(e)
                if not ok:
                    problems.append(f"VectorKVault row {i}: {got!r} != {val!r}")
            vkv.close()
        return problems


def _consume(result):
    """Run lazy results (generators, iterators, context managers) so their
    errors surface inside the row."""
    if hasattr(result, "__next__"):
        for _ in result:
            pass
    elif hasattr(result, "__enter__") and hasattr(result, "__exit__") and not isinstance(
            result, (KVault, ColumnVault)):
        with result:
            pass
    return result


def run_row(env, r):
    """Outcome of one row: (passed, description)."""
    args = tuple(env.resolve(a) for a in r.args)
    try:
        if r.recv == "scenario":
            SCENARIOS[r.method](env, *args)
        else:
            fn = getattr(env.receiver(r.recv), r.method)
            out = _consume(fn(*args, **r.kwargs))
            if r.recv == "module" and hasattr(out, "close"):
                out.close()
    except BaseException as e:  # noqa: BLE001 - classified below
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        got = f"{type(e).__module__}.{type(e).__qualname__}: {str(e)[:300]}"
        if isinstance(e, AssertionError) and r.recv == "scenario":
            return False, got
        ok = any(isinstance(x, type) and isinstance(e, x) for x in r.expect)
        if not ok:
            got += "\n" + "".join(traceback.format_exception(e)[-3:])[-600:]
        return ok, got
    return OK in r.expect, "returned"


def child_main(group, first):
    faulthandler.enable()
    rows = [(i, r) for i, r in enumerate(ALL_ROWS) if r.group == group and i >= first]
    with tempfile.TemporaryDirectory(prefix="kv-hostile-") as tmp:
        env = Env(tmp, group)
        out = sys.stdout
        for i, r in rows:
            out.write(json.dumps({"begin": i}) + "\n")
            out.flush()
            faulthandler.dump_traceback_later(ROW_TIMEOUT, exit=True)
            ok, got = run_row(env, r)
            faulthandler.cancel_dump_traceback_later()
            out.write(json.dumps({"row": i, "ok": ok, "got": got}) + "\n")
            out.flush()
        faulthandler.dump_traceback_later(ROW_TIMEOUT, exit=True)
        for name in list(env.objs):
            env.objs.pop(name)
        out.write(json.dumps({"check": env.check()}) + "\n")
        out.flush()
        faulthandler.cancel_dump_traceback_later()


# ---------------------------------------------------------------------------
# Parent: one child per group, restarted after the row that killed it
# ---------------------------------------------------------------------------

_RESULTS: dict[str, dict] = {}


def _run_group(group):
    """Results of ``group``; the first call runs every group's children,
    four groups at a time."""
    if not _RESULTS:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=4) as pool:
            _RESULTS.update(zip(GROUPS, pool.map(_run_children, GROUPS)))
    return _RESULTS[group]


def _run_children(group, **env_extra):
    """Run ``group``'s rows in child processes, a new child after a row that
    killed its child. ``{"rows": {index: (passed, text)}, "checks": [...]}``."""
    res: dict = {"rows": {}, "checks": []}
    first = 0
    env = dict(os.environ, PYTHONFAULTHANDLER="1", **env_extra)
    while True:
        proc = subprocess.run(
            [sys.executable, __file__, group, str(first)], capture_output=True, text=True,
            timeout=120, env=env)
        begun = None
        for line in proc.stdout.splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "begin" in msg:
                begun = msg["begin"]
            elif "row" in msg:
                res["rows"][msg["row"]] = (msg["ok"], msg["got"])
                begun = None
            elif "check" in msg:
                res["checks"].extend(msg["check"])
                begun = "done"
        if begun == "done":
            break
        if begun is None:  # died before or between rows, or while checking
            res["checks"].append(f"child died outside a row: rc={proc.returncode}\n{proc.stderr[-2000:]}")
            break
        how = "hung" if "Timeout" in proc.stderr else f"crashed (rc={proc.returncode})"
        res["rows"][begun] = (False, f"{how}\n{proc.stderr[-3000:]}")
        first = begun + 1
    return res


def _short(x, n=20):
    try:
        return repr(x)[:n]
    except RecursionError:  # the deeply nested arguments
        return f"<deep {type(x).__name__}>"


def _row_id(i):
    r = ROWS[i]
    a = ",".join(_short(x) for x in r.args)
    kw = ",".join(f"{k}={_short(v, 16)}" for k, v in r.kwargs.items())
    return f"{i}-{r.recv}.{r.method}({a}{',' if a and kw else ''}{kw})"


@pytest.mark.parametrize("group", GROUPS)
def test_hostile_rows(group):
    """Every row of the group ends as its table says (no crash, no hang)."""
    res = _run_group(group)
    failures = []
    for i, r in enumerate(ROWS):
        if r.group != group:
            continue
        ok, got = res["rows"].get(i, (False, "not run"))
        if not ok:
            want = [x if x == OK else x.__name__ for x in r.expect]
            failures.append(f"{_row_id(i)}: expected {want}, got {got}")
    assert not failures, f"{len(failures)} rows failed:\n" + "\n".join(failures)


@pytest.mark.parametrize("group", GROUPS)
def test_hostile_rows_keep_stored_data(group):
    """The seeded stores read back unchanged after the group's rows."""
    res = _run_group(group)
    assert not res["checks"], "\n".join(res["checks"])


def test_harness_reports_crashes_and_hangs():
    """A row that kills its child or never returns fails with "crashed" /
    "hung", and the rows after it still run."""
    res = _run_children("_harness", KV_HOSTILE_ROW_TIMEOUT="1")
    n = len(ROWS)
    assert res["rows"][n][0] is False and res["rows"][n][1].startswith("crashed"), res
    assert res["rows"][n + 1][0] is False and res["rows"][n + 1][1].startswith("hung"), res
    assert res["rows"][n + 2] == (True, "returned")
    assert res["checks"] == []


def test_table_covers_every_public_class():
    seen = {r.recv for r in ROWS} | {r.method for r in ROWS if r.recv == "module"}
    for name in K.__all__:
        if name.startswith("_"):
            continue
        assert name in seen or name in {"Column", "VarSizeColumn"}, name
    assert {"col", "vcol", "col_deleted"} <= seen


if __name__ == "__main__":
    child_main(sys.argv[1], int(sys.argv[2]))
