"""fork() safety of what the proxies keep in Python (docs/shared-mode.md,
"Failure behaviour").

The native objects make themselves safe to use in a forked child
(python/ext/forksafe.c: a held lock is replaced, the first call opens the
child's own SQLite connection). A proxy may also keep a ``threading`` lock,
which another thread of the parent may hold at the fork, and a flush daemon
thread, which does not exist in the child. One
``os.register_at_fork(after_in_child=...)`` handler calls
``_after_fork_in_child()`` of every tracked proxy in the child, which renews
them (a new lock; the daemon started again with the same interval).
"""

from __future__ import annotations

import functools
import os
import weakref

# id(proxy) -> weak reference (proxies may be unhashable: KVault is a Mapping)
_tracked: "dict[int, weakref.ref]" = {}


def _forget(key: int, ref: "weakref.ref") -> None:
    if _tracked.get(key) is ref:
        del _tracked[key]


def track(proxy: object) -> None:
    """Have ``proxy._after_fork_in_child()`` called in every forked child
    while ``proxy`` lives (held weakly; tracking twice is harmless)."""
    r = _tracked.get(id(proxy))
    if r is None or r() is not proxy:
        _tracked[id(proxy)] = weakref.ref(proxy, functools.partial(_forget, id(proxy)))


def _after_in_child() -> None:
    for ref in list(_tracked.values()):
        proxy = ref()
        if proxy is None:
            continue
        try:
            proxy._after_fork_in_child()
        except Exception:  # noqa: BLE001 - the proxy still works without a daemon
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_in_child)
