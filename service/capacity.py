"""``candlecast bench capacity``: memory per symbol at steady state, in Redis and in one process.

For each count of symbols, every per-symbol structure is filled to the bound it keeps in steady state,
through the service's own stores (the same scripts and encodings as live): the four kline windows
(``window_bars`` each), the book, ``depth_window`` heatmap rows, the status hash, a full audit stream
(``signal_audit_hours`` of the finest bars, each a signal with a report per shipped component and a
track record), the
latest signal, the dedupe set, 2,000 scores and the short track record. Values vary as real ones do
(prices from the real bars in ``../shared/data``, probabilities, latencies and depth levels drawn at
random), so compression is not flattered by repetition. Then:

* **Redis**: ``MEMORY USAGE key SAMPLES 0`` (every element counted) over every key of the prefix,
  summed per symbol and per kind of key; the one shared key, the bar-event stream, is bounded by its
  own length (100,000 entries), not by symbols, and is sized at that bound;
* **process RSS**: a fresh process fills the in-memory stores of the single-process run
  (``candlecast run`` without Redis) the same way; RSS after, minus RSS before, per symbol.

The baseline in the same run is the audit as it was stored before (each signal's JSON as written):
``audit_bytes_per_entry`` against ``audit_plain_bytes_per_entry``. The result extrapolates to 500
symbols (about the whole Bybit linear market) against a 2 GiB Redis.
"""

from __future__ import annotations

import asyncio
import gc
import math
import multiprocessing as mp
import os
import random
import resource
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from inference.manifest import Manifest
from inference.runtime import CPU
from inference.score_store import SCORES_KEEP, MemoryScoreStore, RedisScoreStore
from inference.signal import BarRef, ComponentReport, Freshness, Signal, StageLatency, TrackRecord
from inference.signal_store import MemorySignalStore, RedisSignalStore
from inference.track_record import ComponentScore, Score
from streaming.depth import BINS_PER_SIDE, DepthRow
from streaming.klines import MINUTE_MS, Bar, interval_ms
from streaming.memory_store import MemoryStore
from streaming.redis_client import connect
from streaming.redis_store import RedisStore
from streaming.sim.bars import read_bar_file
from streaming.store import BarEvent, BookStatus, WriteBatch

__all__ = ["bench_capacity"]

INTERVALS = ("1", "5", "15", "60")
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "artifacts" / "manifest.json"


def shipped_components(manifest: Path = SHIPPED) -> tuple[str, ...]:
    """The component names every signal carries with the shipped models (one report each): a
    failover ladder's upper rungs are not among them (one rung of each reports; on a CPU host the B0),
    nor the components shipped off by default (``opt_in``)."""
    return tuple(c.name for c in Manifest.load(manifest).components if not c.stands_in_for and not c.opt_in)


DEPTH = 50
EVENTS_MAXLEN = 100_000  # RedisStore's bound on the shared bar-event stream
REDIS_BUDGET_BYTES = 2 << 30
MARKET_SYMBOLS = 500
CONCURRENT = 32  # writes in flight at once while filling


