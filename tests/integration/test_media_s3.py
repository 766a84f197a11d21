"""media.store = "s3" through the whole app: two instances sharing one PostgreSQL, one
Redis and one bucket on a real S3-protocol server (moto, over HTTP), the all-or-nothing
rule of posts with files, the janitor's orphan sweep over the bucket, and the serve modes
(proxy, presigned, public base URL)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from socialhub.config import Settings
from socialhub.infra.media.base import new_media_key
from socialhub.infra.media.s3 import PART_SIZE, S3MediaStore
from socialhub.services.janitor import Janitor
from socialhub.storage.outbox import OutboxStore
from socialhub.storage.posts import PostStore
from tests import media_samples as s
from tests.conftest import connected, error_code, pool, running_app, signup
from tests.integration.test_posts import FileSpec, app_answering_500s, key_of, post_form, post_keys, row_counts
from tests.ports import free_port
from tests.s3_server import S3Server


async def bucket_objects(server: S3Server, bucket: str) -> list[str]:
    async with server.client() as client:
        objects = await client.list_objects_v2(Bucket=bucket)
        uploads = await client.list_multipart_uploads(Bucket=bucket)
    return sorted(o["Key"] for o in objects.get("Contents", [])) + [u["Key"] for u in uploads.get("Uploads", [])]


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    async with connected(database_url) as conn:
        yield conn


@pytest.fixture
def s3_settings(make_settings: Callable[..., Settings], s3_server: S3Server, s3_bucket: str) -> Callable[..., Settings]:
    def build(**media: Any) -> Settings:
        return make_settings(redis=True, media=s3_server.settings(s3_bucket, **media))

    return build


async def test_a_post_made_on_one_instance_is_served_by_the_other(
    s3_settings: Callable[..., Settings], s3_server: S3Server, s3_bucket: str
) -> None:
    settings = s3_settings()
    png = s.png(640, 480)
    # Over one part: it goes up as a multipart upload while the request is read.
    video = s.pad(s.ftyp(b"isom", b"isom", b"avc1"), PART_SIZE + 300_000)
    async with running_app(settings) as a_client, running_app(settings) as b_client:
        alice = await signup(a_client)
        files: list[FileSpec] = [("media", "a.png", png, "image/png"), ("media", "v.mp4", video, "video/mp4")]
        r = await post_form(alice, {"content": "from A"}, files)
        assert r.status_code == 201, r.text
        post = r.json()
        stored_keys = post_keys(post)  # the files and the image's previews
        assert len(stored_keys) == 4
        assert set(stored_keys) <= set(await bucket_objects(s3_server, s3_bucket))
        for m, data in zip(post["media"], (png, video), strict=True):
            got = await b_client.get(m["url"])
            assert got.status_code == 200 and got.content == data
            assert got.headers["content-type"] == m["content_type"]
            etag = f'"{hashlib.sha256(data).hexdigest()}"'
            assert got.headers["etag"] == etag
            ranged = await b_client.get(m["url"], headers={"Range": "bytes=100-199"})
            assert ranged.status_code == 206 and ranged.content == data[100:200]
            assert ranged.headers["content-range"] == f"bytes 100-199/{len(data)}"
            assert (await b_client.get(m["url"], headers={"If-None-Match": etag})).status_code == 304
        assert (await b_client.get(f"/media/{new_media_key()}")).status_code == 404
        # B's view of the post is A's, and deleting it on B removes the files from the bucket.
        bob_view = (await alice.get(f"/posts/{post['id']}")).json()
        assert bob_view["media"] == post["media"]
        alice.client = b_client
        assert (await alice.delete(f"/posts/{post['id']}")).status_code == 204
        leftover = set(await bucket_objects(s3_server, s3_bucket))
        assert not leftover & set(stored_keys)
        assert (await a_client.get(post["media"][0]["url"])).status_code == 404


async def test_a_failed_post_leaves_nothing_in_the_bucket(
    s3_settings: Callable[..., Settings], s3_server: S3Server, s3_bucket: str, db: asyncpg.Connection
) -> None:
    async with app_answering_500s(s3_settings()) as client:
        a = await signup(client)
        files: list[FileSpec] = [
            ("media", "a.png", s.png(), "image/png"),
            ("media", "v.mp4", s.pad(s.ftyp(b"isom", b"isom", b"avc1"), PART_SIZE + 10), "video/mp4"),
        ]
        # A real failure inside the transaction, after the files are in the bucket.
        await db.execute("ALTER TABLE media ADD CONSTRAINT test_s3_no_media CHECK (false) NOT VALID")
        try:
            r = await post_form(a, {"content": "doomed"}, files)
        finally:
            await db.execute("ALTER TABLE media DROP CONSTRAINT test_s3_no_media")
        assert r.status_code == 500
        assert await row_counts(db, a.id) == {"posts": 0, "media": 0, "events": 0, "posts_count": 0}
        assert await bucket_objects(s3_server, s3_bucket) == []
        # A refused upload (the second file is not media) leaves nothing either.
        bad: list[FileSpec] = [("media", "a.png", s.png(), "image/png"), ("media", "x.exe", b"MZ" * 5000, "image/png")]
        r = await post_form(a, {"content": "x"}, bad)
        assert r.status_code == 415
        assert await bucket_objects(s3_server, s3_bucket) == []


async def test_the_janitor_sweeps_orphans_from_the_bucket(
    s3_settings: Callable[..., Settings], s3_server: S3Server, s3_bucket: str, database_url: str
) -> None:
    settings = s3_settings()
    async with running_app(settings) as client:
        a = await signup(client)
        r = await post_form(a, {"content": "kept"}, [("media", "a.png", s.png(), "image/png")])
        kept = post_keys(r.json())  # the file and its previews
    cfg = settings.media
    store = S3MediaStore(
        bucket=cfg.s3_bucket,
        endpoint=cfg.s3_endpoint,
        region=cfg.s3_region,
        access_key=cfg.s3_access_key,
        secret_key=cfg.s3_secret_key,
    )
    # What a process killed between storing a file and committing its post leaves: an
    # object no row refers to, and a multipart upload never finished.
    orphan = new_media_key()
    staged = await store.stage()
    await staged.write(b"orphan")
    await store.commit(staged, orphan, "image/png")
    crashed = S3MediaStore(
        bucket=cfg.s3_bucket,
        endpoint=cfg.s3_endpoint,
        region=cfg.s3_region,
        access_key=cfg.s3_access_key,
        secret_key=cfg.s3_secret_key,
    )
    unfinished = await crashed.stage()
    await unfinished.write(os.urandom(PART_SIZE))
    await crashed.close()
    assert len(await bucket_objects(s3_server, s3_bucket)) == len(kept) + 2
    async with pool(database_url) as database:
        janitor = Janitor(posts=PostStore(database), outbox=OutboxStore(database), media=store)
        assert await janitor.sweep_once(staging_age=0, orphan_age=0) >= 2
    assert await bucket_objects(s3_server, s3_bucket) == sorted(kept)
    await store.close()


@pytest.fixture
async def plain_http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


async def test_presigned_mode_redirects_to_a_signed_url_of_the_bucket(
    s3_settings: Callable[..., Settings], s3_server: S3Server, plain_http: httpx.AsyncClient
) -> None:
    async with running_app(s3_settings(serve="presigned", presign_ttl="10m")) as client:
        a = await signup(client)
        png = s.png(320, 200)
        r = await post_form(a, {"content": "p"}, [("media", "a.png", png, "image/png")])
        url = r.json()["media"][0]["url"]
        redirect = await client.get(url)
        assert redirect.status_code == 302
        assert redirect.headers["cache-control"] == "private, max-age=300"
        location = redirect.headers["location"]
        assert location.startswith(s3_server.endpoint) and "Signature" in location
        got = await plain_http.get(location)
        assert got.status_code == 200 and got.content == png
        ranged = await plain_http.get(location, headers={"Range": "bytes=0-7"})
        assert ranged.status_code == 206 and ranged.content == png[:8]
        # A malformed key is 404 here, never a signed URL.
        r404 = await client.get("/media/..%2F..%2Fetc")
        assert r404.status_code == 404


async def test_public_base_url_redirects_to_the_cdn(s3_settings: Callable[..., Settings]) -> None:
    async with running_app(s3_settings(public_base_url="https://cdn.example/media/")) as client:
        a = await signup(client)
        r = await post_form(a, {"content": "p"}, [("media", "a.png", s.png(), "image/png")])
        url = r.json()["media"][0]["url"]
        redirect = await client.get(url)
        assert redirect.status_code == 302
        assert redirect.headers["location"] == f"https://cdn.example/media/{key_of(url)}"
        assert redirect.headers["cache-control"] == "public, max-age=86400"


async def test_readiness_reports_the_bucket(make_settings: Callable[..., Settings], s3_server: S3Server) -> None:
    settings = make_settings(media=s3_server.settings("no-such-bucket-here"))
    async with running_app(settings) as client:
        r = await client.get("/readyz")
        assert r.status_code == 503, r.text
        assert "media" in r.text


async def test_a_store_that_does_not_answer_is_503_and_nothing_is_half_made(
    make_settings: Callable[..., Settings], db: asyncpg.Connection
) -> None:
    down = S3Server(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    async with running_app(make_settings(media=down.settings("gone"))) as client:
        a = await signup(client)
        r = await post_form(a, {"content": "x"}, [("media", "a.png", s.png(), "image/png")])
        assert r.status_code == 503 and error_code(r) == "unavailable", r.text
        assert "127.0.0.1" not in r.text and "gone" not in r.text
        assert await row_counts(db, a.id) == {"posts": 0, "media": 0, "events": 0, "posts_count": 0}
        r = await client.get(f"/media/{new_media_key()}")
        assert r.status_code == 503 and error_code(r) == "unavailable"
