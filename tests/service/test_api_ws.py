"""The WebSocket subscription against a real uvicorn and a real Redis: last value on subscribe, every
new signal pushed with the audit stream's content, errors that keep the connection, the limits, the
slow-consumer policy (1013, others unaffected), a client that falls behind and catches up (every
signal, in order) and 200 subscribers at once — each fan-out test on the production server (signal
frames straight to the socket) and on plain uvicorn (every frame through ASGI)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import zlib
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from inference.signal import Signal
from inference.signal_store import MemorySignalStore
from service.ws_wire import WireProtocol
from tests.helpers import eventually
from tests.service.kit import (
    MINUTE,
    SYMBOLS,
    T0,
    Api,
    api_settings,
    make_signal,
    next_signal,
    read_until_closed,
    recv_json,
    redis_signals,
    send_json,
    serving,
    subscribe,
    unique_prefix,
    ws_connect,
)

pytestmark = pytest.mark.timeout(60)

# "wire": the production server (service.ws_wire), signal frames written straight to the socket;
# "asgi": uvicorn's own websockets-sansio, every frame through ASGI (a server without the wire path).
SERVERS = {"wire": None, "asgi": "websockets-sansio"}


@pytest.fixture(params=list(SERVERS))
def server(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def wire_frames(api: Api) -> float:
    return api.sample("candlecast_api_ws_wire_frames_total")


async def audit_entry(redis_url: str, key: str, start: int) -> bytes:
    """The JSON of the audit stream entry for bar ``start`` (stored compressed)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        for _id, fields in await client.xrevrange(key, count=100):
            if int(fields[b"start"]) == start:
                return zlib.decompress(fields[b"signal"])
    finally:
        await client.aclose()
    raise AssertionError(f"no audit entry for {start} in {key}")


async def test_subscribers_get_the_last_value_then_every_new_signal_as_audited(redis_url: str, server: str) -> None:
    prefix = unique_prefix()
    async with (
        redis_signals(redis_url, prefix) as store,
        serving(api_settings(redis_url, prefix), ws=SERVERS[server]) as api,
    ):
        async with ws_connect(api.ws_url) as early, ws_connect(api.ws_url) as other:
            # Subscribed before anything is published: ack, then "unavailable" for now.
            ack, snap = await subscribe(early, ["btcusdt"])
            assert ack == {"op": "subscribe", "ok": True, "symbols": ["BTCUSDT"], "subscribed": ["BTCUSDT"]}
            assert snap["op"] == "unavailable" and snap["reason"] == "warming_up" and snap["retry_after_s"] == 5
            await subscribe(other, ["ETHUSDT"])

            s1 = make_signal(T0)
            await store.publish(s1)
            pushed = await next_signal(early)
            assert pushed["symbol"] == "BTCUSDT"
            # The pushed content is the audit stream entry, exactly.
            assert (
                orjson.loads(await audit_entry(redis_url, store.keys.signal_audit("BTCUSDT"), T0)) == pushed["signal"]
            )
            assert Signal.from_json(orjson.dumps(pushed["signal"])) == s1

            # A late subscriber gets the last value at once.
            async with ws_connect(api.ws_url) as late:
                _ack, snapshot, eth_none = await subscribe(late, ["BTCUSDT", "ETHUSDT"])
                assert snapshot == pushed
                assert eth_none["op"] == "unavailable" and eth_none["symbol"] == "ETHUSDT"
                s2 = make_signal(T0 + MINUTE, direction="short")
                await store.publish(s2)
                assert Signal.from_json(orjson.dumps((await next_signal(late))["signal"])) == s2
            assert (await next_signal(early))["signal"]["bar"]["start"] == T0 + MINUTE

            # An older bar finishing late is audited, never pushed; a duplicate is not pushed twice.
            await store.publish(make_signal(T0 - MINUTE))
            await store.publish(s2)
            # Unsubscribed: no more BTC frames; ETH still flows to whoever asked for it.
            await send_json(early, {"op": "unsubscribe", "symbols": ["BTCUSDT", "SOLUSDT"], "id": 9})
            assert await recv_json(early) == {
                "op": "unsubscribe",
                "id": 9,
                "ok": True,
                "symbols": ["BTCUSDT"],
                "subscribed": [],
            }
            await store.publish(make_signal(T0 + 2 * MINUTE))
            await store.publish(make_signal(T0 + 2 * MINUTE, "ETHUSDT"))
            eth = await next_signal(other)
            assert eth["symbol"] == "ETHUSDT"
            await send_json(early, {"op": "ping", "id": "p"})
            pong = await recv_json(early)  # nothing was queued before it: no BTC frame after unsubscribing
            assert pong["op"] == "pong" and pong["id"] == "p" and isinstance(pong["time_ms"], int)
            await send_json(other, {"op": "ping"})
            assert (await recv_json(other))["op"] == "pong"  # other never saw the late or duplicate BTC bars
        await eventually(lambda: api.sample("candlecast_api_ws_clients") == 0, 5)
        # early: 2 pushes; late: the snapshot and a push; other: one ETH push.
        assert api.sample("candlecast_api_ws_messages_sent_total", kind="signal") == 5
        # The pushes went straight to the sockets where the server has the wire path; the snapshot,
        # a reply, always goes through ASGI.
        assert wire_frames(api) == (4 if server == "wire" else 0)


