"""The attached hot-value cache (docs/shared-mode.md, "Hot-value cache"):
process-local copies of small immutable values, validated on every hit by
the key's stripe stamp in the segment. Real writer, real processes.
"""

import signal

from kohakuvault import KVault

from test_shared_mode import Writer, pipe_child, served  # noqa: F401  (fixture)


def _hot_hits(kv):
    return kv._native.counters()[2]


def _warm_reader(db, conn):
    """Reads each requested key three times (so the copy is hot) and answers
    with what the last read returned and whether it was a hot hit."""
    kv = KVault(db, shared=True)
    while True:
        key = conn.recv()
        if key is None:
            break
        before = _hot_hits(kv)
        vals = [kv.get(key) for _ in range(3)]
        conn.send((vals[-1], _hot_hits(kv) - before))
    kv.close()


def test_hot_copy_sees_another_process_write_at_once(served):  # noqa: F811
    db, _ = served
    with pipe_child(_warm_reader, db) as conn:
        kv = KVault(db, shared=True)
        hot_total = 0
        for i in range(200):
            kv["same"] = f"v{i}"  # the reader holds a hot copy of the old value
            conn.send("same")
            val, hot = conn.recv()
            assert val == f"v{i}", f"round {i}: a stale copy was served"
            hot_total += hot
        # the second and third read of each round are hot hits
        assert hot_total >= 200
        conn.send(None)
        kv.close()


def test_own_writes_and_deletes_invalidate(served):  # noqa: F811
    db, _ = served
    kv = KVault(db, shared=True)
    for i in range(50):
        kv["k"] = i
        assert kv["k"] == i and kv["k"] == i
    assert _hot_hits(kv) >= 50
    del kv["k"]
    assert kv.get("k") is None
    # batched writes (cache on): the next read waits for them, then sees them
    kv.enable_cache()
    kv["k"] = b"new"
    assert kv["k"] == b"new"
    kv.flush_cache()
    kv.close()


def test_mutable_values_are_never_shared(served):  # noqa: F811
    db, _ = served
    kv = KVault(db, shared=True)
    kv["d"] = {"a": [1, 2]}
    first = kv["d"]
    first["a"].append(3)
    assert kv["d"] == {"a": [1, 2]}
    assert kv["d"] is not kv["d"]
    kv["b"] = b"x" * 100
    assert kv["b"] == b"x" * 100
    assert kv["b"] is kv["b"]  # immutable: the same object is handed out
    kv.close()


def test_read_cache_bytes_zero_turns_it_off(served):  # noqa: F811
    db, _ = served
    kv = KVault(db, shared=True, read_cache_bytes=0)
    kv["k"] = b"v"
    for _ in range(10):
        assert kv["k"] == b"v"
    assert _hot_hits(kv) == 0
    kv.close()


def test_table_grows_to_hold_many_keys(served):  # noqa: F811
    """The table starts small and doubles as copies are kept: 3,000 small
    values read twice are all hot hits the second time (a table that stayed
    at its first size would evict most of them)."""
    db, _ = served
    kv = KVault(db, shared=True)
    keys = [f"k{i:05d}" for i in range(3000)]
    kv.put_many([(k, k.encode()) for k in keys])
    assert [kv[k] for k in keys] == [k.encode() for k in keys]
    before = _hot_hits(kv)
    assert [kv[k] for k in keys] == [k.encode() for k in keys]
    # 2-way sets: a few copies may have lost their set to a neighbour
    assert _hot_hits(kv) - before >= 2700
    kv.close()


def test_large_values_are_not_kept(served):  # noqa: F811
    db, _ = served
    kv = KVault(db, shared=True)
    kv["big"] = b"z" * 20000
    for _ in range(5):
        assert kv["big"] == b"z" * 20000
    assert _hot_hits(kv) == 0
    kv.close()


def test_copies_from_a_replaced_writer_are_dropped(tmp_path):
    """kill -9 the writer; a new writer replays and serves a new segment; a
    write through it replaces the value the reader held a hot copy of."""
    db = str(tmp_path / "hot.db")
    w = Writer(db)
    try:
        reader = KVault(db, shared=True)
        writer_side = KVault(db, shared=True)
        writer_side["k"] = b"old"
        for _ in range(3):
            assert reader["k"] == b"old"
        assert _hot_hits(reader) >= 2
        w.kill(signal.SIGKILL)
        w.start()
        writer_side.put("k", b"new", sync=True)  # re-attaches by itself
        assert reader["k"] == b"new"
        reader.close()
        writer_side.close()
    finally:
        w.kill(signal.SIGTERM)


def test_decoding_options_are_part_of_a_copy(served):  # noqa: F811
    """A copy decoded under one set of options is never served under another."""
    db, _ = served
    kv = KVault(db, shared=True)
    kv["n"] = 7  # stored with a header, decoded to an int
    assert kv["n"] == 7 and kv["n"] == 7
    kv.disable_auto_pack()
    raw = kv["n"]
    assert isinstance(raw, bytes) and raw != 7
    assert kv["n"] == raw
    kv.enable_auto_pack()
    assert kv["n"] == 7
    kv.close()


def test_hot_hits_count_in_the_writer_status(served):  # noqa: F811
    """Hot-cache hits are hits of the shared cache: the writer's `hits`
    (what `kvault-launch status` shows) includes them, 4,096 at a time."""
    import time

    from test_shared_mode import _status

    db, _ = served
    kv = KVault(db, shared=True)
    kv["h"] = b"x" * 100
    before = _status(kv)["hits"]
    for _ in range(3 * 4096):
        assert kv["h"] == b"x" * 100
    hot = _hot_hits(kv)
    assert hot >= 3 * 4096 - 2
    seg_hits = kv._native.counters()[0]
    assert seg_hits < 100, "the reads were served by the hot cache"
    deadline = time.time() + 10
    while _status(kv)["hits"] - before < 2 * 4096 and time.time() < deadline:
        kv.put("tick", 1)  # wakes the writer, which then reads the reports
        time.sleep(0.05)
    assert _status(kv)["hits"] - before >= 2 * 4096
    kv.close()
