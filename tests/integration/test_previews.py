"""Previews of images for feeds (services/previews.py), through the app, over the disk
store and the S3 store alike: WebP at the right widths (never upscaled), a blurhash that
decodes to the image's colours, none for video, large images done by the worker, and a
pending image left by a dead process done by the next instance."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any

import blurhash
import httpx
import pytest
from PIL import Image

from socialhub.config import Settings
from socialhub.services.previews import INLINE_PIXELS, preview_widths
from socialhub.storage.previews import PreviewStore
from tests import media_samples as s
from tests.conftest import Account, connected, pool, running_app, signup
from tests.integration.test_posts import post_form
from tests.s3_server import S3Server


@pytest.fixture(params=["disk", "s3"])
def settings(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Settings:
    if request.param == "disk":
        return make_settings()
    server: S3Server = request.getfixturevalue("s3_server")
    return make_settings(media=server.settings(request.getfixturevalue("s3_bucket")))


def image(width: int, height: int, colour: tuple[int, int, int], fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, fmt, **options)
    return out.getvalue()


async def fetch_webp(client: httpx.AsyncClient, url: str) -> Image.Image:
    r = await client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "WEBP"
    return img


def decoded_colour(hash_: str) -> tuple[int, int, int]:
    pixels = blurhash.decode(hash_, 8, 8)
    flat = [p for row in pixels for p in row]
    return tuple(round(sum(p[i] for p in flat) / len(flat)) for i in range(3))  # type: ignore[return-value]


def near(a: tuple[int, ...], b: tuple[int, ...], within: int = 12) -> bool:
    return all(abs(x - y) <= within for x, y in zip(a, b, strict=True))


def test_widths_are_capped_at_the_image_and_never_repeated() -> None:
    assert preview_widths(4000, (400, 1200)) == [400, 1200]
    assert preview_widths(800, (400, 1200)) == [400, 800]
    assert preview_widths(400, (400, 1200)) == [400]
    assert preview_widths(120, (400, 1200)) == [120]


async def test_an_image_gets_webp_previews_and_a_blurhash(settings: Settings) -> None:
    red = image(1600, 900, (220, 20, 30), "PNG")
    async with running_app(settings) as client:
        a = await signup(client)
        r = await post_form(a, {"content": "red"}, [("media", "r.png", red, "image/png")])
        assert r.status_code == 201, r.text
        [m] = r.json()["media"]
        assert [(p["width"], p["height"]) for p in m["previews"]] == [(400, 225), (1200, 675)]
        assert m["preview_url"] == m["previews"][0]["url"] != m["url"]
        for p in m["previews"]:
            webp = await fetch_webp(client, p["url"])
            assert webp.size == (p["width"], p["height"])
            assert near(webp.convert("RGB").getpixel((10, 10)), (220, 20, 30))  # type: ignore[arg-type]
        assert blurhash.components(m["blurhash"]) == (4, 3)
        assert near(decoded_colour(m["blurhash"]), (220, 20, 30))
        # The original is untouched.
        assert (await client.get(m["url"])).content == red


async def test_a_small_image_is_never_upscaled_and_orientation_is_applied(settings: Settings) -> None:
    async with running_app(settings) as client:
        a = await signup(client)
        small = image(120, 80, (10, 200, 40), "GIF")
        turned = s.jpeg(800, 600, orientation=6)  # shown 600 x 800
        r = await post_form(
            a, {"content": "s"}, [("media", "s.gif", small, "image/gif"), ("media", "t.jpg", turned, "image/jpeg")]
        )
        assert r.status_code == 201, r.text
        gif, jpeg = r.json()["media"]
        assert [(p["width"], p["height"]) for p in gif["previews"]] == [(120, 80)]
        assert (await fetch_webp(client, gif["preview_url"])).size == (120, 80)
        assert near(decoded_colour(gif["blurhash"]), (10, 200, 40), within=20)
        assert (jpeg["width"], jpeg["height"]) == (600, 800)
        assert [(p["width"], p["height"]) for p in jpeg["previews"]] == [(400, 533), (600, 800)]
        assert (await fetch_webp(client, jpeg["preview_url"])).size == (400, 533)


async def test_video_and_audio_get_none(settings: Settings) -> None:
    async with running_app(settings) as client:
        a = await signup(client)
        mp4 = s.pad(s.ftyp(b"isom", b"isom", b"avc1"), 10_000)
        r = await post_form(a, {"content": "v"}, [("media", "v.mp4", mp4, "video/mp4")])
        [m] = r.json()["media"]
        assert m["content_type"] == "video/mp4"
        assert not {"preview_url", "blurhash", "previews"} & set(m)


async def wait_for_previews(who: Account, post_id: str, within: float = 30.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        post: dict[str, Any] = (await who.get(f"/posts/{post_id}")).json()
        if all("preview_url" in m for m in post["media"]):
            return post
        assert loop.time() < deadline, post
        await asyncio.sleep(0.1)


async def test_a_large_image_is_done_off_the_request_by_the_worker(settings: Settings, database_url: str) -> None:
    big = image(2400, 1600, (30, 40, 200), "JPEG", quality=85)
    assert 2400 * 1600 > INLINE_PIXELS
    async with running_app(settings) as client:
        a = await signup(client)
        r = await post_form(a, {"content": "big"}, [("media", "b.jpg", big, "image/jpeg")])
        assert r.status_code == 201, r.text
        post = r.json()
        # Not made in the request: the answer comes before the worker is done.
        assert "preview_url" not in post["media"][0]
        done = await wait_for_previews(a, post["id"])
        [m] = done["media"]
        assert [(p["width"], p["height"]) for p in m["previews"]] == [(400, 267), (1200, 800)]
        assert (await fetch_webp(client, m["previews"][1]["url"])).size == (1200, 800)
        assert near(decoded_colour(m["blurhash"]), (30, 40, 200), within=20)
    async with connected(database_url) as db:
        assert await db.fetchval("SELECT previews_pending FROM media WHERE id = $1", int(m["id"])) is False


async def test_a_pending_image_left_by_a_dead_process_is_done_by_the_next(
    settings: Settings, database_url: str
) -> None:
    async with running_app(settings) as client:
        a = await signup(client)
        r = await post_form(
            a, {"content": "p"}, [("media", "p.png", image(640, 480, (250, 250, 0), "PNG"), "image/png")]
        )
        [m] = r.json()["media"]
        post_id = r.json()["id"]
    media_id = int(m["id"])
    async with connected(database_url) as db:
        # What a process that died after committing the post, and another whose claim
        # lapsed, leave: the row pending, claimed ten minutes ago, without previews.
        await db.execute("DELETE FROM media_previews WHERE media_id = $1", media_id)
        await db.execute(
            """UPDATE media SET previews_pending = true, blurhash = NULL,
                                previews_claimed_at = now() - interval '10 minutes' WHERE id = $1""",
            media_id,
        )
    async with running_app(settings) as client:
        a.client = client
        done = await wait_for_previews(a, post_id)
        [again] = done["media"]
        assert [p["width"] for p in again["previews"]] == [400, 640]
        assert near(decoded_colour(again["blurhash"]), (250, 250, 0), within=20)


async def test_a_claim_in_force_is_left_alone(settings: Settings, database_url: str) -> None:
    """Another live worker's claim (not lapsed) is not taken: no image is done twice."""
    async with running_app(settings) as client:
        a = await signup(client)
        r = await post_form(a, {"content": "p"}, [("media", "p.png", image(64, 64, (0, 0, 0), "PNG"), "image/png")])
        media_id = int(r.json()["media"][0]["id"])
    async with connected(database_url) as db:
        await db.execute(
            "UPDATE media SET previews_pending = true, previews_claimed_at = now() WHERE id = $1", media_id
        )
        async with pool(database_url) as database:
            store = PreviewStore(database)
            assert media_id not in [p.media_id for p in await store.claim_pending(300, 100)]
            await db.execute(
                "UPDATE media SET previews_claimed_at = now() - interval '301 seconds' WHERE id = $1", media_id
            )
            assert media_id in [p.media_id for p in await store.claim_pending(300, 100)]
            assert media_id not in [p.media_id for p in await store.claim_pending(300, 100)]
        await db.execute("UPDATE media SET previews_pending = false WHERE id = $1", media_id)
