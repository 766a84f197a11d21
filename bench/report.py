"""The one report of every scenario: the summary table, socialhub as a fraction of the
ceiling, JSON, a plot.

HTTP scenarios fill `phases` and `ceiling` (closed-loop windows, one route each); the
others (sockets, post-to-feed, calls) fill `sections`: named figures and a latency table
per measurement, socialhub's first, then the ceiling's.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.load import CLIENT_BOUND_CPU, PhaseResult
from bench.stats import LatencySummary

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class Comparison(msgspec.Struct, frozen=True):
    """One socialhub figure against the same figure of the ceiling server."""

    what: str  # e.g. "feed req/s"
    socialhub: float
    ceiling: float
    higher_is_better: bool = True
    unit: str | None = None  # printed after both figures; None: " ms" when lower is better, else none

    @property
    def fraction(self) -> float | None:
        return fraction(self.socialhub, self.ceiling, self.higher_is_better)


class Section(msgspec.Struct):
    """One measurement that is not a closed-loop HTTP window (a socket run, the calls, the
    post-to-feed client, or the ceiling of one): named figures, then latencies by measure."""

    title: str
    figures: dict[str, object] = {}
    latency: dict[str, LatencySummary] = {}
    text: list[str] = []  # printed as they are (e.g. a profile's top lines)


class Report(msgspec.Struct):
    scenario: str
    command: str
    started_at: str
    machine: str
    target: str
    setup: dict[str, object]
    phases: list[PhaseResult]
    ceiling: list[PhaseResult]
    comparisons: list[Comparison]
    server: dict[str, object]
    notes: list[str]
    extra: dict[str, object] = {}
    sections: list[Section] = []


def new_report(scenario: str, target: str) -> Report:
    """An empty report of this run of `scenario`, for the scenario to fill."""
    return Report(scenario=scenario, command=command_line(), started_at=now_utc(), machine=machine_description(),
                  target=target, setup={}, phases=[], ceiling=[], comparisons=[], server={}, notes=[])  # fmt: skip


def fraction(value: float, ceiling: float, higher_is_better: bool = True) -> float | None:
    """socialhub's share of the ceiling's performance: 1.0 is as good as the ceiling.

    For throughput it is value / ceiling; for a latency (lower is better) it is
    ceiling / value, so that both read "x% of the ceiling". None when undefined.
    """
    if higher_is_better:
        return value / ceiling if ceiling > 0 else None
    return ceiling / value if value > 0 else None


def format_fraction(c: Comparison) -> str:
    f = c.fraction
    share = f"{f:.0%}" if f is not None else "n/a"
    unit = c.unit if c.unit is not None else ("" if c.higher_is_better else " ms")
    return f"{c.what}: socialhub {c.socialhub:.1f}{unit} vs ceiling {c.ceiling:.1f}{unit} = {share} of the ceiling"


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} logical CPUs ({model}), {memory:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-align the first column, right-align the others, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def phase_rows(phases: Sequence[PhaseResult], prefix: str = "") -> list[list[str]]:
    rows = []
    for p in phases:
        lat = p.latency
        figures = [lat.p50_ms, lat.p90_ms, lat.p99_ms, lat.max_ms] if lat is not None else []
        server = "-" if p.server_cpu is None else f"{p.server_cpu:.0%}"
        if p.postgres_cpu is not None:
            server += f" + pg {p.postgres_cpu:.0%}"
        rows.append(
            [
                prefix + p.name,
                str(p.concurrency),
                str(p.ok),
                f"{p.throughput_rps:.1f}",
                *([f"{v:.1f}" for v in figures] or ["-"] * 4),
                str(sum(p.errors.values())),
                " ".join(f"{c:.0%}" for c in p.client_cpu) + (" BOUND" if p.client_bound else ""),
                server,
                "-" if p.server_rss_mib is None else f"{p.server_rss_mib:.0f}",
            ]
        )
    return rows


LATENCY_HEADER = ["latency", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"]


def section_lines(s: Section) -> list[str]:
    lines = [f"{s.title}:"]
    width = max((len(k) for k in s.figures), default=0)
    lines += [f"  {key:<{width}}  {value}" for key, value in s.figures.items()]
    if s.latency:
        rows = [LATENCY_HEADER]
        for name, lat in s.latency.items():
            rows.append([name, str(lat.count), *(f"{v:.2f}" for v in (lat.p50_ms, lat.p90_ms, lat.p99_ms,
                                                                      lat.max_ms, lat.mean_ms))])  # fmt: skip
        lines += ["  " + line for line in table(rows)]
    lines += ["  " + line for line in s.text]
    return lines


HEADER = ["phase", "in flight", "ok", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"]
HEADER += ["client CPU", "server CPU", "RSS MiB"]


def format_report(r: Report) -> str:
    lines = [
        f"socialhub bench {r.scenario}, {r.started_at}",
        f"machine: {r.machine}",
        f"target: {r.target}",
    ]
    if r.setup:
        lines.append("setup: " + ", ".join(f"{k} {v}" for k, v in r.setup.items()))
    lines.append("")
    if r.phases or r.ceiling:
        lines += table([HEADER, *phase_rows(r.phases), *phase_rows(r.ceiling, "ceiling:")])
        lines.append(
            "CPU: share of one core over the window (client: per process, BOUND when one passes "
            f"{CLIENT_BOUND_CPU:.0%}); RSS: server process at the end of the window"
        )
    for section in r.sections:
        lines += [*section_lines(section), ""]
    for p in [*r.phases, *r.ceiling]:
        if p.errors:
            lines.append(f"{p.name} errors: " + ", ".join(f"{k} x{n}" for k, n in p.errors.items()))
    if r.comparisons:
        if lines[-1]:
            lines.append("")
        lines += [format_fraction(c) for c in r.comparisons]
    if r.server:
        if lines[-1]:
            lines.append("")
        lines.append("server: " + ", ".join(f"{k} {v}" for k, v in r.server.items()))
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def client_notes(phases: Sequence[PhaseResult]) -> list[str]:
    notes = []
    for p in phases:
        if p.client_bound:
            notes.append(
                f"{p.name}: client-bound: a client process used {max(p.client_cpu):.0%} of a core; the figure "
                "measures the client as much as the server (add --procs, or run the client on another machine)"
            )
    return notes


def default_json_path(scenario: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return RESULTS_DIR / f"{scenario}-{stamp}.json"


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")


Series = dict[str, list[tuple[float, float]]]  # phase -> (seconds into its window, latency s)


def panel_title(name: str, result: PhaseResult | None, plotted: int, ceiling: bool = False) -> str:
    """A plot panel's title: the phase, its throughput and load, and how much of it is drawn."""
    name = f"ceiling: {name}" if ceiling else name
    if result is None:
        return f"{name}: {plotted} requests"
    shown = "all plotted" if plotted >= result.ok else f"{plotted} of them plotted, evenly spaced"
    return (
        f"{name}: {result.throughput_rps:.1f} req/s at {result.concurrency} in flight, {result.ok} requests ({shown})"
    )


