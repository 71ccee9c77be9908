"""API keys (``CANDLECAST_API_KEYS``): the configured keys and the HTTP dependency that checks them.

When keys are set, ``/signal*`` and ``/ws`` need ``Authorization: Bearer <key>``; a key in the URL
(any of :data:`URL_KEY_PARAMS`, in any case) is refused even when valid, because URLs end up in logs. Keys are
compared in constant time. The WebSocket's first-message ``auth`` is :mod:`service.ws_protocol`'s.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Unauthorized
from service.state import State

__all__ = ["URL_KEY_PARAMS", "ApiKeys", "key_in_url", "require_key"]

URL_KEY_PARAMS = frozenset({"key", "api_key", "apikey", "api-key", "token", "access_token", "auth", "authorization"})


def key_in_url(params: Iterable[str]) -> bool:
    """Whether a query string names a key parameter, whatever its case (``?KEY=``, ``?apiKey=``)."""
    return any(p.lower() in URL_KEY_PARAMS for p in params)


class ApiKeys:
    """The configured keys; compared in constant time."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(k.encode() for k in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def valid(self, key: str) -> bool:
        candidate = key.encode()
        return any(hmac.compare_digest(candidate, k) for k in self._keys)


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="Only when CANDLECAST_API_KEYS is set: `Authorization: Bearer <key>`. Never in the URL.",
)


async def require_key(
    request: Request, state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    keys = state.keys
    if not keys.enabled:
        return
    if key_in_url(request.query_params.keys()):
        raise Unauthorized("API keys are not accepted in the URL: send Authorization: Bearer <key>")
    if credentials is None:
        raise Unauthorized("an API key is required: send Authorization: Bearer <key>")
    if not keys.valid(credentials.credentials):
        raise Unauthorized("invalid API key")
