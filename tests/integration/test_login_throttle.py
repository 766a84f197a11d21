"""Login throttling per account: credential stuffing from many addresses is slowed down,
the account's owner on a known device is not, and an unknown identifier looks the same.

The app runs with its real limits (per IP `ratelimit.login`, per account
`ratelimit.login_account`); each attacker request comes from an address of its own (the
ASGI client address, what uvicorn sets from X-Forwarded-For behind a trusted proxy), so
the per-IP limit never fires and only the per-account one can.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from socialhub.app import create_app
from socialhub.config import DEFAULT_RATES, Settings, parse_rate
from socialhub.services.throttle import LoginThrottle

BURST = 10
PASSWORD = "correct horse battery"
_addresses = (f"10.{i // 250}.{i % 250}.1" for i in itertools.count(1))

ClientFrom = Callable[[str | None], httpx.AsyncClient]
"""A client whose requests come from a given address (None: a fresh one), with its own cookie jar."""


@asynccontextmanager
async def instances(settings: Settings, count: int = 1) -> AsyncIterator[list[ClientFrom]]:
    """`count` instances of the app on the same settings (Redis shared when configured)."""
    async with AsyncExitStack() as stack:
        makers: list[ClientFrom] = []
        for _ in range(count):
            manager = await stack.enter_async_context(LifespanManager(create_app(settings), startup_timeout=60))

            def client_from(ip: str | None, app: Any = manager.app) -> httpx.AsyncClient:
                transport = httpx.ASGITransport(app=app, client=(ip or next(_addresses), 40000))
                client = httpx.AsyncClient(transport=transport, base_url="http://test")
                stack.push_async_callback(client.aclose)
                return client

            makers.append(client_from)
        yield makers


def limited(make_settings: Callable[..., Settings], **kw: Any) -> Settings:
    return make_settings(ratelimit={"enabled": True}, **kw)


async def signup(client: httpx.AsyncClient, username: str) -> None:
    body = {"name": username, "email": f"{username}@example.com", "username": username, "password": PASSWORD}
    r = await client.post("/auth/signup", json=body)
    assert r.status_code == 201, r.text


async def login(client: httpx.AsyncClient, identifier: str, password: str = "wrong password") -> httpx.Response:
    return await client.post("/auth/login", json={"identifier": identifier, "password": password})


def unique(prefix: str) -> str:
    return f"{prefix}{next(_addresses).replace('.', '')}"


async def stuff(client_from: ClientFrom, identifier: str, n: int) -> list[httpx.Response]:
    """`n` wrong guesses at `identifier`, each from a new address."""
    return [await login(client_from(None), identifier) for _ in range(n)]


def assert_429(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limited"
    rate = parse_rate(DEFAULT_RATES["login_account"], "login_account")
    assert rate is not None
    assert 0 < int(r.headers["retry-after"]) <= rate.interval + 1


async def test_many_addresses_one_account_get_429_after_the_burst(make_settings: Callable[..., Settings]) -> None:
    async with instances(limited(make_settings)) as (client_from,):
        alice, bob = unique("alice"), unique("bob")
        await signup(client_from(None), alice)
        await signup(client_from(None), bob)
        assert [r.status_code for r in await stuff(client_from, alice, BURST)] == [401] * BURST
        # The 11th guess, from yet another address, with the right password even: refused.
        assert_429(await login(client_from(None), alice, PASSWORD))
        # The same account under another spelling, or by its email: the same bucket for the
        # spelling; its own bucket for the email (a shared one would link the two names).
        assert_429(await login(client_from(None), f"  {alice.upper()} "))
        assert (await login(client_from(None), f"{alice}@example.com")).status_code == 401
        # Another account is untouched.
        assert (await login(client_from(None), bob)).status_code == 401
        assert (await login(client_from(None), bob, PASSWORD)).status_code == 200


async def test_the_owner_with_a_device_token_still_logs_in(make_settings: Callable[..., Settings]) -> None:
    async with instances(limited(make_settings)) as (client_from,):
        alice, mallory = unique("alice"), unique("mallory")
        await signup(client_from(None), alice)
        await signup(client_from(None), mallory)
        phone = client_from("192.0.2.10")
        r = await login(phone, alice, PASSWORD)
        assert r.status_code == 200
        cookie = r.headers["set-cookie"]
        assert "socialhub_device=" in cookie and "HttpOnly" in cookie and "Path=/auth/login" in cookie
        assert "samesite=strict" in cookie.lower()
        # Mallory holds a device token too, for her own account.
        thief = client_from(None)
        assert (await login(thief, mallory, PASSWORD)).status_code == 200

        await stuff(client_from, alice, BURST)
        assert_429(await login(client_from(None), alice, PASSWORD))  # a new device is slowed down
        assert_429(await login(thief, alice))  # another account's device token does not help
        # The phone signed in before: it still gets in, and a typo there is an ordinary 401.
        assert (await login(phone, alice, "typo in it")).status_code == 401
        r = await login(phone, alice, PASSWORD)
        assert r.status_code == 200 and r.json()["user"]["username"] == alice
        # A forged token (another device id under a copied signature) is a stranger.
        forged = client_from(None)
        token = phone.cookies["socialhub_device"]
        user_id, device, issued, mac = token.split(".")
        forged.cookies.set("socialhub_device", f"{user_id}.{device[::-1]}.{issued}.{mac}", path="/auth/login")
        assert_429(await login(forged, alice, PASSWORD))


async def test_a_device_has_a_bucket_of_its_own(make_settings: Callable[..., Settings]) -> None:
    async with instances(limited(make_settings)) as (client_from,):
        alice = unique("alice")
        await signup(client_from(None), alice)
        owner = client_from(None)
        assert (await login(owner, alice, PASSWORD)).status_code == 200
        token = owner.cookies["socialhub_device"]

        def thief() -> httpx.AsyncClient:
            # The stolen token, from a new address each time, as across a botnet.
            c = client_from(None)
            c.cookies.set("socialhub_device", token, path="/auth/login")
            return c

        # A stolen device token buys one burst, the same rule, and no more.
        for _ in range(BURST):
            assert (await login(thief(), alice)).status_code == 401
        assert_429(await login(thief(), alice))
        # The account's bucket for strangers is still full.
        assert (await login(client_from(None), alice, PASSWORD)).status_code == 200


async def test_an_unknown_identifier_behaves_like_a_known_one(make_settings: Callable[..., Settings]) -> None:
    async with instances(limited(make_settings)) as (client_from,):
        known, ghost = unique("known"), unique("ghost")
        await signup(client_from(None), known)

        async def trace(identifier: str) -> list[tuple[int, Any, list[str]]]:
            out = []
            for r in await stuff(client_from, identifier, BURST + 2):
                names = sorted(k for k in r.headers if k not in ("content-length", "date"))
                out.append((r.status_code, r.json(), names))
            return out

        seen_known, seen_ghost = await trace(known), await trace(ghost)
        assert seen_known == seen_ghost
        assert [status for status, _, _ in seen_ghost] == [401] * BURST + [429, 429]


async def test_the_limit_is_shared_by_instances_through_redis(make_settings: Callable[..., Settings]) -> None:
    async with instances(limited(make_settings, redis=True), count=2) as (first, second):
        alice = unique("alice")
        await signup(first(None), alice)
        for i in range(BURST):
            assert (await login((first, second)[i % 2](None), alice)).status_code == 401
        assert_429(await login(first(None), alice))
        assert_429(await login(second(None), alice))


async def test_the_limit_is_off_with_rate_limits_off(make_settings: Callable[..., Settings]) -> None:
    async with instances(make_settings()) as (client_from,):  # the tests' default: limits off
        alice = unique("alice")
        await signup(client_from(None), alice)
        assert {r.status_code for r in await stuff(client_from, alice, BURST + 5)} == {401}


def test_device_tokens_are_signed_and_bound_to_their_account() -> None:
    throttle = LoginThrottle(limiter=None, rate=None, secret="s" * 32)  # type: ignore[arg-type]
    token = throttle.issue(42)
    device = throttle.read(token)
    assert device is not None and device.user_id == 42
    renewed = throttle.read(throttle.issue(42, device))
    assert renewed is not None and renewed.device_id == device.device_id
    other = throttle.read(throttle.issue(7, device))
    assert other is not None and other.device_id != device.device_id  # not carried to another account
    assert throttle.read(token.replace("42.", "43.", 1)) is None
    assert LoginThrottle(limiter=None, rate=None, secret="t" * 32).read(token) is None  # type: ignore[arg-type]
    for junk in ("", "a.b.c.d", "x" * 500, None):
        assert throttle.read(junk) is None
