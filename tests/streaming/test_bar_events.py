"""The bar-closed event codec: stream fields round-trip, and bad fields fail with a named error."""

from __future__ import annotations

import pytest

from streaming.bar_events import BarEventError, decode_bar_event, encode_bar_event
from streaming.store import BarEvent


def test_round_trip_through_redis_bytes() -> None:
    event = BarEvent("BTCUSDT", "5", 1_750_000_200_000)
    fields = encode_bar_event(event)
    assert fields == {"symbol": "BTCUSDT", "interval": "5", "start": "1750000200000"}
    assert decode_bar_event({k.encode(): v.encode() for k, v in fields.items()}) == event
    assert decode_bar_event(fields) == event


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({b"symbol": b"BTCUSDT", b"interval": b"1"}, "lacks start"),
        ({b"foo": b"bar"}, "lacks symbol, interval, start"),
        ({b"symbol": b"BTCUSDT", b"interval": b"1", b"start": b"soon"}, "start must be an integer"),
    ],
)
def test_bad_fields_raise_bar_event_error(fields: dict[bytes, bytes], error: str) -> None:
    with pytest.raises(BarEventError, match=error):
        decode_bar_event(fields)
    assert issubclass(BarEventError, ValueError)
