"""Record a Bybit v5 public WebSocket stream to JSON lines, for replay by the exchange simulator.

Each received frame becomes one line, exactly as received::

    {"recv_ms":1750000000123,"frame":"{\\"topic\\":\\"kline.1.BTCUSDT\\",\\"type\\":\\"snapshot\\",...}"}

``recv_ms`` is the local wall clock at receipt; the replay paces by the frame's own exchange ``ts``.
Acks and pongs are recorded too (the replay skips them). On a dropped connection the recorder
reconnects with capped, jittered exponential backoff and subscribes again; the new snapshots that
follow are recorded like any other frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidURI, WebSocketException

from streaming.supervisor import TaskSupervisor

__all__ = ["record"]

log = logging.getLogger(__name__)

SUBSCRIBE_BATCH = 10  # Bybit spot's documented cap per request; safe everywhere (bybit_protocol.md §2.3)
_QUEUE_LINES = 10_000  # receive -> file; when full the receiver waits (backpressure on the socket)
_WRITE_BATCH = 1_000
_PING_CANCEL_TIMEOUT_S = 2.0


class _LineWriter:
    """Appends lines to a file from a worker thread, fed through a bounded queue."""

    def __init__(self, out: Path) -> None:
        self._out = out
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_QUEUE_LINES)
        self._task: asyncio.Task[None] | None = None
        self.count = 0

    async def put(self, line: bytes) -> None:
        if self._task is not None and self._task.done():
            await self._task  # the file writer died: surface its error instead of blocking
            raise RuntimeError("recorder file writer stopped")
        await self._queue.put(line)
        self.count += 1

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[_LineWriter]:
        fh = await asyncio.to_thread(self._out.open, "wb")
        self._task = asyncio.create_task(self._drain(fh), name="recorder-writer")
        try:
            yield self
        finally:
            # Let everything received so far reach the file, even when the recording is cancelled.
            await asyncio.shield(self._finish(fh))

    async def _finish(self, fh: BinaryIO) -> None:
        assert self._task is not None
        if not self._task.done():
            await self._queue.put(None)
        try:
            await self._task
        finally:
            await asyncio.to_thread(fh.close)

    async def _drain(self, fh: BinaryIO) -> None:
        while True:
            first = await self._queue.get()
            batch: list[bytes] = []
            line: bytes | None = first
            while line is not None:
                batch.append(line)
                if len(batch) >= _WRITE_BATCH or self._queue.empty():
                    break
                line = self._queue.get_nowait()
            if batch:
                await asyncio.to_thread(fh.writelines, batch)
            if line is None:
                await asyncio.to_thread(fh.flush)
                return


def _line(frame: str | bytes) -> bytes:
    text = frame if isinstance(frame, str) else frame.decode("utf-8", errors="replace")
    return orjson.dumps({"recv_ms": time.time_ns() // 1_000_000, "frame": text}) + b"\n"


async def _pinger(ws: ClientConnection, interval: float) -> None:
    n = 0
    try:
        while True:
            await asyncio.sleep(interval)
            n += 1
            await ws.send(orjson.dumps({"op": "ping", "req_id": f"ping-{n}"}).decode())
    except (WebSocketException, OSError) as exc:  # ConnectionClosed among them
        log.debug("recorder ping task ended: %r", exc)  # the session notices the close itself


async def _session(url: str, topics: list[str], writer: _LineWriter, ping_interval: float, session: int) -> int:
    """One connection: subscribe, record until it drops. Returns the number of frames received."""
    received = 0
    async with connect(url, open_timeout=10, close_timeout=2, max_size=2**24) as ws:
        for k in range(0, len(topics), SUBSCRIBE_BATCH):
            req = {
                "op": "subscribe",
                "req_id": f"rec-{session}-{k // SUBSCRIBE_BATCH}",
                "args": topics[k : k + SUBSCRIBE_BATCH],
            }
            await ws.send(orjson.dumps(req).decode())
        pinger = TaskSupervisor("recorder")
        pinger.spawn(_pinger(ws, ping_interval), f"recorder-ping-{session}")
        try:
            async for frame in ws:
                await writer.put(_line(frame))
                received += 1
        finally:
            await pinger.cancel_all(_PING_CANCEL_TIMEOUT_S)
    return received


async def record(
    url: str,
    topics: list[str],
    out: Path,
    duration_s: float | None,
    ping_interval: float = 20.0,
    *,
    initial_backoff_s: float = 0.5,
    max_backoff_s: float = 30.0,
) -> int:
    """Record ``topics`` from ``url`` into ``out`` (overwritten) for ``duration_s`` (``None``: until
    cancelled). Subscribes in batches of at most 10 topics, each with its own ``req_id``, pings
    every ``ping_interval`` seconds, and reconnects on any drop with backoff from
    ``initial_backoff_s`` doubling to ``max_backoff_s`` (reset after a session that received data).

    Returns the number of frames written.
    """
    loop = asyncio.get_running_loop()
    deadline = None if duration_s is None else loop.time() + duration_s
    writer = _LineWriter(Path(out))
    async with writer.running():
        cm = asyncio.timeout_at(deadline)
        try:
            async with cm:
                delay = initial_backoff_s
                session = 0
                while True:
                    session += 1
                    try:
                        received = await _session(url, topics, writer, ping_interval, session)
                        reason = "closed by the server"
                    except InvalidURI:
                        raise
                    except (OSError, TimeoutError, WebSocketException) as exc:
                        received = 0
                        reason = f"{type(exc).__name__}: {exc}"
                    if received:
                        delay = initial_backoff_s
                    # Equal jitter: never reconnect in lockstep with other clients.
                    wait = delay * random.uniform(0.5, 1.0)
                    log.warning("recorder connection %d ended (%s); reconnecting in %.2fs", session, reason, wait)
                    await asyncio.sleep(wait)
                    delay = min(delay * 2, max_backoff_s)
        except TimeoutError:
            if not cm.expired():
                raise
    log.info("recorded %d frames to %s", writer.count, out)
    return writer.count
