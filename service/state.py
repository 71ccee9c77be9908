"""What the API's lifespan built (:class:`ApiState`) and the dependency that hands it to handlers.

Handlers reach the cache, the feed, the hub and the store only through :func:`api_state`
(``state: State`` in a signature), never through module globals.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from inference.signal_store import SignalStore
from service.metrics import ApiMetrics
from service.performance import PerformanceBook
from service.settings import Settings
from service.signal_cache import SignalCache
from service.signal_feed import SignalFeed
from service.ws import WsHub

if TYPE_CHECKING:
    from service.auth import ApiKeys  # auth's dependency reads the state: a runtime import would cycle

__all__ = ["ApiState", "State", "api_state"]


@dataclass(frozen=True)
class ApiState:
    """What the lifespan built, for the handlers."""

    settings: Settings
    store: SignalStore
    cache: SignalCache
    hub: WsHub
    feed: SignalFeed
    keys: ApiKeys
    metrics: ApiMetrics
    ping: Callable[[], Awaitable[Any]] | None  # Redis, when the API uses it
    performance: PerformanceBook  # the track record: scored signals, summarised


async def api_state(conn: HTTPConnection) -> ApiState:
    # async: FastAPI runs a plain ``def`` dependency in a worker thread, on every request.
    state: ApiState = conn.state.api
    return state


State = Annotated[ApiState, Depends(api_state)]
