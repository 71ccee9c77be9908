"""The model manifest: what each shipped ONNX artifact is, how to feed it, and how it did.

Written by ``candlecast export`` (offline), read by the worker and ``candlecast evaluate`` — no
torch needed to read it. Every artifact's sha256 is checked before a session is built: a missing,
tampered or mismatched file is refused with :class:`ManifestError`, naming the file.

Example component::

    {"name": "tcn_5m", "kind": "tcn", "timeframe": "5", "version": "2026.11.20", "file": "tcn_5m.onnx",
     "sha256": "…", "input": {"name": "input", "shape": ["batch", 8, 64], "dtype": "float32"},
     "output": {"name": "logits", "shape": ["batch", 1]}, "preprocessing": {"features": "v1", "length": 64,
     "warmup": 33}, "horizon": "next 5m bar", "horizon_minutes": 5, "training": {…}, "validation": {…},
     "weight": 1.0, "family": "tcn", "variant": "4 dilated residual blocks, 64 bars"}

Every component predicts P(log return over the next ``horizon_minutes`` minutes > 0), whatever
timeframe its input shows; an entry without ``horizon_minutes`` (written before it existed) predicts
the next bar of its own timeframe. ``output["heads"]`` names the output columns when there is more
than the logit (``["logit", "abs_move_bp", "var_bp2"]``: the expected absolute move in basis points
and the variance of the log return over the horizon in bp²).

The optional top-level ``ensemble`` (:class:`EnsembleSpec`) is the stacker fitted on the validation
span: a logistic regression on the components' logits, Platt-calibrated, and the probability a call
must clear. Without it (older manifests) the components' P(up) are averaged with their ``weight``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from inference.drift import valid_drift_stats
from inference.errors import InferenceError

__all__ = ["HEADS", "Component", "EnsembleSpec", "Manifest", "ManifestError", "VolatilityStack", "sha256_file"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
HEX = frozenset("0123456789abcdef")
HEADS = frozenset({"logit", "abs_move_bp", "var_bp2"})


class ManifestError(InferenceError):
    """The manifest or one of its artifacts is missing, malformed or does not match its checksum."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Component:
    name: str
    kind: str  # what serving dispatches on: "tcn", "efficientnet", "linear" or a zoo kind (models.zoo)
    timeframe: str  # minutes, as Bybit names intervals: "1", "5", "15", "60"
    version: str
    file: str
    sha256: str
    input: dict[str, Any]
    output: dict[str, Any]
    preprocessing: dict[str, Any]
    horizon: str
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0
    horizon_minutes: int | None = None
    family: str = ""  # the seed's model family ("tcn", "cnn", "lstm", "mlp", "efficientnet", "linear")
    variant: str = ""  # which member of it ("b0", "1d k5", "multiscale k3-7-15-31", …)
    # A rung of the seed's failover ladder (EfficientNet-B3 above B0): served only where its session
    # binds a GPU provider, in place of the component named here (whose stacker slot it takes); that
    # component serves when no GPU binds or this one fails on it (inference.components).
    stands_in_for: str = ""
    # Why the component is off unless an operator names it (CANDLECAST_MODEL_OPT_IN): shipped for
    # those who want to watch it, not voting by default. Empty: on by default.
    opt_in: str = ""

    @property
    def horizon_min(self) -> int:
        """The minutes ahead this component forecasts (its own timeframe's next bar if unstated)."""
        return self.horizon_minutes if self.horizon_minutes is not None else int(self.timeframe)

    @property
    def heads(self) -> tuple[str, ...]:
        """The output columns, in order: ``("logit",)`` unless the manifest names more."""
        return tuple(self.output.get("heads", ("logit",)))

    def validate(self) -> None:
        """Raise :class:`ManifestError` for an entry no loader should use (checked before any file access).

        Kept out of ``__init__`` so that one bad entry disables one component instead of the manifest.
        """
        if not isinstance(self.weight, int | float) or not math.isfinite(self.weight) or self.weight < 0:
            raise ManifestError(f"{self.name}: weight must be a finite number >= 0, got {self.weight!r}")
        if not (isinstance(self.sha256, str) and len(self.sha256) == 64 and all(c in HEX for c in self.sha256)):
            raise ManifestError(f"{self.name}: sha256 must be 64 hex digits")
        if not isinstance(self.file, str) or Path(self.file).name != self.file or self.file in ("", ".", ".."):
            raise ManifestError(
                f"{self.name}: file must be a plain name inside the artifacts folder, got {self.file!r}"
            )
        self.check_forecast()

    def check_forecast(self) -> None:
        """Raise :class:`ManifestError` for a horizon or output heads no loader should use."""
        h = self.horizon_minutes
        if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h < 1):
            raise ManifestError(f"{self.name}: horizon_minutes must be a whole number >= 1, got {h!r}")
        heads = self.output.get("heads", ["logit"])
        if not isinstance(heads, list | tuple) or not heads or heads[0] != "logit" or not set(heads) <= HEADS:
            raise ManifestError(f"{self.name}: output heads must start with 'logit' and be among {sorted(HEADS)}")


