"""Loading the manifest into warmed sessions, disabling what cannot be trusted, and hot reload."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from inference.components import ModelRegistry, load_model_set
from inference.config import WorkerConfig
from inference.engine import SignalEngine
from inference.manifest import ManifestError, sha256_file
from inference.metrics import WorkerMetrics
from inference.runtime import CPU
from inference.signal import Signal
from streaming.memory_store import MemoryStore
from streaming.store import BarEvent
from tests.helpers import eventually
from tests.inference.kit import (
    MINUTE,
    T0,
    artifacts,
    export_tcn,
    history,
    model_cache,
    tcn_component,
    write_manifest,
)


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_cache(tmp_path_factory)


def test_one_warmed_session_per_artifact_file_shared_by_its_components(cache: Path, tmp_path: Path) -> None:
    models = load_model_set(artifacts(cache, tmp_path, tcn=("1", "5"), image=("1", "5", "15")), prefer_gpu=False)
    by_name = {c.name: c for c in models.components}
    assert all(c.disabled is None for c in models.components)
    image_sessions = {id(by_name[f"efficientnet_{tf}m"].session) for tf in ("1", "5", "15")}
    assert len(image_sessions) == 1, "the EfficientNet timeframes share one session (one batch per symbol)"
    assert by_name["tcn_1m"].session is not by_name["tcn_5m"].session
    assert sorted(models.sessions) == ["efficientnet.onnx", "tcn_1m.onnx", "tcn_5m.onnx"]
    assert {s.provider for s in models.sessions.values()} == {CPU}  # the bound provider, not the one asked for
    assert by_name["tcn_1m"].bars_needed == 49 and by_name["efficientnet_5m"].bars_needed == 24
    assert len(models.digest) == 64


def test_missing_tampered_and_unloadable_artifacts_disable_only_their_components(cache: Path, tmp_path: Path) -> None:
    root = artifacts(cache, tmp_path, tcn=("1", "5", "15"), image=("1", "5"))
    (root / "tcn_5m.onnx").unlink()
    image = root / "efficientnet.onnx"
    image.write_bytes(image.read_bytes()[:-100])  # truncated after export: the checksum no longer matches
    # An unloadable file whose checksum the manifest does match (e.g. exported broken).
    (root / "tcn_15m.onnx").write_bytes(b"this is not an onnx model")
    manifest = json.loads((root / "manifest.json").read_text())
    for c in manifest["components"]:
        if c["name"] == "tcn_15m":
            c["sha256"] = sha256_file(root / "tcn_15m.onnx")
    (root / "manifest.json").write_text(json.dumps(manifest))

    models = load_model_set(root, prefer_gpu=False)
    status = {c.name: c.disabled for c in models.components}
    assert status == {
        "tcn_1m": None,
        "tcn_5m": "artifact_missing",
        "tcn_15m": "load_failed",
        "efficientnet_1m": "artifact_checksum",
        "efficientnet_5m": "artifact_checksum",
    }
    assert [c.name for c in models.enabled] == ["tcn_1m"]
    assert "sha256" in next(c.detail for c in models.components if c.name == "efficientnet_1m")


def test_entries_serving_cannot_reproduce_are_refused(cache: Path, tmp_path: Path) -> None:
    root = artifacts(cache, tmp_path, tcn=("1",), image=())
    base = tcn_component(root, "1", "tcn_1m.onnx")
    # a TCN exported for 7 input channels that the manifest claims takes the 8 features: fails warm-up
    export_tcn(root / "narrow.onnx", in_channels=7)
    write_manifest(
        root,
        [
            base,
            dataclasses.replace(base, name="old_features", preprocessing=base.preprocessing | {"features": "v0"}),
            dataclasses.replace(base, name="negative", weight=-1.0),
            dataclasses.replace(base, name="mystery", kind="transformer"),
            dataclasses.replace(base, name="narrow", file="narrow.onnx", sha256=sha256_file(root / "narrow.onnx")),
        ],
    )
    status = {c.name: c.disabled for c in load_model_set(root, prefer_gpu=False).components}
    assert status == {
        "tcn_1m": None,
        "old_features": "preprocessing_mismatch",
        "negative": "bad_manifest_entry",
        "mystery": "bad_manifest_entry",
        "narrow": "warmup_failed",
    }


def test_weights_come_from_the_manifest_unless_overridden(cache: Path, tmp_path: Path) -> None:
    root = artifacts(cache, tmp_path, tcn=("1", "5"), image=())
    weights = {c.name: c.weight for c in load_model_set(root, weights={"tcn_5m": 0.25}, prefer_gpu=False).components}
    assert weights == {"tcn_1m": 1.0, "tcn_5m": 0.25}


async def test_no_manifest_means_no_models_and_a_broken_one_does_not_crash(tmp_path: Path) -> None:
    assert load_model_set(tmp_path).components == ()
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError):
        load_model_set(tmp_path)
    registry = ModelRegistry(tmp_path, prefer_gpu=False)
    assert (await registry.load()).components == ()  # logged, not raised: every signal falls back


async def test_changed_manifest_is_swapped_in_without_a_gap(cache: Path, tmp_path: Path) -> None:
    """Signals computed continuously while a new model version is loaded: every one has all its
    components voting, versions switch from v1 to v2 exactly once, and unchanged artifacts keep
    their (already warm) session."""
    root = artifacts(cache, tmp_path, tcn=("1",), image=("1",), version="v1")
    metrics = WorkerMetrics(CollectorRegistry())
    registry = ModelRegistry(root, prefer_gpu=False, poll_s=0.02, metrics=metrics)
    await registry.load()
    image_session = registry.current.sessions["efficientnet.onnx"]
    store = MemoryStore(window_bars=128)
    close = T0 + 60 * MINUTE
    await store.write(history(close, {"1": 60}))
    engine = SignalEngine(WorkerConfig(intervals=("1",), latency_budget_ms=5000), store, registry, metrics)
    event = BarEvent("BTCUSDT", "1", close - MINUTE)

    signals: list[Signal] = []
    stop = asyncio.Event()

    async def keep_signalling() -> None:
        while not stop.is_set():
            result = await engine.compute(event)
            assert isinstance(result, Signal)
            signals.append(result)

    producer = asyncio.create_task(keep_signalling(), name="signals")
    watcher = asyncio.create_task(registry.watch(), name="watch")
    try:
        await eventually(lambda: len(signals) >= 5 or producer.done(), 20, what="signals before the swap")
        (root / "tcn_1m_v2.onnx").write_bytes((cache / "tcn_1m_b.onnx").read_bytes())
        image = next(c.spec for c in registry.current.components if c.name == "efficientnet_1m")
        write_manifest(
            root,
            [tcn_component(root, "1", "tcn_1m_v2.onnx", version="v2"), dataclasses.replace(image, version="v2")],
        )
        await eventually(lambda: bool(signals) and signals[-1].components[0].version == "v2", 20, what="v2 serves")
        n = len(signals)
        await eventually(lambda: len(signals) >= n + 5 or producer.done(), 10, what="signals after the swap")
    finally:
        stop.set()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await producer  # re-raises a failed assertion inside the loop

    assert all(s.source == "ensemble" for s in signals)
    assert all(c.status == "voted" for s in signals for c in s.components)
    versions = [tuple(c.version for c in s.components) for s in signals]
    switch = versions.index(("v2", "v2"))
    assert set(versions[:switch]) == {("v1", "v1")} and set(versions[switch:]) == {("v2", "v2")}
    assert registry.current.sessions["efficientnet.onnx"] is image_session  # same bytes: reused, not rebuilt
    assert metrics.registry.get_sample_value("candlecast_model_reloads_total", {"outcome": "loaded"}) == 2

    # A broken manifest afterwards is refused; the loaded models stay in service.
    (root / "manifest.json").write_text("{broken")
    assert await registry.reload_if_changed() is False
    assert [c.spec.version for c in registry.current.enabled] == ["v2", "v2"]
    assert metrics.registry.get_sample_value("candlecast_model_reloads_total", {"outcome": "failed"}) == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("weight", "abc", "weight must be int or float, got str"),
        ("input", None, "input must be dict, got NoneType"),
        ("timeframe", "5m", "timeframe must be whole minutes"),
        ("horizon_minutes", "1", "horizon_minutes must be int or null"),
        ("family", 3, "family must be str, got int"),
        ("surprise", 1, "unknown field"),
    ],
)
async def test_a_manifest_with_a_mistyped_field_is_refused_once_and_the_old_models_keep_serving(
    cache: Path, tmp_path: Path, field: str, value: object, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = artifacts(cache, tmp_path, tcn=("1",), image=())
    good = json.loads((root / "manifest.json").read_text())
    bad = json.loads(json.dumps(good))
    bad["components"][0][field] = value
    (root / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(ManifestError, match=message):
        load_model_set(root, prefer_gpu=False)
    # at start-up: no crash, no models (every signal falls back)
    registry = ModelRegistry(root, prefer_gpu=False, poll_s=0.01)
    assert (await registry.load()).components == ()
    # while serving: the bad manifest is refused with one log line and never retried
    (root / "manifest.json").write_text(json.dumps(good))
    assert await registry.reload_if_changed()
    serving = registry.current
    (root / "manifest.json").write_text(json.dumps(bad))
    caplog.clear()
    assert not await registry.reload_if_changed()
    assert not await registry.reload_if_changed()
    assert registry.current is serving and [c.name for c in serving.enabled] == ["tcn_1m"]
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and message.split(" must")[0] in refusals[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)  # one clear line, no traceback


async def test_a_reload_rehashes_every_artifact_and_refuses_what_changed_on_disk(cache: Path, tmp_path: Path) -> None:
    """A session kept across a reload is reused only while its file still matches the manifest."""
    root = artifacts(cache, tmp_path, tcn=("1", "5"), image=("1",))
    registry = ModelRegistry(root, prefer_gpu=False)
    await registry.load()
    kept = registry.current.sessions["tcn_1m.onnx"]
    assert len(registry.current.enabled) == 3
    # damage two files under the running worker, then change the manifest (a new 'created' stamp)
    (root / "tcn_5m.onnx").write_bytes((root / "tcn_5m.onnx").read_bytes()[:-10])
    (root / "efficientnet.onnx").unlink()
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["created"] = "2026-02-02T00:00:00+00:00"
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert await registry.reload_if_changed()
    disabled = {c.name: c.disabled for c in registry.current.components}
    assert disabled == {"tcn_1m": None, "tcn_5m": "artifact_checksum", "efficientnet_1m": "artifact_missing"}
    assert registry.current.sessions["tcn_1m.onnx"] is kept  # intact and unchanged: still reused
