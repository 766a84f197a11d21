"""What one socket measurement gave (idle, chat or fan-out, on socialhub or a ceiling), and
its section of the run's report (bench.report): figures, latencies, CPU, goals, notes."""

from __future__ import annotations

from typing import Any

import msgspec

from bench.report import Section
from bench.stats import LatencySummary
from bench.ws.machine import CpuWindow

CLIENT_BOUND_CPU = 0.9
MACHINE_BUSY = 0.9


class SocketResult(msgspec.Struct):
    scenario: str  # idle, chat, fanout
    servers: int
    deflate: bool
    figures: dict[str, Any]
    latency: dict[str, LatencySummary]
    cpu: CpuWindow | None
    client_cpu_share: list[float]
    goals: dict[str, str]
    profile: list[str]
    series: dict[str, list[float | None]] = {}  # per measured message, in send order (ms)
    window_start: float = 0.0  # time.monotonic() when the measured window began (to match server logs)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def build_notes(result: SocketResult) -> list[str]:
    notes = []
    bound = [f"{s:.0%}" for s in result.client_cpu_share if s > CLIENT_BOUND_CPU]
    if bound:
        notes.append(f"client-bound: {len(bound)} client process(es) used over 90% of a core ({', '.join(bound)})")
    if result.cpu is not None and result.cpu.machine_busy > MACHINE_BUSY:
        notes.append(
            f"machine saturated: {result.cpu.machine_busy:.0%} of all cores busy; server and clients compete for them"
        )
    if result.cpu is not None:
        foreign = result.cpu.cores.get("others", 0.0) + result.cpu.cores.get("unattributed", 0.0)
        if foreign > 0.15:
            notes.append(f"other processes used {foreign:.2f} cores during the window: figures skewed")
        if result.cpu.steal > 0.02:
            notes.append(f"the hypervisor took {result.cpu.steal:.0%} of the cores (steal)")
    return notes


def section(result: SocketResult, title: str) -> Section:
    """The result as a section of the report; its notes go to the report's notes (by the caller)."""
    servers = f"{result.servers}{' (two processes on one Redis)' if result.servers > 1 else ''}"
    figures: dict[str, object] = {
        "servers": servers,
        "permessage-deflate": "offered" if result.deflate else "not offered",
        **result.figures,
    }
    if result.cpu is not None:
        cores = ", ".join(f"{k} {v:.2f}" for k, v in result.cpu.cores.items())
        figures[f"CPU over {result.cpu.wall_s:.1f} s (cores)"] = f"{cores}; machine {result.cpu.machine_busy:.0%} busy"
    figures["client processes (share of one core each)"] = ", ".join(f"{s:.0%}" for s in result.client_cpu_share)
    for goal, verdict in result.goals.items():
        figures[f"goal {goal}"] = verdict
    return Section(title=title, figures=figures, latency=dict(result.latency), text=list(result.profile))
