"""Latency statistics for the benchmarks: exact percentiles over every sample.

Samples from all client processes are merged before anything is computed, because a
percentile of percentiles (or their average) is not a percentile of the whole run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction

import msgspec

# The percentiles every benchmark reports.
REPORTED = (50.0, 90.0, 99.0)


class LatencySummary(msgspec.Struct, frozen=True):
    """Exact figures over every sample of one scenario, in milliseconds."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float


def percentile(ordered: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile of samples sorted in ascending order.

    It is the smallest sample with at least `pct` per cent of the samples at or below
    it: always a measured value, never an interpolation. The rank is computed in exact
    arithmetic, so p90 of ten samples is the 9th (floating point would say 9.000…01
    and pick the 10th).
    """
    if not ordered:
        raise ValueError("percentile of no samples")
    if not 0 < pct <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {pct}")
    rank = math.ceil(Fraction(repr(float(pct))) * len(ordered) / 100)
    return ordered[rank - 1]


def summarize(samples_s: Iterable[float]) -> LatencySummary | None:
    """Summarise latencies given in seconds; None when there are none."""
    ordered = sorted(samples_s)
    if not ordered:
        return None
    p50, p90, p99 = (percentile(ordered, pct) * 1000 for pct in REPORTED)
    return LatencySummary(
        count=len(ordered),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        max_ms=ordered[-1] * 1000,
        mean_ms=math.fsum(ordered) / len(ordered) * 1000,
    )


def merge_counts(parts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Add up per-process counters (e.g. errors by kind), largest first."""
    total: dict[str, int] = {}
    for part in parts:
        for key, n in part.items():
            total[key] = total.get(key, 0) + n
    return dict(sorted(total.items(), key=lambda item: (-item[1], item[0])))


def split_evenly(total: int, parts: int) -> list[int]:
    """Split `total` into `parts` shares differing by at most one, dropping empty shares."""
    if total < 0 or parts < 1:
        raise ValueError(f"cannot split {total} into {parts} parts")
    base, extra = divmod(total, parts)
    shares = [base + (1 if i < extra else 0) for i in range(parts)]
    return [share for share in shares if share > 0]