async def test_malformed_messages_get_error_frames_and_keep_the_connection(redis_url: str) -> None:
    settings = api_settings(redis_url, unique_prefix(), api_ws_max_symbols=2, api_ws_max_frame_bytes=1024)
    async with serving(settings) as api, ws_connect(api.ws_url) as ws:

        async def error_code(frame: str | bytes) -> str:
            await ws.send(frame)
            body = await recv_json(ws)
            assert body["op"] == "error" and set(body["error"]) == {"code", "message", "details"}, body
            code: str = body["error"]["code"]
            return code

        assert await error_code("not json") == "bad_json"
        assert await error_code("[1, 2]") == "bad_json"
        assert await error_code(b"\xff\xfe") == "bad_json"
        assert await error_code('{"symbols": ["BTCUSDT"]}') == "unknown_op"
        assert await error_code('{"op": "launch"}') == "unknown_op"
        assert await error_code('{"op": "subscribe"}') == "bad_message"
        assert await error_code('{"op": "subscribe", "symbols": []}') == "bad_message"
        assert await error_code('{"op": "subscribe", "symbols": "BTCUSDT"}') == "bad_message"

        # Unknown symbols are listed; the known ones of the same request are still subscribed.
        await send_json(ws, {"op": "subscribe", "symbols": ["BTCUSDT", "NOPEUSDT", 7], "id": 1})
        err = await recv_json(ws)
        assert err["op"] == "error" and err["id"] == 1
        assert err["error"]["code"] == "unknown_symbols"
        assert err["error"]["details"] == {"symbols": ["NOPEUSDT", "7"], "configured": list(SYMBOLS)}
        ack = await recv_json(ws)
        assert ack["op"] == "subscribe" and ack["symbols"] == ["BTCUSDT"]
        assert (await recv_json(ws))["op"] == "unavailable"

        # Over the per-connection limit: refused whole.
        await send_json(ws, {"op": "subscribe", "symbols": ["ETHUSDT", "SOLUSDT"]})
        err = await recv_json(ws)
        assert err["error"]["code"] == "too_many_symbols"
        assert err["error"]["details"]["limit"] == 2 and err["error"]["details"]["subscribed"] == 1
        ack, _snap = await subscribe(ws, ["ETHUSDT"])
        assert ack["subscribed"] == ["BTCUSDT", "ETHUSDT"]

        await send_json(ws, {"op": "ping"})
        assert (await recv_json(ws))["op"] == "pong"  # still connected after all that
        assert api.sample("candlecast_api_ws_error_frames_total", code="bad_json") == 3

        # A frame over the size limit is refused by the protocol: close 1009 (message too big).
        await ws.send('{"op": "ping", "pad": "' + "x" * 2048 + '"}')
        code, frames = await read_until_closed(ws)
        assert (code, frames) == (1009, [])


