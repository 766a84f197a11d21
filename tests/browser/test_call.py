"""Issue 14, item 4, calls: a real video call between two pages, with chromium's fake
camera and microphone, reaches `connected` with each side's remote <video> playing the
other's picture, then one hangs up and both see why it ended."""

from __future__ import annotations

import httpx
from playwright.async_api import Locator, expect

from tests.browser.conftest import LiveServer, Person
from tests.browser.ui import api_account, connected, eventually, log_in, open_profile, tid

# Offer, answer, ICE and DTLS between two pages on one machine: a few seconds on two cores.
CONNECT_MS = 30_000

PLAYING = "v => !!v.srcObject && !v.paused && v.readyState >= 2 && v.videoWidth > 0"


async def playing(video: Locator) -> None:
    await eventually(lambda: video.evaluate(PLAYING), True, timeout=CONNECT_MS / 1000)


async def test_video_call_connects_plays_and_hangs_up(live: LiveServer, people: tuple[Person, Person]) -> None:
    alice, bob = people
    a, b = await api_account(live, "alice"), await api_account(live, "bob")
    await log_in(alice, live.url, a)
    await log_in(bob, live.url, b)
    await connected(alice)
    await connected(bob)

    await open_profile(alice, b.username)
    await tid(alice, "profile-call-video").click()
    await expect(tid(alice, "call-screen")).to_be_visible()
    await expect(tid(alice, "call-peer")).to_contain_text(b.name)
    await alice.shot("calling")

    incoming = tid(bob, "call-incoming")
    await expect(incoming).to_be_visible()
    await expect(tid(bob, "call-incoming-from")).to_contain_text(a.name)
    await expect(tid(bob, "call-incoming-media")).to_contain_text("video", ignore_case=True)
    await bob.shot("incoming call")
    await tid(bob, "call-accept").click()
    await expect(incoming).to_be_hidden()

    for person in (alice, bob):
        await expect(tid(person, "call-status")).to_have_attribute("data-state", "connected", timeout=CONNECT_MS)
    call_id = await tid(alice, "call-screen").get_attribute("data-call-id")
    assert call_id and call_id == await tid(bob, "call-screen").get_attribute("data-call-id")
    for person in (alice, bob):
        await playing(tid(person, "call-remote-video"))
        await playing(tid(person, "call-local-video"))
    await alice.shot("in call")
    await bob.shot("in call")

    # Mute and camera toggles flip on the caller's side.
    await tid(alice, "call-mute").click()
    await expect(tid(alice, "call-mute")).to_have_attribute("aria-pressed", "true")
    await tid(alice, "call-mute").click()
    await expect(tid(alice, "call-mute")).to_have_attribute("aria-pressed", "false")

    await tid(alice, "call-hangup").click()
    for person in (alice, bob):
        await expect(tid(person, "call-status")).to_have_attribute("data-state", "ended")
        await expect(tid(person, "call-ended-reason")).to_have_attribute("data-reason", "hangup")
    await alice.shot("call ended")
    await bob.shot("call ended")
    await tid(bob, "call-close").click()
    await expect(tid(bob, "call-screen")).to_be_hidden()

    # The server saw the same call: answered, then ended by the hang-up.
    async with httpx.AsyncClient(base_url=live.url) as api:
        r = await api.get("/calls/history", headers=b.auth)
    assert r.status_code == 200, r.text
    call = r.json()["items"][0]
    assert (call["id"], call["media"], call["state"], call["end_reason"]) == (call_id, "video", "ended", "hangup")
    assert call["answered_at"] is not None
