"""The whole service on a real Redis Cluster (three masters, one replica each, on loopback ports):
the Bybit simulator replaying real bars of three symbols whose keys live on three different masters
→ one ingestor → two workers in one consumer group → two API replicas, every part on its own
``RedisCluster`` connection as ``CANDLECAST_REDIS_CLUSTER=true`` builds it. Mid-stream the master
holding BTCUSDT's keys and the bar-event stream (its consumer group included) is SIGKILLed and its
replica promoted. Checked: the windows equal the source bars, every closed 1m bar of the run has
exactly one signal (none lost across the failover, none doubled), and both API replicas serve every
symbol's latest signal, before and after."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from redis.crc import key_slot

from inference.components import ModelRegistry
from inference.config import WorkerConfig
from inference.events import RedisEventSource
from inference.metrics import WorkerMetrics
from inference.score_store import RedisScoreStore
from inference.signal import Signal
from inference.signal_store import RedisSignalStore
from inference.worker import Worker
from streaming.ingestor import IngestConfig, Ingestor
from streaming.metrics import IngestMetrics
from streaming.redis_client import connect
from streaming.redis_keys import RedisKeys
from streaming.redis_store import RedisStore
from streaming.sim.bars import read_bar_file
from streaming.sim.server import ExchangeSimulator, SimulatorConfig
from tests.conftest import DATA_1M
from tests.deploy.test_redis_acl import ENTRYPOINT, ROLES
from tests.helpers import eventually
from tests.inference.kit import artifacts, model_cache
from tests.redis_cluster import RedisClusterServers
from tests.service.kit import api_settings, serving

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

SYMBOLS = ("BTCUSDT", "ETHUSDT", "DOGEUSDT")  # slots 8473, 5282, 11087: one per master
INTERVALS = ("1", "5")
GROUP = "cluster-e2e"
MINUTE = 60_000


def _prefix_beside(symbol: str, masters: int = 3) -> str:
    """A prefix whose bar-event stream hashes into the slot range of ``symbol``'s keys (``redis-cli
    --cluster create`` gives the i-th of ``masters`` masters the i-th equal range), so one kill takes
    both a symbol's windows and signals and the consumer group's stream. Chosen before the cluster
    starts: the ACL names the prefix."""

    def master(slot: int) -> int:
        return min(slot * masters // 16384, masters - 1)

    target = master(key_slot(RedisKeys("x").kline(symbol, "1").encode()))
    for _ in range(10_000):
        prefix = f"clu{uuid.uuid4().hex[:8]}"
        if master(key_slot(RedisKeys(prefix).bar_events.encode())) == target:
            return prefix
    raise AssertionError("no prefix found")


def _acl(prefix: str) -> tuple[dict[str, str], dict[str, str]]:
    """The compose ACL's passwords (one per role, the cluster and replica users' too) and the nodes' env."""
    users = (*ROLES, "CLUSTER", "REPLICA")
    passwords = {f"CANDLECAST_REDIS_{r}_PASSWORD": f"{r.lower()}-{uuid.uuid4().hex}" for r in users}
    return passwords | {"CANDLECAST_REDIS_PREFIX": prefix}, passwords


