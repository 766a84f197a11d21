"""Snowflake-style ids.

Ids are made by PostgreSQL (`socialhub_id()` in migrations/0001): 41 bits of
milliseconds since EPOCH_MS, then 22 bits of a global sequence, so they are unique
across instances and ordering by id is ordering by creation. On the wire they are
decimal strings (JavaScript cannot hold 64-bit integers).
"""

from __future__ import annotations

from datetime import UTC, datetime

EPOCH_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z; must match socialhub_id() in SQL
SEQUENCE_BITS = 22
MAX_ID = (1 << 63) - 1


def parse_id(value: str) -> int | None:
    """The id in a path or cursor, or None when it cannot be one of ours."""
    if not value or len(value) > 19 or not value.isascii() or not value.isdigit():
        return None
    n = int(value)
    return n if 0 < n <= MAX_ID else None


def id_time(value: int) -> datetime:
    """When an id was made."""
    ms = (value >> SEQUENCE_BITS) + EPOCH_MS
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def min_id_at(when: datetime) -> int:
    """The smallest id that could have been made at `when` (for time-based cursors)."""
    ms = int(when.timestamp() * 1000) - EPOCH_MS
    return max(ms, 0) << SEQUENCE_BITS
