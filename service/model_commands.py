"""The ``candlecast`` commands that build models, offline: ``train``, ``tune``, ``export``,
``fit-linear``, ``stack``, ``card`` and ``evaluate``.

Each imports ``models`` (torch, optuna) only when it runs, so the service's own commands never load
them; :func:`add_model_commands` adds them to the ``candlecast`` parser (``service.cli``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import orjson

from service import compose
from service.settings import ConfigError

__all__ = ["add_model_commands", "print_json"]


def print_json(obj: object) -> None:
    sys.stdout.write(
        orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=str).decode() + "\n"
    )


def add_model_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the offline model commands to ``sub`` (the ``candlecast`` subparsers)."""
    t = sub.add_parser("train", help="train the TCNs and the EfficientNet on ../shared/data (offline; needs torch)")
    t.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    t.add_argument("--work", type=Path, default=Path("build/train"), help="where checkpoints go")
    t.add_argument(
        "--models",
        default="tcn,efficientnet",
        help="tcn, efficientnet; the zoo: dense, cnn1d, mscnn, cnn_ta, bilstm, cipm, cipm_btc, book_cnn (depth)",
    )
    t.add_argument(
        "--depth-recordings",
        default="",
        help="book_cnn: `candlecast record` files to train on too, comma-separated (beside data-dir/orderbook)",
    )
    t.add_argument("--timeframes", default="1,5,15,60")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto (default: CUDA when present, else CPU), cpu or cuda")
    t.add_argument("--tcn-epochs", type=int, default=12)
    t.add_argument("--image-epochs", type=int, default=4)
    t.add_argument("--zoo-epochs", type=int, default=6, help="epochs of each zoo model (needs --horizon)")
    t.add_argument("--tcn-samples", type=int, default=60_000, help="training samples per timeframe (cap)")
    t.add_argument("--image-samples", type=int, default=3_000, help="training images per timeframe (cap)")
    t.add_argument(
        "--efficientnet-variant",
        choices=("b0", "b3"),
        default="b0",
        help="b0 (served on CPU), or b3 (served where a GPU provider binds: the seed's failover ladder)",
    )
    t.add_argument(
        "--horizon",
        type=int,
        default=None,
        help="minutes ahead (the signal's H), asked at every 1m close; default: each timeframe's next bar",
    )
    t.add_argument("--fine-tune", default=None, help="after pre-training, fine-tune on series named so (bybit_linear)")
    t.add_argument("--fine-tune-epochs", type=int, default=2)
    t.add_argument("--init-from", type=Path, default=None, help="start TCNs from the artifacts in this directory")
    t.add_argument("--params", type=Path, default=None, help="zoo hyper-parameters from `candlecast tune` (its --out)")
    t.set_defaults(handler=_cmd_train)

    tu = sub.add_parser(
        "tune", help="Optuna search of a cheap zoo model's hyper-parameters, time-ordered CV in the training span"
    )
    tu.add_argument("kind", choices=("dense", "cnn1d"))
    tu.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    tu.add_argument("--out", type=Path, default=Path("build/tune"), help="where <kind>.json goes")
    tu.add_argument("--horizon", type=int, default=1, help="minutes ahead (the signal's H)")
    tu.add_argument("--trials", type=int, default=20, help="at most this many trials")
    tu.add_argument("--timeout", type=float, default=1800.0, help="... and at most this many seconds")
    tu.add_argument("--folds", type=int, default=3)
    tu.add_argument("--samples", type=int, default=40_000, help="training-span samples (cap)")
    tu.add_argument("--epochs", type=int, default=3, help="epochs per fold")
    tu.set_defaults(handler=_cmd_tune)

    e = sub.add_parser("export", help="export trained checkpoints to ONNX + manifest (parity-checked)")
    e.add_argument("--work", type=Path, default=Path("build/train"))
    e.add_argument("--out", type=Path, default=Path("models/artifacts"))
    e.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    e.add_argument("--version", default=None)
    e.set_defaults(handler=_cmd_export)

    fl = sub.add_parser(
        "fit-linear", help="fit the linear component (P(up), |move|, volatility over H) and add it to the manifest"
    )
    fl.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    fl.add_argument("--artifacts", type=Path, default=Path("models/artifacts"))
    fl.add_argument("--horizon", type=int, default=1, help="minutes ahead (the signal's H)")
    fl.add_argument("--samples", type=int, default=600_000, help="training samples (cap, over all 1m series)")
    fl.set_defaults(handler=_cmd_fit_linear)

    st = sub.add_parser(
        "stack", help="fit the ensemble's weights, calibration and threshold on the validation span (manifest)"
    )
    st.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    st.add_argument("--artifacts", type=Path, default=Path("models/artifacts"))
    st.add_argument("--horizon", type=int, default=1, help="minutes ahead (the signal's H)")
    st.add_argument(
        "--per-series", type=int, default=25_000, help="validation windows per Bybit series (cap; default: all)"
    )
    st.add_argument(
        "--drift-only", action="store_true", help="only recompute the drift statistics (the fitted ensemble stays)"
    )
    st.set_defaults(handler=_cmd_stack)

    mc = sub.add_parser("card", help="regenerate MODEL_CARD.md from the manifest and a walk-forward report")
    mc.add_argument("--artifacts", type=Path, default=Path("models/artifacts"))
    mc.add_argument("--evaluation", type=Path, default=Path("models/evaluation/bybit_linear_1m"))
    mc.set_defaults(handler=_cmd_card)

    v = sub.add_parser("evaluate", help="walk-forward evaluation of the shipped models on unseen bars")
    v.add_argument("--data", type=Path, nargs="+", required=True, help="gzip CSV files of bars")
    v.add_argument("--out", type=Path, required=True)
    v.add_argument("--artifacts", type=Path, default=Path("models/artifacts"))
    v.add_argument("--horizon", type=int, default=None, help="minutes ahead (default: the manifest ensemble's)")
    v.add_argument("--from", dest="since", type=_bar_time, default=None, help="first bar to call: ISO UTC time or ms")
    v.add_argument("--until", type=_bar_time, default=None, help="last bar to call: ISO UTC time or ms")
    v.add_argument(
        "--data-dir", type=Path, default=Path("../shared/data"), help="its orderbook/ scores the depth components"
    )
    v.set_defaults(handler=_cmd_evaluate)


