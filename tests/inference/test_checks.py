"""Data checks: every kind of bad window or book is named, and good data passes."""

from __future__ import annotations

import itertools
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.checks import BarFacts, WindowCheck, bars_to_array, check_book, check_window
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


def _reference(window: list[Bar], need: int, now: int, step: int) -> str | None:
    """check_window's contract, spelled out bar by bar over the tail alone."""
    if len(window) < need:
        return "short_window" if window else "empty_window"
    tail = window[len(window) - need :]
    if any(b.start - a.start != step for a, b in itertools.pairwise(tail)):
        return "holed_window"
    expected = (now // step) * step - step
    if tail[-1].start != expected:
        return "stale_window" if tail[-1].start < expected else "future_bar"
    for b in tail:
        prices = (b.open, b.high, b.low, b.close)
        if not all(p.is_finite() and p > 0 for p in prices) or not (b.volume.is_finite() and b.volume >= 0):
            return "bad_values"
        if not b.low <= min(b.open, b.close) <= max(b.open, b.close) <= b.high:
            return "bad_values"
    return None


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 40),
    holes=st.sets(st.integers(0, 39), max_size=3),
    bad=st.dictionaries(
        st.integers(0, 39), st.sampled_from(["close=0", "close=NaN", "volume=-1", "high=99.5"]), max_size=3
    ),
    shift=st.sampled_from([-1, 0, 1]),
    needs=st.lists(st.integers(1, 45), min_size=1, max_size=8),
)
def test_one_window_check_answers_every_need_as_the_contract_does(
    n: int, holes: set[int], bad: dict[int, str], shift: int, needs: list[int]
) -> None:
    """One WindowCheck asked for several needs, in any order, answers each as check_window's contract
    does for that need alone: its memory of faults found for one need never leaks into another."""
    window = []
    start = T0 + (30 - n + shift) * M - len(holes) * M
    for i in range(n):
        start += M * (2 if i in holes else 1)
        key, _, value = bad[i].partition("=") if i in bad else ("", "", "")
        window.append(bars(1, start=start, **({key: value} if key else {}))[0])
    if window:  # the newest bar lands on T0 + 29 M (+shift): stale, current or from the future
        offset = T0 + (29 + shift) * M - window[-1].start
        window = [b._replace(start=b.start + offset) for b in window]
    check = WindowCheck(window, "1", NOW)
    assert [check.reason(need) for need in needs] == [_reference(window, need, NOW, M) for need in needs]


@settings(max_examples=200, deadline=None)
@given(
    changed=st.dictionaries(
        st.integers(0, 29), st.sampled_from(["close=0", "close=NaN", "volume=-1", "high=99.5", "close=100.25"])
    ),
    needs=st.lists(st.integers(1, 30), min_size=1, max_size=4),
)
def test_facts_carried_from_the_last_check_answer_as_a_fresh_check(changed: dict[int, str], needs: list[int]) -> None:
    """A window checked and converted with the facts of its previous signal (another window: some bars
    the same, some with other values at the same start) is judged and converted as without them."""
    before = bars(30)
    facts = BarFacts()
    WindowCheck(before, "1", NOW, facts).reason(30)
    bars_to_array(before, facts)
    after = [
        bars(1, start=b.start, **dict([changed[i].split("=")]))[0] if i in changed else b for i, b in enumerate(before)
    ]
    carried = BarFacts(facts)
    check = WindowCheck(after, "1", NOW, carried)
    assert [check.reason(n) for n in needs] == [_reference(after, n, NOW, M) for n in needs]
    if check.reason(30) is None:
        assert bars_to_array(after, carried).tolist() == bars_to_array(after).tolist()


def test_facts_keep_only_the_bars_examined_since_and_take_a_signaling_nan() -> None:
    facts = BarFacts()
    for k in range(50):  # a window moving on a bar a close: what is carried stays one window
        facts = BarFacts(facts)
        window = bars(30, start=T0 + (k - 29) * M)
        assert WindowCheck(window, "1", T0 + (k + 1) * M + 5_000, facts).reason(30) is None
        assert bars_to_array(window, facts).shape == (30, 5)
    assert len(facts._sound) == len(facts._rows) == 30
    # a damaged record can hold a signaling NaN, which cannot be hashed: judged, never carried
    assert check_window(bars(30, close="sNaN"), "1", 30, NOW, BarFacts()) == "bad_values"

    # "0" and "-0" are equal Decimals (one key) but not equal floats: a zero volume is never carried
    facts = BarFacts()
    assert bars_to_array(bars(1, volume="-0"), facts)[0, 4] == 0.0
    again = BarFacts(facts)
    assert not np.signbit(bars_to_array(bars(1, volume="0"), again)[0, 4])
    assert np.signbit(bars_to_array(bars(1, volume="-0"), BarFacts(again))[0, 4])


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
