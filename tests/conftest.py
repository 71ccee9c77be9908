"""Shared fixtures: a real Redis (never mocked), isolated per test by a unique key prefix."""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hypothesis  # noqa: F401  # see below
import pytest
import redis.asyncio as aioredis

from streaming.redis_store import RedisStore
from streaming.sim.server import ExchangeSimulator, SimulatorConfig
from tests.redis_cluster import RedisClusterServers
from tests.redis_server import RedisServer

# hypothesis is imported here, at collection, and not left to its pytest plugin's end-of-run summary:
# a run of tests that never import it (one file) would otherwise have the assertion rewriter parse it
# deep in that hook's stack, where CPython 3.11.7 fails with "AST constructor recursion depth
# mismatch" and the run exits 1 after every test passed.

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ARTIFACTS = ROOT / "models" / "artifacts"  # the shipped models
SHIPPED_WINDOW = 250  # bars per window the shipped models need: 241 for linear_1m (TCNs: 64 + 33), with slack
DATA_1M = SHARED / "data" / "klines_1m"


_TALKS_TO_REDIS = frozenset({"redis_url", "own_redis", "redis_cluster"})


@pytest.fixture(autouse=True)
def _heap_per_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A benchmark run in-process freezes its start-up heap, as the services do: not the test run's.

    A test that talks to Redis collects its garbage before it ends, so a connection it leaves open is
    reported (an unraisable ``ResourceWarning``, an error here) against that test, not against
    whichever test the garbage collector next runs in: one such report once failed an unrelated test."""
    yield
    if gc.get_freeze_count():
        gc.unfreeze()
    if _TALKS_TO_REDIS & set(request.fixturenames):
        gc.collect()


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("CANDLECAST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"tests need a real Redis at {url} (run them with `make test`): {exc}", pytrace=False)
    return url


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStore]:
    client = aioredis.Redis.from_url(redis_url)
    store = RedisStore(client, prefix=f"test-{uuid.uuid4().hex[:12]}", window_bars=64, depth_rows=20)
    try:
        yield store
    finally:
        await store.delete_all()
        await store.close()


@pytest.fixture(scope="session")
def bybit_btc_1m() -> Path:
    path = DATA_1M / "bybit_linear_BTCUSDT_1m.csv.gz"
    if not path.exists():
        pytest.fail(f"missing shared data file {path} (../shared must sit beside the checkout)", pytrace=False)
    return path


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server (AOF on) that a test may stop and restart."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A real three-master Redis Cluster on loopback ports, shared by the tests that only read and write."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"), masters=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def shipped_sim(bybit_btc_1m: Path) -> AsyncIterator[ExchangeSimulator]:
    """A 600x replay of real BTC bars with enough history for the shipped models' windows."""
    config = SimulatorConfig(sources=[bybit_btc_1m], speed=600.0, start_offset_bars=SHIPPED_WINDOW * 60 + 120)
    async with ExchangeSimulator(config) as s:
        yield s
