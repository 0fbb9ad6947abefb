"""Where the ``kvault-writer`` binary of this installation is.

Used by the demo, the test suite and the benchmarks, which start writers
themselves (``scripts/kvault-launch`` has its own lookup: it runs without
importing the package)."""

import glob
import os
from typing import Optional

_NAME = os.path.join("workers", "kvault-writer")


def writer_binary(source_root: Optional[str] = None) -> Optional[str]:
    """Path of the writer to start, or ``None`` when none is found.

    Order: ``$KVAULT_WRITER``; the writer of the build tree this package was
    imported from (``build/<name>/python/kohakuvault`` -> ``build/<name>/``
    ``workers/kvault-writer``); then, when ``source_root`` (a checkout) is
    given, its ``build/release`` (what ``scripts/build`` installs from), else
    its most recently built ``build/*``.
    """
    env = os.environ.get("KVAULT_WRITER")
    if env:
        return env
    pkg = os.path.dirname(os.path.abspath(__file__))
    cands = [os.path.join(pkg, "..", "..", _NAME)]
    if source_root:
        cands.append(os.path.join(source_root, "build", "release", _NAME))
    for cand in cands:
        if os.access(cand, os.X_OK):
            return os.path.normpath(cand)
    if source_root:
        built = sorted(glob.glob(os.path.join(source_root, "build", "*", _NAME)),
                       key=os.path.getmtime, reverse=True)
        if built:
            return built[0]
    return None
