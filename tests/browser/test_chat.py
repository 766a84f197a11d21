"""Issue 14, item 4, the chat half: two people chat both ways with typing indicators and
read receipts; one is cut off while the other writes, and on coming back sees every
missed message exactly once and in order; the server restarts mid-chat and both pages
carry on by themselves, without a reload."""

from __future__ import annotations

import asyncio
import re

from playwright.async_api import Locator, expect

from tests.browser.cable import Cable
from tests.browser.conftest import LiveServer, Person
from tests.browser.ui import api_account, badge, connected, eventually, log_in, open_profile, screen, tid

# A reconnect waits out a backoff with jitter (the SDK's: up to 0.5 s, 1 s, 2 s, 4 s, ...
# per attempt) after the server is back, which takes a couple of seconds to start.
RECONNECT_MS = 30_000


async def bodies(person: Person) -> list[str]:
    return [t.strip() for t in await tid(person, "messages").get_by_test_id("message-body").all_inner_texts()]


async def seqs(person: Person) -> list[int]:
    found = tid(person, "messages").get_by_test_id("message")
    return [int(s or 0) for s in await found.evaluate_all("els => els.map(e => e.dataset.seq)")]


async def shows_exactly(person: Person, expected: list[str]) -> None:
    """The room shows these messages, each once, in this order, with seqs 1..n."""
    await expect(tid(person, "messages").get_by_test_id("message-body")).to_have_text(expected)
    # An own message shows at once and takes its seq from the server's ack.
    await eventually(lambda: seqs(person), list(range(1, len(expected) + 1)))
    await expect(tid(person, "messages").get_by_test_id("message-body")).to_have_text(expected)


async def send(person: Person, text: str) -> None:
    await tid(person, "chat-input").fill(text)
    await tid(person, "chat-send").click()
    await expect(tid(person, "chat-input")).to_have_value("")


def receipt_of(person: Person, text: str) -> Locator:
    mine = tid(person, "message").filter(has_text=text)
    return mine.get_by_test_id("message-receipt")


async def test_chat_typing_receipts_offline_and_restart(
    live: LiveServer, people: tuple[Person, Person], cable: Cable
) -> None:
    alice, bob = people
    a, b = await api_account(live, "alice"), await api_account(live, "bob")
    await log_in(alice, live.url, a)
    # bob reaches the server through a cable the test can pull out.
    await log_in(bob, cable.url, b)
    await connected(alice)
    await connected(bob)

    # alice opens a direct room from bob's profile and writes first.
    await open_profile(alice, b.username)
    await tid(alice, "profile-message").click()
    await screen(alice, "room")
    room_id = await tid(alice, "room").get_attribute("data-room-id")
    assert room_id
    sent: list[str] = ["Hi Bob, are you there?"]
    await send(alice, sent[0])
    await expect(receipt_of(alice, sent[0])).to_have_attribute("data-state", "sent")
    await alice.shot("first message sent")

    # bob finds the room in his list, opens it: alice's receipt turns to "read".
    await badge(bob, "chat-badge", 1)
    await tid(bob, "nav-chat").click()
    await screen(bob, "rooms")
    item = bob.page.locator(f'[data-testid="room-item"][data-room-id="{room_id}"]')
    await expect(item).to_contain_text(sent[0])
    await expect(item.get_by_test_id("room-unread")).to_have_text("1")
    await expect(item.get_by_test_id("room-presence")).to_have_attribute("data-status", "online")
    await bob.shot("rooms list")
    await item.click()
    await screen(bob, "room")
    await shows_exactly(bob, sent)
    await expect(receipt_of(alice, sent[0])).to_have_attribute("data-state", "read")
    await badge(bob, "chat-badge", 0)

    # bob types: alice sees it; he sends: the indicator goes, the message arrives.
    await tid(bob, "chat-input").press_sequentially("Yes! Just got ", delay=30)
    indicator = tid(alice, "typing-indicator")
    await expect(indicator).to_be_visible()
    await expect(indicator).to_contain_text(b.name)
    await alice.shot("bob is typing")
    await tid(bob, "chat-input").press_sequentially("back.", delay=30)
    await tid(bob, "chat-send").click()
    sent.append("Yes! Just got back.")
    await expect(indicator).to_be_hidden()
    await shows_exactly(alice, sent)
    await expect(receipt_of(bob, sent[1])).to_have_attribute("data-state", "read")
    await bob.shot("chat both ways")

    # bob's link drops (and chromium knows it is offline) while alice writes five more.
    async with bob.outage():
        cable.unplug()
        await bob.context.set_offline(True)
        await expect(tid(bob, "connection-status")).not_to_have_attribute("data-state", "open")
        missed = [f"While you were away #{i}" for i in range(1, 6)]
        for text in missed:
            await send(alice, text)
            await expect(receipt_of(alice, text)).to_have_attribute("data-state", "sent")
        sent += missed
        await shows_exactly(alice, sent)
        await bob.shot("offline")
        # Really cut off: none of them reached bob, and alice sees him go offline.
        assert await bodies(bob) == sent[:2]
        await expect(tid(alice, "room-presence-dot")).to_have_attribute("data-status", "offline")
        await alice.shot("bob offline")

        cable.plug()
        await bob.context.set_offline(False)
        await expect(tid(bob, "connection-status")).to_have_attribute("data-state", "open", timeout=RECONNECT_MS)
    await shows_exactly(bob, sent)
    await bob.shot("back online, caught up")
    await expect(tid(alice, "room-presence-dot")).to_have_attribute("data-status", "online")
    await expect(receipt_of(alice, missed[-1])).to_have_attribute("data-state", "read")
    # The five came while bob had no socket, so each made him a `message` notification;
    # reading the room to its end read them too: his Alerts badge is empty again.
    await badge(bob, "notif-badge", 0)

    # The server restarts mid-chat: both pages reconnect and rejoin by themselves, and what
    # alice wrote while it was down goes out once it is back, once.
    async with alice.outage(), bob.outage():
        down = asyncio.Event()
        restart = asyncio.create_task(live.restart(down))
        await down.wait()
        await expect(tid(alice, "connection-status")).not_to_have_attribute("data-state", "open")
        while_down = "Written while the server was down"
        await send(alice, while_down)
        await expect(receipt_of(alice, while_down)).to_have_attribute("data-state", "sending")
        await alice.shot("sending while the server is down")
        await restart
        for person in (alice, bob):
            await expect(tid(person, "connection-status")).to_have_attribute("data-state", "open", timeout=RECONNECT_MS)
    await expect(receipt_of(alice, while_down)).to_have_attribute("data-state", re.compile("sent|read"))
    sent.append(while_down)
    await shows_exactly(bob, sent)
    await alice.shot("after the restart")
    await send(bob, "Did the server just restart?")
    await send(alice, "It did, and we carried on.")
    sent += ["Did the server just restart?", "It did, and we carried on."]
    await shows_exactly(alice, sent)
    await shows_exactly(bob, sent)
    await bob.shot("after the restart")
