"""The model manifest: what each shipped ONNX artifact is, how to feed it, and how it did.

Written by ``candlecast export`` (offline), read by the worker and ``candlecast evaluate`` — no
torch needed to read it. Every artifact's sha256 is checked before a session is built: a missing,
tampered or mismatched file is refused with :class:`ManifestError`, naming the file.

Example component::

    {"name": "tcn_5m", "kind": "tcn", "timeframe": "5", "version": "2026.11.20", "file": "tcn_5m.onnx",
     "sha256": "…", "input": {"name": "input", "shape": ["batch", 8, 64], "dtype": "float32"},
     "output": {"name": "logits", "shape": ["batch", 1]}, "preprocessing": {"features": "v1", "length": 64,
     "warmup": 33}, "horizon": "next 5m bar", "training": {…}, "validation": {…}, "weight": 1.0}
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from inference.errors import InferenceError

__all__ = ["Component", "Manifest", "ManifestError", "sha256_file"]

SCHEMA_VERSION = 1
HEX = frozenset("0123456789abcdef")


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
    kind: str  # "tcn" | "efficientnet"
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


@dataclass(frozen=True)
class Manifest:
    components: tuple[Component, ...]
    created: str
    schema: int = SCHEMA_VERSION
    notes: str = ""

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
        try:
            components = tuple(Component(**c) for c in raw["components"])
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"{path}: malformed component entry: {exc}") from exc
        return cls(components=components, created=str(raw.get("created", "")), notes=str(raw.get("notes", "")))

    def save(self, path: Path) -> None:
        body = {
            "schema": self.schema,
            "created": self.created,
            "notes": self.notes,
            "components": [asdict(c) for c in self.components],
        }
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
