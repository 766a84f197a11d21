from __future__ import annotations

from datetime import UTC, datetime

from socialhub.ids import EPOCH_MS, SEQUENCE_BITS, id_time, min_id_at, parse_id


def test_parse_id_accepts_only_positive_int64_decimals() -> None:
    assert parse_id("123") == 123
    assert parse_id(str((1 << 63) - 1)) == (1 << 63) - 1
    for bad in ("", "0", "-1", "1e3", " 1", "١٢", str(1 << 63), "9" * 20, "abc", "007", "1\n", "+1"):
        assert parse_id(bad) is None, bad


def test_id_time_round_trip() -> None:
    when = datetime(2026, 11, 27, 3, 4, 5, 123000, tzinfo=UTC)
    ident = min_id_at(when) | 12345
    assert id_time(ident) == when
    assert min_id_at(datetime(2019, 1, 1, tzinfo=UTC)) == 0
    assert (EPOCH_MS, SEQUENCE_BITS) == (1_577_836_800_000, 22)
