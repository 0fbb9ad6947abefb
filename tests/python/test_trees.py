"""CSBTree and SkipList (docs/api.md §9): in-memory ordered maps of Python objects."""

import gc
import pickle
import random
import sys
import threading
from dataclasses import dataclass

import pytest

from kohakuvault import CSBTree, SkipList
from kohakuvault._kvault import CSBTree as NativeCSBTree, SkipList as NativeSkipList

BOTH = [CSBTree, SkipList]


def test_trees_exported_from_native_module():
    assert CSBTree is NativeCSBTree
    assert SkipList is NativeSkipList


# ---------------------------------------------------------------- shared API


@pytest.mark.parametrize("cls", BOTH)
def test_trees_empty(cls):
    t = cls()
    assert len(t) == 0
    assert t.is_empty()
    assert t.get(1) is None
    assert t.remove(1) is None
    assert 1 not in t
    assert t.keys() == [] and t.values() == [] and t.items() == []
    assert list(t) == []
    assert t.range(0, 10) == []


@pytest.mark.parametrize("cls", BOTH)
def test_trees_lists_and_iteration_in_key_order(cls):
    t = cls()
    for k in [5, 2, 8, 1, 9, 3, 7, 4, 6]:
        t.insert(k, f"v{k}")
    assert t.keys() == list(range(1, 10))
    assert t.values() == [f"v{k}" for k in range(1, 10)]
    assert t.items() == [(k, f"v{k}") for k in range(1, 10)]
    assert isinstance(t.keys(), list) and isinstance(t.items(), list)
    it = list(t)
    assert it == [(k, f"v{k}") for k in range(1, 10)]
    assert all(type(p) is tuple for p in it)


@pytest.mark.parametrize("cls", BOTH)
def test_trees_range_half_open(cls):
    t = cls()
    for i in range(20):
        t.insert(i, i * 10)
    assert t.range(5, 15) == [(i, i * 10) for i in range(5, 15)]
    assert t.range(15, 5) == []
    assert t.range(7, 7) == []
    assert t.range(-100, 2) == [(0, 0), (1, 10)]
    assert t.range(18, 100) == [(18, 180), (19, 190)]
    assert t.range(4.5, 6.5) == [(5, 50), (6, 60)]


@pytest.mark.parametrize("cls", BOTH)
def test_trees_iteration_is_a_snapshot(cls):
    t = cls()
    for i in range(10):
        t.insert(i, i)
    it = iter(t)
    first = next(it)
    t.insert(100, 100)
    t.remove(5)
    rest = list(it)
    assert [first] + rest == [(i, i) for i in range(10)]


@pytest.mark.parametrize("cls", BOTH)
def test_trees_equal_keys_collide_and_keep_first_key_object(cls):
    t = cls()
    t.insert(1, "int")
    t.insert(1.0, "float")
    t.insert(True, "bool")
    assert len(t) == 1
    (k,) = t.keys()
    assert type(k) is int


@pytest.mark.parametrize("cls", BOTH)
def test_trees_remove_and_del(cls):
    t = cls()
    t.insert("a", 1)
    t.insert("b", 2)
    assert t.remove("a") == 1
    assert t.remove("a") is None
    del t["b"]
    assert len(t) == 0
    with pytest.raises(KeyError):
        del t["b"]


@pytest.mark.parametrize("cls", BOTH)
def test_trees_clear(cls):
    t = cls()
    for i in range(100):
        t[i] = i
    t.clear()
    assert len(t) == 0 and t.is_empty() and list(t) == []
    t[1] = 2
    assert t.items() == [(1, 2)]


@pytest.mark.parametrize("cls", BOTH)
def test_trees_incomparable_keys_raise_typeerror_and_keep_state(cls):
    t = cls()
    t.insert(1, "one")
    with pytest.raises(TypeError):
        t.insert("x", "str")
    with pytest.raises(TypeError):
        t.get("x")
    assert t.items() == [(1, "one")]


