#!/usr/bin/env python3
"""A media cache in one KVault: streamed blobs, cached metadata, eviction.

Media files enter the vault with ``put_file`` and leave it with
``get_to_file`` (streamed in chunks, never loaded whole). Each entry has a
small metadata record (size, SHA-256, last access) whose frequent updates go
through the write-back cache, so a burst of requests costs one transaction.
Eviction removes entries by key prefix or, least recently used first, until
the blobs fit a byte budget.

    python examples/media_cache.py --files 40 --requests 200 --budget 2000000
"""
import argparse
import hashlib
import os
import random
import sys
import tempfile
import time

from kohakuvault import KVault

ALL = 1 << 40  # "no limit" for key listings


def sha256_file(path):
    with open(path, "rb") as f:   # media files here are small; see migrate_folder.py for big ones
        return hashlib.sha256(f.read()).hexdigest()


class MediaCache:
    def __init__(self, path):
        self.kv = KVault(path, chunk_size=256 << 10)
        self.kv.enable_cache(cap_bytes=4 << 20, flush_threshold=1 << 20, flush_interval=2.0)
        self.hits = self.misses = 0

    def fetch(self, name, source, dest):
        """Copy ``name`` to ``dest``, from the vault if cached, else from ``source``."""
        meta = self.kv.get(f"meta/{name}")
        if meta is None:
            self.misses += 1
            with open(source, "rb") as f:
                self.kv.put_file(f"blob/{name}", f)           # streamed, stored raw
            meta = {"size": os.path.getsize(source), "sha256": sha256_file(source)}
        else:
            self.hits += 1
        with open(dest, "wb") as f:
            self.kv.get_to_file(f"blob/{name}", f)
        meta["atime"] = time.monotonic()
        self.kv[f"meta/{name}"] = meta                       # through the write-back cache
        return meta

    def entries(self):
        """``{name: meta}`` of every entry (flushes first: listings see SQLite only)."""
        self.kv.flush_cache()
        return {k[5:].decode(): self.kv[k] for k in self.kv.keys(prefix="meta/", limit=ALL)}

    def _drop(self, names):
        self.kv.delete_many([f"blob/{n}" for n in names] + [f"meta/{n}" for n in names])

    def evict_prefix(self, prefix):
        names = [n for n in self.entries() if n.startswith(prefix)]
        self._drop(names)
        return names

    def evict_to_size(self, budget):
        """Drop least recently used entries until the blobs total at most ``budget`` bytes."""
        entries = sorted(self.entries().items(), key=lambda e: e[1]["atime"])
        total = sum(m["size"] for _, m in entries)
        dropped = []
        while entries and total > budget:
            name, meta = entries.pop(0)
            total -= meta["size"]
            dropped.append(name)
        self._drop(dropped)
        return dropped, total

    def close(self):
        self.kv.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", help="vault file (default: a new temporary file)")
    ap.add_argument("--files", type=int, default=20, help="source media files (default 20)")
    ap.add_argument("--requests", type=int, default=100, help="random fetches (default 100)")
    ap.add_argument("--budget", type=int, default=1_000_000, help="bytes kept after eviction")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "source")
        os.makedirs(src)
        names = [f"{'thumbs' if i % 4 == 0 else 'videos'}/{i:04d}.bin" for i in range(args.files)]
        for name in names:
            os.makedirs(os.path.dirname(os.path.join(src, name)), exist_ok=True)
            with open(os.path.join(src, name), "wb") as f:
                f.write(rng.randbytes(rng.randint(10_000, 300_000)))

        cache = MediaCache(args.db or os.path.join(tmp, "media.db"))
        out = os.path.join(tmp, "served.bin")
        bad = 0
        for _ in range(args.requests):
            name = rng.choice(names)
            meta = cache.fetch(name, os.path.join(src, name), out)
            bad += sha256_file(out) != meta["sha256"]
        stored = sum(m["size"] for m in cache.entries().values())
        print(f"{args.requests} requests: {cache.hits} hits, {cache.misses} misses, "
              f"{bad} corrupt copies; {stored} bytes cached")

        thumbs = cache.evict_prefix("thumbs/")
        dropped, total = cache.evict_to_size(args.budget)
        left = cache.entries()
        print(f"evicted {len(thumbs)} entries by prefix 'thumbs/' and {len(dropped)} by LRU; "
              f"{len(left)} entries, {total} bytes left (budget {args.budget})")
        ok = (bad == 0 and total <= args.budget and not any(n.startswith("thumbs/") for n in left)
              and len(list(cache.kv.keys(prefix="blob/", limit=ALL))) == len(left))
        cache.close()
    print("media cache check passed" if ok else "media cache check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
