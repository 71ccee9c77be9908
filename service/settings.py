"""The one typed settings object, read from ``CANDLECAST_*`` environment variables.

Built by entry points (``candlecast ...``), never at import time. Validation errors name the
environment variable so an operator knows what to fix.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["ConfigError", "Settings", "load_settings"]

_SYMBOL = re.compile(r"^[A-Z0-9]{2,40}$")
# Fixed-length intervals only: hole detection needs start_next == start_prev + interval.
_INTERVALS = {"1", "3", "5", "15", "30", "60", "120", "240", "360", "720"}
_COMPONENT = re.compile(r"^[a-z0-9_]{1,64}$")
_DEPTHS = {50, 200, 1000}  # 500 is offline since 2025-09-30; 1 is snapshot-only and too thin.
_API_KEY = re.compile(r"^[A-Za-z0-9._~+/=-]+$")  # RFC 6750 b64token
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$")
ENV_PREFIX = "CANDLECAST_"


class ConfigError(Exception):
    """Invalid configuration; the message names the offending variable(s)."""


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


AUDIT_MARGIN_BARS = 20  # audited signals kept beyond the horizon: the scorer's lookback (10) and room


def _audit_entries(hours: float, finest_min: int) -> int:
    return max(60, math.ceil(hours * 60 / finest_min))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    redis_url: str | None = Field(
        default=None, description="Redis URL; unset means the in-memory store (single process only)."
    )
    redis_prefix: str = Field(default="cc", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    redis_cluster: bool = Field(
        default=False, description="CANDLECAST_REDIS_URL names a node of a Redis Cluster (the others are discovered)."
    )
    symbols: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["BTCUSDT", "ETHUSDT"])
    intervals: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["1", "5", "15", "60"])
    bybit_ws_url: str = "wss://stream.bybit.com/v5/public/linear"
    bybit_rest_url: str = "https://api.bybit.com"
    book_depth: int = 50
    window_bars: int = Field(default=256, ge=32, le=5000)
    depth_sample_ms: int = Field(default=1000, ge=100, le=60_000)
    depth_window: int = Field(default=300, ge=10, le=10_000)
    symbols_per_connection: int = Field(default=10, ge=1, le=200)
    rest_requests_per_second: float = Field(default=20.0, gt=0, le=120)
    book_silence_s: float = Field(default=10.0, gt=0)
    kline_silence_s: float = Field(default=90.0, gt=0)
    log_level: str = "INFO"
    ingest_metrics_port: int = Field(
        default=9102, ge=0, le=65_535, description="Prometheus port of `candlecast ingest`; 0 = none"
    )
    metrics_host: str = Field(
        default="127.0.0.1", min_length=1, description="address the ingest, worker and API metrics ports bind"
    )

    # -- inference worker (`candlecast worker`) --
    artifacts_dir: Path = Field(default=Path("models/artifacts"), description="ONNX artifacts + manifest.json")
    manifest_poll_s: float = Field(default=5.0, gt=0, le=3600, description="how often a changed manifest is looked for")
    prefer_gpu: bool = True
    inference_threads: int = Field(default=1, ge=1, le=64, description="ONNX Runtime intra-op threads per session")
    inference_concurrency: int = Field(default=2, ge=1, le=64, description="session runs in flight at once")
    latency_budget_ms: int = Field(default=250, ge=10, le=60_000, description="render + inference budget per signal")
    coarse_wait_ms: int = Field(default=2000, ge=0, le=10_000, description="wait for a coarser bar due at a close")
    signal_horizon_min: int = Field(
        default=1, ge=1, le=1440, description="the signal's question: log return over the next H minutes > 0"
    )
    fee_bp: float = Field(default=5.5, ge=0, le=100, description="fee per side in bp, for cost_bp and tradeable")
    signal_quorum: float = Field(
        default=0.5, ge=0, le=1, description="share of the components answering H that must vote for a long/short call"
    )
    signal_long_above: float = Field(
        default=0.05, ge=0, le=1, description="score threshold for long (manifests without a fitted ensemble)"
    )
    signal_short_below: float = Field(
        default=0.05, ge=0, le=1, description="score threshold for short, as -x (manifests without a fitted ensemble)"
    )
    component_weights: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict, description="manifest weight overrides, e.g. tcn_1m=0.5,efficientnet_60m=0"
    )
    model_opt_in: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="components the manifest ships off by default to enable, e.g. book_cnn_1m"
    )
    worker_group: str = Field(default="candlecast-workers", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    worker_consumer: str = Field(
        default="", pattern=r"^[A-Za-z0-9_.:-]{0,64}$", description="name in the consumer group; default host-pid"
    )
    worker_max_in_flight: int = Field(default=32, ge=1, le=1024)
    worker_reuse_decoded: bool = Field(
        default=True,
        description="keep each window's decoded bars between reads (about 0.9 MB a symbol at 256 bars a window)",
    )
    claim_idle_ms: int = Field(default=30_000, ge=100, le=3_600_000, description="take over events idle this long")
    worker_sweep_s: float = Field(
        default=30.0, ge=0, le=3600, description="look this often for bars left without a signal (0: never)"
    )
    signal_audit_hours: float = Field(
        default=24.0, gt=0, le=720, description="the audit stream keeps this much of each symbol's finest bars"
    )
    worker_metrics_port: int = Field(default=9101, ge=0, le=65_535, description="Prometheus port; 0 = none")

    # -- signal API (`candlecast api`) --
    api_host: str = Field(default="127.0.0.1", min_length=1, description="address `candlecast api` binds")
    api_allow_anonymous: bool = Field(
        default=False, description="serve beyond loopback without API keys (otherwise the API refuses to start)"
    )
    api_port: int = Field(default=8000, ge=0, le=65_535, description="port `candlecast api` binds; 0 = any free port")
    api_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65_535,
        description="serve the API's /metrics on this port (on CANDLECAST_METRICS_HOST) instead of the API's "
        "own: metrics carry every symbol's latest signal, so keep them off a published port; 0 = on the API port",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="comma-separated API keys; when set, /signal* and /ws need `Authorization: Bearer <key>`",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated CORS origins, e.g. https://app.example; unset = CORS off"
    )
    api_signal_grace_s: float = Field(
        default=30.0, ge=0, le=86_400, description="a signal is served until 2 finest bars + this old (exchange clock)"
    )
    api_ws_max_symbols: int = Field(default=50, ge=1, le=10_000, description="symbols one WebSocket may subscribe")
    api_ws_queue: int = Field(
        default=256, ge=1, le=65_536, description="frames queued per WebSocket client; full = closed with 1013"
    )
    api_ws_max_frame_bytes: int = Field(
        default=16_384, ge=256, le=1_048_576, description="largest frame a WebSocket client may send"
    )
    api_ws_auth_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="time for the first-message key when no Authorization header came"
    )
    api_ws_max_msgs_per_s: float = Field(
        default=20.0, gt=0, le=100_000, description="messages a WebSocket client may send a second, on average"
    )
    api_ws_burst: int = Field(
        default=100, ge=1, le=1_000_000, description="messages at once before that average applies; past it: 1008"
    )
    api_resync_s: float = Field(
        default=5.0, gt=0, le=3600, description="re-read latest signals and no-signal reasons this often"
    )
    api_reconnect_max_s: float = Field(default=5.0, gt=0, le=300, description="cap of the pub/sub reconnect backoff")
    api_performance_refresh_s: float = Field(
        default=10.0, gt=0, le=3600, description="recompute the track-record summaries (gauges, WS frames) this often"
    )
    api_ready_max_lag_s: float = Field(
        default=300.0, ge=0, description="/readyz: newest bar close at most this far behind the wall clock; 0 = off"
    )
    api_feed_max_silence_s: float = Field(
        default=180.0,
        ge=0,
        description="a signal is stale once the exchange clock has not advanced for this many wall seconds; 0 = off",
    )
    api_ready_max_stall_s: float = Field(
        default=300.0, ge=0, description="/readyz: the exchange clock advanced within this many wall seconds; 0 = off"
    )

    @field_validator("symbols", mode="before")
    @classmethod
    def _parse_symbols(cls, value: object) -> object:
        value = _split(value)
        if isinstance(value, list):
            out = [str(v).strip().upper() for v in value]
            bad = [s for s in out if not _SYMBOL.fullmatch(s)]
            if bad:
                raise ValueError(f"invalid symbol(s) {bad}: expected letters and digits, e.g. BTCUSDT")
            if not out:
                raise ValueError("at least one symbol is required")
            return list(dict.fromkeys(out))
        return value

    @field_validator("intervals", mode="before")
    @classmethod
    def _parse_intervals(cls, value: object) -> object:
        value = _split(value)
        if isinstance(value, list):
            out = [str(v).strip() for v in value]
            bad = [i for i in out if i not in _INTERVALS]
            if bad or not out:
                raise ValueError(f"invalid interval(s) {bad}: choose minutes from {sorted(_INTERVALS, key=int)}")
            return sorted(dict.fromkeys(out), key=int)
        return value

    @field_validator("component_weights", mode="before")
    @classmethod
    def _parse_weights(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        out: dict[str, float] = {}
        for part in (p.strip() for p in value.split(",") if p.strip()):
            name, sep, weight = str(part).partition("=")
            try:
                w = float(weight)
            except ValueError:
                w = math.nan
            if not sep or not _COMPONENT.fullmatch(name.strip()) or not math.isfinite(w) or w < 0:
                raise ValueError(f"expected component=weight pairs with weights >= 0, e.g. tcn_1m=0.5, got {part!r}")
            out[name.strip()] = w
        return out

    @field_validator("model_opt_in", mode="before")
    @classmethod
    def _parse_opt_in(cls, value: object) -> object:
        value = _split(value)
        if isinstance(value, list):
            bad = [str(v) for v in value if not _COMPONENT.fullmatch(str(v))]
            if bad:
                raise ValueError(f"invalid component name(s) {bad}: expected names like book_cnn_1m")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        value = _split(value)
        if isinstance(value, list):
            for key in value:
                text = key.get_secret_value() if isinstance(key, SecretStr) else str(key)
                if len(text) < 16 or not _API_KEY.fullmatch(text):
                    # the message never echoes a key
                    raise ValueError("each key needs at least 16 characters from A-Z a-z 0-9 . _ ~ + / = -")
        return value

    @field_validator("api_ws_queue")
    @classmethod
    def _check_ws_queue(cls, value: int, info: ValidationInfo) -> int:
        symbols = info.data.get("api_ws_max_symbols")
        if isinstance(symbols, int) and value < 2 * symbols:
            # A bar close queues one frame per subscribed symbol at once: a smaller queue would
            # close healthy clients as slow consumers at every close.
            raise ValueError(f"must be at least twice CANDLECAST_API_WS_MAX_SYMBOLS ({symbols})")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: object) -> object:
        value = _split(value)
        if isinstance(value, list):
            bad = [o for o in value if o != "*" and not _ORIGIN.fullmatch(str(o))]
            if bad:
                raise ValueError(f"invalid origin(s) {bad}: expected scheme://host[:port] (no path) or *")
            return [str(o).rstrip("/") for o in value]
        return value

    @field_validator("book_depth")
    @classmethod
    def _check_depth(cls, value: int) -> int:
        if value not in _DEPTHS:
            raise ValueError(f"book depth {value} is not offered on linear; choose one of {sorted(_DEPTHS)}")
        return value

    @field_validator("bybit_ws_url")
    @classmethod
    def _check_ws(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        return value

    @field_validator("bybit_rest_url")
    @classmethod
    def _check_rest(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _check_redis(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("signal_audit_hours")
    @classmethod
    def _check_audit(cls, value: float, info: ValidationInfo) -> float:
        # The scorer reads the newest H + inference.scorer.LOOKBACK (10) audited signals back: the audit
        # must hold them, with room for closes it has not reached yet.
        horizon, intervals = info.data.get("signal_horizon_min"), info.data.get("intervals")
        if isinstance(horizon, int) and intervals:
            finest = min(int(iv) for iv in intervals)
            needed = math.ceil(horizon / finest) + AUDIT_MARGIN_BARS
            if _audit_entries(value, finest) < needed:
                raise ValueError(
                    f"keeps {_audit_entries(value, finest)} signals, and a horizon of {horizon} min needs"
                    f" {needed} ({needed * finest / 60:.1f} h) to be scored: raise it"
                )
        return value

    @field_validator("redis_cluster")
    @classmethod
    def _check_cluster(cls, value: bool, info: ValidationInfo) -> bool:
        url = info.data.get("redis_url")
        if not isinstance(url, str):
            return value
        parts = urlsplit(url)
        if not value and "," in parts.netloc:
            raise ValueError("CANDLECAST_REDIS_URL names several nodes: that is a Redis Cluster, set this to true")
        if value:
            if parts.scheme == "unix":
                raise ValueError(
                    "a Redis Cluster is reached over TCP: CANDLECAST_REDIS_URL must be redis:// or rediss://"
                )
            # as redis-py reads it: ?db= wins over the path
            db = parse_qs(parts.query).get("db", [parts.path.lstrip("/")])[-1]
            if db not in ("", "0"):
                raise ValueError(f"a Redis Cluster has only database 0, and CANDLECAST_REDIS_URL names database {db}")
        return value

    @property
    def signal_audit_maxlen(self) -> int:
        """Audit entries per symbol: ``signal_audit_hours`` of the finest interval (24 h of 1m: 1,440)."""
        return _audit_entries(self.signal_audit_hours, min(int(iv) for iv in self.intervals))

    def require_redis(self, role: str, *, instead: str = "") -> str:
        """The Redis URL, for a part that cannot run without it; ``role`` says why it needs Redis
        (e.g. "the worker reads windows and events from Redis") and ``instead`` offers another way,
        both in the error when it is not set."""
        if self.redis_url is None:
            alternative = f", or {instead}" if instead else ""
            raise ConfigError(f"CANDLECAST_REDIS_URL: {role}; set it (e.g. redis://127.0.0.1:6379/0){alternative}")
        return self.redis_url


# Settings that were replaced: set, they would be ignored silently (extra="ignore"); refused instead.
REPLACED = {"SIGNAL_AUDIT_MAXLEN": "CANDLECAST_SIGNAL_AUDIT_HOURS (the audit is sized by time now)"}


def load_settings(**overrides: object) -> Settings:
    """Read the environment (plus explicit overrides) and validate, naming variables in errors."""
    stale = [
        f"{ENV_PREFIX}{old} is no longer read: use {new}"
        for old, new in REPLACED.items()
        if ENV_PREFIX + old in os.environ
    ]
    if stale:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(stale))
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ENV_PREFIX + str(err["loc"][0]).upper() if err["loc"] else ENV_PREFIX + "?"
            lines.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
