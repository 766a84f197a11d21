"""The outbox relay: an outbox reader whose consumer forwards each batch to Kafka.

Kafka only ever receives what was committed to the outbox. While the broker is down
`publish` raises, the reader keeps its position and retries, and writes keep
succeeding into the outbox: the backlog goes out when the broker is back.

What a relay failure means: `publish` wraps the client's error, and retry.is_outage
follows that cause. A broker that is down, a leader election, a timeout are retriable
Kafka errors: an outage, retried for as long as it lasts, never a dead letter. Only an
event the broker refuses on its own (too large for the topic, a topic the config does
not name) while the events around it are published is poison: the outbox reader then
goes event by event, and that one becomes a dead letter of consumer "kafka-relay";
`socialhub events retry` publishes it again.
"""

from __future__ import annotations

from socialhub.domain.events import Envelope
from socialhub.infra.events.base import Consumer, Publisher


class KafkaRelay(Consumer):
    name = "kafka-relay"

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self._started = False

    async def handle(self, envelope: Envelope) -> None:
        await self.handle_batch([envelope])

    async def handle_batch(self, batch: list[Envelope]) -> None:
        if not self._started:
            await self.publisher.start()
            self._started = True
        await self.publisher.publish(batch)
