"""Safe mode (``unpickle=False``) and pickling of the stores (docs/security.md).

Safe mode: a value stored with the pickle encoding (docs/api.md §3.1, id
0x01) runs code when it is read, so a file from an untrusted source can run
code in the reader. ``KVault``, ``TextVault`` and ``VectorKVault`` take a
keyword-only ``unpickle`` argument; with it off the native object refuses to
decode a pickled value (``pickle.loads`` is never called) and refuses to write
one, so a safe-mode process never creates a value it could not read back.
The environment variable ``KVAULT_UNPICKLE`` sets the default for every
store of the process; an explicit argument wins.

Pickling: a store pickles as its path and constructor options (plus the
per-instance auto-pack and header switches) and reopens the file in the
receiving process, e.g. a ``multiprocessing`` worker started with
``spawn``. What lives only in memory is not carried: pending writes are
flushed first, or pickling is refused with a clear message.
"""

from __future__ import annotations

import os
from typing import Any, Callable

__all__ = ["unpickle_setting", "apply_safe_mode", "check_picklable", "switch_state",
           "restore_switches", "reopen"]

# KVAULT_UNPICKLE spellings (case-insensitive).
_OFF = ("0", "false", "no", "off")
_ON = ("1", "true", "yes", "on")


def unpickle_setting(unpickle: Any, exc_type: type) -> bool:
    """Whether pickled values may be read and written.

    ``unpickle`` ``True``/``False`` wins; ``None`` (the default of every
    constructor) means ``KVAULT_UNPICKLE`` if set (``0``/``false``/``no``/
    ``off`` or ``1``/``true``/``yes``/``on``), else ``True``. Anything else
    raises ``exc_type`` naming the valid values (``InvalidArgument`` for
    KVault, ``ValueError`` for the constructors documented as raising raw
    builtins).
    """
    if unpickle is None:
        env = os.environ.get("KVAULT_UNPICKLE")
        if env is None or env.strip() == "":
            return True
        low = env.strip().lower()
        if low in _OFF:
            return False
        if low in _ON:
            return True
        raise exc_type(
            f"KVAULT_UNPICKLE must be one of {', '.join(_OFF + _ON)}, got {env!r}")
    if isinstance(unpickle, bool):
        return unpickle
    raise exc_type(f"unpickle must be True, False or None, got {type(unpickle).__name__}")


def apply_safe_mode(native: Any, unpickle: bool) -> None:
    """Put ``native`` (a ``_KVault``/``_TextVault``/``_VectorKVault``) in safe
    mode when ``unpickle`` is false. One way: nothing turns it back on."""
    if not unpickle:
        native._refuse_pickle()


def check_picklable(kind: str, path: str, closed: bool) -> None:
    """Refuse to pickle what cannot be reopened elsewhere: a closed store
    (``ValueError``) or one on ``":memory:"`` / a ``file:`` URI naming no
    file the receiver can open (``TypeError``, as for any unpicklable
    object)."""
    if closed:
        raise ValueError(f"cannot pickle a closed {kind}: it has nothing to reopen")
    if path == ":memory:" or (path.startswith("file:") and "mode=memory" in path):
        raise TypeError(
            f"cannot pickle a {kind} on an in-memory database ({path!r}): the receiving "
            "process would open a different, empty database; use a file path")


def switch_state(store: Any) -> tuple[bool, bool]:
    """``(auto_pack_enabled, headers_enabled)`` of a store (docs/api.md §3.6)."""
    return bool(store.auto_pack_enabled()), bool(store.headers_enabled())


def restore_switches(store: Any, switches: tuple[bool, bool]) -> Any:
    """Apply the switches a pickled store carried; both start on, so only an
    off switch needs a call (no feature rows are written). Returns ``store``."""
    auto_pack, headers = switches
    if not auto_pack:
        store.disable_auto_pack()
    if not headers:
        store.disable_headers()
    return store


def reopen(factory: Callable[..., Any], args: tuple, kwargs: dict,
           switches: tuple[bool, bool]) -> Any:
    """Unpickling entry point: ``factory(*args, **kwargs)`` with the
    switches restored (``__reduce__`` of every store returns this)."""
    return restore_switches(factory(*args, **kwargs), switches)
