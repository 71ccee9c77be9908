"""The live track record equals the backtest: real Bybit bars after the models' test cut replayed
through ``candlecast run --replay`` (simulator → ingestor → Redis → worker with the shipped models →
API), every served signal scored as its horizon passed, then ``GET /signal/{symbol}/performance`` for
those bars compared with ``candlecast evaluate`` on the same bars of the same file."""

from __future__ import annotations

import asyncio
import gzip
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from inference.signal_store import RedisSignalStore
from models.evaluate import EvaluateConfig, evaluate
from service.compose import ingest_config, worker_config
from service.run import run_service
from service.settings import load_settings
from tests.conftest import ARTIFACTS, DATA_1M
from tests.service.kit import api_settings, serving

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]

SYMBOL = "BTCUSDT"
HISTORY = 24_000  # bars before the replay: it starts on 2025-06-15 at 09:05, after the test cut + 241 bars
REPLAYED = 150


def _slice(dest: Path) -> tuple[Path, int]:
    """The real file's first HISTORY + REPLAYED bars, so the replay ends after REPLAYED of them, and
    the start of its last bar."""
    with gzip.open(DATA_1M / f"bybit_linear_{SYMBOL}_1m.csv.gz", "rt") as fh:
        lines = [next(fh) for _ in range(1 + HISTORY + REPLAYED)]
    out = dest / f"bybit_linear_{SYMBOL}_1m.csv.gz"
    with gzip.open(out, "wt") as fh:
        fh.writelines(lines)
    return out, int(lines[-1].split(",")[0])


async def test_live_scores_of_a_replay_equal_the_evaluation_of_the_same_bars(redis_url: str, tmp_path: Path) -> None:
    data, last_bar = _slice(tmp_path)
    prefix = f"tr-{uuid.uuid4().hex[:8]}"
    # a generous latency budget: a loaded CI machine must not drop a component as late, which the
    # backtest would not (that would be a real difference, but not the one this test is about)
    settings = load_settings(redis_url=redis_url, redis_prefix=prefix, api_port=0, latency_budget_ms=20_000)
    await asyncio.wait_for(
        run_service(
            settings,
            ingest_config(settings),
            worker_config(settings),
            replay=[data],
            speed=240.0,
            replay_offset_bars=HISTORY,
        ),
        timeout=300,
    )  # returns when the replay reached the end of its data
    replay_prefix = f"{prefix}-replay"[:32]
    client = aioredis.Redis.from_url(redis_url)
    try:
        audited = await RedisSignalStore(client, prefix=replay_prefix).history(SYMBOL, 1000)
        served = sorted(audited, key=lambda s: s.bar.start)
        # The first closes replay while the models load and the windows backfill: those signals are
        # partial (a component had no full window yet), which the backtest never is. From the first
        # complete one on, every signal must be complete, and they are the bars compared.
        # the run stopped only once the last bar of the data was signalled (and its predecessor scored)
        assert served[-1].bar.start == last_bar
        first = next(i for i, s in enumerate(served) if not s.partial and s.source == "ensemble")
        assert first <= 60, f"{first} signals before the first complete one"
        compared = served[first:]
        assert all(not s.partial and s.source == "ensemble" for s in compared)
        since = compared[0].bar.start

        async with serving(api_settings(redis_url, replay_prefix, symbols=[SYMBOL])) as api, api.http() as http:
            got = await http.get(f"/signal/{SYMBOL}/performance", params={"since": since})
            assert got.status_code == 200, got.text
            book = got.json()
        live = book["windows"]["span"]["signal"]
        until = live["last_start"]
        assert live["n"] >= 60 and live["first_start"] == since
        assert book["unscored"] == {}  # a replay of contiguous bars has no hole

        report = await asyncio.to_thread(
            evaluate,
            EvaluateConfig(
                files=(data,), out_dir=tmp_path / "evaluation", artifacts=ARTIFACTS, since_ms=since, until_ms=until
            ),
        )
    finally:
        await _drop(client, replay_prefix)
        await client.aclose()
    offline = report["strategies"]["ensemble"]
    assert live["n"] == offline["n"]  # every bar of the span was served and scored, once
    assert live["calls"] == offline["calls"]
    assert live["judged"] > 0
    for key, their in (
        ("coverage", "coverage"),
        ("hit_rate", "accuracy_moved"),
        ("up_rate_moved", "up_rate_moved"),
        ("brier", "brier"),
        ("brier_skill", "brier_skill"),
        ("log_loss", "log_loss"),
        ("qlike", "qlike"),
        ("return_after_fees", "return_taker"),
    ):
        assert live[key] == pytest.approx(offline[their], abs=2e-5), key


async def _drop(client: aioredis.Redis, prefix: str) -> None:
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        await client.delete(key)
