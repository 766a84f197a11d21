"""The pure parts of `python -m bench`: ceiling fractions, the progress bar, tables, requests."""

from __future__ import annotations

import pytest

from bench.progress import bar
from bench.rawhttp import encode_request
from bench.report import Comparison, format_fraction, fraction, table


def test_throughput_fraction_is_value_over_ceiling() -> None:
    assert fraction(42.0, 100.0) == pytest.approx(0.42)


def test_latency_fraction_is_ceiling_over_value() -> None:
    # socialhub p99 10 ms against an echo p99 of 2 ms: it does a fifth as well.
    assert fraction(10.0, 2.0, higher_is_better=False) == pytest.approx(0.2)


def test_fraction_undefined_without_a_ceiling_or_a_value() -> None:
    assert fraction(5.0, 0.0) is None
    assert fraction(0.0, 3.0, higher_is_better=False) is None


def test_format_fraction_names_both_figures() -> None:
    text = format_fraction(Comparison("feed req/s", 421.0, 1000.0))
    assert text == "feed req/s: socialhub 421.0 vs ceiling 1000.0 = 42% of the ceiling"
    text = format_fraction(Comparison("one-to-one p99", 4.0, 1.0, higher_is_better=False))
    assert text.endswith("= 25% of the ceiling") and "4.0 ms" in text


def test_bar_is_clamped() -> None:
    assert bar(5, 10, width=10) == "[#####.....]"
    assert bar(20, 10, width=4) == "[####]"
    assert bar(-1, 10, width=4) == "[....]"
    assert bar(1, 0, width=2) == "[..]"


def test_table_aligns_columns() -> None:
    lines = table([["phase", "req/s"], ["feed", "12.5"], ["ceiling:feed", "1000.0"]])
    assert lines == [
        "phase          req/s",
        "------------  ------",
        "feed            12.5",
        "ceiling:feed  1000.0",
    ]


def test_encode_request_sets_length_for_bodies() -> None:
    raw = encode_request("127.0.0.1", 8000, "POST", "/posts/", {"content-type": "application/json"}, b"{}")
    assert raw == (
        b"POST /posts/ HTTP/1.1\r\nhost: 127.0.0.1:8000\r\ncontent-type: application/json\r\n"
        b"content-length: 2\r\n\r\n{}"
    )
    assert b"content-length" not in encode_request("h", 1, "GET", "/feed")
