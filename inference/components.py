"""The manifest's components as loaded, warmed ONNX sessions, and their hot reload.

Loading (:func:`load_model_set`) checks every artifact's sha256 against the manifest, builds ONE
:class:`ModelSession` per artifact file (the EfficientNet file is shared by all its timeframes, so
their inputs can go in one batch), and warms each session up with the batch it will see. A missing,
tampered or unloadable artifact, or preprocessing this code cannot reproduce, disables just the
components that need it, with a reason code that every signal reports:

===========================  =====================================================================
``artifact_missing``         the file named in the manifest does not exist
``artifact_checksum``        its sha256 differs from the manifest's (tampered, corrupt, other export)
``load_failed``              ONNX Runtime could not build a session on any provider
``warmup_failed``            the session could not run the manifest's input shape
``preprocessing_mismatch``   features/renderer version or parameters this code does not produce
``bad_manifest_entry``       an unknown kind, a weight that is not a finite number >= 0, bad heads,
                             a ``stands_in_for`` naming no component of its timeframe and horizon
``gpu_not_bound``            a ladder's upper rung (``stands_in_for``) and no GPU provider bound:
                             the component it stands in for serves (every signal on a CPU host)
``opt_in_only``              the manifest ships it off by default (``opt_in`` says why) and the
                             operator did not name it in ``CANDLECAST_MODEL_OPT_IN``

===========================  =====================================================================

Kinds: the TCN and the zoo's sequence models (``cnn1d``, ``mscnn``, ``cnn_ta``, ``bilstm``) read the
indicator sequences of ``tcn_input``; ``linear`` and the zoo's ``dense`` network the feature vector of
``linear_input``; ``efficientnet`` the chart composite; ``cipm`` (seed 001) the OHLC image of
``ohlc_input``; ``cipm_btc`` that image over its ``leader``'s (BTCUSDT's) for the same bars
(``ohlc_pair``), so the engine reads the leader's window too; ``book_cnn`` (seed 000 §4.3) the
order-book heatmap of the symbol's depth window (``book_heatmap`` of
:func:`inference.checks.depth_window`), so the engine reads the depth rows too.

The seed's failover ladder: a component with ``stands_in_for`` (EfficientNet-B3) is built on a GPU
provider only, never on the CPU; where it binds one it runs in place of the component it names
(EfficientNet-B0 of the same timeframe, which then stands by), its vote taking that one's stacker
slot; where it cannot bind one, or fails on it, that component serves; with neither, the rule.

:class:`ModelRegistry` holds the current :class:`ModelSet` and polls the manifest: a changed
manifest is loaded and warmed in a thread while the old set keeps serving, then swapped in with one
assignment. A signal takes the set once and uses it throughout, so there is no gap and no mix.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from inference.checks import depth_window
from inference.features import FEATURE_NAMES, FEATURE_SET_VERSION, WARMUP_BARS, tcn_input
from inference.linear_features import LINEAR_BARS, LINEAR_FEATURES, LINEAR_SET_VERSION, linear_input
from inference.manifest import Component, EnsembleSpec, Manifest, ManifestError
from inference.metrics import WorkerMetrics
from inference.render import (
    BOOK_BINS_PER_SIDE,
    RENDERER_VERSION,
    RenderError,
    book_heatmap,
    composite,
    ohlc_input,
    ohlc_pair,
)
from inference.runtime import GpuNotBound, ModelSession, RuntimeFailure, SessionFactory
from streaming.depth import BAND, DepthRow

__all__ = ["MANIFEST_NAME", "LoadedComponent", "ModelRegistry", "ModelSet", "example_input", "load_model_set"]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


# The preprocessing parameters each renderer reads (beyond the window itself).
_INPUT_PARAMS = {
    "tcn_input": ("length",),
    "composite": ("height", "bars"),
    "ohlc_input": ("height", "bars"),
    "ohlc_pair": ("height", "bars", "leader"),
    "book_heatmap": ("rows", "sample_ms", "max_gap_ms", "book_depth"),
}


@dataclass(frozen=True, eq=False)
class LoadedComponent:
    """A manifest component with its (shared) session, or the reason it is disabled."""

    spec: Component
    weight: float
    session: ModelSession | None
    disabled: str | None = None
    detail: str = ""
    bars_needed: int = 0
    renderer: str = ""  # "tcn_input" | "composite" | "linear_input" | "ohlc_input" | "ohlc_pair" | "book_heatmap"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def timeframe(self) -> str:
        return self.spec.timeframe

    @property
    def slot(self) -> str:
        """The stacker slot its vote fills: its own name, or the one it stands in for (a ladder rung)."""
        return self.spec.stands_in_for or self.spec.name

    @property
    def input_key(self) -> tuple[Any, ...]:
        """Equal for two components fed the same input from one window: the TCN and the zoo's
        sequence models of a timeframe read one ``tcn_input``, computed once per signal."""
        pre = self.spec.preprocessing
        params = _INPUT_PARAMS.get(self.renderer, ())
        return (self.timeframe, self.bars_needed, self.renderer, *(pre.get(k) for k in params))

    @property
    def leader(self) -> str | None:
        """The symbol whose window it reads beside the signal's (the two-layer CIPM's BTCUSDT)."""
        return str(self.spec.preprocessing["leader"]) if self.renderer == "ohlc_pair" else None

    @property
    def reads_depth(self) -> bool:
        """Whether it reads the symbol's depth window (the order-book heatmap CNN)."""
        return self.renderer == "book_heatmap"

    @property
    def depth_span_ms(self) -> int:
        """How far before the close its depth window reaches (the oldest row it may read is this old)."""
        pre = self.spec.preprocessing
        return int(pre["rows"]) * int(pre["sample_ms"]) + int(pre["max_gap_ms"])

    def depth_input(self, rows: Sequence[DepthRow], now_ms: int) -> npt.NDArray[np.float32] | str:
        """The checked depth window it reads at the close ``now_ms`` (:func:`inference.checks.depth_window`
        with its manifest's grid), or the reason it cannot vote."""
        pre = self.spec.preprocessing
        return depth_window(rows, now_ms, int(pre["rows"]), int(pre["sample_ms"]), int(pre["max_gap_ms"]))

    def prepare(
        self,
        ohlcv: npt.NDArray[np.float64],
        leader: npt.NDArray[np.float64] | None = None,
        depth: npt.NDArray[np.float32] | None = None,
    ) -> npt.NDArray[np.float32]:
        """The model input for one window (no batch axis); ``leader``: the :attr:`leader`'s window
        for the same bars, which a component with a leader needs; ``depth``: the :meth:`depth_input`
        rows, which the heatmap CNN reads.

        Raises :class:`InferenceError` (a ``FeatureError`` or ``RenderError``) on bad bars."""
        pre = self.spec.preprocessing
        if self.renderer == "book_heatmap":
            if depth is None:
                raise RenderError(f"{self.name}: needs the depth window")
            return book_heatmap(depth)[None]
        if self.renderer == "ohlc_pair":
            if leader is None:
                raise RenderError(f"{self.name}: needs the {self.leader} window beside the symbol's")
            return ohlc_pair(ohlcv, leader, int(pre["height"]), int(pre["bars"]))
        if self.renderer == "tcn_input":
            return tcn_input(ohlcv, int(pre["length"]))
        if self.renderer == "linear_input":
            return linear_input(ohlcv)
        if self.renderer == "ohlc_input":
            return ohlc_input(ohlcv, int(pre["height"]), int(pre["bars"]))
        return composite(ohlcv, int(pre["height"]), int(pre["bars"]))