async def _cmd_train(args: argparse.Namespace) -> int:
    from models.train import TrainConfig, train_all  # torch: offline commands only

    cfg = TrainConfig(
        data_dir=args.data_dir,
        work_dir=args.work,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        timeframes=tuple(int(x) for x in args.timeframes.split(",")),
        seed=args.seed,
        device=args.device,
        tcn_epochs=args.tcn_epochs,
        image_epochs=args.image_epochs,
        zoo_epochs=args.zoo_epochs,
        tcn_train_cap=args.tcn_samples,
        image_train_cap=args.image_samples,
        efficientnet_variant=args.efficientnet_variant,
        horizon=args.horizon,
        fine_tune=args.fine_tune,
        fine_tune_epochs=args.fine_tune_epochs,
        init_from=args.init_from,
        params=args.params,
        depth_recordings=tuple(Path(p.strip()) for p in args.depth_recordings.split(",") if p.strip()),
    )
    summary = await asyncio.to_thread(train_all, cfg)
    print_json(summary)
    return 0


async def _cmd_tune(args: argparse.Namespace) -> int:
    from models.tune import TuneConfig, tune  # torch and optuna: offline commands only

    cfg = TuneConfig(
        kind=args.kind,
        data_dir=args.data_dir,
        out_dir=args.out,
        horizon=args.horizon,
        trials=args.trials,
        timeout_s=args.timeout,
        folds=args.folds,
        samples=args.samples,
        epochs=args.epochs,
    )
    record = await asyncio.to_thread(tune, cfg)
    print_json({k: v for k, v in record.items() if k != "history"})
    print(f"wrote {args.out / (args.kind + '.json')}; train with --params {args.out}", flush=True)
    return 0


async def _cmd_export(args: argparse.Namespace) -> int:
    from models.export import export_all

    manifest = await asyncio.to_thread(export_all, args.work, args.out, args.data_dir, args.version)
    print(f"exported {len(manifest.components)} components to {args.out}/manifest.json", flush=True)
    return 0


async def _cmd_fit_linear(args: argparse.Namespace) -> int:
    from models.linear import fit_linear

    c = await asyncio.to_thread(fit_linear, args.data_dir, args.artifacts, horizon=args.horizon, cap=args.samples)
    print_json({"component": c.name, "validation": c.validation, "training": c.training})
    print(f"wrote {args.artifacts / c.file} and its entry in {args.artifacts / 'manifest.json'}", flush=True)
    return 0


async def _cmd_stack(args: argparse.Namespace) -> int:
    from models.stack import drift_reference, fit_ensemble

    if args.drift_only:
        section = await asyncio.to_thread(drift_reference, args.artifacts, args.data_dir)
        print(f"wrote the drift statistics of {section['samples']:,} bars into {args.artifacts / 'manifest.json'}")
        return 0
    spec = await asyncio.to_thread(
        fit_ensemble, args.artifacts, args.data_dir, horizon=args.horizon, per_series=args.per_series
    )
    print_json(
        {"weights": spec.weights, "calibration": spec.calibration, "threshold": spec.threshold, "fitted": spec.fitted}
    )
    print(f"wrote the ensemble into {args.artifacts / 'manifest.json'}", flush=True)
    return 0


async def _cmd_card(args: argparse.Namespace) -> int:
    from inference.manifest import Manifest
    from models.card import model_card

    card = model_card(Manifest.load(args.artifacts / "manifest.json"), args.evaluation)
    (args.artifacts / "MODEL_CARD.md").write_text(card)
    print(f"wrote {args.artifacts / 'MODEL_CARD.md'}", flush=True)
    return 0


def _bar_time(text: str) -> int:
    """A bar start in ms from ``1750000020000`` or an ISO time (UTC unless it says otherwise)."""
    import datetime as dt

    if text.isdigit():
        return int(text)
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (ISO, e.g. 2025-06-16T12:00, or ms)") from None
    return int((t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp() * 1000)


async def _cmd_evaluate(args: argparse.Namespace) -> int:
    import importlib.util

    from inference.manifest import ManifestError

    # Checked before minutes of work, each in one line: what is wrong and what to do.
    missing = [m for m in ("matplotlib", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"evaluate needs {', '.join(missing)} (the train extra): pip install -e '.[train]'")
    for path in args.data:
        if not path.is_file():
            raise ConfigError(f"evaluate: no bar file {path} (expected {compose.BAR_FILES})")
    from models.evaluate import EvaluateConfig, evaluate

    cfg = EvaluateConfig(
        files=tuple(args.data),
        out_dir=args.out,
        artifacts=args.artifacts,
        horizon=args.horizon,
        since_ms=args.since,
        until_ms=args.until,
        data_dir=args.data_dir,
    )
    try:
        await asyncio.to_thread(evaluate, cfg)  # prints progress and where the report went
    except (ManifestError, ValueError, OSError) as exc:
        raise ConfigError(f"evaluate: {exc}") from exc
    print((args.out / "report.md").read_text(), flush=True)
    return 0
