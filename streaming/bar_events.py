"""The bar-closed event codec: :class:`~streaming.store.BarEvent` to stream fields and back.

One entry of ``P:events:bars`` is ``{"symbol": "BTCUSDT", "interval": "1", "start": "1750000000000"}``
(Redis returns the fields as bytes). Writers call :func:`encode_bar_event`; readers (the worker, the
API's freshness check) call :func:`decode_bar_event`, which returns a frozen ``BarEvent`` or raises
:class:`BarEventError` naming what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping

from streaming.errors import StreamingError
from streaming.redis_boundary import text
from streaming.store import BarEvent

__all__ = ["BarEventError", "decode_bar_event", "encode_bar_event"]

_FIELDS = ("symbol", "interval", "start")


class BarEventError(StreamingError, ValueError):
    """Stream fields that are not a bar-closed event."""


def encode_bar_event(event: BarEvent) -> dict[str, str]:
    """The stream fields of ``event``."""
    return {"symbol": event.symbol, "interval": event.interval, "start": str(event.start)}


def decode_bar_event(fields: Mapping[bytes, bytes] | Mapping[str, str] | Mapping[bytes | str, bytes | str]) -> BarEvent:
    """A ``BarEvent`` from stream fields (bytes or str); :class:`BarEventError` when one is missing
    or ``start`` is not an integer."""
    f = {text(k): text(v) for k, v in fields.items()}
    missing = [name for name in _FIELDS if name not in f]
    if missing:
        raise BarEventError(f"bar event lacks {', '.join(missing)}: {f!r}")
    try:
        start = int(f["start"])
    except ValueError:
        raise BarEventError(f"bar event start must be an integer, got {f['start']!r}") from None
    return BarEvent(f["symbol"], f["interval"], start)
