"""The report of one socket scenario: its figures, latencies, CPU, goals and notes."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import msgspec
import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.stats import LatencySummary
from bench.ws.machine import CpuWindow

CLIENT_BOUND_CPU = 0.9
MACHINE_BUSY = 0.9


class Report(msgspec.Struct):
    scenario: str
    machine: str
    command: str
    servers: int
    deflate: bool
    figures: dict[str, Any]
    latency: dict[str, LatencySummary]
    cpu: CpuWindow | None
    client_cpu_share: list[float]
    notes: list[str]
    goals: dict[str, str]
    profile: list[str]
    series: dict[str, list[float | None]] = {}  # per measured message, in send order (ms)
    window_start: float = 0.0  # time.monotonic() when the measured window began (to match server logs)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 2**30
    py = platform.python_version()
    return f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB, Linux {platform.release()}, Python {py}"


def build_notes(report: Report) -> list[str]:
    notes = []
    bound = [f"{s:.0%}" for s in report.client_cpu_share if s > CLIENT_BOUND_CPU]
    if bound:
        notes.append(f"client-bound: {len(bound)} client process(es) used over 90% of a core ({', '.join(bound)})")
    if report.cpu is not None and report.cpu.machine_busy > MACHINE_BUSY:
        notes.append(
            f"machine saturated: {report.cpu.machine_busy:.0%} of all cores busy; server and clients compete for them"
        )
    if report.cpu is not None:
        foreign = report.cpu.cores.get("others", 0.0) + report.cpu.cores.get("unattributed", 0.0)
        if foreign > 0.15:
            notes.append(f"other processes used {foreign:.2f} cores during the window: figures skewed")
        if report.cpu.steal > 0.02:
            notes.append(f"the hypervisor took {report.cpu.steal:.0%} of the cores (steal)")
    return notes


def format_report(report: Report) -> str:
    lines = [f"ws_bench {report.scenario} — {report.machine}", f"command: {report.command}"]
    lines.append(
        f"servers: {report.servers}{' (two processes on one Redis)' if report.servers > 1 else ''};"
        f" permessage-deflate {'offered' if report.deflate else 'not offered'}"
    )
    lines.append("")
    width = max((len(k) for k in report.figures), default=10)
    for key, value in report.figures.items():
        lines.append(f"  {key:<{width}}  {value}")
    if report.latency:
        lines.append("")
        name_w = max(len(k) for k in report.latency)
        lines.append(
            f"  {'latency (ms)':<{name_w}}  {'count':>7} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'mean':>8}"
        )
        for name, s in report.latency.items():
            lines.append(
                f"  {name:<{name_w}}  {s.count:>7} {s.p50_ms:>8.2f} {s.p90_ms:>8.2f} {s.p99_ms:>8.2f}"
                f" {s.max_ms:>8.2f} {s.mean_ms:>8.2f}"
            )
    if report.cpu is not None:
        cores = ", ".join(f"{k} {v:.2f}" for k, v in report.cpu.cores.items())
        lines += [
            "",
            f"  CPU over {report.cpu.wall_s:.1f} s (cores): {cores}; machine {report.cpu.machine_busy:.0%} busy",
        ]
        shares = ", ".join(f"{s:.0%}" for s in report.client_cpu_share)
        lines.append(f"  client processes (share of one core each): {shares}")
    for goal, verdict in report.goals.items():
        lines.append(f"  goal {goal}: {verdict}")
    lines += [f"  note: {n}" for n in report.notes]
    if report.profile:
        lines += ["", *report.profile]
    return "\n".join(lines)
