"""Order-book recordings replayed into the ingestor's depth rows, and the heatmap CNN's samples.

Two recording formats become the same rows the ingestor writes (:mod:`streaming.depth`: a row per
``sample_ms`` slot, taken at the slot's first book update, of the top ``book_depth`` levels a side,
binned ±2 % around the mid):

* **Bybit** v5 book frames, as ``candlecast record`` writes them (``{"recv_ms", "frame"}`` lines) or
  as bare frames (Bybit's historical files), plain or zipped: parsed by the ingestor's own
  :func:`streaming.frames.parse_frame` into its own :class:`streaming.book.OrderBook` (which keeps
  ``book_depth`` levels, checks ``u`` and refuses a crossed book), sampled only while READY;
* **Binance** raw diff-depth streams (``<local_ts_ns> <json>`` lines, ``../shared/data/orderbook``):
  they carry no snapshot, so the book is the levels updated since the recording began; rows start
  after ``warmup_ms``, and none is taken from a crossed or one-sided book. Levels that never changed
  during the recording are missing from it (near the mid nearly every level changes within seconds).

A sample is asked at a slot boundary ``t``: its input the ``rows`` slots before ``t``
(:func:`inference.checks.depth_window`, serving's check and grid), its target the mid's log return
from the last input slot to the slot ``horizon`` minutes later. The mid stands in for the close the
served signal is judged by. Serving asks at every minute close; training asks every ``stride_ms``
(overlapping windows: the samples are far from independent, and the model card says so).
"""

from __future__ import annotations

import gzip
import io
import logging
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

from inference.checks import depth_window
from inference.render import book_heatmap
from streaming.book import ApplyResult, OrderBook
from streaming.depth import DepthRow, sample_levels, slot_start
from streaming.errors import FrameError
from streaming.frames import BookUpdate, parse_frame

__all__ = [
    "DepthSamples",
    "DepthSeries",
    "binance_rows",
    "bybit_rows",
    "depth_samples",
    "depth_series",
    "load_depth_series",
]

log = logging.getLogger(__name__)

_BINANCE = re.compile(r"^(binance_[a-z_]+_[A-Z0-9]+)_rawws_(\d{8})\.gz$")
MINUTE_MS = 60_000


@dataclass(frozen=True)
class DepthSeries:
    """One recording session's rows (several contiguous files make one)."""

    name: str
    rows: list[DepthRow]


def binance_rows(paths: list[Path], book_depth: int, sample_ms: int, warmup_ms: int) -> list[DepthRow]:
    """The rows of Binance raw diff-depth recordings, replayed in order (see the module docstring)."""
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    rows: list[DepthRow] = []
    first: int | None = None
    last_slot = -1
    for path in paths:
        with gzip.open(path, "rb") as fh:
            for line in fh:
                _, _, raw = line.partition(b" ")
                if b"depthUpdate" not in raw:
                    continue  # trades and book tickers
                msg = orjson.loads(raw)
                data = msg.get("data", msg)
                ts = int(data["E"])
                for side, levels in ((bids, data["b"]), (asks, data["a"])):
                    for price, size in levels:
                        p, q = float(price), float(size)
                        if q > 0:
                            side[p] = q
                        else:
                            side.pop(p, None)
                first = ts if first is None else first
                slot = slot_start(ts, sample_ms)
                if ts - first < warmup_ms or slot <= last_slot or not bids or not asks:
                    continue
                top_bids = sorted(bids, reverse=True)[:book_depth]
                top_asks = sorted(asks)[:book_depth]
                if top_bids[0] >= top_asks[0]:
                    continue  # crossed: a level missed before the recording began
                last_slot = slot
                rows.append(
                    sample_levels(top_bids, [bids[p] for p in top_bids], top_asks, [asks[p] for p in top_asks], slot)
                )
    return rows


def _frames(path: Path) -> Iterator[bytes]:
    """The frames of a Bybit recording: ``candlecast record`` lines or bare frames, plain or zipped."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                with z.open(name) as fh:
                    yield from _lines(io.BufferedReader(fh))  # type: ignore[arg-type]
        return
    with path.open("rb") as fh:
        yield from _lines(fh)


def _lines(fh: io.BufferedReader) -> Iterator[bytes]:
    for line in fh:
        line = line.strip()
        if not line:
            continue
        if line.startswith(b'{"recv_ms"'):
            frame = orjson.loads(line).get("frame", "")
            yield frame.encode() if isinstance(frame, str) else b""
        else:
            yield line


def bybit_rows(path: Path, symbol: str, book_depth: int, sample_ms: int) -> list[DepthRow]:
    """The rows the ingestor would have written for ``symbol`` from a Bybit recording: its book (any
    recorded depth, kept to ``book_depth`` levels), sampled at each slot's first update while READY."""
    book = OrderBook(symbol, book_depth)
    rows: list[DepthRow] = []
    last_slot = -1
    for frame in _frames(path):
        try:
            msg = parse_frame(frame)
        except FrameError:
            continue  # other topics, acks, pongs
        if not isinstance(msg, BookUpdate) or msg.symbol != symbol:
            continue
        if book.apply(msg) is not ApplyResult.APPLIED:
            continue
        slot = slot_start(msg.ts, sample_ms)
        if slot > last_slot:
            last_slot = slot
            rows.append(sample_levels(*book.float_levels(), slot))
    return rows


