"""End to end: the project's Bybit simulator on 127.0.0.1:0 → Ingestor → real Redis.

Every fault the simulator can inject must end in the right recovery, never in a wrong window, and
never with a book published READY while the local book is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streaming.errors import StoreUnavailable
from streaming.ingestor import IngestConfig, Ingestor
from streaming.klines import interval_ms, is_contiguous
from streaming.metrics import IngestMetrics
from streaming.redis_store import RedisStore
from streaming.sim.server import ExchangeSimulator, SimulatorConfig
from streaming.store import SymbolWindows, revised_field
from tests.helpers import eventually
from tests.redis_server import RedisServer
from tests.streaming.kit import scratch_store

pytestmark = pytest.mark.timeout(90)

INTERVALS = ("1", "5", "15", "60")
WINDOW = 40
SYMBOL = "BTCUSDT"
BARS_BACKFILLED = "candlecast_ingest_bars_backfilled_total"
BOOK_RESYNCS = "candlecast_ingest_book_resyncs_total"
GAPS_FOUND = "candlecast_ingest_gaps_found_total"
MESSAGES = "candlecast_ingest_messages_total"
RECONNECTS = "candlecast_ingest_reconnects_total"
REST_REQUESTS = "candlecast_ingest_rest_requests_total"
SUBSCRIBE_FAILURES = "candlecast_ingest_subscribe_failures_total"


def read_csv(path: Path) -> dict[int, tuple[str, str, str, str, str]]:
    out = {}
    with gzip.open(path, "rt") as fh:
        next(fh)
        for line in fh:
            t, o, h, lo, c, v = line.strip().split(",")
            out[int(t)] = (o, h, lo, c, v)
    return out


@pytest.fixture(scope="module")
def source_rows(bybit_btc_1m: Path) -> dict[int, tuple[str, str, str, str, str]]:
    return read_csv(bybit_btc_1m)


@pytest.fixture
async def sim(bybit_btc_1m: Path) -> AsyncIterator[ExchangeSimulator]:
    # 60 h of history so even the 1h window can be filled from REST at start-up.
    config = SimulatorConfig(sources=[bybit_btc_1m], speed=600.0, start_offset_bars=WINDOW * 60 + 120)
    async with ExchangeSimulator(config) as s:
        yield s


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    async with scratch_store(redis_url, "e2e-", window_bars=WINDOW, depth_rows=50) as s:
        yield s


def make_ingestor(sim: ExchangeSimulator, store: RedisStore, **overrides: object) -> Ingestor:
    fields: dict[str, object] = {
        "ws_url": sim.ws_url,
        "rest_url": sim.rest_url,
        "symbols": (SYMBOL,),
        "intervals": INTERVALS,
        "ping_interval_s": 0.5,
        "pong_timeout_s": 1.5,
        "ack_timeout_s": 2.0,
        "book_silence_s": 1.5,
        "kline_silence_s": 5.0,
        "backoff_base_s": 0.05,
        "backoff_cap_s": 0.3,
        "rest_retry_s": 0.1,
        "rest_ban_s": 1.0,
        "rest_rate_per_s": 200.0,
    }
    fields.update(overrides)
    return Ingestor(IngestConfig(**fields), store, IngestMetrics())  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(ing: Ingestor) -> AsyncIterator[Ingestor]:
    """``ing`` started against the simulator, and closed after (``close()`` is safe to call twice)."""
    await ing.start()
    try:
        yield ing
    finally:
        await ing.close()


@pytest.fixture
async def ing(
    sim: ExchangeSimulator,
    store: RedisStore,
    source_rows: dict,  # type: ignore[type-arg]
) -> AsyncIterator[Ingestor]:
    """The default ingestor, running and already healthy (full windows equal to the CSV, book READY)."""
    async with running(make_ingestor(sim, store)) as started:
        await run_until_healthy(started, store, sim, source_rows)
        yield started


def sample(metrics: IngestMetrics, name: str, **labels: str) -> float:
    """A metric's current value as Prometheus would scrape it (0 when not yet observed)."""
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def bars_close(sim: ExchangeSimulator, bars: int) -> None:
    """Wait until ``bars`` one-minute bars have closed on the simulator clock."""
    until = sim.clock.now_ms() + bars * 60_000
    await eventually(lambda: sim.clock.now_ms() >= until, what=f"{bars} bars closed on the simulator clock")


