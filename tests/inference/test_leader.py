"""The two-layer CIPM (seed 001: BTC leads the alts) reads BTCUSDT's window beside each symbol's:
served from both windows of the same minutes, dropped with a reason when the leader's is missing,
stale or damaged, and BTCUSDT's own signal reads its image twice."""

from __future__ import annotations

import asyncio
import math
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from inference.checks import bars_to_array
from inference.components import load_model_set
from inference.manifest import Component, Manifest, sha256_file
from inference.render import RENDERER_VERSION, ohlc_pair
from inference.signal import Signal
from streaming.redis_store import RedisStore
from streaming.store import WriteBatch
from tests.inference.kit import (
    IMAGE_BARS,
    IMAGE_HEIGHT,
    MINUTE,
    T0,
    Harness,
    history,
    model_cache,
    running_worker,
    tcn_component,
    window,
)

pytestmark = pytest.mark.timeout(60)

CLOSE = T0 + 60 * MINUTE
COUNTS = {"1": 60, "5": 60}


@pytest.fixture(scope="module")
def pair_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from models.export import export_onnx
    from models.zoo import zoo_model

    torch.manual_seed(5)
    model = zoo_model("cipm_btc", 2)
    for p in model.parameters():  # away from the zero-initialised head: a vote that depends on its input
        torch.nn.init.normal_(p, std=0.1)
    path = tmp_path_factory.mktemp("pair") / "cipm_btc_1m.onnx"
    export_onnx(model, np.zeros((1, 2, IMAGE_HEIGHT, 3 * IMAGE_BARS), np.float32), path)
    return path


def pair_component(root: Path, leader: object = "BTCUSDT") -> Component:
    return Component(
        name="cipm_btc_1m",
        kind="cipm_btc",
        timeframe="1",
        version="v1",
        file="cipm_btc_1m.onnx",
        sha256=sha256_file(root / "cipm_btc_1m.onnx"),
        input={"name": "input", "shape": ["batch", 2, IMAGE_HEIGHT, 3 * IMAGE_BARS], "dtype": "float32"},
        output={"name": "logits", "shape": ["batch", 1]},
        preprocessing={
            "renderer": "ohlc_pair",
            "renderer_version": RENDERER_VERSION,
            "height": IMAGE_HEIGHT,
            "bars": IMAGE_BARS,
            "leader": leader,
        },
        horizon="log return over the next 1 min",
        horizon_minutes=1,
    )


@pytest.fixture
def models(pair_model: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    cache = model_cache(tmp_path_factory)
    dest = tmp_path / "artifacts"
    dest.mkdir()
    shutil.copy(pair_model, dest / "cipm_btc_1m.onnx")
    shutil.copy(cache / "tcn_1m.onnx", dest / "tcn_1m.onnx")
    components = (tcn_component(dest, "1", "tcn_1m.onnx"), pair_component(dest))
    Manifest(components=components, created="2026-12-03T00:00:00+00:00").save(dest / "manifest.json")
    return dest


def expected_p_up(model: Path, symbol: str, leader: str) -> float:
    """What the component must answer at CLOSE: its ONNX model on the two windows, computed here."""
    own = bars_to_array(window("1", CLOSE, IMAGE_BARS, symbol))
    lead = bars_to_array(window("1", CLOSE, IMAGE_BARS, leader))
    x = ohlc_pair(own, lead, IMAGE_HEIGHT, IMAGE_BARS)[None]
    logit = float(ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0][0, 0])
    return 1.0 / (1.0 + math.exp(-logit))


def report(s: Signal, name: str = "cipm_btc_1m") -> tuple[str, str | None, float | None]:
    c = next(c for c in s.components if c.name == name)
    return c.status, c.reason, c.p_up


async def outcome(h: Harness, store: RedisStore, batch: WriteBatch, symbol: str) -> Signal:
    await store.write(batch)
    result = await h.outcome(symbol, CLOSE - MINUTE)
    assert isinstance(result, Signal) and result.source == "ensemble"
    return result


