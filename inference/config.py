"""The inference worker's settings: one frozen :class:`WorkerConfig` shared by its parts.

The signal engine reads the windowing, signal, latency and concurrency knobs (``intervals``,
``book_depth``, ``thresholds``, ``horizon_minutes``, ``fee_bp``, ``latency_budget_ms``, ``rung_share``, ``coarse_*``,
``inference_concurrency``); the consumer loop reads the event knobs (``max_in_flight``,
``read_count``, ``block_ms``, ``claim_idle_ms``, ``sweep_*``, ``lag_every_s``,
``backoff_*``, ``close_timeout_s``). ``service.settings`` builds it from the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.ensemble import Thresholds

__all__ = ["WorkerConfig"]


@dataclass(frozen=True)
class WorkerConfig:
    intervals: tuple[str, ...] = ("1", "5", "15", "60")
    book_depth: int = 50
    thresholds: Thresholds = field(default_factory=Thresholds)  # for manifests without a fitted ensemble
    horizon_minutes: int = 1  # the signal's question: log return over the next H minutes > 0?
    fee_bp: float = 5.5  # per side, for cost_bp: Bybit's linear taker fee (0.055 %)
    quorum: float = 0.5  # long/short only when this share of the components answering H voted
    latency_budget_ms: float = 250.0  # render + inference of one signal, from the end of the read
    rung_share: float = 0.5  # of that budget, what a ladder rung (the B3) may take before the B0 runs
    coarse_wait_ms: float = 2000.0  # wall time to wait for a coarser bar due at this close
    coarse_poll_ms: float = 50.0
    inference_concurrency: int = 2  # session runs in flight, all symbols together
    max_in_flight: int = 32  # events being handled at once
    read_count: int = 32
    block_ms: int = 1000
    claim_idle_ms: int = 30_000  # an event pending this long on a consumer is taken over
    sweep_every_s: float = 30.0  # how often to look for bars left without a signal (0: never)
    sweep_bars: int = 60  # how far back, in published signals, that look goes
    lag_every_s: float = 5.0
    backoff_base_s: float = 0.1
    backoff_cap_s: float = 5.0
    close_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0.0 < self.rung_share <= 1.0:
            raise ValueError(f"rung_share must lie in (0, 1], got {self.rung_share}")

    @property
    def finest(self) -> str:
        return min(self.intervals, key=int)