async def windows(store: RedisStore) -> SymbolWindows:
    return await store.read_symbol(SYMBOL, INTERVALS, 50)


def aggregate(rows: dict[int, tuple[str, str, str, str, str]], start: int, minutes: int) -> tuple[str, ...]:
    """Source bar for an aggregated interval, computed here independently of the simulator."""
    parts = [rows[start + i * 60_000] for i in range(minutes)]
    high = max(parts, key=lambda r: float(r[1]))[1]
    low = min(parts, key=lambda r: float(r[2]))[2]
    volume = sum(float(r[4]) for r in parts)
    return parts[0][0], high, low, parts[-1][3], f"{volume:.6f}"


async def windows_match_source(
    store: RedisStore, sim: ExchangeSimulator, rows: dict[int, tuple[str, str, str, str, str]]
) -> bool:
    """Full, contiguous, current windows whose every bar equals the source CSV."""
    w = await windows(store)
    now = sim.clock.now_ms()
    for iv in INTERVALS:
        bars = w.bars[iv]
        step = interval_ms(iv)
        if len(bars) != WINDOW or not is_contiguous([b.start for b in bars], step):
            return False
        if now - (bars[-1].start + step) > 2 * step:  # not current (allow the in-flight close)
            return False
        for b in bars:
            got = (str(b.open), str(b.high), str(b.low), str(b.close), str(b.volume))
            if iv == "1":
                assert got == rows[b.start], f"1m bar {b.start} differs from the CSV"
            else:
                want = aggregate(rows, b.start, int(iv))
                assert got[:4] == want[:4], f"{iv}m bar {b.start}: {got} != {want}"
                assert float(got[4]) == pytest.approx(float(want[4]), rel=1e-9)
    return True


def book_ok(w: SymbolWindows) -> bool:
    return w.book is not None and w.book.state == "READY" and float(w.book.best_bid) < float(w.book.best_ask)


async def run_until_healthy(ing: Ingestor, store: RedisStore, sim: ExchangeSimulator, rows: dict) -> None:  # type: ignore[type-arg]
    async def healthy() -> bool:
        try:
            return await windows_match_source(store, sim, rows) and book_ok(await windows(store))
        except StoreUnavailable:  # e.g. a pooled connection that died with a restarted Redis
            return False

    await eventually(healthy, 30, 0.1, "windows full, equal to the CSV, and the book READY")


def assert_metrics_exposed(ing: Ingestor) -> None:
    """The ingestion metrics parse as Prometheus text and carry what operators watch."""
    text = generate_latest(ing.metrics.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "candlecast_ingest_messages",
        "candlecast_ingest_reconnects",
        "candlecast_ingest_book_resyncs",
        "candlecast_ingest_bars_backfilled",
        "candlecast_ingest_gaps_found",
        "candlecast_ingest_subscribe_failures",
        "candlecast_ingest_lag_seconds",
        "candlecast_ingest_last_message_age_seconds",
        "candlecast_ingest_book_ready",
    ):
        assert name in families, name
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("candlecast_ingest_messages_total", (("type", "book_delta"),))] > 0
    assert samples[("candlecast_ingest_messages_total", (("type", "kline"),))] > 0
    assert samples[("candlecast_ingest_book_ready", (("symbol", SYMBOL),))] == 1
    assert samples[("candlecast_ingest_lag_seconds_count", ())] > 0
    assert ("candlecast_ingest_last_message_age_seconds", (("topic", f"orderbook.50.{SYMBOL}"),)) in samples