def point_alpha(points: int) -> float:
    """Nearly opaque for a few hundred points, lighter for tens of thousands, so that dense
    bands show as darker without hiding the sparse tail."""
    return min(0.8, max(0.15, 1000 / max(points, 1)))


def plot(path: Path, report: Report, series: Series) -> str:
    """Latency of every request over its phase's window: a PNG at `path`; what was done, as text.

    One panel per phase (socialhub's, then the ceiling's), since each phase has its own
    measured window; one log latency axis in ms shared by all panels, so that they
    compare; p50 and p99 of the whole phase (every request, not only those drawn) as lines.
    """
    drawn = {name: samples for name, samples in series.items() if samples}
    if not drawn:
        return f"plot skipped: {report.scenario} records no per-request latencies (see its table and JSON)"
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
        from matplotlib.ticker import FuncFormatter  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install -e '.[bench]')"
    results = {r.name: r for r in [*report.phases, *report.ceiling]}
    ceilings = {r.name for r in report.ceiling}
    fig, axes = plt.subplots(
        len(drawn), 1, figsize=(11, 1.2 + 2.4 * len(drawn)), sharey=True, squeeze=False, layout="constrained"
    )
    low = max(1e-3, min(lat for samples in drawn.values() for _, lat in samples) * 1000)  # a log axis: > 0
    high = max(lat for samples in drawn.values() for _, lat in samples) * 1000
    for n, (ax, (name, samples)) in enumerate(zip(axes[:, 0], drawn.items(), strict=True)):
        result = results.get(name)
        colour = f"C{n}"
        ax.scatter(
            [t for t, _ in samples],
            [lat * 1000 for _, lat in samples],
            s=3,
            alpha=point_alpha(len(samples)),
            color=colour,
            linewidths=0,
            rasterized=True,
        )
        summary = result.latency if result is not None else None
        if summary is not None:
            for value, style, label in ((summary.p50_ms, "--", "p50"), (summary.p99_ms, ":", "p99")):
                ax.axhline(value, color="black", linestyle=style, linewidth=1)
                ax.annotate(
                    f"{label} {value:.3g} ms",
                    (1.0, value),
                    xycoords=("axes fraction", "data"),
                    xytext=(4, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=9,
                )
        duration = result.duration_s if result is not None else max(t for t, _ in samples)
        ax.set_xlim(0, duration)
        title = panel_title(name, result, len(samples), ceiling=name in ceilings)
        ax.set_title(title, loc="left", fontsize=10, color=colour)
        ax.set_ylabel("latency, ms")
        ax.grid(True, which="major", axis="both", alpha=0.3)
    ax0 = axes[0, 0]
    ax0.set_yscale("log")
    ax0.set_ylim(low / 1.5, high * 1.5)
    ax0.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axes[-1, 0].set_xlabel("seconds into the phase's measured window (phases ran one after another)")
    fig.suptitle(f"socialhub bench {report.scenario}, {report.started_at}: latency of each request", fontsize=12)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written to {path}"


def command_line() -> str:
    return " ".join(["python -m bench", *sys.argv[1:]])
