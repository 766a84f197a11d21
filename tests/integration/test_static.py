"""The web client at `/` and its files under `/static/`: HTML, JavaScript with an ETag,
304 on revalidation, no way out of the folder, and the files in the wheel too."""

from __future__ import annotations

import zipfile
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from socialhub.api.http.errors import handle_http_exception, handle_socialhub_error
from socialhub.api.http.static import StaticRoutes, static_dir
from socialhub.errors import SocialhubError

REPO = Path(__file__).resolve().parents[2]


async def test_the_web_client_page_is_html(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<html" in r.text.lower()
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["etag"]
    # Public: no token asked for, and the API is where it was.
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/feed")).status_code == 401


async def test_the_sdk_is_javascript_with_an_etag_and_revalidates_to_304(client: httpx.AsyncClient) -> None:
    r = await client.get("/static/socialhub.js")
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-content-type-options"] == "nosniff"
    etag = r.headers["etag"]
    assert r.content == (REPO / "static" / "socialhub.js").read_bytes()
    again = await client.get("/static/socialhub.js", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    other = await client.get("/static/socialhub.js", headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200 and other.content == r.content
    head = await client.head("/static/socialhub.js")
    assert head.status_code == 200 and head.headers["etag"] == etag and head.content == b""
    part = await client.get("/static/socialhub.js", headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == r.content[:10]


@pytest.mark.parametrize(
    "path",
    [
        "/static/../pyproject.toml",
        "/static/..%2fpyproject.toml",
        "/static/%2e%2e/%2e%2e/socialhub/app.py",
        "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/static//etc/passwd",
        "/static/",
        "/static/no-such-file.js",
        "/static/socialhub.js%00.html",
        "/static/" + "a" * 300,
    ],
)
async def test_nothing_outside_the_folder_is_served(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 404, (path, r.status_code, r.text[:200])
    assert r.json()["error"]["code"] == "not_found"


async def test_a_method_other_than_get_is_405(client: httpx.AsyncClient) -> None:
    r = await client.post("/static/socialhub.js")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"


async def test_the_document_lists_the_pages(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert doc["paths"]["/"]["get"]["security"] == []
    assert doc["paths"]["/static/{path}"]["get"]["security"] == []


def app_on(directory: Path) -> httpx.AsyncClient:
    app = Starlette(
        routes=StaticRoutes(directory).routes(),
        exception_handlers={SocialhubError: handle_socialhub_error, HTTPException: handle_http_exception},
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_subfolders_are_served_and_symlinks_out_are_not(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "vendor").mkdir(parents=True)
    (site / "index.html").write_text("<!doctype html><html></html>")
    (site / "vendor" / "lib.js").write_text("export const x = 1;\n")
    (site / "style.css").write_text("body{}")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    (site / "leak.txt").symlink_to(secret)
    (site / "loop").symlink_to(site / "loop")
    async with app_on(site) as c:
        r = await c.get("/static/vendor/lib.js")
        assert r.status_code == 200 and r.text == "export const x = 1;\n"
        assert r.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
        assert (await c.get("/static/style.css")).headers["content-type"].startswith("text/css")
        assert (await c.get("/")).text == "<!doctype html><html></html>"
        for path in ("/static/leak.txt", "/static/loop", "/static/vendor", "/static/vendor/"):
            r = await c.get(path)
            assert r.status_code == 404, path
        # An update is seen: a changed file has another ETag, so the old one no longer matches.
        first = (await c.get("/static/vendor/lib.js")).headers["etag"]
        (site / "vendor" / "lib.js").write_text("export const x = 22;\n")
        r = await c.get("/static/vendor/lib.js", headers={"If-None-Match": first})
        assert r.status_code == 200 and r.text == "export const x = 22;\n"
        assert r.headers["etag"] != first


async def test_a_checkout_without_the_folder_answers_404(tmp_path: Path) -> None:
    async with app_on(tmp_path / "missing") as c:
        assert (await c.get("/")).status_code == 404
        assert (await c.get("/static/socialhub.js")).status_code == 404


def test_the_folder_is_the_repositorys_in_a_checkout() -> None:
    assert static_dir() == REPO / "static"


def test_the_wheel_carries_the_static_files(tmp_path: Path) -> None:
    """`pip install .` gives a working web client: the wheel holds static/ as
    socialhub/_static, where static_dir() looks first."""
    from hatchling.builders.wheel import WheelBuilder

    wheel = Path(next(iter(WheelBuilder(str(REPO)).build(directory=str(tmp_path), versions=["standard"]))))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert z.read("socialhub/_static/socialhub.js") == (REPO / "static" / "socialhub.js").read_bytes()
    assert "socialhub/_static/index.html" in names
    assert "socialhub/api/http/static.py" in names
