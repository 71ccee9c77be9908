"""The worker's scoring step: after each signal, score the served signals whose horizon has passed.

At the close of bar ``t`` the window holds the bars every signal up to ``t - H`` needs: the scorer
reads the newest audited signals (the last ``H + lookback``, so a few missed closes are caught up),
skips those already scored, scores the rest on the window (:func:`inference.track_record.score_signal`)
and stores each once (:class:`inference.score_store.ScoreStore`), its outcome joining the short track
record the symbol's next signal carries. It also leaves, once per manifest, the manifest's validation
figures and drift statistics where the API reads them (:func:`model_record`).

Scoring never holds up or fails a signal: it runs after the signal is published, and a Redis error
here is logged and counted (the signals stay in the audit stream; the next close scores them).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from inference.components import ModelSet
from inference.metrics import WorkerMetrics
from inference.score_store import ScoreStore
from inference.signal_store import SignalStore
from inference.track_record import closing_start, outcome, score_signal
from streaming.errors import StoreError
from streaming.klines import Bar

__all__ = ["Scorer", "model_record"]

log = logging.getLogger(__name__)

LOOKBACK = 10  # signals older than H + this many closes are left unscored if still pending
# A bar missing from the window is recorded as a hole only once it has stayed missing for this long
# (the ingestor repairs windows from REST within seconds): within LOOKBACK, so it is recorded.
HOLE_GRACE_MS = 5 * 60_000


def model_record(models: ModelSet) -> dict[str, Any]:
    """What the API compares the live scores with: the validation figures the manifest was fitted to,
    and its drift statistics."""
    fitted = models.ensemble.fitted if models.ensemble is not None else {}
    fitted = fitted if isinstance(fitted, dict) else {}
    held_raw, per_raw = fitted.get("calibration_half"), fitted.get("components")
    held: dict[str, Any] = held_raw if isinstance(held_raw, dict) else {}
    per: dict[str, Any] = per_raw if isinstance(per_raw, dict) else {}
    return {
        "models": models.id,
        "created": models.created,
        "validation": {
            "span": fitted.get("calibration_span"),
            "signal": {k: held.get(k) for k in ("accuracy_moved", "brier_skill", "coverage", "calls")},
            "components": {
                name: {k: v.get(k) for k in ("accuracy_moved", "brier_skill")}
                for name, v in per.items()
                if isinstance(v, dict)
            },
        },
        "drift": models.drift,
    }


class Scorer:
    def __init__(
        self, signals: SignalStore, scores: ScoreStore, metrics: WorkerMetrics, *, horizon_minutes: int
    ) -> None:
        self.signals = signals
        self.scores = scores
        self.metrics = metrics
        self.horizon_minutes = horizon_minutes
        self._recorded_models: set[str] = set()

    async def after(
        self,
        symbol: str,
        bars: Sequence[Bar],
        models: ModelSet,
        newer: Callable[[int], Awaitable[list[Bar]]] | None = None,
    ) -> int:
        """Score what is due on ``bars`` (the symbol's closed finest window, as the signal read it) and
        the bars ``newer`` gives after its newest; returns how many scores were stored.

        ``newer`` is read after the signal was published, which closes a race between two workers:
        when B, handling the next close, read the audit stream before A published this signal, B's
        window already held that close, so A's read after its publish finds it and A scores the signal."""
        try:
            if newer is not None and bars:
                bars = [*bars, *await newer(bars[-1].start)]
            return await self._after(symbol, bars, models)
        except StoreError as exc:
            self.metrics.scoring_errors.inc()
            log.warning("%s: scoring past signals failed (%s); the next close retries", symbol, exc)
        except Exception:  # the signal is out; a bug or an odd record here must not retry its event
            self.metrics.scoring_errors.inc()
            log.exception("%s: scoring past signals failed", symbol)
        return 0

    async def _after(self, symbol: str, bars: Sequence[Bar], models: ModelSet) -> int:
        if not bars:
            return 0
        if models.id and models.id not in self._recorded_models:
            await self.scores.put_models(models.id, model_record(models))
            self._recorded_models.add(models.id)
        newest = bars[-1].start
        recent = await self.signals.history(symbol, self.horizon_minutes + LOOKBACK)
        due = sorted((s for s in recent if closing_start(s) <= newest), key=lambda s: s.bar.start)
        done = await self.scores.scored(symbol, [s.bar.start for s in due])
        stored = 0
        for signal in due:
            if signal.bar.start in done or signal.symbol != symbol:  # another symbol's: not on these bars
                continue
            try:
                score = score_signal(signal, bars)
            except (ValueError, IndexError, ArithmeticError) as exc:  # an audited signal unlike ours
                log.warning("%s %d: cannot be scored (%s)", symbol, signal.bar.start, exc)
                continue
            if score is None:
                continue
            if score.reason is not None and newest - closing_start(signal) < HOLE_GRACE_MS:
                continue  # a hole may yet be repaired from REST: judged again at the next closes
            if await self.scores.record(score):
                stored += 1
                self.metrics.scored.labels(outcome(score)).inc()
                if score.reason is not None:
                    log.info("%s %d: left unscored (%s)", symbol, score.start, score.reason)
        return stored
