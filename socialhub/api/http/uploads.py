"""Streaming multipart/form-data uploads into the media store.

`read_upload` parses the request body as it arrives with python-multipart's
low-level parser and writes each file part straight into `MediaStore.stage()`:
a file is never held in memory whole (at most its first IMAGE_HEAD_BYTES, to read
an image's size). Text fields are collected, each capped.

Images take one step more: their metadata (GPS position, device, time) must not reach
the store. An image part is spooled to an anonymous temp file (unlinked at creation:
a crash leaves nothing), and at its end `scrub_image` strips it and checks it with
Pillow in a worker thread; the cleaned bytes are what is staged, and the size, hash,
width and height given back are theirs. (The store's staged file is not read back:
an object store's multipart upload cannot be. The cleaned temp file is kept instead, as
UploadedFile.source, for the previews of small images, and closed with the upload.)

Refusals come as soon as the reader knows, and it stops reading the body then:

- not multipart/form-data: 415; no boundary, a malformed or truncated body, a file
  in a field that takes none, text that is not UTF-8, a client that goes away: 400
- a file over `max_file_bytes`, more than `max_files` files, too many or too big
  text fields, a body longer than all of that allows: 413 `too_large`. (More files
  than allowed is 413 rather than 422: like a big file, it is a size limit of the
  request, and the original clients already handle 413 for uploads.)
- a file whose first bytes are not an accepted image, video or audio type, or not
  of the kinds the caller takes (avatars: images): 415, decided on the first
  SNIFF_BYTES, before anything of it is staged. The declared Content-Type and the
  file name are ignored.
- an image Pillow cannot read (truncated, damaged): 415; one over MAX_IMAGE_PIXELS:
  422 `validation_error` (from its header as soon as that arrives, when it can be read
  there cheaply; else once Pillow opened it).

On any failure, every file staged so far is discarded before the error propagates;
on success the caller owns the staged files and must commit or discard each:

    upload = await read_upload(request, store, file_fields=MEDIA_FIELDS,
                               max_files=s.max_files, max_file_bytes=s.max_file_bytes)
    try:
        post = await posts.create(viewer, upload.fields.get("content", ""), upload.files)
    finally:
        await upload.discard()   # a no-op for the files the service committed

Why one module of ~450 lines: the streaming parser's callbacks, its refusals and its
clean-up on every path out share one state machine (`_UploadReader`); split, the
all-or-nothing rule would be spread over modules that each see half of a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Iterable
from typing import TYPE_CHECKING, BinaryIO

import msgspec
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from socialhub.domain.filetypes import ALL_KINDS, IMAGE_HEAD_BYTES, SNIFF_BYTES, Kind, image_size, sniff
from socialhub.errors import BadRequest, TooLarge, UnsupportedMediaType, invalid
from socialhub.infra.media.base import MediaStore, StagedFile, UploadedFile
from socialhub.services.scrubber import MAX_IMAGE_PIXELS, ScrubbedImage, scrub_image

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

logger = logging.getLogger(__name__)

# Field names that carry files. "file" is what the original clients send for posts.
MEDIA_FIELDS = frozenset(("media", "file"))
AVATAR_FIELDS = frozenset(("avatar",))

# A post's text is at most a few thousand characters; 64 KiB leaves room for any text
# field a form may carry while keeping the fields of one request small in memory.
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 32
# The parser is fed at most this much at a time, so a limit is noticed within 64 KiB
# however large the chunks the server hands over.
FEED_BYTES = 64 * 1024
# Per part, for the boundary and headers: python-multipart allows 8 header lines of
# 4224 bytes each.
PART_OVERHEAD = 8 * 4224 + 512
# Names shown in messages and kept as UploadedFile.filename are cut to this.
MAX_FILENAME = 255
# A cleaned image is copied from its temp file into the store in pieces of this size.
COPY_BYTES = 1 << 20

_Event = dict[str, bytes] | bytes | None
"""What the parser callbacks queue: a part's headers, a piece of its data, or its end."""