@pytest.mark.parametrize("cls", BOTH)
def test_trees_nan_key_raises_typeerror(cls):
    t = cls()
    with pytest.raises(TypeError):
        t.insert(float("nan"), 1)
    assert len(t) == 0


@pytest.mark.parametrize("cls", BOTH)
def test_trees_not_picklable(cls):
    t = cls()
    t.insert(1, 1)
    with pytest.raises(TypeError):
        pickle.dumps(t)


@pytest.mark.parametrize("cls", BOTH)
def test_trees_custom_comparable_keys(cls):
    @dataclass(order=True)
    class Person:
        age: int
        name: str

    t = cls()
    t.insert(Person(30, "Alice"), "d1")
    t.insert(Person(25, "Bob"), "d2")
    t.insert(Person(35, "Carol"), "d3")
    assert [p.age for p in t.keys()] == [25, 30, 35]
    assert t.get(Person(30, "Alice")) == "d1"


@pytest.mark.parametrize("cls", BOTH)
def test_trees_reference_counts_balance(cls):
    key, val = object.__new__(type("K", (), {"__lt__": lambda a, b: id(a) < id(b)})), object()
    t = cls()
    kr, vr = sys.getrefcount(key), sys.getrefcount(val)
    t.insert(key, val)
    t.items()
    list(t)
    assert t.remove(key) is val
    assert sys.getrefcount(key) == kr and sys.getrefcount(val) == vr


@pytest.mark.parametrize("cls", BOTH)
def test_trees_cycles_are_collected(cls):
    class Box:
        pass

    t = cls()
    b = Box()
    b.tree = t
    t.insert(1, b)
    import weakref

    w = weakref.ref(b)
    del t, b
    gc.collect()
    assert w() is None


@pytest.mark.parametrize("cls", BOTH)
def test_trees_reentrant_comparison_is_refused_not_crashing(cls):
    t = cls()

    class Evil:
        def __init__(self, v):
            self.v = v

        def __lt__(self, other):
            t.get(Evil(0))  # re-enters the container mid-operation
            return self.v < other.v

        def __gt__(self, other):
            return self.v > other.v

    t.insert(Evil(1), "a")
    with pytest.raises(RuntimeError):
        t.insert(Evil(2), "b")
    assert len(t) == 1


class Key:
    """An int-like key compared in Python code (so comparisons can run
    arbitrary code in a subclass)."""

    def __init__(self, v):
        self.v = v

    def __lt__(self, other):
        return self.v < other.v

    def __gt__(self, other):
        return self.v > other.v

    def __eq__(self, other):
        return self.v == other.v

    __hash__ = None


@pytest.mark.parametrize("size", [0, 1, 2, 3, 10, 100])
@pytest.mark.parametrize("mutation", ["insert", "remove", "remove_target", "clear", "drop_refs",
                                      "del_list", "collect", "raise"])
def test_skiplist_remove_with_a_comparison_that_mutates_the_list(size, mutation):
    """remove(key) where key's comparison inserts into, removes from or
    clears the same list, drops the references to its keys or to the list,
    runs the garbage collector, or raises: the call ends with a result or a
    clean exception (the list refuses the re-entry with RuntimeError; the
    comparison's own error propagates), never a crash, and the list is a
    consistent ordered map afterwards. (A report had skl_remove crash in
    PyObject_RichCompareBool; these are its sequences.)"""
    holder = {"t": SkipList()}
    keys = [Key(v) for v in range(0, 2 * size, 2)]
    for k in keys:
        holder["t"].insert(k, k.v)
    seen = []

    def mutate():
        t = holder["t"]
        if mutation == "insert":
            t.insert(Key(-1), -1)
        elif mutation == "remove":
            t.remove(keys[0] if keys else Key(0))
        elif mutation == "remove_target":
            t.remove(target)
        elif mutation == "clear":
            t.clear()
        elif mutation == "drop_refs":
            keys.clear()
        elif mutation == "del_list":
            holder.clear()
        elif mutation == "collect":
            gc.collect()
        else:
            raise ValueError("comparison failed")

    class Mutating(Key):
        armed = True

        def __lt__(self, other):
            if Mutating.armed:
                Mutating.armed = False
                try:
                    mutate()
                except RuntimeError as e:   # the list refused the re-entry
                    seen.append(e)
            return Key.__lt__(self, other)

    target = Mutating(size if size % 2 == 0 else size - 1)   # present for even sizes
    t = holder.get("t")
    remove = t.remove
    del t
    try:
        remove(target)
    except ValueError as e:
        assert mutation == "raise" and "comparison failed" in str(e)
    t = remove.__self__
    if mutation in ("insert", "remove", "remove_target", "clear") and size:
        assert seen and "re-entered" in str(seen[0])
    got = [k.v for k in t.keys()]
    assert got == sorted(got) and len(got) == len(t) == len(set(got))
    for v in got:
        assert t.get(Key(v)) == v


