"""Two instances sharing one PostgreSQL and one Redis, as behind a load balancer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from socialhub.config import Settings
from tests.conftest import running_app, signup


async def test_logout_on_one_instance_is_refused_on_the_other_at_once(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(redis=True)
    async with running_app(settings) as one, running_app(settings) as two:
        a = await signup(one)
        headers = a.headers
        # Warm the other instance's session cache, then log out on the first.
        assert (await two.get("/auth/me", headers=headers)).status_code == 200
        assert (await one.post("/auth/logout", headers=headers)).status_code == 204
        started = time.monotonic()
        while (await two.get("/auth/me", headers=headers)).status_code != 401:
            assert time.monotonic() - started < 1.0, "instance two still accepts a logged-out session"
            await asyncio.sleep(0.01)


async def test_refresh_replay_on_one_instance_revokes_on_the_other(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis=True)
    async with running_app(settings) as one, running_app(settings) as two:
        a = await signup(one)
        fresh = (await two.post("/auth/refresh", json={"refresh_token": a.refresh_token})).json()
        headers = {"Authorization": f"Bearer {fresh['token']}"}
        assert (await two.get("/auth/me", headers=headers)).status_code == 200
        assert (await one.post("/auth/refresh", json={"refresh_token": a.refresh_token})).status_code == 401
        started = time.monotonic()
        while (await two.get("/auth/me", headers=headers)).status_code != 401:
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.01)
