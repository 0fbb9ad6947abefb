"""Demo: ingest a folder of real files into a vault and verify every byte.

Run with ``python -m kohakuvault.demo [--source DIR] [--db PATH]`` (the
repository's ``scripts/demo`` builds the project first and runs this).

1. Scan ``--source`` (default ``/usr/share/doc``): every regular file is
   taken; symlinks, other non-regular entries and unreadable files are
   skipped and counted.
2. Ingest: each file's bytes go under its relative path as key (stored
   raw). Small files are written through the write-back cache (batched into
   few transactions); files of 1 MiB or more are streamed with
   ``put_file`` (bounded memory). A metadata dict per file ``{"size",
   "mtime", "mode", "sha256"}`` is stored auto-packed (MessagePack) under
   ``meta/<relative path>``.
3. Verify: every file is read back with ``get_to_file`` (the exact stored
   bytes) into a SHA-256 and compared with the source file read again from
   disk and with the stored metadata.

Prints files, bytes, ingest and verify throughput and a PASS/FAIL line;
exits 1 on any mismatch, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import stat
import sys
import tempfile
import time

from tqdm import tqdm

from .proxy import KVault

LARGE = 1 << 20          # files at least this big are streamed with put_file
READ_PIECE = 1 << 20     # piece size for hashing files from disk
META = "meta/"


class _HashWriter:
    """File-like sink for get_to_file: hashes and counts what it receives."""

    def __init__(self):
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        return len(b)


def _hash_file(f) -> str:
    h = hashlib.sha256()
    while True:
        piece = f.read(READ_PIECE)
        if not piece:
            return h.hexdigest()
        h.update(piece)


def scan(source: str):
    """Walk ``source`` without following symlinks. Returns (files, skipped)
    where files is a list of (relative path, absolute path, size) and
    skipped counts symlinks and other non-regular entries."""
    files = []
    skipped = {"symlink": 0, "not regular": 0}
    for root, dirs, names in os.walk(source, followlinks=False):
        dirs.sort()
        for d in dirs:
            if os.path.islink(os.path.join(root, d)):
                skipped["symlink"] += 1
        for name in sorted(names):
            full = os.path.join(root, name)
            try:
                st = os.lstat(full)
            except OSError:
                skipped["not regular"] += 1
                continue
            if stat.S_ISLNK(st.st_mode):
                skipped["symlink"] += 1
            elif not stat.S_ISREG(st.st_mode):
                skipped["not regular"] += 1
            else:
                files.append((os.path.relpath(full, source), full, st.st_size))
    return files, skipped


def ingest(kv: KVault, files, total_bytes: int):
    """Store every file and its metadata. Returns (stored files, unreadable
    count, bytes stored)."""
    stored = []
    unreadable = 0
    nbytes = 0
    with kv.cache(cap_bytes=64 << 20), tqdm(
        total=total_bytes, unit="B", unit_scale=True, desc="ingest", file=sys.stderr
    ) as bar:
        for rel, full, _ in files:
            try:
                f = open(full, "rb")
            except OSError:
                unreadable += 1
                continue
            with f:
                st = os.fstat(f.fileno())
                if st.st_size >= LARGE:
                    digest = _hash_file(f)
                    f.seek(0)
                    kv.put_file(rel, f, size=st.st_size)
                else:
                    try:
                        data = f.read()
                    except OSError:
                        unreadable += 1
                        continue
                    digest = hashlib.sha256(data).hexdigest()
                    kv[rel] = data
            kv[META + rel] = {
                "size": st.st_size,
                "mtime": st.st_mtime,
                "mode": stat.S_IMODE(st.st_mode),
                "sha256": digest,
            }
            stored.append((rel, full, st.st_size))
            nbytes += st.st_size
            bar.update(st.st_size)
    return stored, unreadable, nbytes


def verify(kv: KVault, stored, total_bytes: int):
    """Read every stored file back and compare. Returns a list of
    (relative path, reason) mismatches."""
    bad = []
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="verify", file=sys.stderr) as bar:
        for rel, full, size in stored:
            sink = _HashWriter()
            try:
                n = kv.get_to_file(rel, sink)
            except Exception as exc:  # noqa: BLE001 - reported as a mismatch
                bad.append((rel, f"read failed: {exc}"))
                continue
            meta = kv.get(META + rel)
            with open(full, "rb") as f:
                source_digest = _hash_file(f)
            got = sink.h.hexdigest()
            if n != sink.n or n != size:
                bad.append((rel, f"size {n} != {size}"))
            elif got != source_digest:
                bad.append((rel, "sha256 differs from the source file"))
            elif not isinstance(meta, dict) or meta.get("sha256") != got or meta.get("size") != size:
                bad.append((rel, f"metadata mismatch: {meta!r}"))
            bar.update(size)
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m kohakuvault.demo",
        description="Ingest every regular file of a folder into a KVault, then read each "
        "back and check its SHA-256 against the source.",
    )
    ap.add_argument("--source", default="/usr/share/doc", help="folder to ingest (default: /usr/share/doc)")
    ap.add_argument("--db", default=None,
                    help="vault file to write (default: a temporary file, removed afterwards)")
    args = ap.parse_args(argv)
    source = os.path.abspath(args.source)
    if not os.path.isdir(source):
        print(f"demo: --source {args.source!r} is not a directory", file=sys.stderr)
        return 2
    if os.path.lexists(os.path.join(source, META.rstrip("/"))):
        print(f"demo: {source} has a top-level 'meta' entry, which would collide with the "
              f"metadata keys", file=sys.stderr)
        return 2
    tmpdir = None
    if args.db is None:
        tmpdir = tempfile.mkdtemp(prefix="kohakuvault-demo-")
        db = os.path.join(tmpdir, "demo.db")
    else:
        db = args.db
    try:
        t0 = time.perf_counter()
        files, skipped = scan(source)
        total = sum(size for _, _, size in files)
        print(f"source: {source}: {len(files)} regular files, {total / 1e6:.1f} MB "
              f"(scan {time.perf_counter() - t0:.2f} s)")
        with KVault(db) as kv:
            t0 = time.perf_counter()
            stored, unreadable, nbytes = ingest(kv, files, total)
            t_ingest = time.perf_counter() - t0
            keys_stored = len(kv)
            t0 = time.perf_counter()
            bad = verify(kv, stored, nbytes)
            t_verify = time.perf_counter() - t0
        db_size = os.path.getsize(db)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def rate(seconds):
        return f"{nbytes / 1e6 / seconds:.1f} MB/s, {len(stored) / seconds:,.0f} files/s" if seconds else "-"

    print(f"vault:  {db} ({db_size / 1e6:.1f} MB, {keys_stored} keys)")
    print(f"files:  {len(stored)} stored, {nbytes:,} bytes; skipped: {skipped['symlink']} symlinks, "
          f"{skipped['not regular']} non-regular, {unreadable} unreadable")
    print(f"ingest: {t_ingest:.2f} s ({rate(t_ingest)})")
    print(f"verify: {t_verify:.2f} s ({rate(t_verify)})")
    if keys_stored < 2 * len(stored):
        bad.append(("<vault>", f"{keys_stored} keys, expected {2 * len(stored)}"))
    for rel, why in bad[:20]:
        print(f"MISMATCH {rel}: {why}")
    if bad:
        print(f"FAIL: {len(bad)} mismatches out of {len(stored)} files")
        return 1
    print(f"PASS: {len(stored)} files verified, 0 mismatches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
