"""Profiles, follows and lists against a real PostgreSQL."""

from __future__ import annotations

import asyncio

import httpx

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
