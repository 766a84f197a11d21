"""One Starlette Route per path, whatever the route groups declare.

Each group lists a Route per handler, and several handlers may share a path
(GET and PATCH /posts/{id}, POST /chat/rooms and GET /chat/rooms). Starlette tries
routes in turn and answers a method that none of them serves with the 405 of the
first route whose path matched, whose `Allow` then names that route's methods
only: an OPTIONS /chat/rooms would be told `Allow: POST` though GET is served too.
Merging the routes of a path into one Route that dispatches on the method makes the
405 and its `Allow` name every method of the path (RFC 9110 §15.5.6).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

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


def _merge(group: list[Route]) -> Route:
    if len(group) == 1:
        return group[0]
    handlers: dict[str, Handler] = {}
    for route in group:
        for method in route.methods or ():
            if method == "HEAD":
                continue  # Route adds it again to the merged GET
            if method in handlers:
                raise ValueError(f"{method} {route.path} is served by two routes")
            handlers[method] = route.endpoint
    return Route(group[0].path, _dispatch(handlers), methods=list(handlers), name=group[0].name)
