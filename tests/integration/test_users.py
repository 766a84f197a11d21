"""Profiles, follows and lists against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import httpx

from socialhub.config import Settings
from tests.conftest import error_code, signup


async def test_profile_by_id_username_and_me(client: httpx.AsyncClient) -> None:
    a, b = await signup(client), await signup(client)
    for ref in (b.id, "@" + b.username, "@" + b.username.upper()):
        r = await a.get(f"/users/{ref}")
        assert r.status_code == 200, ref
        body = r.json()
        assert body["username"] == b.username and "email" not in body
        assert body["following"] is False and body["followed_by"] is False
    me = (await a.get("/users/me")).json()
    assert me["id"] == a.id and "following" not in me and "email" not in me
    for ref in ("999999999999999", "@nobody_like_this", "abc", "-1", "1" * 30, "@" + "x" * 200):
        r = await a.get(f"/users/{ref}")
        assert r.status_code == 404 and error_code(r) == "not_found", ref


async def test_patch_me(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    r = await a.patch("/users/me", json={"name": "New Name", "bio": "hello"})
    assert r.status_code == 200 and r.json()["name"] == "New Name" and r.json()["bio"] == "hello"
    r = await a.patch("/users/me", json={"bio": ""})
    assert r.json()["bio"] == "" and r.json()["name"] == "New Name"
    r = await a.patch("/users/me", data={"bio": "from a form"})
    assert r.status_code == 200 and r.json()["bio"] == "from a form"
    for bad in ({"name": ""}, {"name": 5}, {"bio": "x" * 501}, {"name": "   "}):
        r = await a.patch("/users/me", json=bad)
        assert r.status_code == 422, bad
    assert (await client.patch("/users/me", json={"bio": "x"})).status_code == 401


async def test_follow_is_idempotent_and_counts_stay_right(client: httpx.AsyncClient) -> None:
    a, b = await signup(client), await signup(client)
    for _ in range(3):
        r = await a.post(f"/users/follow/{b.id}")
        assert r.status_code == 200 and r.json() == {"following": True}
    pb = (await a.get(f"/users/{b.id}")).json()
    assert pb["followers_count"] == 1 and pb["following"] is True and pb["followed_by"] is False
    pa = (await b.get(f"/users/{a.id}")).json()
    assert pa["following_count"] == 1 and pa["followed_by"] is True
    for method, path in (("DELETE", f"/users/follow/{b.id}"), ("POST", f"/users/unfollow/{b.id}")):
        r = await a.client.request(method, path, headers=a.headers)
        assert r.status_code == 200 and r.json() == {"following": False}
    assert (await a.get(f"/users/{b.id}")).json()["followers_count"] == 0
    assert (await a.get("/users/counts")).json() == {"followers": 0, "following": 0}
    # Follow again after the soft delete.
    await a.post(f"/users/follow/{b.id}")
    assert (await a.get("/users/counts")).json() == {"followers": 0, "following": 1}


async def test_follow_by_username_as_profiles_are_read(client: httpx.AsyncClient) -> None:
    a, b = await signup(client), await signup(client)
    r = await a.post(f"/users/follow/@{b.username}")
    assert r.status_code == 200 and r.json() == {"following": True}
    assert (await a.get(f"/users/@{b.username}")).json()["following"] is True
    r = await a.delete(f"/users/follow/@{b.username.upper()}")
    assert r.status_code == 200 and r.json() == {"following": False}
    r = await a.post(f"/users/follow/@{a.username}")
    assert r.status_code == 422 and error_code(r) == "validation_error"
    assert (await a.post("/users/follow/@nobody_like_this")).status_code == 404


async def test_follow_errors(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    r = await a.post(f"/users/follow/{a.id}")
    assert r.status_code == 422 and error_code(r) == "validation_error"
    for ref in ("999999999999999", "nope", "0"):
        r = await a.post(f"/users/follow/{ref}")
        assert r.status_code == 404, ref
        r = await a.delete(f"/users/follow/{ref}")
        assert r.status_code == 404, ref
    assert (await client.post(f"/users/follow/{a.id}")).status_code == 401


async def test_presence_by_id_username_and_me(client: httpx.AsyncClient) -> None:
    """GET /users/{ref}/presence: one user's presence as the socket's `presence` frame
    has it (offline here: no socket is open); 404 for a ref that names nobody."""
    a, b = await signup(client), await signup(client)
    for viewer, ref, who in ((a, b.id, b), (a, "@" + b.username, b), (b, "me", b), (a, a.id, a)):
        r = await viewer.get(f"/users/{ref}/presence")
        assert r.status_code == 200, ref
        assert r.json() == {"type": "presence", "user_id": who.id, "status": "offline", "last_seen": None}, ref
    for ref in ("999999999999999", "@nobody_like_this", "abc", "0"):
        r = await a.get(f"/users/{ref}/presence")
        assert r.status_code == 404 and error_code(r) == "not_found", ref
        assert r.json()["error"]["message"] == "no such user", ref
    assert (await client.get(f"/users/{a.id}/presence")).status_code == 401


async def test_concurrent_follows_and_unfollows_keep_counts_exact(client: httpx.AsyncClient) -> None:
    star = await signup(client)
    fans = [await signup(client) for _ in range(8)]
    # Everyone follows the star many times at once, and the star follows everyone back.
    await asyncio.gather(
        *[f.post(f"/users/follow/{star.id}") for f in fans for _ in range(3)],
        *[star.post(f"/users/follow/{f.id}") for f in fans],
    )
    s = (await star.get("/users/me")).json()
    assert s["followers_count"] == 8 and s["following_count"] == 8
    await asyncio.gather(*[f.delete(f"/users/follow/{star.id}") for f in fans[:5] for _ in range(3)])
    s = (await star.get("/users/me")).json()
    assert s["followers_count"] == 3
    followers = (await star.get(f"/users/{star.id}/followers", params={"limit": 100})).json()
    assert sorted(u["id"] for u in followers["items"]) == sorted(f.id for f in fans[5:])


async def test_follower_lists_paginate_newest_first(client: httpx.AsyncClient) -> None:
    star = await signup(client)
    fans = [await signup(client) for _ in range(5)]
    for f in fans:
        await f.post(f"/users/follow/{star.id}")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"before": cursor} if cursor else {})}
        page = (await star.get(f"/users/{star.id}/followers", params=params)).json()
        seen += [u["id"] for u in page["items"]]
        cursor = page["next"]
        if not cursor:
            break
    assert seen == [f.id for f in reversed(fans)]
    mine = (await star.get("/users/followers/list")).json()
    assert [u["id"] for u in mine["items"]] == seen and mine["next"] is None
    first = mine["items"][0]
    assert first["following"] is False and first["followed_by"] is True
    following = (await fans[0].get("/users/following/list")).json()
    assert [u["id"] for u in following["items"]] == [star.id]
    assert (await star.get(f"/users/@{fans[0].username}/following")).json()["items"][0]["id"] == star.id
    for bad in ({"limit": "0"}, {"limit": "x"}, {"before": "abc"}):
        r = await star.get(f"/users/{star.id}/followers", params=bad)
        assert r.status_code == 422, bad
    assert len((await star.get(f"/users/{star.id}/followers", params={"limit": 1000})).json()["items"]) == 5
    assert (await star.get("/users/999999999999999/followers")).status_code == 404


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    r = await client.get("/no/such/route")
    assert r.status_code == 404 and error_code(r) == "not_found"
    r = await client.get("/auth/login")
    assert r.status_code == 405 and error_code(r)
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["database"] is True


async def test_avatar_upload_replaces_the_old_file(client: httpx.AsyncClient) -> None:
    from tests.media_samples import png

    a = await signup(client)
    first = png(3, 2)
    r = await a.patch("/users/me", data={"bio": "with face"}, files={"avatar": ("a.png", first, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["bio"] == "with face" and body["avatar_url"].startswith("/media/")
    got = await client.get(body["avatar_url"])
    assert got.status_code == 200 and got.content == first and got.headers["content-type"] == "image/png"
    r = await a.patch("/users/me", files={"avatar": ("b.png", png(5, 5), "image/png")})
    second_url = r.json()["avatar_url"]
    assert second_url != body["avatar_url"]
    assert (await client.get(body["avatar_url"])).status_code == 404  # the old file is gone
    assert (await client.get(second_url)).status_code == 200
    # Only images, recognised by their bytes; the profile is untouched by a refused upload.
    r = await a.patch("/users/me", files={"avatar": ("x.png", b"MZ" + b"\0" * 200, "image/png")})
    assert r.status_code == 415 and error_code(r) == "unsupported_media_type"
    assert (await a.get("/users/me")).json()["avatar_url"] == second_url


async def test_every_route_is_in_the_openapi_document(
    client: httpx.AsyncClient, make_settings: Callable[..., Settings]
) -> None:
    from starlette.routing import Route

    from socialhub.app import create_app

    doc = (await client.get("/openapi.json")).json()
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    app = create_app(make_settings())
    served = {
        (m, re.sub(r"\{(\w+):\w+\}", r"{\1}", r.path))  # a Starlette converter is no part of the OpenAPI path
        for r in app.routes
        if isinstance(r, Route)
        for m in (r.methods or ())
        if m != "HEAD"
    }
    assert served == documented
    page = await client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    await a.get(f"/users/{a.id}")
    text = (await client.get("/metrics")).text
    assert 'socialhub_http_requests_total{method="GET",route="/users/{ref}",status="200"}' in text
    assert f"/users/{a.id}" not in text  # raw paths never become labels


async def test_everyone_following_everyone_at_once_never_deadlocks(client: httpx.AsyncClient) -> None:
    people = [await signup(client) for _ in range(10)]
    for _ in range(2):
        results = await asyncio.gather(*[p.post(f"/users/follow/{q.id}") for p in people for q in people if p is not q])
        assert sorted({r.status_code for r in results}) == [200], [r.text for r in results if r.status_code != 200][:3]
    for p in people:
        me = (await p.get("/users/me")).json()
        assert me["followers_count"] == me["following_count"] == len(people) - 1
