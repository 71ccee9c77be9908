"""``candlecast bench capacity`` runs end to end against the real Redis (a smoke test with one symbol,
not a measurement): every per-symbol structure is filled to its steady-state bound and sized."""

from __future__ import annotations

import pytest

from inference.manifest import Manifest
from service.capacity import bench_capacity
from tests.conftest import ARTIFACTS, DATA_1M

pytestmark = pytest.mark.timeout(120)


def test_bench_capacity_sizes_every_structure_at_its_bound(redis_url: str) -> None:
    result = bench_capacity(redis_url, DATA_1M / "bybit_linear_BTCUSDT_1m.csv.gz", (1,), audit=120)
    (run,) = result["runs"]
    redis = run["redis"]
    kinds = set(redis["bytes_per_symbol_by_kind"])
    assert {"kline:1", "kline:5", "kline:15", "kline:60", "depth:50", "book:50", "signal", "signals"} <= kinds
    assert {"signal:bars", "scores", "scores:bars", "track", "status"} <= kinds
    assert redis["audit_entries_per_symbol"] == 120  # the audit at its bound
    # each audited signal carries a report of every shipped component, one rung of each failover ladder
    shipped = Manifest.load(ARTIFACTS / "manifest.json").components
    serving = [c for c in shipped if not c.stands_in_for and not c.opt_in]
    assert result["steady_state"]["components_per_signal"] == len(serving)
    # (the shipped B3s are not counted, nor the heatmap CNN a host runs only when opted in)
    assert any(c.stands_in_for for c in shipped) and any(c.opt_in for c in shipped)
    # the baseline of the same run: the audit stored compressed is smaller than the JSON it holds
    assert redis["audit_bytes_per_entry"] < redis["audit_plain_bytes_per_entry"]
    assert "events:bars" in redis["shared_bytes"]
    assert run["process"]["rss_bytes_per_symbol"] > 0
    # the audit (120 signals of ~3 kB JSON) is stored compressed, and it is most of a symbol
    assert 120 * 500 < redis["bytes_per_symbol_by_kind"]["signals"] < 120 * redis["audit_plain_bytes_per_entry"]
