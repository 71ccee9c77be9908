"""One contract, two stores: RedisStore (real Redis) and MemoryStore behave the same."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import numpy as np
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from streaming.depth import BINS_PER_SIDE, DepthRow
from streaming.errors import StoreUnavailable
from streaming.klines import MINUTE_MS, Bar
from streaming.memory_store import MemoryStore
from streaming.redis_store import RedisStore
from streaming.store import BarEvent, BookStatus, WindowStore, WriteBatch, revised_field
from tests.redis_server import free_port
from tests.streaming.kit import scratch_store

WINDOW = 8
T0 = 1_750_000_020_000 - 1_750_000_020_000 % MINUTE_MS


def bar(i: int, close: str = "100.5") -> Bar:
    return Bar(
        T0 + i * MINUTE_MS,
        Decimal("100.0"),
        Decimal("101.25"),
        Decimal("99.5"),
        Decimal(close),
        Decimal("12.000"),
        Decimal("1206.0"),
    )


def row(ts: int, level: float = 1.0) -> DepthRow:
    return DepthRow(
        ts=ts,
        mid=100.0,
        bids=np.full(BINS_PER_SIDE, level, np.float32),
        asks=np.full(BINS_PER_SIDE, level * 2, np.float32),
    )


@pytest.fixture(params=["redis", "redis-reusing", "memory", "redis-cluster"])
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[WindowStore]:
    """``redis-reusing``: the worker's store, which decodes only the records a read finds new."""
    if request.param == "memory":
        yield MemoryStore(window_bars=WINDOW, depth_rows=4)
        return
    cluster = request.param == "redis-cluster"
    url = request.getfixturevalue("redis_cluster").url if cluster else redis_url
    reuse = request.param == "redis-reusing"
    async with scratch_store(url, "t", window_bars=WINDOW, depth_rows=4, cluster=cluster, reuse_decoded=reuse) as rs:
        yield rs


async def write_bars(store: WindowStore, bars: list[Bar], symbol: str = "BTCUSDT", iv: str = "1"):  # type: ignore[no-untyped-def]
    return await store.write(WriteBatch(bars={(symbol, iv): bars}))


async def test_upsert_is_idempotent(store: WindowStore) -> None:
    first = await write_bars(store, [bar(0), bar(1), bar(2)])
    again = await write_bars(store, [bar(0), bar(1), bar(2)])
    assert first.inserted[("BTCUSDT", "1")] == 3
    assert again.inserted[("BTCUSDT", "1")] == 0
    assert again.revised[("BTCUSDT", "1")] == 0
    w = await store.read_symbol("BTCUSDT", ["1"], 50)
    assert [b.start for b in w.bars["1"]] == [T0, T0 + MINUTE_MS, T0 + 2 * MINUTE_MS]


async def test_exact_decimal_strings_survive(store: WindowStore) -> None:
    await write_bars(store, [bar(0, close="100.50")])
    w = await store.read_symbol("BTCUSDT", ["1"], 50)
    assert str(w.bars["1"][0].close) == "100.50"
    assert str(w.bars["1"][0].volume) == "12.000"


async def test_revised_bar_replaces_and_is_reported(store: WindowStore) -> None:
    await write_bars(store, [bar(0), bar(1)])
    res = await write_bars(store, [bar(1, close="100.75")])
    assert res.revised[("BTCUSDT", "1")] == 1
    assert res.inserted[("BTCUSDT", "1")] == 0
    w = await store.read_symbol("BTCUSDT", ["1"], 50)
    assert [str(b.close) for b in w.bars["1"]] == ["100.5", "100.75"]


