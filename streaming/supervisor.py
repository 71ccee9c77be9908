"""One owner for background tasks: spawn named coroutines, log their failure, cancel all with a timeout.

Every long-running part (ingestor, connection, worker, signal feed, WebSocket hub, simulator, the
one-process runner) owns its tasks through a :class:`TaskSupervisor` instead of a hand-rolled list::

    tasks = TaskSupervisor("worker")
    tasks.spawn(reader(), "worker-reader")
    await tasks.wait()           # returns when all end; re-raises the first failure
    await tasks.cancel_all(5.0)  # on shutdown; safe twice
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class TaskSupervisor:
    """Named, referenced tasks. A task that raises is logged once, with its name, when it ends."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Start ``coro`` as a task named ``name``; the supervisor keeps it until it is cancelled."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._log_failure)
        self._tasks.append(task)
        return task

    def _log_failure(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("%s task %s crashed", self.owner, task.get_name(), exc_info=exc)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self) -> None:
        """Wait until every task ends; the first failure cancels nothing but is re-raised."""
        if self._tasks:
            await asyncio.gather(*self._tasks)

    async def wait_first(self) -> set[asyncio.Task[Any]]:
        """Wait until any task ends (returns, raises or is cancelled); returns those that ended."""
        if not self._tasks:
            return set()
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        return done

    async def cancel_all(self, timeout_s: float) -> None:
        """Cancel every task and wait up to ``timeout_s`` for them to finish; safe to call twice.

        A task still running after the timeout is logged, not awaited further: shutdown must end."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, stuck = await asyncio.wait(tasks, timeout=timeout_s)
        for task in stuck:
            log.warning("%s task %s did not stop within %.1f s", self.owner, task.get_name(), timeout_s)
