"""Bad input and faults: each ends in a correct signal, a correct fallback, or a recorded "no signal"
reason — never a crash, never a vote on bad data."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from inference.runtime import CPU
from inference.signal import NoSignal, Signal
from streaming.errors import StoreError
from streaming.klines import encode_bar
from streaming.redis_store import RedisStore
from streaming.store import WriteBatch, revised_field
from tests.helpers import eventually
from tests.inference.kit import (
    MINUTE,
    T0,
    Harness,
    VanishingGpu,
    artifacts,
    bar,
    closing,
    exploding_tcn,
    history,
    model_cache,
    running_worker,
    window,
)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)

SYMBOL = "BTCUSDT"
CLOSE = T0 + 60 * MINUTE  # the bar under test starts at CLOSE - 1m; 1m and 5m both close at CLOSE
ALL = ("tcn_1m", "tcn_5m", "efficientnet_1m", "efficientnet_5m")


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_cache(tmp_path_factory)


@pytest.fixture
def models(cache: Path, tmp_path: Path) -> Path:
    return artifacts(cache, tmp_path / "artifacts", tcn=("1", "5"), image=("1", "5"))


def with_bar(bars: WriteBatch, interval: str, back: int, **override: str) -> WriteBatch:
    """Replace the bar ``back`` bars before the newest of ``interval`` with an altered one."""
    series = bars.bars[(SYMBOL, interval)]
    old = series[-1 - back]
    series[-1 - back] = bar(old.start, interval, SYMBOL, **override)
    return bars


def status(s: Signal) -> dict[str, tuple[str, str | None]]:
    return {c.name: (c.status, c.reason) for c in s.components}


def only_5m_dropped(reason: str) -> dict[str, tuple[str, str | None]]:
    """Every component's (status, reason) when the 5m window alone is refused for ``reason``."""
    return {
        "tcn_1m": ("voted", None),
        "tcn_5m": ("dropped", reason),
        "efficientnet_1m": ("voted", None),
        "efficientnet_5m": ("dropped", reason),
    }


