"""The one owner of uvicorn: :func:`server_config` (the production settings) and :class:`ApiServer`.

Every program that serves the API — ``candlecast api``, ``candlecast run``, the API benchmark and
the tests — builds its uvicorn through :func:`server_config` and runs it as an :class:`ApiServer`:
started and closed by its owner, bound port readable, no signal handlers of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from service.settings import ConfigError, Settings
from service.ws_wire import WireProtocol

__all__ = ["ApiServer", "server_config"]

log = logging.getLogger(__name__)


def server_config(
    app: FastAPI, settings: Settings, *, host: str | None = None, port: int | None = None, **overrides: Any
) -> uvicorn.Config:
    """The uvicorn settings the API is served with (CLI, single-process run, tests, benchmarks).

    Client frames over ``api_ws_max_frame_bytes`` are refused by the protocol (close 1009).
    Per-message compression is off: fan-out sends one prepared frame to many clients, and deflate
    would compress it once per client. uvicorn does not configure logging (the entry point does).

    Raises :class:`ConfigError` for an address beyond loopback with no API keys, unless
    ``api_allow_anonymous`` says anonymous access is meant (the compose API listens on 0.0.0.0 in
    its container: there, no keys must be a decision, not a default)."""
    bind = host or settings.api_host
    if not settings.api_keys and not settings.api_allow_anonymous and not _loopback(bind):
        raise ConfigError(
            f"the API would listen on {bind} with no API keys: set CANDLECAST_API_KEYS, or"
            " CANDLECAST_API_ALLOW_ANONYMOUS=true if anyone who reaches it may read the signals"
        )
    options: dict[str, Any] = {
        "host": bind,
        "port": settings.api_port if port is None else port,
        "ws_max_size": settings.api_ws_max_frame_bytes,
        "ws": WireProtocol,  # uvicorn's websockets-sansio, plus the fan-out's wire path
        "ws_per_message_deflate": False,
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
        "lifespan": "on",
        "log_config": None,
        "access_log": False,
        "server_header": False,
        "timeout_graceful_shutdown": 5,
    } | overrides
    return uvicorn.Config(app, **options)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


class _OwnedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The owner handles SIGINT/SIGTERM (the CLI cancels its work, then closes this server);
        # two handlers would race, and uvicorn's would cut the lifespan short.
        yield


class ApiServer:
    """uvicorn serving the API as one owned part of a program.

    The owner starts it, reads the bound port (``port=0`` picks a free one) and closes it; closing is
    graceful — no new connections, WebSockets closed (1012), requests drained, then the lifespan
    shutdown — bounded by a timeout, and safe twice. It installs no signal handlers."""

    def __init__(self, config: uvicorn.Config) -> None:
        self.config = config
        self._server = _OwnedServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = 30.0) -> None:
        """Bind and run the lifespan start-up; raises if the server stops instead."""
        task = self._task = asyncio.create_task(self._server.serve(), name="api-server")
        async with asyncio.timeout(timeout_s):
            while not self._server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the API server stopped during start-up (see the log)")
                await asyncio.sleep(0.01)

    @property
    def port(self) -> int:
        port: int = self._server.servers[0].sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def wait(self) -> None:
        """Until the server stops by itself (it normally runs until :meth:`close`)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def close(self, timeout_s: float = 15.0) -> None:
        task = self._task
        if task is None or task.done():
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            log.warning("the API server did not stop within %.0f s: forcing it", timeout_s)
            self._server.force_exit = True
            task.cancel()
            await asyncio.wait([task], timeout=2.0)
