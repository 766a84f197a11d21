"""The media port: where uploaded files live.

Two implementations: `disk.DiskMediaStore` (`data_dir/media`) and `s3.S3MediaStore`
(any S3-compatible store). Both pass the same contract tests
(tests/contract/test_media_store.py).

The life of a file:

    staged = await store.stage()          # a private, writable temp object
    await staged.write(chunk) ...         # streamed; size and SHA-256 kept as it goes
    await store.commit(staged, key, ct)   # atomically readable under `key`
      or  await staged.discard()          # nothing left behind

Readers never see a half-written file: nothing is visible under a key until
`commit` returns. Keys are never reused, so a stored file never changes; that is
what lets the HTTP layer cache it forever and derive a strong ETag from it.

How S3 maps (s3.py; it gives the details):

    stage()        CreateMultipartUpload under a staging prefix, or a local temp
                   file uploaded at commit (small files: one PUT is cheaper)
    write()        buffer to 5 MiB, UploadPart (S3's minimum part size); hash locally
    commit()       CompleteMultipartUpload / PutObject to the final key, with
                   Content-Type and x-amz-meta-sha256 (S3's own ETag is MD5 or a
                   multipart digest, so the SHA-256 goes in metadata)
    discard()      AbortMultipartUpload / remove the temp file
    open()         HeadObject (size, Content-Type, metadata, LastModified)
    read()         GetObject with `Range: bytes=start-(end-1)`, streamed
    delete()       DeleteObject (already idempotent in S3)
    list_keys()    ListObjectsV2 over the prefix, filtered on LastModified
    sweep_staging  ListMultipartUploads + AbortMultipartUpload by Initiated (or a
                   bucket lifecycle rule AbortIncompleteMultipartUpload)

Errors: a malformed key given to `commit` or `delete` is a ValueError (a bug in the
caller; `open` just answers None so a URL can be looked up as is), committing to a
key that exists is FileExistsError, and using a staged file after commit or discard
is RuntimeError. Storage failures are OSError.
"""

from __future__ import annotations

import abc
import hashlib
import re
import secrets
from collections.abc import AsyncIterator
from typing import BinaryIO

import msgspec

from socialhub.domain.filetypes import Kind

# Letters, digits, "_" and "-" only: no "/", "." or "\" can reach a path or an object
# name, so a key cannot walk out of the store. 16..64 leaves room for other key schemes
# (e.g. a content hash) while new_media_key() gives 22 characters.
MEDIA_KEY = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
# 128 random bits: unguessable (media are public by URL) and never colliding in practice.
KEY_BYTES = 16


def new_media_key() -> str:
    """A fresh random key: 22 URL-safe characters, 128 bits."""
    return secrets.token_urlsafe(KEY_BYTES)


def is_media_key(key: str) -> bool:
    """True for a well-formed key (see MEDIA_KEY)."""
    return MEDIA_KEY.fullmatch(key) is not None


def check_key(key: str) -> str:
    """`key` when well formed; ValueError otherwise."""
    if not is_media_key(key):
        raise ValueError(f"not a media key: {key!r}")
    return key


class StagedFile(abc.ABC):
    """A file being received, not yet visible to readers.

    Writes are sequential (await one before the next). `discard` is idempotent and a
    no-op once the file is committed, so a caller can discard everything it staged in
    a `finally` without tracking which files a service committed.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._size = 0

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the bytes written so far."""
        return self._hash.hexdigest()

    def _count(self, chunk: bytes) -> None:
        """Add a written chunk to the size and the digest (hashlib drops the GIL for large
        buffers, so hashing costs the loop nothing)."""
        self._hash.update(chunk)
        self._size += len(chunk)

    @abc.abstractmethod
    async def write(self, chunk: bytes) -> None:
        """Append `chunk`. RuntimeError after commit or discard."""

    @abc.abstractmethod
    async def discard(self) -> None:
        """Drop the file and whatever it holds; idempotent; a no-op after commit."""


class StoredFile(abc.ABC):
    """A committed file: what `MediaStore.open` found, and a way to read it.

    `etag` is a strong validator without quotes: it changes whenever the bytes do (the
    content's SHA-256 on disk). `mtime` is the commit time, seconds since the epoch.
    """

    def __init__(self, key: str, size: int, content_type: str, etag: str, mtime: float) -> None:
        self.key = key
        self.size = size
        self.content_type = content_type
        self.etag = etag
        self.mtime = mtime

    @abc.abstractmethod
    def read(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) in chunks of bounded size (an async generator).

        ValueError unless 0 <= start <= end <= size. OSError when the file vanished
        since `open` (it was deleted) or the storage fails mid-way.
        """


class MediaStore(abc.ABC):
    """Stores immutable files under random keys (see the module docstring)."""

    @abc.abstractmethod
    async def stage(self) -> StagedFile:
        """A new, empty staged file."""

    @abc.abstractmethod
    async def commit(self, staged: StagedFile, key: str, content_type: str) -> None:
        """Make `staged` readable under `key`, all at once, with its content type.

        `staged` must come from this store and be neither committed nor discarded.
        ValueError for a malformed key, FileExistsError when `key` is taken.
        """

    @abc.abstractmethod
    async def open(self, key: str) -> StoredFile | None:
        """The file under `key`, or None when there is none (or `key` is malformed)."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the file under `key`; no error when absent. ValueError for a malformed key."""

    @abc.abstractmethod
    def list_keys(self, older_than: float) -> AsyncIterator[str]:
        """Every key committed at least `older_than` seconds ago (an async generator).

        For the orphan sweep: a file committed by a request whose database transaction
        then failed has no row pointing at it; the sweep lists keys older than any
        request can take and deletes those no row refers to. The order is unspecified.
        """

    @abc.abstractmethod
    async def sweep_staging(self, older_than: float) -> int:
        """Drop staged files untouched for `older_than` seconds; how many were dropped.

        Cleans up after a crash between `stage` and `commit`/`discard`. A staged file
        being written is touched by every write, so an age well above the slowest
        upload never takes one from under a live request.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook; the disk store has nothing to release
        """Release connections."""


class UploadedFile(msgspec.Struct, frozen=True):
    """A received file, staged but not yet stored under a key, with what was learned of
    it on the way in (the HTTP upload code makes it; services commit or discard it).

    `content_type` is the sniffed type (the declared one is ignored); `filename` is the
    client's name for it (base name only, for display, never for storage). `source` is
    a local copy of what was staged, for an image (its cleaned temp file, at any offset),
    so that previews can be made without reading the store back; it is closed with the
    upload (`Upload.discard`).
    """

    staged: StagedFile
    field: str
    filename: str
    content_type: str
    kind: Kind
    size: int
    sha256: str
    width: int | None = None
    height: int | None = None
    source: BinaryIO | None = None