# ---------------------------------------------------------------- CSBTree


def test_csbtree_insert_replaces_and_returns_previous():
    t = CSBTree()
    assert t.insert(1, "one") is None
    assert t.insert(1, "ONE") == "one"
    assert t.get(1) == "ONE"
    t[1] = "uno"
    assert t[1] == "uno"
    assert len(t) == 1


def test_csbtree_getitem_missing_message():
    t = CSBTree()
    with pytest.raises(KeyError, match="Key not found in CSBTree"):
        t[1]


def test_csbtree_get_default_setdefault_update():
    t = CSBTree()
    t.insert(1, "one")
    assert t.get_default(1, "d") == "one"
    assert t.get_default(2, "d") == "d"
    assert t.setdefault(1, "X") == "one"
    assert t.setdefault(2, "two") == "two"
    assert t.get(2) == "two"
    t.update([(3, "three"), (1, "ONE")])
    assert t.items() == [(1, "ONE"), (2, "two"), (3, "three")]
    t.update({4: "x"}.items())
    assert t[4] == "x"
    with pytest.raises(TypeError):  # items must be indexable pairs
        t.update([5])


def test_csbtree_update_dict_iterates_keys():
    t = CSBTree()
    t.update({"ab": 1, "cd": 2})  # keys are strings: pairs ('a','b'), ('c','d')
    assert t.items() == [("a", "b"), ("c", "d")]


def test_csbtree_order_validation_and_repr():
    with pytest.raises(ValueError):
        CSBTree(order=2)
    with pytest.raises(ValueError):
        CSBTree(2)
    t = CSBTree(order=3)
    assert repr(t) == "CSBTree(len=0)"
    t.insert(1, 1)
    assert repr(t) == "CSBTree(len=1)"


@pytest.mark.parametrize("order", [3, 4, 5, 8, 63])
def test_csbtree_model_random_operations(order):
    """Random insert/remove/get/range against a dict model, many node splits and merges."""
    rng = random.Random(order)
    t = CSBTree(order=order)
    model = {}
    for step in range(6000):
        op = rng.random()
        k = rng.randrange(800)
        if op < 0.5:
            v = rng.random()
            assert t.insert(k, v) == model.get(k)
            model[k] = v
        elif op < 0.85:
            assert t.remove(k) == model.pop(k, None)
        elif op < 0.95:
            assert t.get(k) == model.get(k)
            assert (k in t) == (k in model)
        else:
            a, b = sorted((rng.randrange(800), rng.randrange(800)))
            assert t.range(a, b) == sorted((x, y) for x, y in model.items() if a <= x < b)
        if step % 500 == 0:
            assert t.items() == sorted(model.items())
    assert len(t) == len(model)
    assert t.items() == sorted(model.items())
    for k in list(model):
        assert t.remove(k) == model.pop(k)
    assert len(t) == 0 and t.items() == []