_background: set[asyncio.Task[None]] = set()


class Upload(msgspec.Struct, frozen=True):
    """A parsed multipart body: text fields, and the files staged in the media store."""

    fields: dict[str, str]
    files: list[UploadedFile]

    async def discard(self) -> None:
        """Discard every file not committed (idempotent), and close the local copies."""
        close_sources(self.files)
        await discard_all(f.staged for f in self.files)


def close_sources(files: Iterable[UploadedFile]) -> None:
    for f in files:
        if f.source is not None:
            f.source.close()


async def read_upload(
    request: Request,
    store: MediaStore,
    *,
    file_fields: frozenset[str] = MEDIA_FIELDS,
    max_files: int,
    max_file_bytes: int,
    kinds: frozenset[Kind] = ALL_KINDS,
) -> Upload:
    """Read a multipart/form-data body, staging its files; see the module docstring.

    Files come from the fields in `file_fields` (in body order); a text field sent
    twice keeps its last value. Raises BadRequest, TooLarge or UnsupportedMediaType.
    """
    reader = _UploadReader(store, file_fields, max_files, max_file_bytes, kinds)
    return await reader.read(request)


async def discard_all(staged: Iterable[StagedFile]) -> None:
    """Discard every staged file, logging failures; completes even if the caller is cancelled."""
    pending = list(staged)
    if not pending:
        return
    task = asyncio.ensure_future(_discard_each(pending))
    _background.add(task)
    task.add_done_callback(_background.discard)
    # Shielded: a request cancelled mid-upload (the client went away) must still not
    # leave files behind; the discard runs to its end while the cancellation goes on.
    await asyncio.shield(task)


async def _discard_each(staged: list[StagedFile]) -> None:
    for s in staged:
        try:
            await s.discard()
        except Exception:
            logger.exception("a staged upload could not be discarded; the staging sweep will remove it")


def _text(raw: bytes) -> str:
    # Browsers send names as raw UTF-8 in the header; older clients latin-1.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _base_name(filename: str) -> str:
    # Some clients send a full path ("C:\\Users\\x\\cat.png"); only the last part is a name.
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return name[:MAX_FILENAME]


class _FieldPart:
    def __init__(self, name: str) -> None:
        self.name = name
        self.data = bytearray()


class _FilePart:
    def __init__(self, field: str, filename: str) -> None:
        self.field = field
        self.filename = filename
        self.counted = False
        self.size = 0
        self.head = bytearray()
        self.keep_head = False
        self.content_type = ""
        self.kind: Kind = "image"
        self.staged: StagedFile | None = None
        self.spool: BinaryIO | None = None  # an image until it is scrubbed
        self.size_checked = False

    @property
    def label(self) -> str:
        return repr(self.filename) if self.filename else f"the file in {self.field!r}"


