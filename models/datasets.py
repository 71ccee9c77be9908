"""Training samples: the SAME feature and rendering code the worker runs, applied to history.

``tcn``: indicator sequences from :func:`inference.features.tcn_input` (channels-first).
``efficientnet``: chart composites from :func:`inference.render.composite`, one shared model for
all timeframes.
``linear``: the feature vector of :func:`inference.linear_features.linear_input` (set r1; the view
samples only), read by the dense network; ``ohlc``: the CIPM network's OHLC image
(:func:`inference.render.ohlc_input`, the view samples only); ``ohlc_btc``: that image over the one
of BTCUSDT on the same venue for the same minutes (:func:`inference.render.ohlc_pair`; a sample
whose leader window is missing or holed is skipped, as serving drops the component then).

Two labellings. :func:`build_tcn_samples` / :func:`build_image_samples`: the direction of the next bar
of the window's own timeframe (the models shipped before the signal had one horizon).
:func:`build_view_samples`: the signal's question — is the log return over the next H minutes
positive? — asked at every 1m close, with the input a view of any timeframe: the window of 5m, 15m
or 1h bars that serving holds when that 1m bar closes (:func:`models.data.view_ends`). One target,
multi-timeframe inputs.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from inference.features import WARMUP_BARS, tcn_input
from inference.linear_features import LINEAR_BARS, LINEAR_FEATURES, linear_input
from inference.render import composite, ohlc_input, ohlc_pair
from models.data import (
    MINUTE_MS,
    Series,
    aggregate,
    horizon_ends,
    horizon_targets,
    labels,
    load_series,
    moved,
    split_by_time,
    view_ends,
)

__all__ = [
    "Cuts",
    "SampleSet",
    "build_image_samples",
    "build_tcn_samples",
    "build_view_samples",
    "leader_of",
    "leader_rows",
    "series_for_timeframe",
    "view_need",
]

TIMEFRAMES = (1, 5, 15, 60)
TCN_LENGTH = 64
IMAGE_BARS = 24
IMAGE_HEIGHT = 54


@dataclass(frozen=True)
class Cuts:
    """Global cut times (exchange ms): train before ``train_end``, validate before ``val_end``, test after."""

    train_end: int = 1_748_736_000_000  # 2025-06-01 00:00 UTC
    val_end: int = 1_749_945_600_000  # 2025-06-15 00:00 UTC


@dataclass
class SampleSet:
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.float32]
    span: tuple[int, int]  # first and last label-bar start (ms)
    sources: list[str] = field(default_factory=list)
    # each sample's label-bar start (ms), where the builder records it (the view samples): what
    # time-ordered cross-validation (models.tune) splits on
    times: npt.NDArray[np.int64] | None = None

    def __len__(self) -> int:
        return len(self.y)


def series_for_timeframe(data_dir: Path, minutes: int) -> list[Series]:
    """Every series in ``data_dir`` usable at ``minutes`` (finer bars aggregated, coarser skipped).

    One venue's market appears in several files (a native 1h file and 1m files aggregated to 1h):
    each bar time of a (venue, symbol) is taken from one file only — native interval first — so no
    sample is counted twice.
    """
    candidates = []
    for path in sorted(Path(p) for p in glob.glob(str(data_dir / "klines_*" / "*.csv.gz"))):
        s = load_series(path)
        if minutes % s.interval_min == 0 and (minutes // s.interval_min) <= 60:
            candidates.append(s)
    candidates.sort(key=lambda s: (s.name.split(s.symbol)[0], s.symbol, -s.interval_min, s.name))
    out: list[Series] = []
    covered: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for s in candidates:
        agg = aggregate(s, minutes)
        market = (s.name.split(s.symbol)[0], s.symbol)
        keep = np.ones(len(agg), bool)
        for lo, hi in covered.get(market, []):
            keep &= (agg.start_ms < lo) | (agg.start_ms > hi)
        if keep.sum() > 0:
            out.append(Series(agg.name, agg.symbol, agg.interval_min, agg.start_ms[keep], agg.ohlcv[keep]))
            covered.setdefault(market, []).append((int(agg.start_ms[0]), int(agg.start_ms[-1])))
    return out


def _subsample(ends: npt.NDArray[np.int64], cap: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    if len(ends) <= cap:
        return ends
    return np.sort(rng.choice(ends, size=cap, replace=False))


def _collect(
    series_list: Iterable[Series], need: int, cuts: Cuts, part: str, cap: int, rng: np.random.Generator
) -> list[tuple[Series, npt.NDArray[np.int64]]]:
    chosen = []
    for s in series_list:
        split = split_by_time(s, need, cuts.train_end, cuts.val_end)
        ends = getattr(split, part)
        ends = ends[moved(s, ends)]  # an unchanged close is neither up nor down: no label
        if len(ends):
            chosen.append((s, ends))
    total = sum(len(e) for _, e in chosen)
    if total > cap:  # spread the cap over series in proportion to what each offers
        chosen = [(s, _subsample(e, max(1, cap * len(e) // total), rng)) for s, e in chosen]
    return chosen


def _span(parts: list[tuple[Series, npt.NDArray[np.int64]]]) -> tuple[int, int]:
    firsts = [int(s.start_ms[e[0] + 1]) for s, e in parts if len(e)]
    lasts = [int(s.start_ms[e[-1] + 1]) for s, e in parts if len(e)]
    return (min(firsts), max(lasts)) if firsts else (0, 0)


def build_tcn_samples(
    series_list: list[Series], cuts: Cuts, part: str, cap: int, seed: int = 0, length: int = TCN_LENGTH
) -> SampleSet:
    rng = np.random.default_rng(seed)
    need = length + WARMUP_BARS
    parts = _collect(series_list, need, cuts, part, cap, rng)
    xs, ys = [], []
    for s, ends in parts:
        xs.append(np.stack([tcn_input(s.ohlcv[t - need + 1 : t + 1], length) for t in ends]))
        ys.append(labels(s, ends))
    return SampleSet(
        x=np.concatenate(xs) if xs else np.zeros((0, 8, length), np.float32),
        y=np.concatenate(ys) if ys else np.zeros(0, np.float32),
        span=_span(parts),
        sources=[s.name for s, _ in parts],
    )


def build_image_samples(series_list: list[Series], cuts: Cuts, part: str, cap: int, seed: int = 0) -> SampleSet:
    rng = np.random.default_rng(seed)
    parts = _collect(series_list, IMAGE_BARS, cuts, part, cap, rng)
    xs, ys = [], []
    for s, ends in parts:
        xs.append(np.stack([composite(s.ohlcv[t - IMAGE_BARS + 1 : t + 1], IMAGE_HEIGHT, IMAGE_BARS) for t in ends]))
        ys.append(labels(s, ends))
    return SampleSet(
        x=np.concatenate(xs) if xs else np.zeros((0, 3, IMAGE_HEIGHT, 3 * IMAGE_BARS), np.float32),
        y=np.concatenate(ys) if ys else np.zeros(0, np.float32),
        span=_span(parts),
        sources=[s.name for s, _ in parts],
    )


LEADER = "BTCUSDT"  # the symbol whose image the two-layer CIPM reads beside every symbol's


def view_need(kind: str, length: int = TCN_LENGTH) -> int:
    """Bars of its own timeframe one window of ``kind`` (``tcn``, ``linear``, ``image``, ``ohlc`` or
    ``ohlc_btc``) needs."""
    return {"tcn": length + WARMUP_BARS, "linear": LINEAR_BARS}.get(kind, IMAGE_BARS)


def leader_of(bases: list[Series]) -> dict[str, Series]:
    """Each venue's BTCUSDT bars (all its files merged, in time order), by venue prefix
    (``bybit_linear_``): the leader every series of that venue is read beside."""
    found: dict[str, list[Series]] = {}
    for s in bases:
        if s.symbol == LEADER:
            found.setdefault(s.name.split(s.symbol)[0], []).append(s)
    out = {}
    for venue, parts in found.items():
        order = np.argsort(np.concatenate([p.start_ms for p in parts]), kind="stable")
        start = np.concatenate([p.start_ms for p in parts])[order]
        ohlcv = np.concatenate([p.ohlcv for p in parts])[order]
        out[venue] = Series(f"{venue}{LEADER}", LEADER, parts[0].interval_min, start, ohlcv)
    return out


def leader_rows(leader: Series, s: Series, j: npt.NDArray[np.int64], need: int) -> npt.NDArray[np.int64]:
    """For each window of ``s`` ending at row ``j``, the row of ``leader`` ending at the same bar,
    when the leader has the ``need`` bars before it without a hole; else -1."""
    if not len(leader.start_ms):
        return np.full(len(j), -1, np.int64)
    k = np.searchsorted(leader.start_ms, s.start_ms[j])
    k = np.minimum(k, len(leader.start_ms) - 1)
    ok = (leader.start_ms[k] == s.start_ms[j]) & (k >= need - 1)
    first = leader.start_ms[np.maximum(k - need + 1, 0)]
    ok &= leader.start_ms[k] - first == (need - 1) * s.interval_min * MINUTE_MS
    return np.where(ok, k, -1)


def _view_inputs(
    kind: str,
    ohlcv: npt.NDArray[np.float64],
    ends: list[int],
    need: int,
    leader: tuple[npt.NDArray[np.float64], list[int]] | None = None,
) -> npt.NDArray[np.float32]:
    """The model input of ``kind`` for the window ending at each of ``ends`` (``leader``: the leader's
    bars and the row of each window's last bar in them, for ``ohlc_btc``)."""
    if kind == "ohlc_btc":
        assert leader is not None
        bars, rows = leader
        return np.stack(
            [
                ohlc_pair(ohlcv[k - need + 1 : k + 1], bars[r - need + 1 : r + 1], IMAGE_HEIGHT, IMAGE_BARS)
                for k, r in zip(ends, rows, strict=True)
            ]
        )
    if kind == "tcn":
        return np.stack([tcn_input(ohlcv[k - need + 1 : k + 1], TCN_LENGTH) for k in ends])
    if kind == "linear":
        return np.stack([linear_input(ohlcv[k - need + 1 : k + 1]) for k in ends])
    if kind == "ohlc":
        return np.stack([ohlc_input(ohlcv[k - need + 1 : k + 1], IMAGE_HEIGHT, IMAGE_BARS) for k in ends])
    return np.stack([composite(ohlcv[k - need + 1 : k + 1], IMAGE_HEIGHT, IMAGE_BARS) for k in ends])


def build_view_samples(
    kind: str,
    bases: list[Series],
    timeframe: int,
    cuts: Cuts,
    part: str,
    cap: int,
    horizon: int,
    seed: int = 0,
) -> SampleSet:
    """Samples of the H-minute question on a ``timeframe`` view of each 1m series in ``bases``.

    One sample per 1m bar ``t`` that moved over the next ``horizon`` minutes; its input is the
    ``timeframe`` window serving would read when ``t`` closes (skipped where serving would refuse
    it), its label ``log return over (t, t + H] > 0``. Parts by time, as :func:`split_by_time`: train
    when the last label bar starts before ``train_end``; validation when the input window starts at
    or after ``train_end`` and the label ends by ``val_end``; test when the window starts at or after
    ``val_end``.
    """
    rng = np.random.default_rng(seed)
    need = view_need(kind)
    leaders = {v: aggregate(b, timeframe) for v, b in leader_of(bases).items()} if kind == "ohlc_btc" else {}
    chosen: list[tuple[Series, Series, npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]] = []
    paired: dict[str, npt.NDArray[np.int64]] = {}  # ohlc_btc: each kept window's row in its leader
    for s in bases:
        if s.interval_min != 1:
            raise ValueError(f"{s.name}: view samples are asked at 1m closes; this series has {s.interval_min}m bars")
        coarse = aggregate(s, timeframe)
        ends = horizon_ends(s, 1, horizon)
        j = view_ends(s, coarse, ends, need)
        ends, j = ends[j >= 0], j[j >= 0]
        if kind == "ohlc_btc":
            leader = leaders.get(s.name.split(s.symbol)[0])
            if leader is None:  # no BTCUSDT on this venue: serving drops the component too
                continue
            k = leader_rows(leader, coarse, j, need)
            ends, j, k = ends[k >= 0], j[k >= 0], k[k >= 0]
        r_h, _ = horizon_targets(s, ends, horizon)
        label_start = s.start_ms[ends + horizon]
        window_start = coarse.start_ms[j - need + 1]
        keep = {
            "train": label_start < cuts.train_end,
            "val": (window_start >= cuts.train_end) & (label_start + MINUTE_MS <= cuts.val_end),
            "test": window_start >= cuts.val_end,
        }[part] & (r_h != 0)  # an unchanged close is neither up nor down: no label
        if keep.any():
            chosen.append((s, coarse, ends[keep], j[keep], (r_h[keep] > 0).astype(np.float32)))
            if kind == "ohlc_btc":
                paired[s.name] = k[keep]
    total = sum(len(e) for _, _, e, _, _ in chosen)
    xs, ys, ts, firsts, lasts = [], [], [], [], []
    for s, coarse, ends, j, y in chosen:
        rows = paired.get(s.name)
        if total > cap:  # the cap spread over the series in proportion to what each offers
            pick = _subsample(np.arange(len(ends)), max(1, cap * len(ends) // total), rng)
            ends, j, y = ends[pick], j[pick], y[pick]
            rows = rows[pick] if rows is not None else None
        pair = (leaders[s.name.split(s.symbol)[0]].ohlcv, rows.tolist()) if rows is not None else None
        xs.append(_view_inputs(kind, coarse.ohlcv, j.tolist(), need, pair))
        ys.append(y)
        ts.append(s.start_ms[ends + 1].astype(np.int64))
        firsts.append(int(s.start_ms[ends[0] + 1]))
        lasts.append(int(s.start_ms[ends[-1] + 1]))
    image = (0, 3, IMAGE_HEIGHT, 3 * IMAGE_BARS)
    empty = {
        "tcn": (0, 8, TCN_LENGTH),
        "linear": (0, len(LINEAR_FEATURES)),
        "ohlc": (0, 1, *image[2:]),
        "ohlc_btc": (0, 2, *image[2:]),
    }.get(kind, image)
    return SampleSet(
        x=np.concatenate(xs) if xs else np.zeros(empty, np.float32),
        y=np.concatenate(ys) if ys else np.zeros(0, np.float32),
        span=(min(firsts), max(lasts)) if firsts else (0, 0),
        sources=[f"{s.name}->{timeframe}m" if timeframe != 1 else s.name for s, *_ in chosen],
        times=np.concatenate(ts) if ts else np.zeros(0, np.int64),
    )
