#!/usr/bin/env python3
"""Move a folder of files into one vault and back out, byte for byte.

Import: every regular file under SOURCE becomes the value ``files/<path>``
(streamed with ``put_file``), plus a record ``meta/<path>`` with its size,
mode, mtime and SHA-256; keys are the paths' bytes, so any file name works.
Export: every file is streamed back with ``get_to_file`` under OUT, with its
mode and mtime. Then both trees are compared with hashlib.

    python examples/migrate_folder.py --source /usr/share/doc/python3 --db docs.db
"""
import argparse
import hashlib
import os
import random
import sys
import tempfile

from kohakuvault import KVault

ALL = 1 << 40  # "no limit" for key listings


def tree(root):
    """``{relative path bytes: absolute path}`` of the regular files under root."""
    out = {}
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(d, name)
            if os.path.isfile(full) and not os.path.islink(full):
                out[os.fsencode(os.path.relpath(full, root))] = full
    return out


def digest(path):
    """SHA-256 of a file of any size, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_tree(kv, root):
    files = tree(root)
    total = 0
    with kv.cache(cap_bytes=8 << 20):                 # metadata records: one transaction per flush
        for rel, full in files.items():
            st = os.stat(full)
            with open(full, "rb") as f:
                kv.put_file(b"files/" + rel, f)        # streamed; bypasses the cache
            kv[b"meta/" + rel] = {"size": st.st_size, "mode": st.st_mode & 0o7777,
                                  "mtime_ns": st.st_mtime_ns, "sha256": digest(full)}
            total += st.st_size
    return len(files), total


def export_tree(kv, out):
    n = 0
    for key in kv.keys(prefix=b"meta/", limit=ALL):
        rel = key[len(b"meta/"):]
        meta = kv[key]
        dest = os.path.join(out, os.fsdecode(rel))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            kv.get_to_file(b"files/" + rel, f)
        os.chmod(dest, meta["mode"])
        os.utime(dest, ns=(meta["mtime_ns"], meta["mtime_ns"]))
        n += 1
    return n


def sample_tree(root, seed=7):
    """A small tree with nested folders, an empty file, a 3 MB file and odd names."""
    rng = random.Random(seed)
    names = ["README.txt", "empty", "a/b/c/deep.bin", "space name.txt", "ünïcode.txt", "big.bin"]
    names += [f"data/part-{i:03d}.bin" for i in range(30)]
    for name in names:
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        size = {"empty": 0, "big.bin": 3_000_000}.get(name, rng.randint(1, 50_000))
        with open(path, "wb") as f:
            f.write(rng.randbytes(size))
    os.chmod(os.path.join(root, "README.txt"), 0o600)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", help="folder to import (default: a generated sample folder)")
    ap.add_argument("--db", help="vault file, must not exist (default: a new temporary file)")
    ap.add_argument("--out", help="folder to export to, must not exist (default: temporary)")
    args = ap.parse_args()
    for p in (args.db, args.out):
        if p and os.path.exists(p):
            ap.error(f"{p} exists already")
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source or os.path.join(tmp, "source")
        if not args.source:
            sample_tree(source)
        db = args.db or os.path.join(tmp, "folder.db")
        out = args.out or os.path.join(tmp, "out")
        with KVault(db) as kv:
            n, total = import_tree(kv, source)
        print(f"imported {n} files, {total} bytes, from {source} into {db} "
              f"({os.path.getsize(db)} bytes)")
        with KVault(db) as kv:
            exported = export_tree(kv, out)
        print(f"exported {exported} files to {out}")

        a, b = tree(source), tree(out)
        mismatched = [os.fsdecode(r) for r in a if r not in b or digest(a[r]) != digest(b[r])
                      or os.stat(a[r]).st_mode != os.stat(b[r]).st_mode]
        extra = [os.fsdecode(r) for r in b if r not in a]
        print(f"compared {len(a)} files with SHA-256: {len(mismatched)} differ, "
              f"{len(extra)} unexpected")
        for r in (mismatched + extra)[:10]:
            print("  ", r)
    ok = not mismatched and not extra and exported == n
    print("round trip byte-identical" if ok else "round trip FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
