"""One supervisor for every background worker (outbox readers, consumers, sweepers).

Each worker is an `async run(stop)` that returns when `stop` is set. A worker that
crashes is logged and restarted with backoff; it never takes the process down.
Workers stop in the reverse of the order they were added.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

Runner = Callable[[asyncio.Event], Awaitable[None]]
MAX_BACKOFF_SECONDS = 10.0


class Supervisor:
    def __init__(self) -> None:
        self._workers: list[tuple[str, Runner]] = []
        self._tasks: list[tuple[str, asyncio.Event, asyncio.Task[None]]] = []

    def add(self, name: str, run: Runner) -> None:
        self._workers.append((name, run))

    async def start(self) -> None:
        for name, run in self._workers:
            stop = asyncio.Event()
            task = asyncio.create_task(self._keep_running(name, run, stop), name=f"worker:{name}")
            self._tasks.append((name, stop, task))

    async def _keep_running(self, name: str, run: Runner, stop: asyncio.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                await run(stop)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("worker %s crashed; restarting in %.1fs", name, backoff)
            if stop.is_set():
                return
            try:
                await asyncio.wait_for(stop.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def stop(self, grace: float = 10.0) -> None:
        """Ask each worker to stop, newest first; cancel any that overruns `grace` seconds."""
        for name, stop, task in reversed(self._tasks):
            stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), grace)
            except TimeoutError:
                logger.warning("worker %s did not stop in %.0fs; cancelling", name, grace)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._tasks.clear()
