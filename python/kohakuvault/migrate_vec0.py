"""``python -m kohakuvault.migrate_vec0 PATH [TABLE]``: convert a sqlite-vec
``vec0`` table (docs/vectors.md) to this project's vector layout, in
place (see :func:`kohakuvault.migrate_vec0`, implemented in ``_vec0``).

Importing this module binds the package attribute ``migrate_vec0`` to the
module (Python's import system does that for every submodule), so the
module is callable like the function it stands for.
"""

import sys
import types

from ._vec0 import main, migrate_vec0

__all__ = ["migrate_vec0", "main"]


class _CallableModule(types.ModuleType):
    def __call__(self, path, table="vec_kvault"):
        """Same as :func:`kohakuvault.migrate_vec0`."""
        return migrate_vec0(path, table)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
