"""kohakuvault: a one-file SQLite datastore with a C engine.

Keys and blobs (:class:`KVault`), typed columns (:class:`ColumnVault`),
full-text search (:class:`TextVault`) and vectors (:class:`VectorKVault`) in
one ``.db`` file, plus in-memory ordered maps (:class:`CSBTree`,
:class:`SkipList`) and the :class:`DataPacker` serializer.
"""

import importlib as _importlib

import numpy as _numpy  # noqa: F401  (importing kohakuvault imports numpy, docs/api.md §1.1)

from . import _kvault
from .errors import DatabaseBusy, InvalidArgument, IoError, KohakuVaultError, NotFound
from .proxy import KVault
from .wrappers import Cbor, Json, MsgPack, Pickle

__version__ = "0.1.0"


def _optional(module: str):
    """Import a sibling proxy module; ``None`` only if the module file does
    not exist in this build (any error inside it propagates)."""
    try:
        return _importlib.import_module(f"{__name__}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{module}":
            return None
        raise


_exports = {
    "KVault": KVault,
    "MsgPack": MsgPack,
    "Json": Json,
    "Cbor": Cbor,
    "Pickle": Pickle,
    "KohakuVaultError": KohakuVaultError,
    "NotFound": NotFound,
    "DatabaseBusy": DatabaseBusy,
    "InvalidArgument": InvalidArgument,
    "IoError": IoError,
}

for _mod, _names in (
    ("vector_proxy", ("VectorKVault",)),
    ("text_proxy", ("TextVault",)),
    ("column_proxy", ("Column", "ColumnVault", "VarSizeColumn")),
):
    _m = _optional(_mod)
    if _m is not None:
        for _name in _names:
            _exports[_name] = getattr(_m, _name)

for _name in ("DataPacker", "CSBTree", "SkipList"):
    if hasattr(_kvault, _name):
        _exports[_name] = getattr(_kvault, _name)

_CSBTREE_AVAILABLE = "CSBTree" in _exports
_DATAPACKER_AVAILABLE = "DataPacker" in _exports
_exports["_CSBTREE_AVAILABLE"] = _CSBTREE_AVAILABLE
_exports["_DATAPACKER_AVAILABLE"] = _DATAPACKER_AVAILABLE

# docs/api.md §1.1, exact order; names whose implementation is absent are left out.
_ORDER = (
    "KVault", "VectorKVault", "TextVault", "Column", "ColumnVault", "VarSizeColumn",
    "DataPacker", "CSBTree", "SkipList", "MsgPack", "Json", "Cbor", "Pickle",
    "KohakuVaultError", "NotFound", "DatabaseBusy", "InvalidArgument", "IoError",
    "_CSBTREE_AVAILABLE", "_DATAPACKER_AVAILABLE",
)
globals().update(_exports)
__all__ = [n for n in _ORDER if n in _exports]

del _mod, _names, _m, _name, _exports, _ORDER

# Converter of sqlite-vec vec0 tables (docs/vectors.md, docs/api.md §8.4).
# A package attribute, not in __all__ (whose content is fixed above).
from ._vec0 import migrate_vec0  # noqa: E402
