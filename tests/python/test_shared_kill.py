"""kill -9 of the kvault-writer, over and over, while 2 processes write.

Each client process ``c`` puts ``c:i = i`` and then ``last:c = i`` for
i = 1, 2, ... and publishes the highest i it knows to be durable: in
pipelined mode the i of its last barrier (every 50 i), in applied mode the
i of its last returned put. The test SIGKILLs the writer at random moments
and restarts it (the clients re-attach by themselves), stops the clients,
crashes the writer once more and lets a final writer replay and commit.
Some kills must have found applied but uncommitted writes (the restarted
writer reports records replayed). Then, for each client:

- lost: ``c:i`` missing or wrong for some i <= the published i;
- the stored writes form a prefix of the client's sequence: ``c:1..m``
  present (nothing after m, nothing beyond what the client wrote) and
  ``last:c`` in {m-1, m}; a record applied twice after a newer one, or out
  of order, breaks this (``last:c`` behind ``m``, or a hole below ``m``).
"""

import multiprocessing as mp
import os
import random
import signal
import time
import traceback

import pytest

from kohakuvault import KVault

from test_shared_mode import WRITER, Writer

pytestmark = pytest.mark.skipif(WRITER is None, reason="kvault-writer is not built")

BARRIER_EVERY = 50


def _client(db, c, mode, durable, stop, q):
    """Writes c's sequence until ``stop``; ``durable[c]``: the highest i
    known durable. Puts ("ok", c, last i written) or ("error", c, text)."""
    try:
        kv = KVault(db, shared=True, write_mode=mode)
        i = 0
        while not stop.is_set():
            i += 1
            kv[f"{c}:{i}"] = i
            kv[f"last:{c}"] = i
            if mode == "applied":
                durable[c] = i
            elif i % BARRIER_EVERY == 0:
                kv.flush()  # applied: a writer crash loses none of them
                durable[c] = i
        q.put(("ok", c, i))
    except BaseException:  # reported to the test
        q.put(("error", c, traceback.format_exc()))


def _wait_for_progress(durable, since, timeout):
    """Waits until every client published a durable i beyond ``since`` (so
    each one is attached to the running writer)."""
    deadline = time.monotonic() + timeout
    while not all(d > s for d, s in zip(durable, since)):
        assert time.monotonic() < deadline, \
            f"clients stuck for {timeout} s: durable {list(durable)}, before {since}"
        time.sleep(0.01)


def _replayed(db):
    """Records the running writer replayed from its crashed predecessor."""
    with KVault(db, shared=True) as kv:
        st = dict(line.split("=", 1) for line in kv._native.status().splitlines())
    return int(st["replayed"])


def _check_client(stored, c, durable, written):
    """The failures of client c's writes in ``stored`` (key -> value)."""
    present = {int(k.split(":", 1)[1]): v for k, v in stored.items()
               if k.startswith(f"{c}:")}
    m = max(present, default=0)
    problems = []
    lost = [i for i in range(1, durable + 1) if present.get(i) != i]
    if lost:
        problems.append(f"client {c}: {len(lost)} durable puts lost or wrong, first {lost[:5]}")
    holes = [i for i in range(1, m + 1) if present.get(i) != i]
    if holes:
        problems.append(f"client {c}: holes below its newest stored put {m}: {holes[:5]}")
    if m > written:
        problems.append(f"client {c}: {m} stored, only 1..{written} were written")
    last = stored.get(f"last:{c}")
    if last not in (m - 1, m) or last < durable:
        problems.append(f"client {c}: last:{c} = {last}, newest put {m}, durable {durable} "
                        "(applied twice or out of order)")
    return problems


@pytest.mark.parametrize("mode,kills", [("pipelined", 20), ("applied", 5)])
def test_kill_writer_repeatedly_under_load(tmp_path, mode, kills):
    db = str(tmp_path / "kill.db")
    seed = int(os.environ.get("KV_KILL_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    # commits far apart: most kills find applied but uncommitted writes
    w = Writer(db, "--commit-interval-ms", "500")
    ctx = mp.get_context("spawn")
    durable = ctx.Array("q", 2, lock=False)
    stop, q = ctx.Event(), ctx.Queue()
    clients = [ctx.Process(target=_client, args=(db, c, mode, durable, stop, q))
               for c in range(2)]
    for p in clients:
        p.start()
    try:
        _wait_for_progress(durable, [0, 0], 60)
        replays = 0  # restarts that found applied, uncommitted writes
        for _ in range(kills):
            since = list(durable)
            time.sleep(rng.uniform(0.3, 0.8))
            _wait_for_progress(durable, since, 30)  # both clients re-attached
            w.kill(signal.SIGKILL)
            w.start()
            replays += _replayed(db) > 0
        _wait_for_progress(durable, list(durable), 30)
        stop.set()
        results = [q.get(timeout=60) for _ in clients]
        assert not [r for r in results if r[0] != "ok"], (seed, results)
        for p in clients:
            p.join(timeout=30)
        w.kill(signal.SIGKILL)
        w.start()  # replays the crashed writer's segment
        assert w.kill(signal.SIGTERM) == 0  # commits everything
    finally:
        stop.set()
        for p in clients:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        w.kill(signal.SIGKILL)
    with KVault(db, shared=False) as emb:
        stored = {k.decode(): emb[k] for k in emb.keys(limit=len(emb) + 1)}
    written = {c: i for _, c, i in results}
    problems = [msg for c in range(2) for msg in _check_client(stored, c, durable[c], written[c])]
    assert not problems, f"seed {seed} ({kills} kills, {mode}): " + "; ".join(problems)
    assert all(durable[c] > 0 for c in range(2))
    assert replays > 0, "no kill found an applied but uncommitted write"
