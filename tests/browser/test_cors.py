"""Issue 14, item 5: app developers serve their own web clients from other origins.

A page served from an origin listed in `server.cors_origins` calls the API with an
Authorization header and a JSON body (both make the browser send a preflight first) and
gets its answers; the same page from an origin not listed is stopped by the browser: the
preflight is refused, so the write is never sent at all.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage

from tests.browser.conftest import CorsOrigins, LiveServer, Shots

PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>another app</title></head>
<body><h1>An app on another origin</h1><pre id="out"></pre></body></html>"""

# Runs in the other origin's page: a preflighted read, then a preflighted write.
CALLS = """async ([api, token]) => {
  const out = {};
  const auth = {Authorization: `Bearer ${token}`};
  try {
    const me = await fetch(`${api}/auth/me`, {headers: auth});
    out.me = {status: me.status, body: await me.json()};
  } catch (e) { out.me = {failed: String(e)}; }
  try {
    const patch = await fetch(`${api}/users/me`, {
      method: 'PATCH', headers: {...auth, 'Content-Type': 'application/json'},
      body: JSON.stringify({bio: `set from ${location.origin}`}),
    });
    out.patch = {status: patch.status, body: await patch.json()};
  } catch (e) { out.patch = {failed: String(e)}; }
  document.getElementById('out').textContent = JSON.stringify(out, null, 2);
  return out;
}"""


# The JavaScript SDK, as another origin's app would use it: fetched from socialhub (a
# module script is fetched in CORS mode too), signed in, its socket authenticated.
SDK = """async ([api, username, password]) => {
  const { Socialhub } = await import(`${api}/static/socialhub.js`);
  const sh = new Socialhub({ baseUrl: api });
  try {
    await sh.auth.login(username, password);
    const session = await sh.connect();
    const pong = await sh.rpc({ type: 'ping' });
    return { user_id: session.user_id, pong: pong.type, me: (await sh.auth.me()).username };
  } finally {
    sh.close();
  }
}"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def origin(port: int) -> Iterator[str]:
    """A tiny web server on its own port: another origin than the API's."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


async def test_listed_origin_calls_the_api_and_others_are_refused(
    live: LiveServer, cors_origins: CorsOrigins, chromium: Browser, shots: Shots
) -> None:
    if not cors_origins.supported:
        pytest.skip("this server's config refuses server.cors_origins (not merged yet)")
    async with httpx.AsyncClient(base_url=live.url) as api:
        r = await api.post(
            "/auth/signup",
            json={"name": "Cora", "email": "cora@example.test", "username": "cora_cors", "password": "pass word 1"},
        )
        assert r.status_code == 201, r.text
        token = r.json()["token"]

        context = await chromium.new_context()
        logged: list[str] = []

        def console(msg: ConsoleMessage) -> None:
            if msg.type == "error":
                logged.append(msg.text)

        try:
            page = await context.new_page()
            page.on("console", console)
            with origin(cors_origins.allowed) as allowed, origin(cors_origins.other) as other:
                await page.goto(allowed)
                got = await page.evaluate(CALLS, [live.url, token])
                await page.screenshot(path=str(shots.next_path("cora", "listed-origin")))
                assert got["me"].get("status") == 200, got
                assert got["me"]["body"]["username"] == "cora_cors"
                assert got["patch"]["status"] == 200, got
                assert got["patch"]["body"]["bio"] == f"set from {allowed}"
                sdk = await page.evaluate(SDK, [live.url, "cora_cors", "pass word 1"])
                assert sdk == {"user_id": got["me"]["body"]["id"], "pong": "pong", "me": "cora_cors"}
                assert logged == [], logged

                await page.goto(other)
                got = await page.evaluate(CALLS, [live.url, token])
                await page.screenshot(path=str(shots.next_path("cora", "unlisted-origin")))
                assert "failed" in got["me"] and "failed" in got["patch"], got
                # The browser says why: CORS, not a network failure.
                assert any("blocked by CORS policy" in text for text in logged), logged
        finally:
            await context.close()

        # The refused preflight kept the write from being sent at all.
        me = await api.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["bio"] == f"set from {allowed}"
