"""Snowflake-style ids.

Ids are made by PostgreSQL (`socialhub_id()` in migrations/0001): 41 bits of
milliseconds since EPOCH_MS, then 22 bits of a global sequence, so they are unique
across instances and ordering by id is ordering by creation. On the wire they are
decimal strings (JavaScript cannot hold 64-bit integers).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

import msgspec

EPOCH_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z; must match socialhub_id() in SQL
SEQUENCE_BITS = 22
MAX_ID = (1 << 63) - 1


def decimal_at_most(limit: int) -> str:
    """A regular expression (no anchors) of exactly the decimals 1..limit, written without
    leading zeros: what a JSON Schema `pattern` can say of an int64 id held in a string."""
    digits = str(limit)
    width = len(digits)
    shorter = "[1-9]" if width == 2 else f"[1-9][0-9]{{0,{width - 2}}}"
    branches = [shorter] if width > 1 else []
    for i, ch in enumerate(digits):
        low, high = (1 if i == 0 else 0), int(ch) - 1
        if high >= low:  # same prefix, a smaller digit here, anything after
            rest = width - i - 1
            branches.append(digits[:i] + f"[{low}-{high}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    branches.append(digits)
    return "(?:" + "|".join(branches) + ")"


# An id on the wire: the decimal of 1..MAX_ID, nothing else (no sign, spaces or leading zeros).
ID_REGEX = decimal_at_most(MAX_ID)
ID_PATTERN = f"^{ID_REGEX}$"
_ID = re.compile(ID_PATTERN)


def parse_id(value: str) -> int | None:
    """The id in a path or cursor, or None when it cannot be one of ours."""
    return int(value) if _ID.fullmatch(value) else None


def id_time(value: int) -> datetime:
    """When an id was made."""
    ms = (value >> SEQUENCE_BITS) + EPOCH_MS
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def min_id_at(when: datetime) -> int:
    """The smallest id that could have been made at `when` (for time-based cursors)."""
    ms = int(when.timestamp() * 1000) - EPOCH_MS
    return max(ms, 0) << SEQUENCE_BITS


# The type of an id in a request body: decoding checks it, and it documents the pattern.
WireId = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
