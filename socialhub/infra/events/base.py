"""The event-delivery port: durable events from the outbox to consumers.

A `Consumer` is socialhub's own code (feed fan-out, notifications); an `EventSource`
feeds it. Two sources, one consumer code path:

- `outbox.OutboxSource`: reads the outbox table directly (no Kafka configured),
  woken by LISTEN/NOTIFY with a poll as fallback, one stored position per consumer.
- `kafka.KafkaSource`: a Kafka consumer group per consumer, fed by the outbox relay
  (`kafka.KafkaPublisher` behind an `OutboxSource` named "kafka-relay").

Delivery is at least once, in order per key; consumers make a second delivery of an
event a no-op (unique keys, set semantics, upserts). Failures: `retry.py` (outage or poison, held
events, dead letters and their replay).

Consumers get events decoded: `envelope.event` is one of the typed events of
`domain.events` (match on its class). A source that reads something it cannot decode
(an unknown type, data that does not fit) hands the `Unreadable` to its `retry.Triage`,
which dead-letters it; it never reaches a consumer.
"""

from __future__ import annotations

import abc
import asyncio

from socialhub.domain.events import Envelope


class Consumer(abc.ABC):
    """Applies events. `name` keys its stored position / consumer group."""

    name: str

    @abc.abstractmethod
    async def handle(self, envelope: Envelope) -> None:
        """Apply one (decoded) event; idempotently. Raising: it is delivered again, with backoff; one
        that keeps failing while other events pass becomes a dead letter (retry.py)."""

    async def handle_batch(self, batch: list[Envelope]) -> None:
        """Apply events in order (a consumer may do a batch at once, e.g. the Kafka relay)."""
        for envelope in batch:
            await self.handle(envelope)


class EventSource(abc.ABC):
    """Feeds one consumer until `stop` is set."""

    @abc.abstractmethod
    async def run(self, stop: asyncio.Event) -> None:
        """Deliver events to the consumer in order until `stop` is set; retry on failures."""


class Publisher(abc.ABC):
    """Where the relay sends outbox events (Kafka)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect (retrying is the caller's business); create missing topics."""

    @abc.abstractmethod
    async def publish(self, batch: list[Envelope]) -> None:
        """Send every envelope and wait until the broker has them all (acks=all); raise on failure."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and disconnect."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the broker answers (for /readyz)."""
