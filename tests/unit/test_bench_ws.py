"""The pure parts of bench.ws (the socket benchmark's latency figures) and of the plot's labels."""

from __future__ import annotations

import pytest

from bench.load import PhaseResult
from bench.report import Comparison, format_fraction, panel_title, point_alpha
from bench.stats import LatencySummary
from bench.ws.messages import chat_latency, fanout_latency

SENDS = {"m-0": 10.0, "m-1": 20.0, "m-2": 30.0}


def test_fanout_last_member_only_counts_messages_every_member_got() -> None:
    arrivals = {"m-0": [10.003, 10.001, 10.002], "m-1": [20.004, 20.001]}  # m-1: one member missed it
    latency, series = fanout_latency(["m-0", "m-1", "m-2"], SENDS, arrivals, members=3)
    last = latency["send -> last of 3 members"]
    assert last.count == 1 and last.max_ms == pytest.approx(3.0)
    assert latency["send -> first member"].count == 2
    assert latency["send -> each delivery"].count == 5
    assert series["first_ms"] == [1.0, 1.0, None]
    assert series["last_ms"] == [3.0, None, None]


def test_chat_takes_the_first_arrival_and_leaves_lost_messages_out() -> None:
    latency, series = chat_latency(["m-0", "m-1", "m-2"], SENDS, {"m-0": [10.002, 10.005], "m-2": [30.001]})
    one = latency["send (A) -> new_message (B)"]
    assert one.count == 2 and one.max_ms == pytest.approx(2.0)
    assert series["latency_ms"] == [2.0, None, 1.0]


def test_chat_without_arrivals_has_no_figure() -> None:
    latency, series = chat_latency(["m-0"], SENDS, {})
    assert latency == {} and series["latency_ms"] == [None]


def test_comparison_with_its_own_unit() -> None:
    text = format_fraction(Comparison("RSS per idle socket", 44.0, 11.0, higher_is_better=False, unit=" KiB"))
    assert text == "RSS per idle socket: socialhub 44.0 KiB vs ceiling 11.0 KiB = 25% of the ceiling"


def _phase(ok: int) -> PhaseResult:
    latency = LatencySummary(count=ok, p50_ms=1.0, p90_ms=2.0, p99_ms=3.0, max_ms=4.0, mean_ms=1.5)
    return PhaseResult("feed", 50, 2, 10.0, ok, ok / 10.0, latency, {}, [0.1, 0.1], 0.5, 80.0, 0.2)


def test_panel_title_says_how_much_is_drawn() -> None:
    assert panel_title("feed", _phase(800), 800) == "feed: 80.0 req/s at 50 in flight, 800 requests (all plotted)"
    title = panel_title("feed", _phase(90_000), 22_500, ceiling=True)
    assert title.startswith("ceiling: feed: 9000.0 req/s") and "22500 of them plotted" in title


def test_point_alpha_is_bounded() -> None:
    assert point_alpha(10) == 0.8
    assert point_alpha(100_000) == 0.15
    assert 0.15 < point_alpha(4000) < 0.8
