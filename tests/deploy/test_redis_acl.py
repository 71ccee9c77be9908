"""The compose stack's Redis users, for real: ``docker/redis/entrypoint.sh`` renders the ACL and starts
a real redis-server with it on a loopback port; the ingestor, a worker with the shipped models and the
API then run end to end, each as its own user, and each is refused what it does not need (forging a
signal with the API's password, publishing as the ingestor, flushing, reconfiguring, keys outside the
prefix, anything without a password)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from inference.signal import Signal
from streaming.sim.server import ExchangeSimulator
from tests.conftest import ROOT
from tests.helpers import eventually
from tests.inference.kit import SHIPPED_INTERVALS, SHIPPED_SYMBOL, shipped_pipeline
from tests.redis_server import free_port
from tests.service.kit import api_settings, serving

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]

ENTRYPOINT = ROOT / "docker" / "redis" / "entrypoint.sh"
ROLES = ("INGESTOR", "WORKER", "API", "EXPORTER")


def passwords() -> dict[str, str]:
    return {f"CANDLECAST_REDIS_{role}_PASSWORD": f"{role.lower()}-{uuid.uuid4().hex}" for role in ROLES}


def start(tmp: Path, env: dict[str, str], port: int, *extra: str) -> subprocess.Popen[bytes]:
    """The compose Redis entrypoint on ``port``, with ``extra`` redis-server arguments."""
    args = ["sh", str(ENTRYPOINT), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp), *extra]
    full = os.environ | env | {"CANDLECAST_ACL_FILE": str(tmp / "users.acl")}
    return subprocess.Popen(args, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[tuple[int, dict[str, str], str]]:
    prefix = f"acl{uuid.uuid4().hex[:8]}"
    env = passwords() | {"CANDLECAST_REDIS_PREFIX": prefix}
    port = free_port()
    proc = start(tmp_path, env, port)
    try:
        api = redis.Redis(port=port, username="api", password=env["CANDLECAST_REDIS_API_PASSWORD"])
        wait_until_it_answers(proc, api)
        yield port, env, prefix
    finally:
        stop(proc)


def wait_until_it_answers(proc: subprocess.Popen[bytes], client: redis.Redis) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "redis-server exited"
            assert time.monotonic() < deadline, "redis-server with the ACL did not start"
            time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=10)
    if proc.stderr is not None:
        proc.stderr.close()


def url(port: int, env: dict[str, str], role: str) -> str:
    return f"redis://{role.lower()}:{env[f'CANDLECAST_REDIS_{role}_PASSWORD']}@127.0.0.1:{port}/0"


@pytest.mark.slow
async def test_ingestor_worker_and_api_run_end_to_end_each_as_its_own_user(
    acl_redis: tuple[int, dict[str, str], str], shipped_sim: ExchangeSimulator
) -> None:
    port, env, prefix = acl_redis
    ingest = aioredis.Redis.from_url(url(port, env, "INGESTOR"))
    work = aioredis.Redis.from_url(url(port, env, "WORKER"))
    pipeline = await shipped_pipeline(
        ingest, prefix, shipped_sim, group="acl", registry=CollectorRegistry(), worker_client=work
    )
    settings = api_settings(url(port, env, "API"), prefix, symbols=[SHIPPED_SYMBOL], intervals=list(SHIPPED_INTERVALS))
    try:
        async with serving(settings) as api, api.http() as http:
            await pipeline.worker.start()
            await pipeline.ingestor.start()

            async def served() -> bool:
                r = await http.get(f"/signal/{SHIPPED_SYMBOL}")
                return r.status_code == 200 and Signal.from_json(r.content).source == "ensemble"

            await eventually(served, 60, 0.2, what="a signal served through three Redis users")

            # the worker scores what it served (its user writes the track record); the API's
            # read-only user serves it
            async def scored() -> bool:
                r = await http.get(f"/signal/{SHIPPED_SYMBOL}/performance")
                return r.status_code == 200 and r.json()["windows"]["last_100"]["signal"]["n"] >= 1

            await eventually(scored, 60, 0.2, what="a scored signal served through the API's user")
            assert pipeline.metrics.registry.get_sample_value("candlecast_scoring_errors_total") == 0.0
            assert pipeline.ingestor.metrics.registry.get_sample_value("candlecast_ingest_store_errors_total") in (
                None,
                0.0,
            )
    finally:
        await pipeline.ingestor.close()
        await pipeline.worker.close()
        await ingest.aclose()
        await work.aclose()


def test_each_user_is_refused_what_it_does_not_need(acl_redis: tuple[int, dict[str, str], str]) -> None:
    port, env, prefix = acl_redis
    channel = f"{prefix}:db0:signals"
    key = f"{prefix}:{{BTCUSDT}}:signal"

    def client(role: str) -> redis.Redis:
        return redis.Redis.from_url(url(port, env, role))

    with pytest.raises(redis.AuthenticationError):  # the default user is off: no password, no access
        redis.Redis(port=port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, username="api", password="wrong-password-123").ping()
    api, ingestor, worker, exporter = (client(role) for role in ("API", "INGESTOR", "WORKER", "EXPORTER"))
    worker.set(key, b"{}")
    assert api.get(key) == b"{}"  # the API reads signals
    refused = [
        (api, ("SET", key, "forged")),  # read-only keys: a leaked API password cannot forge a signal
        (api, ("PUBLISH", channel, "forged")),
        (ingestor, ("PUBLISH", channel, "forged")),  # only workers publish
        (ingestor, ("FLUSHALL",)),
        (worker, ("FLUSHDB",)),
        (worker, ("CONFIG", "SET", "appendonly", "no")),
        (ingestor, ("SET", "other:key", "x")),  # keys outside the prefix
        (worker, ("GET", "other:key")),
        (exporter, ("GET", key)),  # the exporter reads statistics only
        (worker, ("PUBLISH", "other:db0:signals", "x")),  # channels outside the prefix
        (ingestor, ("SCRIPT", "FLUSH")),  # its own scripts only: nothing server-wide
        (worker, ("FUNCTION", "FLUSH")),
    ]
    for who, command in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            who.execute_command(*command)
    assert worker.publish(channel, b"ok") == 0  # allowed (nobody subscribed)
    assert "redis_version" in exporter.info()
    for c in (api, ingestor, worker, exporter):
        c.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"CANDLECAST_REDIS_API_PASSWORD": ""}, "CANDLECAST_REDIS_API_PASSWORD is not set"),
        ({"CANDLECAST_REDIS_WORKER_PASSWORD": "short"}, "CANDLECAST_REDIS_WORKER_PASSWORD: at least 16 characters"),
        ({"CANDLECAST_REDIS_INGESTOR_PASSWORD": "has spaces and @ signs"}, "use only A-Z a-z 0-9 _ -"),
    ],
)
def test_redis_refuses_to_start_without_a_good_password_for_every_role(
    tmp_path: Path, change: dict[str, str], message: str
) -> None:
    proc = start(tmp_path, passwords() | change, free_port())
    assert proc.wait(timeout=10) == 2
    assert proc.stderr is not None
    with proc.stderr:
        assert message in proc.stderr.read().decode()


# -- a Redis Cluster node (docker-compose.cluster.yml): two more users, no more reach -----------------


def test_a_cluster_nodes_extra_users_are_refused_data_and_topology_changes(tmp_path: Path) -> None:
    """The `cluster` user builds and watches the cluster but reads no key and cannot fail over, reset,
    forget or move slots; the `replica` user only replicates; nobody can CONFIG GET the replicas'
    masterauth (the exporter included)."""
    from tests.redis_cluster import cluster_port

    env = passwords() | {
        "CANDLECAST_REDIS_PREFIX": "cc",
        "CANDLECAST_REDIS_CLUSTER_PASSWORD": f"cluster-{uuid.uuid4().hex}",
        "CANDLECAST_REDIS_REPLICA_PASSWORD": f"replica-{uuid.uuid4().hex}",
    }
    port = cluster_port(set())
    proc = start(tmp_path, env, port, "--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "nodes.conf"))
    try:

        def login(user: str) -> redis.Redis:
            return redis.Redis(port=port, username=user, password=env[f"CANDLECAST_REDIS_{user.upper()}_PASSWORD"])

        cluster = login("cluster")
        wait_until_it_answers(proc, cluster)
        replica, exporter = login("replica"), login("exporter")
        assert cluster.execute_command("CLUSTER INFO")["cluster_state"] == "fail"  # it may watch the cluster
        cluster.execute_command("CLUSTER ADDSLOTSRANGE", 0, 16383)  # and build it
        refused = [
            (cluster, ("GET", "cc:{BTCUSDT}:signal")),
            (cluster, ("CLUSTER", "FAILOVER")),
            (cluster, ("CLUSTER", "RESET")),
            (cluster, ("CLUSTER", "SETSLOT", "0", "STABLE")),
            (cluster, ("CLUSTER", "DELSLOTS", "0")),
            (cluster, ("CONFIG", "GET", "masterauth")),
            (replica, ("GET", "cc:{BTCUSDT}:signal")),
            (replica, ("CLUSTER", "INFO")),
            (exporter, ("CONFIG", "GET", "masterauth")),
        ]
        for who, command in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                who.execute_command(*command)
        assert "redis_version" in exporter.info()  # the exporter still reads its statistics
        for c in (cluster, replica, exporter):
            c.close()
    finally:
        stop(proc)