def depth_series(data_dir: Path) -> list[tuple[str, list[Path]]]:
    """The Binance recording sessions under ``data_dir/orderbook``: files of consecutive days grouped,
    each session named by its stream and first day."""
    days: dict[str, list[tuple[int, Path]]] = {}
    for path in sorted((data_dir / "orderbook").glob("*_rawws_*.gz")):
        if m := _BINANCE.match(path.name):
            days.setdefault(m.group(1), []).append((int(m.group(2)), path))
    out: list[tuple[str, list[Path]]] = []
    for stream, files in days.items():
        previous = None
        for day, path in files:
            if previous is None or day - previous != 1:  # a new session
                out.append((f"{stream}_{day}", []))
            out[-1][1].append(path)
            previous = day
    return out


def load_depth_series(
    data_dir: Path, book_depth: int, sample_ms: int, warmup_ms: int, recordings: tuple[Path, ...] = ()
) -> list[DepthSeries]:
    """Every Binance session of ``data_dir`` and every Bybit ``recordings`` file (``name@SYMBOL``
    paths are not needed: the symbol is read from the file's first book frame)."""
    out = [
        DepthSeries(name, binance_rows(paths, book_depth, sample_ms, warmup_ms))
        for name, paths in depth_series(data_dir)
    ]
    for path in recordings:
        symbol = _first_book_symbol(path)
        if symbol is None:
            log.warning("%s: no order-book frame in it", path)
            continue
        out.append(DepthSeries(f"bybit_{symbol}_{path.stem}", bybit_rows(path, symbol, book_depth, sample_ms)))
    for s in out:
        log.info("%s: %d depth rows", s.name, len(s.rows))
    return [s for s in out if s.rows]


def _first_book_symbol(path: Path) -> str | None:
    for frame in _frames(path):
        try:
            msg = parse_frame(frame)
        except FrameError:
            continue
        if isinstance(msg, BookUpdate):
            return msg.symbol
    return None


@dataclass(frozen=True)
class DepthSamples:
    x: npt.NDArray[np.float32]  # (n, 1, 200, rows): book_heatmap images, as serving builds them
    log_r: npt.NDArray[np.float64]  # the mid's log return over the horizon
    times: npt.NDArray[np.int64]  # the asking time t (a slot boundary: serving's bar close)
    series: list[str]


def _mid_at(rows: list[DepthRow], ts: npt.NDArray[np.int64], slot: int, max_gap_ms: int) -> float | None:
    i = int(np.searchsorted(ts, slot, side="right")) - 1
    if i < 0 or slot - ts[i] > max_gap_ms:
        return None
    return rows[i].mid


def depth_samples(
    series: list[DepthSeries],
    *,
    rows: int,
    sample_ms: int,
    max_gap_ms: int,
    horizon: int,
    stride_ms: int,
    span: tuple[float, float] = (0.0, 1.0),
) -> DepthSamples:
    """Samples asked every ``stride_ms`` inside the ``span`` fraction of each series' askable times
    (``(0, 0.6)``: its first 60 %), their targets inside that span too (no label reaches the next
    span). A time whose window :func:`~inference.checks.depth_window` refuses is skipped, as serving
    drops the component then; so is one whose target has no row."""
    xs: list[npt.NDArray[np.float32]] = []
    rs: list[float] = []
    times: list[int] = []
    names: list[str] = []
    ahead = horizon * MINUTE_MS
    for s in series:
        ts = np.array([r.ts for r in s.rows], np.int64)
        earliest = int(ts[0]) + rows * sample_ms  # the first time a whole window can be there
        first = earliest + (-earliest) % stride_ms  # on the stride's grid: minute closes for a minute stride
        last = int(ts[-1]) + sample_ms  # the last time a target could be read at
        lo = first + (last - first) * span[0]
        hi = first + (last - first) * span[1]
        for t in range(first, int(hi) - ahead + 1, stride_ms):
            if t < lo:
                continue
            window = depth_window(s.rows, t, rows, sample_ms, max_gap_ms)
            if isinstance(window, str):
                continue
            p0 = _mid_at(s.rows, ts, t - sample_ms, max_gap_ms)
            p1 = _mid_at(s.rows, ts, t + ahead - sample_ms, max_gap_ms)
            if p0 is None or p1 is None:
                continue
            xs.append(book_heatmap(window)[None])
            rs.append(float(np.log(p1 / p0)))
            times.append(t)
            names.append(s.name)
    x = np.stack(xs) if xs else np.zeros((0, 1, 200, rows), np.float32)
    return DepthSamples(x, np.array(rs, np.float64), np.array(times, np.int64), names)
