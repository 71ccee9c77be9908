"""The one bar-file reader and bucketer (``streaming.sim.bars``), shared by the simulator and ``models``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streaming.sim.bars import MINUTE_MS, complete_buckets, read_bar_file

HEADER = "open_time_ms,open,high,low,close,volume\n"


def test_reads_any_interval_keeping_the_file_strings(tmp_path: Path) -> None:
    path = tmp_path / "x_BTCUSDT_5m.csv"
    path.write_text(HEADER + "0,10.0,11.5,9.25,11,3\n300000,11,12,10.5,10.75,0.125\n")
    f = read_bar_file(path)
    assert f.start_ms.tolist() == [0, 5 * MINUTE_MS]
    assert f.strings[0] == ("10.0", "11")
    assert f.strings[4] == ("3", "0.125")
    assert f.ohlcv.tolist() == [[10.0, 11.5, 9.25, 11.0, 3.0], [11.0, 12.0, 10.5, 10.75, 0.125]]


def test_padded_values_read_as_the_clean_file_does(tmp_path: Path) -> None:
    clean, padded = tmp_path / "clean.csv", tmp_path / "padded.csv"
    clean.write_text(HEADER + "0,10,11,9,10.5,1\n60000,10.5,12,10,11,2\n")
    padded.write_text(HEADER + "0, 10,11 ,9,10.5,1\n\n60000,10.5,12,10,11, 2\n")
    a, b = read_bar_file(clean), read_bar_file(padded)
    assert a.strings == b.strings
    assert np.array_equal(a.start_ms, b.start_ms) and np.array_equal(a.ohlcv, b.ohlcv)


@pytest.mark.parametrize(
    ("rows", "error"),
    [
        ("", "no bars"),
        ("0,1e3,2,1,1,1\n", ":2: values must be plain decimals"),
        ("0,1,2,1,1,1\n0,1,2,1,1,1\n", ":3: open_time_ms 0 is not minute-aligned or not increasing"),
        ("0,1,2,1,1\n", ":2: malformed row"),
    ],
)
def test_a_bad_file_is_refused_naming_the_line(tmp_path: Path, rows: str, error: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + rows)
    with pytest.raises(ValueError, match=error):
        read_bar_file(path)


def test_complete_buckets_keep_only_whole_aligned_buckets() -> None:
    starts = np.array([0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11], dtype=np.int64) * 5 * MINUTE_MS
    idx = complete_buckets(starts, 5, 15)
    assert idx.tolist() == [[0, 1, 2], [3, 4, 5], [8, 9, 10]]  # the bucket missing 6 is dropped
    with pytest.raises(ValueError, match="cannot build 7m bars from 5m bars"):
        complete_buckets(starts, 5, 7)
