"""The /ws protocol without sockets: messages in, replies and actions out (service.ws_protocol)."""

from __future__ import annotations

from typing import Any

import orjson

from inference.signal import BarRef, NoSignal
from service.signal_cache import SignalCache
from service.ws_protocol import CLOSE_POLICY, Close, Reply, Subscribed, Unsubscribed, WsLimits, WsSession
from tests.service.kit import MINUTE, SYMBOLS, T0, make_signal


def _session(cache: SignalCache | None = None, *, keys: bool = False, **limits: Any) -> WsSession:
    cache = cache if cache is not None else SignalCache(SYMBOLS, "1", 30.0)
    return WsSession(
        WsLimits(**limits),
        cache.symbols,
        cache.normalise,
        cache.status,
        keys_enabled=keys,
        check_key=lambda key: key == "good",
        wall_ms=lambda: 1234,
    )


def _frames(actions: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(a.frame) for a in actions if isinstance(a, Reply)]


def test_ping_echoes_the_id_with_the_wall_time() -> None:
    assert _frames(_session().receive('{"op": "ping", "id": 7}')) == [{"op": "pong", "id": 7, "time_ms": 1234}]


def test_subscribe_acks_then_sends_each_symbols_current_answer() -> None:
    cache = SignalCache(SYMBOLS, "1", 30.0)
    cache.offer(make_signal(T0, "BTCUSDT"))
    session = _session(cache)
    actions = session.receive('{"op": "subscribe", "symbols": ["btcusdt", "ETHUSDT", "BTCUSDT"], "id": "a"}')
    assert actions[0] == Subscribed(("BTCUSDT", "ETHUSDT"))
    ack, signal, unavailable = _frames(actions)
    assert ack == {"op": "subscribe", "id": "a", "ok": True, "symbols": ["BTCUSDT", "ETHUSDT"],
                   "subscribed": ["BTCUSDT", "ETHUSDT"]}  # fmt: skip
    assert signal["op"] == "signal" and signal["signal"]["bar"]["start"] == T0
    assert isinstance(actions[2], Reply) and actions[2].signal  # counted as a signal push
    assert unavailable["op"] == "unavailable" and unavailable["reason"] == "warming_up"
    assert session.symbols == {"BTCUSDT", "ETHUSDT"}


def test_unknown_symbols_are_reported_and_the_known_ones_still_subscribed() -> None:
    actions = _session().receive('{"op": "subscribe", "symbols": ["FOOUSDT", "SOLUSDT"]}')
    error = actions[0]
    assert isinstance(error, Reply) and error.error == "unknown_symbols"
    assert orjson.loads(error.frame)["error"]["details"] == {"symbols": ["FOOUSDT"], "configured": list(SYMBOLS)}
    assert Subscribed(("SOLUSDT",)) in actions


def test_too_many_symbols_applies_nothing() -> None:
    session = _session(max_symbols=1)
    actions = session.receive('{"op": "subscribe", "symbols": ["BTCUSDT", "ETHUSDT"]}')
    assert [a.error for a in actions if isinstance(a, Reply)] == ["too_many_symbols"]
    assert session.symbols == set()


def test_unsubscribe_removes_only_what_was_subscribed() -> None:
    session = _session()
    session.receive('{"op": "subscribe", "symbols": ["BTCUSDT", "ETHUSDT"]}')
    actions = session.receive('{"op": "unsubscribe", "symbols": ["ETHUSDT", "SOLUSDT"], "id": 2}')
    assert actions[0] == Unsubscribed(("ETHUSDT",))
    assert _frames(actions) == [{"op": "unsubscribe", "id": 2, "ok": True, "symbols": ["ETHUSDT"],
                                 "subscribed": ["BTCUSDT"]}]  # fmt: skip


