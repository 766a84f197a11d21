"""The pure parts of `vs-synapse`'s figures: one window's samples, each side merged over
its rounds, and the side-by-side table with the ratios socialhub / Synapse.

Samples are kept per round in seconds and merged over the rounds of a side before any
percentile (bench.stats: a percentile of percentiles is not a percentile of the run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from bench.report import Section, table
from bench.stats import LatencySummary, summarize

SIDES = {"socialhub": "socialhub", "synapse": "Synapse"}
# The goal: socialhub's one-to-one p99 at most a tenth of Synapse's.
GOAL_P99_RATIO = 0.10


class ChatWindow(msgspec.Struct):
    """One one-to-one window of one side in one round (times in seconds)."""

    sent: int
    measured: int  # sent after the warm-up: the latencies and the CPU are of these
    latency_s: list[float]  # per measured message B got: A's send start -> B has it decoded
    ack_s: list[float]  # A's send start -> the server's answer to A (socialhub: ack; Synapse: the PUT's 200)
    lost: int  # measured messages B never got
    errors: dict[str, int]  # sends the server refused or failed, by kind
    server_cpu_s: float  # server process from the first measured message to the window's end
    wall_s: float
    cores: dict[str, float]  # cores used by group over the window (server, clients, postgres, ...)
    client_cpu: float  # the benchmark process (both clients), share of one core
    max_send_lag_ms: float  # how late the pacer sent its latest message
    # Synapse: /sync answers during the window that held measured messages, and how many
    # messages those held (more than one message per answer: wakeups batched).
    # Per measured message with both: the answer to A -> B has it (negative: B first).
    # On Synapse the /sync wakeup path after the event is persisted.
    after_ack_s: list[float] = []
    # The server's database over the window (pg_stat_database, see DbCounter): per message sent.
    pg_xacts_per_message: float | None = None
    pg_rows_per_message: float | None = None
    wakeups: int = 0
    delivered_in_wakeups: int = 0
    limited: int = 0  # /sync answers whose timeline the server cut (messages missed)


def window_samples(
    tag: str, warmup: int, sends: Mapping[str, float], arrivals: Mapping[str, float], acks: Mapping[str, float]
) -> tuple[list[float], list[float], int, int]:
    """Per measured message (`tag-i`, i >= warmup): send -> B, send -> ack; lost; measured."""
    measured = [f"{tag}-{i}" for i in range(warmup, len(sends)) if f"{tag}-{i}" in sends]
    latency = [arrivals[c] - sends[c] for c in measured if c in arrivals]
    ack = [acks[c] - sends[c] for c in measured if c in acks]
    return latency, ack, len(measured) - len(latency), len(measured)


def after_ack(
    tag: str, warmup: int, sends: Mapping[str, float], arrivals: Mapping[str, float], acks: Mapping[str, float]
) -> list[float]:
    """Per measured message that was both answered and delivered: ack -> B's receipt."""
    measured = [f"{tag}-{i}" for i in range(warmup, len(sends))]
    return [arrivals[c] - acks[c] for c in measured if c in arrivals and c in acks]


class SideSummary(msgspec.Struct):
    """One side over every round."""

    side: str
    rounds: int
    latency: LatencySummary | None
    ack: LatencySummary | None
    cpu_ms_per_message: float | None
    lost: int
    errors: int
    round_p99_ms: list[float | None] = []  # each round's own p99 (the machine changes between rounds)
    pg_xacts_per_message: float | None = None
    pg_rows_per_message: float | None = None


def _p99(w: ChatWindow) -> float | None:
    s = summarize(w.latency_s)
    return None if s is None else s.p99_ms


def summarize_side(side: str, windows: Sequence[ChatWindow]) -> SideSummary:
    measured = sum(w.measured for w in windows)
    return SideSummary(
        side=side,
        rounds=len(windows),
        latency=summarize(s for w in windows for s in w.latency_s),
        ack=summarize(s for w in windows for s in w.ack_s),
        cpu_ms_per_message=sum(w.server_cpu_s for w in windows) * 1000 / measured if measured else None,
        lost=sum(w.lost for w in windows),
        errors=sum(sum(w.errors.values()) for w in windows),
        round_p99_ms=[_p99(w) for w in windows],
        pg_xacts_per_message=_mean([w.pg_xacts_per_message for w in windows]),
        pg_rows_per_message=_mean([w.pg_rows_per_message for w in windows]),
    )


def _mean(values: Sequence[float | None]) -> float | None:
    """Of the rounds that have the figure (every round sends the same number of messages)."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def ratio(mine: float | None, peer: float | None) -> float | None:
    """socialhub / Synapse: below 1, socialhub is faster or cheaper (every measure is a cost)."""
    if mine is None or peer is None or peer <= 0:
        return None
    return mine / peer


def _rows(s: SideSummary) -> list[tuple[str, float | None]]:
    lat, ack = s.latency, s.ack
    return [
        ("send -> receive p50, ms", lat.p50_ms if lat else None),
        ("send -> receive p90, ms", lat.p90_ms if lat else None),
        ("send -> receive p99, ms", lat.p99_ms if lat else None),
        ("send -> receive max, ms", lat.max_ms if lat else None),
        ("send -> ack p50, ms", ack.p50_ms if ack else None),
        ("send -> ack p99, ms", ack.p99_ms if ack else None),
        ("server CPU per message, ms", s.cpu_ms_per_message),
        ("PostgreSQL transactions per message", s.pg_xacts_per_message),
        ("PostgreSQL rows written per message", s.pg_rows_per_message),
    ]


def comparison(ours: SideSummary, peer: SideSummary) -> tuple[Section, dict[str, float | None], str]:
    """The side-by-side table (every round merged) as a report section, its ratios by
    measure, and the verdict on the goal (p99 ratio <= GOAL_P99_RATIO)."""
    rows = [["one-to-one (lower is better)", SIDES[ours.side], SIDES[peer.side], "socialhub / Synapse"]]
    ratios: dict[str, float | None] = {}
    for (label, a), (_, b) in zip(_rows(ours), _rows(peer), strict=True):
        r = ratio(a, b)
        rows.append([label, _fmt(a), _fmt(b), "-" if r is None else f"{r:.3f}"])
        ratios[label] = None if r is None else round(r, 4)
    rows.append(["messages measured / lost", _count(ours), _count(peer), ""])
    p99 = ratios["send -> receive p99, ms"]
    if p99 is None:
        verdict = f"goal p99 ratio <= {GOAL_P99_RATIO:.2f}: not measured"
    else:
        met = "met" if p99 <= GOAL_P99_RATIO else "MISSED"
        verdict = f"goal p99 ratio <= {GOAL_P99_RATIO:.2f}: {met} ({p99:.3f})"
    title = f"socialhub vs Synapse, one-to-one, {ours.rounds} round(s) each, samples of all rounds merged"
    figures: dict[str, object] = {"goal": verdict}
    for side in (ours, peer):
        figures[f"p99 of each round, {SIDES[side.side]}, ms"] = ", ".join(_fmt(v) for v in side.round_p99_ms)
    pairs = [ratio(a, b) for a, b in zip(ours.round_p99_ms, peer.round_p99_ms, strict=False)]
    figures["p99 ratio of each round (socialhub round n / Synapse round n)"] = ", ".join(
        "-" if r is None else f"{r:.3f}" for r in pairs
    )
    return Section(title=title, figures=figures, text=table(rows)), ratios, verdict


def _count(s: SideSummary) -> str:
    n = s.latency.count if s.latency else 0
    return f"{n + s.lost} / {s.lost}"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"
