"""``candlecast bench ingest`` (``streaming.bench``): a valid corpus, a run end to end, imported lazily."""

from __future__ import annotations

import os
import subprocess
import sys

from streaming.bench import bench_ingest, make_corpus
from streaming.frames import BookUpdate, KlineUpdate, parse_frame
from tests.conftest import ROOT


def test_corpus_is_valid_bybit_with_contiguous_book_updates() -> None:
    corpus = make_corpus(["AAAUSDT", "BBBUSDT"], frames=400)
    for symbol, frames in corpus.items():
        msgs = [parse_frame(f) for f in frames]
        books = [m for m in msgs if isinstance(m, BookUpdate)]
        assert books[0].kind == "snapshot" and all(b.kind == "delta" for b in books[1:])
        assert [b.u for b in books] == list(range(books[0].u, books[0].u + len(books)))
        assert any(isinstance(m, KlineUpdate) for m in msgs)
        assert {b.symbol for b in books} == {symbol}


async def test_a_small_run_ingests_every_frame(redis_url: str) -> None:
    result = await bench_ingest(symbols=2, frames=400, rounds=1, redis_url=redis_url)
    assert result["frames"] > 0
    assert result["ingest_detail_last_round"]["redis_keys_written"] > 0
    assert result["ingest_frames_per_s"] > 0 and result["raw_ceiling_frames_per_s"] > 0


def test_the_cli_does_not_import_the_benchmark_at_start_up() -> None:
    code = "import sys, service.cli; print('streaming.bench' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