def incomplete_windows(ing: Ingestor) -> dict[str, float | None]:
    gauge = "candlecast_ingest_windows_incomplete"
    return {iv: ing.metrics.registry.get_sample_value(gauge, {"interval": iv}) for iv in INTERVALS}


def subscriptions(sim: ExchangeSimulator) -> dict[int, list[str]]:
    per_conn: dict[int, list[str]] = {}
    for conn, op, args, success in sim.subscribe_log:
        if op == "subscribe" and success:
            per_conn.setdefault(conn, []).extend(args)
    return per_conn


async def test_full_run_fills_windows_equal_to_the_source_csv(
    ing: Ingestor, sim: ExchangeSimulator, store: RedisStore
) -> None:
    w = await windows(store)
    assert len(w.depth) > 0
    assert w.depth[-1].bids.sum() > 0
    events = await store.read_events()
    assert {e.interval for _, e in events} == set(INTERVALS)
    newest_1m = max(e.start for _, e in events if e.interval == "1")
    assert newest_1m >= w.bars["1"][-1].start - 60_000
    assert sample(ing.metrics, BARS_BACKFILLED) >= WINDOW * len(INTERVALS) - len(INTERVALS)
    # each topic subscribed exactly once on the one connection
    subs = subscriptions(sim)
    assert list(subs) == [1]
    assert sorted(subs[1]) == sorted([f"kline.{iv}.{SYMBOL}" for iv in INTERVALS] + [f"orderbook.50.{SYMBOL}"])
    age = ("candlecast_ingest_last_message_age_seconds", {"topic": f"orderbook.50.{SYMBOL}"})
    await eventually(lambda: ing.metrics.registry.get_sample_value(*age) is not None, 5, what="watchdog ran")
    assert_metrics_exposed(ing)
    await eventually(lambda: incomplete_windows(ing) == dict.fromkeys(INTERVALS, 0), 5, what="no window behind")
    await ing.close()
    w = await windows(store)
    assert w.book is not None and w.book.state == "INVALID" and w.book.reason == "ingestor stopped"


async def test_dropped_connection_reconnects_resubscribes_once_and_backfills(
    ing: Ingestor,
    sim: ExchangeSimulator,
    store: RedisStore,
    source_rows: dict,  # type: ignore[type-arg]
) -> None:
    sim.drop_connections()
    await eventually(lambda: ing.connections[0].connection_number >= 2, 10, what="reconnected")
    await bars_close(sim, 5)  # meanwhile; the new connection must not leave holes
    await run_until_healthy(ing, store, sim, source_rows)
    subs = subscriptions(sim)
    assert len(subs) >= 2
    for conn, topics in subs.items():
        assert len(topics) == len(set(topics)), f"connection {conn} subscribed a topic twice: {topics}"
    assert not [e for e in sim.subscribe_log if not e[3]], "no failed (e.g. already subscribed) acks"
    assert (
        sample(ing.metrics, RECONNECTS, reason="connection_lost")
        + sample(ing.metrics, RECONNECTS, reason="server_closed")
        >= 1
    )


async def test_stall_is_detected_and_the_book_is_not_served_meanwhile(
    ing: Ingestor,
    sim: ExchangeSimulator,
    store: RedisStore,
    source_rows: dict,  # type: ignore[type-arg]
) -> None:
    sim.stall(4.0)
    await eventually(lambda: ing.books[SYMBOL].state.value != "READY", 5, what="stall noticed")

    async def published_not_ready() -> bool:
        w = await windows(store)
        return w.book is not None and w.book.state != "READY"

    await eventually(published_not_ready, 5, what="store says the book is not READY")
    reasons = {r: sample(ing.metrics, RECONNECTS, reason=r) for r in ("silence", "pong_timeout")}
    assert sum(reasons.values()) >= 1, reasons
    # Operators see the silence keep growing while the feed is down, not the age when it dropped.
    book_age = ("candlecast_ingest_last_message_age_seconds", {"topic": f"orderbook.50.{SYMBOL}"})
    await eventually(lambda: (ing.metrics.registry.get_sample_value(*book_age) or 0) > 2.5, 3, what="age grows")
    await run_until_healthy(ing, store, sim, source_rows)
    assert (ing.metrics.registry.get_sample_value(*book_age) or 99) < 1.5


