"""``--fault KIND:EVERY_S``: parsing, and the injector's periodic faults against a real simulator."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from streaming.sim.faults import FAULT_KINDS, Fault, parse_fault, periodic_faults
from streaming.sim.server import ExchangeSimulator, SimulatorConfig
from tests.helpers import eventually


def test_parse_fault_reads_kind_and_period() -> None:
    assert parse_fault("drop:30") == Fault("drop", 30.0)
    assert parse_fault("stall:2.5") == Fault("stall", 2.5)
    assert set(FAULT_KINDS) == {"drop", "stall", "gap", "malformed", "rest403", "resterror"}


@pytest.mark.parametrize("text", ["drop", "drop:x", "drop:0", "drop:-1", "nuke:30"])
def test_parse_fault_rejects_malformed_options_naming_them(text: str) -> None:
    with pytest.raises(ValueError, match="--fault"):
        parse_fault(text)


async def test_injector_repeats_its_fault_until_exit(bybit_btc_1m: Path) -> None:
    async with ExchangeSimulator(SimulatorConfig(sources=[bybit_btc_1m])) as sim:
        url = f"{sim.rest_url}/v5/market/kline?category=linear&symbol=BTCUSDT&interval=1&limit=1"
        async with httpx.AsyncClient() as http:
            async with periodic_faults(sim, [Fault("rest403", 0.05)]):

                async def forbidden() -> bool:
                    return (await http.get(url)).status_code == 403

                await eventually(forbidden, what="a REST 403 injected")
                await eventually(forbidden, what="a second REST 403 injected")
            # Drain what the loop queued before exit; then no more faults arrive.
            await eventually(lambda: _ok(http, url), what="REST answering again")
            for _ in range(3):
                assert (await http.get(url)).status_code == 200


async def _ok(http: httpx.AsyncClient, url: str) -> bool:
    return (await http.get(url)).status_code == 200
