"""Error codes to HTTP statuses, in one table, and the SPEC's error body."""

from __future__ import annotations

import logging
import math

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from socialhub.api.http.codec import JSON_MEDIA_TYPE
from socialhub.errors import RateLimited, SocialhubError, Unavailable

logger = logging.getLogger(__name__)

STATUS: dict[str, int] = {
    "bad_request": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "too_large": 413,
    "unsupported_media_type": 415,
    "range_not_satisfiable": 416,
    "validation_error": 422,
    "rate_limited": 429,
    "internal": 500,
    "unavailable": 503,
}
# Starlette's own HTTPExceptions (unknown route, wrong method) carry a status; give them our codes.
CODE_OF_STATUS = {status: code for code, status in STATUS.items()}


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    code: str
    message: str
    fields: dict[str, str] | None = None


class ErrorEnvelope(msgspec.Struct, frozen=True):
    error: ErrorBody


_encoder = msgspec.json.Encoder()


def error_body(code: str, message: str, fields: dict[str, str] | None = None) -> bytes:
    """The SPEC's error body, `{"error": {"code", "message", "fields"?}}`."""
    return _encoder.encode(ErrorEnvelope(ErrorBody(code=code, message=message, fields=fields)))


def error_response(
    code: str, message: str, fields: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> Response:
    body = error_body(code, message, fields)
    return Response(body, status_code=STATUS.get(code, 500), media_type=JSON_MEDIA_TYPE, headers=headers)


async def handle_socialhub_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SocialhubError)
    headers = None
    if isinstance(exc, RateLimited | Unavailable):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    if exc.code == "unauthenticated":
        headers = {"WWW-Authenticate": 'Bearer realm="socialhub"'}
    return error_response(exc.code, exc.message, exc.fields, headers)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = CODE_OF_STATUS.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")
    message = {404: "no such route", 405: "method not allowed for this route"}.get(exc.status_code, code)
    return error_response(code, message, headers=dict(exc.headers) if exc.headers else None)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    # The trace goes to the log, never to the client.
    logger.exception("unhandled error in %s %s", request.method, request.url.path)
    # Starlette re-raises after this answer and uvicorn then closes the connection: say so,
    # so that a keep-alive client does not send its next request into a closed socket.
    return error_response("internal", "internal error", headers={"Connection": "close"})
