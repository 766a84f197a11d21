"""One supervisor for every background worker (outbox readers, consumers, sweepers).

Each worker is an `async run(stop)` that returns when `stop` is set. A worker that
crashes is logged and restarted with backoff; it never takes the process down.
Workers stop in the reverse of the order they were added.

A dependency that is down (`socialhub.errors.Unavailable`: PostgreSQL restarting,
Redis gone) is not a bug: workers ride through it, and `OutageLog` keeps a retry storm
to a few lines without tracebacks: when it starts, now and then while it lasts, and
when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from socialhub.errors import Unavailable

logger = logging.getLogger(__name__)

Runner = Callable[[asyncio.Event], Awaitable[None]]


class Spawn(Protocol):
    """Supervisor.spawn as a service sees it: run a one-off job in the background."""

    def __call__(self, name: str, job: Coroutine[Any, Any, None], *, wait: bool = True) -> object: ...


MAX_BACKOFF_SECONDS = 10.0
# While an outage lasts, one reminder this often: enough to see it in a log tail, few
# enough that an hour's outage is 60 lines per worker, not one per retry.
OUTAGE_REMINDER_SECONDS = 60.0


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` or until `stop` is set, whichever comes first; True when stopped.

    The one wait of every `run(stop)` worker between two rounds, so that shutdown never
    waits out a backoff."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


class OutageLog:
    """The log of one worker's view of a dependency that is down. `failed` on each
    Unavailable (or other outage), `ok` after each success; only the changes (and a reminder each
    OUTAGE_REMINDER_SECONDS) are logged, without a traceback."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self._since: float | None = None
        self._told = 0.0
        self._failures = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        reason = exc.message if isinstance(exc, Unavailable) else repr(exc)
        self._failures += 1
        if self._since is None:
            self._since = self._told = now
            self._log.warning("%s: unavailable (%s); retrying until it is back", self._what, reason)
        elif now - self._told >= OUTAGE_REMINDER_SECONDS:
            self._told = now
            self._log.warning(
                "%s: still unavailable after %.0fs (%d attempts): %s",
                self._what, now - self._since, self._failures, reason,
            )  # fmt: skip

    def ok(self) -> None:
        if self._since is not None:
            self._log.warning(
                "%s: going on after %.1fs unavailable (%d attempts)",
                self._what, time.monotonic() - self._since, self._failures,
            )  # fmt: skip
            self._since = None
            self._failures = 0


class Supervisor:
    """Every background task of the process: long-running workers (`add`, each a
    `run(stop)` restarted with backoff when it fails) and one-off jobs (`spawn`: a reset
    mail, a delayed frame), whose failures are logged rather than lost."""

    def __init__(self) -> None:
        self._workers: list[tuple[str, Runner]] = []
        self._tasks: list[tuple[str, asyncio.Event, asyncio.Task[None]]] = []
        self._jobs: dict[asyncio.Task[None], bool] = {}  # job -> whether stop() waits for it

    def add(self, name: str, run: Runner) -> None:
        self._workers.append((name, run))

    async def start(self) -> None:
        for name, run in self._workers:
            stop = asyncio.Event()
            task = asyncio.create_task(self._keep_running(name, run, stop), name=f"worker:{name}")
            self._tasks.append((name, stop, task))

    async def _keep_running(self, name: str, run: Runner, stop: asyncio.Event) -> None:
        backoff = 0.5
        outage = OutageLog(logger, f"worker {name}")
        while not stop.is_set():
            started = time.monotonic()
            failure: Exception | None = None
            try:
                await run(stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = exc
            # A run that lasted had recovered from whatever came before: the outage (if
            # any) is over and the next failure starts the backoff afresh.
            if failure is None or time.monotonic() - started >= MAX_BACKOFF_SECONDS:
                backoff = 0.5
                outage.ok()
            if isinstance(failure, Unavailable):
                outage.failed(failure)
            elif failure is not None:
                logger.exception("worker %s crashed; restarting in %.1fs", name, backoff, exc_info=failure)
            if stop.is_set() or await sleep_unless(stop, backoff):
                return
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def spawn(self, name: str, job: Coroutine[Any, Any, None], *, wait: bool = True) -> asyncio.Task[None]:
        """Run `job` in the background; its failure is logged. At stop, a job spawned with
        `wait` is given the workers' grace to finish (a mail being sent); one without is
        cancelled (a timer that only matters while the process serves). The task is
        returned so that its owner may cancel it earlier."""
        task = asyncio.create_task(self._run_job(name, job), name=f"job:{name}")
        self._jobs[task] = wait
        task.add_done_callback(self._jobs.pop)
        return task

    @staticmethod
    async def _run_job(name: str, job: Coroutine[Any, Any, None]) -> None:
        try:
            await job
        except asyncio.CancelledError:
            raise
        except Unavailable as exc:
            logger.warning("background job %s: %s", name, exc.message)
        except Exception:
            logger.exception("background job %s failed", name)

    async def _stop_jobs(self, grace: float) -> None:
        for task, wait in list(self._jobs.items()):
            if not wait:
                task.cancel()
        pending = list(self._jobs)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                logger.warning("background job %s did not end in %.0fs; cancelling", task.get_name(), grace)
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def stop(self, grace: float = 10.0) -> None:
        """Ask each worker to stop, newest first; cancel any that overruns `grace` seconds.
        Then the jobs: those spawned with `wait` get `grace` to end, the others are cancelled."""
        for name, stop, task in reversed(self._tasks):
            stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), grace)
            except TimeoutError:
                logger.warning("worker %s did not stop in %.0fs; cancelling", name, grace)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._tasks.clear()
        await self._stop_jobs(grace)
