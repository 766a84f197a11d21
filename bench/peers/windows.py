"""The measured windows of `vs-socketio`, the same for both servers: Node driver processes
(bench/peers/driver/driver.js) open the sockets, the parent starts and ends the window.

`run_messages`: one sender and a room of `members` receivers (one: the one-to-one
window) spread over driver processes; the sender sends on a fixed schedule (open loop)
and the parent reads the server's CPU from /proc/<pid>/stat before and after.
`run_idle`: `len(tokens)` authenticated sockets held open; the server's RSS before and
after they are opened.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.peers.result import (
    Done,
    Event,
    IdleSample,
    Ready,
    Sent,
    Warm,
    WindowSamples,
    decode_event,
    proc_cpu_split,
)
from bench.peers.result import window_samples as samples_of
from bench.peers.servers import DRIVER_JS, Side, rss_mib
from bench.stats import merge_counts, percentile, split_evenly
from bench.ws.machine import Probe

# Opening thousands of sockets at 64 handshakes in flight per process takes seconds;
# a driver that says nothing for this long is stuck.
READY_TIMEOUT_S = 300.0
# After the sender's last ack: time for the last deliveries before the window ends.
DRAIN_S = 1.0
# Before a window: the connections settle (and the event loops go idle) first.
SETTLE_S = 1.0
E = TypeVar("E", Ready, Warm, Sent, Done)


class Pace(msgspec.Struct, frozen=True):
    messages: int
    interval_s: float
    warmup: int  # first messages left out of the latencies (not of the CPU per message)


class NodeDriver:
    """One `node driver.js` process: the job on its first stdin line, then "go" and "stop";
    its JSON lines are read by a thread so that a wait can time out."""

    def __init__(self, node: str, job: dict[str, Any]) -> None:
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([node, str(DRIVER_JS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._err)  # fmt: skip
        self._events: queue.Queue[Event | str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(msgspec.json.encode(job).decode())

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                try:
                    self._events.put(decode_event(line))
                except msgspec.DecodeError as exc:  # said when an event is awaited
                    self._events.put(f"unreadable line ({exc}): {line[:200]!r}")
        self._events.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def expect(self, kind: type[E], timeout: float) -> E:
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"driver {self.proc.pid}: no {kind.__name__} in {timeout:.0f} s") from None
        if event is None:
            self._err.seek(0)
            tail = self._err.read().decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"driver {self.proc.pid} ended (exit {self.proc.wait()}): {' | '.join(tail)}")
        if isinstance(event, str):
            raise RuntimeError(f"driver {self.proc.pid}: {event}")
        if not isinstance(event, kind):
            raise RuntimeError(f"driver {self.proc.pid}: {kind.__name__} expected, got {event}")
        return event

    def finish(self) -> Done:
        self.send("stop")
        done = self.expect(Done, 60)
        self.close()
        return done

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


def server_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the server process and its children, from /proc/<pid>/stat."""
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    with contextlib.suppress(psutil.Error):
        pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
    user = system = 0.0
    for p in pids:
        with contextlib.suppress(OSError):
            u, s = proc_cpu_split(Path(f"/proc/{p}/stat").read_text(), ticks)
            user, system = user + u, system + s
    return user, system


def server_cpu_s(pid: int) -> float:
    """CPU seconds of the server process and its children, from /proc/<pid>/stat."""
    return sum(server_cpu_split(pid))


class _PidProbe(Probe):
    """bench.ws.machine's probe (CPU by process group over a window) for known pids."""

    def __init__(self, servers: set[int], clients: set[int]) -> None:
        self.servers, self.clients = servers, clients


def _drivers(
    node: str, side: Side, role: str, tokens: list[str], procs: int, extra: dict[str, Any]
) -> list[NodeDriver]:
    drivers, start = [], 0
    for n in split_evenly(len(tokens), max(1, min(procs, len(tokens)))):
        job = {"proto": side.proto, "url": side.url, "role": role, "tokens": tokens[start : start + n], **extra}
        drivers.append(NodeDriver(node, job))
        start += n
    return drivers


def _ready(drivers: list[NodeDriver], expected: int) -> list[Ready]:
    readies = [d.expect(Ready, READY_TIMEOUT_S) for d in drivers]
    connected = sum(r.connected for r in readies)
    if connected < expected:
        errors = merge_counts(r.errors for r in readies)
        print(f"only {connected} of {expected} sockets are ready: {errors}", file=sys.stderr)
    return readies


def run_messages(node: str, side: Side, tokens: list[str], members: int, pace: Pace, procs: int) -> WindowSamples:
    """`tokens[0]` sends `pace.messages` to a room of the next `members` accounts."""
    room = side.room(members)
    tag = "v" + os.urandom(3).hex()
    common = {"room_id": room, "tag": tag}
    receivers = _drivers(node, side, "receiver", tokens[1 : members + 1], procs if members > 1 else 1, common)
    sender = NodeDriver(node, {"proto": side.proto, "url": side.url, "role": "sender", "tokens": tokens[:1],
                               "messages": pace.messages, "interval_ms": pace.interval_s * 1000, "warmup": pace.warmup,
                               **common})  # fmt: skip
    everyone = [*receivers, sender]
    try:
        _ready(receivers, members)
        if _ready([sender], 1)[0].connected < 1:
            raise RuntimeError(f"the sender could not connect to {side.name}")
        time.sleep(SETTLE_S)
        probe = _PidProbe({side.pid}, {d.proc.pid for d in everyone})
        for d in everyone:
            d.send("go")
        sender.expect(Warm, pace.warmup * pace.interval_s + 60)
        user0, system0 = server_cpu_split(side.pid)
        probe.start()
        sender.expect(Sent, pace.messages * pace.interval_s + 60)
        time.sleep(DRAIN_S)
        user, system = server_cpu_split(side.pid)
        user, system = user - user0, system - system0
        window = probe.stop()
        dones = [d.finish() for d in everyone]
    finally:
        for d in everyone:
            d.close()
    last, each, acks, lost, measured = samples_of(tag, pace.warmup, members, dones[:-1], dones[-1])
    return WindowSamples(
        members=members,
        sent=len(dones[-1].sends),
        measured=measured,
        latency_s=last,
        each_s=each,
        ack_s=acks,
        lost=lost,
        server_cpu_s=user + system,
        server_system_s=system,
        wall_s=window.wall_s,
        cores=window.cores,
        driver_cpu=[round(d.cpu_share, 3) for d in dones],
        closed=merge_counts(d.closed for d in dones),
    )


def run_idle(node: str, side: Side, tokens: list[str], procs: int, hold_s: float) -> IdleSample:
    """RSS of the server before the sockets and `hold_s` after the last one is authenticated."""
    before = rss_mib(side.pid)
    drivers = _drivers(node, side, "idle", tokens, procs, {})
    try:
        readies = _ready(drivers, len(tokens))
        time.sleep(hold_s)
        after = rss_mib(side.pid)
        for d in drivers:
            d.finish()
    finally:
        for d in drivers:
            d.close()
    connect = sorted(t for r in readies for t in r.connect_ms)
    return IdleSample(
        sockets=len(tokens),
        connected=sum(r.connected for r in readies),
        rss_before_mib=round(before, 2),
        rss_after_mib=round(after, 2),
        connect_p50_ms=percentile(connect, 50) if connect else None,
        errors=merge_counts(r.errors for r in readies),
        driver_cpu=[round(r.cpu_share, 3) for r in readies],
    )
