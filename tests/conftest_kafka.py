"""Pytest plugin: `kafka_broker`, one tansu broker for the whole test session.

Loaded from tests/conftest.py (`pytest_plugins`). Tests that share it use their own
topic names and consumer-group prefixes; a test that stops or restarts a broker
should take `private_kafka_broker`, whose storage wipe (in memory) touches nobody else.
"""

from __future__ import annotations

from tests.kafka_broker import broker_fixture

kafka_broker = broker_fixture(scope="session", name="kafka_broker")
private_kafka_broker = broker_fixture(scope="function", name="private_kafka_broker")
