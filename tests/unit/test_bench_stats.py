from __future__ import annotations

import pytest

from bench.stats import merge_counts, percentile, split_evenly, summarize


def test_percentile_is_the_nearest_rank_sample() -> None:
    ordered = [float(i) for i in range(1, 11)]  # 1..10
    assert percentile(ordered, 50) == 5.0
    assert percentile(ordered, 90) == 9.0  # 0.9 * 10 in floating point is 9.000…01, not rank 10
    assert percentile(ordered, 99) == 10.0
    assert percentile(ordered, 100) == 10.0
    assert percentile(ordered, 10) == 1.0
    assert percentile(ordered, 0.1) == 1.0
    assert percentile([7.0], 50) == 7.0


def test_percentile_exact_ranks_on_a_large_run() -> None:
    ordered = [float(i) for i in range(1, 1001)]
    assert [percentile(ordered, p) for p in (50, 90, 99, 99.9)] == [500.0, 900.0, 990.0, 999.0]
    # 1001 samples: rank ceil(0.99 * 1001) = 991
    assert percentile([float(i) for i in range(1, 1002)], 99) == 991.0


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    for bad in (0, -1, 100.5):
        with pytest.raises(ValueError):
            percentile([1.0], bad)


def test_summarize_merges_all_samples_and_reports_milliseconds() -> None:
    # Two "processes": one fast, one slow; the merged p50 is not the average of their p50s.
    fast = [0.001] * 90
    slow = [0.1] * 10
    summary = summarize(slow + fast)
    assert summary is not None
    assert summary.count == 100
    assert summary.p50_ms == pytest.approx(1.0)
    assert summary.p90_ms == pytest.approx(1.0)
    assert summary.p99_ms == pytest.approx(100.0)
    assert summary.max_ms == pytest.approx(100.0)
    assert summary.mean_ms == pytest.approx(10.9)
    assert summarize([]) is None


def test_merge_counts_and_split_evenly() -> None:
    assert merge_counts([{"HTTP 500": 1, "timeout": 2}, {"timeout": 3}, {}]) == {"timeout": 5, "HTTP 500": 1}
    assert list(merge_counts([{"b": 1, "a": 1}])) == ["a", "b"]
    assert split_evenly(50, 2) == [25, 25]
    assert split_evenly(7, 3) == [3, 2, 2]
    assert split_evenly(1, 2) == [1]
    with pytest.raises(ValueError):
        split_evenly(5, 0)
