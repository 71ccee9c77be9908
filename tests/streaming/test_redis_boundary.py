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


@pytest.mark.parametrize("exc", [rex.ConnectionError("refused"), rex.TimeoutError("slow"), OSError("reset")])
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
