"""Exception hierarchy of kohakuvault and the native-error mapping.

The native module ``kohakuvault._kvault`` raises builtin exceptions
(``RuntimeError``, ``ValueError``, ``TypeError``, ``OSError``); two outcomes
have native classes of their own, both ``RuntimeError`` subclasses:
``_kvault.KeyNotFoundError`` (a missing key or row) and ``_kvault.BusyError``
(SQLite stayed busy/locked). The Python proxies translate them with
:func:`map_exception` into the hierarchy below, deciding by class.
None of these classes subclasses ``KeyError``, ``ValueError``, ``TypeError``
or ``OSError``: code that wants the builtin kinds gets them only where the
API documents a builtin (``kv[k]`` raising ``KeyError`` and so on).
"""

from __future__ import annotations

import os

from . import _kvault

__all__ = [
    "KohakuVaultError",
    "NotFound",
    "DatabaseBusy",
    "InvalidArgument",
    "IoError",
    "map_exception",
]

# SQLite's texts for a path that exists but is no SQLite database, and for a
# path it cannot open at all.
_NOT_A_DB = "file is not a database"
_CANNOT_OPEN = "unable to open database file"


class KohakuVaultError(Exception):
    """Base class of every error kohakuvault raises on its own account."""


class NotFound(KohakuVaultError):
    """A key (or a column name) does not exist.

    Args:
        key: the missing key as ``bytes`` or ``str``; kept on ``.key``.
        detail: keyword-only; what was looked up where (e.g. ``"column
            'x' not found in db.sqlite"``), appended in parentheses.

    The message is ``"Key not found: {key!r}"``, followed by `` (detail)``
    when ``detail`` is given.
    """

    def __init__(self, key, *, detail: str | None = None):
        self.key = key
        msg = f"Key not found: {key!r}"
        super().__init__(f"{msg} ({detail})" if detail else msg)


class DatabaseBusy(KohakuVaultError):
    """SQLite stayed busy/locked after its busy timeout (and after the
    proxy's retries, for KVault).

    Args:
        message: the error text; default ``"database is busy/locked"``.
    """

    def __init__(self, message: str = "database is busy/locked"):
        super().__init__(message)


class InvalidArgument(KohakuVaultError):
    """An argument has the wrong type or value (mapped from the native
    layer's ``TypeError``/``ValueError``)."""


class IoError(KohakuVaultError):
    """An operating-system error happened during I/O.

    Args:
        message: what was being done.
        cause: the underlying exception, or ``None``. When given, the
            message becomes ``"{message}: {cause}"`` and ``__cause__`` is set
            to ``cause``.
    """

    def __init__(self, message: str, cause: BaseException | None = None):
        if cause is not None:
            super().__init__(f"{message}: {cause}")
            self.__cause__ = cause
        else:
            super().__init__(message)
        self.cause = cause


def map_exception(exc: BaseException, *, key=None) -> KohakuVaultError:
    """Translate an exception raised by the native layer into the
    kohakuvault hierarchy.

    Rules, the first that matches wins:

    0. the native classes: ``_kvault.KeyNotFoundError`` → ``NotFound(key)``,
       ``_kvault.BusyError`` → ``DatabaseBusy(text)`` (every error the native
       layer raises for these outcomes is one of them; rules 2 and 3 keep the
       documented behaviour for ``RuntimeError``s raised elsewhere);
    1. already a :class:`KohakuVaultError` → returned unchanged;
    2. ``RuntimeError`` whose lower-cased text contains ``"key not found"``
       or ``"query returned no rows"`` → ``NotFound(key)`` (``key`` if given,
       else ``b"<unknown>"``);
    3. ``RuntimeError`` whose lower-cased text contains ``"busy"`` or
       ``"locked"`` → ``DatabaseBusy(text)``;
    4. any other ``RuntimeError`` → ``KohakuVaultError(text)``;
    5. ``TypeError`` or ``ValueError`` → ``InvalidArgument(text)``;
    6. ``OSError`` → ``IoError("OS error during I/O", exc)``;
    7. anything else (``KeyError`` included) → ``KohakuVaultError(str(exc))``.

    Args:
        exc: the exception to translate (not raised by this function).
        key: the key involved in the call, used for :class:`NotFound`.

    Returns:
        A new (or, rule 1, the same) :class:`KohakuVaultError` instance; the
        caller raises it, normally ``raise map_exception(e, key=k) from e``.
    """
    if isinstance(exc, _kvault.KeyNotFoundError):
        return NotFound(key if key is not None else b"<unknown>")
    if isinstance(exc, _kvault.BusyError):
        return DatabaseBusy(str(exc))
    if isinstance(exc, KohakuVaultError):
        return exc
    if isinstance(exc, RuntimeError):
        text = str(exc)
        low = text.lower()
        if "key not found" in low or "query returned no rows" in low:
            return NotFound(key if key is not None else b"<unknown>")
        if "busy" in low or "locked" in low:
            return DatabaseBusy(text)
        return KohakuVaultError(text)
    if isinstance(exc, (TypeError, ValueError)):
        return InvalidArgument(str(exc))
    if isinstance(exc, OSError):
        return IoError("OS error during I/O", exc)
    return KohakuVaultError(str(exc))


def _plain_path(path: str) -> bool:
    """Whether ``path`` names a file (not ``":memory:"``, a ``file:`` URI or "")."""
    return bool(path) and path != ":memory:" and not path.startswith("file:")


def open_check(path: str, exc_type: type) -> None:
    """Raise ``exc_type("<path> is a directory, not a database file")`` when
    ``path`` names a directory; every store calls it before opening, so all
    of them say the same thing (each with its documented exception class:
    KVault ``KohakuVaultError``, the others ``RuntimeError``)."""
    if _plain_path(path) and os.path.isdir(path):
        raise exc_type(f"{path} is a directory, not a database file")


def open_failure_text(path: str, text: str) -> str | None:
    """A clearer text for an open failure SQLite described as ``text``:
    the path and what it means, or ``None`` when ``text`` is none of the
    open failures (busy, bad arguments: left as they are)."""
    if _NOT_A_DB in text:
        return (f"{path} is not a SQLite database file ({_NOT_A_DB}): "
                "it exists but holds something else; pass the path of a "
                "kohakuvault/SQLite file or of one to create")
    if _CANNOT_OPEN in text:
        return (f"cannot open {path} ({_CANNOT_OPEN}): check that its "
                "directory exists and is writable")
    return None


def map_call_exception(exc: BaseException, *, key=None) -> KohakuVaultError:
    """:func:`map_exception` for an exception raised by a proxy's call, with
    one refinement: an ``OverflowError`` (an ``int`` argument beyond what
    the native layer takes, e.g. ``2**63`` as a size, count or limit) is a
    bad argument value and becomes :class:`InvalidArgument` (rule 7 would
    give its base class, :class:`KohakuVaultError`). Not exported."""
    if isinstance(exc, OverflowError):
        return InvalidArgument(str(exc))
    return map_exception(exc, key=key)