async def test_u_gap_invalidates_and_resyncs_the_book(
    sim: ExchangeSimulator, store: RedisStore, source_rows: dict
) -> None:  # type: ignore[type-arg]
    ing = make_ingestor(sim, store)
    published: list[tuple[str, int]] = []
    put_book = ing.writer.put_book

    def spy(symbol: str, depth: int, status):  # type: ignore[no-untyped-def]
        published.append((status.state, status.u))
        put_book(symbol, depth, status)

    ing.writer.put_book = spy  # type: ignore[method-assign]
    async with running(ing):
        await run_until_healthy(ing, store, sim, source_rows)
        sim.skip_u(SYMBOL)
        await eventually(
            lambda: sample(ing.metrics, BOOK_RESYNCS, reason="u_gap") == 1,
            5,
            what="gap detected",
        )
        await eventually(lambda: ing.books[SYMBOL].ready, 5, what="book READY again after resync")
        await run_until_healthy(ing, store, sim, source_rows)
        # unsubscribe + subscribe of the book topic on the same connection, no reconnect
        ops = [(c, op) for c, op, args, ok in sim.subscribe_log if args == [f"orderbook.50.{SYMBOL}"]]
        assert ops == [(1, "unsubscribe"), (1, "subscribe")]
        assert ing.connections[0].connection_number == 1
        # what was published around the gap: READY states have contiguous-or-snapshot u, the INVALID one
        # came before any further READY
        states = [s for s, _ in published]
        i = states.index("INVALID")
        assert "READY" in states[i:]


async def test_malformed_frame_is_counted_and_changes_nothing(
    ing: Ingestor,
    sim: ExchangeSimulator,
    store: RedisStore,
    source_rows: dict,  # type: ignore[type-arg]
) -> None:
    sim.send_malformed()
    sim.send_malformed(
        '{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1,"data":{"s":"BTCUSDT","b":'
        '[["abc","1"]],"a":[],"u":5,"seq":1}}'
    )
    sim.send_malformed('{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":[]}')
    await eventually(lambda: sample(ing.metrics, MESSAGES, type="malformed") == 2, 5)
    await eventually(lambda: sample(ing.metrics, MESSAGES, type="unknown_topic") == 1, 5)
    await run_until_healthy(ing, store, sim, source_rows)
    assert ing.connections[0].connection_number == 1
    assert ing.books[SYMBOL].ready


def confirmed_kline(start: int, ts: int) -> dict[str, object]:
    """A closed 1m kline item as Bybit pushes it, at ``start``, stamped ``ts``."""
    fields = ("open", "close", "high", "low", "volume", "turnover")
    return {
        "start": start,
        "end": start + 59_999,
        "interval": "1",
        **dict.fromkeys(fields, "1"),
        "confirm": True,
        "timestamp": ts,
    }


async def test_a_frame_from_the_future_is_quarantined_and_the_window_keeps_moving(
    ing: Ingestor,
    sim: ExchangeSimulator,
    store: RedisStore,
    source_rows: dict,  # type: ignore[type-arg]
) -> None:
    """A confirmed kline stamped 30 days ahead used to top the window for good (no later bar could
    follow it) and move every clock that read it; a future book snapshot froze the depth window."""
    await run_until_healthy(ing, store, sim, source_rows)
    ahead = int(time.time() * 1000) + 30 * 86_400_000
    start = ahead - ahead % 60_000 - 60_000
    bar = confirmed_kline(start, ahead)
    sim.send_malformed(
        orjson.dumps({"topic": f"kline.1.{SYMBOL}", "type": "snapshot", "ts": ahead, "data": [bar]}).decode()
    )
    book = {"s": SYMBOL, "b": [["1", "1"]], "a": [["2", "1"]], "u": 1, "seq": 1}
    sim.send_malformed(
        orjson.dumps({"topic": f"orderbook.50.{SYMBOL}", "type": "snapshot", "ts": ahead, "data": book}).decode()
    )
    await eventually(lambda: sample(ing.metrics, MESSAGES, type="future") == 2, 5)
    assert ing.clock.now_ms() < ahead - 86_400_000  # the exchange clock did not move
    w = await windows(store)
    assert all(b.start < start for b in w.bars["1"])  # the window never held it
    await run_until_healthy(ing, store, sim, source_rows)  # and it goes on taking the real bars
    assert ing.books[SYMBOL].ready


