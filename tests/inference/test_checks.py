"""Data checks: every kind of bad window or book is named, and good data passes."""

from __future__ import annotations

from decimal import Decimal

import pytest

from inference.checks import bars_to_array, check_book, check_window
from streaming.klines import Bar
from streaming.store import BookStatus

M = 60_000
T0 = 1_750_000_000_000 - 1_750_000_000_000 % (60 * M)


def bars(n: int, start: int = T0, step: int = M, **override: str) -> list[Bar]:
    out = []
    for i in range(n):
        values = {"open": "100", "high": "101", "low": "99", "close": "100.5", "volume": "3"} | override
        out.append(
            Bar(start + i * step, *(Decimal(values[k]) for k in ("open", "high", "low", "close", "volume")), Decimal(0))
        )
    return out


NOW = T0 + 30 * M + 5_000  # 5 s into the 31st minute: the last closed 1m bar started at T0 + 29 M


def test_a_good_window_passes() -> None:
    assert check_window(bars(30), "1", 30, NOW) is None
    assert check_window(bars(40, start=T0 - 10 * M), "1", 30, NOW) is None  # only the newest 30 matter


@pytest.mark.parametrize(
    ("window", "reason"),
    [
        ([], "empty_window"),
        (bars(10, start=T0 + 20 * M), "short_window"),
        (bars(15, start=T0 - M) + bars(15, start=T0 + 15 * M), "holed_window"),  # T0 + 14 M missing
        (bars(30, start=T0 - M), "stale_window"),  # newest is T0 + 28 M: the close of T0 + 29 M is missing
        (bars(31), "future_bar"),
        (bars(30, close="0"), "bad_values"),
        (bars(30, close="NaN"), "bad_values"),
        (bars(30, volume="-1"), "bad_values"),
        (bars(30, high="99.5"), "bad_values"),  # close above high
    ],
)
def test_bad_windows_are_named(window: list[Bar], reason: str) -> None:
    need = 30 if reason != "short_window" else 20
    assert check_window(window, "1", need, NOW) == reason


def test_zero_volume_bars_are_servable() -> None:
    assert check_window(bars(30, volume="0"), "1", 30, NOW) is None


def test_hourly_window_judged_on_the_hour() -> None:
    hourly = bars(5, start=T0 - 5 * 60 * M, step=60 * M)  # newest hour started T0 - 60 M, closed at T0
    assert check_window(hourly, "60", 5, T0 + 59 * M) is None
    assert check_window(hourly, "60", 5, T0 + 61 * M) == "stale_window"


def test_book_checks() -> None:
    ready = BookStatus("READY", "", 10, NOW - 1_000, "100", "1", "100.1", "1")
    assert check_book(ready, NOW, 5_000) is None
    assert check_book(None, NOW, 5_000) == "no_book"
    assert check_book(BookStatus("INVALID", "u gap", 10, NOW, ""), NOW, 5_000) == "book_not_ready"
    assert check_book(ready, NOW + 10_000, 5_000) == "book_stale"


def test_bars_to_array() -> None:
    arr = bars_to_array(bars(2))
    assert arr.shape == (2, 5)
    assert arr[0].tolist() == [100.0, 101.0, 99.0, 100.5, 3.0]
    assert bars_to_array([]).shape == (0, 5)
