"""GET /openapi.json and GET /docs: the OpenAPI 3.1 document of this API, made from the code.

Each route group declares its endpoints with their `Operation`s (routing.py); the
schemas come from the very msgspec Structs the endpoints decode and encode, so the
document cannot describe a field the code does not have. The page at /docs renders the document with a small inline
script: the servers this runs on have no internet, so nothing is loaded from a CDN.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Annotated, Any, get_args, get_origin

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from socialhub import __version__
from socialhub.api.http.codec import JSON_MEDIA_TYPE
from socialhub.api.http.docs_page import PAGE, SCRIPT, STYLE
from socialhub.api.http.errors import CODE_OF_STATUS, ErrorEnvelope
from socialhub.api.http.ratelimit import limits_writes
from socialhub.api.http.routing import Endpoint, Operation, RouteGroup
from socialhub.domain.pages import DEFAULT_LIMIT, MAX_LIMIT
from socialhub.domain.posts import IDEMPOTENCY_KEY_PATTERN
from socialhub.domain.users import USER_REF_PATTERN
from socialhub.ids import ID_PATTERN, ID_REGEX
from socialhub.infra.media.base import MEDIA_KEY

REF = "#/components/schemas/{name}"
_PATH_PARAM = re.compile(r"\{(\w+)\}")
_GENERIC_TITLE = re.compile(r"(\w+)\[(.+)\]")

ID_SCHEMA: dict[str, Any] = {"type": "string", "pattern": ID_PATTERN, "description": "an id: a decimal of 1..2^63-1"}
# A cursor is an id, or empty for the first page (what a client sends back for `next: null`).
CURSOR_SCHEMA: dict[str, Any] = {"type": "string", "pattern": f"^(?:{ID_REGEX})?$"}
QUERY: dict[str, dict[str, Any]] = {
    "limit": {
        "description": f"items per page: default {DEFAULT_LIMIT}; more than {MAX_LIMIT} is taken as {MAX_LIMIT}",
        "schema": {"type": "integer", "minimum": 1, "default": DEFAULT_LIMIT},
    },
    "before": {
        "description": "the `next` of the previous page: only items with a smaller id",
        "schema": CURSOR_SCHEMA,
    },
    "after": {
        "description": "the `next` of the previous page: only items with a larger id (oldest-first lists)",
        "schema": CURSOR_SCHEMA,
    },
}
# The query of a newest-first list.
PAGE_QUERY = ("limit", "before")
# Path parameters by name. A value outside its pattern names nothing: 404, like an unknown one.
PATH: dict[str, dict[str, Any]] = {
    "id": ID_SCHEMA,
    "post_id": ID_SCHEMA,
    "comment_id": ID_SCHEMA,
    "user_id": ID_SCHEMA,
    "room_id": ID_SCHEMA,
    "ref": {"type": "string", "pattern": USER_REF_PATTERN, "description": "a user id, `@username` or `me`"},
    "key": {"type": "string", "pattern": MEDIA_KEY.pattern},
    "path": {"type": "string", "description": "a file's path under the web client's folder; may hold slashes"},
}
# Request headers an operation may declare, by name.
HEADER_PARAMS: dict[str, dict[str, Any]] = {
    "Idempotency-Key": {
        "description": "a retry with the same key answers 200 with what the first request made",
        "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
    },
}
# The error code each status answers with (413 and 431 share `too_large`, SPEC).
ERROR_CODE: dict[int, str] = {**CODE_OF_STATUS, 431: "too_large"}

RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
HEADERS: dict[str, dict[str, Any]] = {
    "RateLimit-Limit": {"description": "requests allowed in the window", "schema": {"type": "integer"}},
    "RateLimit-Remaining": {"description": "requests left in the window", "schema": {"type": "integer"}},
    "RateLimit-Reset": {"description": "seconds until the window resets", "schema": {"type": "integer"}},
    "Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}},
    "WWW-Authenticate": {"description": "the scheme to authenticate with", "schema": {"type": "string"}},
}

DESCRIPTION = """\
JSON in and out; ids are strings. Errors answer `{"error": {"code", "message", "fields"?}}`.
Lists take `?limit=` and `?before=` and answer `{"items": [...], "next": id | null}`.
Routes marked with bearerAuth want `Authorization: Bearer <access token>`."""


def rate_limited(op: Operation) -> bool:
    """Whether RateLimitMiddleware limits this operation (by the same rules it applies)."""
    return op.limit_by_ip is not None or (op.auth and limits_writes(op.method, op.path))


def operation_id(op: Operation) -> str:
    slash = "_slash" if op.path.endswith("/") and op.path != "/" else ""
    return op.method.lower() + "_" + "_".join(re.findall(r"[A-Za-z0-9]+", op.path)) + slash


# Request headers or URL over the server's limit (SPEC: 32 KiB): any request at all.
ANY_REQUEST = (431,)


def error_statuses(op: Operation, limited: bool) -> list[int]:
    """The error statuses `op` can answer: its own `errors` and those its shape implies:
    401 when `auth`; 400 (malformed), 413, 415 (not JSON) and 422 with a `body`; 404
    with a path parameter (unknown or malformed); 422 with `query` or `headers`; 429 on
    a rate-limited route; 503 unless `static`; 431 always."""
    statuses = {*op.errors, *ANY_REQUEST}
    if op.auth:
        statuses.add(401)
    if op.body is not None:
        statuses.update((400, 413, 415, 422))
    if _PATH_PARAM.search(op.path):
        statuses.add(404)
    if op.query or op.headers:
        statuses.add(422)
    if limited:
        statuses.add(429)
    if not op.static:
        statuses.add(503)
    return sorted(statuses)


def _components(types: list[Any]) -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
    """{type: its $ref} and the schemas; generic names become readable (Page[User] -> UserPage)."""
    refs, schemas = msgspec.json.schema_components(types, ref_template=REF)
    renames: dict[str, str] = {}
    for name, schema in schemas.items():
        m = _GENERIC_TITLE.fullmatch(str(schema.get("title", "")))
        if m is not None:
            renames[name] = "".join(re.findall(r"\w+", m.group(2))) + m.group(1)
    for old, new in renames.items():
        if new in schemas or list(renames.values()).count(new) > 1:
            raise ValueError(f"schema name {new!r} (for {old!r}) is taken")

    def rename(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: rename(v) for k, v in node.items()}
            ref = out.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                out["$ref"] = REF.format(name=renames.get(name, name))
            return out
        if isinstance(node, list):
            return [rename(v) for v in node]
        return node

    schemas = {renames.get(name, name): rename(schema) for name, schema in schemas.items()}
    return {t: rename(r) for t, r in zip(types, refs, strict=True)}, schemas


# SPEC (Conventions): a string holding U+0000 is 422 for its field (PostgreSQL cannot store it).
NO_NUL: dict[str, Any] = {"not": {"pattern": "\\u0000"}}


def without_nul(node: Any) -> Any:
    """A request schema whose every string is also said to hold no U+0000."""
    if isinstance(node, dict):
        out = {k: without_nul(v) for k, v in node.items()}
        return {**out, **NO_NUL} if out.get("type") == "string" else out
    if isinstance(node, list):
        return [without_nul(v) for v in node]
    return node


def _header_refs(names: Iterable[str]) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _operation(op: Operation, refs: dict[Any, dict[str, Any]], limited: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": operation_id(op), "summary": op.summary, "tags": [op.tag]}
    if op.description:
        out["description"] = op.description
    params: list[dict[str, Any]] = []
    for name in _PATH_PARAM.findall(op.path):
        if name not in PATH:
            raise ValueError(f"{op.method} {op.path}: unknown path parameter {name!r}")
        params.append({"name": name, "in": "path", "required": True, "schema": PATH[name]})
    for name in op.query:
        if name not in QUERY:
            raise ValueError(f"{op.method} {op.path}: unknown query parameter {name!r}")
        params.append({"name": name, "in": "query", "required": False, **QUERY[name]})
    for name in op.headers:
        if name not in HEADER_PARAMS:
            raise ValueError(f"{op.method} {op.path}: unknown header {name!r}")
        params.append({"name": name, "in": "header", "required": False, **HEADER_PARAMS[name]})
    if params:
        out["parameters"] = params
    if op.body is not None:
        content = {"application/json": {"schema": refs[op.body]}}
        if op.multipart:
            content["multipart/form-data"] = {"schema": refs[op.form or op.body]}
        # A body whose fields are all optional may be left out (the route reads it as {});
        # an Annotated rule between fields (READ_RULE of /notify/read) asks for one.
        annotated = get_origin(op.body) is Annotated
        struct = get_args(op.body)[0] if annotated else op.body
        required = annotated or any(f.required for f in msgspec.structs.fields(struct))
        out["requestBody"] = {"required": required, "content": content}
    success: dict[str, Any] = {"description": HTTPStatus(op.status).phrase}
    if op.response is not None:
        success["content"] = {op.media_type: {"schema": refs[op.response]}}
    elif op.status != 204:
        success["content"] = {op.media_type: {}}
    if limited:
        success["headers"] = _header_refs(RATE_HEADERS)
    responses: dict[str, Any] = {str(op.status): success}
    for status in op.also:
        responses[str(status)] = {**success, "description": HTTPStatus(status).phrase}
    for status in error_statuses(op, limited):
        if status not in ERROR_CODE:
            raise ValueError(f"{op.method} {op.path}: no error code answers {status}")
        error: dict[str, Any] = {
            "description": f"{HTTPStatus(status).phrase}: `{ERROR_CODE[status]}`",
            "content": {"application/json": {"schema": refs[ErrorEnvelope]}},
        }
        headers = [*RATE_HEADERS] if limited else []
        if status in (429, 503):
            headers.append("Retry-After")
        if status == 401:
            headers.append("WWW-Authenticate")
        if headers:
            error["headers"] = _header_refs(headers)
        responses[str(status)] = error
    out["responses"] = responses
    out["security"] = [{"bearerAuth": []}] if op.auth else []
    return out


def build_document(
    operations: Iterable[Operation], title: str, version: str, *, rate_limits: bool = True
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `operations`; ValueError on a duplicate or an unknown status."""
    ops = list(operations)
    types: list[Any] = []
    for t in (*(o.body for o in ops), *(o.form for o in ops), *(o.response for o in ops), ErrorEnvelope):
        if t is not None and t not in types:
            types.append(t)
    refs, schemas = _components(types)
    for t in {o.body for o in ops} | {o.form for o in ops}:
        if t is not None:
            name = refs[t]["$ref"].rsplit("/", 1)[1]
            schemas[name] = without_nul(schemas[name])
    paths: dict[str, dict[str, Any]] = {}
    tags: list[str] = []
    ids: set[str] = set()
    for op in ops:
        item = paths.setdefault(op.path, {})
        method = op.method.lower()
        if method in item or operation_id(op) in ids:
            raise ValueError(f"{op.method} {op.path} is declared twice")
        ids.add(operation_id(op))
        item[method] = _operation(op, refs, rate_limits and rate_limited(op))
        if op.tag not in tags:
            tags.append(op.tag)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": DESCRIPTION},
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "headers": HEADERS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def _embeddable(document: bytes) -> str:
    # "<" only occurs inside JSON strings, where \u003c means the same: no "</script>" can end the block.
    return document.decode().replace("<", "\\u003c")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


