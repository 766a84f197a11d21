"""Request bodies in, JSON out, with msgspec.

Bodies are read with a size cap (413), typed (a JSON route takes only JSON: 415),
parsed (malformed JSON, nested too deep included, is 400) and validated into frozen
Structs; every invalid field is reported at once in `fields` (422), a string that
PostgreSQL cannot store (one holding U+0000) among them.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from socialhub.domain.pages import DEFAULT_LIMIT, MAX_LIMIT, PageRequest
from socialhub.domain.text import may_hold_nul, nul_fields
from socialhub.errors import BadRequest, NotFound, TooLarge, UnsupportedMediaType, ValidationFailed
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


def media_type(request: Request) -> str:
    """The Content-Type without its parameters, lower-cased; "" when there is none."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def is_form(request: Request) -> bool:
    return media_type(request) in ("multipart/form-data", "application/x-www-form-urlencoded")


def is_json(ctype: str) -> bool:
    """application/json, or a type with the `+json` structured syntax suffix (RFC 6838 4.2.8,
    e.g. application/merge-patch+json): both are JSON to a JSON parser."""
    return ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))


def _check_json_type(request: Request, body: bytes) -> None:
    """SPEC: a JSON route answers 415 to any other Content-Type. A body without one is
    refused too (clients and curl -d label theirs); an empty body needs no label."""
    raw = request.headers.get("content-type")
    if raw is None:
        if body.strip():
            raise UnsupportedMediaType("send JSON with Content-Type: application/json")
        return
    ctype, _, params = raw.partition(";")
    if not is_json(ctype.strip().lower()):
        raise UnsupportedMediaType(f"send JSON (Content-Type: application/json), not {ctype.strip()!r}")
    for param in params.split(";"):
        key, _, value = param.partition("=")
        # JSON is UTF-8 (RFC 8259 8.1); a label saying otherwise is not a JSON body we read.
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType("JSON bodies are UTF-8 (charset=utf-8)")


async def read_json(request: Request, cls: type[T], max_bytes: int) -> T:
    """Decode and validate a JSON body into `cls`."""
    if is_form(request):
        raise UnsupportedMediaType("send JSON (Content-Type: application/json)")
    body = await read_body(request, max_bytes)
    _check_json_type(request, body)
    if not body.strip():
        data: Any = {}
    else:
        data = decode_json(body)
    return validate(data, cls, scan=may_hold_nul(body))


def decode_json(raw: bytes) -> Any:
    """Client JSON, or BadRequest: malformed, not UTF-8, or nested deeper than the decoder
    allows (msgspec raises RecursionError at Python's recursion limit, ~1,000 levels)."""
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deep") from None


def validate(data: Any, cls: type[T], *, scan: bool = True) -> T:
    """`data` (decoded JSON or form fields) as `cls`, or ValidationFailed listing every bad field.

    `scan=False` skips looking for U+0000, for a body known to hold none (may_hold_nul)."""
    if not isinstance(data, dict):
        raise ValidationFailed("the body must be a JSON object", fields={"body": "expected an object"})
    if scan:
        bad = nul_fields(data, (f.encode_name for f in msgspec.structs.fields(cls)))
        if bad:
            raise ValidationFailed("; ".join(f"{k}: {v}" for k, v in bad.items()), fields=bad)
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


def path_id(request: Request, name: str, what: str) -> int:
    """The id in path parameter `name`; NotFound ("no such <what>") when it is no id, as
    for an id that names nothing."""
    value = parse_id(request.path_params[name])
    if value is None:
        raise NotFound(f"no such {what}")
    return value


_FIRST_PAGE = PageRequest(limit=DEFAULT_LIMIT, before=None)


def page_request(request: Request, cursor: str = "before") -> PageRequest:
    """`?limit=` (default 20, at most 100) and the cursor (`?before=<id>`, or `?after=` for
    oldest-first lists; either way it lands in PageRequest.before)."""
    if not request.scope.get("query_string"):
        return _FIRST_PAGE  # the common request, with no query to parse
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
