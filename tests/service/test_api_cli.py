"""`candlecast api` as an operator runs it: a real process serving a real Redis, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from streaming.redis_keys import RedisKeys
from tests.redis_server import free_port
from tests.service.kit import T0, make_signal

pytestmark = pytest.mark.timeout(60)

CLI = [sys.executable, "-m", "service.cli"]
ROOT = Path(__file__).resolve().parents[2]


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CANDLECAST_")}
    return base | extra


def test_api_needs_redis_and_says_so() -> None:
    proc = subprocess.run([*CLI, "api"], env=env(), cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "CANDLECAST_REDIS_URL" in proc.stderr and "Traceback" not in proc.stderr
    assert (
        "set it (e.g. redis://127.0.0.1:6379/0), or use `candlecast run` for everything in one process" in proc.stderr
    )


def test_api_refuses_to_listen_beyond_loopback_without_keys_unless_told(redis_url: str) -> None:
    """The compose API listens on 0.0.0.0 in its container: with no keys that must be a decision."""
    wide = env(CANDLECAST_REDIS_URL=redis_url, CANDLECAST_API_PORT=str(free_port()))
    proc = subprocess.run(
        [*CLI, "api", "--host", "0.0.0.0"], env=wide, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "the API would listen on 0.0.0.0 with no API keys: set CANDLECAST_API_KEYS" in proc.stderr
    from service.server import server_config
    from service.settings import ConfigError, load_settings

    app = object()
    for fields in ({"api_keys": ["k" * 16]}, {"api_allow_anonymous": True}):
        config = server_config(app, load_settings(redis_url=redis_url, **fields), host="0.0.0.0", port=0)  # type: ignore[arg-type]
        assert config.host == "0.0.0.0"
    for host in ("127.0.0.1", "::1", "localhost"):
        assert server_config(app, load_settings(redis_url=redis_url), host=host, port=0).host == host  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"would listen on api\.example\.com"):
        server_config(app, load_settings(redis_url=redis_url), host="api.example.com", port=0)  # type: ignore[arg-type]


def test_api_serves_what_redis_holds_and_stops_cleanly_on_sigterm(redis_url: str) -> None:
    prefix = f"api-cli-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_url)
    s = make_signal(T0)
    client.set(RedisKeys(prefix).signal_latest("BTCUSDT"), s.to_json())  # written by a worker earlier
    port, metrics_port = free_port(), free_port()
    settings = env(
        CANDLECAST_REDIS_URL=redis_url,
        CANDLECAST_REDIS_PREFIX=prefix,
        CANDLECAST_SYMBOLS="BTCUSDT",
        CANDLECAST_API_METRICS_PORT=str(metrics_port),  # as in docker-compose.yml: metrics off the API port
    )
    proc = subprocess.Popen(
        [*CLI, "api", "--port", str(port)],
        env=settings,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()  # printed once serving (the process may take a while to import)
        assert banner.startswith(f"api: http://127.0.0.1:{port}"), banner
        deadline = time.monotonic() + 30
        body = b""
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/signal/btcusdt", timeout=2)
                if r.status_code == 200:
                    body = r.content
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert body == s.to_json()
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 404
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert metrics.status_code == 200
        assert 'candlecast_api_signal_direction{symbol="BTCUSDT"} 1.0' in metrics.text.splitlines()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
        client.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "ERROR" not in err, err
    assert "Application shutdown complete" in err  # the lifespan ran its shutdown: Redis clients closed
