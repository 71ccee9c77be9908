"""One question, every view: train → export → stack → evaluate with ``--horizon 1`` on real bars.

Every component (1m and 5m windows, TCN and EfficientNet) forecasts the log return over the next
minute, asked at each 1m close; it is pre-trained on another venue's bars and fine-tuned on Bybit's;
the stacker weighs the 5m views beside the 1m ones; and the evaluation of a 5m view is what the
worker's engine serves from a store holding that 5m window. Tiny caps: this proves the machinery,
the shipped models are described in models/artifacts/MODEL_CARD.md.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.manifest import Manifest
from models.card import model_card
from models.data import Series, aggregate, load_series
from models.datasets import Cuts
from models.evaluate import EvaluateConfig, evaluate
from models.export import export_all, export_onnx
from models.linear import fit_linear
from models.stack import fit_ensemble
from models.tcn import TCN
from models.train import TrainConfig, load_onnx_weights, train_all
from models.zoo import FAMILIES, ZOO
from tests.conftest import DATA_1M

pytestmark = pytest.mark.timeout(300)

BYBIT = "bybit_linear_BTCUSDT_1m"
BINANCE = "binance_usdm_perp_BTCUSDT_1m"
ZOO_1M = tuple(f"{k}_1m" for k in ZOO)
B3 = ("efficientnet_b3_1m", "efficientnet_b3_5m")


@pytest.fixture(scope="module")
def h1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("h1")
    data = root / "data" / "klines_1m"
    data.mkdir(parents=True)
    for name in (BYBIT, BINANCE):
        (data / f"{name}.csv.gz").symlink_to(DATA_1M / f"{name}.csv.gz")
    (root / "data" / "orderbook").symlink_to(DATA_1M.parent / "orderbook")  # the heatmap CNN's recorded depth
    work, artifacts = root / "work", root / "artifacts"
    cfg = TrainConfig(
        data_dir=root / "data",
        work_dir=work,
        timeframes=(1, 5),
        horizon=1,
        fine_tune="bybit_linear",
        fine_tune_epochs=1,
        tcn_train_cap=512,
        tcn_val_cap=256,
        tcn_epochs=1,
        image_train_cap=48,
        image_val_cap=24,
        image_epochs=1,
        batch_size=64,
    )
    train_all(cfg)
    train_all(dataclasses.replace(cfg, models=ZOO, timeframes=(1,), zoo_epochs=1))  # the seeds' zoo, on 1m
    train_all(dataclasses.replace(cfg, models=("efficientnet",), efficientnet_variant="b3"))  # the ladder's top
    train_all(dataclasses.replace(cfg, models=("book_cnn",), zoo_epochs=1))  # on recorded depth, opt-in
    export_all(work, artifacts, root / "data", version="test", tcn_check_samples=64, image_check_samples=32)
    fit_linear(root / "data", artifacts, cap=4000, val_cap=800, workers=1)
    fit_ensemble(artifacts, root / "data", per_series=1500)
    sliced = root / f"{BYBIT}_slice.csv.gz"
    with gzip.open(DATA_1M / f"{BYBIT}.csv.gz", "rt") as src, gzip.open(sliced, "wt") as dst:
        rows = csv.reader(src)
        w = csv.writer(dst)
        w.writerow(next(rows))
        w.writerows([r for r in rows if int(r[0]) >= Cuts().val_end][:1200])
    return {"root": root, "work": work, "artifacts": artifacts, "slice": sliced}


def test_every_view_answers_the_signal_question_pretrained_elsewhere_and_fine_tuned_on_bybit(
    h1: dict[str, Path],
) -> None:
    manifest = Manifest.load(h1["artifacts"] / "manifest.json")
    by_name = {c.name: c for c in manifest.components}
    assert set(by_name) == {
        "tcn_1m",
        "tcn_5m",
        "efficientnet_1m",
        "efficientnet_5m",
        "linear_1m",
        *ZOO_1M,
        *B3,
        "book_cnn_1m",
    }
    book = by_name["book_cnn_1m"]
    assert book.opt_in and book.training["parity_max_abs_diff"] <= 1e-4 and book.horizon_minutes == 1
    for tf in ("1", "5"):  # the failover ladder: B3 stands in for the B0 of its timeframe, from its own file
        b3 = by_name[f"efficientnet_b3_{tf}m"]
        assert (b3.variant, b3.stands_in_for, b3.file) == ("b3", f"efficientnet_{tf}m", "efficientnet_b3.onnx")
        assert by_name[f"efficientnet_{tf}m"].stands_in_for == ""
    assert {c.name: (c.family, c.variant) for c in manifest.components if c.kind in ZOO} == {
        f"{k}_1m": FAMILIES[k] for k in ZOO
    }
    assert by_name["efficientnet_1m"].variant == "b0" and by_name["linear_1m"].family == "linear"
    for name in ("tcn_1m", "tcn_5m", "efficientnet_1m", "efficientnet_5m", *ZOO_1M, *B3):
        c = by_name[name]
        assert c.horizon_minutes == 1 and c.horizon == "log return over the next 1 min", name
        assert c.output["meaning"].endswith(f"from the {c.timeframe}m window")
        assert c.training["parity_max_abs_diff"] <= 1e-4
    for name in ("tcn_1m", "tcn_5m", *ZOO_1M):
        tr = by_name[name].training
        assert any(s.startswith(BINANCE) for s in tr["sources"])  # pre-trained on the other venue
        ft = tr["fine_tune"]
        assert ft["series"] == [BYBIT] and ft["samples"] > 0 and isinstance(ft["kept"], bool)
        assert ft["kept"] == (ft["val_loss_after"] < ft["val_loss_before"])  # kept only if it helped


def test_the_stacker_weighs_the_coarse_views_beside_the_1m_ones(h1: dict[str, Path]) -> None:
    spec = Manifest.load(h1["artifacts"] / "manifest.json").ensemble
    assert spec is not None
    assert set(spec.weights) == {"tcn_1m", "tcn_5m", "efficientnet_1m", "efficientnet_5m", "linear_1m", *ZOO_1M}
    assert all(np.isfinite(w) for w in spec.weights.values())
    votes = {n: c["votes"] for n, c in spec.fitted["components"].items()}
    assert votes["tcn_1m"] == 1.0 and 0.0 < votes["tcn_5m"] <= 1.0


async def test_a_5m_view_is_evaluated_as_the_engine_serves_it(h1: dict[str, Path], tmp_path: Path) -> None:
    """For bars of the slice, the engine reading a store with the 1m and 5m windows gives the
    ensemble row of predictions.csv.gz; and the 5m components voted there."""
    from prometheus_client import CollectorRegistry

    from inference.components import ModelRegistry
    from inference.config import WorkerConfig
    from inference.engine import SignalEngine
    from inference.metrics import WorkerMetrics
    from inference.signal import Signal
    from streaming.klines import Bar
    from streaming.memory_store import MemoryStore
    from streaming.store import BarEvent, WriteBatch

    out = tmp_path / "eval"
    result = evaluate(
        EvaluateConfig(files=(h1["slice"],), out_dir=out, artifacts=h1["artifacts"], data_dir=h1["root"] / "data")
    )
    # the B3 rows come from the CPU (no GPU here); the ensemble is the CPU host's, B0 in the slot
    assert {"tcn_5m", "efficientnet_5m", *ZOO_1M, *B3, "book_cnn_1m"} <= set(result["strategies"])
    book = result["strategies"]["book_cnn_1m"]  # scored on the held-out depth, off by default or not
    assert book["n"] >= 1 and book["small_sample"] and book["every_second_n"] > 30
    assert set(result["meta"]["ensemble"]["weights"]).isdisjoint(B3)
    assert result["meta"]["not_evaluated"] == {}
    with gzip.open(out / "predictions.csv.gz", "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ensemble = {int(r["open_time_ms"]): r for r in rows if r["strategy"] == "ensemble"}
    tcn5 = {int(r["open_time_ms"]): r for r in rows if r["strategy"] == "tcn_5m" and r["p_up"]}
    assert tcn5  # after 97 five-minute bars of the slice, the 5m view votes
    book_rows = [r for r in rows if r["strategy"] == "book_cnn_1m"]  # its held-out calls, recomputable too
    recordings = next(c for c in Manifest.load(h1["artifacts"] / "manifest.json").components if c.kind == "book_cnn")
    assert len(book_rows) == book["n"] and {r["series"] for r in book_rows} <= set(recordings.training["recordings"])

    base = load_series(h1["slice"])
    five = aggregate(base, 5)

    def bars(s: Series, upto: int, keep: int) -> list[Bar]:
        idx = range(max(0, upto - keep + 1), upto + 1)
        return [Bar(int(s.start_ms[i]), *(Decimal(repr(float(v))) for v in s.ohlcv[i]), Decimal(0)) for i in idx]

    registry = ModelRegistry(h1["artifacts"], prefer_gpu=False)
    await registry.load()
    engine = SignalEngine(
        WorkerConfig(intervals=("1", "5"), latency_budget_ms=60_000),
        MemoryStore(window_bars=300),
        registry,
        WorkerMetrics(CollectorRegistry()),
    )
    checked = 0
    for k in range(300, len(base), 53):
        start = int(base.start_ms[k])
        if start not in tcn5:
            continue
        now = start + 60_000
        j = int(np.searchsorted(five.start_ms + 300_000, now, side="right")) - 1  # the 5m bars closed by then
        store = MemoryStore(window_bars=300)
        await store.write(WriteBatch(bars={("BTCUSDT", "1"): bars(base, k, 300), ("BTCUSDT", "5"): bars(five, j, 120)}))
        engine.store = store
        s = await engine.compute(BarEvent("BTCUSDT", "1", start))
        assert isinstance(s, Signal) and s.source == "ensemble"
        voted = {c.name: c.p_up for c in s.components if c.p_up is not None}
        assert voted["tcn_5m"] == pytest.approx(float(tcn5[start]["p_up"]), abs=1e-6)
        assert s.p_up == pytest.approx(float(ensemble[start]["p_up"]), abs=1e-9)
        assert {"long": 1, "short": -1, "flat": 0}[s.direction] == int(ensemble[start]["direction"])
        checked += 1
    assert checked >= 3
    await engine.close()

    # the model card's comparison: every zoo row with its inference time, training time and parity
    card = model_card(Manifest.load(h1["artifacts"] / "manifest.json"), out).splitlines()
    header = [h.strip() for h in card[card.index(next(x for x in card if x.startswith("| strategy |")))].split("|")]
    assert any(x.startswith("`book_cnn_1m`") and "Off by default" in x for x in card)
    for name in (*ZOO_1M, "book_cnn_1m"):
        cells = [x.strip() for x in next(x for x in card if x.startswith(f"| {name} |")).split("|")]
        assert float(cells[header.index("inference ms")]) > 0, name
        assert float(cells[header.index("train s")].replace(",", "")) >= 0, name
        assert float(cells[header.index("ONNX parity")]) <= 1e-4, name


def test_a_tcn_starts_from_its_shipped_onnx_weights_exactly(h1: dict[str, Path], tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = TCN(in_channels=8)
    x = np.random.default_rng(0).normal(size=(4, 8, 64)).astype(np.float32)
    export_onnx(model, x[:1], tmp_path / "tcn.onnx")
    torch.manual_seed(2)
    fresh = TCN(in_channels=8)
    load_onnx_weights(fresh, tmp_path / "tcn.onnx")
    fresh.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(fresh(torch.from_numpy(x)), model(torch.from_numpy(x)))
    with pytest.raises(ValueError, match="has no weights named blocks"):
        load_onnx_weights(TCN(in_channels=8), h1["artifacts"] / "efficientnet.onnx")
    # --init-from with no epochs: the checkpoint is the shipped model, its record carried over
    work = tmp_path / "work"
    cfg = TrainConfig(
        data_dir=h1["root"] / "data",
        work_dir=work,
        models=("tcn",),
        timeframes=(1,),
        horizon=1,
        init_from=h1["artifacts"],
        tcn_epochs=0,
    )
    summary = train_all(cfg)
    assert summary["tcn_1m"]["pretrained"]["from"] == "tcn_1m.onnx test"
    shipped = TCN(in_channels=8)
    load_onnx_weights(shipped, h1["artifacts"] / "tcn_1m.onnx")
    state = torch.load(work / "tcn_1m.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in shipped.state_dict().items())
    with pytest.raises(ValueError, match="--tcn-epochs 0 needs --init-from"):
        train_all(TrainConfig(data_dir=cfg.data_dir, work_dir=work, models=("tcn",), timeframes=(1,), tcn_epochs=0))
    with pytest.raises(ValueError, match="forecasts 1 min ahead, not --horizon 5"):
        train_all(
            TrainConfig(
                data_dir=cfg.data_dir,
                work_dir=work,
                models=("tcn",),
                timeframes=(1,),
                horizon=5,
                init_from=h1["artifacts"],
                tcn_epochs=0,
            )
        )
    with pytest.raises(ValueError, match="cnn1d: the zoo models answer the signal's question only"):
        # refused before the TCN trains
        train_all(TrainConfig(data_dir=cfg.data_dir, work_dir=work, models=("tcn", "cnn1d"), timeframes=(1,)))
    with pytest.raises(ValueError, match="--models: unknown gru"):
        train_all(TrainConfig(data_dir=cfg.data_dir, work_dir=work, models=("tcn", "gru"), timeframes=(1,)))
