"""``/docs`` and ``/redoc`` render offline, in a real headless browser (Debian's ``chromium``): the
Swagger UI and ReDoc files are served by the API itself (service/docs.py), not from a CDN, so the
pages show every operation on a machine without internet."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.service.kit import api_settings, serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not installed (Debian package `chromium`; `make test` installs it)"
    ),
]

# Headless, nothing but the page: no sync, no first-run, no background fetches.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--virtual-time-budget=15000",
]


async def browse(*args: str) -> str:
    assert CHROMIUM is not None
    done = await asyncio.to_thread(
        subprocess.run, [CHROMIUM, *FLAGS, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


async def test_docs_and_redoc_show_every_operation_in_a_headless_browser_offline(
    redis_url: str, tmp_path: Path
) -> None:
    async with serving(api_settings(redis_url, f"docs-{uuid.uuid4().hex[:8]}")) as api:
        async with api.http() as http:
            html = (await http.get("/docs")).text + (await http.get("/redoc")).text
            paths = sorted((await http.get("/openapi.json")).json()["paths"])
        assert "cdn" not in html and "https://" not in html  # every asset from the API itself
        swagger = await browse("--dump-dom", f"{api.base_url}/docs")
        assert swagger.count('class="opblock-summary-path"') >= len(paths)  # one block per operation
        for path in paths:
            assert f'data-path="{path}"' in swagger, path
        redoc = await browse("--dump-dom", f"{api.base_url}/redoc")
        assert redoc.count("operation-type get") >= len(paths) and "/signal/{symbol}" in redoc
        shot = tmp_path / "docs.png"
        await browse(f"--screenshot={shot}", "--window-size=1280,1600", f"{api.base_url}/docs")
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1600, 1280)
    assert float(np.std(pixels[..., :3])) > 0.05  # a rendered page, not a blank one