async def test_a_revised_closed_bar_is_a_hole_reconciled_from_rest_and_counted(
    ing: Ingestor,
    sim: ExchangeSimulator,
    store: RedisStore,
    source_rows: dict,  # type: ignore[type-arg]
) -> None:
    """A closed bar pushed again with other values is not kept with a warning: the window is marked
    (the worker signals nothing from it), REST's record replaces it, and the mark is cleared."""
    await run_until_healthy(ing, store, sim, source_rows)
    old = (await windows(store)).bars["1"][-3]
    now = sim.clock.now_ms()
    revised = confirmed_kline(old.start, now)  # every price "1": not what the exchange recorded
    frame = {"topic": "kline.1.BTCUSDT", "type": "snapshot", "ts": now, "data": [revised]}
    sim.send_malformed(orjson.dumps(frame).decode())
    await eventually(lambda: sample(ing.metrics, GAPS_FOUND, trigger="revised") == 1, 10)
    assert sample(ing.metrics, "candlecast_ingest_bars_revised_total") >= 1

    async def cleared() -> bool:
        return (await windows(store)).status.get(revised_field("1")) == ""

    await eventually(cleared, 10, what="the revised mark cleared after the REST reconcile")
    await run_until_healthy(ing, store, sim, source_rows)  # the bar equals the CSV again
    assert sample(ing.metrics, GAPS_FOUND, trigger="revised") == 1  # REST's repair is not another gap


async def test_a_window_a_reader_found_damaged_is_rebuilt_from_rest(
    ing: Ingestor,
    sim: ExchangeSimulator,
    store: RedisStore,
    redis_url: str,
    source_rows: dict,  # type: ignore[type-arg]
) -> None:
    """`ZADD <1m window> 1000 'garbage|secret'` and a damaged member at a bar's own score: the
    worker asks for a repair (store.request_repair); the ingestor rebuilds the window from REST,
    the damaged members go, and every bar equals the exchange's record again."""
    await run_until_healthy(ing, store, sim, source_rows)
    key = store.keys.kline(SYMBOL, "1")
    victim = (await windows(store)).bars["1"][-5].start
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await raw.zadd(key, {"garbage|secret": 1000, "also|garbage": victim})
        assert (await windows(store)).corrupt == {"1"}
        await store.request_repair(SYMBOL, "1")
        await eventually(lambda: sample(ing.metrics, GAPS_FOUND, trigger="corrupt") == 1, 10)

        async def repaired() -> bool:
            return not (await windows(store)).corrupt

        await eventually(repaired, 10, what="the damaged members removed by the REST rebuild")
        await run_until_healthy(ing, store, sim, source_rows)
        assert await raw.zrangebyscore(key, 0, 1000) == []
    finally:
        await raw.aclose()


async def test_a_catch_up_backfills_the_coarser_windows_before_the_finest(
    ing: Ingestor,
    sim: ExchangeSimulator,
    store: RedisStore,
    source_rows: dict,  # type: ignore[type-arg]
) -> None:
    """The finest bars of a catch-up announce signals; the windows those signals read from coarser
    bars are backfilled first (else: stale_window fallbacks). Start-up here; a reconnect asks in the
    same order (Ingestor._catch_up_order)."""
    await run_until_healthy(ing, store, sim, source_rows)
    assert [iv for s, iv in list(sim.rest_log)[:4] if s == SYMBOL] == ["60", "15", "5", "1"]


