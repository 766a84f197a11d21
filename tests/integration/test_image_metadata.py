"""Uploaded photos lose where, when and on what they were taken, as posts and as avatars.

Through the whole app (real PostgreSQL, the disk media store): what `GET /media/{key}`
serves is read back with Pillow and searched byte for byte for the camera's words.
"""

from __future__ import annotations

import io
import pathlib
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from PIL import ExifTags, Image

from socialhub.config import Settings
from socialhub.domain.filetypes import image_size
from socialhub.services.scrubber import MAX_IMAGE_PIXELS
from tests import media_samples as s
from tests.conftest import connected, error_code, signup
from tests.integration.test_posts import assert_no_trace, post_form, row_counts

# Tags that must not survive: the pointers to the GPS and Exif sub-IFDs, device, time.
LEAKY_TAGS = (
    ExifTags.Base.GPSInfo,
    ExifTags.Base.ExifOffset,
    ExifTags.Base.Make,
    ExifTags.Base.Model,
    ExifTags.Base.DateTime,
)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    async with connected(database_url) as conn:
        yield conn


@pytest.fixture
def media_root(make_settings: Callable[..., Settings]) -> pathlib.Path:
    return make_settings().data_path / "media"


def png_chunks(data: bytes) -> list[bytes]:
    pos, kinds = 8, []
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kinds.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return kinds


def assert_clean(data: bytes, *, orientation: int | None, icc: bool) -> Image.Image:
    """No secret in the bytes; EXIF holds the orientation at most; the ICC profile as asked."""
    assert [x for x in s.SECRETS if x in data] == []
    image = Image.open(io.BytesIO(data))
    image.load()
    exif = image.getexif()
    assert dict(exif) == ({ExifTags.Base.Orientation: orientation} if orientation else {})
    assert not any(tag in exif for tag in LEAKY_TAGS)
    assert exif.get_ifd(ExifTags.IFD.GPSInfo) == {} and exif.get_ifd(ExifTags.IFD.Exif) == {}
    assert (image.info.get("icc_profile") == s.icc_profile()) is icc
    return image


async def served(client: httpx.AsyncClient, media: dict[str, Any]) -> bytes:
    got = await client.get(media["url"])
    assert got.status_code == 200
    assert media["size"] == len(got.content)  # the recorded size is the stored file's
    assert got.headers["content-type"] == media["content_type"]
    return got.content


