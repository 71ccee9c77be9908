"""The one exception base of ``inference``: every error this package raises on purpose derives from it.

Each error lives beside the code that raises it — :class:`inference.manifest.ManifestError`,
:class:`inference.features.FeatureError`, :class:`inference.render.RenderError`,
:class:`inference.runtime.RuntimeFailure`, :class:`inference.signal.SignalFormatError` — and all are
:class:`InferenceError`, so a caller that must survive any of them (the signal engine refusing one
component's input) catches this one class. The three input errors also stay ``ValueError``: they were
documented (and are caught) as such.
"""

from __future__ import annotations

__all__ = ["InferenceError"]


class InferenceError(Exception):
    """Base of the errors ``inference`` raises: bad manifests, inputs, renders, sessions, signals."""
