"""Media in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, Cloudflare R2), over aiobotocore.

Why aiobotocore rather than obstore: the store needs S3 calls that obstore's generic
object-store API does not expose: ListMultipartUploads and AbortMultipartUpload (the
staging sweep after a crash), CopyObject with replaced metadata (commit), user metadata
on HEAD (the SHA-256 ETag), and presigned GET URLs. aiobotocore is botocore (the AWS
SDK's own request signing, retries, endpoint and credential chain, so IAM roles and
env credentials work) on aiohttp, kept by aio-libs in step with botocore.

Layout in the bucket, under `prefix` (empty by default):

    <prefix><key>                 a committed file: Content-Type, x-amz-meta-sha256
    <prefix>.staging/<time>-<random>  a large upload in progress (a multipart upload),
                                  or its completed object between commit's two steps;
                                  <time> is when it began, in Unix seconds

Keys cannot contain "." or "/", so a staging name never collides with a key, and a
`public_base_url` of `https://cdn.example/<prefix>` serves `<base>/<key>` directly.

The life of a staged file (see base.py):

- Bytes are gathered into a part of PART_SIZE (5 MiB, S3's smallest): the first
  SPOOL_MEMORY (256 KiB) in memory, the rest in an anonymous temp file, so no upload
  holds more memory than that, however large. A file that ends within one part is sent
  by commit in one PutObject to its final key: one request, and nothing in the bucket
  before commit.
- Past PART_SIZE, a multipart upload is created under `.staging/`, and every full part
  is sent as the upload goes on: the bytes travel while the client still sends.
  Commit sends the last part, completes the upload, copies it server-side to its key
  with its content type and SHA-256, and deletes the staging object.
- Discard aborts the multipart upload (or just drops the buffer).

Crashes: a multipart upload left by a killed process is aborted by `sweep_staging`
once older than its age (ListMultipartUploads; the age is read from the name, not from
`Initiated`, which some S3-compatible servers do not keep), and a staging object left
between complete and delete is deleted the same way; a bucket lifecycle rule
(AbortIncompleteMultipartUpload) is a second net (docs/operations.md). Staged files of
this process idle for longer than the age are dropped too (their buffers released), so a
request hung forever does not hold one forever.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, BinaryIO

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from socialhub.errors import Unavailable

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef
from socialhub.infra.media.base import MediaStore, StagedFile, StoredFile, check_key, is_media_key

logger = logging.getLogger(__name__)

STAGING = ".staging/"
# S3's smallest part (every part but the last).
PART_SIZE = 5 * 1024 * 1024
# What of a part is kept in memory before it goes to a temp file: small files (most
# avatars, thumbnails, voice notes) never touch the disk, big ones never fill the memory.
SPOOL_MEMORY = 256 * 1024
# What each read hands the HTTP response (the disk store's figure).
READ_CHUNK = 64 * 1024
# Connections to the store per instance; aiohttp's pool queues beyond it.
MAX_CONNECTIONS = 50
SHA256_META = "sha256"
_MISSING = frozenset(("404", "NoSuchKey", "NotFound", "NoSuchUpload"))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class StoreUnavailable(Unavailable, OSError):
    """The bucket did not answer or refused: an OSError at the port (storage failures are,
    base.py), and to a client 503 `unavailable`, as any dependency that is down."""


def _os_error(exc: Exception, what: str) -> StoreUnavailable:
    # The detail (endpoint, bucket, S3's message) goes to the log, never to a client.
    logger.warning("S3 %s failed: %s", what, exc)
    return StoreUnavailable("the media store is unavailable")


class _PartBuffer:
    """The bytes of the part being received: in memory up to SPOOL_MEMORY, then in an
    anonymous temp file (written in a worker thread), so no upload holds more than
    SPOOL_MEMORY of memory whatever its size. Sent as a request body as it is: aiohttp
    reads a file body in its executor, and aiobotocore keeps it open for retries."""

    def __init__(self) -> None:
        self.memory = bytearray()
        self.file: BinaryIO | None = None
        self.size = 0

    async def write(self, chunk: bytes) -> None:
        if self.file is None and len(self.memory) + len(chunk) > SPOOL_MEMORY:
            self.file = await asyncio.to_thread(tempfile.TemporaryFile)
            await asyncio.to_thread(self.file.write, bytes(self.memory))
            self.memory = bytearray()
        if self.file is not None:
            await asyncio.to_thread(self.file.write, chunk)
        else:
            self.memory += chunk
        self.size += len(chunk)

    async def body(self) -> bytes | BinaryIO:
        if self.file is None:
            return bytes(self.memory)
        await asyncio.to_thread(self.file.seek, 0)
        return self.file

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.file, self.memory, self.size = None, bytearray(), 0


class S3StagedFile(StagedFile):
    """An upload being received: a part buffer, then a multipart upload under `.staging/`."""

    def __init__(self, store: S3MediaStore, name: str) -> None:
        super().__init__()
        self.store = store
        self.name = name
        self._part = _PartBuffer()
        self.upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self.committed = False
        self.discarded = False
        self.touched = time.time()
        self._lock = asyncio.Lock()

    @property
    def done(self) -> bool:
        return self.committed or self.discarded

    async def write(self, chunk: bytes) -> None:
        if self.done:
            raise RuntimeError("the staged file was committed or discarded")
        if not chunk:
            return
        self.touched = time.time()
        async with self._lock:
            try:
                await self._part.write(chunk)
                self._count(chunk)
                if self._part.size >= PART_SIZE:
                    await self._send_part()
            except BaseException:
                await self._drop()
                raise

    async def _send_part(self) -> None:
        client = await self.store.client()
        bucket = self.store.bucket
        try:
            if self.upload_id is None:
                created = await client.create_multipart_upload(Bucket=bucket, Key=self.name)
                self.upload_id = str(created["UploadId"])
            number = len(self._parts) + 1
            sent = await client.upload_part(
                Bucket=bucket, Key=self.name, UploadId=self.upload_id, PartNumber=number, Body=await self._part.body()
            )
        except (ClientError, BotoCoreError) as exc:
            raise _os_error(exc, "upload part") from exc
        finally:
            self._part.close()
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def release(self) -> None:
        """Free the buffer and leave the store's list of live uploads."""
        self.store.forget(self)
        self._part.close()

    async def _drop(self) -> None:
        self.discarded = True
        self.release()
        if self.upload_id is not None:
            await self.store.abort(self.name, self.upload_id)

    async def discard(self) -> None:
        if self.done:
            return
        await self._drop()

    async def finish_into(self, final: str, content_type: str) -> None:
        """Put the bytes under `final` (commit's work; the store checked the key is free)."""
        client = await self.store.client()
        bucket = self.store.bucket
        meta = {SHA256_META: self.sha256}
        if self.upload_id is None:
            try:
                await client.put_object(
                    Bucket=bucket, Key=final, Body=await self._part.body(), ContentType=content_type, Metadata=meta
                )
            except (ClientError, BotoCoreError) as exc:
                raise _os_error(exc, "put") from exc
            finally:
                self._part.close()
            return
        completed = False
        try:
            if self._part.size:
                await self._send_part()
            await client.complete_multipart_upload(
                Bucket=bucket, Key=self.name, UploadId=self.upload_id, MultipartUpload={"Parts": self._parts}
            )
            completed = True
            # Server-side: the bytes do not come back through this process. S3's CopyObject
            # takes up to 5 GiB, far above media.max_file_bytes.
            await client.copy_object(
                Bucket=bucket,
                Key=final,
                CopySource={"Bucket": bucket, "Key": self.name},
                MetadataDirective="REPLACE",
                ContentType=content_type,
                Metadata=meta,
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            if not completed:
                await self.store.abort(self.name, self.upload_id)
            else:
                await self.store.delete_staging(self.name)
            if isinstance(exc, OSError):
                raise
            raise _os_error(exc, "commit") from exc
        await self.store.delete_staging(self.name)


class S3StoredFile(StoredFile):
    def __init__(self, store: S3MediaStore, name: str, key: str, size: int, content_type: str, etag: str, mtime: float):
        super().__init__(key=key, size=size, content_type=content_type, etag=etag, mtime=mtime)
        self.store = store
        self.name = name

    async def read(self, start: int, end: int) -> AsyncIterator[bytes]:
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"bad range [{start}, {end}) for a file of {self.size} bytes")
        if start == end:
            return
        client = await self.store.client()
        try:
            got = await client.get_object(Bucket=self.store.bucket, Key=self.name, Range=f"bytes={start}-{end - 1}")
        except (ClientError, BotoCoreError) as exc:
            raise _os_error(exc, f"get {self.key}") from exc
        body = got["Body"]
        received = 0
        try:
            while received < end - start:
                try:
                    chunk = await body.read(min(READ_CHUNK, end - start - received))
                except (TimeoutError, OSError, BotoCoreError) as exc:
                    raise _os_error(exc, f"read {self.key}") from exc
                if not chunk:
                    # Stored files never change: a short body is damage, never a whole file.
                    raise OSError(f"S3 object {self.name} ended after {received} of {end - start} bytes")
                received += len(chunk)
                yield chunk
        finally:
            body.close()


