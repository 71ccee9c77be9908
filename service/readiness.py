"""Readiness (``GET /readyz``): whether this replica should get traffic, and every reason it should not.

Ready means Redis answers (when used), the signal feed is subscribed and primed, bars are arriving
(the exchange clock is neither behind the wall clock nor stalled) and at least one symbol has a
servable signal. One symbol warming up does not take the replica out of a load balancer; it is
listed in ``checks.signals.unavailable``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.exceptions as rex

from service.errors import NotReady
from service.signal_cache import Unavailable
from service.state import ApiState

__all__ = ["readiness"]


async def readiness(state: ApiState) -> dict[str, Any]:
    settings, cache = state.settings, state.cache
    reasons: list[str] = []
    checks: dict[str, Any] = {}
    if state.ping is None:
        checks["redis"] = "not_used"
    else:
        try:
            async with asyncio.timeout(1.0):
                await state.ping()
            checks["redis"] = "ok"
        except (TimeoutError, rex.RedisError, rex.RedisClusterException, OSError):
            checks["redis"] = "unreachable"
            reasons.append("redis_unreachable")
    checks["signal_feed"] = "up" if state.feed.up else "down"
    if not state.feed.up:
        reasons.append("signal_feed_down")
    now = cache.now_ms()
    checks["exchange_time_ms"] = now
    if now is None:
        reasons.append("no_data")
    else:
        lag_s = time.time() - now / 1000.0
        checks["data_lag_s"] = round(lag_s, 3)
        if settings.api_ready_max_lag_s > 0 and lag_s > settings.api_ready_max_lag_s:
            reasons.append("data_behind_wall_clock")
        stall_s = cache.seconds_since_advance()
        checks["data_stall_s"] = None if stall_s is None else round(stall_s, 3)
        if settings.api_ready_max_stall_s > 0 and stall_s is not None and stall_s > settings.api_ready_max_stall_s:
            reasons.append("data_stalled")
    unavailable: dict[str, str] = {}
    for s in cache.symbols:
        answer = cache.status(s)
        if isinstance(answer, Unavailable):
            unavailable[s] = answer.reason
    fresh = len(cache.symbols) - len(unavailable)
    checks["signals"] = {"fresh": fresh, "configured": len(cache.symbols), "unavailable": unavailable}
    if fresh == 0:
        reasons.append("no_fresh_signals")
    if reasons:
        raise NotReady("not ready: " + ", ".join(reasons), details={"reasons": reasons, "checks": checks})
    return {"status": "ready", "checks": checks}