async def test_every_read_returns_what_is_stored_then(store: WindowStore) -> None:
    """Read, change the window (a bar revised, new bars, the oldest trimmed), read again: the second
    read is the window as it is now (a store reusing the first read's bars must not serve them)."""
    await write_bars(store, [bar(i) for i in range(WINDOW)])
    first = (await store.read_symbol("BTCUSDT", ["1"], 50)).bars["1"]
    assert [b.start for b in first] == [T0 + i * MINUTE_MS for i in range(WINDOW)]
    await write_bars(store, [bar(WINDOW - 1, close="100.75"), bar(WINDOW), bar(WINDOW + 1)])
    second = (await store.read_symbol("BTCUSDT", ["1"], 50)).bars["1"]
    assert second == [bar(i) for i in range(2, WINDOW - 1)] + [
        bar(WINDOW - 1, close="100.75"),
        bar(WINDOW),
        bar(WINDOW + 1),
    ]


async def test_the_worker_store_decodes_only_the_records_a_read_finds_new(redis_url: str) -> None:
    async with (
        scratch_store(redis_url, "t", window_bars=WINDOW, depth_rows=4, reuse_decoded=True) as reusing,
        scratch_store(redis_url, "t", window_bars=WINDOW, depth_rows=4) as decoding,
    ):
        for s in (reusing, decoding):
            await write_bars(s, [bar(i) for i in range(WINDOW)])
        before = [(await s.read_symbol("BTCUSDT", ["1"], 50)).bars["1"] for s in (reusing, decoding)]
        for s in (reusing, decoding):
            await write_bars(s, [bar(WINDOW)])
        after = [(await s.read_symbol("BTCUSDT", ["1"], 50)).bars["1"] for s in (reusing, decoding)]
        assert after[0] == after[1] == [bar(i) for i in range(1, WINDOW + 1)]
        # the same objects for the records both reads found (decoded once), a new one for the new bar
        assert all(a is b for a, b in zip(after[0][:-1], before[0][1:], strict=True))
        assert not any(a is b for a, b in zip(after[1][:-1], before[1][1:], strict=True))


async def test_a_corrupt_record_is_found_at_every_read_of_the_worker_store(redis_url: str) -> None:
    async with scratch_store(redis_url, "t", window_bars=WINDOW, depth_rows=4, reuse_decoded=True) as store:
        await write_bars(store, [bar(0), bar(1)])
        assert not (await store.read_symbol("BTCUSDT", ["1"], 50)).corrupt
        raw = aioredis.Redis.from_url(redis_url)
        try:
            await raw.zadd(store.keys.kline("BTCUSDT", "1"), {"garbage|secret": T0 + 2 * MINUTE_MS})
        finally:
            await raw.aclose()
        for _ in range(2):
            w = await store.read_symbol("BTCUSDT", ["1"], 50)
            assert w.corrupt == frozenset({"1"}) and w.bars["1"] == [bar(0), bar(1)]


async def test_a_revised_window_is_marked_in_the_same_write_and_an_identical_rewrite_is_not(
    store: WindowStore,
) -> None:
    await write_bars(store, [bar(0), bar(1), bar(2), bar(3)])
    await write_bars(store, [bar(0), bar(1), bar(2)])  # the same values again: no revision
    assert (await store.read_symbol("BTCUSDT", ["1"], 50)).status == {}
    await write_bars(store, [bar(3, close="99"), bar(1, close="101"), bar(2)])
    w = await store.read_symbol("BTCUSDT", ["1"], 50)
    assert w.status == {revised_field("1"): str(T0 + MINUTE_MS)}  # the oldest bar rewritten
    await write_bars(store, [bar(0)], iv="5")
    await write_bars(store, [bar(0, close="98")], iv="5")  # another window, its own mark
    w = await store.read_symbol("BTCUSDT", ["1", "5"], 50)
    assert w.status[revised_field("5")] == str(T0)
    # the reconciler clears it in a status write
    await store.write(WriteBatch(status={"BTCUSDT": {revised_field("1"): ""}}))
    assert (await store.read_symbol("BTCUSDT", ["1"], 50)).status[revised_field("1")] == ""


