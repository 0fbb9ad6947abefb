#!/usr/bin/env python3
"""A map-style dataset over one vault, read by forked and spawned workers.

The samples (uint8 images) live in a KVault, their labels in a ColumnVault
column of the same file. ``VaultDataset`` has ``__len__`` and
``__getitem__`` like ``torch.utils.data.Dataset``, and pickles to its path
only: each worker process opens its own connections on first use, whether
it was forked (inherits the object) or spawned (receives the pickled
path). This is what a PyTorch ``DataLoader`` with ``num_workers > 0`` does;
plain ``multiprocessing`` stands in for it here.

    python examples/dataset_workers.py --samples 512 --workers 4
"""
import argparse
import hashlib
import multiprocessing as mp
import os
import sys
import tempfile

import numpy as np

from kohakuvault import ColumnVault, KVault

SHAPE = (32, 32, 3)


def make_sample(i):
    """The deterministic image and label of sample ``i``."""
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, SHAPE, dtype=np.uint8), int(rng.integers(0, 10))


class VaultDataset:
    """``len(ds)`` samples; ``ds[i]`` is ``(image ndarray, label int)``."""

    def __init__(self, path):
        self.path = path
        self._pid = None

    def _open(self):
        # Connections are per process: reopen after a fork, open after a spawn.
        if self._pid != os.getpid():
            self._kv = KVault(self.path)
            self._labels = ColumnVault(self.path)["labels"]
            self._pid = os.getpid()

    def __len__(self):
        self._open()
        return len(self._labels)

    def __getitem__(self, i):
        self._open()
        return self._kv[f"img/{i:06d}"], self._labels[i]

    def __getstate__(self):
        return {"path": self.path, "_pid": None}  # only the path crosses processes


def build(path, n):
    labels = []
    with KVault(path) as kv, kv.cache(cap_bytes=16 << 20):   # one transaction per flush
        for i in range(n):
            image, label = make_sample(i)
            kv[f"img/{i:06d}"] = image          # auto-packed: comes back as an ndarray
            labels.append(label)
    ColumnVault(path).ensure("labels", "i64").extend(labels)


_DATASET = None


def init_worker(dataset):
    global _DATASET
    _DATASET = dataset


def load_batch(indices):
    """What a DataLoader worker does for one batch: read and digest it."""
    out = []
    for i in indices:
        image, label = _DATASET[i]
        out.append((i, hashlib.sha256(image.tobytes()).hexdigest(), label, os.getpid()))
    return out


def run(dataset, method, workers, batch_size):
    n = len(dataset)
    batches = [range(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    ctx = mp.get_context(method)
    with ctx.Pool(workers, initializer=init_worker, initargs=(dataset,)) as pool:
        results = [r for batch in pool.map(load_batch, batches) for r in batch]
    bad = 0
    for i, digest, label, _pid in results:
        image, want_label = make_sample(i)
        if digest != hashlib.sha256(image.tobytes()).hexdigest() or label != want_label:
            bad += 1
    pids = {r[3] for r in results}
    print(f"{method}: {len(results)} samples read by {len(pids)} worker processes, "
          f"{bad} mismatches")
    return len(results) == n and bad == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", help="vault file, must not exist (default: a new temporary file)")
    ap.add_argument("--samples", type=int, default=256, help="samples to write (default 256)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--methods", default="fork,spawn",
                    help="comma-separated start methods to try (default fork,spawn)")
    args = ap.parse_args()
    if args.db and os.path.exists(args.db):
        ap.error(f"{args.db} exists already")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or os.path.join(tmp, "dataset.db")
        build(path, args.samples)
        dataset = VaultDataset(path)
        print(f"wrote {len(dataset)} samples of shape {SHAPE} to {path}")
        ok = all(run(dataset, m, args.workers, args.batch_size) for m in args.methods.split(","))
    print("dataset check passed" if ok else "dataset check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
