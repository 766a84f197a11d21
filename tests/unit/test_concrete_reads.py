"""ConcreteReads: GET and HEAD on a path without parameters go straight to the route's
handler, and answer exactly as through Starlette's router and exception layers."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from socialhub.api.http.errors import handle_http_exception, handle_socialhub_error, handle_unexpected
from socialhub.api.http.routing import ConcreteReads, ErrorHandler, one_route_per_path
from socialhub.errors import NotFound, SocialhubError

ANSWERS: dict[type[Exception], ErrorHandler] = {
    SocialhubError: handle_socialhub_error,
    HTTPException: handle_http_exception,
}


async def page(request: Request) -> Response:
    return JSONResponse({"route": request.scope["route"].path, "params": dict(request.path_params),
                         "q": request.query_params.get("q")})  # fmt: skip


async def missing(request: Request) -> Response:
    raise NotFound("no such thing")


async def teapot(request: Request) -> Response:
    raise HTTPException(418)


async def broken(request: Request) -> Response:
    raise RuntimeError("a bug")


async def created(request: Request) -> Response:
    return JSONResponse({"made": True}, status_code=201)


class Seen:
    """A middleware outside ConcreteReads: records every request it passes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            SEEN.append(scope["path"])
        await self.app(scope, receive, send)


SEEN: list[str] = []


def make_app(fast: bool) -> Starlette:
    routes = one_route_per_path([
        Route("/page", page, methods=["GET"]), Route("/page", created, methods=["POST"]),
        Route("/missing", missing, methods=["GET"]), Route("/teapot", teapot, methods=["GET"]),
        Route("/broken", broken, methods=["GET"]), Route("/items/{item_id}", page, methods=["GET"]),
    ])  # fmt: skip
    middleware = [Middleware(Seen)]
    if fast:
        middleware.append(Middleware(ConcreteReads, routes=routes, handlers=ANSWERS))
    return Starlette(routes=routes, middleware=middleware, exception_handlers={**ANSWERS, Exception: handle_unexpected})


async def answer(app: Starlette, method: str, path: str, root_path: str = "") -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, follow_redirects=False)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/page?q=1"), ("HEAD", "/page"), ("GET", "/missing"), ("GET", "/teapot"), ("GET", "/broken"),
     ("POST", "/page"), ("PUT", "/page"), ("GET", "/page/"), ("GET", "/items/7"), ("GET", "/nowhere")],
)  # fmt: skip
async def test_every_answer_is_the_one_starlette_gives(method: str, path: str) -> None:
    slow, fast = await answer(make_app(False), method, path), await answer(make_app(True), method, path)
    assert (fast.status_code, fast.content) == (slow.status_code, slow.content)
    for name in ("content-type", "allow", "www-authenticate", "location", "connection"):
        assert fast.headers.get(name) == slow.headers.get(name), name


async def test_only_gets_and_heads_of_paths_without_parameters_are_taken() -> None:
    app = make_app(True)
    # (A 418 is answered as the envelope's bad_request, 400, by handle_http_exception.)
    expected = {"/page": 200, "/missing": 404, "/teapot": 400, "/broken": 500}
    for path, status in expected.items():
        SEEN.clear()
        assert (await answer(app, "GET", path)).status_code == status
        assert SEEN == [path]  # the outer layers see it as every request
    body = (await answer(app, "GET", "/page?q=x")).json()
    assert body == {"route": "/page", "params": {}, "q": "x"}  # what the router would have put in the scope
    fast = next(m for m in _layers(app) if isinstance(m, ConcreteReads))
    assert sorted(fast.routes) == ["/broken", "/missing", "/page", "/teapot"]  # not /items/{item_id}


async def test_an_app_under_a_root_path_takes_starlettes_way() -> None:
    # Starlette matches the path less the root path; the dict holds paths without it.
    fast = await answer(make_app(True), "GET", "/api/page", root_path="/api")
    slow = await answer(make_app(False), "GET", "/api/page", root_path="/api")
    assert (fast.status_code, fast.content) == (slow.status_code, slow.content)


def _layers(app: Starlette) -> list[object]:
    out, layer = [], app.build_middleware_stack()
    while layer is not None:
        out.append(layer)
        layer = getattr(layer, "app", None)
    return out