class _Shapes:
    """Realistic values: real bars' prices, random model outputs (seeded: the same bytes every run)."""

    def __init__(self, bars_file: Path, window_bars: int) -> None:
        bars = read_bar_file(bars_file, sort=True)
        self._rows = bars.ohlcv[-window_bars * 60 :]
        self._start = int(bars.start_ms[-1]) - int(bars.start_ms[-1]) % (60 * MINUTE_MS)
        self.window_bars = window_bars
        self.components = shipped_components()
        self._rng = random.Random(7)

    def bars(self, interval: str) -> list[Bar]:
        step = interval_ms(interval)
        first = self._start - self.window_bars * step
        out = []
        for i in range(self.window_bars):
            o, h, lo, c, v = (Decimal(repr(float(x))) for x in self._rows[i % len(self._rows)])
            out.append(Bar(first + i * step, o, h, lo, c, v, (v * c).quantize(Decimal("0.0001"))))
        return out

    def depth_rows(self, count: int) -> list[DepthRow]:
        rng = np.random.default_rng(7)
        return [
            DepthRow(
                ts=self._start - (count - i) * 1000,
                mid=100_000.0 + i,
                bids=rng.gamma(2.0, 3.0, BINS_PER_SIDE).astype(np.float32),
                asks=rng.gamma(2.0, 3.0, BINS_PER_SIDE).astype(np.float32),
            )
            for i in range(count)
        ]

    def signal(self, symbol: str, start: int) -> Signal:
        r = self._rng
        reports = tuple(
            ComponentReport(
                name,
                name.rsplit("_", 1)[1].removesuffix("m"),
                "next 1m bar",
                r.uniform(0.45, 0.55),
                r.uniform(-0.5, 0.6),
                "v1",
                CPU,
                round(r.uniform(0.2, 9.0), 3),
                "voted",
                horizon_minutes=1,
            )
            for name in self.components
        )
        p_up = r.uniform(0.45, 0.55)
        read, render, infer, ensemble = (round(r.uniform(0.1, 9.0), 3) for _ in range(4))
        stages = (read, render, infer, ensemble, round(read + render + infer + ensemble, 3))
        return Signal(
            symbol=symbol,
            bar=BarRef("1", start, start + MINUTE_MS),
            produced_at=start + MINUTE_MS,
            produced_wall_ms=start + MINUTE_MS + r.randrange(5, 400),
            direction="flat",
            score=2 * p_up - 1,
            p_up=p_up,
            confidence=abs(2 * p_up - 1),
            agreement=r.uniform(0.4, 1.0),
            source="ensemble",
            fallback_reason=None,
            components=reports,
            freshness=Freshness({iv: start for iv in INTERVALS}, "READY", r.randrange(0, 900)),
            latency_ms=StageLatency(*stages, bar_close_to_publish=float(r.randrange(5, 400))),
            horizon="next 1m bar",
            horizon_minutes=1,
            reference_price=round(r.uniform(60_000, 110_000), 1),
            expected_move_bp=round(r.uniform(2, 9), 3),
            volatility_bp=round(r.uniform(3, 12), 3),
            edge_bp=round(r.uniform(-0.5, 0.5), 3),
            cost_bp=11.0,
            calibrated=True,
            models="0123456789ab",
            track_record=TrackRecord(100, r.randrange(10, 40), r.uniform(0.45, 0.56), start - MINUTE_MS),
        )

    def score(self, symbol: str, start: int) -> Score:
        r = self._rng
        return Score(
            symbol=symbol, start=start, horizon_minutes=1, models="0123456789ab", source="ensemble",
            direction="flat", p_up=r.uniform(0.45, 0.55), tradeable=False, edge_bp=round(r.uniform(-0.5, 0.5), 3),
            volatility_bp=round(r.uniform(3, 12), 3), cost_bp=11.0, log_return=r.gauss(0, 5e-4),
            var_real_bp2=r.uniform(1, 100), reason=None,
            components=tuple(ComponentScore(n, "v1", r.uniform(0.45, 0.55)) for n in self.components),
            inputs=tuple(r.gauss(0, 1) for _ in range(5)),
        )  # fmt: skip


async def _fill(
    store: RedisStore | MemoryStore,
    signals: RedisSignalStore | MemorySignalStore,
    scores: RedisScoreStore | MemoryScoreStore,
    shapes: _Shapes,
    symbols: list[str],
    audit: int,
    depth_rows: int,
) -> None:
    rows = shapes.depth_rows(depth_rows)
    windows = {iv: shapes.bars(iv) for iv in INTERVALS}
    for symbol in symbols:
        await store.write(
            WriteBatch(
                bars={(symbol, iv): bars for iv, bars in windows.items()},
                books={(symbol, DEPTH): BookStatus("READY", "", 1, 1, "100000.1", "1.5", "100000.2", "0.7", 1)},
                depth_rows={(symbol, DEPTH): rows},
                status={symbol: {"subscription": "ok", "backfill:1": "done"}},
            )
        )
        newest = windows["1"][-1].start
        signal_starts = [newest - k * MINUTE_MS for k in reversed(range(audit))]
        score_starts = [newest - k * MINUTE_MS for k in reversed(range(SCORES_KEEP))]
        for at in range(0, len(signal_starts), CONCURRENT):  # concurrent in chunks, within the pool
            await asyncio.gather(
                *(signals.publish(shapes.signal(symbol, t)) for t in signal_starts[at : at + CONCURRENT])
            )
        for at in range(0, len(score_starts), CONCURRENT):
            await asyncio.gather(*(scores.record(shapes.score(symbol, t)) for t in score_starts[at : at + CONCURRENT]))


def _kind(key: str, prefix: str) -> tuple[str | None, str]:
    """(symbol, kind) of a key: ``cc:{BTCUSDT}:kline:1`` → ("BTCUSDT", "kline:1"); shared keys: (None, name)."""
    rest = key.removeprefix(prefix + ":")
    if rest.startswith("{"):
        symbol, _, kind = rest[1:].partition("}:")
        return symbol, kind
    return None, rest


