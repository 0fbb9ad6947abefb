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

import os
import weakref

_tracked: "weakref.WeakSet[object]" = weakref.WeakSet()


def track(proxy: object) -> None:
    """Have ``proxy._after_fork_in_child()`` called in every forked child
    while ``proxy`` lives (held weakly; tracking twice is harmless)."""
    _tracked.add(proxy)


def _after_in_child() -> None:
    for proxy in list(_tracked):
        try:
            proxy._after_fork_in_child()
        except Exception:  # noqa: BLE001 - the proxy still works without a daemon
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_in_child)
