"""Media as files under one directory (the default: `data_dir/media`).

Layout, for a key such as `Zk3vQ0b8VsmYxu2Ph9c1Tw`:

    root/.staging/<random>.part        files being received (StagedFile)
    root/.staging/<random>.meta.part   a sidecar being written by commit
    root/Zk/3v/Zk3vQ0b8VsmYxu2Ph9c1Tw       the bytes
    root/Zk/3v/Zk3vQ0b8VsmYxu2Ph9c1Tw.meta  the sidecar: JSON {content_type, size, sha256}

Two levels of two-character directories keep any one directory small (64^4 buckets).
Keys cannot contain ".", so a sidecar name never collides with a key, and nothing
outside `root` can be named (see MEDIA_KEY).

Atomicity: a staged file is fsynced, its sidecar is written and moved into place,
then the file itself is moved into place with os.replace, which is atomic within
one file system (`.staging` is inside `root` for that reason). `open` looks for the
data file first, so a reader sees the whole file with its sidecar or nothing.
`delete` removes the data file first for the same reason. A crash between the two
renames leaves a sidecar without data, which `open` treats as absent and the next
commit to that key (never: keys are random) or a manual clean-up removes.

All blocking calls run in worker threads (asyncio.to_thread), one call per step,
never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import BinaryIO

import msgspec

from socialhub.infra.media.base import MediaStore, StagedFile, StoredFile, check_key, is_media_key

logger = logging.getLogger(__name__)

STAGING_DIR = ".staging"
META_SUFFIX = ".meta"
PART_SUFFIX = ".part"
# Size of each read handed to the HTTP response: big enough that the thread hop is
# cheap per byte, small enough that many concurrent downloads stay light (the same
# figure as Starlette's FileResponse).
READ_CHUNK = 64 * 1024


class _Meta(msgspec.Struct, frozen=True):
    content_type: str
    size: int
    sha256: str


_meta_encoder = msgspec.json.Encoder()
_meta_decoder = msgspec.json.Decoder(_Meta)


class DiskStagedFile(StagedFile):
    """A temp file in `root/.staging`, open for writing until commit or discard."""

    def __init__(self, path: pathlib.Path, fh: BinaryIO) -> None:
        super().__init__()
        self.path = path
        self._fh: BinaryIO | None = fh
        self.committed = False
        self._discarded = False

    def _write(self, chunk: bytes) -> None:
        fh = self._fh
        if fh is None:
            raise RuntimeError("the staged file was committed or discarded")
        fh.write(chunk)
        self._count(chunk)

    async def write(self, chunk: bytes) -> None:
        if self._fh is None:
            raise RuntimeError("the staged file was committed or discarded")
        if chunk:
            await asyncio.to_thread(self._write, chunk)

    def _discard(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()
        self.path.unlink(missing_ok=True)

    @property
    def done(self) -> bool:
        """Committed or discarded: no more writes."""
        return self.committed or self._discarded

    async def discard(self) -> None:
        if self.done:
            return
        self._discarded = True
        await asyncio.to_thread(self._discard)

    def _close_for_commit(self) -> None:
        fh = self._fh
        if fh is None:
            raise RuntimeError("the staged file was committed or discarded")
        fh.flush()
        # Data on disk before the rename makes it visible, or a crash could leave a
        # complete-looking name over missing blocks.
        os.fsync(fh.fileno())
        fh.close()
        self._fh = None


class DiskStoredFile(StoredFile):
    def __init__(self, path: pathlib.Path, key: str, meta: _Meta, mtime: float) -> None:
        super().__init__(key=key, size=meta.size, content_type=meta.content_type, etag=meta.sha256, mtime=mtime)
        self.path = path

    async def read(self, start: int, end: int) -> AsyncIterator[bytes]:
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"bad range [{start}, {end}) for a file of {self.size} bytes")
        if start == end:
            return
        fd = await asyncio.to_thread(os.open, self.path, os.O_RDONLY)
        try:
            position = start
            while position < end:
                chunk = await asyncio.to_thread(os.pread, fd, min(READ_CHUNK, end - position), position)
                if not chunk:
                    # Stored files never change, so this is damage; a short body must not pass as whole.
                    raise OSError(f"{self.path} is shorter than its recorded {self.size} bytes")
                position += len(chunk)
                yield chunk
        finally:
            os.close(fd)


class DiskMediaStore(MediaStore):
    """Files under `root`; see the module docstring for the layout."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.staging = root / STAGING_DIR

    def path_of(self, key: str) -> pathlib.Path:
        """Where the bytes of `key` live (ValueError for a malformed key)."""
        check_key(key)
        return self.root / key[0:2] / key[2:4] / key

    def _new_staged(self) -> DiskStagedFile:
        self.staging.mkdir(parents=True, exist_ok=True)
        path = self.staging / (secrets.token_hex(16) + PART_SUFFIX)
        # "x": never write into a file someone else created.
        return DiskStagedFile(path, open(path, "xb"))

    async def stage(self) -> StagedFile:
        return await asyncio.to_thread(self._new_staged)

    def _commit(self, staged: DiskStagedFile, final: pathlib.Path, content_type: str) -> None:
        meta_path = final.with_name(final.name + META_SUFFIX)
        if final.exists():
            # Random 128-bit keys never collide; this guards against a caller reusing one.
            raise FileExistsError(f"media key {final.name} is taken")
        staged._close_for_commit()
        meta = _Meta(content_type=content_type, size=staged.size, sha256=staged.sha256)
        tmp_meta = self.staging / (secrets.token_hex(16) + META_SUFFIX + PART_SUFFIX)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp_meta.write_bytes(_meta_encoder.encode(meta))
            os.replace(tmp_meta, meta_path)
            # mtime is the last write until now; make it the commit time, which is what
            # StoredFile.mtime, Last-Modified and list_keys' age mean.
            os.utime(staged.path)
            os.replace(staged.path, final)
        except BaseException:
            tmp_meta.unlink(missing_ok=True)
            if not final.exists():
                meta_path.unlink(missing_ok=True)
            staged.path.unlink(missing_ok=True)
            raise
        staged.committed = True

    async def commit(self, staged: StagedFile, key: str, content_type: str) -> None:
        final = self.path_of(key)
        if not isinstance(staged, DiskStagedFile) or staged.path.parent != self.staging:
            raise ValueError("the staged file does not belong to this store")
        if staged.done:
            raise RuntimeError("the staged file was committed or discarded")
        await asyncio.to_thread(self._commit, staged, final, content_type)

    def _open(self, key: str) -> DiskStoredFile | None:
        path = self.path_of(key)
        try:
            st = path.stat()
            raw = path.with_name(key + META_SUFFIX).read_bytes()
        except FileNotFoundError:
            return None
        try:
            meta = _meta_decoder.decode(raw)
        except msgspec.DecodeError:
            logger.error("media %s has a damaged sidecar; treated as absent", key)
            return None
        return DiskStoredFile(path, key, meta, st.st_mtime)

    async def open(self, key: str) -> StoredFile | None:
        if not is_media_key(key):
            return None
        return await asyncio.to_thread(self._open, key)

    def _delete(self, path: pathlib.Path) -> None:
        path.unlink(missing_ok=True)
        path.with_name(path.name + META_SUFFIX).unlink(missing_ok=True)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, self.path_of(key))

    def _bucket_dirs(self) -> list[pathlib.Path]:
        out: list[pathlib.Path] = []
        for top in _subdirs(self.root):
            if top.name == STAGING_DIR:
                continue
            out.extend(_subdirs(top))
        return out

    def _old_keys_in(self, directory: pathlib.Path, cutoff: float) -> list[str]:
        keys: list[str] = []
        with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
            for entry in entries:
                if not is_media_key(entry.name):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime <= cutoff:
                        keys.append(entry.name)
        return keys

    async def list_keys(self, older_than: float) -> AsyncIterator[str]:
        cutoff = time.time() - older_than
        # One thread hop per bucket directory, so a big store streams instead of
        # being listed into memory at once.
        for directory in await asyncio.to_thread(self._bucket_dirs):
            for key in await asyncio.to_thread(self._old_keys_in, directory, cutoff):
                yield key

    def _sweep(self, cutoff: float) -> int:
        removed = 0
        with contextlib.suppress(FileNotFoundError), os.scandir(self.staging) as entries:
            for entry in entries:
                if not entry.name.endswith(PART_SUFFIX):
                    continue
                try:
                    if entry.stat().st_mtime <= cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
        if removed:
            logger.info("removed %d abandoned staged media files", removed)
        return removed

    async def sweep_staging(self, older_than: float) -> int:
        return await asyncio.to_thread(self._sweep, time.time() - older_than)


def _subdirs(directory: pathlib.Path) -> list[pathlib.Path]:
    try:
        with os.scandir(directory) as entries:
            return [pathlib.Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
