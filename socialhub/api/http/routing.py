"""Route groups declare each endpoint once; one Starlette Route per path is made of them.

A group (AuthRoutes, PostRoutes, ...) lists its endpoints: each is a handler and its
`Operation` (method, path, the OpenAPI description and, for a public route, the rate
limit it is counted against per client IP). The group's Starlette routes, its part of
the OpenAPI document and the rate limiter's table by IP are all made from that list,
so a path is written once.

Each group lists a Route per handler, and several handlers may share a path
(GET and PATCH /posts/{id}, POST /chat/rooms and GET /chat/rooms). Starlette tries
routes in turn and answers a method that none of them serves with the 405 of the
first route whose path matched, whose `Allow` then names that route's methods
only: an OPTIONS /chat/rooms would be told `Allow: POST` though GET is served too.
Merging the routes of a path into one Route that dispatches on the method makes the
405 and its `Allow` name every method of the path (RFC 9110 §15.5.6).

A path without parameters also owns every method: PATCH /posts/getall is a 405 of
/posts/getall, not an edit of a post named "getall" through /posts/{id} (OpenAPI
matches concrete paths before templated ones, and so does this router).
"""

from __future__ import annotations

import inspect
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from socialhub.config import DEFAULT_RATES

Handler = Callable[[Request], Awaitable[Response]]
_PARAM = re.compile(r"\{[^}]*\}")


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    """One method on one path, as a Routes class declares it.

    `body` and `response` are the msgspec types decoded and encoded (None: no body); a
    body may be `Annotated[Struct, msgspec.Meta(extra_json_schema=...)]` for a rule
    between fields that a Struct cannot state. `errors` are the statuses this operation
    answers with the error envelope besides those every such operation can answer, which
    the document adds by itself (see `error_statuses`). `also` are other success statuses
    answering the same `response` type (e.g. 503 of /readyz); `media_type` is that of the
    response. `static`: the answer needs no database or broker, so never 503.
    `limit_by_ip` names the rate-limit rule of a public route (routing.ip_limits).
    """

    method: str
    path: str  # OpenAPI form: /users/{ref}
    summary: str
    tag: str
    body: Any = None
    response: type | None = None
    status: int = 200
    auth: bool = True
    errors: tuple[int, ...] = ()
    multipart: bool = False
    form: type | None = None  # the multipart fields' type when it differs from `body` (a form has no null)
    query: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    description: str = ""
    also: tuple[int, ...] = ()
    media_type: str = "application/json"
    static: bool = False
    limit_by_ip: str | None = None  # the [ratelimit] rule a public route is counted against per client IP


class Endpoint(msgspec.Struct, frozen=True):
    """One method on one path: the handler that serves it and its Operation."""

    handler: Handler
    operation: Operation


class RouteGroup(ABC):
    """The endpoints of one area; its routes and operations are made from them."""

    @abstractmethod
    def endpoints(self) -> list[Endpoint]:
        """Every endpoint of the group, in the order Starlette should try them (a fixed
        path before a templated one that would also match it)."""

    def routes(self) -> list[Route]:
        # A GET route serves HEAD too (Starlette adds it).
        return [Route(e.operation.path, e.handler, methods=[e.operation.method]) for e in self.endpoints()]

    def operations(self) -> list[Operation]:
        return [e.operation for e in self.endpoints()]


def ip_limits(operations: Iterable[Operation]) -> dict[tuple[str, str], str]:
    """(method, path without a trailing slash) -> the rate-limit rule counted per client IP,
    for the operations that name one (RateLimitMiddleware's table). ValueError for a rule
    that config.py does not know, which would otherwise limit nothing, silently."""
    out: dict[tuple[str, str], str] = {}
    for op in operations:
        if op.limit_by_ip is None:
            continue
        if op.limit_by_ip not in DEFAULT_RATES:
            raise ValueError(f"{op.method} {op.path}: no rate-limit rule {op.limit_by_ip!r}")
        key = (op.method, op.path.rstrip("/") or "/")
        if out.setdefault(key, op.limit_by_ip) != op.limit_by_ip:
            raise ValueError(f"{op.method} {op.path} is limited by two rules")
    return out