async def test_failed_subscribe_ack_is_surfaced_not_retried(sim: ExchangeSimulator, store: RedisStore) -> None:
    sim.fail_subscribe(f"orderbook.50.{SYMBOL}")
    async with running(make_ingestor(sim, store)) as ing:
        await eventually(
            lambda: sample(ing.metrics, SUBSCRIBE_FAILURES, reason="handler_not_found") == 1,
            5,
        )

        async def surfaced() -> bool:
            w = await windows(store)
            return (
                w.book is not None
                and w.book.state == "INVALID"
                and "subscribe failed" in w.book.reason
                and "failed" in w.status.get(f"subscribe:orderbook.50.{SYMBOL}", "")
                and len(w.bars["1"]) == WINDOW
            )

        await eventually(surfaced, 15, what="failure surfaced in the store while klines keep flowing")
        await asyncio.sleep(2.0)  # longer than the book silence threshold: no reconnect loop
        assert ing.connections[0].connection_number == 1
        assert sample(ing.metrics, SUBSCRIBE_FAILURES, reason="handler_not_found") == 1


@pytest.mark.parametrize("kind", ["retcode", "http500", "http403"])
async def test_rest_errors_are_retried_and_windows_complete(
    sim: ExchangeSimulator,
    store: RedisStore,
    source_rows: dict,
    kind: str,  # type: ignore[type-arg]
) -> None:
    sim.fail_rest(kind, count=3)  # type: ignore[arg-type]
    async with running(make_ingestor(sim, store)) as ing:
        outcome = "banned" if kind == "http403" else "retryable"
        await eventually(lambda: sample(ing.metrics, REST_REQUESTS, outcome=outcome) >= 1, 5)
        if kind == "http403":
            assert ing.rest.banned

            async def ban_surfaced() -> bool:
                status = (await windows(store)).status
                return any(v.startswith("paused: ") for k, v in status.items() if k.startswith("backfill:"))

            await eventually(ban_surfaced, 5, what="the REST ban is visible in the symbol status")
        await run_until_healthy(ing, store, sim, source_rows)


async def test_restart_keeps_windows_and_fills_what_was_missed(
    sim: ExchangeSimulator, store: RedisStore, source_rows: dict
) -> None:  # type: ignore[type-arg]
    async with running(make_ingestor(sim, store)) as first:
        await run_until_healthy(first, store, sim, source_rows)
    before = await windows(store)
    await bars_close(sim, 10)  # while no ingestor runs
    async with running(make_ingestor(sim, store)) as second:
        assert second.newest[(SYMBOL, "1")] == before.bars["1"][-1].start  # loaded from the store
        await run_until_healthy(second, store, sim, source_rows)
        after = await windows(store)
        assert after.bars["1"][-1].start >= before.bars["1"][-1].start + 5 * 60_000
        assert sample(second.metrics, GAPS_FOUND, trigger="startup") >= 1


async def test_redis_restart_mid_run_loses_nothing(
    sim: ExchangeSimulator, own_redis: RedisServer, source_rows: dict
) -> None:  # type: ignore[type-arg]
    store = RedisStore.from_url(own_redis.url, window_bars=WINDOW, depth_rows=50)
    try:
        async with running(make_ingestor(sim, store)) as ing:
            await run_until_healthy(ing, store, sim, source_rows)
            before = ing.writer.stored_newest
            own_redis.stop()
            await eventually(lambda: not ing.writer.healthy, 5, what="outage noticed")
            await bars_close(sim, 10)  # during the outage
            own_redis.start()
            await eventually(lambda: ing.writer.healthy, 10, what="store back")
            await run_until_healthy(ing, store, sim, source_rows)
            # The closes written just before the outage are announced again (a failed-over node may
            # have lost them, or the signals they led to): each is in the stream twice now.
            announced = Counter((e.symbol, e.interval, e.start) for _, e in await store.read_events(count=100_000))
            finest = [(s, iv, start) for (s, iv), start in before.items() if iv == "1"]
            assert finest and all(announced[key] >= 2 for key in finest)
    finally:
        await store.close()


