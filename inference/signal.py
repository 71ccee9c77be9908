"""The signal: one frozen value per (symbol, bar), and its JSON wire form (DESIGN.md "The signal").

What the worker writes to ``P:{SYM}:signal``, appends to ``P:{SYM}:signals`` and publishes on
``P:signals``; what the API serves. Times are milliseconds: ``bar`` and ``produced_at`` on the
exchange clock, ``produced_wall_ms`` on the worker's wall clock. Example (abridged)::

    {"symbol": "BTCUSDT", "bar": {"interval": "1", "start": 1750000020000, "close_time": 1750000080000},
     "produced_at": 1750000080312, "produced_wall_ms": 1750000080420, "direction": "long",
     "score": 0.0812, "p_up": 0.5406, "confidence": 0.0812, "agreement": 0.75, "source": "ensemble",
     "fallback_reason": null,
     "components": [{"name": "tcn_1m", "timeframe": "1", "horizon": "next 1m bar", "p_up": 0.55,
                     "weight": 1.0, "version": "2026.11.20", "provider": "CPUExecutionProvider",
                     "latency_ms": 0.41, "status": "voted", "reason": null},
                    {"name": "tcn_60m", ..., "p_up": null, "status": "dropped", "reason": "stale_window"}],
     "freshness": {"last_bar_start": {"1": 1750000020000, "5": 1749999780000}, "book_state": "READY",
                   "book_age_ms": 112},
     "latency_ms": {"read": 0.9, "render": 2.1, "infer": 4.8, "ensemble": 0.05, "total": 8.2,
                    "bar_close_to_publish": 420.0},
     "horizon": "log return over the next 1 min", "horizon_minutes": 1, "reference_price": 104250.5,
     "expected_move_bp": 4.9, "volatility_bp": 6.3, "edge_bp": 0.4, "cost_bp": 11.0, "tradeable": false,
     "calibrated": true, "partial": true, "models": "3f2a9c1d0b7e",
     "track_record": {"n": 100, "calls": 23, "hit_rate": 0.5652, "as_of_bar": 1749999960000}}

``edge_bp`` is the expected log return over H in the price's direction, before costs:
``(2·p_up - 1)·expected_move_bp``, positive for up, negative for down (a short call profits from a
negative edge; ``tradeable`` compares ``|edge_bp|`` in the call's direction with the cost); ``cost_bp`` a
round trip at the configured fee (Bybit's taker 0.055 % a side by default); ``tradeable`` says the
edge clears it. A bot that only trades ``tradeable`` calls does not pay 11 bp of fees for a 1 bp edge.

``partial`` says some component answering the signal's question did not vote (each dropped one's
report says why: ``short_window`` at warm-up, ``stale_window``, ...). A long or short call needs a
quorum: at least ``CANDLECAST_SIGNAL_QUORUM`` (default 0.5) of those components voting; below it the
signal is flat, its ``p_up`` still shown.

``ladder`` says which rung of the seed's failover ladder ran: ``efficientnet-b3`` where a GPU
provider bound it, ``efficientnet-b0`` on the CPU or when the B3 failed on its GPU, ``rule`` for the
fallback (``null``: an ensemble signal without an image model's vote). A B3 vote's report names the
B0 it stood in for (``stands_in_for``); the rung that did not run (the B0 standing by, or a B3 with no
GPU to bind) is left out of ``components``.

``models`` names the manifest the signal was computed with (its sha256, 12 hex digits): a model
release starts a new track record. ``track_record`` is how right this symbol's signal has been lately:
the last 100 served signals of this manifest that have been scored (their horizon passed), how many
were long/short calls and the share of those right on bars that moved (``GET
/signal/{symbol}/performance`` has the full record); ``None`` before the first is scored.

A ``fallback`` signal comes from the momentum rule: its ``p_up``, ``confidence``, ``agreement`` and
``edge_bp`` are ``null`` and it is never ``tradeable`` (the rule gives no probability); ``score`` is
the rule's score clipped to [-1, 1] and ``fallback_reason`` says why no model voted. When not even
the rule can run, there is no signal: a :class:`NoSignal` records why (``P:{SYM}:nosignal``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

import orjson
from pydantic import TypeAdapter, ValidationError

from inference.errors import InferenceError

__all__ = [
    "BarRef",
    "ComponentReport",
    "Direction",
    "Freshness",
    "NoSignal",
    "Signal",
    "SignalFormatError",
    "StageLatency",
    "TrackRecord",
    "horizon_text",
]

Direction = Literal["long", "short", "flat"]
Source = Literal["ensemble", "fallback"]
Status = Literal["voted", "dropped"]


class SignalFormatError(InferenceError, ValueError):
    """Bytes that are not a valid signal (or no-signal record)."""


@dataclass(frozen=True, slots=True)
class BarRef:
    """The bar a signal was computed at: the close of ``start`` on ``interval`` (minutes)."""

    interval: str
    start: int
    close_time: int


@dataclass(frozen=True, slots=True)
class ComponentReport:
    """One component's part in a signal: its vote, or why it did not vote."""

    name: str
    timeframe: str
    horizon: str
    p_up: float | None
    weight: float
    version: str
    provider: str  # the provider the session BOUND (``ModelSession.provider``); "" if never loaded
    # the run of the batch it was in (a run merged with other signals' batches of its model: that
    # run's); 0 for a vote repeated unrun (its input was its last vote's); None when it never ran
    latency_ms: float | None
    status: Status
    reason: str | None = None  # set when dropped: a data-check code, "late", "error", "artifact_missing", ...
    horizon_minutes: int | None = None
    expected_move_bp: float | None = None  # from a magnitude head, when the component has one
    volatility_bp: float | None = None  # from a volatility head, when the component has one
    stands_in_for: str | None = None  # a ladder rung (EfficientNet-B3): the component whose slot it fills


