"""Shared test helpers for ``tests/streaming``: where the shared fixtures live, and book pushes.

``SHARED`` is the project's ``shared/`` folder (golden Bybit samples and recorded data), found beside
the repository or inside it; ``book_update`` builds the typed ``orderbook.*`` push the parser returns,
with levels written as price/size pairs, so book tests state only what each case is about; and
``scratch_store`` is a RedisStore under a fresh key prefix, deleted when the test ends.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Literal

from streaming.frames import BookUpdate, Level
from streaming.redis_client import connect
from streaming.redis_store import RedisStore

Pair = tuple[str | int | Decimal, str | int | Decimal]


def _shared_dir() -> Path:
    repo = Path(__file__).resolve().parents[2]
    for candidate in (repo / "shared", repo.parent / "shared"):
        if (candidate / "bybit_samples").is_dir():
            return candidate
    return repo.parent / "shared"


SHARED = _shared_dir()
XRP_OB500_ZIP = SHARED / "data" / "orderbook" / "bybit_linear_XRPUSDT_ob500_2024-12-01_first5s.data.zip"


def levels(pairs: Sequence[Pair]) -> tuple[Level, ...]:
    """``[(price, size), ...]`` as the parser's exact ``Decimal`` levels (strings keep their zeros)."""
    return tuple((Decimal(str(p)), Decimal(str(s))) for p, s in pairs)


def book_update(
    kind: Literal["snapshot", "delta"],
    u: int,
    bids: Sequence[Pair] = (),
    asks: Sequence[Pair] = (),
    *,
    ts: int,
    seq: int,
    depth: int = 50,
) -> BookUpdate:
    """A BTCUSDT ``orderbook.{depth}`` push."""
    # Positional in field order: the parameters are named as the fields they fill.
    return BookUpdate(f"orderbook.{depth}.BTCUSDT", "BTCUSDT", depth, kind, ts, u, seq, levels(bids), levels(asks))


@contextlib.asynccontextmanager
async def scratch_store(
    redis_url: str,
    tag: str,
    *,
    window_bars: int,
    depth_rows: int,
    cluster: bool = False,
    reuse_decoded: bool = False,
) -> AsyncIterator[RedisStore]:
    """A RedisStore under a fresh ``{tag}<hex>`` prefix (``cluster``: ``redis_url`` names a Redis Cluster
    node); its keys are deleted and it is closed after."""
    client = connect(redis_url, cluster=cluster)
    store = RedisStore(
        client,
        prefix=f"{tag}{uuid.uuid4().hex[:10]}",
        window_bars=window_bars,
        depth_rows=depth_rows,
        reuse_decoded=reuse_decoded,
    )
    try:
        yield store
    finally:
        await store.delete_all()
        await store.close()
