"""Redis clients, built in one place: a single server, or a Redis Cluster reached through any node.

Every part (ingestor, workers, API) asks :func:`connect` for its client, so ``CANDLECAST_REDIS_CLUSTER``
switches all of them at once. The key layout (:mod:`streaming.redis_keys`) keeps every multi-key
script and MULTI inside one symbol's hash slot, so the same code runs on both; the one difference
the callers see is :func:`pipelined_script`: a cluster pipeline refuses ``EVALSHA``, so there a
script travels as ``EVAL`` (its text, a few hundred bytes) and is routed by its first key.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = [
    "RedisClient",
    "bench_url",
    "connect",
    "fresh_topology",
    "is_cluster",
    "pipelined_script",
    "readiness_ping",
]

RedisClient: TypeAlias = aioredis.Redis | RedisCluster


def connect(
    url: str,
    *,
    cluster: bool = False,
    socket_timeout: float = 5.0,
    connect_timeout: float = 2.0,
    health_check_interval: float = 0,
    retries: bool = True,
) -> RedisClient:
    """A client for ``url``: ``redis.asyncio.Redis``, or ``RedisCluster``, whose URL names one node or
    several, comma-separated (``redis://user:pass@redis:6379,redis-2:6379/0``): the first that answers
    tells the client the rest, so a process starting while one of them is down still finds the cluster.
    ``retries=False`` makes a lost connection an error the caller sees (a pub/sub subscriber must know,
    to re-read what it missed) instead of a silent reconnect."""
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": health_check_interval,
    }
    if not retries:
        kwargs["retry"] = Retry(NoBackoff(), 0)
    if cluster:
        # RedisCluster.from_url, for one node or more: the URL's options once, every node a startup node
        parts = urlsplit(url)
        login, at, hosts = parts.netloc.rpartition("@")
        first_node = parts._replace(netloc=login + at + hosts.split(",")[0])
        options = {**kwargs, **parse_url(urlunsplit(first_node))}
        if options.pop("connection_class", None) is SSLConnection:
            options["ssl"] = True
        nodes = [ClusterNode(*_host_port(h)) for h in hosts.split(",")]
        return RedisCluster(startup_nodes=nodes, **options)
    return aioredis.Redis.from_url(url, **kwargs)


def _host_port(node: str) -> tuple[str, int]:
    host, colon, port = node.rpartition(":")
    return (host, int(port)) if colon else (node, 6379)


def bench_url(url: str | None = None) -> str:
    """The Redis a benchmark uses: ``url``, else ``CANDLECAST_REDIS_URL``, else the local default."""
    return url or os.environ.get("CANDLECAST_REDIS_URL") or "redis://127.0.0.1:6379/0"


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


def readiness_ping(client: RedisClient) -> Callable[[], Awaitable[Any]]:
    """What readiness pings: the server, or every master of a cluster (all slots answer), not the one
    default node a cluster client's PING goes to, which may be a replica, or the master that just died."""
    if isinstance(client, RedisCluster):
        return lambda: client.ping(target_nodes=RedisCluster.PRIMARIES)
    return client.ping


async def pipelined_script(pipe: Any, script: Any, source: str, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queue ``script`` (registered from ``source``) on ``pipe``: by SHA on a single server, as
    ``EVAL`` on a cluster pipeline, which refuses ``EVALSHA``."""
    if isinstance(pipe, ClusterPipeline):
        pipe.eval(source, len(keys), *keys, *args)
    else:
        await script(keys=list(keys), args=list(args), client=pipe)


async def fresh_topology(client: object) -> None:
    """Re-read a cluster client's slot map (no-op on a single server). A pub/sub subscriber runs no
    other command, so nothing else would tell it that a failover moved its node: it calls this before
    each (re)subscription."""
    if isinstance(client, RedisCluster):
        await client.initialize()  # the first time: discovers the nodes
        await client.nodes_manager.initialize()  # later: what the nodes say now
