"""Scheduled fault injection for the exchange simulator: ``--fault KIND:EVERY_S`` and its loops.

Owns the fault vocabulary of ``candlecast simulate`` (drop, stall, gap, malformed, rest403,
resterror), parsing ``drop:30`` into a :class:`Fault`, and :func:`periodic_faults`, which runs one
named loop per fault against an :class:`~streaming.sim.server.ExchangeSimulator` for as long as it
is entered. The one-shot fault methods themselves live on the simulator.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal, get_args

from streaming.sim.server import ExchangeSimulator
from streaming.supervisor import TaskSupervisor

__all__ = ["FAULT_KINDS", "Fault", "FaultKind", "inject", "parse_fault", "periodic_faults"]

log = logging.getLogger(__name__)

FaultKind = Literal["drop", "stall", "gap", "malformed", "rest403", "resterror"]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)

_MAX_STALL_S = 15.0
_CANCEL_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Fault:
    """Inject ``kind`` every ``every_s`` wall seconds."""

    kind: FaultKind
    every_s: float


def parse_fault(text: str) -> Fault:
    """``"drop:30"`` -> ``Fault("drop", 30.0)``; ``ValueError`` naming the option when malformed."""
    kind, _, every = text.partition(":")
    try:
        seconds = float(every)
    except ValueError:
        raise ValueError(f"--fault {text!r}: expected KIND:SECONDS, e.g. drop:30") from None
    if kind not in FAULT_KINDS or seconds <= 0:
        raise ValueError(f"--fault {text!r}: kind must be one of {sorted(FAULT_KINDS)} and seconds > 0")
    return Fault(kind, seconds)


def inject(sim: ExchangeSimulator, fault: Fault) -> None:
    """Inject ``fault`` once; a stall lasts half the period, at most 15 s."""
    log.warning("injecting fault: %s", fault.kind)
    if fault.kind == "drop":
        sim.drop_connections()
    elif fault.kind == "stall":
        sim.stall(min(fault.every_s / 2, _MAX_STALL_S))
    elif fault.kind == "gap":
        for symbol in sim.symbols:
            sim.skip_u(symbol)
    elif fault.kind == "malformed":
        sim.send_malformed()
    elif fault.kind == "rest403":
        sim.fail_rest("http403")
    elif fault.kind == "resterror":
        sim.fail_rest("retcode")


async def _every(sim: ExchangeSimulator, fault: Fault) -> None:
    while True:
        await asyncio.sleep(fault.every_s)
        inject(sim, fault)


@asynccontextmanager
async def periodic_faults(sim: ExchangeSimulator, faults: Sequence[Fault]) -> AsyncIterator[None]:
    """``async with periodic_faults(sim, faults):`` injects each fault every period until exit."""
    tasks = TaskSupervisor("fault-injector")
    for fault in faults:
        tasks.spawn(_every(sim, fault), f"fault-{fault.kind}")
    try:
        yield
    finally:
        await tasks.cancel_all(_CANCEL_TIMEOUT_S)
