"""The order-book heatmap CNN (seed 000 §4.3) reads the symbol's depth window: off unless an operator
opts in, then served from the ingestor's rows of a READY book before the close, and dropped with a
reason when the window is holed, stale, short, of another book depth or from a book being rebuilt."""

from __future__ import annotations

import math
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import redis.asyncio as aioredis

from inference.checks import depth_window
from inference.components import load_model_set
from inference.manifest import Component, Manifest, sha256_file
from inference.render import book_heatmap
from inference.signal import Signal
from models.book import PREPROCESSING
from streaming.depth import DepthRow
from streaming.redis_store import RedisStore
from streaming.store import BookStatus, WriteBatch
from tests.inference.kit import MINUTE, T0, Harness, history, model_cache, running_worker, tcn_component

pytestmark = pytest.mark.timeout(60)

CLOSE = T0 + 60 * MINUTE
COUNTS = {"1": 60, "5": 60}
NAME = "book_cnn_1m"
SYMBOL = "BTCUSDT"
READY = BookStatus("READY", "", 7, CLOSE - 200, "100.0", "2", "100.1", "3")


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStore]:
    """The ingestor's depth window (300 rows), not conftest's 20: the heatmap reads 64."""
    store = RedisStore(aioredis.Redis.from_url(redis_url), prefix=f"test-{uuid.uuid4().hex[:12]}", window_bars=64)
    try:
        yield store
    finally:
        await store.delete_all()
        await store.close()


@pytest.fixture(scope="module")
def book_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from models.export import export_onnx
    from models.zoo import BookCNN

    torch.manual_seed(3)
    model = BookCNN()
    for p in model.parameters():  # a vote that depends on its input
        torch.nn.init.normal_(p, std=0.2)
    path = tmp_path_factory.mktemp("book") / f"{NAME}.onnx"
    export_onnx(model, np.zeros((1, 1, 200, 64), np.float32), path)
    return path


def book_component(root: Path, **pre: object) -> Component:
    return Component(
        name=NAME,
        kind="book_cnn",
        timeframe="1",
        version="v1",
        file=f"{NAME}.onnx",
        sha256=sha256_file(root / f"{NAME}.onnx"),
        input={"name": "input", "shape": ["batch", 1, 200, 64], "dtype": "float32"},
        output={"name": "logits", "shape": ["batch", 1]},
        preprocessing=PREPROCESSING | pre,
        horizon="log return over the next 1 min",
        horizon_minutes=1,
        weight=0.0,
        opt_in="too few recorded minutes to conclude anything",
    )


