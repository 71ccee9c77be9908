"""The heatmap CNN's data and its way to the manifest: recordings replayed into the ingestor's rows,
samples whose labels stay inside their span, and train → export → held-out report on the real
recordings, the fitted ensemble kept when only an opt-in component is exported."""

from __future__ import annotations

import gzip
import itertools
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from inference.components import load_model_set
from inference.manifest import Manifest
from models.depth_data import binance_rows, bybit_rows, depth_samples, depth_series
from streaming.book import OrderBook
from streaming.depth import sample_levels
from streaming.frames import BookUpdate, parse_frame
from tests.conftest import ARTIFACTS

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
XRP = DATA / "orderbook" / "bybit_linear_XRPUSDT_ob500_2024-12-01_first5s.data.zip"

pytestmark = pytest.mark.timeout(300)


def test_binance_sessions_are_grouped_by_contiguous_days() -> None:
    sessions = dict(depth_series(DATA))
    assert [p.name for p in sessions["binance_usdm_perp_BTCUSDT_20240718"]] == [
        "binance_usdm_perp_BTCUSDT_rawws_20240718.gz",
        "binance_usdm_perp_BTCUSDT_rawws_20240719.gz",
    ]
    assert [p.name for p in sessions["binance_usdm_perp_BTCUSDT_20240808"]] == [
        "binance_usdm_perp_BTCUSDT_rawws_20240808.gz"
    ]


def test_a_binance_stream_gives_one_row_a_slot_of_the_top_levels(tmp_path: Path) -> None:
    src = DATA / "orderbook" / "binance_usdm_perp_BTCUSDT_rawws_20240808.gz"
    head = tmp_path / "head.gz"
    with gzip.open(src, "rb") as fh, gzip.open(head, "wb") as out:
        lines = [fh.readline() for _ in range(20_000)]
        out.writelines(lines)
    rows = binance_rows([head], book_depth=5, sample_ms=1000, warmup_ms=10_000)
    ts = np.array([r.ts for r in rows])
    assert len(rows) > 20 and (ts % 1000 == 0).all() and (np.diff(ts) > 0).all()
    first_event = min(json.loads(ln.partition(b" ")[2])["data"]["E"] for ln in lines[:50] if b"depthUpdate" in ln)
    assert ts[0] >= first_event + 10_000 - 1000  # the warm-up: a book without a snapshot fills first
    for r in rows:
        assert (r.bids > 0).sum() + (r.asks > 0).sum() <= 10  # five levels a side, binned
        assert r.bids.sum() > 0 and r.asks.sum() > 0


def test_a_bybit_recording_is_the_ingestors_book_in_either_line_format(tmp_path: Path) -> None:
    bare = bybit_rows(XRP, "XRPUSDT", 50, 1000)
    with zipfile.ZipFile(XRP) as z:
        frames = [ln for name in z.namelist() for ln in z.read(name).splitlines() if ln.strip()]
    recorded = tmp_path / "record.jsonl"  # what `candlecast record` writes
    recorded.write_bytes(b"".join(json.dumps({"recv_ms": 1, "frame": f.decode()}).encode() + b"\n" for f in frames))
    assert [(r.ts, r.mid, r.bids.tolist(), r.asks.tolist()) for r in bybit_rows(recorded, "XRPUSDT", 50, 1000)] == [
        (r.ts, r.mid, r.bids.tolist(), r.asks.tolist()) for r in bare
    ]
    # the rows are the ingestor's: its OrderBook (kept to 50 levels) sampled at each slot's first update
    book, expect, last = OrderBook("XRPUSDT", 50), [], -1
    for f in frames:
        msg = parse_frame(f)
        assert isinstance(msg, BookUpdate)
        book.apply(msg)
        if book.ready and msg.ts - msg.ts % 1000 > last:
            last = msg.ts - msg.ts % 1000
            expect.append(sample_levels(*book.float_levels(), last))
    assert len(bare) == len(expect) >= 5
    assert all(np.array_equal(a.bids, b.bids) and a.mid == b.mid for a, b in zip(bare, expect, strict=True))