@pytest.mark.parametrize("users", [False, True], ids=["no-acl", "compose-acl"])
async def test_ingest_two_workers_and_two_apis_on_a_cluster_survive_a_master_failover(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture, users: bool
) -> None:
    """``compose-acl``: every node runs the compose image's Redis entrypoint (docker/redis/entrypoint.sh)
    with its ACL, the replicas replicate as the ``cluster`` user, and each part logs in as its own role."""
    prefix = _prefix_beside("BTCUSDT")
    env, passwords = _acl(prefix)
    if users:
        cluster = RedisClusterServers(
            tmp_path / "cluster",
            masters=3,
            replicas=1,
            launcher=["sh", str(ENTRYPOINT)],
            env=lambda home: env | {"CANDLECAST_ACL_FILE": str(home / "users.acl")},
            auth=("cluster", passwords["CANDLECAST_REDIS_CLUSTER_PASSWORD"]),
        )
    else:
        cluster = RedisClusterServers(tmp_path / "cluster", masters=3, replicas=1)
    cluster.start()
    clients = []

    def url(role: str) -> str:
        if not users:
            return cluster.url
        return f"redis://{role.lower()}:{passwords[f'CANDLECAST_REDIS_{role}_PASSWORD']}@{cluster.nodes[0].address}/0"

    def client(role: str):  # type: ignore[no-untyped-def]
        c = connect(url(role), cluster=True)
        clients.append(c)
        return c

    events_at = cluster.master_of(key_slot(RedisKeys(prefix).bar_events.encode()))
    assert events_at == cluster.master_of(key_slot(RedisKeys(prefix).kline("BTCUSDT", "1").encode()))
    models = artifacts(model_cache(tmp_path_factory), tmp_path / "artifacts", tcn=("1", "5"), image=())
    sources = [DATA_1M / f"bybit_linear_{s}_1m.csv.gz" for s in SYMBOLS]
    # 60x: a minute a second, so the few seconds of a failover are a few bars, not a long catch-up
    sim_config = SimulatorConfig(sources=sources, speed=60.0, start_offset_bars=400)
    registry = CollectorRegistry()
    workers: list[Worker] = []
    ingestor: Ingestor | None = None
    try:
        async with ExchangeSimulator(sim_config) as sim:
            store = RedisStore(client("INGESTOR"), prefix=prefix)
            ingestor = Ingestor(
                IngestConfig(
                    ws_url=sim.ws_url,
                    rest_url=sim.rest_url,
                    symbols=SYMBOLS,
                    intervals=INTERVALS,
                    rest_rate_per_s=200.0,
                    backoff_base_s=0.05,
                    backoff_cap_s=0.3,
                ),
                store,
                IngestMetrics(registry),
            )
            for name in ("w1", "w2"):
                c = client("WORKER")
                metrics = WorkerMetrics(CollectorRegistry())
                registry_ = ModelRegistry(models, prefer_gpu=False, metrics=metrics)
                await registry_.load()
                events = RedisEventSource(c, store.keys.bar_events, group=GROUP, consumer=name)
                await events.setup()
                workers.append(
                    Worker(
                        # the sweep at 60x: every second is a minute of bars
                        WorkerConfig(
                            intervals=INTERVALS, block_ms=100, claim_idle_ms=1000, coarse_wait_ms=500, sweep_every_s=1.0
                        ),
                        RedisStore(c, prefix=prefix),
                        events,
                        RedisSignalStore(c, prefix=prefix),
                        registry_,
                        metrics,
                        scores=RedisScoreStore(c, prefix=prefix),
                    )
                )
            signals = RedisSignalStore(client("API"), prefix=prefix)
            settings = api_settings(
                url("API"), prefix, symbols=list(SYMBOLS), intervals=list(INTERVALS), redis_cluster=True
            )
            async with serving(settings) as api_a, serving(settings) as api_b:
                for w in workers:
                    await w.start()
                await ingestor.start()

                async def signalled(n: int) -> bool:
                    return all([len(await signals.history(s, 1000)) >= n for s in SYMBOLS])

                await eventually(lambda: signalled(5), 60, what="5 signals per symbol")
                await _both_serve_the_latest(api_a.base_url, api_b.base_url, signals)

                victim = cluster.master_of(key_slot(store.keys.kline("BTCUSDT", "1").encode()))
                await asyncio.to_thread(cluster.wait_replicated, victim)
                cluster.kill(victim)  # windows, signals and the event stream of one shard: gone
                await asyncio.to_thread(cluster.wait_failover, victim)
                killed_at = await _newest_signalled(signals)

                await eventually(lambda: _all_past(signals, killed_at + 10 * MINUTE), 90, what="10 bars past the kill")
                await _both_serve_the_latest(api_a.base_url, api_b.base_url, signals)
                for api in (api_a, api_b):  # the dead node stays in the topology: readiness asks the masters
                    async with api.http() as http:

                        async def ready(http: httpx.AsyncClient = http) -> bool:
                            return (await http.get("/readyz")).status_code == 200

                        await eventually(ready, 20, what=f"{api.base_url} ready after the failover")
                await ingestor.close()
                for w in workers:
                    await w.close()

            for symbol, source in zip(SYMBOLS, sources, strict=True):
                window = (await store.read_symbol(symbol, ["1"], 50)).bars["1"]
                assert len(window) > 100
                bars = read_bar_file(source, sort=True)
                by_start = {int(s): row for s, row in zip(bars.start_ms.tolist(), bars.ohlcv, strict=True)}
                for b in window:
                    row = by_start[b.start]
                    assert [float(b.open), float(b.high), float(b.low), float(b.close), float(b.volume)] == [
                        float(v) for v in row
                    ], f"{symbol} bar {b.start} differs from the source"
                starts = [b.start for b in window]
                assert starts == list(range(starts[0], starts[-1] + MINUTE, MINUTE)), f"{symbol}: a hole in the window"

                audited = Counter(s.bar.start for s in await signals.history(symbol, 1000) if isinstance(s, Signal))
                assert set(audited.values()) == {1}, f"{symbol}: a bar signalled twice"
                first, last = min(audited), max(audited)
                expected = {s for s in starts if first <= s <= last}
                assert set(audited) == expected, f"{symbol}: bars without a signal {sorted(expected - set(audited))}"
                assert last >= killed_at + 10 * MINUTE
            # (the ingestor need not see the shard go: redis-py's own retries can outlast a short failover)
            messages = [r.getMessage() for r in caplog.records]
            assert not [m for m in messages if "crashed" in m], "a task died in the failover"
    finally:
        if ingestor is not None:
            await ingestor.close()
        for w in workers:
            await w.close()
        for c in clients:
            await c.aclose()
        cluster.stop()


async def _newest_signalled(signals: RedisSignalStore) -> int:
    latest = [await signals.latest(s) for s in SYMBOLS]
    return max(s.bar.start for s in latest if s is not None)


async def _all_past(signals: RedisSignalStore, start: int) -> bool:
    latest = [await signals.latest(s) for s in SYMBOLS]
    return all(s is not None and s.bar.start >= start for s in latest)


async def _both_serve_the_latest(url_a: str, url_b: str, signals: RedisSignalStore) -> None:
    """Each replica's GET /signal/{symbol} is, for every symbol, the latest signal in the cluster."""
    for url in (url_a, url_b):
        async with httpx.AsyncClient(base_url=url, timeout=5.0) as http:
            for symbol in SYMBOLS:

                async def served(symbol: str = symbol) -> bool:
                    r = await http.get(f"/signal/{symbol}")
                    stored = await signals.latest(symbol)
                    return r.status_code == 200 and stored is not None and Signal.from_json(r.content) == stored

                await eventually(served, 20, what=f"{url} serving {symbol}'s latest signal")
