"""ONNX Runtime sessions built from a provider chain, GPU first, with a CPU fallback.

``onnxruntime-gpu`` lists CUDA (and TensorRT) as *available* even on a machine without a GPU; a
session asked for them silently binds the CPU instead. So the provider that counts is the one the
session actually bound (``session.get_providers()[0]``): it is what :attr:`ModelSession.provider`
reports, what gets logged and stamped on every vote. A session that fails to build or to run on a
GPU provider is rebuilt on the CPU and the call retried once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from inference.errors import InferenceError

__all__ = ["PROVIDER_CHAIN", "GpuNotBound", "ModelSession", "RuntimeFailure", "SessionFactory", "provider_chain"]

log = logging.getLogger(__name__)

PROVIDER_CHAIN = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
CPU = "CPUExecutionProvider"


class RuntimeFailure(InferenceError):
    """A model could not be loaded or run, on any provider."""


class GpuNotBound(RuntimeFailure):
    """A GPU-only session (a ladder's upper rung) found no GPU provider to bind."""


class SessionFactory(Protocol):
    """How a session is built: ``onnxruntime.InferenceSession``, or a stand-in with the same call
    (tests stand in a GPU this way). What it returns needs ``get_providers``, ``get_inputs``, ``run``."""

    def __call__(self, path: str, sess_options: Any, /, *, providers: list[str]) -> Any: ...


def provider_chain(prefer_gpu: bool = True, available: Sequence[str] | None = None) -> list[str]:
    """The chain filtered by what this ONNX Runtime offers; always ends with the CPU."""
    offered = set(ort.get_available_providers() if available is None else available)
    wanted = PROVIDER_CHAIN if prefer_gpu else (CPU,)
    chain = [p for p in wanted if p in offered and p != CPU]
    return [*chain, CPU]


def _options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # the provider fallback warnings are reported by us, once
    return opts


class ModelSession:
    """One ONNX model with the provider it really runs on."""

    def __init__(
        self,
        name: str,
        path: Path,
        *,
        prefer_gpu: bool = True,
        threads: int = 1,
        session_factory: SessionFactory = ort.InferenceSession,
        available_providers: Sequence[str] | None = None,
        gpu_only: bool = False,
        retry_after_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``available_providers``: what the runtime offers (default: ``onnxruntime.get_available_providers()``).

        ``gpu_only`` (a ladder's upper rung, too slow for the CPU): never on the CPU. Without a GPU
        provider bound it raises :class:`GpuNotBound`; a failed run raises :class:`RuntimeFailure` and
        leaves the session :attr:`broken` (every later run refuses at once: the rung below serves) for
        ``retry_after_s``; then it is tried again (a transient fault, an out-of-memory burst, passes)."""
        self.name = name
        self.path = path
        self._threads = threads
        self._factory = session_factory
        self.gpu_only = gpu_only
        self._broken: str | None = None
        self._broken_at = 0.0
        self._retry_after_s = retry_after_s
        self._clock = clock
        self.requested = provider_chain(prefer_gpu, available_providers)
        if gpu_only:
            self._open_gpu_only()
            return
        try:
            self._session = self._factory(str(path), _options(threads), providers=self.requested)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... and RuntimeError
            if self.requested == [CPU]:
                raise RuntimeFailure(f"{name}: cannot load {path.name}: {exc}") from exc
            log.warning("%s: session on %s failed (%s); rebuilding on CPU", name, self.requested[0], exc)
            self._session = self._cpu_session()
        self.input_name = self._session.get_inputs()[0].name
        log.info("%s: loaded %s on %s (asked for %s)", name, path.name, self.provider, ", ".join(self.requested))

    def _open_gpu_only(self) -> None:
        gpus = [p for p in self.requested if p != CPU]
        if not gpus:
            raise GpuNotBound(f"{self.name}: no GPU provider offered (asked for {', '.join(self.requested)})")
        try:
            self._session = self._factory(str(self.path), _options(self._threads), providers=gpus)
        except Exception as exc:
            raise GpuNotBound(f"{self.name}: no session on {', '.join(gpus)}: {exc}") from exc
        self.input_name = self._session.get_inputs()[0].name
        if self.provider == CPU:  # ORT binds the CPU, silently, when the GPU provider cannot start
            raise GpuNotBound(f"{self.name}: asked for {', '.join(gpus)}, bound {CPU}")
        log.info("%s: loaded %s on %s (GPU only)", self.name, self.path.name, self.provider)

    @property
    def broken(self) -> str | None:
        """Why a ``gpu_only`` session is down (None: usable). Down for ``retry_after_s`` after a failure,
        then usable again: the next signal tries it."""
        if self._broken is not None and self._clock() - self._broken_at >= self._retry_after_s:
            log.info("%s: retrying on %s after %s", self.name, self.provider, self._broken)
            self._broken = None
        return self._broken

    def mark_broken(self, why: str) -> None:
        """Take a ``gpu_only`` session down (a failed or late run) until ``retry_after_s`` has passed."""
        self._broken, self._broken_at = why, self._clock()

    def _cpu_session(self) -> Any:
        try:
            return self._factory(str(self.path), _options(self._threads), providers=[CPU])
        except Exception as exc:
            raise RuntimeFailure(f"{self.name}: cannot load {self.path.name} on CPU: {exc}") from exc

    @property
    def threads(self) -> int:
        """ONNX Runtime's intra-op threads for this session."""
        return self._threads

    @property
    def provider(self) -> str:
        """The provider actually bound, e.g. ``CPUExecutionProvider`` even when CUDA was asked for."""
        providers: list[str] = self._session.get_providers()
        return providers[0]

    def run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Logits for a batch. A GPU failure rebuilds the session on CPU and retries once (a
        ``gpu_only`` session is left :attr:`broken` instead)."""
        if self.broken is not None:
            raise RuntimeFailure(f"{self.name}: not run since its GPU failed: {self.broken}")
        try:
            out: npt.NDArray[np.float32] = self._session.run(None, {self.input_name: x})[0]
            return out
        except Exception as exc:
            if self.gpu_only:
                self.mark_broken(f"{self.provider}: {exc}")
                raise RuntimeFailure(f"{self.name}: inference on {self.provider} failed: {exc}") from exc
            if self.provider == CPU:
                raise RuntimeFailure(f"{self.name}: inference failed: {exc}") from exc
            log.error("%s: inference on %s failed (%s); continuing on CPU", self.name, self.provider, exc)
            self._session = self._cpu_session()
            try:
                retry: npt.NDArray[np.float32] = self._session.run(None, {self.input_name: x})[0]
            except Exception as exc2:
                raise RuntimeFailure(f"{self.name}: inference failed on CPU too: {exc2}") from exc2
            return retry

    def warm_up(self, example: npt.NDArray[np.float32], rounds: int = 3) -> float:
        """Run a few times so the first real signal does not pay for lazy initialisation; seconds per run."""
        started = time.perf_counter()
        for _ in range(rounds):
            self.run(example)
        return (time.perf_counter() - started) / rounds
