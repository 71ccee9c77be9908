"""Bar-closed events in: where the worker's events come from and how they are handed over.

:class:`RedisEventSource` reads the ``P:events:bars`` stream through a consumer group (several
workers share it; an entry stays pending until acknowledged, and one idle on a dead consumer is
claimed by another); :class:`MemoryEventSource` polls an in-process store for the single-process
run. Both hand out :class:`Delivery` values (an entry id and its event, or ``None`` for an entry
that cannot be read) behind the :class:`EventSource` protocol the consumer loop uses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.exceptions as rex

from streaming.bar_events import BarEventError, decode_bar_event
from streaming.errors import StoreError
from streaming.redis_boundary import store_errors, text
from streaming.redis_client import RedisClient
from streaming.store import BarEvent

__all__ = ["Delivery", "EventSource", "MemoryEventSource", "RedisEventSource"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stream entry handed to this worker; ``event`` is None for an entry it cannot read."""

    id: str
    event: BarEvent | None
    in_stream: bool = True  # False: made by the worker's sweep, nothing to acknowledge


class EventSource(Protocol):
    async def setup(self) -> None:
        """Create the consumer group if needed (idempotent)."""
        ...

    async def read(self, *, pending: bool, after: str, count: int, block_ms: int) -> list[Delivery]:
        """New entries, or (``pending``) this consumer's own unacknowledged ones after ``after``."""
        ...

    async def claim(self, min_idle_ms: int, count: int) -> list[Delivery]:
        """Entries idle on any consumer for ``min_idle_ms``, now owned by this one."""
        ...

    async def ack(self, ids: Sequence[str]) -> None: ...

    async def backlog(self) -> tuple[int | None, int]:
        """(events not yet delivered to the group, events delivered but unacknowledged)."""
        ...

    async def forget_idle_consumers(self, idle_ms: int) -> list[str]:
        """Drop consumers idle that long with nothing pending (the names of restarted workers)."""
        ...


def _delivery(entry_id: bytes | str, fields: dict[bytes, bytes] | None) -> Delivery:
    try:
        return Delivery(text(entry_id), decode_bar_event(fields or {}))
    except BarEventError:
        return Delivery(text(entry_id), None)


class RedisEventSource:
    """The ``P:events:bars`` stream read through a consumer group."""

    def __init__(
        self, client: RedisClient, stream: str, *, group: str = "candlecast-workers", consumer: str = "worker"
    ) -> None:
        self._r = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._claim_cursor = "0-0"

    async def setup(self) -> None:
        with store_errors("create consumer group"):
            try:
                # "$": a new group starts at the live edge; signals for long-gone bars help nobody.
                await self._r.xgroup_create(self.stream, self.group, id="$", mkstream=True)
                log.info("created consumer group %s on %s", self.group, self.stream)
            except rex.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(self, *, pending: bool, after: str = "0", count: int = 32, block_ms: int = 1000) -> list[Delivery]:
        streams: dict[Any, Any] = {self.stream: after if pending else ">"}
        try:
            with store_errors("read events"):
                reply: Any = await self._r.xreadgroup(
                    self.group, self.consumer, streams, count=count, block=None if pending else block_ms
                )
        except StoreError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("consumer group %s is gone (Redis lost its data?): recreating it", self.group)
            await self.setup()
            return []
        out = []
        for _stream, entries in reply or []:
            out += [_delivery(entry_id, fields) for entry_id, fields in entries]
        return out

    async def claim(self, min_idle_ms: int, count: int = 32) -> list[Delivery]:
        with store_errors("claim events"):
            reply = await self._r.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_ms, start_id=self._claim_cursor, count=count
            )
        cursor, entries = text(reply[0]), reply[1]
        self._claim_cursor = cursor
        deleted = [text(i) for i in reply[2]] if len(reply) > 2 else []
        if deleted:  # trimmed from the stream while pending: nothing left to handle
            await self.ack(deleted)
        return [_delivery(entry_id, fields) for entry_id, fields in entries]

    async def ack(self, ids: Sequence[str]) -> None:
        if ids:
            with store_errors("ack events"):
                await self._r.xack(self.stream, self.group, *ids)

    async def backlog(self) -> tuple[int | None, int]:
        with store_errors("consumer group info"):
            groups = await self._r.xinfo_groups(self.stream)
        for g in groups:
            if text(g["name"]) == self.group:
                lag = g.get("lag")
                return (None if lag is None else int(lag)), int(g["pending"])
        return None, 0

    async def forget_idle_consumers(self, idle_ms: int) -> list[str]:
        """Remove consumers with nothing pending and idle for ``idle_ms`` (restarted workers' old names)."""
        removed = []
        with store_errors("tidy consumers"):
            for c in await self._r.xinfo_consumers(self.stream, self.group):
                name = text(c["name"])
                if name != self.consumer and int(c["pending"]) == 0 and int(c["idle"]) >= idle_ms:
                    await self._r.xgroup_delconsumer(self.stream, self.group, name)
                    removed.append(name)
        return removed


class _ReadsEvents(Protocol):
    async def read_events(self, after: str = "0", count: int = 1000) -> list[tuple[str, BarEvent]]: ...


class MemoryEventSource:
    """Events of an in-process store (one worker, single-process run): polled, nothing to claim or ack."""

    def __init__(self, store: _ReadsEvents, *, poll_s: float = 0.02) -> None:
        self._store = store
        self._poll_s = poll_s
        self._last = "0"
        self._positioned = False

    async def setup(self) -> None:
        if self._positioned:  # like a consumer group: created once, at the live edge
            return
        events = await self._store.read_events(self._last, count=1_000_000)
        if events:
            self._last = events[-1][0]
        self._positioned = True

    async def read(self, *, pending: bool, after: str = "0", count: int = 32, block_ms: int = 1000) -> list[Delivery]:
        if pending:
            return []
        deadline = time.monotonic() + block_ms / 1000
        while True:
            events = await self._store.read_events(self._last, count=count)
            if events:
                self._last = events[-1][0]
                return [Delivery(i, e) for i, e in events]
            if time.monotonic() >= deadline:
                return []
            await asyncio.sleep(self._poll_s)

    async def claim(self, min_idle_ms: int, count: int = 32) -> list[Delivery]:
        return []

    async def ack(self, ids: Sequence[str]) -> None:
        return None

    async def backlog(self) -> tuple[int | None, int]:
        return None, 0

    async def forget_idle_consumers(self, idle_ms: int) -> list[str]:
        return []
