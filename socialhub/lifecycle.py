"""Start-up and shutdown written down as data: an ordered list of steps, each with one
owner. Steps start in order; the ones that started stop in reverse order, also when a
later step fails to start or the server is stopping. Before the steps stop, a SIGTERM
drains the instance (`Drain`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One part of the process's life: `start` runs at start-up (None: nothing to do),
    `stop` at shutdown once `start` has run."""

    name: str
    start: Callable[[], Awaitable[None]] | None = None
    stop: Callable[[], Awaitable[None]] | None = None


@asynccontextmanager
async def running(steps: Sequence[Step]) -> AsyncIterator[None]:
    """Start `steps` in order; on leaving, stop those that started, last first."""
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"two steps share a name: {names}")
    async with AsyncExitStack() as stack:
        for step in steps:
            if step.start is not None:
                logger.debug("starting %s", step.name)
                await step.start()
            if step.stop is not None:
                stack.push_async_callback(_stopping, step.name, step.stop)
        yield


async def _stopping(name: str, stop: Callable[[], Awaitable[None]]) -> None:
    logger.debug("stopping %s", name)
    await stop()


class Drain:
    """The first part of a graceful stop (SIGTERM): the instance says it is not ready
    (/readyz 503, so load balancers stop sending it new clients) and goes on serving for
    `seconds`; then its sockets are closed with 1012 spread over a window as long again,
    so their clients reconnect elsewhere a few at a time rather than all in one burst.
    The process stops after `run` returns (the lifespan's steps then close what is left)."""

    def __init__(self, seconds: float, close_sockets: Callable[[float], Awaitable[None]]) -> None:
        self.seconds = seconds
        self.draining = False
        self._close_sockets = close_sockets

    async def serving(self) -> bool:
        """The readiness check: False from the moment the drain begins."""
        return not self.draining

    async def run(self) -> None:
        self.draining = True
        logger.info(
            "draining: not ready; serving %.1f s more, then closing sockets over %.1f s", self.seconds, self.seconds
        )
        await asyncio.sleep(self.seconds)
        await self._close_sockets(self.seconds)
        logger.info("drained: stopping")