class _UploadReader:
    def __init__(
        self,
        store: MediaStore,
        file_fields: frozenset[str],
        max_files: int,
        max_file_bytes: int,
        kinds: frozenset[Kind],
    ) -> None:
        self.store = store
        self.file_fields = file_fields
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes
        self.kinds = kinds
        self.max_parts = max_files + MAX_FIELDS
        self.max_body = max_files * (max_file_bytes + PART_OVERHEAD) + MAX_FIELDS * (MAX_FIELD_BYTES + PART_OVERHEAD)
        self.fields: dict[str, str] = {}
        self.files: list[UploadedFile] = []
        self.staged: list[StagedFile] = []
        # Image spools not yet handed to the scrubber (which closes those it took).
        self.spools: list[BinaryIO] = []
        self.events: list[_Event] = []
        self.finished = False
        self.parts = 0
        self.field_count = 0
        self.file_count = 0
        self.part: _FieldPart | _FilePart | None = None
        self._headers: dict[str, bytes] = {}
        self._name = bytearray()
        self._value = bytearray()

    # -- parser callbacks: synchronous, so they only queue; _drain does the I/O ----------

    def _on_part_begin(self) -> None:
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._name.decode("latin-1").strip().lower()] = bytes(self._value).strip()
        self._name.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        self.events.append(self._headers)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self.events.append(data[start:end])

    def _on_part_end(self) -> None:
        self.events.append(None)

    def _on_end(self) -> None:
        self.finished = True

    def _parser(self, request: Request) -> MultipartParser:
        ctype, params = parse_options_header(request.headers.get("content-type"))
        if ctype != b"multipart/form-data":
            raise UnsupportedMediaType("send the files as multipart/form-data")
        boundary = params.get(b"boundary")
        if not boundary:
            raise BadRequest("multipart/form-data without a boundary")
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }
        try:
            return MultipartParser(boundary, callbacks)
        except FormParserError as exc:
            raise BadRequest(f"bad multipart boundary: {exc}") from None

    # -- the read loop ---------------------------------------------------------------------

    async def read(self, request: Request) -> Upload:
        parser = self._parser(request)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise TooLarge(f"the upload is over {self.max_body} bytes")
        try:
            try:
                await self._consume(request, parser)
            except FormParserError as exc:
                raise BadRequest(f"malformed multipart body: {exc}") from None
            except ClientDisconnect:
                raise BadRequest("the client went away during the upload") from None
        except BaseException:
            for spool in self.spools:
                spool.close()
            close_sources(self.files)
            await discard_all(self.staged)
            raise
        return Upload(fields=self.fields, files=self.files)

    async def _consume(self, request: Request, parser: MultipartParser) -> None:
        received = 0
        async with contextlib.aclosing(request.stream()) as stream:
            async for chunk in stream:
                received += len(chunk)
                if received > self.max_body:
                    raise TooLarge(f"the upload is over {self.max_body} bytes")
                for offset in range(0, len(chunk), FEED_BYTES):
                    parser.write(chunk[offset : offset + FEED_BYTES])
                    await self._drain()
                if self.finished:
                    # Anything after the closing boundary is epilogue; no need to read it.
                    break
        parser.finalize()
        if not self.finished:
            raise BadRequest("the multipart body ends before its closing boundary")

    async def _drain(self) -> None:
        events, self.events = self.events, []
        for event in events:
            if isinstance(event, dict):
                self._begin(event)
            elif event is None:
                await self._end()
            else:
                await self._data(event)

    # -- parts -----------------------------------------------------------------------------

    def _begin(self, headers: dict[str, bytes]) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise TooLarge(f"too many parts in the form (at most {self.max_parts})")
        disposition = headers.get("content-disposition")
        if disposition is None:
            raise BadRequest("a form part has no Content-Disposition")
        kind, params = parse_options_header(disposition)
        raw_name = params.get(b"name")
        if kind != b"form-data" or raw_name is None:
            raise BadRequest("a form part is not form-data with a name")
        name = _text(raw_name)
        raw_filename = params.get(b"filename")
        if name in self.file_fields:
            part = _FilePart(name, _base_name(_text(raw_filename or b"")))
            if part.filename:
                self._count(part)
            self.part = part
        elif raw_filename is not None:
            accepted = ", ".join(sorted(self.file_fields))
            raise BadRequest(f"the field {name!r} takes no file (files go in: {accepted})")
        else:
            self.field_count += 1
            if self.field_count > MAX_FIELDS:
                raise TooLarge(f"too many form fields (at most {MAX_FIELDS})")
            self.part = _FieldPart(name)

    def _count(self, part: _FilePart) -> None:
        if self.file_count >= self.max_files:
            raise TooLarge(f"at most {self.max_files} files per request")
        self.file_count += 1
        part.counted = True

    async def _data(self, chunk: bytes) -> None:
        part = self.part
        if isinstance(part, _FieldPart):
            part.data += chunk
            if len(part.data) > MAX_FIELD_BYTES:
                raise TooLarge(f"the field {part.name!r} is over {MAX_FIELD_BYTES} bytes")
            return
        if part is None:
            raise BadRequest("form data outside a part")
        if not part.counted:
            self._count(part)
        part.size += len(chunk)
        if part.size > self.max_file_bytes:
            raise TooLarge(f"{part.label} is over {self.max_file_bytes} bytes")
        if part.staged is None and part.spool is None:
            part.head += chunk
            if len(part.head) >= SNIFF_BYTES:
                await self._accept(part)
            return
        if part.keep_head and len(part.head) < IMAGE_HEAD_BYTES:
            part.head += chunk[: IMAGE_HEAD_BYTES - len(part.head)]
            if len(part.head) >= IMAGE_HEAD_BYTES:
                self._check_pixels(part)
        if part.spool is not None:
            await asyncio.to_thread(part.spool.write, chunk)
        elif part.staged is not None:
            await part.staged.write(chunk)

    def _check_pixels(self, part: _FilePart) -> None:
        """Refuse a decompression bomb from its header, before reading the rest (once)."""
        if part.size_checked:
            return
        part.size_checked = True
        size = image_size(bytes(part.head), part.content_type)
        if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
            raise invalid(part.field, f"{part.label} is over {MAX_IMAGE_PIXELS} pixels")

    async def _accept(self, part: _FilePart) -> None:
        """Sniff the head; refuse, or stage the file and write what came so far."""
        sniffed = sniff(bytes(part.head))
        if sniffed is None:
            raise UnsupportedMediaType(f"{part.label} is not an accepted image, video or audio file")
        if sniffed.kind not in self.kinds:
            wanted = " or ".join(sorted(self.kinds))
            raise UnsupportedMediaType(f"{part.label} is {sniffed.kind}; this takes {wanted} only")
        part.content_type = sniffed.content_type
        part.kind = sniffed.kind
        part.keep_head = sniffed.kind == "image"
        if part.keep_head:
            part.spool = await asyncio.to_thread(tempfile.TemporaryFile)
            self.spools.append(part.spool)
            await asyncio.to_thread(part.spool.write, bytes(part.head))
            del part.head[IMAGE_HEAD_BYTES:]
            if len(part.head) >= IMAGE_HEAD_BYTES:
                self._check_pixels(part)
            return
        staged = await self.store.stage()
        self.staged.append(staged)
        part.staged = staged
        await staged.write(bytes(part.head))
        part.head = bytearray()

    async def _store_image(self, part: _FilePart) -> tuple[StagedFile, ScrubbedImage]:
        """Scrub the spooled image and stage the result; the cleaned temp file is kept
        (the caller hands it on as UploadedFile.source, which the upload closes)."""
        self._check_pixels(part)
        spool, part.spool = part.spool, None
        assert spool is not None
        self.spools.remove(spool)
        image = await scrub_image(spool, part.content_type, field=part.field, label=part.label)
        try:
            staged = await self.store.stage()
            self.staged.append(staged)
            while chunk := await asyncio.to_thread(image.file.read, COPY_BYTES):
                await staged.write(chunk)
        except BaseException:
            image.file.close()
            raise
        return staged, image

    async def _end(self) -> None:
        part, self.part = self.part, None
        if isinstance(part, _FieldPart):
            try:
                self.fields[part.name] = part.data.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"the field {part.name!r} is not UTF-8 text") from None
            return
        if part is None:
            return
        if part.staged is None and part.spool is None:
            if part.size == 0:
                if not part.filename:
                    # A browser sends an empty part for a file input left empty.
                    return
                raise UnsupportedMediaType(f"{part.label} is empty")
            await self._accept(part)
        width = height = None
        source: BinaryIO | None = None
        if part.spool is not None:
            staged, image = await self._store_image(part)
            width, height, source = image.width, image.height, image.file
        else:
            assert part.staged is not None
            staged = part.staged
        self.files.append(
            UploadedFile(
                staged=staged,
                field=part.field,
                filename=part.filename,
                content_type=part.content_type,
                kind=part.kind,
                size=staged.size,
                sha256=staged.sha256,
                width=width,
                height=height,
                source=source,
            )
        )
