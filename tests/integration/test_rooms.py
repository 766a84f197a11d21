"""GET /chat/rooms against a real PostgreSQL: pages by last activity."""

from __future__ import annotations

import httpx

from tests.conftest import signup


async def test_rooms_page_by_last_activity_and_stop_at_a_room_gone(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    others = [await signup(client) for _ in range(3)]
    made = []
    for o in others:  # each room's activity begins when it is made: the last made is the newest
        r = await a.post("/chat/rooms", json={"members": [o.id]})
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])
    newest_first = made[::-1]

    first = (await a.get("/chat/rooms", params={"limit": 2})).json()
    assert [room["id"] for room in first["items"]] == newest_first[:2]
    assert first["next"] == newest_first[1]
    rest = (await a.get("/chat/rooms", params={"limit": 2, "before": first["next"]})).json()
    assert [room["id"] for room in rest["items"]] == newest_first[2:]
    assert rest["next"] is None

    # A cursor naming no room (one deleted, or made up) is the end of the list.
    gone = (await a.get("/chat/rooms", params={"before": "999999999999999"})).json()
    assert gone == {"items": [], "next": None}
