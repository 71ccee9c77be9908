"""Start a coroutine eagerly: run it now, up to its first real suspension, and make a task of the rest.

``asyncio`` from Python 3.12 does this with eager task factories; this is the same for 3.11, for one
call site at a time. The WebSocket fan-out (:mod:`service.ws`) uses it so that a send that completes
at once — the socket accepts the frame — costs no task and no trip through the event loop, while one
that must wait for a slow peer carries on as a task without holding up the other clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["start_eagerly"]


def start_eagerly(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
    """Run ``coro`` until it finishes or first waits. None when it finished (its exception, if it
    raised one, propagates here); else a task named ``name`` that carries it on from where it waits."""
    try:
        awaited = coro.send(None)
    except StopIteration:
        return None
    task = asyncio.get_running_loop().create_task(_carry_on(coro, awaited), name=name)
    # A task cancelled before its first step never reaches the coroutine: close it then, so its
    # ``finally`` blocks run (as GeneratorExit; a no-op for a coroutine that finished).
    task.add_done_callback(lambda _task: coro.close())
    return task


async def _carry_on(coro: Coroutine[Any, Any, None], awaited: Any) -> None:
    await _Suspended(coro, awaited)


class _Suspended:
    """The rest of a started coroutine: hands the future it waits on to the task that awaits this,
    and passes back what the task sends or throws in (a result, or a cancellation) — ``yield from``
    for a coroutine that was started outside the task."""

    def __init__(self, coro: Coroutine[Any, Any, None], awaited: Any) -> None:
        self._coro = coro
        self._awaited = awaited

    def __await__(self) -> Generator[Any, Any, None]:
        awaited = self._awaited
        while True:
            try:
                value = yield awaited
            except BaseException as exc:  # thrown in by the task (a cancellation): pass it on
                try:
                    awaited = self._coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    awaited = self._coro.send(value)
                except StopIteration:
                    return
