"""The OpenAPI document: valid 3.1, one operation per route and back, every $ref resolves,
and the schemas accept what the code really encodes."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import jsonschema
import msgspec
import pytest
from openapi_spec_validator import validate
from starlette.applications import Starlette
from starlette.routing import Route

from socialhub.api.http.asyncapi import AsyncApiRoutes, build_asyncapi
from socialhub.api.http.auth import AuthRoutes
from socialhub.api.http.calls import CallRoutes
from socialhub.api.http.chat import ChatRoutes
from socialhub.api.http.errors import ErrorBody, ErrorEnvelope
from socialhub.api.http.feed import FeedRoutes
from socialhub.api.http.health import HealthRoutes
from socialhub.api.http.media import MediaRoutes
from socialhub.api.http.notifications import NotificationRoutes
from socialhub.api.http.openapi import OpenApiRoutes, build_document
from socialhub.api.http.posts import PostRoutes
from socialhub.api.http.routing import Operation, ip_limits
from socialhub.api.http.static import StaticRoutes
from socialhub.api.http.users import UserRoutes
from socialhub.app import create_app
from socialhub.config import MediaSettings, Settings, load_settings, with_overrides
from socialhub.domain.pages import Page
from socialhub.domain.users import Relation, User, UserRecord
from socialhub.ids import MAX_ID
from socialhub.services.accounts import AuthResult
from tests.conftest import TEST_SECRET
from tests.jsonrefs import refs, resolve

PUBLIC = {
    ("POST", "/auth/signup"),
    ("POST", "/auth/login"),
    ("POST", "/auth/refresh"),
    ("POST", "/auth/forgot-password"),
    ("POST", "/auth/request-password-reset"),
    ("POST", "/auth/reset-password"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/asyncapi.json"),
    ("GET", "/media/{key}"),
    ("GET", "/"),
    ("GET", "/static/{path}"),
}


class Declares(Protocol):
    """What the route classes under test have in common."""

    def routes(self) -> list[Route]: ...
    def operations(self) -> list[Operation]: ...


def route_classes() -> list[Any]:
    # The collaborators are only stored by the constructors; no route is called here.
    return [
        AuthRoutes(None, None, 0),  # type: ignore[arg-type]
        UserRoutes(None, None, None, 0, 0),  # type: ignore[arg-type]
        PostRoutes(None, None, None, MediaSettings(), 0),  # type: ignore[arg-type]
        FeedRoutes(None, None),  # type: ignore[arg-type]
        NotificationRoutes(None, None, 0),  # type: ignore[arg-type]
        MediaRoutes(None),  # type: ignore[arg-type]
        ChatRoutes(None, None, 0),  # type: ignore[arg-type]
        CallRoutes(None, None),  # type: ignore[arg-type]
        StaticRoutes(),
        HealthRoutes({}, metrics=True),
        HealthRoutes({}, metrics=False),
        OpenApiRoutes([]),
        AsyncApiRoutes({}),
    ]


def all_operations() -> list[Operation]:
    # In app.py's order: health, the API groups, the AsyncAPI document, the web client's pages.
    groups = [HealthRoutes({}, metrics=True), *route_classes()[:-5], AsyncApiRoutes({}), StaticRoutes()]
    return [op for group in groups for op in group.operations()]


def app_settings(tmp: Path, **ratelimit: Any) -> Settings:
    return with_overrides(
        load_settings(env={}),
        server={"data_dir": str(tmp)},
        auth={"jwt_secret": TEST_SECRET},
        ratelimit=ratelimit,
    )


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Starlette:
    # create_app only builds: nothing connects before the lifespan starts.
    return create_app(app_settings(tmp_path_factory.mktemp("openapi")))


@pytest.fixture(scope="module")
def docs() -> OpenApiRoutes:
    return OpenApiRoutes(all_operations(), asyncapi=build_asyncapi({"posts": "posts", "users": "users"}))


def test_the_app_serves_the_document_of_every_route_group(app: Starlette, docs: OpenApiRoutes) -> None:
    """The app's own document (every group app.py wires, ChatRoutes and CallRoutes too)
    is the one these tests check, and names exactly the app's routes and methods."""
    served: dict[str, Any] = app.state.openapi
    assert served == docs.document
    routes = {(m, p) for m, p in declared([r for r in app.routes if isinstance(r, Route)])}
    documented = {(m.upper(), p) for p, item in served["paths"].items() for m in item}
    assert routes == documented


