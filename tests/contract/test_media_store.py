"""The MediaStore contract, run over every implementation: disk, and S3 against a real
S3-protocol server (moto's standalone server, over HTTP; tests/s3_server.py) with a
fresh bucket per test.

The tests only use the port, so "nothing left over" is checked with `list_keys` and
`sweep_staging`, never by looking at files or objects. Disk-only and S3-only checks
are at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
import time
import tracemalloc
from collections.abc import AsyncIterator

import httpx
import pytest

from socialhub.infra.media.base import MediaStore, StagedFile, is_media_key, new_media_key
from socialhub.infra.media.disk import DiskMediaStore
from socialhub.infra.media.s3 import PART_SIZE, SPOOL_MEMORY, S3MediaStore
from tests.s3_server import S3Server, drop_bucket, new_bucket

DATA = b"".join(bytes([i]) * 1000 for i in range(256))  # 256 kB, every byte value


def s3_store(server: S3Server, bucket: str, **options: str) -> S3MediaStore:
    cfg = server.settings(bucket)
    return S3MediaStore(
        bucket=bucket,
        endpoint=cfg["s3_endpoint"],
        region=cfg["s3_region"],
        access_key=cfg["s3_access_key"],
        secret_key=cfg["s3_secret_key"],
        **options,
    )


@pytest.fixture(params=["disk", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[MediaStore]:
    if request.param == "disk":
        disk = DiskMediaStore(tmp_path / "media")
        yield disk
        await disk.close()
        return
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = await new_bucket(server)
    s3 = s3_store(server, bucket)
    yield s3
    await s3.close()
    await drop_bucket(server, bucket)


async def staged_with(store: MediaStore, data: bytes, chunk: int = 64 * 1024) -> StagedFile:
    staged = await store.stage()
    for i in range(0, len(data), chunk):
        await staged.write(data[i : i + chunk])
    return staged


async def read_all(store: MediaStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    stored = await store.open(key)
    assert stored is not None
    return b"".join([c async for c in stored.read(start, stored.size if end is None else end)])


async def keys(store: MediaStore, older_than: float = 0) -> list[str]:
    return [k async for k in store.list_keys(older_than)]


def test_new_keys_are_random_and_valid() -> None:
    made = {new_media_key() for _ in range(1000)}
    assert len(made) == 1000
    assert all(is_media_key(k) and len(k) >= 22 for k in made)
    for bad in (
        "",
        "short",
        "a" * 15,
        "a" * 65,
        "../../etc/passwd",
        "a" * 20 + "/",
        "a" * 20 + ".meta",
        ".staging" + "a" * 10,
        "a" * 20 + "\x00",
        "é" * 20,
        "a" * 20 + " ",
    ):
        assert not is_media_key(bad), bad


async def test_stage_write_commit_open_read(store: MediaStore) -> None:
    staged = await staged_with(store, DATA)
    assert staged.size == len(DATA)
    assert staged.sha256 == hashlib.sha256(DATA).hexdigest()
    key = new_media_key()
    # Not visible before commit, however much was written.
    assert await store.open(key) is None
    await store.commit(staged, key, "image/png")
    stored = await store.open(key)
    assert stored is not None
    assert (stored.key, stored.size, stored.content_type) == (key, len(DATA), "image/png")
    assert stored.etag == hashlib.sha256(DATA).hexdigest()
    assert abs(stored.mtime - time.time()) < 60
    assert await read_all(store, key) == DATA


async def test_reads_come_in_bounded_chunks_and_ranges_are_exact(store: MediaStore) -> None:
    big = os.urandom(3 * 1024 * 1024)
    key = new_media_key()
    await store.commit(await staged_with(store, big, chunk=1024 * 1024), key, "video/mp4")
    stored = await store.open(key)
    assert stored is not None
    chunks = [c async for c in stored.read(0, stored.size)]
    assert len(chunks) > 1 and max(map(len, chunks)) <= 1024 * 1024
    assert b"".join(chunks) == big
    for start, end in ((0, 1), (0, 0), (100, 200), (len(big) - 1, len(big)), (12345, 2_000_000), (len(big), len(big))):
        assert await read_all(store, key, start, end) == big[start:end]
    for start, end in ((-1, 10), (10, 5), (0, len(big) + 1)):
        with pytest.raises(ValueError):
            [c async for c in stored.read(start, end)]


async def test_empty_file(store: MediaStore) -> None:
    key = new_media_key()
    staged = await store.stage()
    assert staged.size == 0 and staged.sha256 == hashlib.sha256(b"").hexdigest()
    await store.commit(staged, key, "audio/mpeg")
    stored = await store.open(key)
    assert stored is not None and stored.size == 0
    assert await read_all(store, key) == b""


async def test_malformed_keys_are_refused_not_resolved(store: MediaStore) -> None:
    for bad in ("../../../etc/passwd", "..", "a/b" * 8, "x" * 10, "", "a" * 20 + ".meta", ".staging"):
        assert await store.open(bad) is None
        with pytest.raises(ValueError):
            await store.delete(bad)
        staged = await staged_with(store, b"data")
        with pytest.raises(ValueError):
            await store.commit(staged, bad, "image/png")
        await staged.discard()
    assert await keys(store) == []
    assert await store.sweep_staging(0) == 0


async def test_unknown_key_is_none_and_delete_is_idempotent(store: MediaStore) -> None:
    key = new_media_key()
    assert await store.open(key) is None
    await store.delete(key)
    await store.commit(await staged_with(store, b"abc"), key, "image/gif")
    assert key in await keys(store)
    await store.delete(key)
    await store.delete(key)
    assert await store.open(key) is None
    assert key not in await keys(store)


async def test_a_key_is_never_overwritten(store: MediaStore) -> None:
    key = new_media_key()
    await store.commit(await staged_with(store, b"first"), key, "image/png")
    second = await staged_with(store, b"second")
    with pytest.raises(FileExistsError):
        await store.commit(second, key, "image/png")
    assert await read_all(store, key) == b"first"
    await second.discard()
    assert await store.sweep_staging(0) == 0


async def test_discard_is_idempotent_and_leaves_nothing(store: MediaStore) -> None:
    staged = await staged_with(store, DATA)
    await staged.discard()
    await staged.discard()
    with pytest.raises(RuntimeError):
        await staged.write(b"more")
    with pytest.raises(RuntimeError):
        await store.commit(staged, new_media_key(), "image/png")
    assert await keys(store) == []
    assert await store.sweep_staging(0) == 0


async def test_after_commit_the_staged_file_is_closed_and_discard_is_a_no_op(store: MediaStore) -> None:
    key = new_media_key()
    staged = await staged_with(store, b"kept")
    await store.commit(staged, key, "image/webp")
    with pytest.raises(RuntimeError):
        await staged.write(b"x")
    with pytest.raises(RuntimeError):
        await store.commit(staged, new_media_key(), "image/webp")
    await staged.discard()
    assert await read_all(store, key) == b"kept"
    assert await store.sweep_staging(0) == 0


async def test_list_keys_by_age(store: MediaStore) -> None:
    committed = set()
    for _ in range(5):
        key = new_media_key()
        await store.commit(await staged_with(store, key.encode()), key, "image/png")
        committed.add(key)
    pending = await staged_with(store, b"not yet")
    listed = await keys(store, 0)
    assert set(listed) == committed and len(listed) == 5
    assert await keys(store, 3600) == []
    await pending.discard()


async def test_sweep_staging_takes_only_abandoned_files(store: MediaStore) -> None:
    live = await staged_with(store, b"being written")
    abandoned = [await staged_with(store, b"x" * 100) for _ in range(3)]
    # Nothing is old enough yet.
    assert await store.sweep_staging(3600) == 0
    key = new_media_key()
    await live.write(b" still")
    await store.commit(live, key, "audio/ogg")
    assert await store.sweep_staging(0) == len(abandoned)
    assert await store.sweep_staging(0) == 0
    for staged in abandoned:
        await staged.discard()  # still safe after the sweep took the file
    assert await read_all(store, key) == b"being written still"


async def test_concurrent_uploads_do_not_mix(store: MediaStore) -> None:
    blobs = [os.urandom(200_000 + i) for i in range(8)]

    async def upload(blob: bytes) -> str:
        key = new_media_key()
        await store.commit(await staged_with(store, blob, chunk=7_000), key, "image/png")
        return key

    stored_keys = await asyncio.gather(*(upload(b) for b in blobs))
    for key, blob in zip(stored_keys, blobs, strict=True):
        assert await read_all(store, key) == blob


# -- DiskMediaStore specifics -------------------------------------------------------------


async def test_disk_layout_and_sidecar(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "media"
    store = DiskMediaStore(root)
    staged = await staged_with(store, b"bytes")
    staging = list((root / ".staging").iterdir())
    assert len(staging) == 1 and staging[0].suffix == ".part"
    key = "AbCdEfGhIjKlMnOpQrStUv"
    await store.commit(staged, key, "image/png")
    assert list((root / ".staging").iterdir()) == []
    path = root / "Ab" / "Cd" / key
    assert path.read_bytes() == b"bytes"
    assert b'"content_type":"image/png"' in path.with_name(key + ".meta").read_bytes()
    # A data file without its sidecar (a crash mid-commit) is not served.
    path.with_name(key + ".meta").unlink()
    assert await store.open(key) is None
    # Nothing outside the root can be named, whatever the key.
    for bad in ("../" * 8 + "etc/passwd", "/etc/passwd", "Ab/../../x" * 3):
        with pytest.raises(ValueError):
            store.path_of(bad)


async def test_disk_sweep_uses_the_last_write_time(tmp_path: pathlib.Path) -> None:
    store = DiskMediaStore(tmp_path / "media")
    staged = await staged_with(store, b"old")
    (part,) = (tmp_path / "media" / ".staging").iterdir()
    past = time.time() - 7200
    os.utime(part, (past, past))
    assert await store.sweep_staging(3600) == 1
    assert not part.exists()
    await staged.discard()


async def test_disk_age_counts_from_the_commit_not_the_last_write(tmp_path: pathlib.Path) -> None:
    store = DiskMediaStore(tmp_path / "media")
    staged = await staged_with(store, b"slow upload")
    (part,) = (tmp_path / "media" / ".staging").iterdir()
    past = time.time() - 7200
    os.utime(part, (past, past))
    key = new_media_key()
    await store.commit(staged, key, "image/png")
    assert await keys(store, 3600) == []
    stored = await store.open(key)
    assert stored is not None and abs(stored.mtime - time.time()) < 60


# -- S3MediaStore specifics (against the real S3-protocol server) -------------------------


@pytest.fixture
async def bucket(s3_server: S3Server) -> AsyncIterator[str]:
    name = await new_bucket(s3_server)
    yield name
    await drop_bucket(s3_server, name)


async def _uploads(server: S3Server, bucket: str) -> list[dict[str, object]]:
    async with server.client() as client:
        got = await client.list_multipart_uploads(Bucket=bucket)
    return list(got.get("Uploads", []))


async def _objects(server: S3Server, bucket: str) -> list[str]:
    async with server.client() as client:
        got = await client.list_objects_v2(Bucket=bucket)
    return [o["Key"] for o in got.get("Contents", [])]


async def test_s3_large_upload_goes_up_in_parts_while_it_is_written(s3_server: S3Server, bucket: str) -> None:
    store = s3_store(s3_server, bucket)
    data = os.urandom(2 * PART_SIZE + 12345)
    staged = await store.stage()
    # A small file sends nothing before commit (one PutObject then).
    await staged.write(data[:1000])
    assert await _uploads(s3_server, bucket) == [] and await _objects(s3_server, bucket) == []
    for i in range(1000, len(data), 1 << 20):
        await staged.write(data[i : i + (1 << 20)])
    # Past one part: a multipart upload under .staging/, invisible to readers.
    (upload,) = await _uploads(s3_server, bucket)
    assert str(upload["Key"]).startswith(".staging/")
    key = new_media_key()
    assert await store.open(key) is None
    await store.commit(staged, key, "video/mp4")
    # Only the file is left: the upload completed, was copied to its key, and its staging object deleted.
    assert await _uploads(s3_server, bucket) == [] and await _objects(s3_server, bucket) == [key]
    async with s3_server.client() as client:
        head = await client.head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "video/mp4" and head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert await read_all(store, key) == data
    assert await read_all(store, key, PART_SIZE - 5, PART_SIZE + 5) == data[PART_SIZE - 5 : PART_SIZE + 5]
    await store.close()


async def test_s3_discarding_a_large_upload_aborts_it(s3_server: S3Server, bucket: str) -> None:
    store = s3_store(s3_server, bucket)
    staged = await staged_with(store, os.urandom(PART_SIZE + 10), chunk=1 << 20)
    assert len(await _uploads(s3_server, bucket)) == 1
    await staged.discard()
    assert await _uploads(s3_server, bucket) == [] and await _objects(s3_server, bucket) == []
    await store.close()


async def test_s3_a_crashed_instances_upload_is_swept_by_another(s3_server: S3Server, bucket: str) -> None:
    crashed, survivor = s3_store(s3_server, bucket), s3_store(s3_server, bucket)
    # The first instance dies mid-upload: its multipart upload stays in the bucket.
    await staged_with(crashed, os.urandom(PART_SIZE + 10), chunk=1 << 20)
    await crashed.close()
    await asyncio.sleep(2.5)
    live = await staged_with(survivor, os.urandom(PART_SIZE + 10), chunk=1 << 20)
    assert len(await _uploads(s3_server, bucket)) == 2
    assert await survivor.sweep_staging(3600) == 0
    # Only the dead one (begun over 2 s ago) goes; the survivor's own upload, just
    # written to, is kept.
    await live.write(b"more")
    assert await survivor.sweep_staging(2) == 1
    remaining = await _uploads(s3_server, bucket)
    assert len(remaining) == 1
    await live.discard()
    await survivor.close()


async def test_s3_prefix_keeps_keys_apart_and_presigned_urls_read_the_bytes(s3_server: S3Server, bucket: str) -> None:
    store = s3_store(s3_server, bucket, prefix="media/")
    other = s3_store(s3_server, bucket, prefix="other/")
    key = new_media_key()
    data = os.urandom(5000)
    await store.commit(await staged_with(store, data), key, "image/png")
    await other.commit(await staged_with(other, b"x"), new_media_key(), "image/png")
    assert await _objects(s3_server, bucket) != [] and f"media/{key}" in await _objects(s3_server, bucket)
    assert await keys(store) == [key]
    url = await store.presigned_url(key)
    async with httpx.AsyncClient() as http:
        got = await http.get(url)
        ranged = await http.get(url, headers={"Range": "bytes=10-19"})
    assert got.status_code == 200 and got.content == data and got.headers["content-type"] == "image/png"
    assert ranged.status_code == 206 and ranged.content == data[10:20]
    assert await store.ping()
    await store.close()
    await other.close()


async def test_s3_an_upload_never_holds_more_than_a_little_memory(s3_server: S3Server, bucket: str) -> None:
    store = s3_store(s3_server, bucket)
    assert await store.ping()  # the client is made first (botocore loads S3's API model: megabytes)
    for size in (4 * 1024 * 1024, 2 * PART_SIZE + 12345):  # one PutObject from a temp file; three parts
        data = os.urandom(size)
        chunks = [data[i : i + 64 * 1024] for i in range(0, len(data), 64 * 1024)]
        staged = await store.stage()
        tracemalloc.start()
        try:
            for chunk in chunks:
                await staged.write(chunk)
            key = new_media_key()
            await store.commit(staged, key, "audio/ogg")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The in-memory head of a part, and the HTTP client's reads of the temp file (botocore
        # hashes a body for its signature 1 MiB at a time over plain HTTP), whatever the size.
        assert peak < SPOOL_MEMORY + 3 * 1024 * 1024, (size, peak)
        assert await read_all(store, key) == data
    await store.close()
