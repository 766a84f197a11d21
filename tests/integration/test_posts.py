"""Posts, their media, comments and likes over HTTP, against a real PostgreSQL and the
real disk media store (settings.data_path / "media").

"No trace" means: no posts, media or outbox rows of the user in the database, the
author's posts_count unchanged, and no file under the media root (neither committed
nor staged).
"""

from __future__ import annotations

import asyncio
import hashlib
import pathlib
import re
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from socialhub.app import create_app
from socialhub.config import Settings
from tests import media_samples as s
from tests.conftest import Account, connected, error_code, running_app, signup

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
POST_KEYS = {"id", "author", "content", "media", "created_at", "likes_count", "comments_count", "liked"}
COMMENT_KEYS = {"id", "post_id", "author", "content", "created_at"}
SUMMARY_KEYS = {"id", "username", "name", "avatar_url"}
MEDIA_KEYS = {"id", "url", "content_type", "size", "width", "height", "preview_url", "blurhash", "previews"}

FileSpec = tuple[str, str, bytes, str]
"""(field, filename, bytes, declared content type) of a multipart file part."""


# -- helpers ------------------------------------------------------------------------------


def form(fields: dict[str, str] | None = None, files: list[FileSpec] | None = None) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body built by hand, so a text-only form is still multipart."""
    boundary = "----socialhub" + secrets.token_hex(8)
    out = bytearray()
    for name, value in (fields or {}).items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    for field, filename, data, ctype in files or []:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n"
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


async def post_form(
    who: Account,
    fields: dict[str, str] | None = None,
    files: list[FileSpec] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    body, form_headers = form(fields, files)
    return await who.client.post("/posts/", content=body, headers={**who.headers, **form_headers, **(headers or {})})


def committed_files(root: pathlib.Path) -> list[pathlib.Path]:
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and ".staging" not in p.relative_to(root).parts)


def staged_files(root: pathlib.Path) -> list[pathlib.Path]:
    staging = root / ".staging"
    return sorted(p for p in staging.iterdir()) if staging.exists() else []


def key_of(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def post_keys(post: dict[str, Any]) -> set[str]:
    """The storage keys of a post's files and of their previews."""
    return {key_of(u) for m in post["media"] for u in [m["url"], *(p["url"] for p in m.get("previews", []))]}


def data_files(root: pathlib.Path) -> set[str]:
    """The names of the committed files (sidecars left out)."""
    return {p.name for p in committed_files(root) if not p.name.endswith(".meta")}


async def row_counts(db: asyncpg.Connection, user_id: str) -> dict[str, int]:
    uid = int(user_id)
    row = await db.fetchrow(
        """SELECT (SELECT count(*) FROM posts WHERE author_id = $1) AS posts,
                  (SELECT count(*) FROM media WHERE owner_id = $1) AS media,
                  (SELECT count(*) FROM outbox WHERE actor_id = $1 AND type = 'post.created') AS events,
                  (SELECT posts_count FROM users WHERE id = $1) AS posts_count""",
        uid,
    )
    assert row is not None
    return dict(row)


async def assert_no_trace(db: asyncpg.Connection, root: pathlib.Path, who: Account) -> None:
    assert await row_counts(db, who.id) == {"posts": 0, "media": 0, "events": 0, "posts_count": 0}
    assert committed_files(root) == []
    assert staged_files(root) == []


def assert_post_shape(post: dict[str, Any], author: Account) -> None:
    assert set(post) == POST_KEYS, post
    assert isinstance(post["id"], str) and post["id"].isdigit()
    assert set(post["author"]) == SUMMARY_KEYS
    assert post["author"]["id"] == author.id and post["author"]["username"] == author.username
    assert RFC3339_MS.match(post["created_at"]), post["created_at"]
    assert isinstance(post["likes_count"], int) and isinstance(post["comments_count"], int)
    assert isinstance(post["liked"], bool)
    for m in post["media"]:
        assert {"id", "url", "content_type", "size"} <= set(m) <= MEDIA_KEYS
        assert isinstance(m["id"], str) and m["id"].isdigit()


def assert_comment_shape(comment: dict[str, Any], author: Account, post_id: str) -> None:
    assert set(comment) == COMMENT_KEYS, comment
    assert comment["id"].isdigit() and comment["post_id"] == post_id
    assert set(comment["author"]) == SUMMARY_KEYS and comment["author"]["id"] == author.id
    assert RFC3339_MS.match(comment["created_at"])


