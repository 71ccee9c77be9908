"""Every error ``inference`` raises on purpose is an ``InferenceError``; the input errors stay ``ValueError``."""

from __future__ import annotations

import pytest

from inference.errors import InferenceError
from inference.features import FeatureError
from inference.manifest import ManifestError
from inference.render import RenderError
from inference.runtime import RuntimeFailure
from inference.signal import SignalFormatError


@pytest.mark.parametrize("error", [ManifestError, FeatureError, RenderError, RuntimeFailure, SignalFormatError])
def test_every_inference_error_derives_from_the_one_base(error: type[Exception]) -> None:
    assert issubclass(error, InferenceError)


@pytest.mark.parametrize("error", [FeatureError, RenderError, SignalFormatError])
def test_input_errors_are_still_value_errors_for_callers_that_catch_those(error: type[Exception]) -> None:
    assert issubclass(error, ValueError)