@contextlib.asynccontextmanager
async def slow_and_fast(api: Api) -> AsyncIterator[tuple[ClientConnection, ClientConnection]]:
    """Two BTCUSDT subscribers: one that reads only when the test reads (``max_queue=1``: the client
    library stops reading the socket as soon as a frame waits; a tiny receive buffer), and one that
    reads as usual."""
    port = int(api.base_url.rsplit(":", 1)[1])
    async with (
        ws_connect(api.ws_url, sock=slow_socket(port), max_queue=1) as slow,
        ws_connect(api.ws_url) as fast,
    ):
        await subscribe(slow, ["BTCUSDT"])
        await subscribe(fast, ["BTCUSDT"])
        yield slow, fast


def slow_socket(port: int) -> socket.socket:
    """A client socket with a tiny receive buffer, so a client that stops reading backs up fast."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_a_slow_consumer_is_closed_with_1013_and_nobody_else_waits(redis_url: str, server: str) -> None:
    prefix = unique_prefix()
    settings = api_settings(redis_url, prefix, api_ws_queue=16, api_ws_max_symbols=8)
    async with (
        redis_signals(redis_url, prefix) as store,
        serving(settings, ws=SERVERS[server]) as api,
        slow_and_fast(api) as (slow, fast),
    ):
        # Publish in step with the fast client (big frames, ~10 KB each) until the slow one,
        # which reads nothing, has filled the socket buffers and its queue of 16.
        published = 0
        while api.sample("candlecast_api_ws_slow_consumer_closes_total") == 0:
            assert published < 2000, "the slow consumer was never closed"
            start = T0 + published * MINUTE
            await store.publish(make_signal(start, components=60))
            got = await next_signal(fast)
            assert got["signal"]["bar"]["start"] == start
            published += 1
        # Everyone else keeps receiving.
        for k in range(published, published + 3):
            await store.publish(make_signal(T0 + k * MINUTE, components=60))
            assert (await next_signal(fast))["signal"]["bar"]["start"] == T0 + k * MINUTE

        # The slow client, once it reads again: what was already on the wire, then 1013.
        code, frames = await read_until_closed(slow)
        assert code == 1013
        assert sum(f["op"] == "signal" for f in frames) < published
        assert api.sample("candlecast_api_ws_slow_consumer_closes_total") == 1
        assert api.sample("candlecast_api_ws_messages_dropped_total") >= 17  # its queue of 16 + one
        assert api.sample("candlecast_api_ws_connections_total", reason="slow_consumer") == 1
        await send_json(fast, {"op": "ping"})
        assert (await recv_json(fast))["op"] == "pong"


async def test_a_client_that_falls_behind_then_reads_gets_every_signal_in_order(server: str) -> None:
    """A client stops reading until frames queue for it, then reads while publishes go on, one each
    turn of the event loop (the in-process store: each one reaches the hub): it gets every signal
    once and in order — none written straight to its socket ahead of those queued before it."""
    store = MemorySignalStore()
    settings = api_settings(None, api_ws_queue=2000)
    async with (
        serving(settings, signal_store=store, ws=SERVERS[server]) as api,
        slow_and_fast(api) as (behind, pace),
    ):
        starts: list[int] = []

        async def publish() -> None:
            starts.append(T0 + len(starts) * MINUTE)
            await store.publish(make_signal(starts[-1], components=60))

        def unsent() -> float:  # frames to the client behind not yet handed to its socket
            return 2 * len(starts) - api.sample("candlecast_api_ws_messages_sent_total", kind="signal")

        while unsent() < 5:  # in step with the other client, until frames queue for this one
            assert len(starts) < 2000, "frames never queued for a client that reads nothing"
            await publish()
            assert (await next_signal(pace))["signal"]["bar"]["start"] == starts[-1]
        total = len(starts) + 300

        async def read(ws: ClientConnection, n: int) -> list[int]:
            return [(await next_signal(ws, within=10))["signal"]["bar"]["start"] for _ in range(n)]

        reading, pacing = asyncio.create_task(read(behind, total)), asyncio.create_task(read(pace, 300))
        while len(starts) < total:
            await publish()
            await asyncio.sleep(0)
        got, paced = await asyncio.wait_for(asyncio.gather(reading, pacing), 30)
        assert got == starts and paced == starts[-300:]
        assert api.sample("candlecast_api_ws_slow_consumer_closes_total") == 0


async def test_a_ping_flood_is_closed_with_1008_and_the_other_clients_keep_receiving(redis_url: str) -> None:
    """One client sends pings as fast as it can and reads nothing: it is closed with 1008 after its
    burst (not kept until its queue fills, as a slow consumer would be), and a subscriber beside it
    gets the next publish."""
    prefix = unique_prefix()
    settings = api_settings(redis_url, prefix, api_ws_max_msgs_per_s=5.0, api_ws_burst=20)
    async with (
        redis_signals(redis_url, prefix) as store,
        serving(settings) as api,
        ws_connect(api.ws_url) as flood,
        ws_connect(api.ws_url) as other,
    ):
        await subscribe(other, ["BTCUSDT"])
        ping = orjson.dumps({"op": "ping"}).decode()
        with contextlib.suppress(ConnectionClosed):
            for _ in range(2_000):
                await flood.send(ping)
        code, frames = await read_until_closed(flood)
        assert code == 1008 and flood.close_reason == "too many messages: at most 5 a second"
        assert 0 < sum(f["op"] == "pong" for f in frames) <= 20  # the burst was answered, no more
        await eventually(lambda: api.sample("candlecast_api_ws_connections_total", reason="rate_limited") == 1)
        await store.publish(make_signal(T0))
        assert (await next_signal(other))["signal"]["bar"]["start"] == T0


class _BrokenWire(WireProtocol):
    """The production protocol with a wire path that fails (as on a transport past what it expects)."""

    def write_frame(self, frame: bytes) -> bool:
        raise RuntimeError("this transport takes no writes")


async def test_a_failing_wire_path_falls_back_to_asgi_and_the_feed_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemorySignalStore()
    async with (
        serving(api_settings(None), signal_store=store, ws=_BrokenWire) as api,
        ws_connect(api.ws_url) as one,
        ws_connect(api.ws_url) as two,
    ):
        await subscribe(one, ["BTCUSDT"])
        await subscribe(two, ["BTCUSDT"])
        for k in range(3):
            await store.publish(make_signal(T0 + k * MINUTE))
            for ws in (one, two):
                assert (await next_signal(ws))["signal"]["bar"]["start"] == T0 + k * MINUTE
        assert wire_frames(api) == 0
        assert api.sample("candlecast_api_ws_messages_sent_total", kind="signal") == 6
        failed = [r for r in caplog.records if "writing straight to the socket failed" in r.getMessage()]
        assert len(failed) == 2  # once per connection: it sends through ASGI from then on


async def test_two_hundred_subscribers_all_receive_a_publish(redis_url: str, server: str) -> None:
    prefix = unique_prefix()
    n = 200
    async with (
        redis_signals(redis_url, prefix) as store,
        serving(api_settings(redis_url, prefix), ws=SERVERS[server]) as api,
    ):
        clients: list[ClientConnection] = []
        try:
            for batch in range(0, n, 50):
                clients += await asyncio.gather(*(ws_connect(api.ws_url) for _ in range(batch, min(n, batch + 50))))
            await asyncio.gather(*(subscribe(ws, ["BTCUSDT"]) for ws in clients))
            assert api.sample("candlecast_api_ws_clients") == n
            s = make_signal(T0)
            await store.publish(s)
            frames = await asyncio.gather(*(next_signal(ws, within=15) for ws in clients))
            assert all(Signal.from_json(orjson.dumps(f["signal"])) == s for f in frames)
            assert api.sample("candlecast_api_ws_messages_sent_total", kind="signal") == n
            assert wire_frames(api) == (n if server == "wire" else 0)
            assert api.sample("candlecast_api_ws_slow_consumer_closes_total") == 0
        finally:
            await asyncio.gather(*(ws.close() for ws in clients))
        await eventually(lambda: api.sample("candlecast_api_ws_clients") == 0, 10)