def _dispatch(handlers: dict[str, Handler]) -> Handler:
    async def by_method(request: Request) -> Response:
        # Route has already answered 405 to any other method; HEAD, which Route adds
        # to a GET, is answered by the GET handler (the server drops the body).
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    return by_method


def one_route_per_path(routes: Iterable[BaseRoute]) -> list[BaseRoute]:
    """`routes` with every plain Route of a path merged into one, at the place of the
    path's first Route; other routes (WebSocket, mounts) are kept as they are.
    ValueError when two routes of a path claim the same method."""
    out: list[BaseRoute] = []
    groups: dict[str, list[Route]] = {}
    shapes: dict[str, str] = {}
    for route in routes:
        if type(route) is not Route:
            out.append(route)
            continue
        # /a/{x} and /a/{y} match the same requests: one path, spelled two ways.
        shape = _PARAM.sub("{}", route.path)
        if shapes.setdefault(shape, route.path) != route.path:
            raise ValueError(f"{route.path} and {shapes[shape]} are one path: name the parameters alike")
        group = groups.get(route.path)
        if group is None:
            groups[route.path] = group = []
            out.append(route)  # a placeholder, replaced below
        group.append(route)
    return [_merge(groups[r.path]) if type(r) is Route else r for r in out]


class ConcreteRoute(Route):
    """A path without parameters: a request for it is this route's, whatever its method
    (Route.handle answers the methods it does not serve with 405)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        return (Match.FULL if match is Match.PARTIAL else match), child


def _merge(group: list[Route]) -> Route:
    first = group[0]
    concrete = not first.param_convertors
    if len(group) == 1 and not concrete:
        return first
    if len(group) == 1:
        endpoint, methods = first.endpoint, list(first.methods or ())
    else:
        handlers = _handlers(group)
        endpoint, methods = _dispatch(handlers), list(handlers)
    return (ConcreteRoute if concrete else Route)(first.path, endpoint, methods=methods, name=first.name)


def _handlers(group: list[Route]) -> dict[str, Handler]:
    handlers: dict[str, Handler] = {}
    for route in group:
        for method in route.methods or ():
            if method == "HEAD":
                continue  # Route adds it again to the merged GET
            if method in handlers:
                raise ValueError(f"{method} {route.path} is served by two routes")
            handlers[method] = route.endpoint
    return handlers


ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


class ConcreteReads:
    """GET and HEAD on a path without parameters (/feed, /users/me, /notify/notifications,
    /chat/rooms, ...): found by one dict lookup and handed to the route's handler, past
    Starlette's router and per-route layers (ExceptionMiddleware, the router's walk of
    its routes, Route.handle, request_response and its exception wrapper), which cost a
    bare Starlette app most of its time per request (`python -m bench asgi-cpu` times
    both: ~14 µs against ~1 µs for a plain ASGI callable answering the same bytes). The errors a
    handler raises get the answers Starlette would give them (`handlers`, by the
    exception's class and its bases); any other exception goes on to Starlette's
    ServerErrorMiddleware, the 500, as it would. Every other request (other methods,
    paths with parameters, a trailing slash to redirect, an app under a root path) takes
    Starlette's way unchanged. Placed innermost among the middlewares: the access log,
    CORS and rate limits see these requests as every other."""

    def __init__(
        self, app: ASGIApp, routes: Iterable[BaseRoute], handlers: Mapping[type[Exception], ErrorHandler]
    ) -> None:
        self.app = app
        self.handlers = dict(handlers)
        self.routes: dict[str, Route] = {
            route.path: route
            for route in routes
            if isinstance(route, Route)
            and not route.param_convertors
            and "GET" in (route.methods or ())
            and inspect.iscoroutinefunction(route.endpoint)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and (scope["method"] == "GET" or scope["method"] == "HEAD"):
            route = self.routes.get(scope["path"]) if not scope.get("root_path") else None
        if route is None:
            await self.app(scope, receive, send)
            return
        # What Starlette's router would have put in the scope (the route names the
        # request's metrics and log line).
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> ErrorHandler | None:
        for cls in type(exc).__mro__:
            handler = self.handlers.get(cls)
            if handler is not None:
                return handler
        return None
