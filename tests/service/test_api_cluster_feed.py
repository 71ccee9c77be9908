"""On a real Redis Cluster (three masters), a signal published on any shard reaches every API replica
through pub/sub alone (no periodic re-read in this test), and the stores keep one symbol's keys in
one slot while spreading the symbols over the masters."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from inference.signal_store import Published, RedisSignalStore
from streaming.redis_client import connect
from streaming.redis_store import RedisStore
from tests.redis_cluster import RedisClusterServers
from tests.service.kit import MINUTE, T0, api_settings, make_signal, next_signal, serving, subscribe, ws_connect

pytestmark = pytest.mark.timeout(60)

SYMBOLS = ["BTCUSDT", "ETHUSDT", "DOGEUSDT"]  # one per master of a three-master cluster


@pytest.fixture
async def cluster_client(redis_cluster: RedisClusterServers) -> AsyncIterator[aioredis.RedisCluster]:
    client = connect(redis_cluster.url, cluster=True)
    try:
        yield client
    finally:
        await client.aclose()


async def test_a_signal_published_on_any_shard_reaches_every_api_replica_by_pubsub(
    redis_cluster: RedisClusterServers, cluster_client: aioredis.RedisCluster
) -> None:
    prefix = f"clf{uuid.uuid4().hex[:8]}"
    store = RedisSignalStore(cluster_client, prefix=prefix)
    masters = {redis_cluster.master_of(key_slot(store.keys.signal_latest(s).encode())).port for s in SYMBOLS}
    assert len(masters) == 3, "the symbols' keys should sit on three different masters"
    settings = api_settings(
        redis_cluster.url, prefix, symbols=SYMBOLS, api_resync_s=3600, redis_cluster=True
    )  # no re-read: only pub/sub can bring a signal in after the start
    async with (
        serving(settings) as a,
        serving(settings) as b,
        ws_connect(a.ws_url) as ws_a,
        ws_connect(b.ws_url) as ws_b,
    ):
        for ws in (ws_a, ws_b):
            await subscribe(ws, SYMBOLS)
        for i, symbol in enumerate(SYMBOLS):
            assert await store.publish(make_signal(T0 + i * MINUTE, symbol)) is Published.LATEST
        for api, ws in ((a, ws_a), (b, ws_b)):
            pushed = {(p["symbol"], p["signal"]["bar"]["start"]) for p in [await next_signal(ws) for _ in SYMBOLS]}
            assert pushed == {(s, T0 + i * MINUTE) for i, s in enumerate(SYMBOLS)}
            assert api.sample("candlecast_api_signal_updates_total", via="pubsub") == len(SYMBOLS)
            async with api.http() as http:
                for i, symbol in enumerate(SYMBOLS):
                    r = await http.get(f"/signal/{symbol}")
                    assert r.status_code == 200 and r.json()["bar"]["start"] == T0 + i * MINUTE
        # the publish script's dedupe holds on a cluster too: a second publish of a bar is refused
        assert await store.publish(make_signal(T0, SYMBOLS[0], direction="short")) is Published.DUPLICATE


async def test_delete_all_empties_the_prefix_on_every_master(
    redis_cluster: RedisClusterServers, cluster_client: aioredis.RedisCluster
) -> None:
    from tests.inference.kit import history

    store = RedisStore(cluster_client, prefix=f"cld{uuid.uuid4().hex[:8]}")
    await store.write(history(T0 + 100 * MINUTE, {"1": 20}, SYMBOLS))
    keys = [store.keys.kline(s, "1") for s in SYMBOLS]
    assert all([await cluster_client.exists(k) for k in keys])
    await store.delete_all()
    for master in redis_cluster.masters():
        node = aioredis.Redis(host="127.0.0.1", port=master.port)
        try:
            assert [k async for k in node.scan_iter(match=f"{store.prefix}:*")] == []
        finally:
            await node.aclose()


async def test_the_cluster_setting_gives_every_part_a_cluster_client(redis_cluster: RedisClusterServers) -> None:
    """CANDLECAST_REDIS_CLUSTER=true through the composition root: the window store (ingestor and
    workers) and the worker's signal and event stores reach keys on every master. A plain client
    would be answered MOVED for two of the three symbols."""
    from service import compose
    from service.settings import load_settings
    from tests.inference.kit import history

    settings = load_settings(
        redis_url=redis_cluster.url, redis_cluster=True, redis_prefix=f"clc{uuid.uuid4().hex[:8]}", symbols=SYMBOLS
    )
    store = compose.open_store(settings)
    assert isinstance(store, RedisStore)
    io = compose.open_worker_io(settings, store)
    try:
        await io.events.setup()
        await store.write(history(T0 + 100 * MINUTE, {"1": 3}, SYMBOLS))
        for symbol in SYMBOLS:
            assert len((await store.read_symbol(symbol, ["1"], 50)).bars["1"]) == 3
            assert await io.signals.publish(make_signal(T0, symbol)) is Published.LATEST
        assert {d.event.symbol for d in await io.events.read(pending=False) if d.event} == set(SYMBOLS)
    finally:
        await store.delete_all()
        await io.signals.close()
        await store.close()


def test_a_cluster_url_must_be_tcp_and_database_0() -> None:
    from service.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"CANDLECAST_REDIS_CLUSTER: .*only database 0.*names database 3"):
        load_settings(redis_url="redis://127.0.0.1:7000/3", redis_cluster=True)
    with pytest.raises(ConfigError, match=r"names database 3"):
        load_settings(redis_url="redis://127.0.0.1:7000/0?db=3", redis_cluster=True)
    with pytest.raises(ConfigError, match=r"CANDLECAST_REDIS_CLUSTER: .*over TCP"):
        load_settings(redis_url="unix:///run/redis.sock", redis_cluster=True)
    assert load_settings(redis_url="redis://127.0.0.1:7000", redis_cluster=True).redis_cluster


def test_a_replaced_setting_is_refused_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import ConfigError, load_settings

    monkeypatch.setenv("CANDLECAST_SIGNAL_AUDIT_MAXLEN", "100000")
    with pytest.raises(
        ConfigError, match="CANDLECAST_SIGNAL_AUDIT_MAXLEN is no longer read: use CANDLECAST_SIGNAL_AUDIT_HOURS"
    ):
        load_settings()


async def test_a_cluster_url_may_name_several_nodes_and_the_first_that_answers_is_enough(
    redis_cluster: RedisClusterServers,
) -> None:
    """A process starting while the node its URL names first is down still finds the cluster."""
    from tests.redis_cluster import cluster_port

    dead = cluster_port(set())  # nothing listens there
    live = redis_cluster.nodes[1].address
    client = connect(f"redis://127.0.0.1:{dead},{live}/0", cluster=True)
    store = RedisStore(client, prefix=f"clm{uuid.uuid4().hex[:8]}")
    try:
        from tests.inference.kit import history

        await store.write(history(T0 + 100 * MINUTE, {"1": 3}, SYMBOLS))
        assert all([len((await store.read_symbol(s, ["1"], 50)).bars["1"]) == 3 for s in SYMBOLS])
    finally:
        await store.delete_all()
        await store.close()


def test_several_nodes_without_the_cluster_setting_are_refused() -> None:
    from service.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match="several nodes: that is a Redis Cluster"):
        load_settings(redis_url="redis://a:6379,b:6379/0")