async def _redis(url: str, shapes: _Shapes, count: int, audit: int, depth_rows: int) -> dict[str, Any]:
    prefix = f"capacity-{uuid.uuid4().hex[:8]}"
    client = connect(url)
    store = RedisStore(client, prefix=prefix, window_bars=shapes.window_bars, depth_rows=depth_rows)
    try:
        symbols = [f"SYM{i:04d}USDT" for i in range(count)]
        await _fill(
            store,
            RedisSignalStore(client, prefix=prefix, audit_maxlen=audit),
            RedisScoreStore(client, prefix=prefix),
            shapes,
            symbols,
            audit,
            depth_rows,
        )
        # The shared bar-event stream is bounded by length, not by symbols: sized from a sample of 10,000
        # real entries at its bound.
        sample = EVENTS_MAXLEN // 10
        await store.announce([BarEvent(symbols[i % count], "1", i * MINUTE_MS) for i in range(sample)])
        by_kind: dict[str, int] = {}
        per_symbol: dict[str, int] = {}
        shared: dict[str, int] = {}
        audit_entries = 0
        async for raw in client.scan_iter(match=f"{prefix}:*", count=1000):
            key = raw.decode()
            size = int(await client.memory_usage(key, samples=0) or 0)
            symbol, kind = _kind(key, prefix)
            if symbol is None:
                if kind == "events:bars":
                    size = math.ceil(size / max(1, await client.xlen(key)) * EVENTS_MAXLEN)
                shared[kind] = size
                continue
            by_kind[kind] = by_kind.get(kind, 0) + size
            per_symbol[symbol] = per_symbol.get(symbol, 0) + size
            if kind == "signals":
                audit_entries += int(await client.xlen(key))
        plain = sum(len(shapes.signal("X", 0).to_json()) for _ in range(50)) / 50
        total = sum(per_symbol.values())
        return {
            "symbols": count,
            "bytes_per_symbol": round(total / count),
            "bytes_per_symbol_by_kind": {
                k: round(v / count) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])
            },
            "shared_bytes": shared,
            "audit_entries_per_symbol": audit_entries // count,
            "audit_bytes_per_entry": round(by_kind.get("signals", 0) / max(1, audit_entries)),
            "audit_plain_bytes_per_entry": round(plain),
        }
    finally:
        await store.delete_all()
        await client.aclose()


def _per(totals: dict[str, int], count: int) -> dict[str, int]:
    """Bytes per symbol of each kind of key, largest first."""
    return {k: round(v / count) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _process_child(pipe: Any, bars_file: str, window_bars: int, count: int, audit: int, depth_rows: int) -> None:
    shapes = _Shapes(Path(bars_file), window_bars)
    store = MemoryStore(window_bars=window_bars, depth_rows=depth_rows)
    signals, scores = MemorySignalStore(audit_maxlen=audit), MemoryScoreStore()
    gc.collect()
    before = _rss_bytes()
    asyncio.run(_fill(store, signals, scores, shapes, [f"SYM{i:04d}USDT" for i in range(count)], audit, depth_rows))
    gc.collect()
    pipe.send(
        {"symbols": count, "rss_bytes_before": before, "rss_bytes_per_symbol": round((_rss_bytes() - before) / count)}
    )


def _process(bars_file: Path, window_bars: int, count: int, audit: int, depth_rows: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_process_child, args=(child, str(bars_file), window_bars, count, audit, depth_rows))
    proc.start()
    try:
        result: dict[str, Any] = parent.recv()
    finally:
        proc.join(timeout=60)
    return result


def bench_capacity(
    redis_url: str,
    bars_file: Path,
    symbols: tuple[int, ...] = (10, 100),
    *,
    window_bars: int = 256,
    audit: int = 1440,
    depth_rows: int = 300,
) -> dict[str, Any]:
    shapes = _Shapes(bars_file, window_bars)
    runs = []
    for count in symbols:
        redis_part = asyncio.run(_redis(redis_url, shapes, count, audit, depth_rows))
        runs.append({"redis": redis_part, "process": _process(bars_file, window_bars, count, audit, depth_rows)})
    largest = runs[-1]
    per_symbol = largest["redis"]["bytes_per_symbol"]
    shared = sum(largest["redis"]["shared_bytes"].values())
    market = per_symbol * MARKET_SYMBOLS + shared
    return {
        "benchmark": "capacity",
        "machine": {"cpus": os.cpu_count()},
        "steady_state": {
            "window_bars": window_bars,
            "intervals": list(INTERVALS),
            "depth_rows": depth_rows,
            "audit_entries": audit,
            "scores": SCORES_KEEP,
            "components_per_signal": len(shapes.components),
        },
        "runs": runs,
        "audit_ratio_to_plain_json": round(
            largest["redis"]["audit_bytes_per_entry"] / largest["redis"]["audit_plain_bytes_per_entry"], 3
        ),
        "extrapolated": {
            "symbols": MARKET_SYMBOLS,
            "redis_bytes": market,
            "redis_gib": round(market / (1 << 30), 3),
            "budget_gib": REDIS_BUDGET_BYTES / (1 << 30),
            "ratio_to_budget": round(market / REDIS_BUDGET_BYTES, 3),
            "process_rss_gib": round(largest["process"]["rss_bytes_per_symbol"] * MARKET_SYMBOLS / (1 << 30), 3),
        },
    }