# The type of every field of a component entry, checked before a Component is built from it.
_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "kind": (str,),
    "timeframe": (str,),
    "version": (str,),
    "file": (str,),
    "sha256": (str,),
    "input": (dict,),
    "output": (dict,),
    "preprocessing": (dict,),
    "horizon": (str,),
    "training": (dict,),
    "validation": (dict,),
    "weight": (int, float),
    "horizon_minutes": (int, type(None)),
    "family": (str,),
    "variant": (str,),
    "stands_in_for": (str,),
    "opt_in": (str,),
}
_REQUIRED = ("name", "kind", "timeframe", "version", "file", "sha256", "input", "output", "preprocessing", "horizon")


def _entry(c: Component) -> dict[str, Any]:
    """A component as the manifest writes it: ``stands_in_for`` only on a ladder's rungs, ``opt_in``
    only on a component that is off by default."""
    entry = asdict(c)
    for optional in ("stands_in_for", "opt_in"):
        if not entry[optional]:
            del entry[optional]
    return entry


def _name_of(entry: Any) -> str:
    return repr(entry.get("name")) if isinstance(entry, dict) else "?"


def _entry_problem(entry: Any) -> str | None:
    """Why a manifest entry cannot be a :class:`Component` (None when it can)."""
    if not isinstance(entry, dict):
        return f"must be an object, got {type(entry).__name__}"
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        return f"missing {', '.join(missing)}"
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}"
    for key, value in entry.items():
        types = _FIELDS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            return f"{key} must be {want}, got {type(value).__name__} {value!r:.40}"
    if not (entry["timeframe"].isascii() and entry["timeframe"].isdigit() and int(entry["timeframe"]) > 0):
        return f"timeframe must be whole minutes as text (e.g. '5'), got {entry['timeframe']!r}"
    return None


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"ensemble: {what} must be an object, got {type(value).__name__}")
    return dict(value)


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ManifestError(f"ensemble: {what} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class VolatilityStack:
    """The volatility stacker (``magnitude: "stack"``), fitted on the validation span by QLIKE.

    ``ln V = intercept + ewma·ln V_ewma + Σ weights[c]·ln V_c`` over the components with a variance
    head (bp² over the horizon, floored at 1e-4; a component that did not vote reads as the EWMA's
    ``V_ewma``, so its absence leaves the baseline's weight in its place); the volatility is ``√V`` and
    the expected absolute move ``move_per_vol·√V``.
    """

    weights: dict[str, float]
    ewma: float
    intercept: float
    move_per_vol: float

    @classmethod
    def parse(cls, raw: Any) -> VolatilityStack:
        section = _object(raw, "volatility")

        def bounded(value: Any, what: str, bound: float) -> float:
            x = _finite(value, f"volatility {what}")
            if abs(x) > bound:  # an elasticity of ln V past this is no fit, and would overflow exp
                raise ManifestError(f"ensemble: volatility {what} must lie in [-{bound:g}, {bound:g}], got {x}")
            return x

        try:
            weights = _object(section["weights"], "volatility weights")
            move_per_vol = _finite(section["move_per_vol"], "volatility move_per_vol")
            if not 0.0 < move_per_vol <= 2.0:
                raise ManifestError(f"ensemble: volatility move_per_vol must lie in (0, 2], got {move_per_vol}")
            return cls(
                weights={str(k): bounded(v, f"weight of {k}", 5.0) for k, v in weights.items()},
                ewma=bounded(section["ewma"], "ewma", 5.0),
                intercept=bounded(section["intercept"], "intercept", 20.0),
                move_per_vol=move_per_vol,
            )
        except KeyError as exc:
            raise ManifestError(f"ensemble: volatility: missing {exc}") from None


MAGNITUDES = ("heads", "ewma", "stack")


@dataclass(frozen=True)
class EnsembleSpec:
    """The stacker, fitted on the validation span (``models.stack``), as serving applies it.

    ``z = intercept + Σ weights[c]·logit_c`` over the components that voted (a missing one adds 0,
    i.e. no opinion); the calibrated ``P(up) = sigmoid(a·z + b)`` (Platt, fitted on the later half of the
    validation span); long when ``P(up) >= threshold``, short when ``P(up) <= 1 - threshold``.
    ``magnitude`` says where the expected move and volatility come from, whichever forecast the
    variance best on validation (QLIKE): the mean of the components' heads (``heads``), the EWMA
    baseline (``ewma``), or the volatility stacker (``stack``, :class:`VolatilityStack`, then given
    as ``volatility``).
    """

    horizon_minutes: int
    weights: dict[str, float]
    intercept: float
    calibration: dict[str, Any]
    threshold: float
    magnitude: str = "heads"  # one of MAGNITUDES
    fitted: dict[str, Any] = field(default_factory=dict)  # spans, samples, validation figures
    volatility: VolatilityStack | None = None  # with magnitude "stack"

    @classmethod
    def parse(cls, raw: Any) -> EnsembleSpec:
        if not isinstance(raw, dict):
            raise ManifestError(f"ensemble must be an object, got {type(raw).__name__}")
        try:
            h = raw["horizon_minutes"]
            if isinstance(h, bool) or not isinstance(h, int) or h < 1:
                raise ManifestError(f"ensemble: horizon_minutes must be a whole number >= 1, got {h!r}")
            weights = raw["weights"]
            if not isinstance(weights, dict) or not weights:
                raise ManifestError("ensemble: weights must be a non-empty object of component: number")
            cal = raw["calibration"]
            if not isinstance(cal, dict) or cal.get("method") != "platt":
                raise ManifestError(f"ensemble: calibration must be {{'method': 'platt', 'a': …, 'b': …}}, got {cal!r}")
            threshold = _finite(raw["threshold"], "threshold")
            if not 0.5 <= threshold < 1.0:
                raise ManifestError(f"ensemble: threshold must lie in [0.5, 1), got {threshold}")
            magnitude = raw.get("magnitude", "heads")
            if magnitude not in MAGNITUDES:
                raise ManifestError(f"ensemble: magnitude must be one of {', '.join(MAGNITUDES)}, got {magnitude!r}")
            volatility = VolatilityStack.parse(raw["volatility"]) if raw.get("volatility") is not None else None
            if (magnitude == "stack") != (volatility is not None):
                raise ManifestError("ensemble: a volatility section goes with magnitude 'stack', and only with it")
            return cls(
                magnitude=magnitude,
                volatility=volatility,
                horizon_minutes=h,
                weights={str(k): _finite(v, f"weight of {k}") for k, v in weights.items()},
                intercept=_finite(raw["intercept"], "intercept"),
                calibration={"method": "platt", "a": _finite(cal.get("a"), "a"), "b": _finite(cal.get("b"), "b")},
                threshold=threshold,
                fitted=_object(raw.get("fitted", {}), "fitted"),
            )
        except KeyError as exc:
            raise ManifestError(f"ensemble: missing {exc}") from None


@dataclass(frozen=True)
class Manifest:
    components: tuple[Component, ...]
    created: str
    schema: int = SCHEMA_VERSION
    notes: str = ""
    ensemble: EnsembleSpec | None = None
    # the drift features' training distribution (inference.drift.input_statistics), for the live PSI
    drift: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ManifestError(f"no manifest at {path}") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ManifestError(f"unreadable manifest {path}: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("schema") != SCHEMA_VERSION:
            raise ManifestError(
                f"{path}: unsupported manifest schema {raw.get('schema') if isinstance(raw, dict) else raw!r}"
            )
        entries = raw.get("components")
        if not isinstance(entries, list):
            raise ManifestError(f"{path}: 'components' must be a list")
        for i, entry in enumerate(entries):
            problem = _entry_problem(entry)
            if problem is not None:
                raise ManifestError(f"{path}: malformed component {i} ({_name_of(entry)}): {problem}")
        components = tuple(Component(**c) for c in entries)
        ensemble = EnsembleSpec.parse(raw["ensemble"]) if raw.get("ensemble") is not None else None
        if ensemble is not None and ensemble.volatility is not None:
            with_heads = {c.name for c in components if "var_bp2" in c.heads}
            if unknown := sorted(set(ensemble.volatility.weights) - with_heads):
                raise ManifestError(
                    f"{path}: ensemble: volatility weights name no component with a variance head: {unknown}"
                )
        return cls(
            components=components,
            created=str(raw.get("created", "")),
            notes=str(raw.get("notes", "")),
            ensemble=ensemble,
            drift=_drift_section(raw.get("drift"), path),
        )

    def save(self, path: Path) -> None:
        body: dict[str, Any] = {
            "schema": self.schema,
            "created": self.created,
            "notes": self.notes,
            "components": [_entry(c) for c in self.components],
        }
        if self.ensemble is not None:
            body["ensemble"] = {k: v for k, v in asdict(self.ensemble).items() if v is not None}
        if self.drift is not None:
            body["drift"] = self.drift
        path.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")

    def verified_path(self, component: Component, root: Path) -> Path:
        """The artifact's path, after checking the entry, that the file exists and its sha256 matches."""
        component.validate()
        path = root / component.file
        if not path.is_file():
            raise ManifestError(f"{component.name}: artifact {path} is missing")
        actual = sha256_file(path)
        if actual != component.sha256:
            raise ManifestError(
                f"{component.name}: artifact {path} has sha256 {actual[:12]}…, manifest says {component.sha256[:12]}…"
                " (tampered, corrupt or from another export): refusing to load it"
            )
        return path


def _drift_section(raw: Any, path: Path) -> dict[str, Any] | None:
    """The ``drift`` section when it is well formed; a malformed one is dropped with a warning (drift
    goes unwatched, the models still serve)."""
    if raw is None:
        return None
    section = valid_drift_stats(raw)
    if section is None:
        log.warning("%s: the drift section is malformed; input drift will not be watched", path)
    return section