async def test_a_jpeg_with_gps_as_a_post_and_as_an_avatar(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    photo = s.photo_jpeg(80, 60, orientation=6)
    assert all(x in photo for x in s.SECRETS)
    r = await post_form(a, {"content": "holiday"}, [("media", "IMG_0001.jpg", photo, "image/jpeg")])
    assert r.status_code == 201, r.text
    (media,) = r.json()["media"]
    assert (media["width"], media["height"]) == (60, 80)  # turned by its orientation
    data = await served(client, media)
    image = assert_clean(data, orientation=6, icc=True)
    assert image.size == (80, 60) and "xmp" not in image.info and "comment" not in image.info
    assert data.count(b"\xff\xd8") == 1  # the appended second image is gone

    r = await a.patch("/users/me", files={"avatar": ("me.jpg", photo, "image/jpeg")})
    assert r.status_code == 200, r.text
    got = await client.get(r.json()["avatar_url"])
    assert got.status_code == 200
    assert got.content == data  # the same filter: the same bytes


async def test_a_png_with_text_chunks_and_exif_as_a_post_and_as_an_avatar(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    photo = s.photo_png(40, 30, orientation=8)
    assert {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME", b"iCCP"} <= set(png_chunks(photo))
    r = await post_form(a, {"content": "screenshot"}, [("media", "s.png", photo, "image/png")])
    assert r.status_code == 201, r.text
    (media,) = r.json()["media"]
    assert (media["width"], media["height"]) == (30, 40)
    data = await served(client, media)
    assert_clean(data, orientation=8, icc=True)
    assert png_chunks(data) == [b"IHDR", b"iCCP", b"eXIf", b"IDAT", b"IEND"]

    r = await a.patch("/users/me", files={"avatar": ("me.png", photo, "image/png")})
    assert r.status_code == 200, r.text
    assert (await client.get(r.json()["avatar_url"])).content == data


async def test_animations_stay_animated_and_lose_their_metadata(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    files = [
        ("media", "a.webp", s.photo_webp(frames=3), "image/webp"),
        ("media", "b.gif", s.photo_gif(frames=3), "image/gif"),
    ]
    r = await post_form(a, {"content": "moving"}, files)
    assert r.status_code == 201, r.text
    webp, gif = r.json()["media"]
    image = assert_clean(await served(client, webp), orientation=3, icc=True)
    assert getattr(image, "n_frames", 1) == 3 and image.info["loop"] == 0 and "xmp" not in image.info
    assert (webp["width"], webp["height"]) == (48, 32)
    image = assert_clean(await served(client, gif), orientation=None, icc=False)
    assert getattr(image, "n_frames", 1) == 3 and image.info["loop"] == 0 and "comment" not in image.info
    assert (gif["width"], gif["height"]) == (30, 20)


async def test_avif_metadata_items_are_blanked_in_place(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    photo = s.photo_avif()
    r = await post_form(a, {"content": "avif"}, [("media", "a.avif", photo, "image/avif")])
    assert r.status_code == 201, r.text
    (media,) = r.json()["media"]
    data = await served(client, media)
    assert len(data) == len(photo)  # nothing moved
    assert_clean(data, orientation=None, icc=False)
    assert (media["width"], media["height"]) == (32, 24)


async def test_an_unreadable_image_fails_the_whole_post(
    client: httpx.AsyncClient, db: asyncpg.Connection, media_root: pathlib.Path
) -> None:
    a = await signup(client)
    good = s.photo_jpeg(trailer=False)
    for bad in (good[: len(good) - 200], good[:-2] + b"\x00" * 4, s.photo_png()[:300]):
        r = await post_form(
            a, {"content": "x"}, [("media", "ok.png", s.png(), "image/png"), ("media", "bad.jpg", bad, "image/jpeg")]
        )
        assert r.status_code == 415 and error_code(r) == "unsupported_media_type", r.text
        assert "bad.jpg" in r.json()["error"]["message"]
        await assert_no_trace(db, media_root, a)
    # An avatar too: 415, and the profile as it was.
    r = await a.patch("/users/me", files={"avatar": ("me.jpg", good[:-300], "image/jpeg")})
    assert r.status_code == 415
    assert (await a.get("/users/me")).json()["avatar_url"] is None


async def test_a_decompression_bomb_is_422(
    client: httpx.AsyncClient, db: asyncpg.Connection, media_root: pathlib.Path
) -> None:
    a = await signup(client)
    # The PNG header says 10000 x 10000: refused from its header.
    bomb_png = s.png(10_000, 10_000)[:33] + s.png(1, 1)[33:]
    # A JPEG whose size is out of the header's reach (past 64 KiB): refused when Pillow opens it.
    small = s.jpeg(100, 100, app_padding=65_500)
    sof = small.index(b"\xff\xc0")
    bomb_jpeg = small[: sof + 5] + struct.pack(">HH", 9000, 9000) + small[sof + 9 :]
    assert 9000 * 9000 > MAX_IMAGE_PIXELS and image_size(bomb_jpeg, "image/jpeg") is None
    for bomb in (bomb_png, bomb_jpeg):
        r = await post_form(a, {"content": "x"}, [("media", "b.img", bomb, "image/png")])
        assert r.status_code == 422 and error_code(r) == "validation_error", r.text
        assert r.json()["error"]["fields"] == {"media": f"'b.img' is over {MAX_IMAGE_PIXELS} pixels"}
        await assert_no_trace(db, media_root, a)
    assert await row_counts(db, a.id) == {"posts": 0, "media": 0, "events": 0, "posts_count": 0}