@dataclass(frozen=True, eq=False)
class ModelSet:
    """An immutable snapshot of the loaded manifest. ``digest`` is the manifest file's sha256."""

    components: tuple[LoadedComponent, ...] = ()
    digest: str = ""
    created: str = ""
    sessions: dict[str, ModelSession] = field(default_factory=dict)  # by artifact file name
    ensemble: EnsembleSpec | None = None  # the validation-fitted stacker, when the manifest has one
    drift: dict[str, Any] | None = None  # the manifest's drift statistics (inference.drift)

    @property
    def id(self) -> str:
        """The manifest's short id (its sha256, 12 hex digits): what signals and scores name it by."""
        return self.digest[:12]

    @property
    def enabled(self) -> tuple[LoadedComponent, ...]:
        return tuple(c for c in self.components if c.disabled is None)

    @property
    def stand_ins(self) -> dict[str, LoadedComponent]:
        """The enabled ladder rungs (bound to a GPU), by the name of the component each stands in for."""
        return {c.spec.stands_in_for: c for c in self.enabled if c.spec.stands_in_for}


# The kinds fed the TCN's indicator sequences, and those fed the linear component's feature vector
# (the seeds' zoo, models.zoo: serving needs only the kind, never the torch module).
SEQUENCE_KINDS = frozenset({"tcn", "cnn1d", "mscnn", "cnn_ta", "bilstm"})
VECTOR_KINDS = frozenset({"linear", "dense"})
# image kinds: (the manifest's renderer, image layers, what serving calls)
IMAGE_KINDS = {
    "efficientnet": ("composite", 3, "composite"),
    "cipm": ("ohlc", 1, "ohlc_input"),
    "cipm_btc": ("ohlc_pair", 2, "ohlc_pair"),  # the symbol's image over its leader's (BTCUSDT)
}
DEPTH_KINDS = frozenset({"book_cnn"})  # the order-book heatmap of the depth window (seed 000 §4.3)


