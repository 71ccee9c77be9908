"""Where the track record is kept: each signal's score once, bounded, shared by every worker and API.

Redis layout (``P`` = key prefix, ``{SYM}`` the symbol's hash tag, as :mod:`streaming.redis_keys`):

=============================  ======  ==========================================================
``P:{SYM}:scores``             STREAM  one entry per scored (symbol, bar): fields ``start``, ``score``
                                       (:class:`~inference.track_record.Score` JSON); ``MAXLEN ~ keep``
``P:{SYM}:scores:bars``        ZSET    bar starts already scored, newest ``keep``
``P:{SYM}:track``              HASH    ``as_of``, ``json``: the summary the next signal carries
``P:models:{ID}``              STRING  a manifest's validation figures and drift statistics (JSON)
=============================  ======  ==========================================================

Exactly once per (symbol, bar): the record script adds the bar to ``scores:bars`` and appends the
score only if it is not there yet, so two workers scoring the same signal (a failover, a retried
event) store it once. The track record only moves forward (a slower worker's older summary does not
replace a newer one). The scores survive restarts with Redis; in the single-process run without Redis
the in-memory store keeps the same bounds.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis

from inference.signal import TrackRecord
from inference.signal_store import once_per_bar_lua
from inference.track_record import Score, ScoreFormatError
from streaming.redis_boundary import client_db, store_errors, text
from streaming.redis_keys import RedisKeys

__all__ = ["MemoryScoreStore", "RedisScoreStore", "ScoreStore", "decode_track"]

log = logging.getLogger(__name__)

SCORES_KEEP = 2000  # ≥ 1,000 calls and a day of 1m bars (1,440)


class ScoreStore(Protocol):
    async def record(self, score: Score) -> bool:
        """Store ``score`` unless its (symbol, bar) is already scored; True when stored."""
        ...

    async def scored(self, symbol: str, starts: Sequence[int]) -> set[int]:
        """Those of ``starts`` already scored."""
        ...

    async def recent(self, symbol: str, count: int) -> list[Score]:
        """The newest ``count`` scores, oldest first (unreadable entries skipped, logged)."""
        ...

    async def set_track(self, symbol: str, track: TrackRecord) -> None: ...

    async def track(self, symbol: str) -> TrackRecord | None: ...

    async def put_models(self, models: str, record: dict[str, Any]) -> None: ...

    async def models_record(self, models: str) -> dict[str, Any] | None: ...

    async def version(self, symbol: str) -> str:
        """Changes whenever a score is added (for caches of the summaries)."""
        ...


def decode_track(raw: bytes | str | None) -> TrackRecord | None:
    if not raw:
        return None
    try:
        d = orjson.loads(raw)
        return TrackRecord(
            n=int(d["n"]),
            calls=int(d["calls"]),
            hit_rate=None if d["hit_rate"] is None else float(d["hit_rate"]),
            as_of_bar=None if d["as_of_bar"] is None else int(d["as_of_bar"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        log.warning("an unreadable track record was ignored: %s", exc)
        return None


def _decode_scores(symbol: str, entries: Any, key: str) -> list[Score]:
    out = []
    for entry_id, fields in entries or []:
        raw = (fields or {}).get(b"score")
        try:
            if raw is None:
                raise ScoreFormatError("no score field")
            score = Score.from_json(raw)
            if score.symbol != symbol:
                raise ScoreFormatError(f"a score of {score.symbol}")
            out.append(score)
        except ScoreFormatError as exc:
            log.warning("skipping an unreadable entry %r in %s: %s", entry_id, key, exc)
    return out


# KEYS: scored bars (zset), scores (stream). ARGV: start, score json, keep. Returns 1 if stored.
_RECORD = (
    once_per_bar_lua("KEYS[1]", "ARGV[3]")
    + """
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'start', ARGV[1], 'score', ARGV[2])
return 1
"""
)

# KEYS: track (hash). ARGV: as_of, json. Only forward in time.
_SET_TRACK = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'as_of') or '-1')
if tonumber(ARGV[1]) < cur then return 0 end
redis.call('HSET', KEYS[1], 'as_of', ARGV[1], 'json', ARGV[2])
return 1
"""


