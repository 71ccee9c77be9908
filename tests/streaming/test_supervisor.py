"""The task supervisor: names, failure logging, wait and cancel-with-timeout."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streaming.supervisor import TaskSupervisor


async def _fail() -> None:
    raise RuntimeError("boom")


async def test_a_crashed_task_is_logged_with_its_owner_and_name(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSupervisor("worker")
    task = tasks.spawn(_fail(), "worker-reader")
    with pytest.raises(RuntimeError, match="boom"):
        await tasks.wait()
    assert task.get_name() == "worker-reader"
    crashed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in crashed] == ["worker task worker-reader crashed"]
    assert crashed[0].exc_info is not None


async def test_cancel_all_stops_every_task_and_is_safe_twice(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSupervisor("ingestor")
    forever = [tasks.spawn(asyncio.Event().wait(), f"t{i}") for i in range(3)]
    await tasks.cancel_all(1.0)
    assert all(t.cancelled() for t in forever)
    assert len(tasks) == 0
    await tasks.cancel_all(1.0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_task_that_ignores_cancellation_is_reported_not_awaited_forever(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    tasks = TaskSupervisor("hub")
    task = tasks.spawn(stubborn(), "hub-sender")
    await asyncio.sleep(0)
    await tasks.cancel_all(0.05)
    assert not task.done()
    assert "hub task hub-sender did not stop within 0.1 s" in caplog.text
    release.set()
    await task


async def test_wait_first_returns_the_task_that_ended() -> None:
    tasks = TaskSupervisor("run")
    quick = tasks.spawn(asyncio.sleep(0), "quick")
    tasks.spawn(asyncio.Event().wait(), "forever")
    assert await tasks.wait_first() == {quick}
    await tasks.cancel_all(1.0)
