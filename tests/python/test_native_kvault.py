"""The native ``_kvault._KVault``: one type over the embedded and attached
backends (python/ext/kv_backend.h), its defaults table and the methods
whose meaning depends on the backend. Runs in both passes: in the
spawned-shared one (``KVAULT_SHARED=spawn``) the vaults on ``db_path`` are attached."""

import inspect

import pytest

from kohakuvault import KVault, _kvault


def _defaults_of(fn):
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_kvault_signature_defaults_come_from_kv_defaults():
    d = _kvault.KV_DEFAULTS
    init = _defaults_of(KVault.__init__)
    for name in ("chunk_size", "retries", "backoff_base", "table", "enable_wal", "page_size",
                 "mmap_size", "cache_kb", "read_cache_bytes"):
        assert init[name] == d[name], name
    assert init["chunk_size"] == 1048576 and init["page_size"] == 32768
    assert init["retries"] == 4 and init["backoff_base"] == 0.02
    cache = _defaults_of(KVault.enable_cache)
    assert (cache["cap_bytes"], cache["flush_threshold"]) == (
        d["cache_cap_bytes"], d["cache_flush_threshold"]) == (67108864, 16777216)
    assert _defaults_of(KVault.keys)["limit"] == d["keys_limit"] == 10000


def test_kv_defaults_is_read_only():
    with pytest.raises(TypeError):
        _kvault.KV_DEFAULTS["chunk_size"] = 1


def test_native_defaults_match_kv_defaults(tmp_path):
    nat = _kvault._KVault(str(tmp_path / "d.db"))
    try:
        assert nat.table == _kvault.KV_DEFAULTS["table"]
        assert not nat.attached and nat.generation is None
    finally:
        nat.close()
    assert nat.closed


def test_backend_specific_methods(kv):
    nat = kv._native
    assert nat.attached == kv.shared
    if kv.shared:
        assert nat.generation > 0
        assert "=" in nat.status()
        assert len(nat.counters()) == 3
    else:
        assert nat.generation is None
        with pytest.raises(RuntimeError, match="status"):
            nat.status()
        with pytest.raises(RuntimeError, match="counters"):
            nat.counters()


def test_attach_without_writer_fails_with_attach_message(tmp_path):
    with pytest.raises(RuntimeError, match="^attach: "):
        _kvault._KVault(str(tmp_path / "nobody.db"), attach=True)


def test_put_sync_reaches_sqlite_through_the_cache(kv, db_path, raw_row):
    kv.enable_cache(cap_bytes=1 << 20, flush_threshold=1 << 19)
    kv.put(b"plain", b"cached")
    if not kv.shared:
        assert raw_row(db_path, b"plain") is None  # still in the write-back cache
    kv.put(b"synced", b"committed", sync=True)
    assert raw_row(db_path, b"synced") == b"committed"
    assert raw_row(db_path, b"plain") == b"cached"   # the flush wrote it too
    kv._native.sync()
    assert kv[b"synced"] == b"committed"


def test_closed_native_refuses_calls(tmp_path):
    nat = _kvault._KVault(str(tmp_path / "c.db"))
    nat.put(b"k", b"v")
    nat.close()
    nat.close()
    for call in (lambda: nat.get(b"k"), lambda: nat.put(b"k", b"v", sync=True), nat.sync,
                 nat.count, lambda: nat.exists(b"k"), lambda: nat.delete(b"k")):
        with pytest.raises(ValueError, match="Cannot operate on closed KVault"):
            call()
