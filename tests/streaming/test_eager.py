"""start_eagerly: a coroutine runs at once up to its first wait; only the rest becomes a task."""

from __future__ import annotations

import asyncio

import pytest

from streaming.eager import start_eagerly


async def test_a_coroutine_that_never_waits_runs_now_and_makes_no_task() -> None:
    done: list[str] = []

    async def send() -> None:
        done.append("sent")

    before = len(asyncio.all_tasks())
    assert start_eagerly(send(), "send") is None
    assert done == ["sent"]  # before anything else ran
    assert len(asyncio.all_tasks()) == before


async def test_one_that_waits_goes_on_as_a_task_from_where_it_waited() -> None:
    steps: list[str] = []
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def send() -> None:
        steps.append("started")
        value = await gate
        steps.append(f"resumed with {value}")
        await asyncio.sleep(0)
        steps.append("finished")

    task = start_eagerly(send(), "slow-send")
    assert task is not None and task.get_name() == "slow-send"
    assert steps == ["started"]  # ran up to the wait, synchronously
    await asyncio.sleep(0.01)
    assert steps == ["started"] and not task.done()
    gate.set_result(7)
    await task
    assert steps == ["started", "resumed with 7", "finished"]


@pytest.mark.parametrize("first_step", [False, True], ids=["at-once", "after-its-first-step"])
async def test_cancelling_the_task_cancels_the_coroutine_where_it_waits(first_step: bool) -> None:
    cleaned: list[bool] = []
    event = asyncio.Event()

    async def send() -> None:
        try:
            await event.wait()
        finally:
            cleaned.append(True)

    task = start_eagerly(send(), "stuck")
    assert task is not None
    if first_step:
        await asyncio.sleep(0)  # the task has run: the cancellation is thrown in where it waits
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]
    assert not event._waiters  # type: ignore[attr-defined]  # nothing left waiting on the event


async def test_errors_surface_where_they_happen() -> None:
    async def fails_at_once() -> None:
        raise ValueError("at once")

    with pytest.raises(ValueError, match="at once"):
        start_eagerly(fails_at_once(), "x")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise ValueError("later")

    task = start_eagerly(fails_later(), "y")
    assert task is not None
    with pytest.raises(ValueError, match="later"):
        await task
