"""``candlecast bench api`` runs end to end (a smoke test with small numbers, not a timing)."""

from __future__ import annotations

import pytest

from service.bench import bench_api

pytestmark = pytest.mark.timeout(120)


def test_bench_api_reports_http_ratio_and_fanout() -> None:
    result = bench_api(connections=4, seconds=0.5, subscribers=20, publishes=2)
    http = result["http"]
    assert http["signal"]["requests"] > 0
    assert http["bare_route_ceiling"]["requests"] > 0
    assert http["ratio"] > 0
    fan = result["websocket_fanout"]
    assert fan["deliveries"] == 20 * 2 and fan["complete"]  # every subscriber got every publish
    assert fan["p99_ms"] >= fan["p50_ms"] >= 0
    # the bare websockets broadcast, measured in the same run, and the ratio against it
    assert fan["ceiling_p99_ms"] >= fan["ceiling_p50_ms"] >= 0
    assert fan["ratio"] == round(fan["p99_ms"] / fan["ceiling_p99_ms"], 3)
    assert len(fan["p99_ms_by_round"]) == len(fan["ceiling_p99_ms_by_round"]) == 2
