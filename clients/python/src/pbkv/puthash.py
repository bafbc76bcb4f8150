"""The value PutHash stores (README.md, "Calls")."""

from __future__ import annotations

_OFFSET_BASIS = 2166136261
_PRIME = 16777619


def fnv1a32(data: bytes) -> int:
    """32-bit FNV-1a of `data`: xor then multiply, per byte."""
    h = _OFFSET_BASIS
    for byte in data:
        h = ((h ^ byte) * _PRIME) & 0xFFFFFFFF
    return h


def put_hash_value(previous: str, value: str) -> str:
    """What `put_hash(key, value)` stores when the key held `previous` ("" if absent)."""
    return str(fnv1a32(previous.encode("utf-8") + value.encode("utf-8")))
