"""Where the native programs of this installation are: ``kvault-writer``
(the shared-mode writer) and ``kvault-reader`` (the RESP reader).

Used by ``KVault(shared="spawn")``, the launcher (``kvault-launch``,
launch.py), the demo, the test suite and the benchmarks. Standard library
only: the launcher of a checkout loads this file without the compiled
extension."""

import glob
import os
import shutil
import sys
from typing import Optional

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def packaged_binary(name: str) -> str:
    """Path of ``name`` as pip installs it with the package
    (``kohakuvault/bin/<name>``); it may not exist (a build tree's copy of
    the package has none)."""
    return os.path.join(PACKAGE_DIR, "bin", name)


def native_binary(name: str, source_root: Optional[str] = None,
                  search_path: bool = True) -> Optional[str]:
    """Path of the native program ``name`` (``kvault-writer``,
    ``kvault-reader``), or ``None`` when none is found.

    Order: the build tree this package was imported from
    (``build/<name>/python/kohakuvault`` -> ``build/<name>/workers/<name>``);
    then, when ``source_root`` (a checkout) is given, its ``build/release``
    (what ``scripts/build`` builds), else its most recently built
    ``build/*``; then the copy installed with the package
    (``kohakuvault/bin/``); then ``PATH`` (unless ``search_path`` is false:
    the ``kvault-writer`` console script on PATH runs this lookup itself).
    """
    rel = os.path.join("workers", name)
    cands = [os.path.join(PACKAGE_DIR, "..", "..", rel)]
    if source_root:
        cands.append(os.path.join(source_root, "build", "release", rel))
    for cand in cands:
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return os.path.normpath(cand)
    if source_root:
        built = sorted(glob.glob(os.path.join(source_root, "build", "*", rel)),
                       key=os.path.getmtime, reverse=True)
        if built:
            return built[0]
    cand = packaged_binary(name)
    if os.path.isfile(cand) and os.access(cand, os.X_OK):
        return cand
    return shutil.which(name) if search_path else None


def writer_binary(source_root: Optional[str] = None) -> Optional[str]:
    """Path of the writer to start, or ``None`` when none is found:
    ``$KVAULT_WRITER``, else :func:`native_binary` ``("kvault-writer",
    source_root)``."""
    env = os.environ.get("KVAULT_WRITER")
    if env:
        return env
    return native_binary("kvault-writer", source_root)


def _exec(name: str) -> None:
    """Replace this process with the packaged ``name``, passing the command
    line on (the console scripts ``kvault-writer`` and ``kvault-reader``)."""
    path = native_binary(name, search_path=False)
    if path is None:
        sys.exit(f"{name}: the native program is not installed with this package "
                 f"(expected {packaged_binary(name)})")
    os.execv(path, [path] + sys.argv[1:])


def writer_main() -> None:
    """Console script ``kvault-writer``: runs the packaged native writer."""
    _exec("kvault-writer")


def reader_main() -> None:
    """Console script ``kvault-reader``: runs the packaged native reader."""
    _exec("kvault-reader")