async def test_an_alt_is_read_beside_btc_for_the_same_minutes(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    async with running_worker(redis_url, redis_store, models) as h:
        s = await outcome(h, redis_store, history(CLOSE, COUNTS, ("BTCUSDT", "ETHUSDT")), "ETHUSDT")
        status, reason, p_up = report(s)
        assert (status, reason) == ("voted", None) and not s.partial
        assert p_up == pytest.approx(expected_p_up(models / "cipm_btc_1m.onnx", "ETHUSDT", "BTCUSDT"), abs=1e-6)
        # not the alt's image twice: the leader's channel is BTC's
        assert p_up != pytest.approx(expected_p_up(models / "cipm_btc_1m.onnx", "ETHUSDT", "ETHUSDT"), abs=1e-6)


async def test_btc_itself_reads_its_own_image_twice(redis_url: str, redis_store: RedisStore, models: Path) -> None:
    async with running_worker(redis_url, redis_store, models) as h:
        s = await outcome(h, redis_store, history(CLOSE, COUNTS, ("BTCUSDT",)), "BTCUSDT")
        status, reason, p_up = report(s)
        assert (status, reason) == ("voted", None)
        assert p_up == pytest.approx(expected_p_up(models / "cipm_btc_1m.onnx", "BTCUSDT", "BTCUSDT"), abs=1e-6)


async def test_without_btc_ingested_the_pair_is_dropped_with_a_reason(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    async with running_worker(redis_url, redis_store, models) as h:
        s = await outcome(h, redis_store, history(CLOSE, COUNTS, ("ETHUSDT",)), "ETHUSDT")
        assert report(s) == ("dropped", "leader_not_ingested", None)
        assert report(s, "tcn_1m")[0] == "voted" and s.partial
        dropped = "candlecast_components_dropped_total"
        assert h.sample(dropped, component="cipm_btc_1m", reason="leader_not_ingested") == 1


async def test_a_btc_window_that_lags_past_the_wait_is_not_read_as_this_minute(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    async with running_worker(redis_url, redis_store, models) as h:
        alt = history(CLOSE, COUNTS, ("ETHUSDT",)).bars
        btc = history(CLOSE - MINUTE, COUNTS, ("BTCUSDT",)).bars  # BTC's newest 1m bar never arrives
        s = await outcome(h, redis_store, WriteBatch(bars=alt | btc), "ETHUSDT")
        assert report(s) == ("dropped", "leader_stale_window", None)


async def test_a_holed_btc_window_drops_the_pair(redis_url: str, redis_store: RedisStore, models: Path) -> None:
    async with running_worker(redis_url, redis_store, models) as h:
        bars = history(CLOSE, COUNTS, ("BTCUSDT", "ETHUSDT")).bars
        del bars[("BTCUSDT", "1")][-5]  # a minute missing inside BTC's 24-bar window
        s = await outcome(h, redis_store, WriteBatch(bars=bars), "ETHUSDT")
        assert report(s) == ("dropped", "leader_holed_window", None)


@pytest.mark.parametrize("leader", ["", "BTC/USDT", 7, None])
def test_a_pair_without_a_usable_leader_symbol_is_refused(models: Path, leader: object) -> None:
    manifest = Manifest.load(models / "manifest.json")
    tcn = manifest.components[0]
    Manifest(components=(tcn, pair_component(models, leader)), created=manifest.created).save(models / "manifest.json")
    loaded = load_model_set(models, prefer_gpu=False)
    pair = next(c for c in loaded.components if c.name == "cipm_btc_1m")
    assert pair.disabled == "preprocessing_mismatch" and "leader" in pair.detail


async def test_a_btc_bar_that_arrives_during_the_bounded_wait_is_read(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    async with running_worker(redis_url, redis_store, models, coarse_wait_ms=30_000, coarse_poll_ms=20) as h:
        btc = history(CLOSE, COUNTS, ("BTCUSDT",)).bars
        newest = {key: [bars.pop()] for key, bars in btc.items() if key[1] == "1"}  # BTC's last minute, held back
        await redis_store.write(WriteBatch(bars=history(CLOSE, COUNTS, ("ETHUSDT",)).bars | btc))
        await asyncio.sleep(0.3)  # the worker is waiting for it (a 30 s bound: it would not give up first)
        assert await h.pending() >= 1
        s = await outcome(h, redis_store, WriteBatch(bars=newest), "ETHUSDT")
        status, reason, p_up = report(s)
        assert (status, reason) == ("voted", None)
        assert p_up == pytest.approx(expected_p_up(models / "cipm_btc_1m.onnx", "ETHUSDT", "BTCUSDT"), abs=1e-6)


async def test_a_damaged_btc_record_costs_the_pair_not_the_alts_signal(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    async with running_worker(redis_url, redis_store, models) as h:
        await h.client.hset(redis_store.keys.status("BTCUSDT"), b"x", b"\xff\xfe")  # not UTF-8: undecodable
        s = await outcome(h, redis_store, history(CLOSE, COUNTS, ("BTCUSDT", "ETHUSDT")), "ETHUSDT")
        assert report(s) == ("dropped", "leader_unreadable", None)
        assert report(s, "tcn_1m")[0] == "voted"


def test_evaluation_aligns_the_leader_by_time_as_serving_does(models: Path) -> None:
    """component_outputs (stack, evaluate) on an alt's real bars: each window beside BTCUSDT's for the
    same minutes, and no vote where BTCUSDT lacks one of them."""
    from models.data import load_series
    from models.stack import component_outputs
    from tests.conftest import DATA_1M

    base = load_series(DATA_1M / "bybit_linear_ETHUSDT_1m.csv.gz")
    lead = load_series(DATA_1M / "bybit_linear_BTCUSDT_1m.csv.gz")
    keep = np.ones(len(lead.start_ms), bool)
    keep[1000] = False  # one BTCUSDT minute missing
    lead = type(lead)(lead.name, lead.symbol, lead.interval_min, lead.start_ms[keep], lead.ohlcv[keep])
    c = next(c for c in load_model_set(models, prefer_gpu=False).components if c.name == "cipm_btc_1m")
    hole = int(np.searchsorted(base.start_ms, lead.start_ms[999] + MINUTE))  # ETH's row of that minute
    ends = np.array([300, 800, hole, hole + 30, 5000], np.int64)
    rows = component_outputs(c, base, ends, leader=lead)
    session = ort.InferenceSession(str(models / "cipm_btc_1m.onnx"), providers=["CPUExecutionProvider"])
    for i, t in enumerate(ends.tolist()):
        k = int(np.searchsorted(lead.start_ms, base.start_ms[t]))
        window_has_hole = lead.start_ms[k] - lead.start_ms[k - 23] != 23 * MINUTE
        if k >= len(lead.start_ms) or lead.start_ms[k] != base.start_ms[t] or window_has_hole:
            assert np.isnan(rows[i]).all(), t
            continue
        x = ohlc_pair(base.ohlcv[t - 23 : t + 1], lead.ohlcv[k - 23 : k + 1], IMAGE_HEIGHT, IMAGE_BARS)[None]
        assert rows[i, 0] == pytest.approx(float(session.run(None, {"input": x})[0][0, 0]), abs=1e-6), t
    assert np.isnan(rows[2]).all() and np.isfinite(rows[[0, 1, 4]]).all()
    assert np.isnan(component_outputs(c, base, ends, leader=None)).all()  # no BTCUSDT file: no vote
