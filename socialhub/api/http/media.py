"""GET /media/{key}: stored files, cacheable forever, with single-range requests.

Keys are random and never reused, so a file under a key never changes: responses are
`immutable` for a year and the ETag (the content's SHA-256) is strong. Bodies are
streamed from the store in chunks, never read whole.

Range (RFC 9110 §14): one range, `bytes=a-b`, `bytes=a-` or `bytes=-n`, answers 206;
a range that starts past the end answers 416 with `Content-Range: bytes */size`.
Several ranges answer the whole file (200), as the RFC allows; so does a Range header
that is malformed or in another unit, or an If-Range that no longer matches.

Redirects (config `media.public_base_url`, or `media.serve = "presigned"`): the answer is
302 to where the file is served from (a CDN, the bucket, or a signed URL of the bucket),
which then does Range and ETag itself. A malformed key is 404 here, without a redirect.
A public base URL is cacheable for a day (it names the same bytes for as long as the
configuration stands); a signed URL privately, for half its lifetime at most.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from email.utils import formatdate, parsedate_to_datetime

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from socialhub.api.http.codec import JSON_MEDIA_TYPE
from socialhub.api.http.errors import ErrorBody, ErrorEnvelope
from socialhub.api.http.routing import Endpoint, Operation, RouteGroup
from socialhub.errors import NotFound
from socialhub.infra.media.base import MediaStore, is_media_key

# A year, the longest RFC 9111 suggests; `immutable` spares browsers revalidating on reload.
CACHE_CONTROL = "public, max-age=31536000, immutable"
# Not in the shared error table: only this endpoint answers it (RFC 9110 §15.5.17).
RANGE_NOT_SATISFIABLE = 416
# 19 digits reach past any file size (2^63); longer numbers are not a range we serve.
_RANGE = re.compile(r"^\s*(\d{0,19})\s*-\s*(\d{0,19})\s*$")

_encoder = msgspec.json.Encoder()


class Unsatisfiable(Exception):
    """The Range header is valid but no byte of it is in the file."""


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The [start, end) asked for by a Range header, or None to send the whole file.

    Raises Unsatisfiable when the one range asked for starts at or past `size`.
    """
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    m = _RANGE.match(spec)
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        return None  # an invalid range-spec: the header is ignored
    if start >= size:
        raise Unsatisfiable
    end = min(int(last) + 1, size) if last else size
    return start, end


def _tags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def none_match(header: str | None, etag: str) -> bool:
    """If-None-Match holds `etag` or `*` (weak comparison, RFC 9110 §13.1.2)."""
    if header is None:
        return False
    weak = etag.removeprefix("W/")
    return any(t == "*" or t.removeprefix("W/") == weak for t in _tags(header))


def if_range_holds(header: str | None, etag: str, last_modified: float) -> bool:
    """If-Range (RFC 9110 §13.1.5): absent, or the strong ETag, or the exact Last-Modified."""
    if header is None:
        return True
    header = header.strip()
    if header.startswith(('"', "W/")):
        return header == etag
    try:
        return int(parsedate_to_datetime(header).timestamp()) == int(last_modified)
    except (TypeError, ValueError):
        return False


# How long a client may keep a redirect (see the module docstring).
PUBLIC_REDIRECT_CACHE = "public, max-age=86400"
PRESIGNED_REDIRECT_CACHE = "private, max-age={seconds}"


class MediaRoutes(RouteGroup):
    def __init__(
        self,
        store: MediaStore,
        *,
        redirect: Callable[[str], Awaitable[str]] | None = None,
        redirect_cache: str = "private, max-age=60",
    ) -> None:
        self.store = store
        self.redirect = redirect
        self.redirect_cache = redirect_cache

    def endpoints(self) -> list[Endpoint]:
        # GET serves HEAD too (without the body).
        return [
            Endpoint(self.get, Operation(
                method="GET", path="/media/{key}", summary="A stored file", tag="media", auth=False,
                media_type="*/*", also=(206, 302, 304), errors=(416,),
                description="Served with its content type, a strong ETag (If-None-Match answers 304), "
                "`Range: bytes=...` (206, or 416 when unsatisfiable) and a one-year immutable cache lifetime; "
                "or, where the server is configured so, 302 to a CDN or a signed URL of the bucket.",
            )),
        ]  # fmt: skip

    async def get(self, request: Request) -> Response:
        key = request.path_params["key"]
        if self.redirect is not None:
            if not is_media_key(key):
                raise NotFound("no such media")
            location = await self.redirect(key)
            return Response(status_code=302, headers={"Location": location, "Cache-Control": self.redirect_cache})
        stored = await self.store.open(key)
        if stored is None:
            raise NotFound("no such media")
        etag = f'"{stored.etag}"'
        headers = {
            "ETag": etag,
            "Last-Modified": formatdate(stored.mtime, usegmt=True),
            "Cache-Control": CACHE_CONTROL,
            "Accept-Ranges": "bytes",
            "X-Content-Type-Options": "nosniff",
        }
        if none_match(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)

        byte_range = None
        raw_range = request.headers.get("range")
        if raw_range is not None and if_range_holds(request.headers.get("if-range"), etag, stored.mtime):
            try:
                byte_range = parse_range(raw_range, stored.size)
            except Unsatisfiable:
                return _not_satisfiable(stored.size, headers)

        status, (start, end) = (200, (0, stored.size)) if byte_range is None else (206, byte_range)
        headers["Content-Type"] = stored.content_type
        headers["Content-Length"] = str(end - start)
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{stored.size}"
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        return StreamingResponse(stored.read(start, end), status_code=status, headers=headers)


def _not_satisfiable(size: int, headers: dict[str, str]) -> Response:
    body = _encoder.encode(ErrorEnvelope(ErrorBody(code="range_not_satisfiable", message=f"the file has {size} bytes")))
    return Response(
        body,
        status_code=RANGE_NOT_SATISFIABLE,
        media_type=JSON_MEDIA_TYPE,
        headers={**headers, "Content-Range": f"bytes */{size}"},
    )
