"""Compact stored JSON: the audit stream's signals and the track record's scores are kept zlib-compressed.

They are most of a symbol's memory in Redis (``candlecast bench capacity``) and are read only for
history, scoring and the track record summaries; what is served byte for byte (the latest signal, the
pub/sub message) stays the JSON as written.
"""

from __future__ import annotations

import zlib

__all__ = ["pack", "unpack"]

MAX_JSON_BYTES = 1 << 20  # a stored entry inflating past this is not one of ours


def pack(document: bytes) -> bytes:
    """A JSON document as stored: zlib-compressed."""
    return zlib.compress(document, 6)


def unpack(stored: bytes) -> bytes:
    """The JSON of a stored entry: inflated, or as it is when it was stored plain (a JSON object, as
    entries written before compression are). Raises ``ValueError`` for anything else; the inflate is
    bounded, so no entry can make it allocate more than :data:`MAX_JSON_BYTES`."""
    if stored[:1] == b"{":
        return stored
    inflater = zlib.decompressobj()
    try:
        document = inflater.decompress(stored, MAX_JSON_BYTES)
    except zlib.error as exc:
        raise ValueError(f"not a compressed document: {exc}") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise ValueError("not a compressed document: truncated, or larger than any of ours")
    return document