def test_csbtree_large_sequential_and_string_keys():
    t = CSBTree()
    n = 20000
    for i in range(n):
        t.insert(i, f"value{i}")
    assert len(t) == n
    assert all(t.get(i) == f"value{i}" for i in range(0, n, 97))
    r = t.range(100, 200)
    assert len(r) == 100 and r[0][0] == 100 and r[-1][0] == 199
    s = CSBTree()
    for w in ["cherry", "apple", "banana"]:
        s[w] = len(w)
    assert s.keys() == ["apple", "banana", "cherry"]
    b = CSBTree()
    for key in [b"key3", b"key1", b"key2"]:
        b.insert(key, key.decode())
    assert b.get(b"key2") == "key2"


# ---------------------------------------------------------------- SkipList


def test_skiplist_insert_keeps_existing_value():
    s = SkipList()
    assert s.insert(1, "a") is None
    assert s.insert(1, "b") == "a"
    s[1] = "c"
    assert s[1] == "a"
    assert s.get(1) == "a"
    assert len(s) == 1


def test_skiplist_getitem_missing_message_and_repr():
    s = SkipList()
    with pytest.raises(KeyError, match="Key not found"):
        s[1]
    assert repr(s) == "SkipList(len=0)"
    s[1] = 1
    assert repr(s) == "SkipList(len=1)"


def test_skiplist_model_random_operations():
    rng = random.Random(7)
    s = SkipList()
    model = {}
    for _ in range(8000):
        k = rng.randrange(1000)
        op = rng.random()
        if op < 0.5:
            expected = model.get(k)
            assert s.insert(k, -k) == expected
            model.setdefault(k, -k)
        elif op < 0.8:
            assert s.remove(k) == model.pop(k, None)
        else:
            a, b = sorted((rng.randrange(1000), rng.randrange(1000)))
            assert s.range(a, b) == sorted((x, y) for x, y in model.items() if a <= x < b)
    assert s.items() == sorted(model.items())
    assert len(s) == len(model)


def test_skiplist_concurrent_inserts_lose_nothing():
    s = SkipList()
    n_threads, per = 8, 2000

    def worker(tid):
        for i in range(tid * per, (tid + 1) * per):
            s[i] = f"t{tid}_{i}"

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert len(s) == n_threads * per
    assert s.keys() == list(range(n_threads * per))
    assert s[3 * per + 5] == f"t3_{3 * per + 5}"


def test_skiplist_concurrent_mixed_operations_and_snapshots():
    s = SkipList()
    for i in range(1000):
        s[i] = i
    errors = []
    stop = threading.Event()

    def iterator():
        try:
            while not stop.is_set():
                items = list(s)
                keys = [k for k, _ in items]
                assert keys == sorted(keys), "snapshot not ordered"
                assert len(set(keys)) == len(keys)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def writer(tid):
        try:
            for i in range(3000):
                k = 1000 + tid * 3000 + i
                s.insert(k, k)
                if i % 3 == 0:
                    assert s.remove(k) == k
                assert s.get(i % 1000) == i % 1000
                assert (i % 1000) in s
        except Exception as e:  # pragma: no cover
            errors.append(e)

    readers = [threading.Thread(target=iterator) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(t,)) for t in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join(timeout=120)
    stop.set()
    for t in readers:
        t.join(timeout=120)
    assert not errors, errors
    expected = 1000 + 3 * (3000 - 1000)
    assert len(s) == expected
    assert len(s.keys()) == expected


def test_skiplist_concurrent_with_python_comparisons():
    """Keys with Python-level __lt__ let the GIL switch mid-operation."""

    @dataclass(order=True, frozen=True)
    class K:
        v: int

    s = SkipList()

    def worker(tid):
        for i in range(500):
            s.insert(K(tid * 500 + i), i)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    sys_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=120)
    finally:
        sys.setswitchinterval(sys_interval)
    assert len(s) == 2000
    assert [k.v for k in s.keys()] == list(range(2000))