async def posts_count(who: Account, user_id: str) -> int:
    r = await who.get(f"/users/{user_id}")
    assert r.status_code == 200
    count: int = r.json()["posts_count"]
    return count


@asynccontextmanager
async def app_answering_500s(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Like running_app, but an unhandled error comes back as the app's 500 response
    instead of being re-raised into the test (Starlette re-raises after answering)."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=("127.0.0.1", 50000), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    async with connected(database_url) as conn:
        yield conn


@pytest.fixture
def media_root(make_settings: Callable[..., Settings]) -> pathlib.Path:
    return make_settings().data_path / "media"


# -- create ---------------------------------------------------------------------------------


async def test_create_json(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    a = await signup(client)
    assert await posts_count(a, a.id) == 0
    r = await a.post("/posts/", json={"content": "  hello world  "})
    assert r.status_code == 201, r.text
    post = r.json()
    assert_post_shape(post, a)
    assert post["content"] == "hello world"
    assert post["media"] == [] and post["likes_count"] == 0 and post["comments_count"] == 0
    assert post["liked"] is False
    assert await posts_count(a, a.id) == 1
    # Without the trailing slash too.
    r = await a.post("/posts", json={"content": "second"})
    assert r.status_code == 201
    assert await posts_count(a, a.id) == 2
    assert (await row_counts(db, a.id))["events"] == 2
    r = await a.get(f"/posts/{post['id']}")
    assert r.status_code == 200 and r.json() == post
    assert (await client.post("/posts/", json={"content": "x"})).status_code == 401


async def test_create_multipart_with_media_and_serve_the_bytes(
    client: httpx.AsyncClient, db: asyncpg.Connection, media_root: pathlib.Path
) -> None:
    a, b = await signup(client), await signup(client)
    png, jpeg = s.png(640, 480), s.jpeg(800, 600)
    r = await post_form(
        a,
        {"content": "two pictures"},
        [("media", "a.png", png, "image/png"), ("media", "b.jpg", jpeg, "application/octet-stream")],
    )
    assert r.status_code == 201, r.text
    post = r.json()
    assert_post_shape(post, a)
    assert post["content"] == "two pictures"
    media = post["media"]
    assert [(m["content_type"], m["size"], m["width"], m["height"]) for m in media] == [
        ("image/png", len(png), 640, 480),
        ("image/jpeg", len(jpeg), 800, 600),
    ]
    for m, data in zip(media, (png, jpeg), strict=True):
        assert m["url"].startswith("/media/")
        got = await client.get(m["url"])  # public
        assert got.status_code == 200 and got.content == data
        assert got.headers["content-type"] == m["content_type"]
        assert got.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    # Two files and their previews (each image: 400 px and its own width), each with its
    # sidecar; nothing left staged.
    assert [len(m["previews"]) for m in media] == [2, 2]
    assert data_files(media_root) == post_keys(post) and len(post_keys(post)) == 6
    assert len(committed_files(media_root)) == 12 and staged_files(media_root) == []
    assert await row_counts(db, a.id) == {"posts": 1, "media": 2, "events": 1, "posts_count": 1}
    # Another viewer sees the same post.
    seen = (await b.get(f"/posts/{post['id']}")).json()
    assert seen == post


async def test_create_multipart_file_alias_video_and_text_less(
    client: httpx.AsyncClient, media_root: pathlib.Path
) -> None:
    a = await signup(client)
    mp4 = s.pad(s.ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41"), 10_000)
    r = await post_form(a, None, [("file", "clip.mp4", mp4, "video/mp4")])
    assert r.status_code == 201, r.text
    post = r.json()
    assert_post_shape(post, a)
    assert post["content"] == ""
    [m] = post["media"]
    assert m["content_type"] == "video/mp4" and m["size"] == len(mp4)
    assert "width" not in m and "height" not in m
    got = await client.get(m["url"])
    assert got.status_code == 200 and got.content == mp4
    # Text only, as multipart.
    r = await post_form(a, {"content": "just words"})
    assert r.status_code == 201 and r.json()["content"] == "just words" and r.json()["media"] == []
    assert await posts_count(a, a.id) == 2
    assert len(committed_files(media_root)) == 2 and staged_files(media_root) == []


async def test_content_of_exactly_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    r = await a.post("/posts/", json={"content": "é" * 5000})
    assert r.status_code == 201 and len(r.json()["content"]) == 5000


# -- idempotency ------------------------------------------------------------------------------


async def test_idempotency_key_returns_the_same_post(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    a, b = await signup(client), await signup(client)
    key = {"Idempotency-Key": "3f1c-" + secrets.token_hex(8)}
    r1 = await a.client.post("/posts/", json={"content": "once"}, headers={**a.headers, **key})
    r2 = await a.client.post("/posts/", json={"content": "once"}, headers={**a.headers, **key})
    assert (r1.status_code, r2.status_code) == (201, 200)
    assert r1.json()["id"] == r2.json()["id"]
    assert await posts_count(a, a.id) == 1
    # Another key: another post.
    r3 = await a.client.post("/posts/", json={"content": "once"}, headers={**a.headers, "Idempotency-Key": "other-key"})
    assert r3.status_code == 201 and r3.json()["id"] != r1.json()["id"]
    # The same key from another user is theirs alone.
    r4 = await b.client.post("/posts/", json={"content": "once"}, headers={**b.headers, **key})
    assert r4.status_code == 201 and r4.json()["id"] != r1.json()["id"]
    assert await row_counts(db, a.id) == {"posts": 2, "media": 0, "events": 2, "posts_count": 2}


async def test_concurrent_json_requests_with_one_key_make_one_post(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    a = await signup(client)
    headers = {**a.headers, "Idempotency-Key": secrets.token_hex(16)}
    rs = await asyncio.gather(*(a.client.post("/posts/", json={"content": "race"}, headers=headers) for _ in range(5)))
    assert sorted(r.status_code for r in rs) == [200, 200, 200, 200, 201], [r.text for r in rs]
    assert len({r.json()["id"] for r in rs}) == 1
    assert await row_counts(db, a.id) == {"posts": 1, "media": 0, "events": 1, "posts_count": 1}


async def test_concurrent_multipart_requests_with_one_key_leave_one_post_and_its_files(
    client: httpx.AsyncClient, db: asyncpg.Connection, media_root: pathlib.Path
) -> None:
    a = await signup(client)
    png = s.noise_png(100, 70)  # 21 KB: more than one chunk of the body
    body, form_headers = form({"content": "race"}, [("media", "p.png", png, "image/png")])
    headers = {**a.headers, **form_headers, "Idempotency-Key": "race-" + secrets.token_hex(8)}
    rs = await asyncio.gather(*(a.client.post("/posts/", content=body, headers=headers) for _ in range(5)))
    assert sorted(r.status_code for r in rs) == [200, 200, 200, 200, 201], [r.text for r in rs]
    posts = [r.json() for r in rs]
    assert len({p["id"] for p in posts}) == 1
    assert len({p["media"][0]["url"] for p in posts}) == 1
    assert await row_counts(db, a.id) == {"posts": 1, "media": 1, "events": 1, "posts_count": 1}
    # One file and its one preview, with their sidecars: the losers' files are gone.
    files = committed_files(media_root)
    assert data_files(media_root) == post_keys(posts[0]) and len(files) == 4
    assert staged_files(media_root) == []
    assert (await client.get(posts[0]["media"][0]["url"])).content == png


@pytest.mark.parametrize("key", ["has space", "x" * 256, "", "tab\there", "ünïcode"])
async def test_a_bad_idempotency_key_is_422(
    client: httpx.AsyncClient, db: asyncpg.Connection, media_root: pathlib.Path, key: str
) -> None:
    a = await signup(client)
    # Bytes, so a non-ASCII key goes out as raw UTF-8 the way a careless client sends it.
    headers = {b"authorization": a.headers["Authorization"].encode(), b"idempotency-key": key.encode()}
    r = await a.client.post("/posts/", json={"content": "x"}, headers=headers)
    assert r.status_code == 422 and error_code(r) == "validation_error", r.text
    body, form_headers = form({"content": "x"}, [("media", "p.png", s.png(), "image/png")])
    r = await a.client.post(
        "/posts/", content=body, headers={**headers, b"content-type": form_headers["Content-Type"].encode()}
    )
    assert r.status_code == 422 and error_code(r) == "validation_error"
    await assert_no_trace(db, media_root, a)


async def test_longest_idempotency_key_is_accepted(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    r = await a.client.post("/posts/", json={"content": "x"}, headers={**a.headers, "Idempotency-Key": "k" * 255})
    assert r.status_code == 201


# -- bad input leaves no trace ------------------------------------------------------------------


async def test_bad_json_bodies_leave_no_trace(
    client: httpx.AsyncClient, db: asyncpg.Connection, media_root: pathlib.Path
) -> None:
    a = await signup(client)
    cases: list[tuple[Any, int, str]] = [
        ({"content": ""}, 422, "validation_error"),
        ({"content": " \n\t "}, 422, "validation_error"),
        ({}, 422, "validation_error"),
        ({"content": "x" * 5001}, 422, "validation_error"),
        ({"content": 5}, 422, "validation_error"),
        ({"content": None}, 422, "validation_error"),
        ({"content": ["a"]}, 422, "validation_error"),
        (["content"], 422, "validation_error"),
        ("content", 422, "validation_error"),
    ]
    for body, status, code in cases:
        r = await a.client.post("/posts/", json=body, headers={**a.headers, "Idempotency-Key": "k1"})
        assert r.status_code == status and error_code(r) == code, (body, r.text)
    r = await a.post("/posts/", json={"content": "x" * 5001})
    assert "content" in r.json()["error"]["fields"]
    for raw in (b'{"content": ', b"{content: 1}", b"\xff\xfe", b'{"content": "a"} trailing'):
        r = await a.client.post("/posts/", content=raw, headers={**a.headers, "Content-Type": "application/json"})
        assert r.status_code == 400 and error_code(r) == "bad_request", (raw, r.text)
    await assert_no_trace(db, media_root, a)
    # The key used by the refused requests is still free.
    r = await a.client.post("/posts/", json={"content": "fine"}, headers={**a.headers, "Idempotency-Key": "k1"})
    assert r.status_code == 201


async def test_a_post_needs_text_or_media_even_with_a_used_key(client: httpx.AsyncClient) -> None:
    """The rule (in PostService.create) comes before the idempotency key is looked up: a
    retry that lost both text and files is refused, not answered with the first post."""
    a = await signup(client)
    r = await post_form(a, {"content": "first"}, headers={"Idempotency-Key": "k-text-or-media"})
    assert r.status_code == 201
    for fields in ({"content": " \t\n"}, {}):
        r = await post_form(a, fields, headers={"Idempotency-Key": "k-text-or-media"})
        assert r.status_code == 422, fields
        assert r.json()["error"] == {
            "code": "validation_error",
            "message": "a post needs text or media",
            "fields": {"content": "required unless media is attached"},
        }
    # Stripped before it is stored, on create and edit alike.
    r = await post_form(a, {"content": "  padded \n"})
    assert r.status_code == 201 and r.json()["content"] == "padded"
    r = await a.patch(f"/posts/{r.json()['id']}", json={"content": "\n edited  "})
    assert r.status_code == 200 and r.json()["content"] == "edited"


async def test_bad_multipart_bodies_leave_no_trace(
    client: httpx.AsyncClient, db: asyncpg.Connection, media_root: pathlib.Path
) -> None:
    a = await signup(client)
    png = s.pad(s.png(), 8000)
    # Only whitespace and no file.
    r = await post_form(a, {"content": "   \n "})
    assert r.status_code == 422 and error_code(r) == "validation_error"
    # Text over the limit with a file that was already staged.
    r = await post_form(a, {"content": "x" * 5001}, [("media", "p.png", png, "image/png")])
    assert r.status_code == 422 and error_code(r) == "validation_error"
    # Eleven files.
    r = await post_form(a, {"content": "many"}, [("media", f"{i}.png", png, "image/png") for i in range(11)])
    assert r.status_code == 413 and error_code(r) == "too_large"
    # An executable named and declared as a PNG, after a good file.
    r = await post_form(
        a,
        {"content": "exe"},
        [("media", "ok.png", png, "image/png"), ("media", "cat.png", s.pad(s.EXE, 8000), "image/png")],
    )
    assert r.status_code == 415 and error_code(r) == "unsupported_media_type"
    for bad in (s.ELF, s.ZIP, s.PDF, s.HTML, s.SVG):
        r = await post_form(a, {"content": "bad"}, [("file", "x.png", bad, "image/png")])
        assert r.status_code == 415 and error_code(r) == "unsupported_media_type", bad[:8]
    # A file in a field that takes none.
    r = await post_form(a, {"content": "x"}, [("content", "p.png", png, "image/png")])
    assert r.status_code == 400 and error_code(r) == "bad_request"
    await assert_no_trace(db, media_root, a)


async def test_malformed_multipart_is_400_and_leaves_no_trace(
    client: httpx.AsyncClient, db: asyncpg.Connection, media_root: pathlib.Path
) -> None:
    a = await signup(client)
    body, headers = form({"content": "cut"}, [("media", "p.png", s.pad(s.png(), 50_000), "image/png")])
    # Cut inside the file, after enough of it was staged: no closing boundary.
    r = await a.client.post("/posts/", content=body[:30_000], headers={**a.headers, **headers})
    assert r.status_code == 400 and error_code(r) == "bad_request", r.text
    # No boundary at all.
    r = await a.client.post("/posts/", content=body, headers={**a.headers, "Content-Type": "multipart/form-data"})
    assert r.status_code == 400 and error_code(r) == "bad_request"
    # A body that is not multipart at all under a multipart type.
    r = await a.client.post("/posts/", content=b"garbage, not a form", headers={**a.headers, **headers})
    assert r.status_code == 400 and error_code(r) == "bad_request"
    # A part without Content-Disposition.
    boundary = "b0undary"
    raw = f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n".encode()
    r = await a.client.post(
        "/posts/",
        content=raw,
        headers={**a.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 400 and error_code(r) == "bad_request"
    await assert_no_trace(db, media_root, a)


async def test_a_file_over_the_limit_is_413_and_leaves_no_trace(
    make_settings: Callable[..., Settings], db: asyncpg.Connection
) -> None:
    settings = make_settings(media={"max_file_bytes": 1024})
    root = settings.data_path / "media"
    async with running_app(settings) as client:
        a = await signup(client)
        # A video: an image's size changes when its metadata filter drops what follows its end.
        ok = s.pad(s.ftyp(b"isom", b"isom", b"avc1"), 1024)
        r = await post_form(
            a, {"content": "x"}, [("media", "a.mp4", ok, "video/mp4"), ("media", "b.mp4", ok + b"\0", "video/mp4")]
        )
        assert r.status_code == 413 and error_code(r) == "too_large", r.text
        await assert_no_trace(db, root, a)
        # Exactly the limit is fine.
        r = await post_form(a, {"content": "x"}, [("media", "a.mp4", ok, "video/mp4")])
        assert r.status_code == 201 and r.json()["media"][0]["size"] == 1024


async def test_a_database_failure_after_the_files_were_committed_leaves_nothing(
    make_settings: Callable[..., Settings], db: asyncpg.Connection
) -> None:
    settings = make_settings()
    root = settings.data_path / "media"
    async with app_answering_500s(settings) as client:
        a = await signup(client)
        files: list[FileSpec] = [("media", "a.png", s.png(), "image/png"), ("media", "b.jpg", s.jpeg(), "image/jpeg")]
        headers = {"Idempotency-Key": "fails-first"}
        # A real failure inside the transaction, after both files are in the store: the
        # media rows break a constraint (NOT VALID: existing rows are not checked).
        await db.execute("ALTER TABLE media ADD CONSTRAINT test_posts_no_media CHECK (false) NOT VALID")
        try:
            r = await post_form(a, {"content": "doomed"}, files, headers)
        finally:
            await db.execute("ALTER TABLE media DROP CONSTRAINT test_posts_no_media")
        assert r.status_code == 500, r.text
        assert r.json() == {"error": {"code": "internal", "message": r.json()["error"]["message"]}}
        # The server closes the connection after a 500 (uvicorn does, as the error is
        # re-raised); the answer says so rather than leaving the client to find out.
        assert r.headers["connection"] == "close"
        for leak in ("Traceback", "asyncpg", "CheckViolation", "test_posts_no_media", 'File "'):
            assert leak not in r.text
        await assert_no_trace(db, root, a)
        # The key was not kept by the failed request: the retry makes the post.
        r = await post_form(a, {"content": "doomed"}, files, headers)
        assert r.status_code == 201 and len(r.json()["media"]) == 2
        assert await row_counts(db, a.id) == {"posts": 1, "media": 2, "events": 1, "posts_count": 1}


# -- get, edit, delete --------------------------------------------------------------------------


async def test_get_unknown_and_malformed_ids_are_404(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    for ref in ("999999999999999", "abc", "-1", "0", "1" * 30, "1.5", "%20"):
        r = await a.get(f"/posts/{ref}")
        assert r.status_code == 404 and error_code(r) == "not_found", ref


async def test_edit(client: httpx.AsyncClient) -> None:
    a, b = await signup(client), await signup(client)
    post = (await a.post("/posts/", json={"content": "first"})).json()
    r = await a.patch(f"/posts/{post['id']}", json={"content": " edited "})
    assert r.status_code == 200
    edited = r.json()
    assert_post_shape(edited, a)
    assert edited["content"] == "edited" and edited["id"] == post["id"] and edited["created_at"] == post["created_at"]
    assert (await b.get(f"/posts/{post['id']}")).json()["content"] == "edited"
    r = await b.patch(f"/posts/{post['id']}", json={"content": "hijack"})
    assert r.status_code == 403 and error_code(r) == "forbidden"
    for ref in ("999999999999999", "abc"):
        r = await a.patch(f"/posts/{ref}", json={"content": "x"})
        assert r.status_code == 404 and error_code(r) == "not_found"
    for bad in ({"content": ""}, {"content": "   "}, {"content": "x" * 5001}, {"content": 1}, {}):
        r = await a.patch(f"/posts/{post['id']}", json=bad)
        assert r.status_code == 422 and error_code(r) == "validation_error", bad
    r = await a.client.patch(
        f"/posts/{post['id']}", content=b"{", headers={**a.headers, "Content-Type": "application/json"}
    )
    assert r.status_code == 400 and error_code(r) == "bad_request"
    assert (await a.get(f"/posts/{post['id']}")).json()["content"] == "edited"


async def test_delete(client: httpx.AsyncClient, db: asyncpg.Connection, media_root: pathlib.Path) -> None:
    a, b = await signup(client), await signup(client)
    r = await post_form(
        a, {"content": "bye"}, [("media", "a.png", s.png(), "image/png"), ("file", "b.gif", s.gif(), "image/gif")]
    )
    post = r.json()
    urls = [m["url"] for m in post["media"]]
    assert data_files(media_root) == post_keys(post) and len(post_keys(post)) == 5
    keep = (await a.post("/posts/", json={"content": "stays"})).json()
    await b.post(f"/posts/comment/{post['id']}", json={"content": "a comment"})
    await b.post(f"/posts/like/{post['id']}")
    assert await posts_count(a, a.id) == 2

    r = await b.delete(f"/posts/{post['id']}")
    assert r.status_code == 403 and error_code(r) == "forbidden"
    assert (await b.get(f"/posts/{post['id']}")).status_code == 200
    for ref in ("999999999999999", "abc"):
        r = await a.delete(f"/posts/{ref}")
        assert r.status_code == 404 and error_code(r) == "not_found"

    r = await a.delete(f"/posts/{post['id']}")
    assert r.status_code == 204 and r.content == b""
    for who in (a, b):
        r = await who.get(f"/posts/{post['id']}")
        assert r.status_code == 404 and error_code(r) == "not_found"
    r = await a.delete(f"/posts/{post['id']}")
    assert r.status_code == 404
    for url in urls:
        assert (await client.get(url)).status_code == 404
    assert committed_files(media_root) == [] and staged_files(media_root) == []
    assert await posts_count(a, a.id) == 1
    counts = await row_counts(db, a.id)
    assert (counts["posts"], counts["media"]) == (1, 0)
    assert await db.fetchval("SELECT count(*) FROM comments WHERE post_id = $1", int(post["id"])) == 0
    assert await db.fetchval("SELECT count(*) FROM likes WHERE post_id = $1", int(post["id"])) == 0
    assert (await a.get(f"/posts/{keep['id']}")).status_code == 200
    # The post is gone for comments and likes too.
    assert (await b.post(f"/posts/comment/{post['id']}", json={"content": "late"})).status_code == 404
    assert (await b.post(f"/posts/like/{post['id']}")).status_code == 404
    assert (await b.get(f"/posts/{post['id']}/comments")).status_code == 404


# -- lists ----------------------------------------------------------------------------------------


async def test_user_posts_newest_first_with_pagination(client: httpx.AsyncClient) -> None:
    a, b = await signup(client), await signup(client)
    made = [(await a.post("/posts/", json={"content": f"post {i}"})).json()["id"] for i in range(5)]
    await b.post("/posts/", json={"content": "not a's"})
    newest_first = made[::-1]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        url = f"/posts/user/{a.id}?limit=2" + (f"&before={cursor}" if cursor else "")
        r = await b.get(url)
        assert r.status_code == 200
        page = r.json()
        assert set(page) == {"items", "next"}
        for item in page["items"]:
            assert_post_shape(item, a)
        seen += [p["id"] for p in page["items"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
        assert cursor == page["items"][-1]["id"]
    assert seen == newest_first and pages == 3
    assert [int(i) for i in seen] == sorted((int(i) for i in seen), reverse=True)

    everything = (await b.get(f"/posts/user/{a.id}")).json()
    assert [p["id"] for p in everything["items"]] == newest_first and everything["next"] is None
    # /posts/getall: the caller's own posts.
    mine = (await a.get("/posts/getall?limit=3")).json()
    assert [p["id"] for p in mine["items"]] == newest_first[:3] and mine["next"] == newest_first[2]
    rest = (await a.get(f"/posts/getall?before={mine['next']}")).json()
    assert [p["id"] for p in rest["items"]] == newest_first[3:] and rest["next"] is None
    theirs = (await b.get("/posts/getall")).json()
    assert [p["content"] for p in theirs["items"]] == ["not a's"]

    for bad in ("limit=0", "limit=x", "before=abc", "limit=-1"):
        r = await a.get(f"/posts/user/{a.id}?{bad}")
        assert r.status_code == 422 and error_code(r) == "validation_error", bad
    assert len((await a.get(f"/posts/user/{a.id}?limit=1000")).json()["items"]) == 5
    for ref in ("abc", "999999999999999"):
        r = await a.get(f"/posts/user/{ref}")
        assert r.status_code == 404 and error_code(r) == "not_found", ref
    # A user without posts is an empty list, not a 404.
    c = await signup(client)
    assert (await a.get(f"/posts/user/{c.id}")).json() == {"items": [], "next": None}


# -- comments ---------------------------------------------------------------------------------


async def test_comments(client: httpx.AsyncClient) -> None:
    a, b, c = await signup(client), await signup(client), await signup(client)
    post_id = (await a.post("/posts/", json={"content": "discuss"})).json()["id"]

    made: list[dict[str, Any]] = []
    for who, text in ((b, "one"), (c, "two"), (b, "three"), (a, "four")):
        r = await who.post(f"/posts/comment/{post_id}", json={"content": f" {text} "})
        assert r.status_code == 201, r.text
        assert_comment_shape(r.json(), who, post_id)
        assert r.json()["content"] == text
        made.append(r.json())
    assert (await c.get(f"/posts/{post_id}")).json()["comments_count"] == 4

    # Oldest first, paged with ?after=.
    first = (await c.get(f"/posts/{post_id}/comments?limit=3")).json()
    assert [x["content"] for x in first["items"]] == ["one", "two", "three"]
    assert first["next"] == made[2]["id"]
    rest = (await c.get(f"/posts/{post_id}/comments?limit=3&after={first['next']}")).json()
    assert [x["content"] for x in rest["items"]] == ["four"] and rest["next"] is None
    assert (await c.get(f"/posts/{post_id}/comments")).json()["items"] == made
    for bad in ("limit=0", "after=abc"):
        assert (await c.get(f"/posts/{post_id}/comments?{bad}")).status_code == 422

    # Edit: the comment's author only.
    one = made[0]["id"]
    r = await b.patch(f"/posts/comment/{one}", json={"content": "one, edited"})
    assert r.status_code == 200 and r.json()["content"] == "one, edited"
    assert_comment_shape(r.json(), b, post_id)
    for other in (a, c):  # not even the post's author
        r = await other.patch(f"/posts/comment/{one}", json={"content": "nope"})
        assert r.status_code == 403 and error_code(r) == "forbidden"
    r = await b.patch("/posts/comment/999999999999999", json={"content": "x"})
    assert r.status_code == 404 and error_code(r) == "not_found"
    r = await b.patch(f"/posts/comment/{one}", json={"content": "  "})
    assert r.status_code == 422

    # Delete: the comment's author or the post's author, no one else.
    r = await c.delete(f"/posts/comment/{one}")
    assert r.status_code == 403 and error_code(r) == "forbidden"
    assert (await b.delete(f"/posts/comment/{one}")).status_code == 204
    assert (await a.delete(f"/posts/comment/{made[1]['id']}")).status_code == 204  # c's, by the post's author
    r = await b.delete(f"/posts/comment/{one}")
    assert r.status_code == 404 and error_code(r) == "not_found"
    assert (await b.delete("/posts/comment/abc")).status_code == 404
    left = (await c.get(f"/posts/{post_id}/comments")).json()["items"]
    assert [x["content"] for x in left] == ["three", "four"]
    assert (await c.get(f"/posts/{post_id}")).json()["comments_count"] == 2


async def test_comment_errors(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    a = await signup(client)
    post_id = (await a.post("/posts/", json={"content": "p"})).json()["id"]
    for ref in ("999999999999999", "abc"):
        r = await a.post(f"/posts/comment/{ref}", json={"content": "hi"})
        assert r.status_code == 404 and error_code(r) == "not_found", ref
        r = await a.get(f"/posts/{ref}/comments")
        assert r.status_code == 404 and error_code(r) == "not_found", ref
    for bad in ({"content": ""}, {"content": " \n "}, {"content": "x" * 2001}, {"content": 3}, {}):
        r = await a.post(f"/posts/comment/{post_id}", json=bad)
        assert r.status_code == 422 and error_code(r) == "validation_error", bad
    r = await a.client.post(
        f"/posts/comment/{post_id}", content=b"{", headers={**a.headers, "Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert (await a.get(f"/posts/{post_id}")).json()["comments_count"] == 0
    assert await db.fetchval("SELECT count(*) FROM comments WHERE post_id = $1", int(post_id)) == 0
    assert (await a.get(f"/posts/{post_id}/comments")).json() == {"items": [], "next": None}


# -- likes ------------------------------------------------------------------------------------


async def test_likes(client: httpx.AsyncClient) -> None:
    a, b, c = await signup(client), await signup(client), await signup(client)
    post_id = (await a.post("/posts/", json={"content": "like me"})).json()["id"]
    for _ in range(2):
        r = await b.post(f"/posts/like/{post_id}")
        assert r.status_code == 200 and r.json() == {"liked": True, "likes_count": 1}
    assert (await b.get(f"/posts/{post_id}")).json()["liked"] is True
    for viewer in (a, c):
        seen = (await viewer.get(f"/posts/{post_id}")).json()
        assert seen["liked"] is False and seen["likes_count"] == 1
    listed = (await c.get(f"/posts/user/{a.id}")).json()["items"][0]
    assert listed["liked"] is False and listed["likes_count"] == 1
    assert (await b.get(f"/posts/user/{a.id}")).json()["items"][0]["liked"] is True

    for method in ("DELETE", "PATCH"):
        await b.post(f"/posts/like/{post_id}")
        for _ in range(2):
            r = await b.client.request(method, f"/posts/like/{post_id}", headers=b.headers)
            assert r.status_code == 200 and r.json() == {"liked": False, "likes_count": 0}, method
        seen = (await b.get(f"/posts/{post_id}")).json()
        assert seen["liked"] is False and seen["likes_count"] == 0

    for ref in ("999999999999999", "abc"):
        for method in ("POST", "DELETE", "PATCH"):
            r = await b.client.request(method, f"/posts/like/{ref}", headers=b.headers)
            assert r.status_code == 404 and error_code(r) == "not_found", (method, ref)


async def test_concurrent_likes_keep_the_count_exact(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    a = await signup(client)
    post_id = (await a.post("/posts/", json={"content": "popular"})).json()["id"]
    users = await asyncio.gather(*(signup(client) for _ in range(20)))

    rs = await asyncio.gather(*(u.post(f"/posts/like/{post_id}") for u in users))
    assert all(r.status_code == 200 and r.json()["liked"] is True for r in rs)
    assert sorted(r.json()["likes_count"] for r in rs)[-1] == 20
    assert (await a.get(f"/posts/{post_id}")).json()["likes_count"] == 20
    # The same user liking many times at once counts once.
    rs = await asyncio.gather(*(users[0].post(f"/posts/like/{post_id}") for _ in range(5)))
    assert all(r.json()["likes_count"] == 20 for r in rs)
    events = await db.fetchval("SELECT count(*) FROM outbox WHERE type = 'like.created' AND key = $1", post_id)
    assert events == 20

    rs = await asyncio.gather(*(u.delete(f"/posts/like/{post_id}") for u in users))
    assert all(r.status_code == 200 and r.json()["liked"] is False for r in rs)
    assert min(r.json()["likes_count"] for r in rs) == 0
    seen = (await a.get(f"/posts/{post_id}")).json()
    assert seen["likes_count"] == 0
    assert await db.fetchval("SELECT count(*) FROM likes WHERE post_id = $1", int(post_id)) == 0
