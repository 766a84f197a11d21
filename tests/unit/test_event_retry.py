"""How an event reader tells an outage from a poison event, and what a dead letter keeps
of the error (socialhub/infra/events/retry.py)."""

from __future__ import annotations

import aiokafka.errors as kafka_errors
import asyncpg
import pytest
import redis.exceptions

from socialhub.config import ConfigError, load_settings
from socialhub.errors import Unavailable
from socialhub.infra.events.kafka import PublishError
from socialhub.infra.events.retry import ERROR_MAX_CHARS, RetryPolicy, describe, is_outage


def caused_by(outer: Exception, cause: BaseException) -> Exception:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        TimeoutError(),
        Unavailable("key-value store unavailable"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.InterfaceError("pool is closed"),
        redis.exceptions.ConnectionError("Error 111 connecting"),
        caused_by(PublishError("publishing 3 events"), kafka_errors.KafkaConnectionError("no broker")),
        caused_by(PublishError("did not acknowledge"), kafka_errors.NotLeaderForPartitionError()),
        caused_by(PublishError("did not acknowledge"), kafka_errors.KafkaTimeoutError()),
        caused_by(RuntimeError("wrapped twice"), caused_by(Unavailable("x"), OSError("down"))),
    ],
    ids=lambda e: type(e).__name__,
)
def test_unreachable_dependencies_are_outages(exc: BaseException) -> None:
    assert is_outage(exc)


@pytest.mark.parametrize(
    "exc",
    [
        KeyError("author_id"),
        ValueError("invalid literal for int() with base 10: 'abc'"),
        asyncpg.exceptions.ForeignKeyViolationError("violates foreign key constraint"),
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.DataError("invalid input for query argument $1"),
        caused_by(PublishError("did not acknowledge"), kafka_errors.MessageSizeTooLargeError()),
        ValueError("no Kafka topic configured for event topic 'chat'"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_failures_of_the_event_itself_are_not_outages(exc: BaseException) -> None:
    assert not is_outage(exc)


def test_a_cause_cycle_ends() -> None:
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert not is_outage(a)


def test_the_stored_error_masks_credentials_and_is_bounded() -> None:
    exc = RuntimeError("cannot reach postgresql://app:s3cret@db:5432/x (password=hunter2) " + "x" * 5000)
    text = describe(exc)
    assert text.startswith("RuntimeError: cannot reach postgresql://***@db:5432/x (password=***")
    assert "s3cret" not in text and "hunter2" not in text
    assert len(text) == ERROR_MAX_CHARS


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RetryPolicy(attempts=6, backoff=0.5, backoff_max=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_events_settings_come_from_env_and_are_checked() -> None:
    settings = load_settings(env={"SOCIALHUB_EVENTS_RETRY_BACKOFF": "20ms", "SOCIALHUB_EVENTS_RETRY_ATTEMPTS": "3"})
    assert (settings.events.retry_backoff, settings.events.retry_attempts) == (0.02, 3)
    assert settings.events.retry_backoff_max == 10.0 and settings.events.replay_poll == 5.0
    with pytest.raises(ConfigError, match=r"events\.retry_attempts"):
        load_settings(env={"SOCIALHUB_EVENTS_RETRY_ATTEMPTS": "1"})
    with pytest.raises(ConfigError, match=r"events\.retry_backoff_max"):
        load_settings(env={"SOCIALHUB_EVENTS_RETRY_BACKOFF": "30s"})
    with pytest.raises(ConfigError, match=r"events\.replay_poll"):
        load_settings(env={"SOCIALHUB_EVENTS_REPLAY_POLL": "0"})
