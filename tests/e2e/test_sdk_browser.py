"""The JavaScript SDK in a real browser (Debian's Chromium, headless, driven by
Playwright), loaded from the server as an app does: `import("/static/socialhub.js")` on
a page of the server's origin. What Node cannot show is checked here: the session kept
in localStorage across a reload, and an upload's progress reported by XMLHttpRequest."""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import migrated_database
from tests.e2e.server import Server, server_env
from tests.e2e.test_sdk_js import HTTP_LIMITS_OFF, port_in_range

# A page of the server's origin that runs no app of its own (the web client at `/` keeps a
# session of its own in the same localStorage): the SDK's file, shown as text.
BLANK = "/static/socialhub.js"

CHROMIUM = os.environ.get("SOCIALHUB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

SIGN_UP = """async (png64) => {
  const { Socialhub } = await import("/static/socialhub.js");
  const sh = new Socialhub(); // the page's origin, localStorage
  const u = "web" + Math.random().toString(36).slice(2, 10);
  await sh.auth.signup({ name: "Web " + u, email: u + "@example.test", username: u, password: "correct horse 1" });
  const session = await sh.connect();
  const bytes = Uint8Array.from(atob(png64), (c) => c.charCodeAt(0));
  const progress = [];
  const post = await sh.posts.create({
    content: "from a browser",
    files: [new File([bytes], "noise.png", { type: "image/png" })],
    onProgress: (p) => progress.push(p),
  });
  const stored = JSON.parse(localStorage.getItem("socialhub.session"));
  const size = bytes.length;
  sh.close();
  return { user: sh.user, session, post, progress, stored, size };
}"""

RELOADED = """async () => {
  const { Socialhub } = await import("/static/socialhub.js");
  const sh = new Socialhub();
  await sh.ready;
  const signedIn = sh.signedIn;
  const session = await sh.connect();
  const me = await sh.users.me();
  const pong = await sh.rpc({ type: "ping" });
  sh.close();
  return { signedIn, session, me, pong };
}"""


# Two tabs of one origin share localStorage: what one does to the session, the other follows.
TAB = """async () => {
  const { Socialhub } = await import("/static/socialhub.js");
  const sh = new Socialhub();
  window.sh = sh;
  window.seen = { tokens: [], signedOut: [] };
  sh.on("tokens", (t) => window.seen.tokens.push(t && t.refresh_token));
  sh.on("signed_out", (e) => window.seen.signedOut.push(e.reason));
  await sh.connect();
  return sh.token;
}"""


def noise_png(side: int = 700) -> bytes:
    """An image of about 1.5 MB (random pixels do not compress)."""
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with migrated_database("socialhub_sdkweb") as url:
        server = Server(tmp_path / "server", server_env(url, **HTTP_LIMITS_OFF), port=port_in_range())
        server.start()
        try:
            yield server
        finally:
            server.kill()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
@pytest.mark.timeout(180)
async def test_the_sdk_in_chromium(server: Server) -> None:
    from playwright.async_api import async_playwright

    png = noise_png()
    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = await browser.new_context()
            # The SDK's file shown as a page makes Chromium ask for /favicon.ico, which
            # socialhub does not serve (the web client's page names an empty icon).
            await context.route("**/favicon.ico", lambda route: route.fulfill(status=204))
            page = await context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            r = await page.goto(server.url + BLANK)
            assert r is not None and r.status == 200
            first: dict[str, Any] = await page.evaluate(SIGN_UP, base64.b64encode(png).decode())
            assert first["session"]["user_id"] == first["user"]["id"]
            assert first["post"]["media"][0]["content_type"] == "image/png"
            assert first["stored"]["refresh_token"]
            progress = first["progress"]
            # XMLHttpRequest's upload events: they count the multipart body as sent (the
            # boundaries and part headers too); fetch, which has none, would report the
            # files' and fields' sizes alone.
            assert progress, progress
            assert progress[-1]["loaded"] == progress[-1]["total"]
            assert progress[-1]["total"] > first["size"] + len("from a browser") + 100
            assert progress[-1]["fraction"] == 1
            assert [p["loaded"] for p in progress] == sorted(p["loaded"] for p in progress)

            await page.reload()
            second: dict[str, Any] = await page.evaluate(RELOADED)
            assert second["signedIn"] is True
            assert second["me"]["id"] == first["user"]["id"]
            assert second["session"]["user_id"] == first["user"]["id"]
            assert second["pong"]["type"] == "pong"

            # Two tabs: a refresh in one is taken by the other (which then never spends
            # the rotated refresh token), and a logout in one signs the other out.
            other = await context.new_page()
            other.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            other.on("pageerror", lambda e: problems.append(str(e)))
            await other.goto(server.url + BLANK)
            await page.evaluate(TAB)
            await other.evaluate(TAB)
            rotated = await page.evaluate("async () => (await window.sh.refresh()).refresh_token")
            await other.wait_for_function("(r) => window.seen.tokens.includes(r)", arg=rotated, timeout=10_000)
            assert await other.evaluate("async () => (await window.sh.refresh()).refresh_token") != rotated
            assert await page.evaluate("async () => (await window.sh.users.me()).id") == first["user"]["id"]
            await other.evaluate("async () => window.sh.auth.logout()")
            await page.wait_for_function("() => window.seen.signedOut.length > 0", timeout=10_000)
            assert await page.evaluate("() => [window.seen.signedOut, window.sh.state, window.sh.signedIn]") == [
                ["logout"],
                "closed",
                False,
            ]
        finally:
            await browser.close()
    assert problems == []