async def test_a_405_allows_every_method_of_the_path(app: Starlette) -> None:
    """Several groups' Routes share a path; the app merges them, so a method the path does not
    serve answers 405 naming all it does (not only the methods of the first Route)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path, allowed in (
            ("/posts/1", {"GET", "HEAD", "PATCH", "DELETE"}),
            ("/chat/rooms", {"GET", "HEAD", "POST"}),
            ("/posts/like/1", {"POST", "DELETE", "PATCH"}),
            ("/users/follow/1", {"POST", "DELETE"}),
            ("/users/follow/@ann", {"POST", "DELETE"}),
            ("/posts/comment/1", {"POST", "PATCH", "DELETE"}),
        ):
            for method in ("OPTIONS", "PUT"):
                r = await client.request(method, path)
                assert r.status_code == 405, (method, path)
                assert {m.strip() for m in r.headers["allow"].split(",")} == allowed, (method, path)
                assert r.json()["error"]["code"] == "method_not_allowed"
        # A path without parameters keeps its methods: PATCH /posts/getall is no edit of a
        # post named "getall" (through /posts/{id}), nor DELETE /users/counts of a user.
        for method, path, allowed in (
            ("PATCH", "/posts/getall", {"GET", "HEAD"}),
            ("DELETE", "/posts/getall", {"GET", "HEAD"}),
            ("DELETE", "/users/me", {"GET", "HEAD", "PATCH"}),
        ):
            r = await client.request(method, path)
            assert r.status_code == 405, (method, path)
            assert {m.strip() for m in r.headers["allow"].split(",")} == allowed, (method, path)


def declared(routes: list[Route]) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for route in routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # Starlette converters are not OpenAPI
        out.update((method, path) for method in route.methods or () if method != "HEAD")
    return out


@pytest.mark.parametrize("routes", route_classes(), ids=lambda r: type(r).__name__)
def test_every_route_has_an_operation_and_back(routes: Declares) -> None:
    operations = [(op.method, op.path) for op in routes.operations()]
    assert len(operations) == len(set(operations))
    assert set(operations) == declared(routes.routes())


def test_document_is_valid_openapi_31(docs: OpenApiRoutes) -> None:
    assert docs.document["openapi"] == "3.1.0"
    validate(docs.document)


def test_every_ref_resolves(docs: OpenApiRoutes) -> None:
    found = refs(docs.document)
    assert found
    for ref in found:
        resolve(docs.document, ref)


def test_schema_names_are_plain_and_the_page_is_named(docs: OpenApiRoutes) -> None:
    schemas = docs.document["components"]["schemas"]
    assert all(re.fullmatch(r"[A-Za-z0-9]+", name) for name in schemas), list(schemas)
    assert {"UserPage", "User", "AuthResult", "ErrorEnvelope", "ErrorBody", "SignupBody"} <= set(schemas)
    listing = docs.document["paths"]["/users/{ref}/followers"]["get"]
    assert listing["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UserPage"
    }
    assert {p["name"]: p["in"] for p in listing["parameters"]} == {"ref": "path", "limit": "query", "before": "query"}


def test_auth_and_errors(docs: OpenApiRoutes) -> None:
    assert docs.document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    public: set[tuple[str, str]] = set()
    for path, item in docs.document["paths"].items():
        for method, op in item.items():
            if op["security"] == []:
                public.add((method.upper(), path))
                assert "401" not in op["responses"] or path in ("/auth/login", "/auth/refresh")
            else:
                assert op["security"] == [{"bearerAuth": []}]
                assert "401" in op["responses"]
            for status, response in op["responses"].items():
                if int(status) >= 400 and (path, status) != ("/readyz", "503"):
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorEnvelope"
                    }
    assert public == PUBLIC
    paths = docs.document["paths"]
    # 431 (headers or URL too big) on anything; 503 wherever the database answers.
    assert set(paths["/auth/signup"]["post"]["responses"]) == {
        "201", "400", "409", "413", "415", "422", "429", "431", "503"
    }  # fmt: skip
    assert set(paths["/auth/logout"]["post"]["responses"]) == {"204", "401", "431", "503"}
    assert set(paths["/healthz"]["get"]["responses"]) == {"200", "431"}
    assert set(paths["/posts/{id}"]["get"]["responses"]) == {"200", "401", "404", "431", "503"}
    assert set(paths["/feed"]["get"]["responses"]) == {"200", "401", "422", "431", "503"}
    assert set(paths["/auth/me"]["get"]["responses"]["401"]["headers"]) == {"WWW-Authenticate"}
    assert set(paths["/auth/me"]["get"]["responses"]["503"]["headers"]) == {"Retry-After"}
    assert "content" not in paths["/auth/logout"]["post"]["responses"]["204"]
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "431", "503"}
    assert paths["/users/me"]["patch"]["requestBody"]["content"].keys() == {"application/json", "multipart/form-data"}


def test_rate_limit_headers_follow_the_middleware(docs: OpenApiRoutes) -> None:
    paths = docs.document["paths"]
    login = paths["/auth/login"]["post"]["responses"]
    assert set(login["429"]["headers"]) == {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "Retry-After"}
    assert set(login["200"]["headers"]) == {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}
    assert "429" in paths["/users/follow/{ref}"]["post"]["responses"]  # a write: limited per user
    assert "429" not in paths["/users/{ref}"]["get"]["responses"]  # reads are not limited
    assert "429" not in paths["/auth/logout"]["post"]["responses"]

    unlimited = build_document(all_operations(), "t", "1", rate_limits=False)
    text = json.dumps(unlimited)
    assert '"429"' not in text and "RateLimit-Limit" not in json.dumps(unlimited["paths"])


def _validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    # The document as the root resource, so "#/components/schemas/..." resolves inside it.
    return jsonschema.Draft202012Validator({**document, "$ref": f"#/components/schemas/{name}"})


def test_schemas_accept_what_the_code_encodes(docs: OpenApiRoutes) -> None:
    record = UserRecord(
        id=42, username="ann", email="ann@example.test", name="Ann", bio="", avatar_url=None, password_hash="x",
        followers_count=1, following_count=2, posts_count=3, created_at=datetime(2026, 1, 2, tzinfo=UTC),
    )  # fmt: skip
    page = Page(items=[User.of(record, Relation(following=True, followed_by=False))], next="41")
    auth = AuthResult(user=User.of(record, with_email=True), token="t", refresh_token="r", expires_in=900)
    error = ErrorEnvelope(ErrorBody(code="validation_error", message="bad", fields={"name": "required"}))
    for name, value in (("UserPage", page), ("AuthResult", auth), ("ErrorEnvelope", error)):
        _validator(docs.document, name).validate(json.loads(msgspec.json.encode(value)))
    with pytest.raises(jsonschema.ValidationError):
        _validator(docs.document, "UserPage").validate({"items": [{"id": 1}], "next": None})


def test_duplicates_and_unknown_statuses_are_refused() -> None:
    op = Operation(method="GET", path="/x", summary="x", tag="t")
    with pytest.raises(ValueError, match="twice"):
        build_document([op, op], "t", "1")
    with pytest.raises(ValueError, match="418"):
        build_document([Operation(method="GET", path="/y", summary="y", tag="t", errors=(418,))], "t", "1")
    with pytest.raises(ValueError, match="query"):
        build_document([Operation(method="GET", path="/z", summary="z", tag="t", query=("page",))], "t", "1")


async def test_served_document_and_page(docs: OpenApiRoutes) -> None:
    app = Starlette(routes=docs.routes())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.get("/openapi.json")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/json")
        assert r.json() == docs.document

        r = await client.get("/docs")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert "script-src 'sha256-" in r.headers["content-security-policy"]
        page = r.text
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    embedded = re.search(r'<script type="application/json" id="doc">(.*?)</script>', page, re.S)
    assert embedded is not None
    assert json.loads(embedded.group(1)) == docs.document
    embedded = re.search(r'<script type="application/json" id="asyncapi">(.*?)</script>', page, re.S)
    assert embedded is not None
    assert json.loads(embedded.group(1)) == build_asyncapi({"posts": "posts", "users": "users"})
    assert page.count("</script>") == 3


def test_parameters_state_what_the_routes_accept(docs: OpenApiRoutes) -> None:
    """Ids, user references and cursors carry the patterns the routes check, so a value
    the document allows is never refused for its form."""
    paths = docs.document["paths"]

    def param(path: str, method: str, name: str) -> dict[str, Any]:
        return next(p for p in paths[path][method]["parameters"] if p["name"] == name)

    id_schema = param("/posts/{id}", "get", "id")["schema"]
    ids = jsonschema.Draft202012Validator(id_schema)
    assert ids.is_valid("1") and ids.is_valid(str(MAX_ID))
    for bad in ("0", "01", str(MAX_ID + 1), "abc", "-1", " 1", ""):
        assert not ids.is_valid(bad), bad
    cursors = jsonschema.Draft202012Validator(param("/feed", "get", "before")["schema"])
    assert cursors.is_valid("") and cursors.is_valid("12") and not cursors.is_valid("01")
    assert param("/posts/{post_id}/comments", "get", "after")["schema"] == param("/feed", "get", "before")["schema"]
    assert param("/posts/comment/{id}", "post", "id")["schema"] == id_schema
    refs = jsonschema.Draft202012Validator(param("/users/{ref}", "get", "ref")["schema"])
    for good in ("me", "@ann_1", "42"):
        assert refs.is_valid(good), good
    for bad in ("@a", "@" + "x" * 31, "you", "@a\x00b"):
        assert not refs.is_valid(bad), bad
    body = paths["/notify/read"]["post"]["requestBody"]
    assert body["required"] is True and set(body["content"]) == {"application/json"}
    assert paths["/users/me"]["patch"]["requestBody"]["required"] is False  # every field optional
    read = _validator({**docs.document, **body["content"]["application/json"]["schema"]}, "ReadBody")
    assert read.is_valid({"ids": ["1"]}) and read.is_valid({"all": True})
    for bad in ({}, {"all": False}, {"ids": None}, {"ids": ["x"]}):
        assert not read.is_valid(bad), bad
    assert set(paths["/posts/"]["post"]["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert {p["name"]: p["in"] for p in paths["/posts/"]["post"]["parameters"]} == {"Idempotency-Key": "header"}


def test_request_strings_hold_no_nul(docs: OpenApiRoutes) -> None:
    """SPEC: a string holding U+0000 is 422 for its field; the request schemas say so."""
    signup = _validator(docs.document, "SignupBody")
    good = {"name": "Ann", "email": "ann@example.test", "username": "ann", "password": "long enough"}
    assert signup.is_valid(good)
    for field in ("name", "password"):
        assert not signup.is_valid({**good, field: good[field] + "\x00"}), field
    assert not _validator(docs.document, "CommentBody").is_valid({"content": "hi\x00"})
    # Responses are left as they are: nothing the server sends holds U+0000 anyway.
    assert '"not"' not in json.dumps(docs.document["components"]["schemas"]["User"])


def test_the_limiter_counts_by_ip_exactly_the_routes_documented_so() -> None:
    """The rate limiter's table by IP is made from the same declarations as the routes and
    the document: the public auth routes, each under its rule, and nothing else."""
    assert ip_limits(all_operations()) == {
        ("POST", "/auth/signup"): "signup",
        ("POST", "/auth/login"): "login",
        ("POST", "/auth/refresh"): "refresh",
        ("POST", "/auth/forgot-password"): "forgot_password",
        ("POST", "/auth/request-password-reset"): "forgot_password",
        ("POST", "/auth/reset-password"): "reset_password",
    }


def test_a_limit_by_ip_must_name_a_known_rule() -> None:
    # A misspelt rule would limit nothing, silently: the app refuses to be built.
    with pytest.raises(ValueError, match="no rate-limit rule 'logn'"):
        ip_limits([Operation(method="POST", path="/x", summary="x", tag="t", auth=False, limit_by_ip="logn")])
    with pytest.raises(ValueError, match="two rules"):
        ip_limits(
            [
                Operation(method="POST", path="/x", summary="x", tag="t", auth=False, limit_by_ip="login"),
                Operation(method="POST", path="/x/", summary="x", tag="t", auth=False, limit_by_ip="signup"),
            ]
        )
