"""Converter of sqlite-vec ``vec0`` tables (docs/vectors.md) to this
project's vector layout, in place (``kohakuvault.migrate_vec0`` and the
``python -m kohakuvault.migrate_vec0`` command line).

kohakuvault releases built on sqlite-vec stored vectors in ``vec0`` virtual
tables. :class:`kohakuvault.VectorKVault` opens such a table read-only (it
reads vec0's shadow tables itself; no extension needed). This converter
rewrites it as this project's chunked layout in one transaction, keeping
every row id, value reference and value, after which the table is writable.

Command line::

    python -m kohakuvault.migrate_vec0 PATH [TABLE]

(TABLE defaults to ``vec_kvault``, VectorKVault's default table name).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Union

from ._kvault import _migrate_vec0
from .errors import map_exception

__all__ = ["migrate_vec0", "main"]


def migrate_vec0(path: Union[str, os.PathLike], table: str = "vec_kvault") -> int:
    """Convert the vec0 virtual table ``table`` of the SQLite file ``path``
    to this project's vector layout, in place, in one transaction; returns
    the number of vectors converted.

    The vectors keep their ids and value references (cosine tables: stored
    unit-length, as sqlite-vec held them); ``<table>_values`` is not
    touched. vec0's shadow tables are dropped and the virtual table's schema
    entry is removed (a virtual table owns no pages; the entry is deleted
    with ``PRAGMA writable_schema`` and the schema version bumped). On any
    error nothing changes. Close every handle on the file first: another
    connection in a transaction makes this fail with ``DatabaseBusy``.

    Raises InvalidArgument (not a vec0 table, an unsupported declaration),
    DatabaseBusy, IoError, KohakuVaultError.
    """
    try:
        return _migrate_vec0(os.fspath(path), table)
    except Exception as exc:  # mapped like every VectorKVault method
        raise map_exception(exc) from exc


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: ``python -m kohakuvault.migrate_vec0 PATH [TABLE]``."""
    parser = argparse.ArgumentParser(
        prog="python -m kohakuvault.migrate_vec0",
        description="Convert a sqlite-vec vec0 table (the vector layout of kohakuvault "
                    "releases on sqlite-vec) to kohakuvault's own layout, in place.")
    parser.add_argument("path", help="SQLite database file")
    parser.add_argument("table", nargs="?", default="vec_kvault",
                        help="vec0 table name (default: vec_kvault)")
    args = parser.parse_args(argv)
    try:
        n = migrate_vec0(args.path, args.table)
    except Exception as exc:
        print(f"migrate_vec0: {exc}", file=sys.stderr)
        return 1
    print(f"{args.path}: table {args.table}: {n} vectors converted")
    return 0
