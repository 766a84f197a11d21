"""The outbox relay: an outbox reader whose consumer forwards each batch to Kafka.

Kafka only ever receives what was committed to the outbox. While the broker is down
`publish` raises, the reader keeps its position and retries, and writes keep
succeeding into the outbox: the backlog goes out when the broker is back.
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
