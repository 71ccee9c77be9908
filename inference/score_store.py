"""Where the track record is kept: each signal's score once, bounded, shared by every worker and API.

Redis layout (``P`` = key prefix, ``{SYM}`` the symbol's hash tag, as :mod:`streaming.redis_keys`):

=============================  ======  ==========================================================
``P:{SYM}:scores``             STREAM  one entry per scored (symbol, bar): fields ``start``, ``score``
                                       (:class:`~inference.track_record.Score` JSON, compressed:
                                       :mod:`inference.compact`); ``MAXLEN ~ keep``
``P:{SYM}:scores:bars``        ZSET    bar starts already scored, newest ``SCORED_KEEP`` (120)
``P:{SYM}:track``              LIST    ``start|models|outcome`` of the newest 120 scores: the short
                                       track record each new signal carries, read in one LRANGE
``P:models:{ID}``              STRING  a manifest's validation figures and drift statistics (JSON)
=============================  ======  ==========================================================

Exactly once per (symbol, bar): the record script adds the bar to ``scores:bars`` and appends the
score only if it is not there yet, so two workers scoring the same signal (a failover, a retried
event) store it once, and its outcome joins the short list in the same script. The scores survive
restarts with Redis; in the single-process run without Redis the in-memory store keeps the same bounds.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from inference.compact import pack, unpack
from inference.signal import TrackRecord
from inference.signal_store import once_per_bar_lua
from inference.track_record import Score, ScoreFormatError, outcome_code, track_from_codes
from streaming.redis_boundary import client_db, store_errors, text
from streaming.redis_client import RedisClient
from streaming.redis_keys import RedisKeys

__all__ = ["TRACK_KEEP", "MemoryScoreStore", "RedisScoreStore", "ScoreStore"]

log = logging.getLogger(__name__)

SCORES_KEEP = 2000  # ≥ 1,000 calls and a day of 1m bars (1,440)
TRACK_KEEP = 120  # outcome codes for the short track record: its 100 calls, and room for unscored ones
# Scored bar starts remembered for exactly-once: the scorer looks back only H + LOOKBACK bars behind the
# newest scored ones, and 120 keeps the Redis ZSET compact (a listpack, under 128 members).
SCORED_KEEP = 120


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

    async def track(self, symbol: str, models: str | None = None) -> TrackRecord | None:
        """The short track record (:func:`~inference.track_record.track_from_codes`) of the ``models``
        series (None: the newest); None when nothing is scored."""
        ...

    async def put_models(self, models: str, record: dict[str, Any]) -> None: ...

    async def models_record(self, models: str) -> dict[str, Any] | None: ...

    async def version(self, symbol: str) -> str:
        """Changes whenever a score is added (for caches of the summaries)."""
        ...


def _decode_scores(symbol: str, entries: Any, key: str) -> list[Score]:
    out = []
    for entry_id, fields in entries or []:
        raw = (fields or {}).get(b"score")
        try:
            if not isinstance(raw, bytes):
                raise ScoreFormatError("no score field")
            try:
                document = unpack(raw)
            except ValueError as exc:
                raise ScoreFormatError(str(exc)) from None
            score = Score.from_json(document)
            if score.symbol != symbol:
                raise ScoreFormatError(f"a score of {score.symbol}")
            out.append(score)
        except ScoreFormatError as exc:
            log.warning("skipping an unreadable entry %r in %s: %s", entry_id, key, exc)
    return out


# KEYS: scored bars (zset), scores (stream), outcomes (list). ARGV: start, the score (compressed JSON),
# keep, outcome code, track keep, dedupe keep. Returns 1 if stored.
_RECORD = (
    once_per_bar_lua("KEYS[1]", "ARGV[6]")
    + """
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'start', ARGV[1], 'score', ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
return 1
"""
)


class RedisScoreStore:
    def __init__(self, client: RedisClient, *, prefix: str = "cc", keep: int = SCORES_KEEP) -> None:

        self._r = client
        self.keys = RedisKeys(prefix, db=client_db(client))
        self.keep = keep
        self._record = client.register_script(_RECORD)

    async def record(self, score: Score) -> bool:
        s = score.symbol
        keys = [self.keys.scored_bars(s), self.keys.scores(s), self.keys.track(s)]
        args: list[bytes | str | int] = [
            score.start,
            pack(score.to_json()),
            self.keep,
            outcome_code(score),
            TRACK_KEEP,
            SCORED_KEEP,
        ]
        with store_errors("record a score"):
            return int(await self._record(keys=keys, args=args)) == 1  # 0 scored already, -1 too old

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
        # up to 2,000 inflates and parses (about 7 ms): off the event loop
        return list(reversed(await asyncio.to_thread(_decode_scores, symbol, entries, key)))

    async def track(self, symbol: str, models: str | None = None) -> TrackRecord | None:
        with store_errors("read the track record"):
            codes = await self._r.lrange(self.keys.track(symbol), 0, TRACK_KEEP - 1)
        # a code that is not UTF-8 (written by someone else) decodes to one track_from_codes skips
        decoded = [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in codes]
        return track_from_codes(decoded, models) if codes else None

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
    entries: deque[bytes]  # the scores as Redis keeps them (compressed JSON): a fraction of the objects
    bars: set[int] = field(default_factory=set)
    codes: deque[str] = field(default_factory=lambda: deque(maxlen=TRACK_KEEP))
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
        if score.start in st.bars or (len(st.bars) >= SCORED_KEEP and score.start < min(st.bars)):
            return False
        st.bars.add(score.start)
        if len(st.bars) > SCORED_KEEP:
            st.bars.discard(min(st.bars))
        st.entries.append(pack(score.to_json()))
        st.codes.append(outcome_code(score))
        st.added += 1
        return True

    async def scored(self, symbol: str, starts: Sequence[int]) -> set[int]:
        bars = self._of(symbol).bars
        return {s for s in starts if s in bars}

    async def recent(self, symbol: str, count: int) -> list[Score]:
        entries = self._of(symbol).entries
        newest = list(itertools.islice(reversed(entries), count)) if count > 0 else []
        return await asyncio.to_thread(lambda: [Score.from_json(unpack(raw)) for raw in reversed(newest)])

    async def track(self, symbol: str, models: str | None = None) -> TrackRecord | None:
        codes = self._of(symbol).codes
        return track_from_codes(list(codes), models) if codes else None

    async def put_models(self, models: str, record: dict[str, Any]) -> None:
        self._models[models] = record

    async def models_record(self, models: str) -> dict[str, Any] | None:
        return self._models.get(models)

    async def version(self, symbol: str) -> str:
        return str(self._of(symbol).added)

    async def close(self) -> None:
        return None
