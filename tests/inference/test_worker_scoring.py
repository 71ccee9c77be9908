"""The worker scores every served signal once its horizon has passed, on a real Redis: exactly once
per (symbol, bar) whoever scores it, never guessed across a hole, and never at a signal's expense."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from inference.components import ModelSet
from inference.manifest import EnsembleSpec
from inference.metrics import WorkerMetrics
from inference.score_store import MemoryScoreStore, RedisScoreStore, ScoreStore
from inference.scorer import Scorer, model_record
from inference.signal import BarRef, Signal
from inference.signal_store import MemorySignalStore, RedisSignalStore, SignalStore
from service.bench import sample_signal
from streaming.redis_store import RedisStore
from streaming.store import WriteBatch
from tests.helpers import eventually
from tests.inference.kit import MINUTE, T0, artifacts, bar, closing, history, model_cache, running_worker

pytestmark = pytest.mark.timeout(60)

SYMBOL = "BTCUSDT"


@pytest.fixture
def models(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    return artifacts(model_cache(tmp_path_factory), tmp_path / "artifacts", tcn=("1",), image=())


async def test_each_served_signal_is_scored_once_its_horizon_has_passed(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    close = T0 + 60 * MINUTE
    await redis_store.write(history(close - MINUTE, {"1": 60, "5": 60}))
    async with running_worker(redis_url, redis_store, models) as h:
        starts = [close - MINUTE + k * MINUTE for k in range(5)]
        for k, start in enumerate(starts):
            await redis_store.write(closing(start + MINUTE, ("1", "5")))
            assert isinstance(await h.outcome(SYMBOL, start), Signal), k

        # the signal at each bar but the newest is scored against the next bar's close, once
        await eventually(lambda: _count(h.scores, 4), 5, what="four scores")
        scores = await h.scores.recent(SYMBOL, 100)
        assert [s.start for s in scores] == starts[:4]
        for s in scores:
            now, after = bar(s.start), bar(s.start + MINUTE)
            assert s.scored and s.log_return == pytest.approx(math.log(float(after.close) / float(now.close)))
        served = {s.bar.start: s for s in await h.signals.history(SYMBOL, 10)}
        assert all(served[s.start].p_up == s.p_up and served[s.start].direction == s.direction for s in scores)
        outcomes = ("hit", "miss", "flat", "unmoved", "unscored")
        assert sum(h.sample("candlecast_signals_scored_total", outcome=o) for o in outcomes) == 4

        # each signal carries the track record as of the scores before it
        assert served[starts[0]].track_record is None  # nothing scored yet when it was made
        carried = served[starts[4]].track_record
        assert carried is not None and carried.n == 3 and carried.as_of_bar == starts[2]
        track = await h.scores.track(SYMBOL)
        assert track is not None and track.n == 4 and track.as_of_bar == starts[3]

        # the models that made them are recorded once, for the API to compare against
        models_id = served[starts[0]].models
        assert len(models_id) == 12
        record = await h.scores.models_record(models_id)
        assert record is not None and record["models"] == models_id and "validation" in record


async def _count(scores: ScoreStore, n: int) -> bool:
    return len(await scores.recent(SYMBOL, 100)) >= n


async def test_a_hole_leaves_a_signal_unscored_with_the_reason(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    close = T0 + 60 * MINUTE
    await redis_store.write(history(close - MINUTE, {"1": 60, "5": 60}))
    async with running_worker(redis_url, redis_store, models) as h:
        await redis_store.write(closing(close, ("1", "5")))
        assert isinstance(await h.outcome(SYMBOL, close - MINUTE), Signal)
        # the next 1m bar never comes; the ones after do (the window now has a hole)
        await redis_store.write(closing(close + 2 * MINUTE, ("1",)))
        await h.outcome(SYMBOL, close + MINUTE)
        assert await h.scores.recent(SYMBOL, 10) == []  # not yet: REST may still repair the window
        for k in range(3, 8):  # the hole stays: after five minutes it is recorded, once
            await redis_store.write(closing(close + k * MINUTE, ("1",)))
            await h.outcome(SYMBOL, close + (k - 1) * MINUTE)
        await eventually(lambda: _count(h.scores, 1), 5, what="the hole's record")
        [score] = await h.scores.recent(SYMBOL, 10)
        assert (score.start, score.reason, score.log_return) == (close - MINUTE, "missing_closing_bar", None)
        assert h.sample("candlecast_signals_scored_total", outcome="unscored") == 1


@pytest.fixture(params=["redis", "memory"])
async def stores(
    request: pytest.FixtureRequest, redis_url: str, redis_store: RedisStore
) -> AsyncIterator[tuple[SignalStore, ScoreStore, ScoreStore]]:
    """A signal store, and the score store as two workers see it (two connections to one Redis)."""
    if request.param == "memory":
        scores = MemoryScoreStore()
        yield MemorySignalStore(), scores, scores
        return
    a = aioredis.Redis.from_url(redis_url)
    b = aioredis.Redis.from_url(redis_url)
    p = redis_store.prefix
    try:
        yield RedisSignalStore(a, prefix=p), RedisScoreStore(a, prefix=p), RedisScoreStore(b, prefix=p)
    finally:
        await a.aclose()
        await b.aclose()


async def test_two_workers_scoring_at_once_store_each_signal_once(
    stores: tuple[SignalStore, ScoreStore, ScoreStore],
) -> None:
    signals, mine, theirs = stores
    bars = [bar(T0 + i * MINUTE) for i in range(40)]
    for b in bars[20:30]:
        await signals.publish(replace(sample_signal(b.start), horizon_minutes=1, models="m" * 12))
    metrics = WorkerMetrics(CollectorRegistry())
    a = Scorer(signals, mine, metrics, horizon_minutes=1)
    b = Scorer(signals, theirs, metrics, horizon_minutes=1)
    stored = await asyncio.gather(*(s.after(SYMBOL, bars[:31], ModelSet()) for s in (a, b, a, b)))
    assert sum(stored) == 10
    assert [s.start for s in await mine.recent(SYMBOL, 100)] == [b.start for b in bars[20:30]]
    assert await a.after(SYMBOL, bars[:31], ModelSet()) == 0  # a re-delivered event scores nothing twice


async def test_a_redis_outage_while_scoring_is_logged_and_counted(redis_store: RedisStore) -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)  # nothing listens on port 1
    signals = MemorySignalStore()
    await signals.publish(replace(sample_signal(T0), horizon_minutes=1))
    metrics = WorkerMetrics(CollectorRegistry())
    scorer = Scorer(signals, RedisScoreStore(dead, prefix=redis_store.prefix), metrics, horizon_minutes=1)
    bars = [bar(T0 + i * MINUTE) for i in range(3)]
    assert await scorer.after(SYMBOL, bars, ModelSet()) == 0  # no exception: logged and counted
    assert metrics.registry.get_sample_value("candlecast_scoring_errors_total") == 1
    await dead.aclose()


def test_the_model_record_carries_the_manifests_validation_figures_and_drift() -> None:
    from inference.components import load_model_set
    from tests.conftest import ARTIFACTS

    shipped = load_model_set(ARTIFACTS, prefer_gpu=False, threads=1)
    record = model_record(shipped)
    assert record["models"] == shipped.digest[:12]
    held = shipped.ensemble.fitted["calibration_half"] if shipped.ensemble else {}
    assert record["validation"]["signal"]["accuracy_moved"] == held["accuracy_moved"]
    # the stacker's components: every shipped one but the ladder's GPU rungs (their B0s fill the slots)
    # and those off by default (the heatmap CNN: no stacker weight, no validation figure of the stack)
    stacked = {c.spec.name for c in shipped.components if not c.spec.stands_in_for and not c.spec.opt_in}
    assert set(record["validation"]["components"]) == stacked


async def test_a_signal_published_after_the_next_close_was_scored_is_still_scored(redis_store: RedisStore) -> None:
    """Worker A computes bar t from a window without t+1; worker B handles t+1 and reads the audit
    stream before A has published t. A, scoring after its publish, must find t+1 (a fresh read)."""
    bars = [bar(T0 + i * MINUTE) for i in range(12)]
    await redis_store.write(WriteBatch(bars={(SYMBOL, "1"): bars}))
    signals, scores = MemorySignalStore(), MemoryScoreStore()
    for b in bars[:10]:
        await signals.publish(replace(sample_signal(b.start), horizon_minutes=1))
    metrics = WorkerMetrics(CollectorRegistry())
    a = Scorer(signals, scores, metrics, horizon_minutes=1)
    b_ = Scorer(signals, scores, metrics, horizon_minutes=1)
    t = bars[10].start
    assert await b_.after(SYMBOL, bars[:12], ModelSet()) == 10  # B at t+1: t is not published yet
    await signals.publish(replace(sample_signal(t), horizon_minutes=1))  # A publishes t
    newer = functools.partial(redis_store.bars_after, SYMBOL, "1")
    assert await a.after(SYMBOL, bars[:11], ModelSet(), newer) == 1  # A's window ends at t; t+1 is read
    assert [s.start for s in await scores.recent(SYMBOL, 100)][-1] == t


async def test_garbage_in_the_track_record_costs_no_signal(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    close = T0 + 60 * MINUTE
    await redis_store.write(history(close - MINUTE, {"1": 60, "5": 60}))
    async with running_worker(redis_url, redis_store, models) as h:
        await h.client.lpush(h.scores.keys.track(SYMBOL), b"\xff\xfe", b"1|x|won", b"")
        await redis_store.write(closing(close, ("1", "5")))
        s = await h.outcome(SYMBOL, close - MINUTE)
        assert isinstance(s, Signal) and s.track_record is not None and s.track_record.n == 0


async def test_odd_audit_entries_are_skipped_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    """Whatever sits in the audit stream (another symbol's signal, a coarser bar than the horizon, a
    horizon of 0) is skipped with a warning; the good signals beside it are scored."""
    signals, scores = MemorySignalStore(), MemoryScoreStore()
    bars = [bar(T0 + i * MINUTE) for i in range(20)]
    good = replace(sample_signal(bars[10].start), horizon_minutes=1)
    odd = [
        replace(sample_signal(bars[5].start), horizon_minutes=1, bar=BarRef("5", bars[5].start, bars[10].start)),
        replace(sample_signal(bars[6].start), horizon_minutes=0),
    ]
    for s in [*odd, good]:
        await signals.publish(s)
    await signals.publish(replace(sample_signal(bars[11].start, "ETHUSDT"), horizon_minutes=1))
    metrics = WorkerMetrics(CollectorRegistry())
    scorer = Scorer(signals, scores, metrics, horizon_minutes=1)
    with caplog.at_level(logging.WARNING, logger="inference.scorer"):
        assert await scorer.after(SYMBOL, bars, ModelSet()) == 1
    assert [s.start for s in await scores.recent(SYMBOL, 10)] == [good.bar.start]
    assert await scores.recent("ETHUSDT", 10) == []  # not scored on BTCUSDT's bars
    assert caplog.text.count("cannot be scored") == 2


def test_a_model_record_is_built_from_whatever_the_fitted_section_holds() -> None:
    for fitted in ({"calibration_half": None, "components": [1, 2]}, {"calibration_half": "x"}, {}):
        spec = EnsembleSpec(1, {"tcn_1m": 1.0}, 0.0, {"method": "platt", "a": 1.0, "b": 0.0}, 0.55, fitted=fitted)
        record = model_record(ModelSet(digest="ab" * 32, ensemble=spec))
        assert record["validation"]["components"] == {} and record["models"] == "ab" * 6