async def outcome_of(h: Harness, store: RedisStore, batch: WriteBatch) -> Signal | NoSignal:
    """Write the windows up to CLOSE (the last write carries the 1m event), return what came of it."""
    await store.write(batch)
    return await h.outcome(SYMBOL, CLOSE - MINUTE)


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        # 21 bars of 1m and 20 of 1h: too short for every model, enough for the rule's 15 hours.
        ("short_1m_no_5m", ("fallback", "all_components_dropped: empty_window, short_window")),
        # 3 bars of 1m and 3 of 1h: not even the rule can run.
        ("three_bars", ("none", "fallback_input:short_window")),
        # NaN close in the newest 1m bar: the 1m components drop out, the 5m ones vote.
        ("nan_newest_1m", ("ensemble", {"tcn_1m": "bad_values", "efficientnet_1m": "bad_values"})),
        # A zero price 30 bars back: inside the TCN's 49-bar window, outside the image's 24.
        ("zero_price_30_back", ("ensemble", {"tcn_1m": "bad_values"})),
        # NaN in the 1m window, no 5m window: nothing votes, and the rule refuses a NaN in its 1h input.
        ("nan_1m_no_5m", ("none", "fallback_input:bad_values")),
        # Nothing votes and there are no 1h bars: the rule has no input either.
        ("no_1h", ("none", "fallback_input:empty_window")),
        # Zero volume is a quiet market, not bad data: everyone votes.
        ("zero_volume", ("ensemble", {})),
        # A hole in the 1m window.
        ("holed_1m", ("ensemble", {"tcn_1m": "holed_window", "efficientnet_1m": "holed_window"})),
    ],
)
async def test_bad_windows(
    case: str, expect: tuple[str, object], redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    def full() -> WriteBatch:
        return history(CLOSE, {"1": 60, "5": 60})

    batch = {
        "short_1m_no_5m": history(CLOSE, {"1": 21, "60": 20}),
        "three_bars": history(CLOSE, {"1": 3, "60": 3}),
        "nan_newest_1m": with_bar(full(), "1", 0, close="NaN"),
        "zero_price_30_back": with_bar(full(), "1", 30, open="0", low="0"),
        "nan_1m_no_5m": with_bar(
            with_bar(history(CLOSE, {"1": 60, "60": 20}), "1", 2, high="NaN"), "60", 2, high="NaN"
        ),
        "no_1h": history(CLOSE, {"1": 21}),
        "zero_volume": with_bar(full(), "1", 0, volume="0"),
        "holed_1m": WriteBatch(bars=full().bars | {(SYMBOL, "1"): window("1", CLOSE, 60)[:50] + window("1", CLOSE, 9)}),
    }[case]
    async with running_worker(redis_url, redis_store, models) as h:
        result = await outcome_of(h, redis_store, batch)
        kind, detail = expect
        if kind == "none":
            assert isinstance(result, NoSignal), result
            assert result.reason == detail
            assert h.sample("candlecast_no_signals_total", reason=str(detail)) == 1
            assert await h.signals.latest(SYMBOL) is None  # nothing invented
            return
        assert isinstance(result, Signal)
        assert result.source == kind
        if kind == "fallback":
            assert result.fallback_reason == detail
            assert result.p_up is None and result.direction in ("long", "short", "flat")
            assert all(c.status == "dropped" for c in result.components)
            assert h.sample("candlecast_fallbacks_total", reason="all_components_dropped") == 1
        else:
            assert isinstance(detail, dict)
            expected = {name: ("dropped", detail[name]) if name in detail else ("voted", None) for name in ALL}
            assert status(result) == expected


async def test_missing_models_fall_back_to_the_rule(redis_url: str, redis_store: RedisStore, tmp_path: Path) -> None:
    async with running_worker(redis_url, redis_store, tmp_path / "no-artifacts") as h:
        result = await outcome_of(h, redis_store, history(CLOSE, {"1": 60, "5": 60, "60": 20}))
        assert isinstance(result, Signal)
        assert (result.source, result.fallback_reason, result.components) == ("fallback", "models_missing", ())
        assert result.horizon == "log return over the next 1 min (momentum rule on 1h closes)"
        # no probability, so no edge: the rule's call is never marked tradeable; its cost and the
        # EWMA volatility of the 1m closes are still stated, at the bar's close price
        assert (result.horizon_minutes, result.edge_bp, result.tradeable, result.cost_bp) == (1, None, False, 11.0)
        assert result.volatility_bp is not None and result.volatility_bp > 0
        assert result.reference_price is not None and result.reference_price > 0
        assert h.sample("candlecast_fallbacks_total", reason="models_missing") == 1


async def test_a_corrupt_artifact_disables_its_components_and_the_rest_vote(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    image = models / "efficientnet.onnx"
    image.write_bytes(image.read_bytes()[:1000])  # e.g. a partial copy
    async with running_worker(redis_url, redis_store, models) as h:
        result = await outcome_of(h, redis_store, history(CLOSE, {"1": 60, "5": 60}))
        assert isinstance(result, Signal) and result.source == "ensemble"
        assert status(result) == {
            "tcn_1m": ("voted", None),
            "tcn_5m": ("voted", None),
            "efficientnet_1m": ("dropped", "artifact_checksum"),
            "efficientnet_5m": ("dropped", "artifact_checksum"),
        }
        assert {c.provider for c in result.components if c.status == "dropped"} == {""}
        assert h.sample("candlecast_components_enabled", component="efficientnet_1m") == 0


async def test_a_session_that_raises_at_run_is_dropped_as_error_and_the_worker_goes_on(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    exploding_tcn(models / "tcn_1m.onnx")  # loads and warms up on zeros; raises on real inputs
    manifest = json.loads((models / "manifest.json").read_text())
    from inference.manifest import sha256_file

    for c in manifest["components"]:
        if c["name"] == "tcn_1m":
            c["sha256"] = sha256_file(models / "tcn_1m.onnx")
    (models / "manifest.json").write_text(json.dumps(manifest))

    async with running_worker(redis_url, redis_store, models) as h:
        for k in range(3):  # three closes in a row: the worker survives every failure
            await redis_store.write(history(CLOSE + k * MINUTE, {"1": 60, "5": 60}))
            result = await h.outcome(SYMBOL, CLOSE + (k - 1) * MINUTE)
            assert isinstance(result, Signal) and result.source == "ensemble"
            assert status(result)["tcn_1m"] == ("dropped", "error")
            assert [s for n, (s, _) in status(result).items() if n != "tcn_1m"] == ["voted"] * 3
        assert h.sample("candlecast_components_dropped_total", component="tcn_1m", reason="error") == 3


async def test_a_gpu_that_disappears_moves_inference_to_the_cpu_and_no_vote_is_lost(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    gpu = VanishingGpu()
    async with running_worker(
        redis_url,
        redis_store,
        models,
        gpu=gpu,
    ) as h:
        result = await outcome_of(h, redis_store, history(CLOSE, {"1": 60, "5": 60}))
        assert isinstance(result, Signal) and result.source == "ensemble"
        assert {c.provider for c in result.components} == {"CUDAExecutionProvider"}
        assert gpu.built_on_cpu == 0
        assert h.sample("candlecast_inference_provider", component="tcn_1m", provider="CUDAExecutionProvider") == 1

        gpu.lost = True  # the device falls off the bus between two closes
        await redis_store.write(history(CLOSE + MINUTE, {"1": 60, "5": 60}))
        result = await h.outcome(SYMBOL, CLOSE)
        assert isinstance(result, Signal) and result.source == "ensemble"
        assert status(result) == dict.fromkeys(ALL, ("voted", None))  # rebuilt on the CPU and retried
        assert {c.provider for c in result.components} == {CPU}
        assert gpu.built_on_cpu == 3  # one per ONNX session: two TCNs and the EfficientNet both image parts share
        for component in ALL:
            assert h.sample("candlecast_inference_provider", component=component, provider=CPU) == 1
            assert h.sample("candlecast_inference_provider", component=component, provider="CUDAExecutionProvider") == 0
        assert h.sample("candlecast_components_dropped_total", component="tcn_1m", reason="error") == 0

        await redis_store.write(history(CLOSE + 2 * MINUTE, {"1": 60, "5": 60}))
        result = await h.outcome(SYMBOL, CLOSE + MINUTE)
        assert isinstance(result, Signal) and {c.provider for c in result.components} == {CPU}
        assert gpu.built_on_cpu == 3  # it stays on the CPU: no rebuild per signal


async def test_unreadable_events_are_skipped_and_a_symbol_without_windows_gets_a_reason(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    async with running_worker(redis_url, redis_store, models) as h:
        await h.client.xadd(redis_store.keys.bar_events, {"garbage": "1"})
        await h.client.xadd(redis_store.keys.bar_events, {"symbol": "NOPEUSDT", "interval": "1", "start": str(CLOSE)})
        result = await h.outcome("NOPEUSDT", CLOSE)
        assert isinstance(result, NoSignal) and result.reason == "fallback_input:empty_window"
        assert "no component voted (all_components_dropped: empty_window)" in result.detail
        assert h.sample("candlecast_worker_events_total", outcome="skipped") == 1


async def test_redis_lost_mid_signal_leaves_the_event_pending_until_it_returns(
    own_redis: RedisServer, models: Path
) -> None:
    """The worker is inside a signal (waiting for the 5m bar due at the close) when Redis stops. The
    event is not acknowledged; once Redis is back the worker handles it, once."""
    client = aioredis.Redis.from_url(own_redis.url, socket_timeout=2.0, socket_connect_timeout=0.5)
    store = RedisStore(client, prefix="cc", window_bars=128)
    await store.write(history(CLOSE - MINUTE, {"1": 60, "5": 60}))
    async with running_worker(own_redis.url, store, models, coarse_wait_ms=3000) as h:
        await store.write(closing(CLOSE, ("1",)))  # the 5m bar of this boundary is not there yet
        await eventually(h.holding, 5, what="the event delivered and in progress")
        await asyncio.to_thread(own_redis.stop)
        await eventually(
            lambda: h.sample("candlecast_worker_events_total", outcome="retry") >= 1, 10, what="the signal failed"
        )
        await asyncio.to_thread(own_redis.start)

        async def write_5m_bar() -> bool:
            try:
                await store.write(closing(CLOSE, ("5",)))
                return True
            except StoreError:  # a pooled connection that died with the old server
                return False

        await eventually(write_5m_bar, 10, what="Redis back")
        result = await h.outcome(SYMBOL, CLOSE - MINUTE, within=15)
        assert isinstance(result, Signal) and all(c.status == "voted" for c in result.components)
        assert [s.bar.start for s in await h.signals.history(SYMBOL)] == [CLOSE - MINUTE]  # once
        assert h.sample("candlecast_worker_events_total", outcome="published") == 1
    await store.close()


async def test_one_corrupt_record_costs_only_the_components_of_its_window_and_is_never_echoed(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    """`ZADD cc:{SYM}:kline:5 1000 'garbage|secret'` used to stop every signal of the symbol, and the
    API repeated the record in the no-signal detail."""
    batch = history(CLOSE - MINUTE, {"1": 60, "5": 60, "60": 20})
    await redis_store.write(batch)
    raw = aioredis.Redis.from_url(redis_url)
    await raw.zadd(redis_store.keys.kline(SYMBOL, "5"), {"garbage|secret": 1000})
    await raw.aclose()
    async with running_worker(redis_url, redis_store, models) as h:
        result = await outcome_of(h, redis_store, closing(CLOSE, ("1", "5")))
        assert isinstance(result, Signal) and result.source == "ensemble"
        status = {c.name: (c.status, c.reason) for c in result.components}
        assert status == only_5m_dropped("corrupt_window")
        assert "secret" not in result.to_json().decode()
    assert await redis_store.take_repairs() == [(SYMBOL, "5")]  # the ingestor is asked to rebuild it
    assert await redis_store.take_repairs() == []  # once


async def test_a_window_with_a_revised_bar_is_not_signalled_from_until_reconciled(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    """The store marks a window whose closed bar was rewritten (status ``revised:{iv}``, set in the
    same script); its components drop out, and the fallback refuses a marked 1h window, until the
    ingestor's REST reconcile clears the mark."""
    await redis_store.write(history(CLOSE - MINUTE, {"1": 60, "5": 60, "60": 20}))
    old = history(CLOSE - MINUTE, {"5": 60}).bars[(SYMBOL, "5")][-3]
    await redis_store.write(WriteBatch(bars={(SYMBOL, "5"): [old._replace(volume=old.volume + 1)]}))
    async with running_worker(redis_url, redis_store, models) as h:
        result = await outcome_of(h, redis_store, closing(CLOSE, ("1", "5")))
        assert isinstance(result, Signal) and result.source == "ensemble"
        status = {c.name: (c.status, c.reason) for c in result.components}
        assert status == only_5m_dropped("unreconciled_window")
        # every model window and the 1h window revised: no model, and not the rule either
        for iv in ("1", "60"):
            await redis_store.write(WriteBatch(status={SYMBOL: {revised_field(iv): "1"}}))
        await redis_store.write(closing(CLOSE + MINUTE, ("1",)))
        result = await h.outcome(SYMBOL, CLOSE)
        assert isinstance(result, NoSignal) and result.reason == "fallback_input:unreconciled_window"
        # reconciled (the ingestor clears the marks): signalled again
        fields = {revised_field(iv): "" for iv in ("1", "5", "60")}
        await redis_store.write(WriteBatch(status={SYMBOL: fields}))
        await redis_store.write(closing(CLOSE + 2 * MINUTE, ("1",)))
        result = await h.outcome(SYMBOL, CLOSE + MINUTE)
        assert isinstance(result, Signal)
        assert {c.name: c.reason for c in result.components} == dict.fromkeys(status)


async def test_a_backlog_is_signalled_bar_by_bar_in_bar_order(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    """Thirty bar events at once (a catch-up, a worker restart): one symbol's signals are computed
    one at a time, oldest first, each from the windows as of its own bar — not thirty at once
    competing for the same sessions, published in whatever order they finish."""
    await redis_store.write(history(CLOSE - 30 * MINUTE, {"1": 60, "5": 60, "60": 20}))
    async with running_worker(redis_url, redis_store, models) as h:
        await redis_store.write(history(CLOSE, {"1": 30, "5": 6}))  # 30 new 1m bars: 30 events
        last = await h.outcome(SYMBOL, CLOSE - MINUTE, within=30)
        assert isinstance(last, Signal)
        audit = await h.signals.history(SYMBOL, 100)
    starts = [s.bar.start for s in reversed(audit)]  # history is newest first
    assert starts == [CLOSE - (30 - k) * MINUTE for k in range(30)]
    for s in audit:
        assert s.freshness.last_bar_start["1"] == s.bar.start
        assert all(c.reason != "late" for c in s.components)


async def test_a_bar_left_without_a_signal_behind_a_newer_one_is_swept_up_once(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    """A Redis master that dies can take the writes it acknowledged last along: a bar-closed event, or
    a signal and its acknowledgement. Nothing is pending then, yet the window holds the bar. The
    worker's sweep finds it between published signals and handles it, once."""
    async with running_worker(redis_url, redis_store, models, sweep_every_s=0.1) as h:
        await redis_store.write(history(CLOSE, {"1": 60, "5": 60, "60": 20}))  # announces CLOSE - 1m
        assert isinstance(await h.outcome(SYMBOL, CLOSE - MINUTE), Signal)
        lost = bar(CLOSE, "1", SYMBOL)  # in the window, its event gone
        await h.client.zadd(redis_store.keys.kline(SYMBOL, "1"), {encode_bar(lost): lost.start})
        await redis_store.write(WriteBatch(bars={(SYMBOL, "1"): [bar(CLOSE + MINUTE, "1", SYMBOL)]}))
        assert isinstance(await h.outcome(SYMBOL, CLOSE + MINUTE), Signal)

        found = await h.outcome(SYMBOL, CLOSE)
        assert isinstance(found, Signal) and found.bar.close_time == CLOSE + MINUTE
        await asyncio.sleep(0.5)  # several sweeps later: handled once
        starts = [s.bar.start for s in await h.signals.history(SYMBOL, 10)]
        assert sorted(starts) == [CLOSE - MINUTE, CLOSE, CLOSE + MINUTE]
        assert h.sample("candlecast_worker_bars_swept_total") == 1