def _check_spec(spec: Component) -> tuple[str, str, int] | tuple[None, str, int]:
    """(renderer, "", bars needed) when this code can feed the component, else (None, why, 0)."""
    pre = spec.preprocessing
    try:
        if spec.kind in SEQUENCE_KINDS:
            length = int(pre["length"])
            if pre.get("features") != FEATURE_SET_VERSION or length < 2:
                return None, f"features {pre.get('features')!r}, length {length}: serving has {FEATURE_SET_VERSION}", 0
            if list(spec.input.get("shape", []))[1:] != [len(FEATURE_NAMES), length]:
                return None, f"input shape {spec.input.get('shape')} does not match the features", 0
            return "tcn_input", "", max(int(pre.get("bars_needed", 0)), length + WARMUP_BARS)
        if spec.kind in IMAGE_KINDS:
            renderer, layers, function = IMAGE_KINDS[spec.kind]
            bars, height = int(pre["bars"]), int(pre["height"])
            if pre.get("renderer") != renderer or pre.get("renderer_version") != RENDERER_VERSION:
                return None, f"renderer {pre.get('renderer')!r} {pre.get('renderer_version')!r}", 0
            if list(spec.input.get("shape", []))[1:] != [layers, height, 3 * bars]:
                return None, f"input shape {spec.input.get('shape')} does not match the renderer", 0
            leader = pre.get("leader")
            if renderer == "ohlc_pair" and not (isinstance(leader, str) and leader.isascii() and leader.isalnum()):
                return None, f"leader {leader!r}: a symbol whose window it reads", 0
            return function, "", bars
        if spec.kind in DEPTH_KINDS:
            rows, sample_ms, max_gap_ms = int(pre["rows"]), int(pre["sample_ms"]), int(pre["max_gap_ms"])
            if pre.get("renderer") != "book_heatmap" or pre.get("renderer_version") != RENDERER_VERSION:
                return None, f"renderer {pre.get('renderer')!r} {pre.get('renderer_version')!r}", 0
            if pre.get("bins_per_side") != BOOK_BINS_PER_SIDE or pre.get("band") != BAND:
                grid = f"bins {pre.get('bins_per_side')!r}, band {pre.get('band')!r}"
                return None, f"{grid}: the ingestor samples {BOOK_BINS_PER_SIDE} bins a side, ±{BAND}", 0
            if rows < 4 or sample_ms < 1 or max_gap_ms < sample_ms or int(pre["book_depth"]) < 1:
                return None, f"rows {rows}, sample_ms {sample_ms}, max_gap_ms {max_gap_ms}: not a depth grid", 0
            if list(spec.input.get("shape", []))[1:] != [1, 2 * BOOK_BINS_PER_SIDE, rows]:
                return None, f"input shape {spec.input.get('shape')} does not match the renderer", 0
            return "book_heatmap", "", 1  # its bar: the 1m close it is asked at
        if spec.kind in VECTOR_KINDS:
            if pre.get("features") != LINEAR_SET_VERSION:
                return None, f"features {pre.get('features')!r}: serving has {LINEAR_SET_VERSION}", 0
            if list(spec.input.get("shape", []))[1:] != [len(LINEAR_FEATURES)]:
                return None, f"input shape {spec.input.get('shape')} does not match the features", 0
            return "linear_input", "", LINEAR_BARS
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"preprocessing {pre!r}: {exc}", 0
    return None, f"unknown kind {spec.kind!r}", 0


