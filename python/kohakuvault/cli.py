"""kohakuvault: run a vault in shared mode, inspect and check vault files.

    kohakuvault serve|status|stop|clean DB ...   the launcher (launch.py)
    kohakuvault stat DB                          tables, rows, bytes, pages, WAL
    kohakuvault dump DB [--table T] [--values]   keys and value sizes (JSON lines)
    kohakuvault check DB                         integrity and the format's invariants

stat, dump and check read the file through SQLite itself (read-only, the
standard library's sqlite3 module), like the sqlite3 shell or LMDB's
mdb_stat: they work on any vault, also while a writer serves it (they see
what it has committed). dump --values decodes values with KVault's rules
(docs/api.md §3). Exit status: 0, 1 on a problem found or a file that cannot
be read, 2 on bad arguments.
"""
import argparse
import json
import os
import sqlite3
import struct
import sys
import urllib.parse

from . import launch

# Column layout (docs/api.md §6.2-6.4).
IDX_DTYPE = "adaptive_idx"
IDX_ELEM = struct.Struct("<iii")          # chunk_idx, start, end of one variable-size element
KNOWN_FEATURES = {"headers_v1", "auto_pack_v1"}
KV_COLUMNS = ["key", "value"]


def connect(path):
    """A read-only sqlite3 connection to the vault at path; exits 1 (with
    a message) when there is no such file."""
    if not os.path.isfile(path):
        print(f"kohakuvault: {path}: no such file", file=sys.stderr)
        sys.exit(1)
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    return sqlite3.connect(uri, uri=True)


def quote(name):
    """name as an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def tables(con):
    """Names of the ordinary and virtual tables, in schema order."""
    return [r[0] for r in con.execute(
        "SELECT name FROM sqlite_master WHERE type='table' ORDER BY rowid")]


def columns(con, table):
    return [r[1] for r in con.execute(f"PRAGMA table_info({quote(table)})")]


def kv_tables(con):
    """Tables with KVault's layout (key, value) (docs/api.md §4.2)."""
    return [t for t in tables(con) if columns(con, t) == KV_COLUMNS]


def table_bytes(con):
    """{table: bytes of its pages and of its indexes' pages}. From SQLite's
    dbstat virtual table when this SQLite has it, else the sums of length()
    of every column (payload only, no page overhead)."""
    owner = dict(con.execute("SELECT name, tbl_name FROM sqlite_master"))
    out = {}
    try:
        rows = con.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()
        for name, size in rows:
            t = owner.get(name, name)
            out[t] = out.get(t, 0) + size
        return out, "pages (dbstat)"
    except sqlite3.Error:
        pass
    for t in tables(con):
        cols = columns(con, t)
        if not cols:
            continue
        expr = " + ".join(f"coalesce(length({quote(c)}), 0)" for c in cols)
        try:
            out[t] = con.execute(f"SELECT coalesce(sum({expr}), 0) FROM {quote(t)}").fetchone()[0]
        except sqlite3.Error:
            pass
    return out, "payload (sum of length())"


def cmd_stat(args):
    """Print the figures of one vault file."""
    con = connect(args.db)
    try:
        pragma = {p: con.execute(f"PRAGMA {p}").fetchone()[0]
                  for p in ("page_size", "page_count", "freelist_count", "journal_mode")}
        sizes, how = table_bytes(con)
        rows = []
        for t in tables(con):
            try:
                n = con.execute(f"SELECT count(*) FROM {quote(t)}").fetchone()[0]
            except sqlite3.Error:          # a virtual table whose module is not loaded here
                n = None
            rows.append({"table": t, "rows": n, "bytes": sizes.get(t)})
    except sqlite3.DatabaseError as exc:
        print(f"kohakuvault: {args.db}: {exc}", file=sys.stderr)
        return 1
    finally:
        con.close()
    wal = args.db + "-wal"
    info = {
        "file": os.path.abspath(args.db),
        "file_bytes": os.path.getsize(args.db),
        "page_size": pragma["page_size"],
        "page_count": pragma["page_count"],
        "freelist_pages": pragma["freelist_count"],
        "freelist_bytes": pragma["freelist_count"] * pragma["page_size"],
        "journal_mode": pragma["journal_mode"],
        "wal_bytes": os.path.getsize(wal) if os.path.exists(wal) else 0,
        "table_bytes_are": how,
        "tables": rows,
    }
    if args.json:
        print(json.dumps(info))
        return 0
    for k, v in info.items():
        if k != "tables":
            print(f"{k:16} {v}")
    width = max([len(r["table"]) for r in rows] + [5])
    print(f"\n{'table':{width}} {'rows':>12} {'bytes':>14}")
    for r in rows:
        n = "?" if r["rows"] is None else r["rows"]
        b = "?" if r["bytes"] is None else r["bytes"]
        print(f"{r['table']:{width}} {n:>12} {b:>14}")
    return 0


