"""CORS over real HTTP: a real `socialhub serve` with `server.cors_origins` set from the
environment, and httpx sending what a browser sends (Origin, the preflight's
Access-Control-Request-*). Listed origins get their preflight and their answers marked;
others get neither. Without the key, nothing of CORS is answered at all."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Server, server_env

LISTED = "https://app.example"
ALSO_LISTED = "http://127.0.0.1:3000"
UNLISTED = "https://evil.example"


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = server_env(database_url, SOCIALHUB_SERVER_CORS_ORIGINS=f"{LISTED}, {ALSO_LISTED}")
    s = Server(tmp_path_factory.mktemp("cors") / "data", env).start()
    try:
        yield s
    finally:
        s.kill()


def preflight(client: httpx.Client, path: str, origin: str, method: str, headers: str = "") -> httpx.Response:
    request = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        request["Access-Control-Request-Headers"] = headers
    return client.options(path, headers=request)


def test_a_preflight_from_a_listed_origin_is_answered(server: Server) -> None:
    with httpx.Client(base_url=server.url) as client:
        for origin in (LISTED, ALSO_LISTED):
            r = preflight(client, "/posts/", origin, "POST", "authorization, content-type, idempotency-key")
            assert r.status_code == 200, r.text
            assert r.headers["access-control-allow-origin"] == origin
            assert {m.strip() for m in r.headers["access-control-allow-methods"].split(",")} >= {
                "GET", "POST", "PATCH", "DELETE"
            }  # fmt: skip
            allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
            assert {"authorization", "content-type", "idempotency-key"} <= allowed
            assert "access-control-allow-credentials" not in r.headers  # bearer tokens, no cookies
            assert int(r.headers["access-control-max-age"]) > 0
            assert "Origin" in r.headers["vary"]
        # Any route, templated or not, public or not: the preflight never needs a token.
        r = preflight(client, "/users/follow/123", LISTED, "DELETE", "authorization")
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == LISTED


def test_a_preflight_from_another_origin_is_refused(server: Server) -> None:
    with httpx.Client(base_url=server.url) as client:
        for origin in (UNLISTED, "https://app.example.evil.example", "http://app.example", LISTED + ":8443", "null"):
            r = preflight(client, "/auth/login", origin, "POST", "content-type")
            assert r.status_code == 400, origin
            assert "access-control-allow-origin" not in r.headers, origin
            assert r.json()["error"]["code"] == "bad_request"
            assert "origin" in r.json()["error"]["message"]
        # A listed origin asking for a method or header the API does not take.
        r = preflight(client, "/auth/login", LISTED, "PUT")
        assert r.status_code == 400 and r.json()["error"]["message"] == "CORS preflight refused: method not allowed"
        r = preflight(client, "/auth/login", LISTED, "POST", "x-secret")
        assert r.status_code == 400 and "headers" in r.json()["error"]["message"]


def test_answers_carry_allow_origin_only_for_listed_origins(server: Server) -> None:
    with httpx.Client(base_url=server.url) as client:
        u = "c" + secrets.token_hex(5)
        body = {"name": "C", "email": f"{u}@example.test", "username": u, "password": "correct horse 1"}
        r = client.post("/auth/signup", json=body, headers={"Origin": LISTED})
        assert r.status_code == 201, r.text
        assert r.headers["access-control-allow-origin"] == LISTED
        exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
        assert {"ratelimit-remaining", "retry-after", "etag", "x-request-id"} <= exposed
        token = r.json()["token"]

        auth = {"Authorization": f"Bearer {token}"}
        r = client.get("/auth/me", headers={**auth, "Origin": ALSO_LISTED})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALSO_LISTED
        # Errors too, so that the page can read them.
        r = client.get("/auth/me", headers={"Origin": LISTED})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == LISTED
        r = client.get("/posts/999999", headers={**auth, "Origin": LISTED})
        assert r.status_code == 404 and r.headers["access-control-allow-origin"] == LISTED

        r = client.get("/auth/me", headers={**auth, "Origin": UNLISTED})
        assert r.status_code == 200  # served: the browser, not the server, keeps the page out
        assert "access-control-allow-origin" not in r.headers
        assert "Origin" in r.headers["vary"]
        r = client.get("/auth/me", headers=auth)  # no Origin: not a cross-origin request
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_without_cors_origins_nothing_is_allowed(database_url: str, tmp_path: Path) -> None:
    s = Server(tmp_path / "data", server_env(database_url)).start()
    try:
        with httpx.Client(base_url=s.url) as client:
            r = preflight(client, "/auth/login", LISTED, "POST", "content-type")
            assert r.status_code == 405  # no CORS at all: OPTIONS is just a method no route serves
            assert "access-control-allow-origin" not in r.headers
            r = client.get("/healthz", headers={"Origin": LISTED})
            assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    finally:
        s.kill()
