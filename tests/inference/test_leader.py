"""The two-layer CIPM (seed 001: BTC leads the alts) reads BTCUSDT's window beside each symbol's:
served from both windows of the same minutes, dropped with a reason when the leader's is missing,
stale or damaged, and BTCUSDT's own signal reads its image twice."""

from __future__ import annotations

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
