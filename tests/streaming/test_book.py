"""Tests for the local order book state machine (``streaming.book.OrderBook``).

The rules under test are bybit_protocol.md §4.2-4.3 and the order-book part of §7: NOT_READY until
a snapshot (deltas before it are dropped), a snapshot replaces both sides, a delta is applied only when
``u == last_u + 1`` (anything else => INVALID until the next snapshot), sizes are absolute and ``"0"``
deletes, an empty side or best bid >= best ask => INVALID, and sides are trimmed to the depth.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming.book import ApplyResult, BookState, OrderBook
from streaming.depth import sample_levels, sample_row
from streaming.frames import BookUpdate, Level, parse_frame
from tests.streaming.kit import XRP_OB500_ZIP, Pair, book_update, levels

D = Decimal


def snap(u: int, bids: Sequence[Pair], asks: Sequence[Pair], ts: int = 1000) -> BookUpdate:
    return book_update("snapshot", u, bids, asks, ts=ts, seq=u * 10)


def delta(u: int, bids: Sequence[Pair] = (), asks: Sequence[Pair] = (), ts: int = 2000) -> BookUpdate:
    return book_update("delta", u, bids, asks, ts=ts, seq=u * 10)


def ladders(book: OrderBook) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
    view = book.view()
    return view.bids, view.asks


def _ready_book(depth: int = 50) -> OrderBook:
    """Bids 99/98/97, asks 101/102/103, u=10."""
    book = OrderBook(symbol="BTCUSDT", depth=depth)
    assert book.apply(snap(10, [(99, 1), (98, 2), (97, 3)], [(101, 1), (102, 2), (103, 3)])) is ApplyResult.APPLIED
    return book


# ---------------------------------------------------------------------------------------------------
# Rules, one at a time, on tiny hand-made books
# ---------------------------------------------------------------------------------------------------


def test_new_book_is_not_ready_and_empty() -> None:
    book = OrderBook(symbol="BTCUSDT", depth=50)
    assert book.state is BookState.NOT_READY
    assert not book.ready
    assert book.best_bid() is None
    assert book.best_ask() is None
    assert ladders(book) == ((), ())


def test_delta_before_first_snapshot_is_dropped() -> None:
    book = OrderBook(symbol="BTCUSDT", depth=50)
    assert book.apply(delta(1, [(99, 1)], [(101, 1)])) is ApplyResult.DROPPED
    assert book.apply(delta(2, [(98, 1)], [(102, 1)])) is ApplyResult.DROPPED
    assert book.state is BookState.NOT_READY
    assert ladders(book) == ((), ())
    # The dropped levels never leak into the book that the snapshot builds.
    assert book.apply(snap(5, [(97, 3)], [(103, 3)])) is ApplyResult.APPLIED
    assert ladders(book) == (levels([(97, 3)]), levels([(103, 3)]))


def test_snapshot_makes_book_ready_with_best_first_ladders() -> None:
    book = OrderBook(symbol="BTCUSDT", depth=50)
    # Deliberately unsorted on the wire: the book orders the sides itself.
    result = book.apply(snap(10, [(98, 2), (99, 1), (97, 3)], [(103, 3), (101, 1), (102, 2)], ts=1234))
    assert result is ApplyResult.APPLIED
    assert book.state is BookState.READY
    assert book.ready
    assert book.last_u == 10
    assert book.ts == 1234
    assert book.best_bid() == (D(99), D(1))
    assert book.best_ask() == (D(101), D(1))
    assert ladders(book) == (levels([(99, 1), (98, 2), (97, 3)]), levels([(101, 1), (102, 2), (103, 3)]))
    view = book.view()
    assert (view.u, view.ts) == (10, 1234)


def test_snapshot_replaces_and_never_merges() -> None:
    book = _ready_book()
    assert book.apply(snap(11, [(95, 7)], [(105, 8)])) is ApplyResult.APPLIED
    assert ladders(book) == (levels([(95, 7)]), levels([(105, 8)]))
    assert book.last_u == 11


def test_restart_snapshot_with_u_1_resets_the_sequence() -> None:
    book = _ready_book()
    assert book.apply(snap(1, [(90, 1)], [(91, 1)])) is ApplyResult.APPLIED
    assert book.last_u == 1
    assert book.apply(delta(2, [(89, 4)])) is ApplyResult.APPLIED
    assert book.state is BookState.READY
    assert ladders(book) == (levels([(90, 1), (89, 4)]), levels([(91, 1)]))


def test_snapshot_with_the_same_u_is_accepted() -> None:
    """Depth-1 re-pushes a snapshot with the previous ``u`` every 3 s (§4.2): not a duplicate error."""
    book = _ready_book()
    assert book.apply(snap(10, [(99, 5)], [(101, 6)])) is ApplyResult.APPLIED
    assert book.state is BookState.READY
    assert ladders(book) == (levels([(99, 5)]), levels([(101, 6)]))


def test_contiguous_delta_upserts_with_absolute_sizes() -> None:
    book = _ready_book()
    result = book.apply(delta(11, bids=[(98, "0.5"), (96, 4)], asks=[(101, "7.25")], ts=5555))
    assert result is ApplyResult.APPLIED
    assert book.last_u == 11
    assert book.ts == 5555
    # 98 replaced (not 2 + 0.5), 96 inserted in price order, 101 replaced.
    assert ladders(book) == (
        levels([(99, 1), (98, "0.5"), (97, 3), (96, 4)]),
        levels([(101, "7.25"), (102, 2), (103, 3)]),
    )


def test_delta_inserts_a_new_best_level() -> None:
    book = _ready_book()
    assert book.apply(delta(11, bids=[("99.5", 2)], asks=[("100.5", 3)])) is ApplyResult.APPLIED
    assert book.best_bid() == (D("99.5"), D(2))
    assert book.best_ask() == (D("100.5"), D(3))


def test_size_zero_deletes_the_level() -> None:
    book = _ready_book()
    assert book.apply(delta(11, bids=[(99, 0)], asks=[(102, "0")])) is ApplyResult.APPLIED
    assert ladders(book) == (levels([(98, 2), (97, 3)]), levels([(101, 1), (103, 3)]))
    assert book.best_bid() == (D(98), D(2))


def test_size_zero_matches_price_numerically() -> None:
    """``"99.00"`` and ``"99"`` are the same price: the delete must hit the stored level."""
    book = _ready_book()
    assert book.apply(delta(11, bids=[("99.00", "0.000")])) is ApplyResult.APPLIED
    assert book.best_bid() == (D(98), D(2))


def test_delete_of_absent_level_is_harmless() -> None:
    book = _ready_book()
    before = ladders(book)
    assert book.apply(delta(11, bids=[(50, 0)], asks=[(150, 0)])) is ApplyResult.APPLIED
    assert book.state is BookState.READY
    assert book.last_u == 11
    assert ladders(book) == before


def test_empty_delta_advances_u() -> None:
    book = _ready_book()
    assert book.apply(delta(11)) is ApplyResult.APPLIED
    assert book.last_u == 11
    assert book.apply(delta(12)) is ApplyResult.APPLIED
    assert book.last_u == 12


@pytest.mark.parametrize(("u", "label"), [(12, "skip"), (10, "repeat"), (9, "older"), (1000, "far")])
def test_u_gap_invalidates_with_expected_and_got(u: int, label: str) -> None:
    book = _ready_book()
    before = ladders(book)
    assert book.apply(delta(u, bids=[(99, 42)])) is ApplyResult.INVALIDATED, label
    assert book.state is BookState.INVALID
    assert not book.ready
    assert "expected 11" in book.reason
    assert f"got {u}" in book.reason
    # The out-of-sequence delta itself was not applied.
    assert ladders(book) == before


def test_after_invalid_only_a_snapshot_restores_ready() -> None:
    book = _ready_book()
    assert book.apply(delta(12)) is ApplyResult.INVALIDATED
    # Neither the "missing" u nor the next one can repair the book: only a snapshot can.
    for u in (11, 12, 13):
        assert book.apply(delta(u, bids=[(99, 5)])) is ApplyResult.DROPPED
        assert book.state is BookState.INVALID
    assert book.apply(snap(20, [(80, 1)], [(81, 1)])) is ApplyResult.APPLIED
    assert book.state is BookState.READY
    assert ladders(book) == (levels([(80, 1)]), levels([(81, 1)]))
    assert book.apply(delta(21, asks=[(82, 2)])) is ApplyResult.APPLIED
    assert book.state is BookState.READY


@pytest.mark.parametrize(
    ("bids", "asks"),
    [
        pytest.param([(101, 1)], [], id="bid-above-best-ask"),
        pytest.param([], [(99, 1)], id="ask-below-best-bid"),
        pytest.param([(102, 1)], [(101, 0)], id="bid-locks-the-ask-left-after-a-delete"),
        pytest.param([("100", 1)], [("100", 1)], id="locked-bid-equals-ask"),
    ],
)
def test_crossed_or_locked_delta_invalidates(bids: list[Pair], asks: list[Pair]) -> None:
    book = _ready_book()
    assert book.apply(delta(11, bids=bids, asks=asks)) is ApplyResult.INVALIDATED
    assert book.state is BookState.INVALID
    assert "crossed" in book.reason


def test_crossed_snapshot_invalidates() -> None:
    book = OrderBook(symbol="BTCUSDT", depth=50)
    assert book.apply(snap(1, [(101, 1), (99, 1)], [(100, 1)])) is ApplyResult.INVALIDATED
    assert book.state is BookState.INVALID
    assert "crossed" in book.reason
    # The next delta cannot fix it; only the next (good) snapshot can.
    assert book.apply(delta(2, bids=[(101, 0)])) is ApplyResult.DROPPED
    assert book.state is BookState.INVALID
    assert book.apply(snap(3, [(99, 1)], [(100, 1)])) is ApplyResult.APPLIED
    assert book.state is BookState.READY


def test_delta_emptying_a_side_invalidates() -> None:
    book = _ready_book()
    assert book.apply(delta(11, asks=[(101, 0), (102, 0), (103, 0)])) is ApplyResult.INVALIDATED
    assert book.state is BookState.INVALID
    assert "empty" in book.reason


@pytest.mark.parametrize(
    ("bids", "asks"),
    [
        pytest.param([], [(101, 1)], id="no-bids"),
        pytest.param([(99, 1)], [], id="no-asks"),
        pytest.param([], [], id="both-empty"),
        pytest.param([(99, 0)], [(101, 1)], id="only-zero-size-bids"),
    ],
)
def test_snapshot_with_an_empty_side_invalidates(bids: list[Pair], asks: list[Pair]) -> None:
    book = OrderBook(symbol="BTCUSDT", depth=50)
    assert book.apply(snap(1, bids, asks)) is ApplyResult.INVALIDATED
    assert book.state is BookState.INVALID
    assert "empty" in book.reason


def test_snapshot_beyond_depth_keeps_the_best_levels() -> None:
    book = OrderBook(symbol="BTCUSDT", depth=2)
    bids = [(95, 5), (99, 1), (97, 3), (98, 2), (96, 4)]
    asks = [(105, 5), (101, 1), (103, 3), (102, 2), (104, 4)]
    assert book.apply(snap(1, bids, asks)) is ApplyResult.APPLIED
    assert ladders(book) == (levels([(99, 1), (98, 2)]), levels([(101, 1), (102, 2)]))


def test_delta_beyond_depth_trims_the_worst_levels() -> None:
    book = _ready_book(depth=3)
    # Better levels push the worst out; a level worse than the window is not kept.
    assert book.apply(delta(11, bids=[("99.5", 9), (90, 9)], asks=[("100.5", 9), (110, 9)])) is ApplyResult.APPLIED
    assert ladders(book) == (
        levels([("99.5", 9), (99, 1), (98, 2)]),
        levels([("100.5", 9), (101, 1), (102, 2)]),
    )
    assert book.state is BookState.READY


def test_invalidate_marks_the_book_unusable_until_a_snapshot() -> None:
    book = _ready_book()
    book.invalidate("disconnect")
    assert book.state is BookState.INVALID
    assert book.reason == "disconnect"
    assert book.apply(delta(11)) is ApplyResult.DROPPED
    assert book.apply(snap(30, [(1, 1)], [(2, 1)])) is ApplyResult.APPLIED
    assert book.ready


def test_reset_returns_to_not_ready_and_clears() -> None:
    book = _ready_book()
    book.reset("reconnect")
    assert book.state is BookState.NOT_READY
    assert book.reason == "reconnect"
    assert ladders(book) == ((), ())
    assert book.best_bid() is None
    assert book.best_ask() is None
    # A new connection: the old sequence means nothing; deltas wait for a fresh snapshot.
    assert book.apply(delta(11, bids=[(99, 1)])) is ApplyResult.DROPPED
    assert book.state is BookState.NOT_READY
    assert ladders(book) == ((), ())
    assert book.apply(snap(500, [(50, 1)], [(51, 1)])) is ApplyResult.APPLIED
    assert ladders(book) == (levels([(50, 1)]), levels([(51, 1)]))
    assert book.last_u == 500


def test_view_is_a_copy_not_a_live_reference() -> None:
    book = _ready_book()
    view = book.view()
    book.apply(delta(11, bids=[(99, 0)], asks=[(101, 0)]))
    assert view.bids[0] == (D(99), D(1))
    assert view.asks[0] == (D(101), D(1))
    assert view.u == 10


# ---------------------------------------------------------------------------------------------------
# A real Bybit stream: orderbook.500.XRPUSDT, 1 snapshot + 49 deltas
# ---------------------------------------------------------------------------------------------------


def _xrp_lines() -> list[bytes]:
    with zipfile.ZipFile(XRP_OB500_ZIP) as zf:
        (member,) = zf.namelist()
        return zf.read(member).splitlines()


def test_recorded_xrp_stream_replays_to_the_reference_book() -> None:
    lines = _xrp_lines()
    assert len(lines) == 50
    book = OrderBook(symbol="XRPUSDT", depth=500)
    ref_bids: dict[Decimal, Decimal] = {}
    ref_asks: dict[Decimal, Decimal] = {}
    prev_u: int | None = None
    for i, line in enumerate(lines):
        msg = parse_frame(line)
        assert isinstance(msg, BookUpdate)
        assert msg.kind == ("snapshot" if i == 0 else "delta")
        if prev_u is not None:
            assert msg.u == prev_u + 1
        prev_u = msg.u

        assert book.apply(msg) is ApplyResult.APPLIED, book.reason
        assert book.state is BookState.READY
        assert book.last_u == msg.u

        # Independent reference: a plain dict per side, straight from the protocol rules.
        if msg.kind == "snapshot":
            ref_bids = {p: s for p, s in msg.bids}
            ref_asks = {p: s for p, s in msg.asks}
        else:
            for side, levels in ((ref_bids, msg.bids), (ref_asks, msg.asks)):
                for price, size in levels:
                    if size == 0:
                        side.pop(price, None)
                    else:
                        side[price] = size

        bids, asks = ladders(book)
        assert bids[0][0] < asks[0][0]
        assert bids == tuple(sorted(ref_bids.items(), reverse=True))
        assert asks == tuple(sorted(ref_asks.items()))
        # Bybit keeps the 500-level window itself (levels leaving it arrive as "0").
        assert (len(bids), len(asks)) == (500, 500)

    # Literal values read off the file by inspection.
    assert book.last_u == 20254918
    assert book.ts == 1733011205490
    assert book.best_bid() == (D("1.9537"), D("10605"))
    assert book.best_ask() == (D("1.9538"), D("6702"))
    bids, asks = ladders(book)
    assert bids[-1][0] == D("1.9037")
    assert asks[-1][0] == D("2.0037")


def test_recorded_xrp_stream_with_a_dropped_delta_goes_invalid() -> None:
    lines = _xrp_lines()
    book = OrderBook(symbol="XRPUSDT", depth=500)
    results = []
    for i, line in enumerate(lines):
        if i == 20:
            continue  # a lost message
        msg = parse_frame(line)
        assert isinstance(msg, BookUpdate)
        results.append(book.apply(msg))
    assert results[:20] == [ApplyResult.APPLIED] * 20
    assert results[20] is ApplyResult.INVALIDATED
    assert set(results[21:]) == {ApplyResult.DROPPED}
    assert book.state is BookState.INVALID
    assert "expected 20254889, got 20254890" in book.reason


# ---------------------------------------------------------------------------------------------------
# Property test against a reference model
# ---------------------------------------------------------------------------------------------------

GRID = [D("100.0") + D("0.5") * k for k in range(12)]  # 100.0 .. 105.5
DEPTH = 5


@dataclass
class ReferenceBook:
    """The protocol page's rules (§4.3 "Rule to implement", §7), written as plainly as possible."""

    depth: int
    state: BookState = BookState.NOT_READY
    last_u: int | None = None
    bids: dict[Decimal, Decimal] = field(default_factory=dict)
    asks: dict[Decimal, Decimal] = field(default_factory=dict)

    def apply(self, msg: BookUpdate) -> ApplyResult:
        if msg.kind == "snapshot":
            self.bids = {p: s for p, s in msg.bids if s != 0}
            self.asks = {p: s for p, s in msg.asks if s != 0}
            self.last_u = msg.u
            return self._check()
        if self.state is not BookState.READY:
            return ApplyResult.DROPPED
        assert self.last_u is not None
        if msg.u != self.last_u + 1:
            self.state = BookState.INVALID
            return ApplyResult.INVALIDATED
        for side, updates in ((self.bids, msg.bids), (self.asks, msg.asks)):
            for price, size in updates:
                if size == 0:
                    side.pop(price, None)
                else:
                    side[price] = size
        self.last_u = msg.u
        return self._check()

    def _check(self) -> ApplyResult:
        self.bids = dict(self.bid_ladder())
        self.asks = dict(self.ask_ladder())
        if not self.bids or not self.asks or max(self.bids) >= min(self.asks):
            self.state = BookState.INVALID
            return ApplyResult.INVALIDATED
        self.state = BookState.READY
        return ApplyResult.APPLIED

    def reset(self) -> None:
        self.state = BookState.NOT_READY
        self.bids = {}
        self.asks = {}

    def bid_ladder(self) -> tuple[Level, ...]:
        return tuple(sorted(self.bids.items(), reverse=True)[: self.depth])

    def ask_ladder(self) -> tuple[Level, ...]:
        return tuple(sorted(self.asks.items())[: self.depth])


