"""``candlecast run``: ingestion, worker and API in one process, fed by the replay simulator."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from service.compose import ingest_config, worker_config
from service.run import run_service
from service.settings import load_settings
from tests.conftest import DATA_1M
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_one_process_serves_signals_over_http_and_websocket(
    backend: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("CANDLECAST_REDIS_URL", "CANDLECAST_API_KEYS"):
        monkeypatch.delenv(var, raising=False)
    overrides: dict[str, object] = {"api_port": 0}
    if backend == "redis":
        overrides |= {"redis_url": redis_url, "redis_prefix": f"run-{uuid.uuid4().hex[:8]}"}
    settings = load_settings(**overrides)
    bound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    replay = [DATA_1M / "bybit_linear_BTCUSDT_1m.csv.gz"]
    task = asyncio.create_task(
        run_service(
            settings,
            ingest_config(settings),
            worker_config(settings),
            replay=replay,
            speed=60.0,  # one bar a second: a 2-core machine running other suites keeps up (readiness below)
            replay_offset_bars=16_000,
            bound=bound,
        )
    )
    try:
        url = await asyncio.wait_for(bound, 60)
        async with httpx.AsyncClient(base_url=url) as http, connect(url.replace("http", "ws") + "/ws") as ws:
            await ws.send(orjson.dumps({"op": "subscribe", "symbols": ["btcusdt"]}).decode())

            answers: list[httpx.Response] = []

            async def served() -> bool:
                answers.append(await http.get("/signal/btcusdt"))
                return answers[-1].status_code == 200

            await eventually(served, 60, 0.2, what="GET /signal/btcusdt answers 200")
            # The body of the 200 itself: a second GET could find the signal already stale on a
            # loaded machine, which is the serving policy working, not a failure of `run`.
            body = answers[-1].json()
            assert body["symbol"] == "BTCUSDT"
            assert body["source"] in ("ensemble", "fallback")
            pushed = []
            async with asyncio.timeout(30):
                while not any(m.get("op") == "signal" and m["signal"]["symbol"] == "BTCUSDT" for m in pushed):
                    pushed.append(orjson.loads(await ws.recv()))
            assert pushed[0] == {"op": "subscribe", "ok": True, "symbols": ["BTCUSDT"], "subscribed": ["BTCUSDT"]}
            assert (await http.get("/signal/NOPEUSDT")).status_code == 404
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text  # a replay is ready though its bars are historical
            metrics = (await http.get("/metrics")).text
            assert "candlecast_ingest_messages_total" in metrics  # ingestion, worker and API share /metrics
            assert "candlecast_signals_total" in metrics
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_replay_on_a_used_redis_starts_afresh_in_its_own_namespace(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run` twice: the second replay starts from its first bar again, while Redis still holds
    the first run's later bars and signals. Those used to stop every new signal for minutes."""
    import redis.asyncio as aioredis

    from inference.signal_store import RedisSignalStore
    from service.bench import sample_signal
    from streaming.redis_store import RedisStore
    from streaming.store import WriteBatch
    from tests.inference.kit import bar

    for var in ("CANDLECAST_REDIS_URL", "CANDLECAST_API_KEYS"):
        monkeypatch.delenv(var, raising=False)
    prefix = f"rerun-{uuid.uuid4().hex[:8]}"
    later = 1_751_000_000_000 - 1_751_000_000_000 % 60_000  # after every bar of the replayed file
    for namespace in (prefix, f"{prefix}-replay"):  # whichever the run uses holds an earlier run's data
        client = aioredis.Redis.from_url(redis_url)
        await RedisSignalStore(client, prefix=namespace).publish(sample_signal(later, "BTCUSDT"))
        store = RedisStore(client, prefix=namespace, window_bars=256, depth_rows=10)
        await store.write(WriteBatch(bars={("BTCUSDT", "1"): [bar(later)]}))
        await client.aclose()
    settings = load_settings(api_port=0, redis_url=redis_url, redis_prefix=prefix)
    bound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_service(
            settings,
            ingest_config(settings),
            worker_config(settings),
            replay=[DATA_1M / "bybit_linear_BTCUSDT_1m.csv.gz"],
            speed=60.0,
            replay_offset_bars=16_000,
            bound=bound,
        )
    )
    try:
        url = await asyncio.wait_for(bound, 60)
        async with httpx.AsyncClient(base_url=url) as http:
            answers: list[httpx.Response] = []

            async def fresh() -> bool:
                answers.append(await http.get("/signal/BTCUSDT"))
                return answers[-1].status_code == 200 and answers[-1].json()["bar"]["start"] < later

            await eventually(fresh, 60, 0.2, what="a signal of this run, not the earlier run's")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        client = aioredis.Redis.from_url(redis_url)
        for namespace in (prefix, f"{prefix}-replay"):
            await RedisStore(client, prefix=namespace, window_bars=256, depth_rows=10).delete_all()
        await client.aclose()


