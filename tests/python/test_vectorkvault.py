"""VectorKVault (docs/api.md §8): exact k-NN, metrics, normalisation, input rules, CRUD, errors."""

import sqlite3

import numpy as np
import pytest

from kohakuvault import InvalidArgument, KohakuVaultError, NotFound, VectorKVault


def brute_force(data, ids, q, metric, k):
    """Reference k-NN in float64 numpy (cosine on normalised vectors)."""
    data = np.asarray(data, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if metric == "cosine":
        data = data / np.linalg.norm(data, axis=1, keepdims=True)
        q = q / np.linalg.norm(q)
        d = 1.0 - data @ q
    elif metric == "l2":
        d = np.sqrt(((data - q) ** 2).sum(axis=1))
    else:
        d = np.abs(data - q).sum(axis=1)
    order = sorted(range(len(ids)), key=lambda i: (d[i], ids[i]))[:k]
    return [ids[i] for i in order], [d[i] for i in order]


def test_vectorkvault_layout_and_pragmas(db_path):
    vkv = VectorKVault(db_path, table="runs", dimensions=4)
    vkv.insert([1, 2, 3, 4], b"v")
    con = sqlite3.connect(db_path)
    rows = dict(con.execute("SELECT name, sql FROM sqlite_master WHERE type='table'").fetchall())
    assert "id INTEGER PRIMARY KEY AUTOINCREMENT, value BLOB NOT NULL" in rows["runs_values"]
    assert "value_ref INTEGER" in rows["runs"] and "vector BLOB" in rows["runs"]
    ref, blob = con.execute("SELECT value_ref, vector FROM runs").fetchone()
    assert len(blob) == 16  # 4 float32 LE
    assert con.execute("SELECT value FROM runs_values WHERE id=?", (ref,)).fetchone()[0] == b"v"
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


@pytest.mark.parametrize("metric", ["cosine", "l2", "l1"])
def test_vectorkvault_topk_matches_bruteforce(db_path, metric):
    rng = np.random.default_rng(5)
    data = rng.standard_normal((300, 16)).astype(np.float32)
    vkv = VectorKVault(db_path, dimensions=16, metric=metric)
    ids = [vkv.insert(v, int(i)) for i, v in enumerate(data)]
    for _ in range(5):
        q = rng.standard_normal(16).astype(np.float32)
        for k in (1, 7, 300, 1000):
            res = vkv.search(q, k=k)
            want_ids, want_d = brute_force(data, ids, q, metric, k)
            assert [r[0] for r in res] == want_ids
            assert [r[1] for r in res] == pytest.approx(want_d, abs=2e-5)
            assert [r[2] for r in res] == [ids.index(i) for i in want_ids]
            assert all(isinstance(r[1], float) for r in res)
            assert [r[1] for r in res] == sorted(r[1] for r in res)


def test_vectorkvault_distances_exact_values(db_path):
    l2 = VectorKVault(db_path, table="l2", dimensions=3, metric="euclidean")
    l2.insert([1, 2, 3], "a")
    ((_, d, _),) = l2.search([4, 6, 3], k=1)
    assert d == 5.0  # not squared
    l1 = VectorKVault(db_path, table="l1", dimensions=3, metric="Manhattan")
    l1.insert([1, 2, 3], "a")
    assert l1.search([4, 6, 3], k=1)[0][1] == 7.0
    cos = VectorKVault(db_path, table="c", dimensions=2, metric="COSINE")
    cos.insert([1, 0], "x")
    assert cos.search([0, 5], k=1)[0][1] == pytest.approx(1.0)
    assert cos.search([-3, 0], k=1)[0][1] == pytest.approx(2.0)
    # float32 precision
    f = VectorKVault(db_path, table="f", dimensions=1, metric="l1")
    f.insert([0.0], 1)
    assert f.search([0.1], k=1)[0][1] == float(np.float32(0.1))


def test_vectorkvault_cosine_normalises_and_get_by_id_returns_unit_vector(db_path):
    vkv = VectorKVault(db_path, dimensions=3)
    i = vkv.insert(np.array([3, 0, 4]), b"x")  # int array: cast to float32
    z = vkv.insert([0, 0, 0], b"zero")
    vec, val = vkv.get_by_id(i)
    assert vec.dtype == np.float32 and vec.shape == (3,)
    np.testing.assert_allclose(vec, [0.6, 0.0, 0.8], rtol=1e-6)
    assert not vec.flags.writeable
    assert val == b"x"
    np.testing.assert_array_equal(vkv.get_by_id(z)[0], [0, 0, 0])  # zero vector left as is
    l2 = VectorKVault(db_path, table="plain", dimensions=3, metric="l2")
    j = l2.insert([3, 0, 4], 1)
    np.testing.assert_array_equal(l2.get_by_id(j)[0], [3, 0, 4])  # no normalisation


def test_vectorkvault_vector_input_kinds(db_path):
    vkv = VectorKVault(db_path, dimensions=3, metric="l2")
    a = vkv.insert(np.array([1, 2, 3], dtype=np.float64), 1)
    b = vkv.insert([1.5, 2, 3], 2)
    c = vkv.insert(np.array([7, 8, 9], dtype=np.float32).tobytes(), 3)
    np.testing.assert_array_equal(vkv.get_by_id(c)[0], [7, 8, 9])
    assert vkv.search(np.array([1, 2, 3], dtype=np.int32), k=1)[0][0] == a
    assert vkv.search([1.5, 2, 3], k=1)[0][0] == b
    for bad in [(1, 2, 3), {1, 2, 3}, "abc", 5, np.zeros((1, 3)), [[1, 2, 3]], ["a", "b", "c"]]:
        with pytest.raises(InvalidArgument):
            vkv.insert(bad, 0)
    with pytest.raises(InvalidArgument, match="Expected 3 dimensions, got 2"):
        vkv.insert([1, 2], 0)
    with pytest.raises(InvalidArgument, match="Expected 3 dimensions"):
        vkv.search([1, 2, 3, 4])
    assert len(vkv) == 3


def test_vectorkvault_search_metric_is_validated_only(db_path):
    vkv = VectorKVault(db_path, dimensions=2, metric="l2")
    vkv.insert([0, 0], "o")
    vkv.insert([3, 4], "p")
    assert vkv.search([3, 4], k=2, metric="l1") == vkv.search([3, 4], k=2)  # still L2
    assert vkv.search([0, 0], k=2, metric="l1")[1][1] == 5.0
    with pytest.raises(InvalidArgument):
        vkv.search([0, 0], metric="bogus")
    with pytest.raises(InvalidArgument):
        vkv.search([0, 0], metric="hamming")  # incompatible with f32
    with pytest.raises(InvalidArgument):
        vkv.get([0, 0], metric="cosine-ish")


def test_vectorkvault_k_limits(db_path):
    vkv = VectorKVault(db_path, dimensions=2, metric="l2")
    assert vkv.search([0, 0], k=10) == []  # empty table
    for i in range(3):
        vkv.insert([i, i], i)
    assert len(vkv.search([0, 0], k=10)) == 3
    assert len(vkv.search([0, 0], k=4096)) == 3
    with pytest.raises(InvalidArgument):
        vkv.search([0, 0], k=4097)


def test_vectorkvault_get_and_getitem(db_path):
    vkv = VectorKVault(db_path, dimensions=2, metric="l2")
    with pytest.raises(KohakuVaultError, match="No vectors found in database"):
        vkv.get([0, 0])
    with pytest.raises(KeyError) as ei:
        vkv[[0, 0]]
    assert ei.value.args == ("No vectors found in database",)
    vkv[[1, 1]] = {"near": True}
    vkv[np.array([9, 9])] = "far"
    assert vkv.get([0, 0]) == {"near": True}
    assert vkv[[10, 10]] == "far"


def test_vectorkvault_crud(db_path):
    vkv = VectorKVault(db_path, dimensions=2, metric="l2")
    a = vkv.insert([1, 0], b"a", metadata={"ignored": True})
    b = vkv.insert([0, 1], b"b")
    with pytest.raises(InvalidArgument):
        vkv.insert([1, 1], b"c", metadata="not a dict")
    assert vkv.exists(a) and a in vkv and 999 not in vkv
    vkv.update(a, vector=[5, 5])
    np.testing.assert_array_equal(vkv.get_by_id(a)[0], [5, 5])
    vkv.update(a, value=[1, 2])
    assert vkv.get_by_id(a)[1] == [1, 2]
    vkv.update(999, vector=[1, 1])  # unknown id: no-op
    with pytest.raises(NotFound):
        vkv.update(999, value=b"x")
    with pytest.raises(InvalidArgument):
        vkv.update(a)
    vkv.delete(b)
    vkv.delete(12345)
    assert not vkv.exists(b) and vkv.count() == 1 and len(vkv) == 1
    with pytest.raises(KohakuVaultError, match=f"ID {b} not found"):
        vkv.get_by_id(b)
    con = sqlite3.connect(db_path)
    assert con.execute("SELECT COUNT(*) FROM vec_kvault_values").fetchone()[0] == 1
    con.close()


def test_vectorkvault_constructor_validation(db_path):
    for kwargs, msg in [
        ({"metric": "dot"}, "Unknown metric"),
        ({"vector_type": "f16"}, "Unknown vector type"),
        ({"metric": "cosine", "vector_type": "int8"}, "is not compatible with vector type"),
        ({"metric": "hamming", "vector_type": "f32"}, "is not compatible"),
        ({"metric": "l2", "vector_type": "bit"}, "is not compatible"),
        ({"metric": "hamming", "vector_type": "bit", "dimensions": 12}, ""),
    ]:
        with pytest.raises(ValueError, match=msg) as ei:
            VectorKVault(db_path, **kwargs)
        assert not isinstance(ei.value, KohakuVaultError)


def test_vectorkvault_int8_and_bit_not_yet_supported(db_path):
    i8 = VectorKVault(db_path, table="i8", dimensions=4, metric="l2", vector_type="i8")
    bit = VectorKVault(db_path, table="b", dimensions=16, metric="hamming", vector_type="bit")
    for vkv in (i8, bit):
        n = vkv.dimensions
        with pytest.raises(InvalidArgument, match="not yet supported"):
            vkv.insert([1] * n, b"x")
        with pytest.raises(InvalidArgument, match="not yet supported"):
            vkv.search([1] * n)
        assert len(vkv) == 0
    assert i8.info() == {"table": "i8", "dimensions": 4, "metric": "L2", "vector_type": "int8", "count": 0}
    assert bit.info()["metric"] == "hamming" and bit.info()["vector_type"] == "bit"


def test_vectorkvault_attributes_as_passed_and_info_normalised(db_path):
    vkv = VectorKVault(db_path, table="t", dimensions=3, metric="Euclidean", vector_type="float32")
    assert (vkv.table, vkv.dimensions, vkv.metric, vkv.vector_type) == ("t", 3, "Euclidean", "float32")
    vkv.insert([1, 2, 3], 1)
    assert vkv.info() == {"table": "t", "dimensions": 3, "metric": "L2", "vector_type": "float32", "count": 1}
    assert repr(vkv) == (f"VectorKVault(path={db_path!r}, table='t', dimensions=3, "
                         "metric='Euclidean', vector_type='float32', count=1)")
    d = VectorKVault(db_path, table="d", dimensions=8)
    assert d.info()["metric"] == "cosine" and d.info()["vector_type"] == "float32"


def test_vectorkvault_values_auto_pack_and_switches(db_path):
    vkv = VectorKVault(db_path, dimensions=2, metric="l2")
    emb = np.arange(4, dtype=np.float32)
    values = [{"a": 1}, [1, "x"], 7, 2.5, "s", b"raw", emb]
    ids = [vkv.insert([i, 0], v) for i, v in enumerate(values)]
    for i, v in zip(ids, values):
        got = vkv.get_by_id(i)[1]
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(got, v)
        else:
            assert got == v
    vkv.disable_auto_pack()
    assert vkv.auto_pack_enabled() is False
    j = vkv.insert([9, 9], bytearray(b"ba"))
    assert vkv.get_by_id(j)[1] == b"ba"
    assert vkv.get_by_id(ids[2])[1][:2] == b"\x89K"  # stored bytes with header
    with pytest.raises(InvalidArgument):
        vkv.insert([1, 1], "str needs auto-pack")
    vkv.enable_auto_pack()
    vkv.disable_headers()
    assert vkv.headers_enabled() is False
    k = vkv.insert([8, 8], "bare")
    assert vkv.get_by_id(k)[1] == b"bare"


def test_vectorkvault_reopen_with_other_dimensions_is_detected(db_path):
    a = VectorKVault(db_path, dimensions=4, metric="l2")
    a.insert([1, 2, 3, 4], 1)
    a.close()
    b = VectorKVault(db_path, dimensions=2, metric="l2")
    with pytest.raises(KohakuVaultError):
        b.search([1, 2])


@pytest.mark.parametrize("rows", [3, 600])   # unchunked rows only; chunks and a tail
def test_vectorkvault_writes_with_other_dimensions_are_refused(db_path, rows):
    """A handle opened with other dimensions than the table's vectors cannot
    insert rows no search could read, nor update a chunk slot across its
    neighbours; the stored vectors stay searchable."""
    a = VectorKVault(db_path, dimensions=4, metric="l2")
    ids = [a.insert([float(i), 0, 0, 0], i) for i in range(rows)]
    a.close()
    b = VectorKVault(db_path, dimensions=8, metric="l2")
    with pytest.raises(InvalidArgument, match="holds vectors of 16 bytes.*8 dimensions"):
        b.insert([1.0] * 8, "x")
    with pytest.raises(InvalidArgument, match="holds vectors of 16 bytes"):
        b.update(ids[1], vector=[1.0] * 8)
    b.close()
    c = VectorKVault(db_path, dimensions=4, metric="l2")
    assert len(c) == rows
    assert [r[0] for r in c.search([1.0, 0, 0, 0], k=1)] == [ids[1]]
    c.insert([5.0, 0, 0, 0], "ok")
    c.update(ids[0], vector=[0.5, 0, 0, 0])
    assert len(c) == rows + 1
    c.close()


def test_vectorkvault_threads(db_path, run_threads):
    vkv = VectorKVault(db_path, dimensions=8, metric="l2")

    def worker(n):
        rng = np.random.default_rng(n)  # one generator per thread
        for i in range(40):
            vkv.insert(rng.standard_normal(8).astype(np.float32), (n, i))
            vkv.search(np.zeros(8, dtype=np.float32), k=5)

    errors = run_threads(worker, 4)
    assert not errors
    assert len(vkv) == 160


def test_vectorkvault_close_closed_property_and_later_calls(db_path):
    vkv = VectorKVault(db_path, dimensions=2, metric="l2")
    i = vkv.insert([1, 2], b"v")
    assert vkv._vault.closed is False
    vkv.close()
    vkv.close()
    assert vkv._vault.closed is True
    for call in (vkv.count, vkv.info, lambda: vkv.get_by_id(i), lambda: vkv.delete(i),
                 lambda: vkv.exists(i), lambda: vkv.search([1, 2]), lambda: vkv.insert([0, 0], b"y"),
                 lambda: vkv.update(i, value=b"z")):
        with pytest.raises(InvalidArgument, match="Cannot operate on closed VectorKVault") as ei:
            call()
        assert type(ei.value.__cause__) is ValueError
    with pytest.raises(KeyError):
        vkv[[1, 2]]
    again = VectorKVault(db_path, dimensions=2, metric="l2")
    assert again.get_by_id(i)[1] == b"v"


def test_vectorkvault_exists_and_delete_id_arguments(db_path):
    vkv = VectorKVault(db_path, dimensions=2, metric="l2")
    i = vkv.insert([1, 2], b"v")
    assert i in vkv and (i + 1) not in vkv
    assert not vkv.exists(2**80)
    with pytest.raises(InvalidArgument):
        vkv.exists("1")
    with pytest.raises(InvalidArgument):
        vkv.delete("1")
    assert vkv._vault.delete(i) is True and vkv._vault.delete(i) is False
    assert len(vkv) == 0


# ---------------------------------------------------------------- chunked store, batches


def reference_f64(data, ids, q, metric, k):
    """Brute-force k-NN in float64 numpy: (ids, distances), ties by id."""
    x = np.asarray(data, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if metric == "cosine":
        nx = np.linalg.norm(x, axis=1, keepdims=True)
        nx[nx == 0] = 1
        d = 1.0 - (x / nx) @ (q / np.linalg.norm(q))
    elif metric == "l2":
        d = np.sqrt(((x - q) ** 2).sum(axis=1))
    else:
        d = np.abs(x - q).sum(axis=1)
    ids = np.asarray(ids)
    order = np.lexsort((ids, d))[:k]
    return ids[order].tolist(), d[order].tolist()


@pytest.mark.parametrize("metric", ["cosine", "l2", "l1"])
def test_vectorkvault_20_seeded_tables_match_numpy(tmp_path, metric):
    """20 seeded random tables per metric (bulk + single inserts, deletes,
    vector updates; 384-d tables large enough to form several chunks):
    search and search_many equal a float64 numpy brute force."""
    for seed in range(20):
        rng = np.random.default_rng(1000 + seed)
        dims = 384 if seed % 5 == 0 else int(rng.integers(1, 70))
        n = 1500 if seed % 5 == 0 else int(rng.integers(50, 400))
        data = rng.standard_normal((n, dims)).astype(np.float32)
        vkv = VectorKVault(str(tmp_path / f"s{seed}.db"), dimensions=dims, metric=metric,
                           threads=1 + seed % 3)
        bulk = n * 3 // 4
        ids = vkv.insert_many(data[:bulk], [int(i) for i in range(bulk)])
        ids += [vkv.insert(data[i], int(i)) for i in range(bulk, n)]
        assert ids == list(range(ids[0], ids[0] + n))
        vkv.search(data[0], k=1)  # the in-memory copy exists before the changes below
        live = np.ones(n, dtype=bool)
        for i in range(0, n, 13):
            vkv.delete(ids[i])
            live[i] = False
        for i in range(5, n, 17):
            if live[i]:
                data[i] = rng.standard_normal(dims).astype(np.float32)
                vkv.update(ids[i], vector=data[i])
        keep = [ids[i] for i in range(n) if live[i]]
        assert vkv.count() == len(keep)
        queries = rng.standard_normal((4, dims)).astype(np.float32)
        many = vkv.search_many(queries, k=10)
        for qi, q in enumerate(queries):
            want_ids, want_d = reference_f64(data[live], keep, q, metric, 10)
            for res in (vkv.search(q, k=10), many[qi]):
                assert [r[0] for r in res] == want_ids, (seed, qi)
                # within 1e-5, or the float32 rounding of the reported distance
                assert [r[1] for r in res] == pytest.approx(want_d, abs=1e-5, rel=2.0**-23)
                assert [r[2] for r in res] == [ids.index(i) for i in want_ids]


def test_vectorkvault_insert_many_and_search_many_inputs(db_path):
    vkv = VectorKVault(db_path, dimensions=3, metric="l2")
    assert vkv.insert_many([], []) == []
    ids = vkv.insert_many([[1, 0, 0], np.array([0, 1, 0])], ["a", {"b": 1}])
    assert vkv.get_by_id(ids[1])[1] == {"b": 1}
    ids2 = vkv.insert_many(np.eye(3, dtype=np.float64) * 2, [1, 2, 3])
    assert ids2 == [ids[1] + 1, ids[1] + 2, ids[1] + 3]
    res = vkv.search_many([[1, 0, 0], [0, 0, 2]], k=2)
    assert [r[0] for r in res[0]] == [ids[0], ids2[0]]
    assert res[1][0][0] == ids2[2] and res[1][0][1] == 0.0
    assert vkv.search_many(np.zeros((0, 3), dtype=np.float32)) == []
    assert vkv.search_many([[1, 0, 0]], k=0) == [[]]
    with pytest.raises(InvalidArgument, match="Expected 3 dimensions, got 2"):
        vkv.insert_many(np.ones((2, 2), dtype=np.float32), [1, 2])
    with pytest.raises(InvalidArgument):
        vkv.insert_many(np.ones((2, 3), dtype=np.float32), [1])  # one value short
    with pytest.raises(InvalidArgument):
        vkv.insert_many(np.array([[1, np.nan, 0]], dtype=np.float32), [1])
    with pytest.raises(InvalidArgument):
        vkv.search_many(np.ones(3, dtype=np.float32))  # 1-D: not a batch
    with pytest.raises(InvalidArgument, match="too large"):
        vkv.search_many([[1, 0, 0]], k=4097)
    with pytest.raises(InvalidArgument):
        vkv.search_many([[1, 0, 0]], metric="hamming")
    assert vkv.count() == 5  # the failed batches stored nothing
    with pytest.raises(ValueError):  # constructor errors are raw
        VectorKVault(db_path, dimensions=3, metric="l2", threads=-1)


def test_vectorkvault_int8_and_bit_batches_not_yet_supported(db_path):
    i8 = VectorKVault(db_path, table="i8", dimensions=4, metric="l2", vector_type="int8")
    with pytest.raises(InvalidArgument, match="not yet supported"):
        i8.insert_many(np.ones((2, 4), dtype=np.float32), [1, 2])
    with pytest.raises(InvalidArgument, match="not yet supported"):
        i8.search_many(np.ones((1, 4), dtype=np.float32))


def test_vectorkvault_sees_other_handles_writes(db_path):
    a = VectorKVault(db_path, dimensions=2, metric="l2")
    b = VectorKVault(db_path, dimensions=2, metric="l2")
    a.insert([0, 0], "origin")
    assert b.search([0, 0], k=5)[0][2] == "origin"  # b's copy loads
    far = a.insert([5, 5], "far")
    near = a.insert([0.1, 0], "near")
    assert [r[0] for r in b.search([0.2, 0], k=3)] == [near, 1, far]
    a.delete(near)
    a.update(far, vector=[0.3, 0])
    assert [r[2] for r in b.search([0.2, 0], k=3)] == ["far", "origin"]


def test_vectorkvault_search_releases_the_gil(db_path):
    """A thread keeps running Python code while another searches."""
    import threading
    import time

    vkv = VectorKVault(db_path, dimensions=256, metric="l2", threads=1)
    vkv.insert_many(np.random.default_rng(3).standard_normal((20000, 256)).astype(np.float32),
                    list(range(20000)))
    q = np.zeros((64, 256), dtype=np.float32)
    vkv.search_many(q, k=5)
    ticks = []
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0)

    t = threading.Thread(target=spin)
    t.start()
    for _ in range(3):
        vkv.search_many(q, k=5)
    stop.set()
    t.join()
    assert len(ticks) > 10


def test_vectorkvault_search_many_large_batch_equals_single_searches(db_path):
    rng = np.random.default_rng(11)
    vkv = VectorKVault(db_path, dimensions=8, metric="cosine")
    vkv.insert_many(rng.standard_normal((500, 8)).astype(np.float32), list(range(500)))
    queries = rng.standard_normal((600, 8)).astype(np.float32)  # several scan groups
    many = vkv.search_many(queries, k=3)
    assert len(many) == 600
    assert many == [vkv.search(q, k=3) for q in queries]


def stored_tables(path, table="vec_kvault"):
    """Every row of the store's four tables, as they are in the file."""
    con = sqlite3.connect(path)
    try:
        return {t: con.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall()
                for t in (table, f"{table}_values", f"{table}_chunks", f"{table}_chunk_vectors")}
    finally:
        con.close()


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_vectorkvault_insert_many_array_and_list_store_the_same(tmp_path, metric):
    """insert_many from a float32 array, a float64 array, a list of arrays
    and a list of lists writes byte-identical tables (chunks, map rows,
    values), and equal to the same vectors inserted one by one."""
    rng = np.random.default_rng(5)
    data = rng.standard_normal((1500, 384)).astype(np.float32)  # 2 chunks of 640 + 220 rows
    data[7] = 0.0  # a zero vector is stored as it is
    values = [{"n": i} for i in range(1500)]
    inputs = {"f32": data, "f64": data.astype(np.float64), "arrays": list(data),
              "lists": data.tolist()}
    tables = {}
    for name, vecs in inputs.items():
        path = str(tmp_path / f"{name}.db")
        vkv = VectorKVault(path, dimensions=384, metric=metric)
        assert vkv.insert_many(vecs, values) == list(range(1, 1501))
        vkv.close()
        tables[name] = stored_tables(path)
    path = str(tmp_path / "single.db")
    vkv = VectorKVault(path, dimensions=384, metric=metric)
    assert [vkv.insert(v, values[i]) for i, v in enumerate(data)] == list(range(1, 1501))
    vkv.close()
    tables["single"] = stored_tables(path)
    assert len(tables["f32"]["vec_kvault_chunk_vectors"]) == 2
    for name in ("f64", "arrays", "lists", "single"):
        assert tables[name] == tables["f32"], name
    vkv = VectorKVault(str(tmp_path / "f32.db"), dimensions=384, metric=metric)
    got = np.stack([vkv.get_by_id(i)[0] for i in (1, 8, 700, 1500)])
    want = data[[0, 7, 699, 1499]]
    if metric == "cosine":
        norms = np.linalg.norm(want, axis=1, keepdims=True)
        want = np.where(norms > 0, want / np.where(norms > 0, norms, 1), 0)
        assert np.allclose(np.linalg.norm(got[[0, 2, 3]], axis=1), 1.0, atol=1e-6)
    assert np.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("bad", ["short row", "long row", "nan", "inf"])
def test_vectorkvault_insert_many_failing_in_row_500_stores_nothing(db_path, bad):
    """A batch whose row 500 is bad raises InvalidArgument naming the
    problem, and the file keeps exactly what it held before."""
    rng = np.random.default_rng(9)
    vkv = VectorKVault(db_path, dimensions=384, metric="cosine")
    vkv.insert_many(rng.standard_normal((700, 384)).astype(np.float32), list(range(700)))
    before = stored_tables(db_path)
    data = rng.standard_normal((1500, 384)).astype(np.float32)
    if bad in ("nan", "inf"):
        data[500, 17] = np.nan if bad == "nan" else np.inf
        batch, match = data, "element 17 is not finite"
    else:
        batch = list(data)
        batch[500] = batch[500][:383] if bad == "short row" else np.append(batch[500], 1.0)
        match = f"Expected 384 dimensions, got {383 if bad == 'short row' else 385}"
    with pytest.raises(InvalidArgument, match=match):
        vkv.insert_many(batch, list(range(1500)))
    assert vkv.count() == 700
    assert stored_tables(db_path) == before
    assert vkv.insert_many(data[:3], [1, 2, 3]) == [701, 702, 703]


def test_vectorkvault_insert_many_after_unchunked_rows_and_with_the_copy_loaded(db_path):
    """Single inserts first (unchunked rows), then bulk inserts that cut
    chunks across old and new rows, with the in-memory copy loaded: search
    equals the numpy reference and every stored cosine vector has unit
    length."""
    rng = np.random.default_rng(21)
    data = rng.standard_normal((2100, 64)).astype(np.float32) * 3
    vkv = VectorKVault(db_path, dimensions=64, metric="cosine", threads=2)
    ids = [vkv.insert(v, i) for i, v in enumerate(data[:100])]
    vkv.search(data[0], k=1)  # copy loaded: the bulk path keeps it current
    ids += vkv.insert_many(data[100:1900], list(range(100, 1900)))
    ids += vkv.insert_many(list(data[1900:]), list(range(1900, 2100)))
    assert ids == list(range(1, 2101))
    con = sqlite3.connect(db_path)
    blobs = [b for (b,) in con.execute("SELECT vectors FROM vec_kvault_chunk_vectors")]
    blobs += [b for (b,) in con.execute("SELECT vector FROM vec_kvault WHERE chunk_id IS NULL")]
    con.close()
    stored = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(-1, 64)
    assert stored.shape[0] == 2100
    assert np.allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-6)
    for q in rng.standard_normal((5, 64)).astype(np.float32):
        want_ids, want_d = reference_f64(data, ids, q, "cosine", 10)
        for res in (vkv.search(q, k=10), VectorKVault(db_path, dimensions=64).search(q, k=10)):
            assert [r[0] for r in res] == want_ids
            assert [r[1] for r in res] == pytest.approx(want_d, abs=1e-5, rel=2.0**-23)


def test_vectorkvault_checkpoints_the_wal_while_open(db_path):
    """After a commit leaves 1000 WAL frames or more, the handle's
    checkpointer copies them into the database file while the handle stays
    open (without it the file would stay small until close)."""
    import os
    import time

    vkv = VectorKVault(db_path, dimensions=256, metric="l2")
    vkv.insert_many(np.ones((20000, 256), dtype=np.float32), list(range(20000)))
    deadline = time.monotonic() + 30
    while os.path.getsize(db_path) < 20_000 * 1024 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.getsize(db_path) >= 20_000 * 1024
    assert vkv.count() == 20000
    vkv.close()
