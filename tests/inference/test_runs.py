"""SessionRuns' merged runs, driven with stand-in ONNX sessions (a sleep and a slice: the timing of
a real model without one)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry

from inference.config import WorkerConfig
from inference.metrics import WorkerMetrics
from inference.runs import SessionRuns, _Batch
from inference.runtime import CPU


class _Session:
    def __init__(self, name: str, delay_s: float) -> None:
        self.name, self.delay_s, self.gpu_only, self.provider, self.threads = name, delay_s, False, CPU, 1
        self.calls: list[int] = []

    def run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self.calls.append(len(x))
        time.sleep(self.delay_s)
        return x[:, :2].copy()


async def test_a_batch_merged_into_another_signals_run_returns_with_that_run_not_behind_other_models() -> None:
    """One slot: a run holds it; a fast model's batches of two signals and a slow model's wait. The
    first fast batch to get the slot takes the other one into its run; that other returns as soon as
    the run is done, not after the slow model's run that holds the slot next."""
    runs = SessionRuns(WorkerConfig(inference_concurrency=1), WorkerMetrics(CollectorRegistry()))
    loop = asyncio.get_running_loop()
    hold, fast, slow = _Session("hold", 0.3), _Session("fast", 0.01), _Session("slow", 2.0)

    def batch(s: _Session) -> _Batch:
        built: asyncio.Future[Any] = loop.create_future()
        built.set_result([(SimpleNamespace(name=s.name), np.ones(4, np.float32))])
        return _Batch(s, [], built, loop.create_future())  # type: ignore[arg-type]

    order: list[str] = []

    async def go(tag: str, b: _Batch) -> None:
        await runs._run(b)
        order.append(tag)

    holder = asyncio.create_task(go("hold", batch(hold)))
    await asyncio.sleep(0.05)
    tasks = [asyncio.create_task(go(t, batch(s))) for t, s in (("a", fast), ("slow", slow), ("b", fast))]
    await asyncio.gather(holder, *tasks)
    await runs.close()
    assert fast.calls == [2]  # both fast batches in one run
    assert order == ["hold", "a", "b", "slow"]
