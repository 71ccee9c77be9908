"""The Redis boundary: bytes to text, and redis-py errors translated into the store's errors.

redis-py returns ``bytes`` unless a client decodes responses, so every reader goes through
:func:`text`; and every call goes through :func:`store_errors`, so callers catch
:class:`~streaming.errors.StoreUnavailable` (retry later) or :class:`~streaming.errors.StoreError`,
never a redis-py type.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.exceptions as rex

from streaming.errors import StoreError, StoreUnavailable

__all__ = ["UNAVAILABLE", "client_db", "store_errors", "text"]

# Worth retrying later: no connection, or (Redis Cluster) a slot without a reachable master while a
# replica is being promoted (CLUSTERDOWN, TRYAGAIN, a slot no node covers yet).
UNAVAILABLE = (
    rex.ConnectionError,
    rex.TimeoutError,
    OSError,
    rex.ClusterDownError,
    rex.TryAgainError,
    rex.SlotNotCoveredError,
)


def client_db(client: object) -> int:
    """The database number a redis-py client talks to (0 for a cluster client, which has only db 0)."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    db = kwargs.get("db", 0) if isinstance(kwargs, dict) else 0
    return int(db) if isinstance(db, int | str) and str(db).isdigit() else 0


def _raised_in_the_client(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside redis-py or asyncio (its innermost frame), not by our code."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    return module.partition(".")[0] in ("redis", "asyncio")


def _a_torn_down_transport(exc: BaseException) -> bool:
    """The errors of a transport whose internals ``connection_lost`` already cleared (#4287)."""
    message = str(exc)
    if isinstance(exc, AttributeError):
        return message.startswith("'NoneType' object has no attribute")
    return message == "'NoneType' object is not callable"


def text(value: bytes | str | None) -> str:
    """A Redis reply as text: bytes are UTF-8 decoded, ``None`` (a missing value) is ``""``."""
    return value.decode() if isinstance(value, bytes) else (value or "")


@contextmanager
def store_errors(what: str | None = None) -> Iterator[None]:
    """Translate at the boundary: unreachable or timed out ⇒ ``StoreUnavailable``, else ``StoreError``.

    ``what`` (e.g. ``"publish signal"``) is named in the message when given.
    """
    where = f" ({what})" if what else ""
    try:
        yield
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"redis unavailable{where}: {exc}") from exc
    except (rex.RedisError, rex.RedisClusterException) as exc:
        raise StoreError(f"redis error{where}: {exc}") from exc
    except (AttributeError, TypeError) as exc:
        # redis-py 8.1 writing to a connection the peer closed (a node that died) raises these from
        # asyncio's transport instead of ConnectionError (redis/redis-py#4287): the connection is
        # lost, nothing more. Only that shape, from there: anything else is a bug and passes through.
        if not (_raised_in_the_client(exc) and _a_torn_down_transport(exc)):
            raise
        raise StoreUnavailable(f"redis unavailable{where}: connection lost ({type(exc).__name__}: {exc})") from exc
