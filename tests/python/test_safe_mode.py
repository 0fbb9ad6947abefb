"""Safe mode: ``unpickle=False`` / ``KVAULT_UNPICKLE=0`` never runs
``pickle.loads`` on a stored value and never writes one (docs/security.md,
"Untrusted files")."""

import os
import pickle

import numpy as np
import pytest

from kohakuvault import InvalidArgument, KVault, Pickle, TextVault, VectorKVault


class Tripwire:
    """Unpickling it writes a file: proof that code from the file ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant(path, marker):
    """A vault whose value b"evil" unpickles to code writing `marker`."""
    with KVault(path, shared=False) as kv:
        kv[b"evil"] = Pickle(Tripwire(marker))
        kv[b"tuple"] = (1, 2)
        kv[b"plain"] = {"a": [1, 2]}
        kv[b"arr"] = np.arange(3, dtype=np.float32)


def test_safe_kvault_refuses_pickled_values(tmp_path):
    db, marker = str(tmp_path / "a.db"), str(tmp_path / "ran")
    _plant(db, marker)
    kv = KVault(db, shared=False, unpickle=False)
    for read in (lambda: kv[b"evil"], lambda: kv.get(b"evil"), lambda: kv[b"tuple"]):
        with pytest.raises(InvalidArgument) as info:
            read()
        msg = str(info.value)
        assert "pickled" in msg and "unpickle=True" in msg and "KVAULT_UNPICKLE" in msg
    assert "b'evil'" in str(pytest.raises(InvalidArgument, kv.get, b"evil").value)
    assert not os.path.exists(marker)
    # values in other encodings read as usual
    assert kv[b"plain"] == {"a": [1, 2]}
    assert kv[b"arr"].tolist() == [0.0, 1.0, 2.0]
    kv.close()


def test_safe_kvault_refuses_to_write_pickle(tmp_path):
    db = str(tmp_path / "a.db")
    kv = KVault(db, shared=False, unpickle=False)
    for value in ((1, 2), {1, 2}, {"a": b"bytes"}, Pickle([1])):
        with pytest.raises(InvalidArgument) as info:
            kv[b"k"] = value
        assert "needs pickle" in str(info.value) and "unpickle=False" in str(info.value)
    assert b"k" not in kv
    kv[b"k"] = {"fits": "msgpack"}  # everything else is stored as usual
    assert kv[b"k"] == {"fits": "msgpack"}
    kv.close()


def test_trusting_default_reads_pickle(tmp_path):
    db = str(tmp_path / "a.db")
    with KVault(db, shared=False) as kv:
        kv[b"t"] = (1, 2)
        assert kv[b"t"] == (1, 2)


def test_environment_variable_and_explicit_argument(tmp_path, monkeypatch):
    db, marker = str(tmp_path / "a.db"), str(tmp_path / "ran")
    _plant(db, marker)
    monkeypatch.setenv("KVAULT_UNPICKLE", "0")
    kv = KVault(db, shared=False)
    with pytest.raises(InvalidArgument, match="pickled"):
        kv[b"tuple"]
    kv.close()
    with KVault(db, shared=False, unpickle=True) as kv:  # explicit wins
        assert kv[b"tuple"] == (1, 2)
    monkeypatch.setenv("KVAULT_UNPICKLE", "maybe")
    with pytest.raises(InvalidArgument, match="KVAULT_UNPICKLE must be one of"):
        KVault(db, shared=False)
    with pytest.raises(ValueError, match="KVAULT_UNPICKLE must be one of"):
        TextVault(str(tmp_path / "t.db"))
    assert not os.path.exists(marker)


def test_bad_unpickle_argument(tmp_path):
    with pytest.raises(InvalidArgument, match="unpickle must be True, False or None"):
        KVault(str(tmp_path / "a.db"), shared=False, unpickle="no")


def test_switches_do_not_leave_safe_mode(tmp_path):
    db = str(tmp_path / "a.db")
    with KVault(db, shared=False) as kv:
        kv[b"t"] = (1, 2)
    kv = KVault(db, shared=False, unpickle=False)
    kv.enable_auto_pack(use_pickle=True)
    with pytest.raises(InvalidArgument, match="pickled"):
        kv[b"t"]
    kv.disable_auto_pack()  # raw bytes, header included: nothing is decoded
    assert kv[b"t"][:2] == b"\x89\x4b"
    kv.close()


@pytest.mark.parametrize("make,insert", [
    (lambda p, **kw: TextVault(p, **kw), lambda s, v: s.insert("doc text", v)),
    (lambda p, **kw: VectorKVault(p, dimensions=3, **kw),
     lambda s, v: s.insert([1.0, 0.0, 0.0], v)),
], ids=["TextVault", "VectorKVault"])
def test_safe_stores(tmp_path, make, insert):
    db, marker = str(tmp_path / "s.db"), str(tmp_path / "ran")
    trusted = make(db)
    doc = insert(trusted, Pickle(Tripwire(marker)))
    trusted.close()
    safe = make(db, unpickle=False)
    with pytest.raises(InvalidArgument, match="pickled") as info:
        safe.get_by_id(doc)
    assert f" {doc} cannot be decoded" in str(info.value)  # names the id
    with pytest.raises(InvalidArgument, match="needs pickle"):
        insert(safe, (1, 2))
    insert(safe, {"ok": 1})
    assert not os.path.exists(marker)
    safe.close()


def test_safe_mode_survives_pickling(tmp_path):
    db = str(tmp_path / "a.db")
    with KVault(db, shared=False) as kv:
        kv[b"t"] = (1, 2)
    kv = KVault(db, shared=False, unpickle=False)
    other = pickle.loads(pickle.dumps(kv))
    with pytest.raises(InvalidArgument, match="pickled"):
        other[b"t"]
    other.close()
    kv.close()
