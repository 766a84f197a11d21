"""The PubSub contract, run over every implementation; then what only Redis can show.

The Redis-only tests simulate what production sees: two app instances on one Redis,
the server dropping the subscriber link (`CLIENT KILL TYPE pubsub`, aimed at this
test's own connection by client name and id, so other suites on the same server are
untouched), Redis going away and coming back (a TCP proxy that is cut), a link that
goes silent without closing (the proxy frozen), and a port with nothing listening.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from socialhub.errors import Unavailable
from socialhub.infra.pubsub.base import PubSub
from socialhub.infra.pubsub.redis import RedisPubSub
from tests.contract.conftest import PubSubEnv, TcpProxy, eventually


class Recorder:
    """A handler that remembers what it got."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []

    async def __call__(self, channel: str, payload: bytes) -> None:
        self.got.append((channel, payload))

    @property
    def payloads(self) -> list[bytes]:
        return [payload for _, payload in self.got]

    async def wait_for(self, count: int, within: float = 3.0) -> None:
        await eventually(lambda: len(self.got) >= count, within)


async def test_two_handlers_on_one_channel_share_one_broker_subscription(pubsub_env: PubSubEnv) -> None:
    ps = await pubsub_env.new()
    first, second = Recorder(), Recorder()
    await ps.subscribe("room:1", first)
    await ps.subscribe("room:1", second)
    assert await pubsub_env.broker_subscriptions("room:1") in (None, 1)

    await ps.publish("room:1", b"hello")
    await first.wait_for(1)
    await second.wait_for(1)
    assert first.got == second.got == [("room:1", b"hello")]


async def test_messages_arrive_in_publish_order(pubsub_env: PubSubEnv) -> None:
    ps = await pubsub_env.new()
    a, b = Recorder(), Recorder()
    await ps.subscribe("c", a)
    await ps.subscribe("c", b)
    sent = [str(i).encode() for i in range(300)]
    for payload in sent:
        await ps.publish("c", payload)
    await a.wait_for(300)
    await b.wait_for(300)
    assert a.payloads == sent
    assert b.payloads == sent


async def test_channels_are_separate(pubsub_env: PubSubEnv) -> None:
    ps = await pubsub_env.new()
    a, b = Recorder(), Recorder()
    await ps.subscribe("a", a)
    await ps.subscribe("b", b)
    await ps.publish("a", b"for a")
    await ps.publish("nobody", b"lost")
    await ps.publish("b", b"for b")
    await a.wait_for(1)
    await b.wait_for(1)
    await asyncio.sleep(0.05)
    assert a.got == [("a", b"for a")]
    assert b.got == [("b", b"for b")]


async def test_closing_one_subscription_keeps_the_other(pubsub_env: PubSubEnv) -> None:
    ps = await pubsub_env.new()
    kept, dropped = Recorder(), Recorder()
    await ps.subscribe("c", kept)
    sub = await ps.subscribe("c", dropped)
    await sub.close()
    await sub.close()  # idempotent
    assert await pubsub_env.broker_subscriptions("c") in (None, 1)

    await ps.publish("c", b"after")
    await kept.wait_for(1)
    await asyncio.sleep(0.05)
    assert dropped.got == []


async def test_last_listener_out_unsubscribes_the_process(pubsub_env: PubSubEnv) -> None:
    ps = await pubsub_env.new()
    one, two = Recorder(), Recorder()
    subs = [await ps.subscribe("c", one), await ps.subscribe("c", two)]
    for sub in subs:
        await sub.close()
    if pubsub_env.kind == "redis":
        await eventually(lambda: _numsub_is(pubsub_env, "c", 0))
    # And subscribing again works.
    three = Recorder()
    await ps.subscribe("c", three)
    await ps.publish("c", b"again")
    await three.wait_for(1)
    assert one.got == two.got == []


async def _numsub_is(env: PubSubEnv, channel: str, count: int) -> bool:
    return await env.broker_subscriptions(channel) == count


