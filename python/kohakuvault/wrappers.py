"""Encoding wrappers: ask auto-pack for one specific encoding.

Wrap a value to choose how :class:`kohakuvault.KVault` (and TextVault,
VectorKVault) encode it instead of the automatic rules::

    kv["a"] = MsgPack({"x": 1})     # MessagePack, header id 0x04
    kv["b"] = Json([1, 2, 3])       # JSON, id 0x03
    kv["c"] = Cbor({"k": 1.5})      # CBOR, id 0x05
    kv["d"] = Pickle({1, 2})        # pickle, id 0x01

The encoder only looks at the two attributes ``data`` and ``encoding_name``
(any object with both is treated as a wrapper). Reading the key back returns
the decoded data, never the wrapper.
"""

from __future__ import annotations

__all__ = ["EncodingWrapper", "MsgPack", "Json", "Cbor", "Pickle"]


class EncodingWrapper:
    """A value paired with the name of the encoding to store it with.

    Args:
        data: the Python value to encode.
        encoding_name: ``"msgpack"``, ``"json"``, ``"cbor"`` or ``"pickle"``;
            any other name makes the encoder raise ``ValueError("Unknown
            encoding wrapper: ...")`` (``InvalidArgument`` through KVault).
    """

    def __init__(self, data, encoding_name: str):
        self.data = data
        self.encoding_name = encoding_name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.data!r})"


class MsgPack(EncodingWrapper):
    """Store ``data`` as MessagePack (header id 0x04). Encoding failure
    (bytes, numpy arrays, non-``str`` keys...) raises; no pickle fallback."""

    def __init__(self, data):
        super().__init__(data, "msgpack")


class Json(EncodingWrapper):
    """Store ``data`` as UTF-8 JSON text (``json.dumps`` defaults, id 0x03)."""

    def __init__(self, data):
        super().__init__(data, "json")


class Cbor(EncodingWrapper):
    """Store ``data`` as CBOR (id 0x05). Encoding failure raises."""

    def __init__(self, data):
        super().__init__(data, "cbor")


class Pickle(EncodingWrapper):
    """Store ``data`` with ``pickle.dumps`` (default protocol, id 0x01)."""

    def __init__(self, data):
        super().__init__(data, "pickle")
