"""Multipart uploads into a real media store, and GET /media/{key}, over in-process HTTP;
every test runs over the disk store and the S3 store (a real S3-protocol server, moto,
over HTTP: tests/s3_server.py).

The app is built here from the pieces (read_upload, the store, MediaRoutes and the
shared error handlers), so these tests need no database. "Nothing left" means nothing
at all in the store: no file under the disk store's root; no object and no multipart
upload in the bucket.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from email.utils import formatdate
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message

from socialhub.api.http.codec import json_response
from socialhub.api.http.errors import handle_http_exception, handle_socialhub_error, handle_unexpected
from socialhub.api.http.media import MediaRoutes
from socialhub.api.http.uploads import AVATAR_FIELDS, MEDIA_FIELDS, read_upload
from socialhub.config import MediaSettings
from socialhub.domain.filetypes import IMAGE_ONLY
from socialhub.errors import SocialhubError
from socialhub.infra.media.base import MediaStore, new_media_key
from socialhub.infra.media.disk import DiskMediaStore
from socialhub.infra.media.s3 import S3MediaStore
from tests import media_samples as s
from tests.s3_server import S3Server, drop_bucket, new_bucket

LIMITS = MediaSettings()
MiB = 1 << 20


def build_app(store: MediaStore) -> Starlette:
    async def upload(request: Request) -> Response:
        # What a posts endpoint does: read, commit each file under a new key, discard the rest.
        got = await read_upload(
            request, store, file_fields=MEDIA_FIELDS, max_files=LIMITS.max_files, max_file_bytes=LIMITS.max_file_bytes
        )
        try:
            files = []
            for f in got.files:
                key = new_media_key()
                await store.commit(f.staged, key, f.content_type)
                files.append(
                    {
                        "key": key,
                        "content_type": f.content_type,
                        "size": f.size,
                        "sha256": f.sha256,
                        "width": f.width,
                        "height": f.height,
                        "filename": f.filename,
                        "field": f.field,
                    }
                )
        finally:
            await got.discard()
        return json_response({"fields": got.fields, "files": files}, status_code=201)

    async def avatar(request: Request) -> Response:
        got = await read_upload(
            request,
            store,
            file_fields=AVATAR_FIELDS,
            max_files=1,
            max_file_bytes=LIMITS.max_file_bytes,
            kinds=IMAGE_ONLY,
        )
        await got.discard()
        return json_response({"fields": got.fields, "types": [f.content_type for f in got.files]})

    return Starlette(
        routes=[
            Route("/upload", upload, methods=["POST"]),
            Route("/avatar", avatar, methods=["PATCH"]),
            *MediaRoutes(store).routes(),
        ],
        exception_handlers={
            SocialhubError: handle_socialhub_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
    )


Leftovers = Callable[[], Awaitable[list[str]]]


def files_under(root: pathlib.Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file()] if root.exists() else []


class StoreEnv:
    def __init__(self, store: MediaStore, leftovers: Leftovers) -> None:
        self.store = store
        self.leftovers = leftovers


@pytest.fixture(params=["disk", "s3"])
async def env(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[StoreEnv]:
    if request.param == "disk":
        root = tmp_path / "media"

        async def on_disk() -> list[str]:
            return files_under(root)

        yield StoreEnv(DiskMediaStore(root), on_disk)
        return
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = await new_bucket(server)
    cfg = server.settings(bucket)
    s3 = S3MediaStore(
        bucket=bucket,
        endpoint=cfg["s3_endpoint"],
        region=cfg["s3_region"],
        access_key=cfg["s3_access_key"],
        secret_key=cfg["s3_secret_key"],
    )

    async def in_bucket() -> list[str]:
        async with server.client() as client:
            objects = await client.list_objects_v2(Bucket=bucket)
            uploads = await client.list_multipart_uploads(Bucket=bucket)
        return [o["Key"] for o in objects.get("Contents", [])] + [u["Key"] for u in uploads.get("Uploads", [])]

    yield StoreEnv(s3, in_bucket)
    await s3.close()
    await drop_bucket(server, bucket)


@pytest.fixture
def store(env: StoreEnv) -> MediaStore:
    return env.store


@pytest.fixture
def leftovers(env: StoreEnv) -> Leftovers:
    return env.leftovers


@pytest.fixture
def app(store: MediaStore) -> Starlette:
    return build_app(store)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def assert_nothing_left(store: MediaStore, leftovers: Leftovers) -> None:
    assert await leftovers() == []
    assert [k async for k in store.list_keys(0)] == []
    assert await store.sweep_staging(0) == 0


def error_code(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"}, body
    return str(body["error"]["code"])


BOUNDARY = "----socialhubtestboundary7MA4YWxk"


def part_head(name: str, filename: str | None = None, content_type: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return (head + "\r\n").encode()


def multipart(parts: Iterable[tuple[str, str | None, bytes]], *, close: bool = True) -> bytes:
    body = b"".join(part_head(name, filename) + data + b"\r\n" for name, filename, data in parts)
    return body + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


CTYPE = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


class CountingBody:
    """A request body streamed in chunks, counting how many the server pulled."""

    def __init__(self, head: bytes, chunk: bytes, count: int, tail: bytes) -> None:
        self.head, self.chunk, self.count, self.tail = head, chunk, count, tail
        self.pulled = 0

    @property
    def total(self) -> int:
        return self.count + 2

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.pulled += 1
        yield self.head
        for _ in range(self.count):
            self.pulled += 1
            yield self.chunk
        self.pulled += 1
        yield self.tail


# -- uploads ----------------------------------------------------------------------------


async def test_two_images_and_a_text_field(client: httpx.AsyncClient, store: MediaStore) -> None:
    png, jpeg = s.png(640, 480), s.jpeg(800, 600, orientation=6)
    r = await client.post(
        "/upload",
        data={"content": "hello, wörld"},
        files=[("media", ("a.png", png, "image/png")), ("media", ("b.jpg", jpeg, "image/jpeg"))],
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["fields"] == {"content": "hello, wörld"}
    first, second = body["files"]
    assert (first["content_type"], first["width"], first["height"], first["size"]) == ("image/png", 640, 480, len(png))
    assert first["sha256"] == hashlib.sha256(png).hexdigest() and first["filename"] == "a.png"
    assert (second["content_type"], second["width"], second["height"]) == ("image/jpeg", 600, 800)
    for f, data in ((first, png), (second, jpeg)):
        got = await client.get(f"/media/{f['key']}")
        assert got.status_code == 200 and got.content == data
        assert got.headers["content-type"] == f["content_type"]
    assert await store.sweep_staging(0) == 0


async def test_the_file_alias_and_the_declared_type_is_ignored(client: httpx.AsyncClient) -> None:
    mp4 = s.pad(s.ftyp(b"isom", b"isom", b"avc1"), 300_000)
    r = await client.post(
        "/upload",
        files=[("file", ("clip.bin", mp4, "application/octet-stream")), ("file", ("x.gif", s.gif(), "image/png"))],
    )
    assert r.status_code == 201, r.text
    files = r.json()["files"]
    assert [f["content_type"] for f in files] == ["video/mp4", "image/gif"]
    assert [f["field"] for f in files] == ["file", "file"]
    assert files[0]["width"] is None and files[0]["size"] == len(mp4)
    assert (files[1]["width"], files[1]["height"]) == (320, 200)
    got = await client.get(f"/media/{files[0]['key']}")
    assert got.content == mp4 and got.headers["content-type"] == "video/mp4"


async def test_text_only_and_empty_file_inputs(client: httpx.AsyncClient, leftovers: Leftovers) -> None:
    body = multipart([("content", None, b"just text"), ("media", "", b"")])
    r = await client.post("/upload", content=body, headers=CTYPE)
    assert r.status_code == 201, r.text
    assert r.json() == {"fields": {"content": "just text"}, "files": []}
    assert await leftovers() == []


async def test_eleven_files_is_413_and_nothing_is_left(
    client: httpx.AsyncClient, store: MediaStore, leftovers: Leftovers
) -> None:
    image = s.pad(s.png(), 100_000)
    r = await client.post("/upload", files=[("media", (f"{i}.png", image, "image/png")) for i in range(11)])
    assert r.status_code == 413 and error_code(r) == "too_large"
    assert "10 files" in r.json()["error"]["message"]
    await assert_nothing_left(store, leftovers)
    # Ten is fine.
    r = await client.post("/upload", files=[("media", (f"{i}.png", image, "image/png")) for i in range(10)])
    assert r.status_code == 201 and len(r.json()["files"]) == 10


async def test_a_file_one_byte_over_the_limit_is_413_and_nothing_is_left(
    client: httpx.AsyncClient, store: MediaStore, leftovers: Leftovers
) -> None:
    small = s.png(10, 10)
    # A video: an image's size changes when its metadata filter drops what follows its end.
    over = s.pad(s.ftyp(b"isom", b"isom", b"avc1"), LIMITS.max_file_bytes + 1)
    r = await client.post(
        "/upload", files=[("media", ("ok.png", small, "image/png")), ("media", ("big.mp4", over, "video/mp4"))]
    )
    assert r.status_code == 413 and error_code(r) == "too_large"
    await assert_nothing_left(store, leftovers)
    # Exactly at the limit is accepted.
    exact = over[:-1]
    r = await client.post("/upload", files=[("media", ("exact.mp4", exact, "video/mp4"))])
    assert r.status_code == 201, r.text
    assert r.json()["files"][0]["size"] == LIMITS.max_file_bytes


async def test_an_oversized_file_stops_the_read(
    client: httpx.AsyncClient, store: MediaStore, leftovers: Leftovers
) -> None:
    body = CountingBody(part_head("media", "huge.png") + s.png(), b"\x00" * MiB, 50, f"\r\n--{BOUNDARY}--\r\n".encode())
    r = await client.post("/upload", content=body, headers=CTYPE)
    assert r.status_code == 413
    assert body.pulled <= 12, body.pulled  # refused at 10 MiB, not after reading 50
    await assert_nothing_left(store, leftovers)


async def test_an_exe_named_png_is_415_at_once_and_nothing_is_left(
    client: httpx.AsyncClient, store: MediaStore, leftovers: Leftovers
) -> None:
    r = await client.post(
        "/upload",
        data={"content": "look"},
        files=[("media", ("ok.png", s.png(), "image/png")), ("media", ("cat.png", s.pad(s.EXE, 50_000), "image/png"))],
    )
    assert r.status_code == 415 and error_code(r) == "unsupported_media_type"
    assert "cat.png" in r.json()["error"]["message"]
    await assert_nothing_left(store, leftovers)
    # Refused on the first bytes: the server does not read on.
    body = CountingBody(
        part_head("media", "cat.png", "image/png") + s.pad(s.EXE, 8192),
        b"\x00" * 65536,
        80,
        f"\r\n--{BOUNDARY}--\r\n".encode(),
    )
    r = await client.post("/upload", content=body, headers=CTYPE)
    assert r.status_code == 415
    assert body.pulled <= 2, body.pulled
    await assert_nothing_left(store, leftovers)


@pytest.mark.parametrize(
    "bad", [s.SVG, s.HTML, s.PDF, s.ZIP, s.ELF, b""], ids=["svg", "html", "pdf", "zip", "elf", "empty"]
)
async def test_other_refused_types(client: httpx.AsyncClient, leftovers: Leftovers, bad: bytes) -> None:
    r = await client.post("/upload", files=[("media", ("f.png", bad, "image/png"))])
    assert r.status_code == 415 and error_code(r) == "unsupported_media_type"
    assert await leftovers() == []


async def test_truncated_multipart_is_400_and_nothing_is_left(
    client: httpx.AsyncClient, store: MediaStore, leftovers: Leftovers
) -> None:
    body = multipart(
        [("content", None, b"hi"), ("media", "a.png", s.pad(s.png(), 200_000)), ("media", "b.png", s.png())]
    )
    for cut in (len(body) - 10, len(body) - 300, 150_000):
        r = await client.post("/upload", content=body[:cut], headers=CTYPE)
        assert r.status_code == 400 and error_code(r) == "bad_request", cut
        await assert_nothing_left(store, leftovers)


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"garbage that is no multipart", CTYPE),
        (
            b"--" + BOUNDARY.encode() + b"\r\nX-No-Disposition: 1\r\n\r\ndata\r\n--" + BOUNDARY.encode() + b"--\r\n",
            CTYPE,
        ),
        (multipart([("content", None, b"\xff\xfe not utf-8")]), CTYPE),
        (multipart([("other", "x.png", s.png())]), CTYPE),
        (multipart([("content", None, b"x")]), {"Content-Type": "multipart/form-data"}),
    ],
    ids=["garbage", "no-disposition", "not-utf8", "file-in-a-text-field", "no-boundary"],
)
async def test_bad_multipart_is_400(
    client: httpx.AsyncClient, leftovers: Leftovers, body: bytes, headers: dict[str, str]
) -> None:
    r = await client.post("/upload", content=body, headers=headers)
    assert r.status_code == 400 and error_code(r) == "bad_request", r.text
    assert await leftovers() == []


async def test_not_multipart_is_415(client: httpx.AsyncClient) -> None:
    r = await client.post("/upload", json={"content": "x"})
    assert r.status_code == 415 and error_code(r) == "unsupported_media_type"


async def test_field_limits(client: httpx.AsyncClient, leftovers: Leftovers) -> None:
    r = await client.post("/upload", content=multipart([("content", None, b"x" * (64 * 1024 + 1))]), headers=CTYPE)
    assert r.status_code == 413
    r = await client.post("/upload", content=multipart([(f"f{i}", None, b"x") for i in range(33)]), headers=CTYPE)
    assert r.status_code == 413
    r = await client.post("/upload", content=multipart([("content", None, b"x" * 64 * 1024)]), headers=CTYPE)
    assert r.status_code == 201


async def test_avatar_takes_one_image_only(client: httpx.AsyncClient, leftovers: Leftovers) -> None:
    r = await client.patch("/avatar", data={"bio": "b"}, files={"avatar": ("me.webp", s.webp_lossy(), "image/webp")})
    assert r.status_code == 200 and r.json() == {"fields": {"bio": "b"}, "types": ["image/webp"]}
    r = await client.patch("/avatar", files={"avatar": ("me.mp3", s.mp3_frames(5), "image/png")})
    assert r.status_code == 415 and "image only" in r.json()["error"]["message"]
    r = await client.patch("/avatar", files=[("avatar", ("a.png", s.png(), "image/png"))] * 2)
    assert r.status_code == 413
    r = await client.patch("/avatar", files={"media": ("a.png", s.png(), "image/png")})
    assert r.status_code == 400
    assert await leftovers() == []


async def call_raw(app: Starlette, headers: dict[str, str], messages: list[Message]) -> int:
    """Drive the app with hand-made ASGI receive messages (e.g. a disconnect); the status sent."""
    sent: list[Message] = []
    queue = list(messages)

    async def receive() -> Message:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/upload",
        "raw_path": b"/upload",
        "root_path": "",
        "query_string": b"",
        "server": ("test", 80),
        "client": ("127.0.0.1", 5000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    await app(scope, receive, send)
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


async def test_client_gone_mid_upload_leaves_nothing(app: Starlette, store: MediaStore, leftovers: Leftovers) -> None:
    body = multipart([("media", "a.png", s.pad(s.png(), 300_000)), ("media", "b.png", s.pad(s.png(), 300_000))])
    messages: list[Message] = [
        {"type": "http.request", "body": body[:400_000], "more_body": True},
        {"type": "http.disconnect"},
    ]
    status = await call_raw(app, CTYPE, messages)
    assert status == 400
    await assert_nothing_left(store, leftovers)


async def test_declared_length_over_every_limit_is_refused_before_reading(app: Starlette, leftovers: Leftovers) -> None:
    status = await call_raw(app, {**CTYPE, "Content-Length": str(200 * MiB)}, [])
    assert status == 413
    assert await leftovers() == []


# -- GET /media/{key} -------------------------------------------------------------------


async def stored(store: MediaStore, data: bytes, content_type: str = "video/mp4") -> str:
    staged = await store.stage()
    await staged.write(data)
    key = new_media_key()
    await store.commit(staged, key, content_type)
    return key


async def test_get_headers_etag_and_304(client: httpx.AsyncClient, store: MediaStore) -> None:
    data = os.urandom(300_000)
    key = await stored(store, data)
    r = await client.get(f"/media/{key}")
    assert r.status_code == 200 and r.content == data
    h = r.headers
    assert h["content-type"] == "video/mp4" and h["content-length"] == str(len(data))
    assert h["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert h["cache-control"] == "public, max-age=31536000, immutable"
    assert h["accept-ranges"] == "bytes" and h["x-content-type-options"] == "nosniff"
    assert "last-modified" in h
    for inm in (h["etag"], f'"other", {h["etag"]}', "W/" + h["etag"], "*"):
        r304 = await client.get(f"/media/{key}", headers={"If-None-Match": inm})
        assert r304.status_code == 304 and r304.content == b"", inm
        assert r304.headers["etag"] == h["etag"]
    r = await client.get(f"/media/{key}", headers={"If-None-Match": '"something-else"'})
    assert r.status_code == 200 and r.content == data


async def test_head(client: httpx.AsyncClient, store: MediaStore) -> None:
    key = await stored(store, b"x" * 5000, "audio/mpeg")
    r = await client.head(f"/media/{key}")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-length"] == "5000" and r.headers["content-type"] == "audio/mpeg"
    r = await client.head(f"/media/{key}", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.headers["content-range"] == "bytes 10-19/5000"
    assert r.headers["content-length"] == "10" and r.content == b""


async def test_ranges(client: httpx.AsyncClient, store: MediaStore) -> None:
    data = os.urandom(100_000)
    key = await stored(store, data)
    cases = {
        "bytes=0-0": (0, 0),
        "bytes=0-99": (0, 99),
        "bytes=500-": (500, 99_999),
        "bytes=-1000": (99_000, 99_999),
        "bytes=-200000": (0, 99_999),
        "bytes=99999-200000": (99_999, 99_999),
        "BYTES = 10 - 20": (10, 20),
    }
    for header, (first, last) in cases.items():
        r = await client.get(f"/media/{key}", headers={"Range": header})
        assert r.status_code == 206, header
        assert r.content == data[first : last + 1], header
        assert r.headers["content-range"] == f"bytes {first}-{last}/100000", header
        assert r.headers["content-length"] == str(last - first + 1)
    # Several ranges, another unit, nonsense or an inverted range: the whole file.
    for header in ("bytes=0-1,5-6", "items=0-5", "bytes=abc", "bytes=20-10", "bytes=-", "bytes=" + "9" * 30):
        r = await client.get(f"/media/{key}", headers={"Range": header})
        assert r.status_code == 200 and r.content == data, header
        assert "content-range" not in r.headers


async def test_unsatisfiable_range_is_416(client: httpx.AsyncClient, store: MediaStore) -> None:
    key = await stored(store, b"y" * 1000)
    for header in ("bytes=1000-", "bytes=5000-6000", "bytes=-0"):
        r = await client.get(f"/media/{key}", headers={"Range": header})
        assert r.status_code == 416, header
        assert r.headers["content-range"] == "bytes */1000"
        assert error_code(r) == "range_not_satisfiable"


async def test_if_range(client: httpx.AsyncClient, store: MediaStore) -> None:
    data = os.urandom(10_000)
    key = await stored(store, data)
    head = await client.head(f"/media/{key}")
    etag, modified = head.headers["etag"], head.headers["last-modified"]
    for validator in (etag, modified):
        r = await client.get(f"/media/{key}", headers={"Range": "bytes=0-9", "If-Range": validator})
        assert r.status_code == 206 and r.content == data[:10], validator
    stale = formatdate(0, usegmt=True)
    for validator in ('"stale"', "W/" + etag, stale):
        r = await client.get(f"/media/{key}", headers={"Range": "bytes=0-9", "If-Range": validator})
        assert r.status_code == 200 and r.content == data, validator


async def test_unknown_and_malformed_keys_are_404(client: httpx.AsyncClient, store: MediaStore) -> None:
    await stored(store, b"z" * 100)
    for path in (
        f"/media/{new_media_key()}",
        "/media/short",
        "/media/..%2F..%2Fetc%2Fpasswd",
        "/media/" + "a" * 65,
        "/media/.staging",
    ):
        r = await client.get(path)
        assert r.status_code == 404 and error_code(r) == "not_found", path
