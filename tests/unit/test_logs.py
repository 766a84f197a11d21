"""The log lines' timestamps (socialhub.logs.timestamp keeps the last second and millisecond made)."""

from __future__ import annotations

from datetime import UTC, datetime

from socialhub.logs import timestamp


def expected(created: float) -> str:
    return datetime.fromtimestamp(int(created * 1000) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_each_millisecond_and_second_is_written_as_itself_whatever_came_before() -> None:
    # Same millisecond twice, the next millisecond, the next second, and back in time.
    times = [1733360000.1234, 1733360000.1239, 1733360000.1241, 1733360000.9999, 1733360001.0, 1733360001.0004,
             1700000000.5, 1733360000.1234, 0.0]  # fmt: skip
    for created in times:
        assert timestamp(created) == expected(created), created


def test_the_form_is_rfc3339_utc_with_milliseconds() -> None:
    assert timestamp(1733360000.007) == "2024-12-05T00:53:20.007Z"
