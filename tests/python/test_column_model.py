"""Model test: 10,000 random operations per column kind beside a Python list.

After every step the whole column is compared with the model through one
raw read (the packed bytes of every element, via ``read_raw``), and every
250 steps through the decoded values; the column is also dropped and
reopened from the file periodically. Stepped slices must raise ValueError
and leave the column unchanged (the model list would accept them).
"""

import gc
import random

import numpy as np
import pytest

from kohakuvault import ColumnVault, DataPacker

STEPS = 10_000
MAX_LEN = 300


def _gen(kind, rng):
    if kind == "i64":
        return rng.randint(-(2**63), 2**63 - 1)
    if kind == "f64":
        return rng.uniform(-1e12, 1e12)
    if kind == "bytes:16":
        return bytes(rng.getrandbits(8) for _ in range(16))
    if kind == "bytes":
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
    if kind == "str:utf8":
        return "".join(rng.choice("aé漢🙂z ") for _ in range(rng.randint(0, 12)))
    if kind == "msgpack":
        return {"id": rng.randint(0, 1000), "tags": ["x"] * rng.randint(0, 4), "v": rng.random()}
    if kind == "vec:f32:8":
        return np.array([rng.uniform(-5, 5) for _ in range(8)], dtype=np.float32)
    raise AssertionError(kind)


KINDS = ["i64", "f64", "bytes:16", "bytes", "str:utf8", "msgpack", "vec:f32:8"]


def _eq(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def _random_slice(rng, n, odd_step):
    """A slice with bounds in [-n - 3, n + 3] and a step drawn from None, 1,
    ``odd_step`` and -1 (1 twice as likely)."""
    a = rng.randint(-n - 3, n + 3)
    b = rng.randint(-n - 3, n + 3)
    return slice(a, b, rng.choice([None, 1, 1, odd_step, -1]))


@pytest.mark.parametrize("kind", KINDS)
def test_model_random_ops(tmp_path, kind):
    rng = random.Random(hash(kind) & 0xFFFF)
    path = str(tmp_path / "model.db")
    packer = DataPacker(kind)
    cv = ColumnVault(path, min_chunk_bytes=64, max_chunk_bytes=512)  # many chunk boundaries
    col = cv.create_column("c", kind)
    model = []  # packed bytes of each element
    values = []  # python values of each element

    def check_raw():
        n = len(col)
        assert n == len(model)
        raw = col._h.read_raw(0, n)
        if packer.is_varsize:
            data, offs = raw
            assert data == b"".join(model)
            assert offs[-1] == len(data)
        else:
            assert raw == b"".join(model)

    def check_values():
        got = col[:]
        assert len(got) == len(values)
        assert all(_eq(g, v) for g, v in zip(got, values))

    for step in range(STEPS):
        n = len(model)
        op = rng.random()
        if op < 0.22 and n < MAX_LEN:
            v = _gen(kind, rng)
            col.append(v)
            model.append(packer.pack(v))
            values.append(packer.unpack(packer.pack(v)))
        elif op < 0.30 and n < MAX_LEN:
            vs = [_gen(kind, rng) for _ in range(rng.randint(0, 8))]
            col.extend(vs)
            model.extend(packer.pack(v) for v in vs)
            values.extend(packer.unpack(packer.pack(v)) for v in vs)
        elif op < 0.40:
            v = _gen(kind, rng)
            i = rng.randint(-n - 2, n + 2)
            if packer.is_varsize:
                with pytest.raises(NotImplementedError):
                    col.insert(i, v)
            else:
                col.insert(i, v)
                model.insert(i, packer.pack(v))
                values.insert(i, packer.unpack(packer.pack(v)))
        elif op < 0.52:
            i = rng.randint(-n - 2, n + 1)
            if -n <= i < n:
                del col[i]
                del model[i]
                del values[i]
            else:
                with pytest.raises(IndexError):
                    del col[i]
        elif op < 0.64:
            i = rng.randint(-n - 2, n + 1)
            v = _gen(kind, rng)
            if -n <= i < n:
                col[i] = v
                model[i] = packer.pack(v)
                values[i] = packer.unpack(packer.pack(v))
            else:
                with pytest.raises(IndexError):
                    col[i] = v
        elif op < 0.76:
            s = _random_slice(rng, n, 2)
            if s.indices(n)[2] != 1:
                with pytest.raises(ValueError, match="Step slicing not supported"):
                    col[s] = []
            else:
                k = len(range(*s.indices(n)))
                vs = [_gen(kind, rng) for _ in range(k)]
                if k and rng.random() < 0.2:  # wrong length: ValueError, unchanged
                    with pytest.raises(ValueError, match="length mismatch"):
                        col[s] = vs + vs[:1]
                else:
                    col[s] = vs
                    if k:
                        model[s] = [packer.pack(v) for v in vs]
                        values[s] = [packer.unpack(packer.pack(v)) for v in vs]
        elif op < 0.92:
            s = _random_slice(rng, n, 3)
            if s.indices(n)[2] != 1:
                with pytest.raises(ValueError, match="Step slicing not supported"):
                    col[s]
            else:
                got = col[s]
                assert isinstance(got, list)
                assert len(got) == len(values[s])
                assert all(_eq(g, w) for g, w in zip(got, values[s]))
            if n:
                i = rng.randint(-n, n - 1)
                assert _eq(col[i], values[i])
        elif op < 0.97:
            # reopen: drop every reference, open the file again
            del col
            del cv
            gc.collect()
            cv = ColumnVault(path, min_chunk_bytes=64, max_chunk_bytes=512)
            col = cv["c"]
            if rng.random() < 0.5:
                col.enable_cache(cap_bytes=256, flush_threshold=128)
        else:
            # bad inputs leave the column unchanged
            # msgpack: outside the data model is ValueError (docs/api.md §5.4)
            with pytest.raises(ValueError if kind == "msgpack" else (TypeError, ValueError)):
                col.append(object())
            with pytest.raises(TypeError):
                col["0"]
            with pytest.raises(IndexError):
                col[n + 5]
            if kind == "bytes:16":
                with pytest.raises(ValueError, match="Data too long"):
                    col.append(b"x" * 17)
            if kind == "vec:f32:8":
                with pytest.raises(ValueError, match="Shape mismatch"):
                    col.append(np.zeros(7, np.float32))
            if kind == "i64":
                with pytest.raises(TypeError):
                    col.extend([1, 2, 1.5])
        check_raw()
        if step % 250 == 0:
            check_values()
    check_values()
    del col, cv
    gc.collect()
    cv = ColumnVault(path)
    col = cv["c"]
    assert col._h.read_raw(0, len(col)) == (b"".join(model) if not packer.is_varsize else col._h.read_raw(0, len(col)))
    check_values()
