"""CallService's sweeper on real PostgreSQL, with its timers shortened: what the
end-to-end tests cannot wait for (the default 30 s ring, the disconnect grace).

The service gets a real CallStore and records what it publishes and notifies; who is
online is set by the test. The database is the module's own, so the sweeper sees only
these calls.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

import socialhub.services.calls as calls_module
from socialhub.domain.live import UserEvent
from socialhub.domain.notifications import NewNotification
from socialhub.domain.users import Principal
from socialhub.services.calls import CallService
from socialhub.storage.calls import CallStore
from socialhub.storage.database import Database
from socialhub.storage.migrate import migrate
from socialhub.storage.users import UserStore
from tests.conftest import fresh_database

GRACE = 0.3  # stands in for DISCONNECT_GRACE


@pytest.fixture(scope="module")
async def calls_db() -> AsyncIterator[Database]:
    async with fresh_database("socialhub_calls_sweep") as url:
        await migrate(url)
        db = Database()
        await db.open(url, min_size=1, max_size=4)
        yield db
        await db.close()


@pytest.fixture(scope="module")
async def offer() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("chat")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


class Wire:
    """What the service sends: frames per user channel, notifications, who is online."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, dict[str, Any]]] = []
        self.notified: list[NewNotification] = []
        self.online_users: set[int] = set()

    async def publish(self, channel: str, payload: bytes) -> None:
        event = json.loads(payload)
        assert set(event) <= set(UserEvent.__struct_fields__)
        self.frames.append((channel, event["frame"]))

    async def notify(self, new: NewNotification) -> None:
        self.notified.append(new)

    async def online(self, user_ids: Sequence[int]) -> dict[int, bool]:
        return {u: u in self.online_users for u in user_ids}

    def ended(self) -> list[tuple[str, str, str]]:
        return [(ch, f["call_id"], f["reason"]) for ch, f in self.frames if f["type"] == "call_ended"]


async def existing_users(user_ids: Sequence[int]) -> set[int]:
    return set(user_ids)


async def two_users(db: Database) -> tuple[int, int]:
    store = UserStore(db)
    ids = []
    for _ in range(2):
        u = "s" + secrets.token_hex(6)
        ids.append((await store.insert_user(username=u, email=f"{u}@example.test", name=u, password_hash="x")).id)
    return ids[0], ids[1]


def service(db: Database, wire: Wire, ring_timeout: float) -> CallService:
    return CallService(
        store=CallStore(db),
        publish=wire.publish,
        notify=wire.notify,
        online=wire.online,
        existing_users=existing_users,
        ring_timeout=ring_timeout,
    )


@pytest.fixture(autouse=True)
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calls_module, "DISCONNECT_GRACE", GRACE)


async def sweep_for(svc: CallService, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await svc.sweep_once()
        await asyncio.sleep(0.05)


async def test_a_ring_to_an_offline_callee_is_missed_not_hung_up(calls_db: Database, offer: str) -> None:
    """The callee has no socket anywhere (a phone with the app closed): the ring goes on
    until its timeout and ends `missed`, with the missed_call notification (SPEC)."""
    wire = Wire()
    caller, callee = await two_users(calls_db)
    wire.online_users = {caller}
    svc = service(calls_db, wire, ring_timeout=4 * GRACE)
    call = await svc.invite(Principal(caller, 1), 11, callee, "audio", offer)
    await sweep_for(svc, 2 * GRACE)
    record = await svc.store.get_call(int(call.id))
    assert record is not None and record.state == "ringing"
    assert wire.ended() == []
    await sweep_for(svc, 3 * GRACE)
    record = await svc.store.get_call(int(call.id))
    assert record is not None and record.state == "ended" and record.end_reason == "missed"
    assert sorted(wire.ended()) == sorted(
        [(f"user:{caller}", call.id, "missed"), (f"user:{callee}", call.id, "missed")]
    )
    assert wire.notified == [NewNotification(callee, "missed_call", caller, call_id=int(call.id))]


async def test_a_ringing_caller_who_vanishes_ends_the_ring(calls_db: Database, offer: str) -> None:
    wire = Wire()
    caller, callee = await two_users(calls_db)
    wire.online_users = {caller, callee}
    svc = service(calls_db, wire, ring_timeout=30)
    call = await svc.invite(Principal(caller, 1), 11, callee, "audio", offer)
    await sweep_for(svc, 2 * GRACE)
    assert wire.ended() == []
    wire.online_users = {callee}
    await sweep_for(svc, 2 * GRACE)
    record = await svc.store.get_call(int(call.id))
    assert record is not None and record.end_reason == "disconnected"
    assert sorted(wire.ended()) == sorted(
        [(f"user:{caller}", call.id, "hangup"), (f"user:{callee}", call.id, "hangup")]
    )
    assert wire.notified == []


@pytest.mark.parametrize("vanishing", ["caller", "callee"])
async def test_an_active_call_ends_when_a_party_is_gone_past_the_grace(
    calls_db: Database, offer: str, vanishing: str
) -> None:
    wire = Wire()
    caller, callee = await two_users(calls_db)
    wire.online_users = {caller, callee}
    svc = service(calls_db, wire, ring_timeout=30)
    call = await svc.invite(Principal(caller, 1), 11, callee, "audio", offer)
    await svc.answer(Principal(callee, 2), 22, int(call.id), offer)
    wire.frames.clear()  # the callee's other devices were told answered_elsewhere
    gone = caller if vanishing == "caller" else callee
    # Away for less than the grace (a network switch): the call goes on.
    wire.online_users = {caller, callee} - {gone}
    await sweep_for(svc, GRACE / 2)
    wire.online_users = {caller, callee}
    await sweep_for(svc, GRACE)
    record = await svc.store.get_call(int(call.id))
    assert record is not None and record.state == "active"
    # Away for good.
    wire.online_users = {caller, callee} - {gone}
    await sweep_for(svc, 2 * GRACE)
    record = await svc.store.get_call(int(call.id))
    assert record is not None and record.state == "ended" and record.end_reason == "disconnected"
    assert sorted(wire.ended()) == sorted(
        [(f"user:{caller}", call.id, "hangup"), (f"user:{callee}", call.id, "hangup")]
    )