def key_fields(key):
    """The JSON fields naming a key: "key" (UTF-8 text) or "key_hex"."""
    try:
        return {"key": key.decode("utf-8")}
    except UnicodeDecodeError:
        return {"key_hex": key.hex()}


def value_fields(value):
    """The JSON fields of a decoded value: "value" when it is JSON (numpy
    arrays as lists), "value_hex" for bytes, else "value_repr"."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"value_hex": bytes(value).hex()}
    if hasattr(value, "tolist") and hasattr(value, "dtype"):
        value = value.tolist()
    try:
        json.dumps(value, allow_nan=False)
        return {"value": value}
    except (TypeError, ValueError):
        return {"value_repr": repr(value)}


def cmd_dump(args):
    """Print one JSON line per key of a KVault table."""
    con = connect(args.db)
    try:
        if args.table not in kv_tables(con):
            print(f"kohakuvault: {args.db}: no KVault table {args.table!r} (KVault tables: "
                  f"{', '.join(kv_tables(con)) or 'none'})", file=sys.stderr)
            return 1
        t = quote(args.table)
        parts = (f"(SELECT coalesce(sum(length(data)), 0) FROM {quote(args.table + '_parts')} p "
                 "WHERE p.key = k.key)" if args.table + "_parts" in tables(con) else "0")
        rows = con.execute(f"SELECT key, length(value) + {parts} FROM {t} k ORDER BY key"
                           + (f" LIMIT {args.limit}" if args.limit else ""))
        vault = None
        if args.values:
            from . import KVault
            vault = KVault(args.db, table=args.table)
        try:
            for key, size in rows:
                key = bytes(key) if not isinstance(key, str) else key.encode()
                line = {**key_fields(key), "size": size}
                if vault is not None:
                    try:
                        line.update(value_fields(vault[key]))
                    except Exception as exc:  # noqa: BLE001 - reported per value
                        line["error"] = f"{type(exc).__name__}: {exc}"
                print(json.dumps(line))
        finally:
            if vault is not None:
                vault.close()
    except sqlite3.DatabaseError as exc:
        print(f"kohakuvault: {args.db}: {exc}", file=sys.stderr)
        return 1
    finally:
        con.close()
    return 0


def check_meta(con, problems):
    """kohakuvault_meta: schema_version, kv_features, writer_seq:* rows."""
    if "kohakuvault_meta" not in tables(con):
        return
    for key, value in con.execute("SELECT key, value FROM kohakuvault_meta"):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if key == "schema_version" and text != "2":
            problems.append(f"kohakuvault_meta: schema_version is {text!r}, expected '2'")
        elif key == "kv_features":
            names = text.split(",")
            if len(set(names)) != len(names) or "" in names or \
                    not set(names) <= KNOWN_FEATURES:
                problems.append(f"kohakuvault_meta: kv_features {text!r} is not a list of "
                                f"distinct known features ({', '.join(sorted(KNOWN_FEATURES))})")
        elif key.startswith("writer_seq:"):
            if not text.isdigit():
                problems.append(f"kohakuvault_meta: {key} is {text!r}, not a sequence number")


def check_columns(con, problems):
    """col_meta and col_chunks against the layouts of docs/api.md §6.2-6.4.
    Returns the number of columns checked."""
    if "col_meta" not in tables(con) or "col_chunks" not in tables(con):
        return 0
    meta = con.execute("SELECT col_id, name, dtype, elem_size, length, max_chunk_bytes, "
                       "min_chunk_bytes FROM col_meta").fetchall()
    ids = {m[0] for m in meta}
    names = {m[1]: m for m in meta}
    for (col_id,) in con.execute("SELECT DISTINCT col_id FROM col_chunks"):
        if col_id not in ids:
            problems.append(f"col_chunks: chunks of column id {col_id}, which col_meta lacks")
    chunk_sql = ("SELECT chunk_idx, length(data), actual_size, bytes_used FROM col_chunks "
                 "WHERE col_id = ? ORDER BY chunk_idx")
    for col_id, name, dtype, elem, length, max_b, min_b in meta:
        where = f"column {name!r}"
        if elem < 1 or length < 0 or max_b < 1 or min_b > max_b or (elem > 1 and max_b % elem):
            problems.append(f"{where}: col_meta row inconsistent (elem_size {elem}, length "
                            f"{length}, chunk bytes {min_b}..{max_b})")
            continue
        chunks = {c[0]: c[1:] for c in con.execute(chunk_sql, (col_id,))}
        for idx, (blob, cap, used) in chunks.items():
            if blob != cap or not 0 <= used <= cap:
                problems.append(f"{where}: chunk {idx} holds {blob} bytes, actual_size {cap}, "
                                f"bytes_used {used}")
        is_data = name.endswith("_data") and \
            names.get(name[:-5] + "_idx", (0, 0, ""))[2] == IDX_DTYPE
        if is_data:
            continue                      # its elements are checked through the _idx column
        # Elements 0..length-1 fill chunks 0..n-1 (the last one partly); each
        # such chunk holds and has written (bytes_used, the high-water mark of
        # engine/col_fixed.c) at least the bytes they occupy.
        need = length * elem
        nchunks = -(-need // max_b)
        for idx in range(nchunks):
            want = max_b if idx < nchunks - 1 else need - idx * max_b
            if idx not in chunks or min(chunks[idx][1:]) < want:
                have = "no chunk" if idx not in chunks else \
                    f"actual_size {chunks[idx][1]}, bytes_used {chunks[idx][2]}"
                problems.append(f"{where}: length {length} needs {want} bytes in chunk {idx}, "
                                f"which has {have}")
                break
        else:
            if dtype == IDX_DTYPE and name.endswith("_idx"):
                check_elements(con, name[:-4], col_id, length, max_b, names, problems)
    return len(meta)


def check_elements(con, base, idx_id, length, max_b, names, problems):
    """Every element of variable-size column `base` lies inside the used
    bytes of an existing chunk of `base`_data (docs/api.md §6.4)."""
    data = names.get(base + "_data")
    if data is None:
        problems.append(f"column {base!r}: {base}_idx without {base}_data")
        return
    used = dict(con.execute("SELECT chunk_idx, bytes_used FROM col_chunks WHERE col_id = ?",
                            (data[0],)))
    raw = b"".join(bytes(r[0]) for r in con.execute(
        "SELECT data FROM col_chunks WHERE col_id = ? ORDER BY chunk_idx", (idx_id,)))
    for i in range(length):
        chunk, start, end = IDX_ELEM.unpack_from(raw, i * IDX_ELEM.size)
        if chunk not in used or not 0 <= start <= end <= used[chunk]:
            problems.append(f"column {base!r}: element {i} is chunk {chunk} bytes "
                            f"{start}..{end}, outside the data chunks' used bytes")
            return


def check_parts(con, problems):
    """Large values (engine/large.c): parts only for keys whose main row is
    the empty value."""
    names = set(tables(con))
    for t in kv_tables(con):
        if t + "_parts" not in names:
            continue
        n = con.execute(f"SELECT count(DISTINCT p.key) FROM {quote(t + '_parts')} p "
                        f"LEFT JOIN {quote(t)} k ON k.key = p.key "
                        "WHERE k.key IS NULL OR length(k.value) != 0").fetchone()[0]
        if n:
            problems.append(f"table {t!r}: {n} keys have parts but no empty main value")


def cmd_check(args):
    """Check one vault file; print each problem; exit 1 if there is any."""
    problems = []
    con = connect(args.db)
    try:
        result = [r[0] for r in con.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            problems += [f"integrity_check: {r}" for r in result]
        check_meta(con, problems)
        ncols = check_columns(con, problems)
        check_parts(con, problems)
    except (sqlite3.DatabaseError, struct.error) as exc:
        problems.append(f"cannot read: {exc}")
        ncols = 0
    finally:
        con.close()
    for p in problems:
        print(f"{args.db}: {p}")
    if problems:
        print(f"{args.db}: {len(problems)} problem(s)")
        return 1
    print(f"{args.db}: ok (integrity_check, kohakuvault_meta, {ncols} column rows, "
          "large-value parts)")
    return 0


def build_parser():
    """The argparse parser of the ``kohakuvault`` command."""
    p = argparse.ArgumentParser(prog="kohakuvault", description=__doc__,
                                formatter_class=launch.HelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    launch.add_commands(sub)
    text = "tables with their row counts and bytes, page size and count, freelist, journal " \
           "mode, WAL size (like mdb_stat)"
    s = sub.add_parser("stat", help=text, description=text, formatter_class=launch.HelpFormatter)
    s.add_argument("db", metavar="DB", help="database file")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    s.set_defaults(func=cmd_stat)
    text = "one JSON line per key of a KVault table: the key and the value's stored size, " \
           "with --values the value itself where it decodes to JSON"
    d = sub.add_parser("dump", help=text, description=text, formatter_class=launch.HelpFormatter)
    d.add_argument("db", metavar="DB", help="database file")
    d.add_argument("--table", default="kv", help="the KVault table")
    d.add_argument("--values", action="store_true",
                   help="add each value, decoded as KVault reads it (\"value\", or "
                        "\"value_hex\" for bytes, \"value_repr\" for other objects)")
    d.add_argument("--limit", type=launch.int_range(0), default=0, metavar="N",
                   help="at most N keys (0: all)")
    d.set_defaults(func=cmd_dump)
    text = "PRAGMA integrity_check plus the format's invariants (kohakuvault_meta, column " \
           "lengths against their chunks, variable-size elements, large-value parts); " \
           "exit status 1 on any problem"
    c = sub.add_parser("check", help=text, description=text, formatter_class=launch.HelpFormatter)
    c.add_argument("db", metavar="DB", help="database file")
    c.set_defaults(func=cmd_check)
    return p


def main(argv=None):
    """Entry point of the ``kohakuvault`` command."""
    argv, command = launch.split_command(argv)
    args = build_parser().parse_args(argv)
    args.command = command
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