def example_input(spec: Component, batch: int) -> npt.NDArray[np.float32]:
    dims = [int(d) for d in list(spec.input["shape"])[1:]]
    return np.zeros((batch, *dims), np.float32)


def _reusable(previous: ModelSet | None, spec: Component) -> ModelSession | None:
    """The previous set's session for the same bytes, if it served (no rebuild, no second warm-up)."""
    if previous is None:
        return None
    for c in previous.components:
        same = c.spec.file == spec.file and c.spec.sha256 == spec.sha256
        if same and c.session is not None and not c.disabled and c.session.broken is None:
            if c.session.gpu_only != bool(spec.stands_in_for):  # a rung's session is GPU-only, others not
                continue
            return c.session
    return None


def load_model_set(
    artifacts: Path,
    *,
    prefer_gpu: bool = True,
    threads: int = 1,
    weights: Mapping[str, float] | None = None,
    previous: ModelSet | None = None,
    warmup_rounds: int = 2,
    session_factory: SessionFactory = ort.InferenceSession,
    available_providers: Sequence[str] | None = None,
    opt_in: Collection[str] = (),
) -> ModelSet:
    """Load, verify and warm up every component of ``artifacts/manifest.json`` (blocking: run it in a thread).

    No manifest gives an empty set (the worker then falls back with ``models_missing``); a manifest
    that cannot be parsed raises :class:`ManifestError`. Artifact problems never raise: they disable
    the components concerned. ``opt_in``: the components shipped off by default (the manifest's
    ``opt_in``) to enable.
    """
    path = artifacts / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        log.warning("no model manifest at %s: every signal will come from the fallback rule", path)
        return ModelSet()
    except OSError as exc:
        raise ManifestError(f"unreadable manifest {path}: {exc}") from exc
    manifest = Manifest.load(path)
    digest = hashlib.sha256(raw).hexdigest()
    weights = weights or {}

    plans = [_plan(spec, weights, opt_in) for spec in manifest.components]
    _check_ladders(plans, weights)

    def opener(name: str, file: Path, gpu_only: bool) -> ModelSession:
        return ModelSession(
            name,
            file,
            prefer_gpu=prefer_gpu,
            threads=threads,
            session_factory=session_factory,
            available_providers=available_providers,
            gpu_only=gpu_only,
        )

    # One session per artifact (file, sha256), verified once, shared by the components that use it.
    sessions: dict[tuple[str, str], ModelSession] = {}
    refused: dict[tuple[str, str], tuple[str, str]] = {}
    for p in plans:
        if p.disabled is not None or p.key in sessions:
            continue
        if p.key not in refused:
            try:
                # A session kept from the previous set is reused only if its file still hashes to the
                # manifest's sha256: a file corrupted or deleted since is refused, not trusted.
                path = _verified(manifest, p.spec, artifacts)
                reused = _reusable(previous, p.spec)
                sessions[p.key] = reused if reused is not None else _open(p.spec, path, opener)
                continue
            except _Refused as exc:
                refused[p.key] = (exc.reason, exc.detail)
        p.disabled, p.detail = refused[p.key]
        if p.disabled == "gpu_not_bound":  # one artifact, several timeframes: each names its own B0
            p.detail = f"{p.detail}; {p.spec.stands_in_for} serves"

    # Warm each new session up with the batch a signal will give it (all the timeframes sharing it).
    old = {id(c.session) for c in (previous.components if previous else ()) if c.session is not None}
    for key, session in list(sessions.items()):
        users = [p.spec for p in plans if p.key == key and p.disabled is None]
        if not users or id(session) in old:
            continue
        try:
            seconds = session.warm_up(example_input(users[0], len(users)), rounds=warmup_rounds)
        except (RuntimeFailure, ValueError) as exc:
            del sessions[key]
            for p in plans:
                if p.key == key and p.disabled is None:
                    p.disabled, p.detail = "warmup_failed", str(exc)
            continue
        log.info("%s: warm, %.1f ms per batch of %d on %s", session.name, seconds * 1e3, len(users), session.provider)

    components = []
    for p in plans:
        if p.disabled is not None:  # a rung without a GPU, an opt-in left off: how a host runs, not errors
            level = logging.INFO if p.disabled in ("gpu_not_bound", "opt_in_only") else logging.ERROR
            log.log(level, "component %s disabled (%s): %s", p.spec.name, p.disabled, p.detail)
        bound = sessions.get(p.key) if p.disabled is None else None
        components.append(LoadedComponent(p.spec, p.weight, bound, p.disabled, p.detail, p.need, p.renderer))
    return ModelSet(
        tuple(components),
        digest,
        manifest.created,
        {k[0]: s for k, s in sessions.items()},
        manifest.ensemble,
        manifest.drift,
    )


