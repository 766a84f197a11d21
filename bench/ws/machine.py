"""What the machine does during a measured window: CPU by group, server memory, py-spy.

On a 2-core VM the server, PostgreSQL, Redis and the clients share the same cores, so
the CPU of every process over the window is added up by group, and busy time no
process accounts for (processes that came and went inside the window) is shown too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.server import MIB
from bench.ws.servers import Target
from bench.ws.workers import Worker

CpuTable = dict[tuple[int, float], tuple[str, float]]


def cpu_table() -> CpuTable:
    """(pid, create_time) -> (name, user+system CPU seconds) for every process."""
    out: CpuTable = {}
    for proc in psutil.process_iter(["name", "cpu_times", "create_time"]):
        info = proc.info
        times = info.get("cpu_times")
        if times is not None and info.get("create_time") is not None:
            out[(proc.pid, info["create_time"])] = (info.get("name") or "", times.user + times.system)
    return out


class CpuWindow(msgspec.Struct, frozen=True):
    """Cores used on average over one window, by group."""

    wall_s: float
    machine_busy: float  # share of all cores busy (1.0 = every core), steal included
    steal: float  # share of all cores taken by the hypervisor for other guests
    cores: dict[str, float]  # server, clients, postgres, redis, py-spy, others, unattributed


def cpu_window(
    before: CpuTable,
    after: CpuTable,
    wall: float,
    busy: float,
    steal: float,
    servers: set[int],
    clients: set[int],
) -> CpuWindow:
    cores: dict[str, float] = {"server": 0.0, "clients": 0.0, "postgres": 0.0, "redis": 0.0, "py-spy": 0.0}
    others = 0.0
    me = os.getpid()
    for key, (name, cpu) in after.items():
        used = cpu - before.get(key, (name, 0.0))[1]
        pid = key[0]
        if pid in servers:
            cores["server"] += used
        elif pid in clients or pid == me:
            cores["clients"] += used
        elif name.startswith("postgres"):
            cores["postgres"] += used
        elif name.startswith("redis"):
            cores["redis"] += used
        elif name.startswith("py-spy"):
            cores["py-spy"] += used
        else:
            others += used
    cores["others"] = others
    # Busy time no process accounts for: processes that started and ended inside the
    # window (another engineer's test run), interrupts, steal.
    cores["unattributed"] = max(0.0, busy * (os.cpu_count() or 1) * wall - sum(cores.values()))
    return CpuWindow(wall, busy, steal, {k: round(v / max(wall, 1e-9), 3) for k, v in cores.items()})


class Probe:
    """Wall time, per-process CPU and machine busy share over one window."""

    def __init__(self, servers: list[Target], clients: list[Worker]) -> None:
        self.servers = {t.pid for t in servers if t.pid}
        self.clients = {w.proc.pid for w in clients if w.proc.pid}

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.table0 = cpu_table()
        self.machine0 = psutil.cpu_times()

    def stop(self) -> CpuWindow:
        wall = time.monotonic() - self.t0
        m1 = psutil.cpu_times()
        total = sum(m1) - sum(self.machine0)
        idle = (m1.idle + getattr(m1, "iowait", 0.0)) - (self.machine0.idle + getattr(self.machine0, "iowait", 0.0))
        busy = 1.0 - idle / total if total > 0 else 0.0
        steal = (getattr(m1, "steal", 0.0) - getattr(self.machine0, "steal", 0.0)) / total if total > 0 else 0.0
        return cpu_window(self.table0, cpu_table(), wall, busy, steal, self.servers, self.clients)


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return float(psutil.Process(pid).memory_info().rss) / MIB
    except psutil.Error:
        return None


class Profiler:
    """py-spy on each server during the measured window (raw collapsed stacks)."""

    def __init__(self, out_dir: str | None, servers: list[Target], label: str) -> None:
        self.out_dir = Path(out_dir) if out_dir else None
        self.label = label  # the window's name, so that two windows of one run keep their files apart
        self.servers = servers
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, seconds: float) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        spy = Path(sys.executable).with_name("py-spy")
        for i, target in enumerate(self.servers, 1):
            if target.pid is None:
                continue
            out = self.out_dir / f"{self.label}-server{i}.txt"
            cmd = [str(spy), "record", "--pid", str(target.pid), "--format", "raw", "--rate", "250",
                   "--nonblocking", "--duration", str(int(seconds) + 5), "-o", str(out)]  # fmt: skip
            self.procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out))

    def stop(self) -> list[str]:
        lines: list[str] = []
        for proc, out in self.procs:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            lines += summarize_profile(out)
        return lines


def summarize_profile(path: Path, top: int = 12) -> list[str]:
    """From py-spy's raw format: the lines where CPU was spent (self) and the functions
    that spent it (inclusive), as shares of the on-CPU samples. Time in C code (a
    syscall, uvloop, asyncpg's parser) is charged to the Python line that called it."""
    try:
        text = path.read_text()
    except OSError:
        return [f"no profile at {path}"]
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";")]
        leaf = frames[-1]
        own[f"{leaf[0]} ({leaf[1]}:{leaf[2]})"] = own.get(f"{leaf[0]} ({leaf[1]}:{leaf[2]})", 0) + n
        for func in {f"{f[0]} ({f[1]})" for f in frames}:
            incl[func] = incl.get(func, 0) + n
    if not total:
        return [f"{path}: no samples"]
    out = [f"py-spy {path}: {total} samples on CPU", "  self   line"]
    out += [f"  {n / total:5.1%}  {f}" for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    out += ["  incl   function"]
    out += [f"  {n / total:5.1%}  {f}" for f, n in sorted(incl.items(), key=lambda kv: -kv[1])[: top * 2]]
    return out


def _frame_name(frame: str) -> tuple[str, str, str]:
    """("Frame.write", "websockets/legacy/framing.py", "146") from py-spy's frame text."""
    func, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file, _, line = where.rpartition(":")
    if not file:
        file, line = where, ""
    # Keep the path from the package down (site-packages/... and /work/... are noise).
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return func, file, line


def fds(pid: int | None) -> int | None:
    try:
        return int(psutil.Process(pid).num_fds()) if pid else None
    except psutil.Error:
        return None


def nofile_limit(pid: int | None) -> list[int] | None:
    try:
        return list(psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)) if pid else None
    except psutil.Error:
        return None
