"""Two real `socialhub serve` processes on one PostgreSQL, one Redis and one bucket of a
real S3-protocol server (moto over HTTP), configured only by SOCIALHUB_* variables (the
secret key from a file): a post with files made on A is read back on B, ranged and
revalidated, and a large image's previews made by a worker show on both."""

from __future__ import annotations

import asyncio
import hashlib
import io
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import REDIS_URL
from tests.e2e.server import Server, server_env
from tests.integration.test_posts import form
from tests.s3_server import SECRET_KEY, S3Server


@pytest.fixture
def pair(tmp_path: Path, database_url: str, s3_server: S3Server, s3_bucket: str) -> Iterator[tuple[Server, Server]]:
    secret_file = tmp_path / "s3_secret_key"
    media = s3_server.env(s3_bucket)
    secret_file.write_text(media.pop("SOCIALHUB_MEDIA_S3_SECRET_KEY") + "\n")
    env = server_env(
        database_url,
        SOCIALHUB_REDIS_URL=REDIS_URL,
        SOCIALHUB_REDIS_KEY_PREFIX=f"shtest:{secrets.token_hex(4)}:",
        SOCIALHUB_RATELIMIT_ENABLED="false",
        SOCIALHUB_MEDIA_S3_SECRET_KEY_FILE=str(secret_file),
        **media,
    )
    a = Server(tmp_path / "a", env)
    b = Server(tmp_path / "b", env)
    a.start()
    try:
        b.start()
    except BaseException:
        a.kill()
        raise
    yield a, b
    for server in (a, b):
        server.stop()
    for server in (a, b):
        assert SECRET_KEY not in server.log.read_text()  # the secret key is never logged


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(out, "JPEG", quality=80)
    return out.getvalue()


async def test_a_post_made_on_one_server_is_served_by_the_other(pair: tuple[Server, Server]) -> None:
    a, b = pair
    big, small = jpeg(2400, 1800), jpeg(320, 240)
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=30) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=30) as on_b,
    ):
        assert "media" in (await on_b.get("/readyz")).text
        u = "u" + secrets.token_hex(5)
        r = await on_a.post(
            "/auth/signup",
            json={"name": "U", "email": f"{u}@example.test", "username": u, "password": "correct horse 1"},
        )
        assert r.status_code == 201, r.text
        headers = {"Authorization": f"Bearer {r.json()['token']}"}
        body, form_headers = form(
            {"content": "two photos"},
            [("media", "big.jpg", big, "image/jpeg"), ("media", "s.jpg", small, "image/jpeg")],
        )
        r = await on_a.post("/posts/", content=body, headers={**headers, **form_headers})
        assert r.status_code == 201, r.text
        post = r.json()
        for m, data in zip(post["media"], (big, small), strict=True):
            got = await on_b.get(m["url"])
            assert got.status_code == 200 and got.content == data
            etag = f'"{hashlib.sha256(data).hexdigest()}"'
            assert got.headers["etag"] == etag
            part = await on_b.get(m["url"], headers={"Range": "bytes=2-9"})
            assert part.status_code == 206 and part.content == data[2:10]
            assert (await on_b.get(m["url"], headers={"If-None-Match": etag})).status_code == 304
        # The small image's previews came with the post; the big one's from A's worker,
        # seen on B once done (the read caches are told through Redis).
        assert [p["width"] for p in post["media"][1]["previews"]] == [320]
        seen: dict[str, Any] = {}
        for _ in range(300):
            seen = (await on_b.get(f"/posts/{post['id']}", headers=headers)).json()
            if "preview_url" in seen["media"][0]:
                break
            await asyncio.sleep(0.1)
        [narrow, wide] = seen["media"][0]["previews"]
        assert (narrow["width"], wide["width"]) == (400, 1200)
        preview = await on_b.get(wide["url"])
        assert preview.headers["content-type"] == "image/webp"
        assert Image.open(io.BytesIO(preview.content)).size == (1200, 900)