@dataclass
class _Plan:
    spec: Component
    weight: float
    need: int = 0
    renderer: str = ""
    disabled: str | None = None
    detail: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.spec.file, self.spec.sha256)


def _plan(spec: Component, weights: Mapping[str, float], opt_in: Collection[str] = ()) -> _Plan:
    plan = _checked_plan(spec, weights)
    if plan.disabled is None and spec.opt_in and spec.name not in opt_in:  # a broken entry says so first
        enable = f"enable with CANDLECAST_MODEL_OPT_IN={spec.name}"
        return replace(plan, weight=0.0, disabled="opt_in_only", detail=f"{spec.opt_in}; {enable}")
    return plan


def _checked_plan(spec: Component, weights: Mapping[str, float]) -> _Plan:
    weight = float(weights.get(spec.name, spec.weight))
    if not math.isfinite(weight) or weight < 0:
        return _Plan(spec, 0.0, disabled="bad_manifest_entry", detail=f"weight {weight!r}")
    try:
        spec.check_forecast()
    except ManifestError as exc:
        return _Plan(spec, weight, disabled="bad_manifest_entry", detail=str(exc))
    renderer, why, need = _check_spec(spec)
    if renderer is None:
        reason = "bad_manifest_entry" if why.startswith("unknown kind") else "preprocessing_mismatch"
        return _Plan(spec, weight, disabled=reason, detail=why)
    return _Plan(spec, weight, need, renderer)


class _Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _verified(manifest: Manifest, spec: Component, root: Path) -> Path:
    if not (root / spec.file).is_file():
        raise _Refused("artifact_missing", f"{root / spec.file} does not exist")
    try:
        return manifest.verified_path(spec, root)
    except ManifestError as exc:
        raise _Refused("artifact_checksum", str(exc)) from exc


def _check_ladders(plans: list[_Plan], weights: Mapping[str, float]) -> None:
    """Disable a ladder rung whose ``stands_in_for`` names no plain component of its timeframe and
    horizon, or one that another rung already stands in for; a valid rung takes its slot's weight
    (what its vote counts for without a stacker, an operator's override of the slot included)."""
    by_name = {p.spec.name: p.spec for p in plans}
    taken: set[str] = set()
    for p in plans:
        target = p.spec.stands_in_for
        if not target or p.disabled is not None:
            continue
        below = by_name.get(target)
        if below is None or below is p.spec or below.stands_in_for:
            why = f"stands_in_for {target!r}: no such component (or another rung)"
        elif (below.timeframe, below.horizon_min) != (p.spec.timeframe, p.spec.horizon_min):
            why = f"stands_in_for {target!r}: another timeframe or horizon"
        elif target in taken:
            why = f"stands_in_for {target!r}: another rung already stands in for it"
        else:
            slot_weight = float(weights.get(target, below.weight))
            if math.isfinite(slot_weight) and slot_weight >= 0:
                taken.add(target)
                p.weight = slot_weight
                continue
            why = f"stands_in_for {target!r}: its weight {slot_weight!r}"
        p.disabled, p.detail = "bad_manifest_entry", why