async def test_a_replacing_write_keeps_only_its_bars_up_to_its_newest_and_repairs_are_taken_once(
    store: WindowStore,
) -> None:
    await write_bars(store, [bar(i) for i in range(6)])
    # the exchange's record of bars 1..4 (bar 2 missing there, bar 3 other values), with a live bar 6
    # in the same batch; bar 5, stored, is newer than the record: kept
    rebuilt = [bar(4), bar(3, close="99"), bar(1), bar(6)]
    batch = WriteBatch(bars={("BTCUSDT", "1"): rebuilt}, replace={("BTCUSDT", "1"): T0 + 4 * MINUTE_MS})
    await store.write(batch)
    w = await store.read_symbol("BTCUSDT", ["1"], 50)
    assert [(b.start - T0) // MINUTE_MS for b in w.bars["1"]] == [1, 3, 4, 5, 6]
    assert str(w.bars["1"][1].close) == "99"
    for _ in range(2):
        await store.request_repair("BTCUSDT", "5")
    await store.request_repair("ETHUSDT", "1")
    assert await store.take_repairs() == [("BTCUSDT", "5"), ("ETHUSDT", "1")]
    assert await store.take_repairs() == []


async def test_event_only_when_newest_bar_advances(store: WindowStore) -> None:
    r1 = await write_bars(store, [bar(0), bar(1), bar(2)])
    assert r1.events == [BarEvent("BTCUSDT", "1", T0 + 2 * MINUTE_MS)]
    r2 = await write_bars(store, [bar(1)])  # older bar re-written: no event
    assert r2.events == []
    r3 = await write_bars(store, [bar(3)])
    assert r3.events == [BarEvent("BTCUSDT", "1", T0 + 3 * MINUTE_MS)]
    events = await store.read_events()
    assert [e for _, e in events] == r1.events + r3.events
    after_first = await store.read_events(after=events[0][0])
    assert [e for _, e in after_first] == r3.events


async def test_window_is_bounded_keeping_newest(store: WindowStore) -> None:
    await write_bars(store, [bar(i) for i in range(WINDOW + 5)])
    w = await store.read_symbol("BTCUSDT", ["1"], 50)
    assert len(w.bars["1"]) == WINDOW
    assert w.bars["1"][0].start == T0 + 5 * MINUTE_MS
    assert w.bars["1"][-1].start == T0 + (WINDOW + 4) * MINUTE_MS


async def test_windows_are_separate_per_symbol_and_interval(store: WindowStore) -> None:
    await write_bars(store, [bar(0)], symbol="BTCUSDT", iv="1")
    await write_bars(store, [bar(0), bar(5)], symbol="BTCUSDT", iv="5")
    await write_bars(store, [bar(1)], symbol="ETHUSDT", iv="1")
    w = await store.read_symbol("BTCUSDT", ["1", "5", "60"], 50)
    assert [len(w.bars[iv]) for iv in ("1", "5", "60")] == [1, 2, 0]
    assert w.book is None and w.depth == [] and w.status == {}


async def test_book_depth_and_status_round_trip(store: WindowStore) -> None:
    status = BookStatus("READY", "", 42, T0, "100.1", "2", "100.2", "3", updated_wall_ms=123)
    await store.write(
        WriteBatch(
            books={("BTCUSDT", 50): status},
            depth_rows={("BTCUSDT", 50): [row(T0 + i * 1000, i) for i in range(6)]},
            status={"BTCUSDT": {"subscribe:kline.1.BTCUSDT": "failed: x"}},
        )
    )
    await store.write(WriteBatch(status={"BTCUSDT": {"backfill:1": "ok"}}))
    w = await store.read_symbol("BTCUSDT", ["1"], 50)
    assert w.book == status
    assert [r.ts for r in w.depth] == [T0 + i * 1000 for i in range(2, 6)]  # bounded to 4 rows
    assert float(w.depth[-1].bids[0]) == 5.0 and float(w.depth[-1].asks[99]) == 10.0
    assert w.status == {"subscribe:kline.1.BTCUSDT": "failed: x", "backfill:1": "ok"}
    assert (await store.read_symbol("BTCUSDT", ["1"], 200)).book is None


async def test_concurrent_writers_keep_one_bar_per_start(store: WindowStore) -> None:
    await asyncio.gather(*(write_bars(store, [bar(i % 4), bar((i + 1) % 4)]) for i in range(20)))
    w = await store.read_symbol("BTCUSDT", ["1"], 50)
    assert [b.start for b in w.bars["1"]] == [T0 + i * MINUTE_MS for i in range(4)]


async def test_redis_keys_of_one_symbol_share_a_cluster_slot(redis_url: str) -> None:
    rs = RedisStore(aioredis.Redis.from_url(redis_url), prefix="cc")
    keys = [
        rs.keys.kline("BTCUSDT", "1"),
        rs.keys.kline("BTCUSDT", "60"),
        rs.keys.book("BTCUSDT", 50),
        rs.keys.depth("BTCUSDT", 50),
        rs.keys.status("BTCUSDT"),
    ]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert key_slot(rs.keys.kline("ETHUSDT", "1").encode()) != key_slot(keys[0].encode())
    await rs.close()


async def test_unreachable_redis_is_store_unavailable() -> None:
    rs = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreUnavailable):
        await write_bars(rs, [bar(0)])
    with pytest.raises(StoreUnavailable):
        await rs.read_symbol("BTCUSDT", ["1"], 50)
    await rs.close()


