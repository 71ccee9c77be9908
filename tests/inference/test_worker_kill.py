"""Two `candlecast worker` processes share a live stream; both are SIGKILLed mid-stream and
restarted (one under its old consumer name, one under a new name). No event is lost and no
(symbol, bar) is published twice: the audit streams hold exactly one signal per 1m event."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from inference.events import RedisEventSource
from inference.score_store import RedisScoreStore
from inference.signal import Signal
from inference.signal_store import RedisSignalStore
from streaming.redis_store import RedisStore
from tests.helpers import eventually
from tests.inference.kit import MINUTE, T0, artifacts, closing, history, model_cache

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
GROUP = "kill-test"
MINUTES = 40


class WorkerProcess:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env | {"CANDLECAST_WORKER_CONSUMER": name}
        self.log = log_dir / f"worker-{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "service.cli", "worker", cwd=ROOT, env=self.env, stdout=out, stderr=out
            )

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)  # no clean-up, no ack: as if the machine died
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def test_killed_workers_lose_no_event_and_publish_no_duplicate(
    redis_url: str, redis_store: RedisStore, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    models = artifacts(model_cache(tmp_path_factory), tmp_path / "artifacts", tcn=("1", "5"), image=())
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANDLECAST_")} | {
        "CANDLECAST_REDIS_URL": redis_url,
        "CANDLECAST_REDIS_PREFIX": redis_store.prefix,
        "CANDLECAST_INTERVALS": "1,5,60",  # 60: a bar whose models miss the budget gets the 1h rule
        "CANDLECAST_ARTIFACTS_DIR": str(models),
        "CANDLECAST_WORKER_GROUP": GROUP,
        "CANDLECAST_CLAIM_IDLE_MS": "1000",
        "CANDLECAST_COARSE_WAIT_MS": "1500",
        "CANDLECAST_WORKER_METRICS_PORT": "0",
        "CANDLECAST_PREFER_GPU": "false",
        "CANDLECAST_WINDOW_BARS": "64",
    }
    first = T0 + 60 * MINUTE
    await redis_store.write(history(first, {"1": 60, "5": 60, "60": 20}, SYMBOLS))
    client = aioredis.Redis.from_url(redis_url)
    group = RedisEventSource(client, redis_store.keys.bar_events, group=GROUP, consumer="test")
    await group.setup()  # before any event of the run, so every one of them is the workers' to handle
    signals = RedisSignalStore(client, prefix=redis_store.prefix)

    async def published() -> int:
        return sum([len(await signals.history(s, 1000)) for s in SYMBOLS])

    async def pending_on(consumer: str) -> int:
        return len(
            await client.xpending_range(redis_store.keys.bar_events, GROUP, "-", "+", 100, consumername=consumer)
        )

    a, b, b2 = (WorkerProcess(name, env, tmp_path) for name in ("a", "b", "b2"))
    try:
        await a.start()
        await b.start()
        for k in range(1, MINUTES + 1):
            close = first + k * MINUTE
            if k == 15:
                # A 5m boundary whose 5m bar is late: b (alone, a is dead) holds the three 1m events
                # while it waits for it, and dies holding them.
                await redis_store.write(closing(close, ("1",), SYMBOLS))
                await eventually(lambda: has(pending_on("b"), 3), 10, what="b holding the events")
                await b.kill()
                await redis_store.write(closing(close, ("5",), SYMBOLS))
                continue
            await redis_store.write(closing(close, ("1", "5", "60"), SYMBOLS))
            if k == 6:
                await eventually(lambda: has(published(), 4 * len(SYMBOLS)), 20, what="both workers publishing")
            elif k == 12:
                await a.kill()  # whatever a held stays pending under "a"
            elif k == 20:
                await a.start()  # same name: its own pending entries first; b's are claimed after 1 s idle
            elif k == 25:
                await b2.start()  # b "restarts" under a new name
            elif k == 30:
                await a.kill()
            elif k == 33:
                await a.start()
            await asyncio.sleep(0.1)  # pacing the market (a minute per 0.1 s), not waiting for a condition

        expected = MINUTES * len(SYMBOLS)

        async def all_done() -> bool:
            pending = await client.xpending(redis_store.keys.bar_events, GROUP)
            return await published() == expected and int(pending["pending"]) == 0

        await eventually(all_done, 30, 0.1, what=f"{expected} signals and nothing pending")
    finally:
        for w in (a, b, b2):
            await w.stop()

    events = await redis_store.read_events(count=10_000)
    run = Counter((e.symbol, e.start) for _, e in events if e.interval == "1" and e.start >= first)
    assert len(run) == expected and set(run.values()) == {1}
    audited: Counter[tuple[str, int]] = Counter()
    for s in SYMBOLS:
        for sig in await signals.history(s, 1000):
            assert isinstance(sig, Signal)
            audited[(sig.symbol, sig.bar.start)] += 1
    assert audited == run, "exactly one signal per (symbol, bar) for every 1m event"
    scores = RedisScoreStore(client, prefix=redis_store.prefix)
    scored: Counter[tuple[str, int]] = Counter()
    for s in SYMBOLS:
        for score in await scores.recent(s, 1000):
            assert score.scored, score
            scored[(s, score.start)] += 1
    newest = first + (MINUTES - 1) * MINUTE  # its horizon ends at a bar never written
    due = Counter({k: 1 for k in run if k[1] != newest})
    missing, extra = sorted(due - scored), sorted(scored - due)
    assert not missing and not extra, f"exactly one score per (symbol, bar): missing {missing}, extra {extra}"
    latest = await signals.latest("BTCUSDT")
    assert latest is not None and latest.bar.start == first + (MINUTES - 1) * MINUTE
    logs = a.log.read_text() + b2.log.read_text()
    assert logs.count("took over event") >= 3  # b's three events, claimed by a live worker
    await client.aclose()


async def has(count: Awaitable[int], n: int) -> bool:
    return await count >= n