class S3MediaStore(MediaStore):
    """Files in `bucket` under `prefix`; see the module docstring.

    `endpoint` is the store's URL (empty: AWS's own endpoints for `region`); empty keys
    fall back to botocore's credential chain (AWS_* variables, an instance or pod role).
    The bucket is the operator's to create (with its lifecycle rule); `ping` checks it.
    """

    def __init__(
        self,
        *,
        bucket: str,
        endpoint: str = "",
        region: str = "",
        access_key: str = "",
        secret_key: str = "",
        prefix: str = "",
        presign_ttl: float = 3600.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.staging = prefix + STAGING
        self.presign_ttl = presign_ttl
        self._options: dict[str, Any] = {
            "endpoint_url": endpoint or None,
            "region_name": region or None,
            "aws_access_key_id": access_key or None,
            "aws_secret_access_key": secret_key or None,
            "config": AioConfig(
                # Path-style works on every S3-compatible server (MinIO, Ceph, moto) and
                # needs no wildcard DNS; AWS accepts it too.
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=MAX_CONNECTIONS,
                connect_timeout=5,
                read_timeout=30,
                # Checksums only where S3 requires them: several S3-compatible servers
                # refuse the CRC headers newer botocore sends by default.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        }
        self._client: S3Client | None = None
        self._stack = AsyncExitStack()
        self._opening = asyncio.Lock()
        self._live: set[S3StagedFile] = set()

    async def client(self) -> S3Client:
        """The aiobotocore client, made on first use (it must be made inside the loop)."""
        if self._client is None:
            async with self._opening:
                if self._client is None:
                    session = get_session()
                    self._client = await self._stack.enter_async_context(session.create_client("s3", **self._options))
        return self._client

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()
        self._stack = AsyncExitStack()

    def name_of(self, key: str) -> str:
        """The object name of `key` (ValueError for a malformed key)."""
        return self.prefix + check_key(key)

    def forget(self, staged: S3StagedFile) -> None:
        self._live.discard(staged)

    async def abort(self, name: str, upload_id: str) -> None:
        client = await self.client()
        try:
            await client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
        except ClientError as exc:
            if _code(exc) not in _MISSING:
                raise _os_error(exc, "abort") from exc

    async def delete_staging(self, name: str) -> None:
        try:
            await (await self.client()).delete_object(Bucket=self.bucket, Key=name)
        except (ClientError, BotoCoreError):
            # Harmless: the staging sweep deletes it once it is old enough.
            logger.warning("could not delete the staging object %s", name, exc_info=True)

    async def stage(self) -> StagedFile:
        staged = S3StagedFile(self, f"{self.staging}{int(time.time()):010d}-{secrets.token_hex(16)}")
        self._live.add(staged)
        return staged

    async def _exists(self, name: str) -> bool:
        try:
            await (await self.client()).head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            raise _os_error(exc, "head") from exc
        except BotoCoreError as exc:
            raise _os_error(exc, "head") from exc
        return True

    async def commit(self, staged: StagedFile, key: str, content_type: str) -> None:
        final = self.name_of(key)
        if not isinstance(staged, S3StagedFile) or staged.store is not self:
            raise ValueError("the staged file does not belong to this store")
        if staged.done:
            raise RuntimeError("the staged file was committed or discarded")
        # Random 128-bit keys never collide; this guards against a caller reusing one.
        if await self._exists(final):
            raise FileExistsError(f"media key {key} is taken")
        async with staged._lock:
            if staged.done:
                raise RuntimeError("the staged file was committed or discarded")
            try:
                await staged.finish_into(final, content_type)
            except BaseException:
                # finish_into removed what it had sent; the staged file is spent.
                staged.discarded = True
                staged.release()
                raise
            staged.committed = True
        staged.release()

    async def open(self, key: str) -> StoredFile | None:
        if not is_media_key(key):
            return None
        name = self.prefix + key
        try:
            head = await (await self.client()).head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise _os_error(exc, "head") from exc
        except BotoCoreError as exc:
            raise _os_error(exc, "head") from exc
        meta = head.get("Metadata") or {}
        # An object put by other means has no SHA-256; S3's own ETag is a validator too.
        etag = meta.get(SHA256_META) or str(head.get("ETag", "")).strip('"')
        return S3StoredFile(
            self,
            name,
            key,
            size=int(head["ContentLength"]),
            content_type=str(head.get("ContentType") or "application/octet-stream"),
            etag=etag,
            mtime=head["LastModified"].timestamp(),
        )

    async def delete(self, key: str) -> None:
        name = self.name_of(key)
        try:
            await (await self.client()).delete_object(Bucket=self.bucket, Key=name)
        except (ClientError, BotoCoreError) as exc:
            raise _os_error(exc, "delete") from exc

    async def list_keys(self, older_than: float) -> AsyncIterator[str]:
        cutoff = time.time() - older_than
        client = await self.client()
        # The delimiter keeps `.staging/` out as a common prefix: only keys come back.
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/")
        try:
            async for page in pages:
                for obj in page.get("Contents", ()):
                    key = obj["Key"][len(self.prefix) :]
                    if is_media_key(key) and obj["LastModified"].timestamp() <= cutoff:
                        yield key
        except (ClientError, BotoCoreError) as exc:
            raise _os_error(exc, "list") from exc

    async def sweep_staging(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        removed = 0
        for staged in [s for s in self._live if s.touched <= cutoff]:
            await staged.discard()
            removed += 1
        mine = {s.upload_id for s in self._live if s.upload_id is not None}
        client = await self.client()
        try:
            uploads = client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.staging)
            async for page in uploads:
                for upload in page.get("Uploads", ()):
                    if upload["UploadId"] in mine or self._began(upload["Key"]) > cutoff:
                        continue
                    await self.abort(upload["Key"], upload["UploadId"])
                    removed += 1
            objects = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.staging)
            async for listing in objects:
                for obj in listing.get("Contents", ()):
                    if self._began(obj["Key"]) <= cutoff:
                        await client.delete_object(Bucket=self.bucket, Key=obj["Key"])
                        removed += 1
        except (ClientError, BotoCoreError) as exc:
            raise _os_error(exc, "staging sweep") from exc
        if removed:
            logger.info("removed %d abandoned staged media uploads", removed)
        return removed

    def _began(self, name: str) -> float:
        """When a staging upload began, from its name; 0 (long ago) for a name not ours."""
        stamp = name[len(self.staging) :].partition("-")[0]
        return float(stamp) if stamp.isdigit() else 0.0

    async def presigned_url(self, key: str) -> str:
        """A GET URL for `key` signed for `presign_ttl` seconds (no request is made)."""
        client = await self.client()
        url: str = await client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.name_of(key)}, ExpiresIn=int(self.presign_ttl)
        )
        return url

    async def ping(self) -> bool:
        """The bucket answers (for /readyz)."""
        try:
            await (await self.client()).head_bucket(Bucket=self.bucket)
        except (TimeoutError, ClientError, BotoCoreError, OSError):
            return False
        return True


__all__ = ["S3MediaStore"]
