"""/healthz (the process answers), /readyz (its dependencies answer), /metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from socialhub.api.http.codec import json_response
from socialhub.api.http.routing import Endpoint, Operation, RouteGroup

Check = Callable[[], Awaitable[bool]]


class Status(msgspec.Struct, frozen=True, omit_defaults=True):
    status: str
    checks: dict[str, bool] | None = None


class HealthRoutes(RouteGroup):
    def __init__(self, checks: dict[str, Check], *, metrics: bool) -> None:
        self.checks = checks
        self.metrics = metrics

    def endpoints(self) -> list[Endpoint]:
        # GET serves HEAD too (probes may use either).
        out = [
            Endpoint(self.healthz, Operation(
                method="GET", path="/healthz", summary="Liveness: the process answers", tag="health",
                response=Status, auth=False, static=True,
            )),
            Endpoint(self.readyz, Operation(
                method="GET", path="/readyz", summary="Readiness: the database (and Redis) answer", tag="health",
                response=Status, auth=False, also=(503,), static=True,
                description="503 with each check's result when not ready: a dependency down, or `serving` "
                "false while the instance drains after SIGTERM.",
            )),
        ]  # fmt: skip
        if self.metrics:
            metrics = Operation(
                method="GET", path="/metrics", summary="Prometheus metrics", tag="health", auth=False,
                media_type="text/plain", static=True,
            )  # fmt: skip
            out.append(Endpoint(self.metrics_text, metrics))
        return out

    async def healthz(self, request: Request) -> Response:
        return json_response(Status(status="ok"))

    async def readyz(self, request: Request) -> Response:
        results = {name: await check() for name, check in self.checks.items()}
        ready = all(results.values())
        return json_response(Status(status="ready" if ready else "not_ready", checks=results), 200 if ready else 503)

    async def metrics_text(self, request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