async def test_topics_shard_over_connections_and_unknown_symbols_surface(store: RedisStore, bybit_btc_1m: Path) -> None:
    eth = bybit_btc_1m.with_name("bybit_linear_ETHUSDT_1m.csv.gz")
    config = SimulatorConfig(sources=[bybit_btc_1m, eth], speed=600.0, start_offset_bars=WINDOW * 60 + 120)
    async with ExchangeSimulator(config) as sim:
        symbols = ("BTCUSDT", "ETHUSDT", "NOPEUSDT")
        async with running(make_ingestor(sim, store, symbols=symbols, symbols_per_connection=1)) as ing:
            assert len(ing.connections) == 3
            await eventually(lambda: ing.books["BTCUSDT"].ready and ing.books["ETHUSDT"].ready, 10)

            async def nope_surfaced() -> bool:
                w = await store.read_symbol("NOPEUSDT", INTERVALS, 50)
                failed = [k for k, v in w.status.items() if k.startswith("subscribe:") and v.startswith("failed")]
                rejected = [k for k, v in w.status.items() if k.startswith("backfill:") and v.startswith("rejected")]
                return len(failed) == 5 and len(rejected) == 4 and not any(w.bars.values())

            await eventually(nope_surfaced, 10, what="unknown symbol: failed subscriptions and rejected backfill")
            subs = subscriptions(sim)
            by_symbol = {frozenset(t.rsplit(".", 1)[1] for t in topics) for topics in subs.values()}
            assert by_symbol == {frozenset({"BTCUSDT"}), frozenset({"ETHUSDT"})}
            eth_w = await store.read_symbol("ETHUSDT", INTERVALS, 50)
            assert all(len(eth_w.bars[iv]) == WINDOW for iv in INTERVALS)
            assert all(c.connection_number == 1 for c in ing.connections)
            # the unknown symbol's windows never fill, and operators see exactly those as incomplete
            await eventually(lambda: incomplete_windows(ing) == dict.fromkeys(INTERVALS, 1), 5, what="one per interval")


async def test_future_or_misaligned_closed_bars_never_enter_a_window(
    ing: Ingestor,
    sim: ExchangeSimulator,
    store: RedisStore,
    source_rows: dict,  # type: ignore[type-arg]
) -> None:
    now = sim.clock.now_ms()
    step = 60_000
    aligned_future = now - now % step + 10 * step
    for start in (aligned_future, now - now % step - 2 * step + 7):
        bar = confirmed_kline(start, now)
        frame = {"topic": "kline.1.BTCUSDT", "type": "snapshot", "ts": now, "data": [bar]}
        sim.send_malformed(orjson.dumps(frame).decode())
    await eventually(lambda: sample(ing.metrics, MESSAGES, type="malformed") == 2, 5)
    await run_until_healthy(ing, store, sim, source_rows)  # every bar still equals the CSV
    w = await windows(store)
    assert all(b.start % step == 0 and b.start < aligned_future for b in w.bars["1"])


async def test_repeated_gaps_are_resynced_with_spacing_not_a_storm(
    ing: Ingestor,
    sim: ExchangeSimulator,
    store: RedisStore,
    source_rows: dict,  # type: ignore[type-arg]
) -> None:
    for _ in range(30):  # a gap every 50 ms for 1.5 s
        sim.skip_u(SYMBOL)
        await asyncio.sleep(0.05)
    unsubscribes = [e for e in sim.subscribe_log if e[1] == "unsubscribe"]
    assert 1 <= len(unsubscribes) <= 5, len(unsubscribes)  # spaced >= 0.5 s apart
    await run_until_healthy(ing, store, sim, source_rows)
    assert ing.books[SYMBOL].ready