@dataclass(frozen=True, slots=True)
class Freshness:
    last_bar_start: dict[str, int | None]  # interval -> newest bar start of the window it was computed from
    book_state: str | None
    book_age_ms: int | None  # exchange time: produced_at - the book's last update


@dataclass(frozen=True, slots=True)
class StageLatency:
    """Milliseconds. ``read`` includes any bounded wait for a coarser bar due at this close; ``render``
    lasts until the last input is built (the batches built before it are already running); ``infer``
    is what the runs took past that."""

    read: float
    render: float
    infer: float
    ensemble: float
    total: float
    bar_close_to_publish: float  # worker wall clock minus the bar's exchange close time: live only


@dataclass(frozen=True, slots=True)
class TrackRecord:
    """The last ``n`` (up to 100) scored signals of the symbol and manifest, as of ``as_of_bar``."""

    n: int
    calls: int  # of them long or short
    hit_rate: float | None  # right on moved bars, over the calls (None: no call judged yet)
    as_of_bar: int | None  # the newest scored signal's bar start


@dataclass(frozen=True, slots=True)
class Signal:
    symbol: str
    bar: BarRef
    produced_at: int
    produced_wall_ms: int
    direction: Direction
    score: float
    p_up: float | None
    confidence: float | None
    agreement: float | None
    source: Source
    fallback_reason: str | None
    components: tuple[ComponentReport, ...]
    freshness: Freshness
    latency_ms: StageLatency
    horizon: str
    # The economics of the call (absent from signals written before they existed: never tradeable).
    horizon_minutes: int | None = None  # the question: is the log return over the next H minutes > 0?
    reference_price: float | None = None  # the close of the signal's bar: the price the call is made at
    expected_move_bp: float | None = None  # E|log return over H|, basis points
    volatility_bp: float | None = None  # std of the log return over H, basis points
    edge_bp: float | None = None  # (2·p_up - 1)·expected_move_bp, in the price's direction; null for the fallback
    cost_bp: float | None = None  # round trip at the configured fee
    tradeable: bool = False  # long/short and the edge, in its direction, clears the cost
    calibrated: bool = False  # p_up from the validation-fitted, Platt-calibrated stacker
    # Some component answering the signal's question did not vote (its report says why): a warm-up, a
    # damaged window. Below the quorum (CANDLECAST_SIGNAL_QUORUM) such a signal is flat.
    partial: bool = False
    models: str = ""  # the manifest's sha256, 12 hex digits ("" when unknown)
    track_record: TrackRecord | None = None
    # Which rung of the seed's failover ladder made it: "efficientnet-b3" (a GPU bound), "efficientnet-b0",
    # "rule" (the fallback); None for an ensemble signal without an image model's vote.
    ladder: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Signal:
        try:
            return _signal_adapter().validate_json(raw)
        except ValidationError as exc:
            raise SignalFormatError(f"not a signal: {exc}") from exc


@dataclass(frozen=True, slots=True)
class NoSignal:
    """Why a (symbol, bar) has no signal: kept in ``P:{SYM}:nosignal`` for the API to report."""

    symbol: str
    bar: BarRef
    reason: str  # short code, e.g. "fallback_input:holed_window"
    detail: str  # what was tried: the components' reasons, then the fallback's
    produced_at: int
    produced_wall_ms: int
    extra: dict[str, str] = field(default_factory=dict)

    def to_fields(self) -> dict[str, str]:
        return {
            "symbol": self.symbol,
            "interval": self.bar.interval,
            "bar_start": str(self.bar.start),
            "close_time": str(self.bar.close_time),
            "reason": self.reason,
            "detail": self.detail,
            "produced_at": str(self.produced_at),
            "produced_wall_ms": str(self.produced_wall_ms),
        } | self.extra

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> NoSignal:
        try:
            own = {
                "symbol",
                "interval",
                "bar_start",
                "close_time",
                "reason",
                "detail",
                "produced_at",
                "produced_wall_ms",
            }
            return cls(
                symbol=fields["symbol"],
                bar=BarRef(fields["interval"], int(fields["bar_start"]), int(fields["close_time"])),
                reason=fields["reason"],
                detail=fields.get("detail", ""),
                produced_at=int(fields["produced_at"]),
                produced_wall_ms=int(fields["produced_wall_ms"]),
                extra={k: v for k, v in fields.items() if k not in own},
            )
        except (KeyError, ValueError) as exc:
            raise SignalFormatError(f"not a no-signal record: {exc}") from exc


def horizon_text(minutes: int) -> str:
    """The signal's ``horizon``: the question every component answers, in words."""
    return f"log return over the next {minutes} min"


@functools.cache
def _signal_adapter() -> TypeAdapter[Signal]:
    return TypeAdapter(Signal)
