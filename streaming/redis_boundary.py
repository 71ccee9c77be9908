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

__all__ = ["client_db", "store_errors", "text"]


def client_db(client: object) -> int:
    """The database number a redis-py client talks to (0 for a cluster client, which has only db 0)."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    db = kwargs.get("db", 0) if isinstance(kwargs, dict) else 0
    return int(db) if isinstance(db, int | str) and str(db).isdigit() else 0


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
    except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"redis unavailable{where}: {exc}") from exc
    except rex.RedisError as exc:
        raise StoreError(f"redis error{where}: {exc}") from exc