class RedisScoreStore:
    def __init__(self, client: aioredis.Redis, *, prefix: str = "cc", keep: int = SCORES_KEEP) -> None:

        self._r = client
        self.keys = RedisKeys(prefix, db=client_db(client))
        self.keep = keep
        self._record = client.register_script(_RECORD)
        self._set_track = client.register_script(_SET_TRACK)

    async def record(self, score: Score) -> bool:
        keys = [self.keys.scored_bars(score.symbol), self.keys.scores(score.symbol)]
        with store_errors("record a score"):
            return bool(await self._record(keys=keys, args=[score.start, score.to_json(), self.keep]))

    async def scored(self, symbol: str, starts: Sequence[int]) -> set[int]:
        if not starts:
            return set()
        with store_errors("read scored bars"):
            marks = await self._r.zmscore(self.keys.scored_bars(symbol), [str(s) for s in starts])
        return {s for s, m in zip(starts, marks, strict=True) if m is not None}

    async def recent(self, symbol: str, count: int) -> list[Score]:
        key = self.keys.scores(symbol)
        with store_errors("read scores"):
            entries = await self._r.xrevrange(key, count=count)
        return list(reversed(_decode_scores(symbol, entries, key)))

    async def set_track(self, symbol: str, track: TrackRecord) -> None:
        as_of = -1 if track.as_of_bar is None else track.as_of_bar
        with store_errors("write the track record"):
            await self._set_track(keys=[self.keys.track(symbol)], args=[as_of, orjson.dumps(track)])

    async def track(self, symbol: str) -> TrackRecord | None:
        with store_errors("read the track record"):
            raw = await self._r.hget(self.keys.track(symbol), "json")
        return decode_track(raw)

    async def put_models(self, models: str, record: dict[str, Any]) -> None:
        with store_errors("write the model record"):
            await self._r.set(self.keys.model_record(models), orjson.dumps(record))

    async def models_record(self, models: str) -> dict[str, Any] | None:
        with store_errors("read the model record"):
            raw = await self._r.get(self.keys.model_record(models))
        if not raw:
            return None
        try:
            out = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("the model record %s is unreadable", models)
            return None
        return out if isinstance(out, dict) else None

    async def version(self, symbol: str) -> str:
        with store_errors("read the scores' newest id"):
            newest = await self._r.xrevrange(self.keys.scores(symbol), count=1)
        return text(newest[0][0]) if newest else ""


@dataclass
class _Scores:
    entries: deque[Score]
    bars: set[int] = field(default_factory=set)
    track: TrackRecord | None = None
    added: int = 0


class MemoryScoreStore:
    """The in-process equivalent (single-process run without Redis), with the same bounds."""

    def __init__(self, *, keep: int = SCORES_KEEP) -> None:
        self.keep = keep
        self._symbols: dict[str, _Scores] = {}
        self._models: dict[str, dict[str, Any]] = {}

    def _of(self, symbol: str) -> _Scores:
        return self._symbols.setdefault(symbol, _Scores(deque(maxlen=self.keep)))

    async def record(self, score: Score) -> bool:
        st = self._of(score.symbol)
        if score.start in st.bars or (len(st.bars) >= self.keep and score.start < min(st.bars)):
            return False
        st.bars.add(score.start)
        if len(st.bars) > self.keep:
            st.bars.discard(min(st.bars))
        st.entries.append(score)
        st.added += 1
        return True

    async def scored(self, symbol: str, starts: Sequence[int]) -> set[int]:
        bars = self._of(symbol).bars
        return {s for s in starts if s in bars}

    async def recent(self, symbol: str, count: int) -> list[Score]:
        entries = self._of(symbol).entries
        return list(entries)[-count:] if count > 0 else []

    async def set_track(self, symbol: str, track: TrackRecord) -> None:
        st = self._of(symbol)
        old = st.track
        if old is None or old.as_of_bar is None or (track.as_of_bar or -1) >= old.as_of_bar:
            st.track = track

    async def track(self, symbol: str) -> TrackRecord | None:
        return self._of(symbol).track

    async def put_models(self, models: str, record: dict[str, Any]) -> None:
        self._models[models] = record

    async def models_record(self, models: str) -> dict[str, Any] | None:
        return self._models.get(models)

    async def version(self, symbol: str) -> str:
        return str(self._of(symbol).added)

    async def close(self) -> None:
        return None
