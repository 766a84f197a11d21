"""Request bodies in, JSON out, with msgspec.

Bodies are read with a size cap (413), parsed (malformed JSON is 400) and validated
into frozen Structs; every invalid field is reported at once in `fields` (422).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from socialhub.domain.pages import DEFAULT_LIMIT, MAX_LIMIT, PageRequest
from socialhub.errors import BadRequest, TooLarge, UnsupportedMediaType, ValidationFailed
from socialhub.ids import parse_id

T = TypeVar("T", bound=msgspec.Struct)

# SPEC, Conventions: JSON in and out as `application/json; charset=utf-8`.
JSON_MEDIA_TYPE = "application/json; charset=utf-8"

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class JSON(Response):
    """A response body encoded by msgspec (Structs, lists, dicts)."""

    media_type = JSON_MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return _encoder.encode(content)


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> JSON:
    return JSON(content, status_code=status_code, headers=headers)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refusing more than `max_bytes` before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("bad Content-Length")
        if int(declared) > max_bytes:
            raise TooLarge(f"the body is over {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"the body is over {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def is_form(request: Request) -> bool:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return ctype in ("multipart/form-data", "application/x-www-form-urlencoded")


async def read_json(request: Request, cls: type[T], max_bytes: int) -> T:
    """Decode and validate a JSON body into `cls`."""
    if is_form(request):
        raise UnsupportedMediaType("send JSON (Content-Type: application/json)")
    body = await read_body(request, max_bytes)
    if not body.strip():
        data: Any = {}
    else:
        try:
            data = _decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise BadRequest(f"malformed JSON: {exc}") from None
    return validate(data, cls)


def validate(data: Any, cls: type[T]) -> T:
    """`data` (decoded JSON or form fields) as `cls`, or ValidationFailed listing every bad field."""
    if not isinstance(data, dict):
        raise ValidationFailed("the body must be a JSON object", fields={"body": "expected an object"})
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as first:
        fields = _field_problems(data, cls)
        if not fields:
            raise ValidationFailed(str(first), fields={"body": str(first)}) from None
        summary = "; ".join(f"{k}: {v}" for k, v in fields.items())
        raise ValidationFailed(summary, fields=fields) from None


def _field_problems(data: dict[str, Any], cls: type[msgspec.Struct]) -> dict[str, str]:
    """msgspec stops at the first problem; check each field alone to report them all."""
    problems: dict[str, str] = {}
    for f in msgspec.structs.fields(cls):
        if f.encode_name not in data:
            if f.required:
                problems[f.encode_name] = "required"
            continue
        try:
            msgspec.convert(data[f.encode_name], f.type)
        except msgspec.ValidationError as exc:
            problems[f.encode_name] = str(exc).split(" - at ")[0]
    return problems


def page_request(request: Request, cursor: str = "before") -> PageRequest:
    """`?limit=` (default 20, at most 100) and the cursor (`?before=<id>`, or `?after=` for
    oldest-first lists; either way it lands in PageRequest.before)."""
    q = request.query_params
    limit = DEFAULT_LIMIT
    raw_limit = q.get("limit")
    if raw_limit is not None:
        if not raw_limit.isdigit() or int(raw_limit) < 1:
            raise ValidationFailed("limit must be a positive integer", fields={"limit": "expected 1..100"})
        limit = min(int(raw_limit), MAX_LIMIT)
    position = None
    raw = q.get(cursor)
    if raw:
        position = parse_id(raw)
        if position is None:
            raise ValidationFailed(f"{cursor} must be an id", fields={cursor: "expected an id"})
    return PageRequest(limit=limit, before=position)
