"""The one ASGI layer every request passes first (`Edge`): its request id, the guard
that refuses U+0000 in the path or query, the request metrics and the JSON access log.

One layer rather than three: each ASGI layer costs a call, a closure over `send` and a
frame on every await (py-spy under GET /feed put the three at several percent of the
server's time), and the metrics are counted in plain dicts and made into Prometheus
families only when scraped (`HttpMetrics`), not through prometheus_client's locked
children on every request.
"""

from __future__ import annotations

import os
import re
import time
from bisect import bisect_left
from collections.abc import Iterator
from itertools import count
from urllib.parse import parse_qsl

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from socialhub.api.http.errors import error_response
from socialhub.domain.text import NUL, NUL_PROBLEM
from socialhub.logs import AccessEntry, access_log, timestamp

# The latency histogram's upper bounds, in seconds (+Inf after them).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Their `le` labels, as prometheus_client writes them.
_LE = [*(repr(b) for b in BUCKETS), "+Inf"]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class HttpMetrics(Collector):
    """`socialhub_http_requests_total{method,route,status}` and the histogram
    `socialhub_http_request_seconds{method,route}`, labelled by the route's template
    (/posts/{id}), never the raw path: bounded cardinality. Counted on the event loop's
    thread only, so plain dicts need no lock."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int], int] = {}
        # (method, route) -> a count per bucket (the last one +Inf), then the sum.
        self._latency: dict[tuple[str, str], list[float]] = {}

    def observe(self, method: str, route: str, status: int, elapsed: float) -> None:
        key = (method, route, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        counts = self._latency.get((method, route))
        if counts is None:
            counts = self._latency[(method, route)] = [0.0] * (len(BUCKETS) + 2)
        counts[bisect_left(BUCKETS, elapsed)] += 1
        counts[-1] += elapsed

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "socialhub_http_requests", "HTTP requests answered", labels=["method", "route", "status"]
        )
        for (method, route, status), n in list(self._requests.items()):
            requests.add_metric([method, route, str(status)], n)
        yield requests
        latency = HistogramMetricFamily(
            "socialhub_http_request_seconds", "Time to answer an HTTP request", labels=["method", "route"]
        )
        for (method, route), counts in list(self._latency.items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, in_bucket in zip(_LE, counts[:-1], strict=True):
                cumulative += in_bucket
                buckets.append((bound, cumulative))
            latency.add_metric([method, route], buckets, sum_value=counts[-1])
        yield latency


HTTP_METRICS = HttpMetrics()
REGISTRY.register(HTTP_METRICS)

# Request ids made here: this process's random prefix and a counter, 16 hex digits,
# unique without asking the OS for randomness on every request.
_ID_PREFIX = os.urandom(4).hex()
_ids = count(1)


class Edge:
    """Gives every request an id (X-Request-Id, kept from the client when sane); refuses
    a path or query parameter holding U+0000 before any route sees it: no resource is
    named that way (404), and a parameter so written is 422 for its name (PostgreSQL
    cannot store it; the body's fields are the codec's); counts the request; and logs one
    line when it ends: method, path (never the query: it may hold secrets), status,
    duration, client, user."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics = HTTP_METRICS) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                if _REQUEST_ID.match(incoming):
                    request_id = incoming
                break
        if not request_id:
            request_id = f"{_ID_PREFIX}{next(_ids) & 0xFFFFFFFF:08x}"
        # This request's own copy of the lifespan state (as uvicorn makes; not every ASGI
        # server does), so that what a request records never leaks into the next.
        state = dict(scope.get("state") or {})
        scope["state"] = state
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 0
        id_header = (b"x-request-id", request_id.encode())

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            # U+0000 reaches a query only percent-encoded (a raw NUL byte ends the request
            # line for the HTTP parser): the common request is let through by these tests.
            query: bytes = scope.get("query_string", b"")
            if kind == "http" and (NUL in scope["path"] or b"%00" in query or b"\x00" in query):
                refusal = _refusal(scope)
                if refusal is not None:
                    await refusal(scope, receive, send_wrapper)
                    return
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            method = scope.get("method", "WS")
            if kind == "http":
                route = scope.get("route")
                self.metrics.observe(method, getattr(route, "path", None) or "unmatched", status or 500, elapsed)
            if access_log.enabled:
                client = scope.get("client")
                shown = status or ("-" if kind == "websocket" else 500)
                user_id = state.get("user_id")
                path = scope["path"]
                # Positional, in AccessEntry's field order (cheaper than keywords, per request).
                access_log.write(
                    AccessEntry(
                        timestamp(time.time()),
                        "info",
                        "socialhub.access",
                        f"{method} {path} {shown}",
                        request_id,
                        method,
                        path,
                        status,
                        # Milliseconds to two decimals (round(x, 2) costs a decimal conversion).
                        int(elapsed * 100_000 + 0.5) / 100,
                        client[0] if client else None,
                        str(user_id) if user_id else None,
                    )
                )


def _refusal(scope: Scope) -> ASGIApp | None:
    """The answer to a path or query holding U+0000, or None for a request without."""
    if NUL in scope["path"]:
        return error_response("not_found", "no such resource")
    query: bytes = scope.get("query_string", b"")
    # U+0000 reaches a query only percent-encoded (a raw NUL byte ends the request line
    # for the HTTP parser); parsed as Starlette parses it, names and values alike.
    if b"%00" in query or b"\x00" in query:
        bad = {
            name.replace(NUL, "\\u0000"): NUL_PROBLEM
            for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
            if NUL in name or NUL in value
        }
        if bad:
            return error_response("validation_error", "a query parameter holds U+0000", fields=bad)
    return None
