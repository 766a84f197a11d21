"""One Starlette Route per path, whatever the route groups declare.

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

import re
from collections.abc import Awaitable, Callable, Iterable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

Handler = Callable[[Request], Awaitable[Response]]
_PARAM = re.compile(r"\{[^}]*\}")


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
