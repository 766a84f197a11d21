"""`GET /` (the web client) and `GET /static/{path}` (its files and the JavaScript SDK).

Files are served by Starlette's StaticFiles from the repository's `static/` directory (or,
installed from a wheel, the copy packaged as `socialhub/_static`): ETag and Last-Modified
from the file, 304 to a matching If-None-Match / If-Modified-Since, Range, and 404 for a
path that is not a file under the directory (`..` and symlinks out of it included).
Nothing is fingerprinted (no build step), so every answer says `Cache-Control: no-cache`:
a browser keeps the file and revalidates it by its ETag on each use, so an update is seen
at the next page load and an unchanged file costs a 304.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

from socialhub.api.http.routing import Endpoint, Operation, RouteGroup
from socialhub.errors import NotFound

CACHE_CONTROL = "no-cache"
"""Stored, but revalidated (by ETag) before each use: unversioned files change in place."""
INDEX = "index.html"


def static_dir() -> Path:
    """Where the static files are: inside the installed wheel, or the source checkout."""
    packaged = Path(str(resources.files("socialhub"))) / "_static"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "static"


class StaticRoutes(RouteGroup):
    """The web client at `/` and its files under `/static/`, public, no database needed."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or static_dir()
        # check_dir=False: a checkout without static/ still starts (every file is then 404).
        self.files = StaticFiles(directory=self.directory, check_dir=False)

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(self.index, Operation(
                method="GET", path="/", summary="The web client", tag="web", auth=False,
                media_type="text/html", static=True, errors=(404,),
                description="The page of the web client (`static/index.html`), revalidated by its ETag.",
            )),
            Endpoint(self.asset, Operation(
                method="GET", path="/static/{path}", summary="A file of the web client", tag="web", auth=False,
                media_type="*/*", static=True, errors=(404,),
                description="The web client's files and the JavaScript SDK (`/static/socialhub.js`), "
                "with ETag, Last-Modified, 304 and Range; `path` may hold slashes.",
            )),
        ]  # fmt: skip

    def routes(self) -> list[Route]:
        # `{path:path}`: a file in a subfolder (/static/vendor/x.js) is one parameter.
        return [
            Route("/", self.index, methods=["GET"]),
            Route("/static/{path:path}", self.asset, methods=["GET"]),
        ]

    async def index(self, request: Request) -> Response:
        return await self._file(INDEX, request)

    async def asset(self, request: Request) -> Response:
        return await self._file(request.path_params["path"], request)

    async def _file(self, path: str, request: Request) -> Response:
        # lookup_path refuses an absolute path, and one that resolves (`..`, symlinks) outside.
        try:
            response = await self.files.get_response(path, request.scope)
        except HTTPException as exc:
            # 404, or 401 for a file it may not read: for a visitor neither is there.
            raise NotFound("no such file") from exc
        except OSError as exc:  # a path the filesystem refuses (a symlink loop, say)
            raise NotFound("no such file") from exc
        response.headers["Cache-Control"] = CACHE_CONTROL
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response