_sizes = st.sampled_from([D("0"), D("0"), D("0.001"), D("1"), D("2.5"), D("10")])
_nonzero_sizes = st.sampled_from([D("0.001"), D("1"), D("2.5"), D("10")])


def _side(
    prices: list[Decimal], sizes: st.SearchStrategy[Decimal], min_size: int, max_size: int
) -> st.SearchStrategy[tuple[Level, ...]]:
    return st.lists(
        st.tuples(st.sampled_from(prices), sizes), min_size=min_size, max_size=max_size, unique_by=lambda lv: lv[0]
    ).map(tuple)


# Most messages keep bids in 100.0-102.5 and asks in 103.0-105.5; a "wild" one reaches across the
# middle (possibly crossing) or may leave a snapshot side empty.
U_MODES = ["next"] * 8 + ["skip", "repeat", "back", "restart"]
Step = tuple[str, str, tuple[Level, ...], tuple[Level, ...]]


@st.composite
def _step(draw: st.DrawFn, kind: str | None = None) -> Step:
    kind = kind or draw(st.sampled_from(["delta"] * 7 + ["snapshot"] * 2 + ["reset"]))
    u_mode = draw(st.sampled_from(U_MODES))
    wild = draw(st.integers(min_value=0, max_value=7)) == 0
    bid_grid, ask_grid = (GRID[:9], GRID[3:]) if wild else (GRID[:6], GRID[6:])
    if kind == "snapshot":
        low = 0 if wild else 1
        bids = draw(_side(bid_grid, _nonzero_sizes, low, 8))
        asks = draw(_side(ask_grid, _nonzero_sizes, low, 8))
    elif kind == "delta":
        bids = draw(_side(bid_grid, _sizes, 0, 3))
        asks = draw(_side(ask_grid, _sizes, 0, 3))
    else:
        bids = asks = ()
    return kind, u_mode, bids, asks


