"""Redis clients, built in one place: a single server, or a Redis Cluster reached through any node.

Every part (ingestor, workers, API) asks :func:`connect` for its client, so ``CANDLECAST_REDIS_CLUSTER``
switches all of them at once. The key layout (:mod:`streaming.redis_keys`) keeps every multi-key
script and MULTI inside one symbol's hash slot, so the same code runs on both; the one difference
the callers see is :func:`pipelined_script`: a cluster pipeline refuses ``EVALSHA``, so there a
script travels as ``EVAL`` (its text, a few hundred bytes) and is routed by its first key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = ["RedisClient", "connect", "fresh_topology", "is_cluster", "pipelined_script", "readiness_ping"]

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
    """A client for ``url``: ``redis.asyncio.Redis``, or ``RedisCluster`` (``url`` names any node; the
    others are discovered). ``retries=False`` makes a lost connection an error the caller sees (a
    pub/sub subscriber must know, to re-read what it missed) instead of a silent reconnect."""
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": health_check_interval,
    }
    if not retries:
        kwargs["retry"] = Retry(NoBackoff(), 0)
    if cluster:
        return RedisCluster.from_url(url, **kwargs)
    return aioredis.Redis.from_url(url, **kwargs)


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
