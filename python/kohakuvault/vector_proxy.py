"""VectorKVault: vectors as keys, exact k-nearest-neighbour search (docs/api.md §8).

The native ``_VectorKVault`` (python/ext/vector_py.c over engine/vector.c)
keeps vectors in chunks in its own table layout (docs/vectors.md) and runs an
exact k-NN scan over an in-memory copy with SIMD kernels, in C with the GIL
released. A table made with sqlite-vec (a ``vec0`` virtual
table) opens read-only; :func:`kohakuvault.migrate_vec0` converts it. This module prepares vector input (§8.2); the exception mapping
(:func:`kohakuvault.errors.map_exception`), the id-based calls, the §3.6
switches and the dict protocol come from :mod:`kohakuvault._store`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ._kvault import _VectorKVault
from ._store import StoreProxy, mapped

VectorInput = Union[np.ndarray, List[float], bytes]

__all__ = ["VectorKVault"]

_METRICS = {"cosine": "cosine", "l2": "L2", "euclidean": "L2", "l1": "L1", "manhattan": "L1",
            "hamming": "hamming"}
_TYPES = {"f32": "float32", "float32": "float32", "i8": "int8", "int8": "int8", "bit": "bit"}
_COMPATIBLE = {"cosine": {"float32"}, "L2": {"float32", "int8"}, "L1": {"float32", "int8"},
               "hamming": {"bit"}}


class VectorKVault(StoreProxy):
    """Vector similarity store: each row is a vector (the key) and a value.

    ``VectorKVault(path, table="vec_kvault", dimensions=768, metric="cosine",
    vector_type="f32")``. ``metric``: ``cosine``, ``l2``/``euclidean``,
    ``l1``/``manhattan``, ``hamming`` (case-insensitive); ``vector_type``:
    ``f32``/``float32``, ``i8``/``int8``, ``bit``; cosine needs f32, l2/l1 need
    f32 or int8, hamming needs bit, bit needs ``dimensions % 8 == 0``. The
    constructor raises raw ``ValueError``/``RuntimeError``; the methods raise
    the mapped hierarchy. Only f32 tables can insert and search (int8/bit raise
    InvalidArgument "not yet supported"). With cosine, vectors are
    L2-normalised before storing and before searching. Values are encoded per
    docs/api.md §3.

    Distances: cosine = 1 - cosine similarity, L2 = Euclidean (not squared),
    L1 = sum of absolute differences; float32 precision.

    ``threads`` (keyword-only): scan threads per search; ``None`` or 0 =
    automatic (one thread for small tables, one per CPU from 8 MiB of
    vectors).

    ``unpickle`` (keyword-only): ``False`` is safe mode for files you do not
    trust (pickled values raise InvalidArgument when read, ``pickle.loads``
    never runs, and values that would need pickle are refused when
    written); ``None`` (default) follows ``KVAULT_UNPICKLE``, else ``True``.
    See docs/security.md.

    Opening a directory or a file that is not a database raises
    ``RuntimeError`` naming the path. A VectorKVault pickles as its path and
    constructor options and reopens the file when unpickled.

    Thread safety: calls on one instance are serialised by the native object;
    SQLite work and the k-NN scan run with the GIL released.
    """

    def __init__(self, path: Union[str, os.PathLike], table: str = "vec_kvault",
                 dimensions: int = 768, metric: str = "cosine", vector_type: str = "f32",
                 *, threads: Optional[int] = None, unpickle: Optional[bool] = None):
        m = _METRICS.get(str(metric).lower())
        if m is None:
            raise ValueError(
                f"Unknown metric '{metric}'. Supported: cosine, l2/euclidean, l1/manhattan, hamming")
        t = _TYPES.get(str(vector_type).lower())
        if t is None:
            raise ValueError(f"Unknown vector type: {vector_type}. Supported: f32, int8, bit")
        if t not in _COMPATIBLE[m]:
            raise ValueError(f"Metric '{metric}' is not compatible with vector type '{vector_type}'")
        if t == "bit" and dimensions % 8 != 0:
            raise ValueError(f"Bit vectors require dimensions divisible by 8, got {dimensions}")
        self._threads = threads
        self._vault = self._open_native(_VectorKVault, path, unpickle, table, dimensions,
                                        metric, vector_type, threads=int(threads or 0))
        self.path = path
        self.table = table
        self.dimensions = dimensions
        self.metric = metric
        self.vector_type = vector_type

    def _reopen_args(self):
        return ((self.path, self.table, self.dimensions, self.metric, self.vector_type),
                {"threads": self._threads})

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _prepare_vector(vector: VectorInput):
        """§8.2: ndarray (non-float dtypes cast to float32), list, or bytes
        (float32 LE); anything else, including tuples, → TypeError."""
        if isinstance(vector, np.ndarray):
            if not np.issubdtype(vector.dtype, np.floating):
                vector = vector.astype(np.float32)
            if vector.ndim != 1:
                # only 1-D input is a vector (docs/api.md §8.2): nested
                # lists (or a scalar for 0-d) are rejected
                raise TypeError(f"vector must be 1-D, got an array of shape {vector.shape}")
            return np.ascontiguousarray(vector, dtype=np.float32)
        if isinstance(vector, list):
            return vector
        if isinstance(vector, bytes):
            return np.frombuffer(vector, dtype=np.float32, count=len(vector) // 4)
        raise TypeError(f"Vector must be numpy array, list, or bytes, got {type(vector)}")

    def _prepare_rows(self, vectors) -> np.ndarray:
        """A batch of vectors → C-contiguous float32 array of shape (n, d):
        a 2-D array (any numeric dtype; a C-contiguous float32 one is passed
        on without a copy), a list of vectors (arrays or lists of numbers,
        each of ``dimensions`` values: "Expected N dimensions, got M" names
        the first that is not), or an empty list."""
        if isinstance(vectors, np.ndarray):
            if vectors.ndim != 2:
                raise TypeError(f"vectors must be 2-D, got an array of shape {vectors.shape}")
            return np.ascontiguousarray(vectors, dtype=np.float32)
        if isinstance(vectors, list):
            if not vectors:
                return np.zeros((0, 0), dtype=np.float32)
            rows = [np.asarray(v, dtype=np.float32) for v in vectors]
            for r in rows:
                if r.ndim != 1 or r.shape[0] != self.dimensions:
                    raise ValueError(f"Expected {self.dimensions} dimensions, got {r.size}")
            return np.stack(rows)
        raise TypeError(f"vectors must be a 2-D numpy array or a list of vectors, got {type(vectors)}")

    # ------------------------------------------------------------ methods

    @mapped
    def insert(self, vector: VectorInput, value: Any, metadata: Optional[Dict[str, Any]] = None) -> int:
        """Insert a vector and its value; returns the row id. ``metadata``
        (dict or None) is ignored. Raises InvalidArgument (bad vector, wrong
        dimensions "Expected N dimensions, got M", int8/bit tables),
        DatabaseBusy, KohakuVaultError."""
        return self._vault.insert(self._prepare_vector(vector), value, metadata)

    @mapped
    def insert_many(self, vectors, values) -> List[int]:
        """Insert ``n`` vectors (a 2-D array of shape (n, dimensions) or a
        list of vectors) with ``values`` (a sequence of ``n`` values) in one
        transaction; returns the ``n`` row ids, ascending. Same rules per row
        as :meth:`insert`; on error nothing is inserted."""
        rows = self._prepare_rows(vectors)
        values = list(values)
        if rows.shape[0] == 0 and not values:
            return []
        return self._vault.insert_many(rows, values)

    @mapped
    def search_many(self, queries, k: int = 10,
                    metric: Optional[str] = None) -> List[List[Tuple[int, float, Any]]]:
        """:meth:`search` for each row of ``queries`` (a 2-D array of shape
        (n, dimensions) or a list of vectors): a list of ``n`` result lists.
        All queries see one snapshot, and the stored vectors are read once
        for the whole batch (each block is scored against every query)."""
        rows = self._prepare_rows(queries)
        if rows.shape[0] == 0:
            return []
        return self._vault.search_many(rows, k, metric)

    @mapped
    def search(self, query_vector: VectorInput, k: int = 10,
               metric: Optional[str] = None) -> List[Tuple[int, float, Any]]:
        """The ``k`` nearest rows as ``[(id, distance, value)]``, ascending
        distance. ``metric`` is validated only; the table's metric is used.
        ``k`` > 4096 → InvalidArgument; an empty table → ``[]``."""
        return self._vault.search(self._prepare_vector(query_vector), k, metric)

    @mapped
    def get(self, query_vector: VectorInput, metric: Optional[str] = None) -> Any:
        """Value of the nearest row; empty table →
        KohakuVaultError("No vectors found in database")."""
        return self._vault.get(self._prepare_vector(query_vector), metric)

    @mapped
    def get_by_id(self, id: int) -> Tuple[np.ndarray, Any]:
        """``(vector, value)``: the stored float32 vector (unit length with
        cosine) as a read-only 1-D array; missing →
        KohakuVaultError("ID <id> not found")."""
        vector_bytes, value = self._vault.get_by_id(id)
        return np.frombuffer(vector_bytes, dtype=np.float32), value

    @mapped
    def update(self, id: int, vector: Optional[VectorInput] = None, value: Any = None) -> None:
        """Replace the vector (unknown id: no-op) and/or the value (unknown
        id → NotFound). Both ``None`` → InvalidArgument."""
        if vector is None and value is None:
            raise ValueError("Must provide either vector or value to update")
        vec = None if vector is None else self._prepare_vector(vector)
        self._vault.update(id, vec, value)

    @mapped
    def info(self) -> Dict[str, Any]:
        """``{table, dimensions, metric, vector_type, count}`` with normalised
        spellings (metric ``cosine``/``L2``/``L1``/``hamming``, vector_type
        ``float32``/``int8``/``bit``)."""
        d = self._vault.info()
        return {"table": self.table, "dimensions": d["dimensions"], "metric": d["metric"],
                "vector_type": d["vector_type"], "count": d["count"]}

    # ------------------------------------------------------------ protocol

    def _key_error(self, query: VectorInput) -> KeyError:
        """``vkv[query]`` on a miss raises ``KeyError("No vectors found in database")``."""
        return KeyError("No vectors found in database")

    _repr_name = "VectorKVault"

    def _repr_fields(self) -> str:
        return (f"dimensions={self.dimensions}, metric={self.metric!r}, "
                f"vector_type={self.vector_type!r}")