def test_every_outcome_of_a_span_is_over_before_the_next_span_asks() -> None:
    from models.book import book_series

    series = book_series(DATA)
    asks: dict[str, list[np.ndarray]] = {}
    for span in ((0.0, 0.6), (0.6, 0.8), (0.8, 1.0)):
        d = depth_samples(series, rows=64, sample_ms=1000, max_gap_ms=5000, horizon=1, stride_ms=1000, span=span)
        for s in series:
            asks.setdefault(s.name, []).append(d.times[np.array(d.series) == s.name])
    for s in series:
        spans = [t for t in asks[s.name] if len(t)]  # a short recording may have no ask in a 20 % span
        assert len(asks[s.name][0]) and spans[0] is asks[s.name][0], s.name
        assert spans[0].min() - 64_000 >= s.rows[0].ts  # a whole window of rows behind the first ask
        for earlier, later in itertools.pairwise(spans):
            assert earlier.max() + 60_000 <= later.min()  # its last minute ahead ends before the next span asks
        assert spans[-1].max() + 60_000 <= s.rows[-1].ts + 1000  # and the last has its outcome recorded


def test_train_export_and_the_held_out_report_keep_the_fitted_ensemble(tmp_path: Path) -> None:
    from models.book import BOOK_NAME, book_report, book_series, train_book
    from models.export import export_all
    from models.train import TrainConfig

    work, out = tmp_path / "work", tmp_path / "art"
    work.mkdir()
    out.mkdir()
    shutil.copy(ARTIFACTS / "manifest.json", out / "manifest.json")  # the shipped components and stacker
    shipped = Manifest.load(out / "manifest.json")
    result = train_book(DATA, work, 1, (), TrainConfig(data_dir=DATA, work_dir=work), epochs=1)
    assert result["train_samples"] > 300 and set(result["recordings"]) >= {"binance_spot_BTCUSDT_20240808"}
    manifest = export_all(work, out, DATA)
    assert manifest.ensemble == shipped.ensemble and manifest.drift == shipped.drift  # an opt-in never votes in it
    others = [c.name for c in shipped.components if c.name != BOOK_NAME]  # (the shipped one is replaced)
    assert [c.name for c in manifest.components[:-1]] == others
    book = manifest.components[-1]
    assert (book.name, book.kind, book.opt_in != "") == (BOOK_NAME, "book_cnn", True)
    assert "too few" in book.opt_in and book.training["parity_max_abs_diff"] < 1e-4
    assert json.loads((out / "manifest.json").read_text())["components"][-1]["opt_in"] == book.opt_in
    models = load_model_set(out, prefer_gpu=False, opt_in=[BOOK_NAME])  # only its artifact is in `out`
    loaded = next(c for c in models.components if c.name == BOOK_NAME)
    assert loaded.disabled is None
    series = book_series(DATA, (), book.training["recordings"])  # the recordings it saw, as it saw them
    report, parts = book_report(loaded, series, 1, 0.5)
    assert report["n"] >= 1 and report["small_sample"] is True and report["every_second_n"] > 30
    assert sum(len(p.r) for p in parts) == report["n"]  # what predictions.csv.gz gets, row for row
    assert {p.series for p in parts} <= set(book.training["recordings"])
    grown = {k: v | {"rows": v["rows"] + 1} for k, v in book.training["recordings"].items()}
    with pytest.raises(ValueError, match="rows where book_cnn_1m was trained on"):
        book_series(DATA, (), grown)  # a recording that changed since: its split would not be the same
    with pytest.raises(ValueError, match="not found"):
        book_series(DATA, (), book.training["recordings"] | {"bybit_XRPUSDT_x": grown[next(iter(grown))]})
