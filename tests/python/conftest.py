"""Shared pytest fixtures: temporary database files and open vaults.

Every fixture works on real SQLite files under pytest's ``tmp_path``;
nothing is mocked. Vaults opened by a fixture are closed afterwards.
"""

import sqlite3

import pytest

from kohakuvault import KVault


@pytest.fixture
def db_path(tmp_path):
    """Path (``str``) of a database file that does not exist yet."""
    return str(tmp_path / "test.db")


@pytest.fixture
def kv(db_path):
    """A fresh ``KVault`` on ``db_path`` with default options."""
    vault = KVault(db_path)
    yield vault
    vault.close()


@pytest.fixture
def raw_row():
    """``raw_row(path, key, table="kv")``: the stored value of ``key`` read
    with the stdlib ``sqlite3`` module (``None`` when absent), bypassing
    kohakuvault entirely. ``str`` keys are looked up as their UTF-8 BLOB."""

    def read(path, key, table="kv"):
        if isinstance(key, str):
            key = key.encode("utf-8")
        con = sqlite3.connect(path)
        try:
            row = con.execute(f"SELECT value FROM {table} WHERE key = ?", (key,)).fetchone()
        finally:
            con.close()
        return None if row is None else bytes(row[0])

    return read


@pytest.fixture
def raw_put():
    """``raw_put(path, key, value, table="kv")``: upsert a row with the
    stdlib ``sqlite3`` module (keys bound as BLOBs, like kohakuvault)."""

    def write(path, key, value, table="kv"):
        if isinstance(key, str):
            key = key.encode("utf-8")
        con = sqlite3.connect(path, timeout=10)
        try:
            with con:
                con.execute(
                    f"INSERT OR REPLACE INTO {table}(key, value) VALUES (?, ?)", (key, value)
                )
        finally:
            con.close()

    return write
