"""The worker tests' kit (``tests/inference/kit.py``) itself: its bars pass the data checks, its models load."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.checks import check_window
from inference.components import load_model_set
from tests.inference.kit import MINUTE, T0, artifacts, model_cache, window


def test_kit_windows_are_servable() -> None:
    close = T0 + 5 * MINUTE
    for iv, n in (("1", 60), ("5", 60), ("60", 30)):
        assert check_window(window(iv, close, n), iv, n, close) is None
    assert check_window(window("1", close, 60), "1", 60, close + MINUTE) == "stale_window"


def test_kit_models_load(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    models = load_model_set(artifacts(model_cache(tmp_path_factory), tmp_path / "a"), prefer_gpu=False)
    assert [c.name for c in models.enabled] == ["tcn_1m", "tcn_5m", "efficientnet_1m", "efficientnet_5m"]