@st.composite
def _scenarios(draw: st.DrawFn) -> list[Step]:
    # Usually open with a snapshot, as a real subscription does; sometimes with stray deltas first.
    first = draw(st.sampled_from(["snapshot"] * 4 + ["delta"]))
    return [draw(_step(first)), *draw(st.lists(_step(), max_size=40))]


def _wire_u(u_mode: str, last: int) -> int:
    return {"next": last + 1, "skip": last + 2, "repeat": last, "back": max(0, last - 3), "restart": 1}[u_mode]


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_scenarios())
def test_book_matches_reference_model(steps: list[Step]) -> None:
    book = OrderBook(symbol="BTCUSDT", depth=DEPTH)
    ref = ReferenceBook(depth=DEPTH)
    wire_u = 100  # the exchange's sequence, continued across our resets like a real feed
    seen_snapshot = False
    for kind, u_mode, bids, asks in steps:
        before = book.state
        if kind == "reset":
            book.reset("reconnect")
            ref.reset()
            seen_snapshot = False
            assert book.state is BookState.NOT_READY
            assert ladders(book) == ((), ())
            continue
        wire_u = _wire_u(u_mode, wire_u)
        k: Literal["snapshot", "delta"] = "snapshot" if kind == "snapshot" else "delta"
        msg = book_update(k, wire_u, bids, asks, ts=wire_u, seq=wire_u, depth=DEPTH)
        result = book.apply(msg)
        expected = ref.apply(msg)
        assert result is expected
        assert book.state is ref.state
        assert book.ready is (book.state is BookState.READY)

        if kind == "delta" and not seen_snapshot:
            assert result is ApplyResult.DROPPED
            assert book.state is BookState.NOT_READY
        if kind == "delta" and before is BookState.INVALID:
            assert result is ApplyResult.DROPPED
            assert book.state is BookState.INVALID
        seen_snapshot = seen_snapshot or kind == "snapshot"

        got_bids, got_asks = ladders(book)
        if book.state is BookState.READY:
            assert got_bids == ref.bid_ladder()
            assert got_asks == ref.ask_ladder()
            assert book.last_u == ref.last_u == msg.u
            assert got_bids
            assert got_asks
            assert got_bids[0][0] < got_asks[0][0]
            assert len(got_bids) <= DEPTH
            assert len(got_asks) <= DEPTH
            assert book.best_bid() == got_bids[0]
            assert book.best_ask() == got_asks[0]
            assert all(size > 0 for _, size in got_bids + got_asks)
            assert [p for p, _ in got_bids] == sorted((p for p, _ in got_bids), reverse=True)
            assert [p for p, _ in got_asks] == sorted(p for p, _ in got_asks)
            # the ingestor's depth row (float_levels, in no order) bins what the ladders show
            fast, reference = sample_levels(*book.float_levels(), 0), sample_row(book.view(), 0)
            assert fast.mid == reference.mid
            np.testing.assert_allclose(fast.bids, reference.bids, rtol=1e-6)
            np.testing.assert_allclose(fast.asks, reference.asks, rtol=1e-6)
        elif book.state is BookState.NOT_READY:
            assert (got_bids, got_asks) == ((), ())
        else:
            assert book.reason