class OpenApiRoutes(RouteGroup):
    """/openapi.json and /docs, both public; the document is built once, at construction."""

    def __init__(
        self,
        operations: Iterable[Operation],
        *,
        title: str = "socialhub",
        version: str = __version__,
        rate_limits: bool = True,
        asyncapi: dict[str, Any] | None = None,
    ) -> None:
        """`asyncapi`: the AsyncAPI document (asyncapi.py) that /docs shows beside this one."""
        self.document = build_document([*operations, *self.operations()], title, version, rate_limits=rate_limits)
        self.json = msgspec.json.encode(self.document)
        self.html = PAGE.format(
            title=html.escape(title),
            doc=_embeddable(self.json),
            asyncapi=_embeddable(msgspec.json.encode(asyncapi)),
            style=STYLE,
            script=SCRIPT,
        ).encode()
        self.csp = (
            f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(self.openapi_json, Operation(method="GET", path="/openapi.json", summary="This document",
                                                  tag="docs", auth=False, static=True)),
            Endpoint(self.docs, Operation(method="GET", path="/docs", summary="This document, rendered", tag="docs",
                                          auth=False, media_type="text/html", static=True)),
        ]  # fmt: skip

    async def openapi_json(self, request: Request) -> Response:
        return Response(self.json, media_type=JSON_MEDIA_TYPE)

    async def docs(self, request: Request) -> Response:
        return Response(self.html, media_type="text/html", headers={"Content-Security-Policy": self.csp})
