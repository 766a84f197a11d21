"""Timestamps on the wire: RFC 3339, UTC, milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime

from msgspec import UNSET, UnsetType


def rfc3339(when: datetime) -> str:
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def rfc3339_or_unset(when: datetime | None) -> str | UnsetType:
    """For optional times, absent from the JSON when unknown."""
    return rfc3339(when) if when is not None else UNSET


def utcnow() -> datetime:
    return datetime.now(UTC)
