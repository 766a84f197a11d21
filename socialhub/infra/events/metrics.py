"""Prometheus metrics of the event pipeline, and the worker that samples the database.

Counters are counted where things happen (each instance its own); the outbox lag and
the dead letters waiting are read from PostgreSQL by `PipelineMonitor` on every
instance, so each instance reports the same, cluster-wide figures: aggregate them with
`max`, not `sum`.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter, Gauge

from socialhub.infra.events.stores import DeadLetterCounts, OutboxLags
from socialhub.supervisor import sleep_unless

logger = logging.getLogger(__name__)

EVENT_ERRORS = Counter(
    "socialhub_events_errors",
    "Failed tries of an event reader (consumer = kafka-relay, feed, notifications): kind=outage when "
    "something it needs was unreachable (retried, never dead-lettered), kind=event when the event failed",
    ["consumer", "kind"],
)
DEAD_LETTERED = Counter(
    "socialhub_events_dead_lettered",
    "Events a consumer gave up on after its retries and stored as dead letters",
    ["consumer"],
)
REPLAYS = Counter(
    "socialhub_events_replays",
    "Dead letters handled again after `socialhub events retry`: result=handled or failed",
    ["consumer", "result"],
)
DEAD_LETTERS_WAITING = Gauge(
    "socialhub_events_dead_letters",
    "Dead letters not replayed yet, per consumer (whole cluster, read from the database)",
    ["consumer"],
)
OUTBOX_LAG = Gauge(
    "socialhub_outbox_lag_seconds",
    "Age of the oldest outbox event the reader (the Kafka relay, or a consumer fed from the outbox) "
    "has not handled yet; 0 when it is up to date (whole cluster, read from the database)",
    ["consumer"],
)

# Prometheus scrapes every 15 s by default; sampling a little more often keeps the
# figures at most one scrape old, at two small indexed queries per instance.
SAMPLE_SECONDS = 10.0


class PipelineMonitor:
    """Samples the outbox lag of each outbox reader and the dead letters waiting."""

    def __init__(
        self,
        outbox: OutboxLags,
        dead_letters: DeadLetterCounts,
        *,
        readers: list[str],
        consumers: list[str],
        interval: float = SAMPLE_SECONDS,
    ) -> None:
        self.outbox = outbox
        self.dead_letters = dead_letters
        self.readers = readers  # outbox readers: their lag is measured
        self.consumers = consumers  # every consumer name, shown with 0 dead letters too
        self.interval = interval

    async def sample_once(self) -> None:
        lags = await self.outbox.get_lags(self.readers)
        waiting = await self.dead_letters.get_waiting_counts()
        for name, lag in lags.items():
            OUTBOX_LAG.labels(name).set(lag)
        for name in {*self.consumers, *waiting}:
            DEAD_LETTERS_WAITING.labels(name).set(waiting.get(name, 0))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sample_once()
            except Exception as exc:
                # The database being away is reported by /readyz and the readers' own
                # errors; the gauges keep their last values meanwhile.
                logger.debug("event pipeline metrics not sampled: %r", exc)
            await sleep_unless(stop, self.interval)
