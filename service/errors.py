"""API errors and the one place that maps every error to HTTP.

Every error the API answers has one shape, whatever raised it (our code, routing, validation, a
bug)::

    {"error": {"code": "unknown_symbol", "message": "FOOUSDT is not served here",
               "details": {"symbol": "FOOUSDT", "symbols": ["BTCUSDT", "ETHUSDT"]}}}

``code`` is stable and meant for programs; ``message`` is for people; ``details`` is an object
(empty when there is nothing to add). A 5xx body never carries an exception text or a trace: the
exception is logged by the server, the client gets ``internal_error``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from streaming.errors import StoreError

__all__ = [
    "ApiError",
    "ErrorBody",
    "ErrorDetail",
    "NotReady",
    "SignalUnavailable",
    "Unauthorized",
    "UnknownSymbol",
    "error_body",
    "error_response",
    "install_error_handlers",
]

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str = Field(description="stable, machine-readable", examples=["unknown_symbol"])
    message: str = Field(description="for people", examples=["FOOUSDT is not served here"])
    details: dict[str, Any] = Field(default_factory=dict, description="context; empty when there is nothing to add")


class ErrorBody(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(frozen=True)

    error: ErrorDetail


class ApiError(Exception):
    """Base of the errors the API raises on purpose; each knows its status and stable code."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self, message: str, *, details: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})


class UnknownSymbol(ApiError):
    status = 404
    code = "unknown_symbol"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class SignalUnavailable(ApiError):
    """No servable signal: none yet, the newest bars had none, or the latest is too old."""

    status = 503
    code = "signal_unavailable"

    def __init__(self, message: str, *, details: Mapping[str, Any], retry_after_s: int) -> None:
        super().__init__(message, details=details, headers={"Retry-After": str(retry_after_s)})


class NotReady(ApiError):
    status = 503
    code = "not_ready"


def error_body(code: str, message: str, details: Mapping[str, Any] | None = None) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "details": dict(details or {})}})


def error_response(
    status: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return Response(
        error_body(code, message, details), status_code=status, media_type="application/json", headers=headers
    )


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status >= 500:
        return error_response(status, "internal_error", "internal server error")
    code = _HTTP_CODES.get(status, "http_error")
    if status == 404:
        message = f"no route {request.url.path}"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = exc.detail or HTTPStatus(status).phrase
    return error_response(status, code, message, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # loc, msg and type only: the rejected input may be large or sensitive and is the client's own.
    errors = [
        {"loc": list(e.get("loc", ())), "message": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    return error_response(422, "validation_error", "the request is not valid", {"errors": errors})


async def _store_error(request: Request, exc: Exception) -> Response:
    log.warning("%s %s: store error: %s", request.method, request.url.path, exc)
    return error_response(503, "store_unavailable", "the signal store is unavailable", headers={"Retry-After": "5"})


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this response, so the server logs the traceback once.
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through one shape (see the module docstring)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(Exception, _internal_error)
