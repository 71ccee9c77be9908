"""The track record the API serves: each symbol's stored scores summarised, cached until a score lands.

The worker scores every served signal once its horizon has passed (:mod:`inference.scorer`); here
:class:`PerformanceBook` reads a symbol's scores (:class:`inference.score_store.ScoreStore`), the
validation figures and drift statistics of the manifest that made them, and summarises them with
:func:`inference.track_record.performance` — recomputed only when the symbol's newest score changed.
``GET /signal/{symbol}/performance`` and ``GET /performance`` answer from it; a background refresh
keeps :meth:`PerformanceBook.latest` current for the Prometheus gauges and the WebSocket's
``performance`` frames (both synchronous).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from inference.drift import valid_drift_stats
from inference.score_store import SCORES_KEEP, ScoreStore
from inference.track_record import performance
from streaming.errors import StoreError

__all__ = ["PerformanceBook"]

log = logging.getLogger(__name__)


class PerformanceBook:
    def __init__(self, scores: ScoreStore, symbols: Sequence[str], *, keep: int = SCORES_KEEP) -> None:
        self.scores = scores
        self.symbols = tuple(symbols)
        self.keep = keep
        self._cache: dict[str, tuple[str, dict[str, Any]]] = {}  # symbol -> (scores' version, summary)

    async def of(self, symbol: str, span: tuple[int | None, int | None] | None = None) -> dict[str, Any]:
        """``symbol``'s track record now, with a ``span`` window of those bars when asked (raises
        ``StoreUnavailable`` when Redis cannot be reached)."""
        version = await self.scores.version(symbol)
        cached = self._cache.get(symbol)
        if span is None and cached is not None and cached[0] == version:
            return cached[1]
        rows = await self.scores.recent(symbol, self.keep)
        newest = max(rows, key=lambda s: s.start) if rows else None
        record = await self.scores.models_record(newest.models) if newest is not None and newest.models else None
        validation, drift = _checked(record, newest.models if newest is not None else "")
        summary = await asyncio.to_thread(performance, symbol, rows, validation=validation, drift=drift, span=span)
        if span is None:
            self._cache[symbol] = (version, summary)
        return summary

    async def all(self) -> dict[str, dict[str, Any]]:
        return {s: await self.of(s) for s in self.symbols}

    def latest(self) -> Mapping[str, dict[str, Any]]:
        """The newest summary computed for each symbol (symbols without one are absent)."""
        return {s: v[1] for s, v in self._cache.items()}

    async def refresh(self) -> None:
        for symbol in self.symbols:
            try:
                await self.of(symbol)
            except StoreError as exc:
                log.debug("%s: track record not refreshed: %s", symbol, exc)
            except Exception:  # a bug must not end the refresh: the gauges and alerts depend on it
                log.exception("%s: track record not refreshed", symbol)

    async def run(self, every_s: float) -> None:
        """Refresh every symbol's summary every ``every_s`` seconds, until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(every_s)


def _checked(record: dict[str, Any] | None, models: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The model record's validation figures (numbers only) and drift statistics, as far as they are
    well formed: the record comes from Redis, where anyone with write access may have put anything."""
    if record is None:
        return None, None
    validation: dict[str, Any] | None = None
    raw = record.get("validation")
    if isinstance(raw, dict):
        signal = raw.get("signal")
        components = raw.get("components")
        validation = {
            "span": raw.get("span") if isinstance(raw.get("span"), list) else None,
            "signal": _numbers(signal),
            "components": {str(k): _numbers(v) for k, v in components.items() if isinstance(v, dict)}
            if isinstance(components, dict)
            else {},
        }
    drift = valid_drift_stats(record.get("drift")) if record.get("drift") is not None else None
    if (raw is not None and validation is None) or (record.get("drift") is not None and drift is None):
        log.warning("the model record of %s is partly malformed; the malformed parts are ignored", models)
    return validation, drift


def _numbers(raw: Any) -> dict[str, float | None]:
    if not isinstance(raw, dict):
        return {}
    return {
        str(k): float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None
        for k, v in raw.items()
    }
