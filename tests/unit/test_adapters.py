"""The adapter tables and the names config accepts are the same lists, and the start and
stop steps are in the written order."""

from __future__ import annotations

import asyncio
from typing import get_args

import pytest

from socialhub import adapters
from socialhub.config import EventPathName, MailBackendName, MediaStoreName, SharedStateName, load_settings
from socialhub.lifecycle import Step, running


@pytest.mark.parametrize(
    ("table", "names"),
    [
        (adapters.MEDIA_STORES, MediaStoreName),
        (adapters.MAILERS, MailBackendName),
        (adapters.SHARED_STATES, SharedStateName),
        (adapters.EVENT_PATHS, EventPathName),
    ],
)
def test_every_name_config_accepts_has_an_adapter_and_no_other(table: dict[str, object], names: object) -> None:
    assert set(table) == set(get_args(names))


def test_the_names_follow_the_settings() -> None:
    s = load_settings(env={})
    assert (s.redis.backend, s.kafka.backend, s.media.store, s.mail.backend) == ("memory", "outbox", "disk", "file")
    s = load_settings(env={"SOCIALHUB_REDIS_URL": "redis://x", "SOCIALHUB_KAFKA_BOOTSTRAP_SERVERS": "k:9092"})
    assert (s.redis.backend, s.kafka.backend) == ("redis", "kafka")


async def test_steps_start_in_order_and_the_started_ones_stop_in_reverse() -> None:
    seen: list[str] = []

    def step(name: str, *, fail: bool = False) -> Step:
        async def start() -> None:
            seen.append(f"start {name}")
            if fail:
                raise RuntimeError(name)

        async def stop() -> None:
            seen.append(f"stop {name}")

        return Step(name, start=start, stop=stop)

    async with running([step("a"), Step("b-stop-only", stop=step("b").stop), step("c")]):
        seen.append("serving")
    assert seen == ["start a", "start c", "serving", "stop c", "stop b", "stop a"]
    seen.clear()
    with pytest.raises(RuntimeError):
        async with running([step("a"), step("b", fail=True), step("c")]):
            pass
    assert seen == ["start a", "start b", "stop a"]  # b never started, c never tried


async def test_a_spawned_job_is_waited_for_at_stop_and_a_timer_is_cancelled() -> None:
    from socialhub.supervisor import Supervisor

    sup = Supervisor()
    await sup.start()
    done: list[str] = []

    async def mail() -> None:
        await asyncio.sleep(0.05)
        done.append("mail")

    async def timer() -> None:
        await asyncio.sleep(30)
        done.append("timer")

    async def broken() -> None:
        raise ValueError("logged, not lost")

    sup.spawn("mail", mail())
    sup.spawn("timer", timer(), wait=False)
    sup.spawn("broken", broken())
    await asyncio.wait_for(sup.stop(grace=5), 5)
    assert done == ["mail"]
