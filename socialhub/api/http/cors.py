"""CORS: the web pages of the origins in `server.cors_origins` may call the API.

Starlette's CORSMiddleware does the work (preflight, the allow and expose headers, Vary);
this names what socialhub allows and answers a refused preflight in the API's error
format. The API authenticates with bearer tokens in `Authorization`, never with cookies,
so credentials mode is not allowed: a page sends its token as a header, which CORS lets
through once the preflight allowed `Authorization`. (The login throttle's device cookie
is therefore not sent from other origins; such logins count in the account's bucket.)

The socket is not CORS's business: browsers open WebSockets to any origin, and `/ws`
trusts only the token of its `authenticate` frame, never a cookie.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp

from socialhub.api.http.errors import error_response

# Every method a route serves (OPTIONS is the preflight itself).
ALLOW_METHODS = ("GET", "HEAD", "POST", "PATCH", "DELETE")
# Request headers a page may set beyond the CORS-safelisted ones: the token, JSON bodies,
# the idempotent post create, and the request id the access log keeps.
ALLOW_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "X-Request-Id")
# Response headers a page may read beyond the safelisted ones: the rate limits, when to
# retry, the auth scheme of a 401, media validators and ranges, the request id.
EXPOSE_HEADERS = (
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "Retry-After",
    "WWW-Authenticate",
    "ETag",
    "Content-Range",
    "Accept-Ranges",
    "X-Request-Id",
)
# How long a browser may keep a preflight's answer (Chromium caps it at 2 hours).
MAX_AGE_SECONDS = 3600


class Cors(CORSMiddleware):
    """CORSMiddleware for exactly `origins` (each scheme://host[:port], checked by config)."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        if not origins or "*" in origins:
            raise ValueError("Cors needs the listed origins (config checks them)")
        super().__init__(
            app,
            allow_origins=tuple(origins),
            allow_methods=ALLOW_METHODS,
            allow_headers=ALLOW_HEADERS,
            expose_headers=EXPOSE_HEADERS,
            allow_credentials=False,
            max_age=MAX_AGE_SECONDS,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        # Starlette says which parts it refused ("Disallowed CORS origin, headers"): the
        # same 400 in the API's error body, keeping its Vary and Allow-* headers.
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        headers = {k: v for k, v in response.headers.items() if k.lower().startswith(("vary", "access-control-"))}
        return error_response("bad_request", f"CORS preflight refused: {refused} not allowed", headers=headers)