def test_bad_frames_get_error_frames_never_a_close() -> None:
    session = _session(max_frame_bytes=64)
    cases = {
        "not json": "bad_json",
        "[1, 2]": "bad_json",
        '{"op": "dance"}': "unknown_op",
        '{"op": "subscribe", "symbols": []}': "bad_message",
        '{"op": "ping", "pad": "' + "x" * 64 + '"}': "frame_too_large",
    }
    for data, code in cases.items():
        actions = session.receive(data)
        assert [a.error for a in actions] == [code], data
        assert not any(isinstance(a, Close) for a in actions)


def test_with_keys_the_first_message_must_authenticate() -> None:
    session = _session(keys=True)
    assert not session.authenticated
    assert session.authenticate('{"op": "ping"}') == [
        Close(CLOSE_POLICY, "API key required: send {op: auth, key} first", "unauthorized")
    ]
    assert session.authenticate('{"op": "auth", "key": "bad"}') == [
        Close(CLOSE_POLICY, "invalid API key", "unauthorized")
    ]
    assert _frames(session.authenticate('{"op": "auth", "key": "good", "id": 1}')) == [
        {"op": "auth", "id": 1, "ok": True}
    ]
    assert session.authenticated
    # later, a bad key is an error frame: the connection stays authenticated
    assert [a.error for a in session.receive('{"op": "auth", "key": "bad"}')] == ["invalid_key"]


def test_the_handshake_refuses_keys_in_the_url_and_bad_bearers() -> None:
    assert _session(keys=True).open("good", key_in_url=True)[0] == Close(
        CLOSE_POLICY, "API keys are not accepted in the URL", "unauthorized"
    )
    assert _session(keys=True).open("bad") == [Close(CLOSE_POLICY, "invalid API key", "unauthorized")]
    good = _session(keys=True)
    assert good.open("good") == [] and good.authenticated
    assert _session(keys=True).auth_timed_out() == [
        Close(CLOSE_POLICY, "no API key within the time allowed", "unauthorized")
    ]


def test_unavailable_frame_carries_the_no_signal_record() -> None:
    cache = SignalCache(SYMBOLS, "1", 30.0)
    bar = BarRef("1", T0, T0 + MINUTE)
    cache.set_no_signal("BTCUSDT", NoSignal("BTCUSDT", bar, "fallback_input:holed_window", "d", T0 + MINUTE, 0))
    frames = _frames(_session(cache).receive('{"op": "subscribe", "symbols": ["BTCUSDT"]}'))
    assert frames[1]["reason"] == "no_signal"
    assert frames[1]["no_signal"]["reason"] == "fallback_input:holed_window"


def test_a_message_flood_is_closed_with_1008_after_one_burst_and_a_steady_client_never_is() -> None:
    clock = [100.0]
    cache = SignalCache(SYMBOLS, "1", 30.0)
    session = WsSession(
        WsLimits(max_msgs_per_s=10.0, burst=5), cache.symbols, cache.normalise, cache.status, monotonic=lambda: clock[0]
    )
    for _ in range(5):  # the burst
        assert _frames(session.receive('{"op": "ping"}'))[0]["op"] == "pong"
    flood = session.receive('{"op": "ping"}')
    assert flood == [Close(CLOSE_POLICY, "too many messages: at most 10 a second", "rate_limited")]
    # tokens come back at the average rate: one every 0.1 s
    steady = WsSession(
        WsLimits(max_msgs_per_s=10.0, burst=5), cache.symbols, cache.normalise, cache.status, monotonic=lambda: clock[0]
    )
    for _ in range(1_000):
        clock[0] += 0.1
        assert _frames(steady.receive('{"op": "ping"}'))[0]["op"] == "pong"
    # the first message of a keyed connection counts too: a flood of bad auth frames is the same flood
    keyed = _session(keys=True, max_msgs_per_s=1.0, burst=1)
    assert isinstance(keyed.authenticate('{"op": "auth", "key": "good"}')[0], Reply)
    assert keyed.receive('{"op": "ping"}') == [
        Close(CLOSE_POLICY, "too many messages: at most 1 a second", "rate_limited")
    ]