async def test_every_close_beyond_the_head_gets_an_event(store: WindowStore) -> None:
    await write_bars(store, [bar(0)])
    r = await write_bars(store, [bar(1), bar(2), bar(3)])  # three closes in one flush
    assert r.events == [BarEvent("BTCUSDT", "1", T0 + i * MINUTE_MS) for i in (1, 2, 3)]
    r = await write_bars(store, [bar(i) for i in range(4, 4 + 70)])  # a long catch-up: every bar
    assert [e.start for e in r.events] == [T0 + i * MINUTE_MS for i in range(4, 74)]


async def test_depth_rows_can_be_left_out_of_a_read(store: WindowStore) -> None:
    await store.write(
        WriteBatch(
            bars={("BTCUSDT", "1"): [bar(0)]}, depth_rows={("BTCUSDT", 50): [row(T0)]}, status={"BTCUSDT": {"k": "v"}}
        )
    )
    lean = await store.read_symbol("BTCUSDT", ["1"], 50, with_depth=False)
    assert lean.depth == []
    assert len(lean.bars["1"]) == 1
    assert lean.status == {"k": "v"}
    assert len((await store.read_symbol("BTCUSDT", ["1"], 50)).depth) == 1


async def test_a_read_can_take_only_the_newest_depth_rows(store: WindowStore) -> None:
    rows = [row(T0 + k * 1000) for k in range(4)]
    await store.write(WriteBatch(bars={("BTCUSDT", "1"): [bar(0)]}, depth_rows={("BTCUSDT", 50): rows}))
    recent = await store.read_symbol("BTCUSDT", ["1"], 50, depth_after_ms=T0 + 1000)
    assert [r.ts for r in recent.depth] == [T0 + 2000, T0 + 3000]  # strictly after, oldest first
    assert len((await store.read_symbol("BTCUSDT", ["1"], 50)).depth) == 4


async def test_announced_events_follow_the_written_ones_in_order(store: WindowStore) -> None:
    await write_bars(store, [bar(0), bar(1)])
    again = [BarEvent("BTCUSDT", "1", T0), BarEvent("BTCUSDT", "1", T0 + MINUTE_MS)]
    await store.announce(again)
    events = [e for _, e in await store.read_events()]
    assert events[-2:] == again and len(events) == 3  # the write announced its newest bar once