async def test_a_failing_handler_does_not_stop_delivery(
    pubsub_env: PubSubEnv, caplog: pytest.LogCaptureFixture
) -> None:
    ps = await pubsub_env.new()
    calls: list[bytes] = []

    async def flaky(channel: str, payload: bytes) -> None:
        calls.append(payload)
        if payload == b"boom":
            raise RuntimeError("handler bug")

    steady = Recorder()
    await ps.subscribe("c", flaky)
    await ps.subscribe("c", steady)
    with caplog.at_level(logging.ERROR):
        for payload in (b"boom", b"1", b"2"):
            await ps.publish("c", payload)
        await steady.wait_for(3)
        await eventually(lambda: len(calls) == 3)
    assert calls == [b"boom", b"1", b"2"]
    assert any("handler bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)


async def test_a_stuck_handler_does_not_block_other_listeners_or_channels(pubsub_env: PubSubEnv) -> None:
    ps = await pubsub_env.new()
    release = asyncio.Event()

    async def stuck(channel: str, payload: bytes) -> None:
        await release.wait()

    same_channel, other_channel = Recorder(), Recorder()
    await ps.subscribe("c", stuck)
    await ps.subscribe("c", same_channel)
    await ps.subscribe("d", other_channel)
    for i in range(10):
        await ps.publish("c", b"%d" % i)
        await ps.publish("d", b"%d" % i)
    await same_channel.wait_for(10)
    await other_channel.wait_for(10)
    release.set()


async def test_a_full_inbox_drops_the_oldest(pubsub_env: PubSubEnv, caplog: pytest.LogCaptureFixture) -> None:
    ps = await pubsub_env.new(inbox_limit=5)
    release = asyncio.Event()
    got: list[bytes] = []

    async def slow(channel: str, payload: bytes) -> None:
        await release.wait()
        got.append(payload)

    marker = Recorder()
    await ps.subscribe("c", slow)
    await ps.subscribe("c", marker)
    with caplog.at_level(logging.WARNING):
        for i in range(20):
            await ps.publish("c", b"%d" % i)
        # The marker has the same small inbox, so it may drop too; it only shows
        # that everything published has been through the fan-out.
        await eventually(lambda: marker.payloads[-1:] == [b"19"])
    release.set()
    await eventually(lambda: got[-1:] == [b"19"])
    # At most the one message already in the handler, then the five newest.
    assert got[-5:] == [b"15", b"16", b"17", b"18", b"19"]
    assert len(got) <= 6
    assert any("dropped the oldest" in r.getMessage() for r in caplog.records)


async def test_healthy_while_running_and_closed_means_unavailable(pubsub_env: PubSubEnv) -> None:
    ps = await pubsub_env.new()
    assert ps.healthy
    await ps.close()
    assert not ps.healthy
    with pytest.raises(Unavailable):
        await ps.publish("c", b"x")
    await ps.close()  # idempotent


async def test_close_ends_every_task(pubsub_env: PubSubEnv) -> None:
    ps = await pubsub_env.new()
    release = asyncio.Event()

    async def stuck(channel: str, payload: bytes) -> None:
        await release.wait()

    await ps.subscribe("c", stuck)
    await ps.publish("c", b"x")
    await eventually(lambda: _tasks_named("pubsub-deliver") == 1)
    await ps.close()
    assert _tasks_named("pubsub-deliver") == 0
    assert _tasks_named("redis-pubsub") == 0


def _tasks_named(prefix: str) -> int:
    return sum(1 for t in asyncio.all_tasks() if t.get_name().startswith(prefix) and not t.done())


# Redis only.


async def test_two_instances_see_each_others_messages(redis_env: PubSubEnv) -> None:
    one, two = await redis_env.new("one"), await redis_env.new("two")
    at_one, at_two = Recorder(), Recorder()
    await one.subscribe("room", at_one)
    await two.subscribe("room", at_two)
    assert await redis_env.broker_subscriptions("room") == 2
    await one.publish("room", b"from one")
    await two.publish("room", b"from two")
    await at_one.wait_for(2)
    await at_two.wait_for(2)
    assert at_one.payloads == at_two.payloads == [b"from one", b"from two"]


async def test_a_killed_link_is_resubscribed_and_reported(redis_env: PubSubEnv) -> None:
    ps = await redis_env.new("victim", reconnect_min=0.05, reconnect_max=0.5)
    publisher = await redis_env.new("publisher")
    a, b, resets = Recorder(), Recorder(), 0

    async def on_reset() -> None:
        nonlocal resets
        resets += 1

    ps.on_reset(on_reset)
    await ps.subscribe("a", a)
    await ps.subscribe("a", Recorder())
    await ps.subscribe("b", b)
    assert ps.healthy

    assert await redis_env.kill_subscriber("victim") == 1
    await eventually(lambda: resets == 1)
    assert ps.healthy
    assert await redis_env.broker_subscriptions("a") == 1
    assert await redis_env.broker_subscriptions("b") == 1

    await publisher.publish("a", b"after a")
    await publisher.publish("b", b"after b")
    await a.wait_for(1)
    await b.wait_for(1)
    assert a.payloads == [b"after a"] and b.payloads == [b"after b"]


async def test_redis_down_then_back(redis_env: PubSubEnv, redis_proxy: tuple[TcpProxy, str]) -> None:
    proxy, url = redis_proxy
    ps = RedisPubSub(url, redis_env.prefix, reconnect_min=0.05, reconnect_max=0.3)
    publisher = await redis_env.new("publisher")
    got, resets = Recorder(), asyncio.Event()

    async def on_reset() -> None:
        resets.set()

    try:
        await ps.start()
        ps.on_reset(on_reset)
        await ps.subscribe("c", got)
        assert ps.healthy

        await proxy.cut()
        await eventually(lambda: not ps.healthy)
        with pytest.raises(Unavailable):
            await ps.publish("c", b"while down")
        await asyncio.sleep(0.5)  # several failed reconnects
        assert not ps.healthy and not resets.is_set()
        late = Recorder()
        await ps.subscribe("late", late)  # recorded now, made when Redis is back

        await proxy.start()
        await asyncio.wait_for(resets.wait(), 5)
        assert ps.healthy
        await publisher.publish("c", b"after")
        await publisher.publish("late", b"late")
        await got.wait_for(1)
        await late.wait_for(1)
        assert got.payloads == [b"after"]
        await ps.publish("c", b"own")
        await got.wait_for(2)
    finally:
        await ps.close()


async def test_a_silent_link_is_found_by_ping(redis_env: PubSubEnv, redis_proxy: tuple[TcpProxy, str]) -> None:
    proxy, url = redis_proxy
    ps = RedisPubSub(url, redis_env.prefix, reconnect_min=0.05, reconnect_max=0.3, health_check_interval=0.2)
    publisher = await redis_env.new("publisher")
    got, resets = Recorder(), asyncio.Event()

    async def on_reset() -> None:
        resets.set()

    try:
        await ps.start()
        ps.on_reset(on_reset)
        await ps.subscribe("c", got)
        proxy.freeze()
        await eventually(lambda: not ps.healthy, within=3)
        proxy.thaw()
        await asyncio.wait_for(resets.wait(), 5)
        await publisher.publish("c", b"after")
        await got.wait_for(1)
    finally:
        await ps.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_publish_to_a_closed_port_raises_unavailable(key_prefix: str) -> None:
    ps: PubSub = RedisPubSub(f"redis://127.0.0.1:{_closed_port()}/0", key_prefix)
    try:
        with pytest.raises(Unavailable):
            await ps.publish("c", b"x")
        with pytest.raises(Unavailable):
            await ps.start()
        assert not ps.healthy
    finally:
        await ps.close()
