"""Steps a person takes in the web client, by its stable test ids (static/README.md)."""

from __future__ import annotations

import asyncio
import io
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image, ImageDraw
from playwright.async_api import Locator, expect

from tests.browser.conftest import STEP_MS, LiveServer, Person

PASSWORD = "correct horse 1"

expect.set_options(timeout=STEP_MS)


@dataclass
class Who:
    """An account: what a person types into the forms."""

    name: str
    username: str
    password: str = PASSWORD
    id: str = ""
    token: str = ""

    @property
    def email(self) -> str:
        return f"{self.username}@example.test"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def new_who(name: str) -> Who:
    return Who(name=name.title(), username=f"{name}_{secrets.token_hex(3)}")


def tid(person: Person, test_id: str) -> Locator:
    return person.page.get_by_test_id(test_id)


async def screen(person: Person, name: str) -> None:
    """Wait until the page shows the screen `name` (the view's data-screen)."""
    await expect(tid(person, "view")).to_have_attribute("data-screen", name)


async def sign_up(person: Person, url: str, who: Who) -> None:
    """From the front door at `url`: to the sign-up form, fill it in, land on the feed signed in."""
    await person.page.goto(url + "/")
    await screen(person, "login")
    await tid(person, "link-signup").click()
    await screen(person, "signup")
    await tid(person, "signup-name").fill(who.name)
    await tid(person, "signup-email").fill(who.email)
    await tid(person, "signup-username").fill(who.username)
    await tid(person, "signup-password").fill(who.password)
    await person.shot("signup")
    await tid(person, "signup-submit").click()
    await screen(person, "feed")
    who.id = await signed_in_id(person)


async def log_in(person: Person, url: str, who: Who) -> None:
    """From the front door at `url` (the server's, or a cable's to it)."""
    await person.page.goto(url + "/")
    await screen(person, "login")
    # From the keyboard only: the form has the focus, Tab moves on, Enter sends.
    await expect(tid(person, "login-identifier")).to_be_focused()
    await person.page.keyboard.type(who.username)
    await person.page.keyboard.press("Tab")
    await expect(tid(person, "login-password")).to_be_focused()
    await person.page.keyboard.type(who.password)
    await person.page.keyboard.press("Enter")
    await screen(person, "feed")
    assert await signed_in_id(person) == who.id


async def signed_in_id(person: Person) -> str:
    app = tid(person, "app")
    await expect(app).to_have_attribute("data-user-id", re.compile(r".+"))
    user_id = await app.get_attribute("data-user-id")
    assert user_id
    return user_id


async def connected(person: Person) -> None:
    """The page's socket is open (after start-up or a reconnect)."""
    await expect(tid(person, "connection-status")).to_have_attribute("data-state", "open")


async def open_profile(person: Person, username: str) -> None:
    await tid(person, "find-user-input").fill(username)
    await tid(person, "find-user-submit").click()
    await screen(person, "profile")
    await expect(tid(person, "profile-username")).to_contain_text(username)


async def badge(person: Person, test_id: str, count: int) -> None:
    """The badge shows `count` (hidden at 0)."""
    locator = tid(person, test_id)
    if count == 0:
        await expect(locator).to_be_hidden()
    else:
        await expect(locator).to_have_text(str(count))


def picture(width: int = 480, height: int = 320) -> bytes:
    """A PNG worth looking at in a screenshot: diagonal bands of colour and a label."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for i in range(0, width + height, 40):
        draw.line([(i, 0), (i - height, height)], fill=(40 + i % 200, 120, 220 - i % 180), width=20)
    draw.rectangle([20, 20, 220, 70], fill=(255, 255, 255))
    draw.text((30, 35), "socialhub browser test", fill=(0, 0, 0))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


async def api_account(live: LiveServer, name: str) -> Who:
    """An account made through the API (for tests whose subject is not sign-up)."""
    who = new_who(name)
    async with httpx.AsyncClient(base_url=live.url) as c:
        r = await c.post(
            "/auth/signup",
            json={"name": who.name, "email": who.email, "username": who.username, "password": who.password},
        )
        assert r.status_code == 201, r.text
        who.id, who.token = r.json()["user"]["id"], r.json()["token"]
    return who


async def api_follow_each_other(live: LiveServer, a: Who, b: Who) -> None:
    async with httpx.AsyncClient(base_url=live.url) as c:
        for x, y in ((a, b), (b, a)):
            r = await c.post(f"/users/follow/{y.id}", headers=x.auth)
            assert r.status_code == 200, r.text


async def eventually(check: Callable[[], Awaitable[Any]], expected: Any, timeout: float = STEP_MS / 1000) -> None:
    """Poll `check()` until it returns `expected` (for what no locator assertion says)."""
    end = time.monotonic() + timeout
    got = await check()
    while got != expected:
        if time.monotonic() > end:
            raise AssertionError(f"expected {expected!r}, still {got!r} after {timeout}s")
        await asyncio.sleep(0.1)
        got = await check()


def post_card(person: Person, post_id: str) -> Locator:
    return person.page.locator(f'[data-testid="post"][data-post-id="{post_id}"]')