def short_file(tmp_path: Path, bars: int) -> Path:
    """The first ``bars`` one-minute bars of the real BTCUSDT file, as a file of their own."""
    import gzip

    path = tmp_path / "bybit_linear_BTCUSDT_1m_short.csv.gz"
    with gzip.open(DATA_1M / "bybit_linear_BTCUSDT_1m.csv.gz", "rt") as src, gzip.open(path, "wt") as dst:
        for i, line in enumerate(src):
            if i > bars:
                break
            dst.write(line)
    return path


async def test_a_short_replay_serves_signals_then_stops_at_the_end_or_loops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """400 bars: the replay starts after the shortest useful history (241 bars; longer windows drop
    out with a reason: the signal says partial), serves signals, says at WARNING that the data ended
    and stops — or, with loop, replays it again."""
    for var in ("CANDLECAST_REDIS_URL", "CANDLECAST_API_KEYS", "CANDLECAST_SYMBOLS"):
        monkeypatch.delenv(var, raising=False)
    path = short_file(tmp_path, 400)
    settings = load_settings(api_port=0)
    served: list[dict[str, object]] = []

    async def run(loop: bool) -> asyncio.Task[None]:
        bound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            run_service(
                settings,
                ingest_config(settings),
                worker_config(settings),
                replay=[path],
                speed=3000.0,
                loop=loop,
                bound=bound,
            )
        )
        url = await asyncio.wait_for(bound, 60)
        async with httpx.AsyncClient(base_url=url) as http:

            async def a_signal() -> bool:
                try:
                    r = await http.get("/signal/BTCUSDT")
                except httpx.TransportError:  # the run already stopped: no signal was served in time
                    return False
                if r.status_code == 200:
                    served.append(r.json())
                return r.status_code == 200

            await eventually(a_signal, 30, 0.05, what="a signal from the short replay")
        return task

    with caplog.at_level("WARNING"):
        once = await run(loop=False)
        await asyncio.wait_for(once, 60)  # it ends by itself at the end of the data
        assert "the replay of BTCUSDT reached the end of its data; stopping" in caplog.text
        assert served[-1]["partial"] is True  # the 1h and 15m views had no full window yet
        dropped = {c["name"]: c["reason"] for c in served[-1]["components"] if c["status"] == "dropped"}
        assert dropped.get("tcn_60m") == "short_window"
        looping = await run(loop=True)
        await eventually(lambda: "replaying it again from the start (--loop)" in caplog.text, 60, what="a second pass")
        assert not looping.done()
        looping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await looping


async def test_a_replay_stops_only_once_its_last_bars_are_signalled() -> None:
    """At the end of the data the worker may still hold a backlog: the run waits (bounded) until each
    symbol's newest stored bar has its signal or its no-signal record, then stops."""
    from dataclasses import replace

    from inference.signal import BarRef, NoSignal
    from inference.signal_store import MemorySignalStore
    from service.bench import sample_signal
    from service.run import _caught_up
    from streaming.memory_store import MemoryStore
    from streaming.store import WriteBatch
    from tests.inference.kit import MINUTE, T0, bar

    store, signals = MemoryStore(window_bars=64, depth_rows=10), MemorySignalStore()
    bars = {(s, "1"): [bar(T0 + i * MINUTE, "1", s) for i in range(10)] for s in ("A1", "B1")}
    await store.write(WriteBatch(bars=bars))
    last = T0 + 9 * MINUTE
    await signals.publish(replace(sample_signal(last - MINUTE, "A1"), horizon_minutes=1))
    assert not await _caught_up(["A1", "B1"], store, signals, 50, 1.0)  # A1's last bar has no signal yet
    await signals.publish(replace(sample_signal(last, "A1"), horizon_minutes=1))
    assert not await _caught_up(["A1", "B1"], store, signals, 50, 1.0)  # nor B1's
    await signals.record_no_signal(NoSignal("B1", BarRef("1", last, last + MINUTE), "fallback_input:x", "d", 1, 2))
    assert await _caught_up(["A1", "B1"], store, signals, 50, 5.0)
