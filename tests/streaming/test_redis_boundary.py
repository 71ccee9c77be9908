"""The Redis boundary: replies as text, redis-py errors as the store's errors."""

from __future__ import annotations

import pytest
import redis.exceptions as rex

from streaming.errors import StoreError, StoreUnavailable
from streaming.redis_boundary import store_errors, text


def test_text_decodes_bytes_and_treats_none_as_empty() -> None:
    assert text(b"BTCUSDT") == "BTCUSDT"
    assert text("ETHUSDT") == "ETHUSDT"
    assert text(None) == ""


@pytest.mark.parametrize(
    "exc",
    [
        rex.ConnectionError("refused"),
        rex.TimeoutError("slow"),
        OSError("reset"),
        rex.ClusterDownError("CLUSTERDOWN The cluster is down"),
        rex.TryAgainError("TRYAGAIN"),
        rex.SlotNotCoveredError("slot 8473 is not covered"),
    ],
)
def test_unreachable_redis_is_store_unavailable(exc: Exception) -> None:
    with pytest.raises(StoreUnavailable, match="redis unavailable: ") as info, store_errors():
        raise exc
    assert info.value.__cause__ is exc


def test_other_redis_errors_are_store_errors_naming_the_operation() -> None:
    expected = r"redis error \(publish signal\): WRONGTYPE"
    with pytest.raises(StoreError, match=expected) as info, store_errors("publish signal"):
        raise rex.ResponseError("WRONGTYPE")
    assert not isinstance(info.value, StoreUnavailable)


def test_other_exceptions_pass_through() -> None:
    with pytest.raises(KeyError), store_errors():
        raise KeyError("x")


def test_a_cluster_client_error_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="redis error: no node"), store_errors():
        raise rex.RedisClusterException("no node")


def _raise_in(module: str, statement: str) -> None:
    """Run ``statement`` (with ``writer = None``) in a frame of the module named ``module``, as a
    library frame would."""
    code = compile(f"def run(writer):\n    {statement}\n", module, "exec")
    scope: dict[str, object] = {"__name__": module}
    exec(code, scope)
    scope["run"](None)  # type: ignore[operator]


@pytest.mark.parametrize("where", ["asyncio.selector_events", "redis.asyncio.connection"])
@pytest.mark.parametrize(
    ("statement", "error"),
    [("writer.writelines([b'x'])", AttributeError), ("writer()", TypeError)],
    ids=["AttributeError", "TypeError"],
)
def test_a_connection_the_peer_closed_is_unavailable_not_a_crash(
    where: str, statement: str, error: type[Exception]
) -> None:
    """redis-py 8.1 writing on a socket a dead node closed raises AttributeError/TypeError from the
    transport instead of ConnectionError (redis/redis-py#4287): at the boundary it is an outage."""
    with pytest.raises(StoreUnavailable, match="connection lost") as info, store_errors():
        _raise_in(where, statement)
    assert isinstance(info.value.__cause__, error)


def test_attribute_and_type_errors_of_other_shapes_or_of_our_own_code_are_bugs_and_pass_through() -> None:
    with pytest.raises(AttributeError), store_errors():
        _raise_in(__name__, "writer.writelines([b'x'])")  # the shape, but our own code
    with pytest.raises(TypeError, match="unexpected"), store_errors():  # in redis-py, but another error
        _raise_in("redis.asyncio.connection", "raise TypeError('unexpected')")
    with pytest.raises(TypeError), store_errors():
        len(None)  # type: ignore[arg-type]
