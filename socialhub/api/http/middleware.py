"""ASGI middleware: request ids and the JSON access log; the path and query guard."""

from __future__ import annotations

import re
import secrets
import time
from urllib.parse import parse_qsl

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from socialhub.api.http.errors import error_response
from socialhub.domain.text import NUL, NUL_PROBLEM
from socialhub.logs import AccessEntry, access_log, timestamp

# Labelled by the route's template (/posts/{id}), never the raw path: bounded cardinality.
REQUESTS = Counter("socialhub_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "socialhub_http_request_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class AccessLog:
    """Gives every request an id (X-Request-Id, kept from the client when sane) and logs
    one line when it ends: method, path (never the query: it may hold secrets), status,
    duration, client, user."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._metrics: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if _REQUEST_ID.match(incoming) else secrets.token_hex(8)
        # This request's own copy of the lifespan state (as uvicorn makes; not every ASGI
        # server does), so that what a request records never leaks into the next.
        state = dict(scope.get("state") or {})
        scope["state"] = state
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            method = scope.get("method", "WS")
            if scope["type"] == "http":
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                self._observe(method, template, status or 500, elapsed)
            if access_log.enabled:
                client = scope.get("client")
                shown = status or ("-" if scope["type"] == "websocket" else 500)
                user_id = state.get("user_id")
                access_log.write(
                    AccessEntry(
                        ts=timestamp(time.time()),
                        level="info",
                        logger="socialhub.access",
                        msg=f"{method} {scope['path']} {shown}",
                        request_id=request_id,
                        method=method,
                        path=scope["path"],
                        status=status,
                        duration_ms=round(elapsed * 1000, 2),
                        client=client[0] if client else None,
                        user_id=str(user_id) if user_id else None,
                    )
                )

    def _observe(self, method: str, template: str, status: int, elapsed: float) -> None:
        key = (method, template, status)
        children = self._metrics.get(key)
        if children is None:
            # prometheus_client's labels() looks the child up under a lock on every call;
            # the pair is kept here (routes x methods x statuses: a bounded set).
            children = (REQUESTS.labels(method, template, str(status)), LATENCY.labels(method, template))
            self._metrics[key] = children
        children[0].inc()
        children[1].observe(elapsed)


class StorableText:
    """Refuses a path or query parameter holding U+0000 before any route sees it: no
    resource is named that way (404), and a parameter so written is 422 for its name
    (PostgreSQL cannot store it; SPEC, Conventions). The body's fields are the codec's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if NUL in scope["path"]:
                await error_response("not_found", "no such resource")(scope, receive, send)
                return
            query: bytes = scope.get("query_string", b"")
            # U+0000 reaches a query only percent-encoded (a raw NUL byte ends the request
            # line for the HTTP parser); parsed as Starlette parses it, names and values alike.
            if b"%00" in query or b"\x00" in query:
                bad = {
                    name.replace(NUL, "\\u0000"): NUL_PROBLEM
                    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
                    if NUL in name or NUL in value
                }
                if bad:
                    response = error_response("validation_error", "a query parameter holds U+0000", fields=bad)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