def _open(spec: Component, path: Path, opener: Callable[[str, Path, bool], ModelSession]) -> ModelSession:
    try:
        return opener(Path(spec.file).stem, path, bool(spec.stands_in_for))
    except GpuNotBound as exc:
        raise _Refused("gpu_not_bound", str(exc)) from exc
    except RuntimeFailure as exc:
        raise _Refused("load_failed", str(exc)) from exc


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ModelRegistry:
    """The current :class:`ModelSet`, reloaded when the manifest changes."""

    def __init__(
        self,
        artifacts: Path,
        *,
        prefer_gpu: bool = True,
        threads: int = 1,
        weights: Mapping[str, float] | None = None,
        poll_s: float = 5.0,
        metrics: WorkerMetrics | None = None,
        session_factory: SessionFactory = ort.InferenceSession,
        available_providers: Sequence[str] | None = None,
        opt_in: Collection[str] = (),
    ) -> None:
        self.artifacts = artifacts
        self._opt_in = frozenset(opt_in)
        self.poll_s = poll_s
        self._prefer_gpu = prefer_gpu
        self._threads = threads
        self._session_factory = session_factory
        self._available_providers = available_providers
        self._weights = dict(weights or {})
        self._metrics = metrics
        self._current = ModelSet()
        self._failed_digest: str | None = None
        self._lock = asyncio.Lock()
        self._providers: dict[str, str] = {}
        self.loaded = False

    @property
    def current(self) -> ModelSet:
        return self._current

    @property
    def manifest_path(self) -> Path:
        return self.artifacts / MANIFEST_NAME

    async def load(self) -> ModelSet:
        """The initial load. Never raises: a broken manifest leaves no models (every signal falls back)."""
        async with self._lock:
            try:
                self._swap(await asyncio.to_thread(self._build, None))
            except ManifestError as exc:
                log.error("models not loaded: %s", exc)
                self._failed_digest = await asyncio.to_thread(_digest, self.manifest_path)
                self._count("failed")
            self.loaded = True
            return self._current

    async def reload_if_changed(self) -> bool:
        """Load a changed manifest beside the serving set, then swap. False if unchanged or broken."""
        async with self._lock:
            digest = await asyncio.to_thread(_digest, self.manifest_path)
            if digest is None or digest in (self._current.digest, self._failed_digest):
                return False  # unchanged, or gone (keep serving what is loaded), or known broken
            log.info("manifest %s changed: loading the new models beside the serving ones", self.manifest_path)
            try:
                new = await asyncio.to_thread(self._build, self._current)
            except ManifestError as exc:
                log.error("new manifest refused, the previous models stay in service: %s", exc)
                self._failed_digest = digest
                self._count("failed")
                return False
            self._swap(new)
            return True

    async def watch(self) -> None:
        """Poll the manifest every ``poll_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.reload_if_changed()
            except Exception:
                log.exception("model reload failed; the previous models stay in service")

    def note_provider(self, component: str, provider: str) -> None:
        """Keep the provider gauge true after a session moved (e.g. rebuilt on CPU after a GPU failure)."""
        old = self._providers.get(component)
        if old == provider:
            return
        self._providers[component] = provider
        if self._metrics is not None:
            if old is not None:
                self._metrics.provider_in_use.labels(component, old).set(0)
            self._metrics.provider_in_use.labels(component, provider).set(1)

    def _build(self, previous: ModelSet | None) -> ModelSet:
        return load_model_set(
            self.artifacts,
            prefer_gpu=self._prefer_gpu,
            threads=self._threads,
            weights=self._weights,
            previous=previous,
            session_factory=self._session_factory,
            available_providers=self._available_providers,
            opt_in=self._opt_in,
        )

    def _swap(self, new: ModelSet) -> None:
        self._current = new  # one assignment: a signal in progress keeps the set it took
        self._failed_digest = None
        self._count("loaded")
        enabled = [c.name for c in new.enabled]
        log.info(
            "models in service: %d of %d components enabled (%s)",
            len(enabled),
            len(new.components),
            ", ".join(enabled) or "none",
        )
        if self._metrics is None:
            return
        self._metrics.components_enabled.clear()
        self._metrics.provider_in_use.clear()
        self._providers.clear()
        for c in new.components:
            self._metrics.components_enabled.labels(c.name).set(0 if c.disabled else 1)
            self._metrics.seed_component(c.name)
            if c.session is not None and not c.disabled:
                self.note_provider(c.name, c.session.provider)

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.model_reloads.labels(outcome).inc()
