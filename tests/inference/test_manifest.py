"""Manifest integrity: a tampered, missing or foreign artifact is refused with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.manifest import Component, Manifest, ManifestError, sha256_file


def make(tmp_path: Path) -> tuple[Manifest, Component]:
    artifact = tmp_path / "tcn_1m.onnx"
    artifact.write_bytes(b"model bytes")
    c = Component(
        name="tcn_1m",
        kind="tcn",
        timeframe="1",
        version="1",
        file=artifact.name,
        sha256=sha256_file(artifact),
        input={"name": "input"},
        output={"name": "logits"},
        preprocessing={"features": "v1"},
        horizon="next 1m bar",
    )
    m = Manifest(components=(c,), created="2026-11-20T00:00:00+00:00")
    m.save(tmp_path / "manifest.json")
    return m, c


def test_round_trip_and_verified_path(tmp_path: Path) -> None:
    m, c = make(tmp_path)
    loaded = Manifest.load(tmp_path / "manifest.json")
    assert loaded == m
    assert loaded.verified_path(c, tmp_path) == tmp_path / "tcn_1m.onnx"


def test_tampered_artifact_is_refused(tmp_path: Path) -> None:
    m, c = make(tmp_path)
    (tmp_path / "tcn_1m.onnx").write_bytes(b"model bytes, changed")
    with pytest.raises(ManifestError, match=r"tcn_1m: artifact .* has sha256 .* refusing to load it"):
        m.verified_path(c, tmp_path)


def test_missing_artifact_is_refused(tmp_path: Path) -> None:
    m, c = make(tmp_path)
    (tmp_path / "tcn_1m.onnx").unlink()
    with pytest.raises(ManifestError, match="is missing"):
        m.verified_path(c, tmp_path)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("{not json", "unreadable"),
        ('{"schema": 99, "components": []}', "unsupported manifest schema"),
        ('{"schema": 1, "components": [{"name": "x"}]}', "malformed component"),
    ],
)
def test_bad_manifest_files(tmp_path: Path, body: str, needle: str) -> None:
    (tmp_path / "manifest.json").write_text(body)
    with pytest.raises(ManifestError, match=needle):
        Manifest.load(tmp_path / "manifest.json")
    with pytest.raises(ManifestError, match="no manifest"):
        Manifest.load(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("weight", float("inf"), "weight must be"),
        ("weight", -1.0, "weight must be"),
        ("sha256", "abc", "64 hex"),
        ("file", "../outside.onnx", "plain name"),
        ("file", "/etc/passwd", "plain name"),
    ],
)
def test_component_fields_are_validated(tmp_path: Path, field: str, value: object, needle: str) -> None:
    import json

    make(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw["components"][0][field] = value
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    manifest = Manifest.load(tmp_path / "manifest.json")  # one bad entry does not sink the manifest
    with pytest.raises(ManifestError, match=needle):
        manifest.verified_path(manifest.components[0], tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("weight", "1.0", "weight must be int or float, got str"),
        ("input", None, "input must be dict, got NoneType"),
        ("name", 7, "name must be str, got int"),
    ],
)
def test_a_mistyped_field_refuses_the_whole_manifest(tmp_path: Path, field: str, value: object, needle: str) -> None:
    """A value of the wrong type is a broken manifest, not a bad entry: refused with its reason (the
    worker keeps the models it serves) instead of raising a TypeError out of the loader later."""
    import json

    make(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw["components"][0][field] = value
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=f"malformed component 0 .*{needle}"):
        Manifest.load(tmp_path / "manifest.json")