@pytest.fixture
def models(book_model: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    cache = model_cache(tmp_path_factory)
    dest = tmp_path / "artifacts"
    dest.mkdir()
    shutil.copy(book_model, dest / f"{NAME}.onnx")
    shutil.copy(cache / "tcn_1m.onnx", dest / "tcn_1m.onnx")
    components = (tcn_component(dest, "1", "tcn_1m.onnx"), book_component(dest))
    Manifest(components=components, created="2026-12-03T00:00:00+00:00").save(dest / "manifest.json")
    return dest


def rows(last: int, n: int, seed: int = 0, skip: frozenset[int] = frozenset()) -> list[DepthRow]:
    """``n`` one-second rows ending with the slot starting at ``last``, sizes random near the mid."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n - 1, -1, -1):
        bids = np.zeros(100, np.float32)
        asks = np.zeros(100, np.float32)
        bids[:4] = rng.exponential(5.0, 4)
        asks[:4] = rng.exponential(5.0, 4)
        if k not in skip:
            out.append(DepthRow(last - k * 1000, 100.05, bids, asks))
    return out


def expected_p_up(model: Path, depth: list[DepthRow]) -> float:
    """The model on the 64 rows before CLOSE, drawn here from the rows themselves."""
    grid = np.stack([np.concatenate([r.bids, r.asks]) for r in depth if CLOSE - 64_000 <= r.ts < CLOSE])
    x = book_heatmap(grid)[None, None]
    logit = float(ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0][0, 0])
    return 1.0 / (1.0 + math.exp(-logit))


def batch(depth: list[DepthRow], book: BookStatus = READY) -> WriteBatch:
    return WriteBatch(
        bars=history(CLOSE, COUNTS, (SYMBOL,)).bars, books={(SYMBOL, 50): book}, depth_rows={(SYMBOL, 50): depth}
    )


def report(s: Signal, name: str = NAME) -> tuple[str, str | None, float | None]:
    c = next(c for c in s.components if c.name == name)
    return c.status, c.reason, c.p_up


async def outcome(h: Harness, store: RedisStore, b: WriteBatch) -> Signal:
    await store.write(b)
    result = await h.outcome(SYMBOL, CLOSE - MINUTE)
    assert isinstance(result, Signal) and result.source == "ensemble"
    return result


def test_it_is_off_unless_named_and_says_how_to_enable_it(models: Path) -> None:
    off = next(c for c in load_model_set(models, prefer_gpu=False).components if c.name == NAME)
    assert off.disabled == "opt_in_only" and off.session is None
    assert "too few" in off.detail and f"CANDLECAST_MODEL_OPT_IN={NAME}" in off.detail
    on = next(c for c in load_model_set(models, prefer_gpu=False, opt_in=[NAME]).components if c.name == NAME)
    assert on.disabled is None and on.reads_depth


async def test_left_off_it_is_no_voice_of_the_signal(redis_url: str, redis_store: RedisStore, models: Path) -> None:
    async with running_worker(redis_url, redis_store, models) as h:
        s = await outcome(h, redis_store, batch(rows(CLOSE - 1000, 80)))
        assert [c.name for c in s.components] == ["tcn_1m"] and not s.partial


async def test_opted_in_it_votes_on_the_64_rows_before_the_close(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    depth = rows(CLOSE - 1000, 80)
    async with running_worker(redis_url, redis_store, models, opt_in=[NAME]) as h:
        s = await outcome(h, redis_store, batch(depth))
        status, reason, p_up = report(s)
        assert (status, reason) == ("voted", None) and not s.partial
        assert p_up == pytest.approx(expected_p_up(models / f"{NAME}.onnx", depth), abs=1e-6)


async def test_rows_of_the_close_and_after_change_nothing(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    """Causality: the slot starting at the close, and later ones, are the future of this signal."""
    depth = rows(CLOSE - 1000, 80)
    later = rows(CLOSE + 5000, 6, seed=9)  # CLOSE .. CLOSE + 5 s, other sizes
    async with running_worker(redis_url, redis_store, models, opt_in=[NAME]) as h:
        s = await outcome(h, redis_store, batch(depth + later))
        assert report(s)[2] == pytest.approx(expected_p_up(models / f"{NAME}.onnx", depth), abs=1e-6)


@pytest.mark.parametrize(
    ("depth", "book", "reason"),
    [
        (rows(CLOSE - 1000, 80, skip=frozenset(range(20, 27))), READY, "depth_holed"),  # 7 s without a row
        (rows(CLOSE - 11_000, 80), READY, "depth_stale"),  # the feed stopped 10 s before the close
        (rows(CLOSE - 1000, 40), READY, "depth_short"),  # 40 s of rows for a 64 s window
        ([], READY, "depth_empty"),
        (rows(CLOSE - 1000, 80), BookStatus("INVALID", "u gap", 7, CLOSE - 200), "book_not_ready"),
    ],
    ids=["holed", "stale", "short", "empty", "rebuilding"],
)
async def test_a_window_it_cannot_trust_drops_it_with_the_reason(
    redis_url: str, redis_store: RedisStore, models: Path, depth: list[DepthRow], book: BookStatus, reason: str
) -> None:
    async with running_worker(redis_url, redis_store, models, opt_in=[NAME]) as h:
        s = await outcome(h, redis_store, batch(depth, book))
        assert report(s) == ("dropped", reason, None)
        # its vote weighs nothing (weight 0, no stacker slot): its absence makes no signal partial
        assert report(s, "tcn_1m")[0] == "voted" and not s.partial
        assert h.sample("candlecast_components_dropped_total", component=NAME, reason=reason) == 1


@pytest.mark.parametrize(("oldest", "reason"), [(CLOSE - 69_000, None), (CLOSE - 69_001, "depth_short")])
async def test_the_oldest_row_it_may_read_is_read(
    redis_url: str, redis_store: RedisStore, models: Path, oldest: int, reason: str | None
) -> None:
    """The first slot (64 s before the close) may take a row up to max_gap_ms (5 s) older: the worker
    reads the rows of exactly that span from Redis, no fewer."""
    depth = rows(CLOSE - 1000, 63)  # CLOSE - 63 s .. CLOSE - 1 s
    first = replace(rows(CLOSE - 1000, 1, seed=4)[0], ts=oldest)
    async with running_worker(redis_url, redis_store, models, opt_in=[NAME]) as h:
        s = await outcome(h, redis_store, batch([first, *depth]))
        if reason is None:
            as_stood = [replace(first, ts=CLOSE - 64_000), *depth]
            assert report(s)[:2] == ("voted", None)
            assert report(s)[2] == pytest.approx(expected_p_up(models / f"{NAME}.onnx", as_stood), abs=1e-6)
        else:
            assert report(s) == ("dropped", reason, None)


async def test_a_silent_second_is_the_book_as_it_stood(redis_url: str, redis_store: RedisStore, models: Path) -> None:
    """No row for a slot (no update in that second) reads the row before it, up to max_gap_ms."""
    depth = rows(CLOSE - 1000, 80, skip=frozenset({10, 11, 30}))
    filled = {r.ts: r for r in depth}
    for ts in range(CLOSE - 79_000, CLOSE, 1000):
        filled.setdefault(ts, replace(filled[ts - 1000], ts=ts))
    async with running_worker(redis_url, redis_store, models, opt_in=[NAME]) as h:
        s = await outcome(h, redis_store, batch(depth))
        as_stood = [filled[ts] for ts in sorted(filled)]
        assert report(s)[2] == pytest.approx(expected_p_up(models / f"{NAME}.onnx", as_stood), abs=1e-6)


async def test_a_damaged_depth_row_costs_nothing_but_its_slot(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    """A garbage member of the depth window (even one ranked in the future, never trimmed) is skipped:
    the symbol's signal and this component's vote survive it."""
    depth = rows(CLOSE - 1000, 80)
    async with running_worker(redis_url, redis_store, models, opt_in=[NAME]) as h:
        await h.client.zadd(redis_store.keys.depth(SYMBOL, 50), {b"garbage|secret": CLOSE + 10**9})
        s = await outcome(h, redis_store, batch(depth))
        assert report(s)[:2] == ("voted", None)
        assert report(s)[2] == pytest.approx(expected_p_up(models / f"{NAME}.onnx", depth), abs=1e-6)


async def test_another_book_depth_than_it_was_trained_on_is_refused(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    manifest = Manifest.load(models / "manifest.json")
    tcn, book = manifest.components
    Manifest(components=(tcn, replace(book, preprocessing=book.preprocessing | {"book_depth": 200})), created="x").save(
        models / "manifest.json"
    )
    async with running_worker(redis_url, redis_store, models, opt_in=[NAME]) as h:
        s = await outcome(h, redis_store, batch(rows(CLOSE - 1000, 80)))
        assert report(s) == ("dropped", "book_depth_mismatch", None)


@pytest.mark.parametrize(
    "change",
    [
        {"input": {"name": "input", "shape": ["batch", 1, 200, 32], "dtype": "float32"}},
        {"preprocessing": PREPROCESSING | {"bins_per_side": 50}},
        {"preprocessing": PREPROCESSING | {"band": 0.05}},
        {"preprocessing": PREPROCESSING | {"renderer_version": "v0"}},
        {"preprocessing": PREPROCESSING | {"max_gap_ms": 10}},
        {"preprocessing": {k: v for k, v in PREPROCESSING.items() if k != "rows"}},
    ],
    ids=["shape", "bins", "band", "renderer", "gap", "no-rows"],
)
def test_a_grid_this_code_does_not_draw_is_refused(models: Path, change: dict[str, object]) -> None:
    manifest = Manifest.load(models / "manifest.json")
    tcn, book = manifest.components
    Manifest(components=(tcn, replace(book, **change)), created="x").save(models / "manifest.json")  # type: ignore[arg-type]
    for opt_in in ([NAME], []):  # a broken entry says so, opted in or not
        loaded = load_model_set(models, prefer_gpu=False, opt_in=opt_in)
        c = next(c for c in loaded.components if c.name == NAME)
        assert c.disabled == "preprocessing_mismatch", c.detail


def test_the_grid_takes_each_slots_newest_row_and_refuses_disorder() -> None:
    depth = rows(CLOSE - 1000, 70, skip=frozenset({5}))
    grid = depth_window(depth, CLOSE, 64, 1000, 5000)
    assert isinstance(grid, np.ndarray) and grid.shape == (64, 200)
    by_ts = {r.ts: r for r in depth}
    assert np.array_equal(grid[-6], np.concatenate([by_ts[CLOSE - 7000].bids, by_ts[CLOSE - 7000].asks]))
    assert np.array_equal(grid[-1], np.concatenate([by_ts[CLOSE - 1000].bids, by_ts[CLOSE - 1000].asks]))
    assert depth_window(depth[::-1], CLOSE, 64, 1000, 5000) == "depth_bad_values"
    bad = rows(CLOSE - 1000, 70)
    bad[-3].bids[0] = np.nan
    assert depth_window(bad, CLOSE, 64, 1000, 5000) == "depth_bad_values"
    bad[-3].bids[0] = -1.0
    assert depth_window(bad, CLOSE, 64, 1000, 5000) == "depth_bad_values"


async def test_the_operators_opt_in_reaches_the_registry(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import CollectorRegistry

    from inference.metrics import WorkerMetrics
    from service.compose import model_registry
    from service.settings import ConfigError, load_settings

    monkeypatch.setenv("CANDLECAST_ARTIFACTS_DIR", str(models))
    monkeypatch.setenv("CANDLECAST_MODEL_OPT_IN", f" {NAME} ,")
    settings = load_settings()
    assert settings.model_opt_in == [NAME]
    registry = model_registry(settings, WorkerMetrics(CollectorRegistry()))
    loaded = await registry.load()
    assert next(c for c in loaded.components if c.name == NAME).disabled is None
    monkeypatch.setenv("CANDLECAST_MODEL_OPT_IN", "Book-CNN")
    with pytest.raises(ConfigError, match="CANDLECAST_MODEL_OPT_IN"):
        load_settings()
