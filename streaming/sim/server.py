"""A Bybit v5 public *linear* exchange simulator for tests, benchmarks and the offline demo.

One port serves both the WebSocket stream (``ws://HOST:PORT/v5/public/linear``) and the REST kline
endpoint (``GET /v5/market/kline``, answered from websockets' ``process_request`` hook). The market
is either historical 1m bars replayed at ``speed`` (klines plus a synthetic order book, see
:mod:`streaming.sim.tape`) or a stream recorded by :mod:`streaming.recorder`.
The market sources live in :mod:`streaming.sim.markets`, the connection fan-out in
:mod:`streaming.sim.hub`; this module is the server and its configuration.

Wire behaviour follows bybit_protocol.md §2-§5:

* ``{"op":"subscribe","req_id":"7","args":[...]}`` is acked with
  ``{"success":true,"ret_msg":"","conn_id":"<uuid>","req_id":"7","op":"subscribe"}``; a bad topic
  (unknown kind, lowercase or unknown symbol, unsupported depth or interval) fails with
  ``error:handler not found,topic:<t>``, a repeat on one connection with
  ``error:already subscribed,topic:<t>`` (the first subscription keeps delivering), an unknown op
  with ``error:invalid op``. The valid topics of a request that also holds a bad one are still
  subscribed; ``ret_msg`` names the first bad topic.
* ``{"op":"ping"}`` is answered ``{"success":true,"ret_msg":"pong",...,"op":"ping"}``.
  Non-JSON text from a client is ignored.
* ``orderbook.{50,200,1000}.SYM``: a ``snapshot`` on subscribe carrying the stream's current ``u``,
  then ``delta`` frames with ``u`` + 1 each. One ``u`` sequence per (symbol, depth) shared by all
  connections; it advances while nobody listens, as on Bybit. ``orderbook.1.SYM`` is snapshot-only,
  as Bybit's level 1 has been since 2025-03 (pushed when the touch changes; no 3 s repeat).
* ``kline.{1,5,15,60}.SYM``: ``kline_updates_per_bar`` confirm=false pushes per minute, then the
  confirm=true bar at the boundary (closes first, then the new bar's first confirm=false). A
  confirmed bar carries the CSV strings exactly and equals the REST row for the same start.

* REST ``GET /v5/market/kline?category=linear&symbol=S&interval=I&start=&end=&limit=`` answers
  newest first with the still-open bar as ``list[0]`` (partial values, as on Bybit); ``start`` and
  ``end`` are inclusive; ``limit`` defaults to 200 and is capped at 1000. A bad symbol, interval,
  category or number is ``retCode 10001`` with HTTP 200; any other path is a 404.

Every ``ts`` is exchange time: the :class:`~streaming.sim.clock.SimClock`, which starts
``start_offset_bars`` after the data begins and runs at ``speed``; REST ``time`` is the same clock.

Pacing: one market task emits each event when the clock reaches it and sleeps until the next one.
When it falls more than max(one bar, half a wall second) behind (very high speeds), the partial
kline pushes and book moves of the bars already past are skipped; every confirm=true bar is still
pushed and book ``u`` stays contiguous, so work per bar stays small and no backlog builds.

Backpressure: each connection has a bounded send queue (``send_queue_frames``). A client that lets
it fill is disconnected with close code 1008 ("send queue full"), so a slow reader never slows the
market or other clients and memory stays bounded. Frames are serialized once per event and the same
bytes are queued to every subscriber.

Faults (methods of :class:`ExchangeSimulator`): ``drop_connections``, ``stall``, ``skip_u``,
``send_malformed``, ``fail_subscribe`` and ``fail_rest``. During a stall the server neither reads
nor writes; what it would have sent is lost, what clients sent is answered afterwards.

Recorded replay (``SimulatorConfig.recorded``): pushes are replayed verbatim, paced by their ``ts``.
An order book is kept per recorded book topic, so a client subscribing mid-replay gets a snapshot
with the current ``u``; REST serves the confirm=true bars replayed so far.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from streaming.sim.bars import symbol_from_path
from streaming.sim.clock import SimClock
from streaming.sim.hub import Conn, Hub
from streaming.sim.markets import KLINE_INTERVALS, BarMarket, Market, RecordedMarket, Row
from streaming.supervisor import TaskSupervisor

__all__ = ["ExchangeSimulator", "RestFault", "SimulatorConfig"]

log = logging.getLogger(__name__)

WS_PATH = "/v5/public/linear"
KLINE_PATH = "/v5/market/kline"
REST_DEFAULT_LIMIT = 200
REST_MAX_LIMIT = 1000

RestFault = Literal["retcode", "http403", "http500"]

_TASK_CANCEL_TIMEOUT_S = 5.0
_CLOSE_TIMEOUT_S = 2.0
_SUBSCRIBE_LOG_MAX = 10_000


@dataclass
class SimulatorConfig:
    """What the simulator replays and how.

    ``sources`` are 1m bar CSVs (the symbol comes from the file name); ``recorded`` replays a
    JSON-lines stream from :func:`streaming.recorder.record` instead. The clock starts
    ``start_offset_bars`` minutes after the latest first bar of all sources, so REST has history
    for every symbol; ``None`` chooses it from the data (:func:`streaming.sim.markets.auto_offset`:
    up to 20,000 bars of history, keeping a day to replay). ``speed`` is market ms per wall ms.
    """

    sources: list[Path] = field(default_factory=list)
    recorded: Path | None = None
    speed: float = 600.0
    start_offset_bars: int | None = 1500
    host: str = "127.0.0.1"
    port: int = 0
    book_depth: int = 50
    kline_updates_per_bar: int = 3
    book_deltas_per_bar: int = 10
    seed: int = 0
    end_behaviour: Literal["stop"] = "stop"
    send_queue_frames: int = 10_000  # per connection; full => the client is closed with 1008

    def validate(self) -> None:
        if self.recorded is None and not self.sources:
            raise ValueError("SimulatorConfig needs at least one bar file in sources, or recorded")
        if not (self.speed > 0 and math.isfinite(self.speed)):
            raise ValueError(f"speed must be a finite number > 0, got {self.speed}")
        if self.start_offset_bars is not None and self.start_offset_bars < 0:
            raise ValueError("start_offset_bars must be >= 0")
        if self.book_depth < 1 or self.kline_updates_per_bar < 1 or self.book_deltas_per_bar < 0:
            raise ValueError("book_depth and kline_updates_per_bar must be >= 1, book_deltas_per_bar >= 0")
        if self.send_queue_frames < 1:
            raise ValueError("send_queue_frames must be >= 1")
        if self.end_behaviour != "stop":
            raise ValueError(f"unsupported end_behaviour {self.end_behaviour!r}")


# --- the server -----------------------------------------------------------------------------------


def _json_response(obj: Any, status: HTTPStatus = HTTPStatus.OK) -> Response:
    body = orjson.dumps(obj)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", "application/json"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


class ExchangeSimulator:
    """A Bybit-compatible exchange on ``127.0.0.1``: WebSocket stream, REST klines and faults.

    Use as ``async with ExchangeSimulator(SimulatorConfig(sources=[path])) as sim:`` then connect to
    ``sim.ws_url`` / ``sim.rest_url``. The fault methods take effect immediately.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        config.validate()
        self.config = config
        self.symbols: list[str] = [] if config.recorded is not None else [symbol_from_path(p) for p in config.sources]
        self.finished = asyncio.Event()
        self.subscribe_log: list[tuple[int, str, list[str], bool]] = []
        self.connection_count = 0
        self.rest_requests = 0
        self.rest_log: deque[tuple[str, str]] = deque(maxlen=1000)  # (symbol, interval) of each kline request
        self.slow_disconnects = 0  # connections closed with 1008 because their send queue filled
        self._market: Market | None = None
        self._clock: SimClock | None = None
        self._server: Server | None = None
        self._port = 0
        self._hub = Hub()
        self._conns: set[Conn] = set()
        self._tasks = TaskSupervisor("simulator")
        self._stall_end: asyncio.TimerHandle | None = None
        self._fail_topics: set[str] = set()
        self._rest_faults: deque[RestFault] = deque()
        self._started = False
        self._closed = False

    # --- lifecycle

    async def start(self) -> None:
        """Load the market, bind (port 0 picks a free port) and start the market task."""
        if self._started:
            raise RuntimeError("simulator already started")
        self._started = True
        market: Market
        if self.config.recorded is not None:
            market = await asyncio.to_thread(RecordedMarket.load, self.config.recorded)
        else:
            market = await asyncio.to_thread(BarMarket.load, self.config)
        self._market = market
        self.symbols = list(market.symbols)
        self._clock = SimClock(market.start_ms, self.config.speed)
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            # Bybit expects application pings; server keepalive pings would only add noise.
            ping_interval=None,
            compression=None,
            close_timeout=_CLOSE_TIMEOUT_S,
        )
        self._port = next(iter(self._server.sockets)).getsockname()[1]
        self._tasks.spawn(self._run_market(market, self.clock), "sim-market")
        log.info("exchange simulator on %s serving %s", self.ws_url, ",".join(self.symbols))

    async def close(self) -> None:
        """Stop the market, close every connection with 1001 and unbind. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._tasks.cancel_all(_TASK_CANCEL_TIMEOUT_S)
        self._end_stall()
        if self._server is not None:
            self._server.close(close_connections=True)  # 1001 going away
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout=_TASK_CANCEL_TIMEOUT_S)
            except TimeoutError:
                log.warning("simulator server did not close within %.1fs", _TASK_CANCEL_TIMEOUT_S)

    async def __aenter__(self) -> ExchangeSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _run_market(self, market: Market, clock: SimClock) -> None:
        try:
            await market.run(clock, self._hub)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Logged here, once; `finished` stays unset so waiters time out rather than see an end.
            log.exception("simulator market task failed")
            return
        log.warning("simulator reached the end of its data at %d: no bar closes after this", clock.now_ms())
        self.finished.set()

    # --- public state

    @property
    def clock(self) -> SimClock:
        if self._clock is None:
            raise RuntimeError("simulator not started")
        return self._clock

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self._port}{WS_PATH}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.config.host}:{self._port}"

    def _require_market(self) -> Market:
        if self._market is None:
            raise RuntimeError("simulator not started")
        return self._market

    def bars(self, symbol: str, interval: str) -> list[tuple[int, str, str, str, str, str]]:
        """Closed bars ``(start, open, high, low, close, volume)`` as served, oldest first."""
        market = self._require_market()
        if symbol not in self.symbols or interval not in KLINE_INTERVALS:
            raise ValueError(f"unknown symbol/interval {symbol!r}/{interval!r}")
        return market.closed_bars(symbol, interval, self.clock.now_ms())

    # --- fault injection

    def drop_connections(self) -> None:
        """Abort every WebSocket connection without a close frame (the client sees 1006)."""
        for conn in list(self._conns):
            conn.ws.transport.abort()

    def stall(self, seconds: float) -> None:
        """Send nothing and read nothing on any connection for ``seconds``; sockets stay open.

        Frames produced meanwhile are lost; client messages wait in the socket and are answered
        after the stall. The market clock keeps running.
        """
        if seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        if self._hub.not_stalled.is_set():
            self._hub.not_stalled.clear()
            for conn in self._conns:
                conn.pause_reading()
        elif self._stall_end is not None and self._stall_end.when() >= deadline:
            return
        if self._stall_end is not None:
            self._stall_end.cancel()
        self._stall_end = loop.call_at(deadline, self._end_stall)

    def _end_stall(self) -> None:
        if self._stall_end is not None:
            self._stall_end.cancel()
            self._stall_end = None
        if not self._hub.not_stalled.is_set():
            self._hub.not_stalled.set()
            for conn in self._conns:
                conn.resume_reading()

    def skip_u(self, symbol: str) -> None:
        """Make the next orderbook delta of ``symbol`` jump ``u`` by 2 (a gap)."""
        if symbol not in self.symbols:
            raise ValueError(f"unknown symbol {symbol!r}")
        self._hub.skip_u.add(symbol)

    def send_malformed(self, payload: str = '{"topic":"kline.1.BTCUSDT","data":') -> None:
        """Push ``payload`` as a raw text frame to every connection."""
        frame = payload.encode()
        for conn in self._conns:
            self._hub.send(conn, frame)

    def fail_subscribe(self, topic: str) -> None:
        """Every later subscribe of ``topic`` fails with ``error:handler not found,topic:<topic>``."""
        self._fail_topics.add(topic)

    def fail_rest(self, kind: RestFault, count: int = 1) -> None:
        """The next ``count`` REST kline requests fail: retCode 10016, HTTP 403 or HTTP 500."""
        if kind not in ("retcode", "http403", "http500"):
            raise ValueError(f"unknown REST fault {kind!r}")
        self._rest_faults.extend([kind] * count)

    # --- WebSocket

    async def _handle(self, ws: ServerConnection) -> None:
        self.connection_count += 1
        conn = Conn(self.connection_count, ws, self.config.send_queue_frames)
        self._conns.add(conn)
        if not self._hub.not_stalled.is_set():
            conn.pause_reading()
        tasks = TaskSupervisor(f"simulator connection {conn.number}")
        reader = tasks.spawn(self._read_loop(conn), f"sim-conn{conn.number}-reader")
        writer = tasks.spawn(self._write_loop(conn), f"sim-conn{conn.number}-writer")
        try:
            await asyncio.wait((reader, writer, conn.slow), return_when=asyncio.FIRST_COMPLETED)
            if conn.slow.done():
                self.slow_disconnects += 1
                log.warning("closing slow connection %d (%s): send queue full", conn.number, conn.conn_id)
                writer.cancel()
                await ws.close(CloseCode.POLICY_VIOLATION, "send queue full")
        finally:
            for topic in list(conn.topics):
                self._hub.unsubscribe(conn, topic)
            self._conns.discard(conn)
            if not conn.slow.done():
                conn.slow.cancel()
            await tasks.cancel_all(_TASK_CANCEL_TIMEOUT_S)

    async def _read_loop(self, conn: Conn) -> None:
        try:
            async for raw in conn.ws:
                self._on_message(conn, raw)
        except ConnectionClosed:
            pass

    async def _write_loop(self, conn: Conn) -> None:
        try:
            while True:
                frame = await conn.queue.get()
                if not self._hub.not_stalled.is_set():
                    await self._hub.not_stalled.wait()
                await conn.ws.send(frame, text=True)
        except ConnectionClosed:
            pass

    def _reply(self, conn: Conn, op: str, req_id: str, success: bool, ret_msg: str) -> None:
        msg = {"success": success, "ret_msg": ret_msg, "conn_id": conn.conn_id, "req_id": req_id, "op": op}
        self._hub.send(conn, orjson.dumps(msg))

    def _on_message(self, conn: Conn, raw: str | bytes) -> None:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.debug("connection %d sent non-JSON; ignored", conn.number)
            return
        if not isinstance(msg, dict):
            return
        op = msg.get("op")
        req = msg.get("req_id", "")
        req_id = req if isinstance(req, str) else orjson.dumps(req).decode()
        if op == "ping":
            self._reply(conn, "ping", req_id, True, "pong")
        elif op == "subscribe" or op == "unsubscribe":
            self._on_subscription(conn, op, req_id, msg.get("args"))
        else:
            self._reply(conn, op if isinstance(op, str) else "", req_id, False, "error:invalid op")

    def _log_subscription(self, number: int, op: str, topics: list[str], success: bool) -> None:
        self.subscribe_log.append((number, op, topics, success))
        if len(self.subscribe_log) > _SUBSCRIBE_LOG_MAX:
            # Introspection must not grow without bound in a long demo run: keep the recent half.
            del self.subscribe_log[: _SUBSCRIBE_LOG_MAX // 2]

    def _on_subscription(self, conn: Conn, op: str, req_id: str, args: object) -> None:
        market = self._require_market()
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            self._log_subscription(conn.number, op, [], False)
            self._reply(conn, op, req_id, False, "error:args must be an array of topics")
            return
        topics: list[str] = list(args)
        error = ""
        snapshots: list[bytes] = []
        for topic in topics:
            problem = ""
            if topic in self._fail_topics or not market.topic_valid(topic):
                problem = f"error:handler not found,topic:{topic}"
            elif op == "subscribe" and topic in conn.topics:
                problem = f"error:already subscribed,topic:{topic}"
            elif op == "subscribe":
                self._hub.subscribe(conn, topic)
                snap = market.snapshot_frame(topic)
                if snap is not None:
                    snapshots.append(snap)
            else:
                self._hub.unsubscribe(conn, topic)
            error = error or problem
        self._log_subscription(conn.number, op, topics, not error)
        self._reply(conn, op, req_id, not error, error)
        # After the ack, before any later delta: nothing awaits between here and the market task.
        for snap in snapshots:
            self._hub.send(conn, snap)

    # --- REST

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == WS_PATH:
            return None  # carry on with the WebSocket handshake
        if url.path != KLINE_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        self.rest_requests += 1
        query = parse_qs(url.query)
        self.rest_log.append((query.get("symbol", [""])[-1], query.get("interval", [""])[-1]))
        if self._rest_faults:
            fault = self._rest_faults.popleft()
            if fault == "http403":
                return connection.respond(HTTPStatus.FORBIDDEN, "access too frequent")
            if fault == "http500":
                return connection.respond(HTTPStatus.INTERNAL_SERVER_ERROR, "Internal Server Error")
            return _json_response(self._envelope(10016, "Service error"))
        return _json_response(self._kline(query))

    def _envelope(
        self, code: int, msg: str, result: dict[str, Any] | None = None, now_ms: int | None = None
    ) -> dict[str, Any]:
        return {
            "retCode": code,
            "retMsg": msg,
            "result": result if result is not None else {},
            "retExtInfo": {},
            # The rows were chosen at this very time: clients drop rows with start + interval > time.
            "time": self.clock.now_ms() if now_ms is None else now_ms,
        }

    def _kline(self, params: dict[str, list[str]]) -> dict[str, Any]:
        market = self._require_market()

        def one(name: str) -> str | None:
            values = params.get(name)
            return values[-1] if values else None

        if (one("category") or "linear") != "linear":
            return self._envelope(10001, "params error: the simulator serves category=linear only")
        symbol = one("symbol")
        if symbol is None or symbol not in self.symbols:
            return self._envelope(10001, "params error: symbol invalid")
        interval = one("interval")
        if interval is None or interval not in KLINE_INTERVALS:
            return self._envelope(10001, "Invalid period!")
        try:
            start = int(s) if (s := one("start")) is not None else None
            end = int(e) if (e := one("end")) is not None else None
            limit = int(one("limit") or REST_DEFAULT_LIMIT)
        except ValueError:
            return self._envelope(10001, "params error: start, end and limit must be integers")
        if limit < 1:
            return self._envelope(10001, "params error: limit must be in [1, 1000]")
        limit = min(limit, REST_MAX_LIMIT)
        now = self.clock.now_ms()
        rows: list[Row] = []
        # Like Bybit, the still-open bar comes first (newest first); clients must drop it.
        open_row = market.open_row(symbol, interval, now)
        if open_row is not None:
            ostart = int(open_row[0])
            if (start is None or ostart >= start) and (end is None or ostart <= end):
                rows.append(open_row)
        rows += market.closed_rows(symbol, interval, now, start, end, limit - len(rows))
        return self._envelope(0, "OK", {"symbol": symbol, "category": "linear", "list": rows}, now)
