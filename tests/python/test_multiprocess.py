"""Embedded mode with several processes on one file (docs/api.md §2.4, §10):
two processes each write 10,000 keys at the same time; busy states are
absorbed by SQLite's busy timeout and the proxy's retries."""

import multiprocessing as mp
import traceback

from kohakuvault import KVault

N = 10_000


def _writer(path, tag, start, results):
    try:
        with KVault(path) as kv:
            start.wait(30)
            for i in range(N):
                kv[f"{tag}/{i:05d}"] = {"tag": tag, "i": i}
        results.put((tag, "ok"))
    except BaseException:  # report everything to the parent
        results.put((tag, traceback.format_exc()))


def test_two_processes_write_10000_keys_each(db_path):
    with KVault(db_path) as kv:  # create the file first
        kv["init"] = b"1"
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(db_path, tag, start, results)) for tag in ("A", "B")]
    for p in procs:
        p.start()
    start.set()
    outcome = dict(results.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert outcome == {"A": "ok", "B": "ok"}, outcome
    with KVault(db_path) as kv:
        assert len(kv) == 2 * N + 1
        for tag in ("A", "B"):
            keys = list(kv.keys(prefix=f"{tag}/", limit=2 * N))
            assert len(keys) == N
            assert keys[0] == f"{tag}/00000".encode() and keys[-1] == f"{tag}/{N - 1:05d}".encode()
            assert kv[f"{tag}/04321"] == {"tag": tag, "i": 4321}
