"""`idle`: many authenticated sockets held open; the server's RSS per socket.

Each socket authenticates and answers one `ping` (so every one is live), then they are
held `hold` seconds; RSS per socket = (RSS after - RSS before) / sockets. The
connect+authenticate latency is measured with `CONNECT_CONCURRENCY` handshakes in flight
per client process, so it is mostly queueing: read `connects_per_s`.

The same function measures the ceiling (`bench.ws_ceiling.measure_idle`): the same
client processes against a bare `websockets` server that answers the same frames.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from bench.stats import merge_counts, split_evenly, summarize
from bench.ws.machine import Probe, fds, nofile_limit, rss_mib
from bench.ws.result import SocketResult, rounded
from bench.ws.servers import Target, hostport
from bench.ws.workers import Worker, WorkerJob, check_ready, finish

# The goal for one server process.
GOAL_SOCKETS = 10_000
GOAL_RSS_MIB = 1024.0


def run_idle(
    targets: list[Target], tokens: Sequence[str], procs: int, hold: float, deflate: bool, goal: bool = True
) -> SocketResult:
    """`tokens` sockets to the first target from `procs` client processes, held `hold` s."""
    host, port = hostport(targets[0].url)
    pid = targets[0].pid
    jobs, start = [], 0
    for n in split_evenly(len(tokens), procs):
        jobs.append(WorkerJob("idle", host, port, list(tokens[start : start + n]), deflate))
        start += n
    time.sleep(1.0)
    rss_before = rss_mib(pid)
    fds_before = fds(pid)
    probe = Probe(targets, [])
    probe.start()  # before the client processes start: they connect as soon as they run
    workers = [Worker(job) for job in jobs]
    probe.clients = {w.proc.pid for w in workers if w.proc.pid}
    readies, errors = check_ready(workers, len(tokens))
    cpu = probe.stop()
    connected = sum(r.connected for r in readies)
    connect_wall = max(r.finished_at for r in readies) - min(r.started_at for r in readies)
    for w in workers:
        w.conn.send("ping")
    pongs = sum(int(w.expect()) for w in workers)
    peak = 0.0
    for _ in range(max(1, int(hold))):
        time.sleep(1.0)
        peak = max(peak, rss_mib(pid) or 0.0)
    rss_after = rss_mib(pid)
    fds_after = fds(pid)
    dones = finish(workers)
    time.sleep(3.0)
    rss_closed = rss_mib(pid)
    figures: dict[str, Any] = {
        "sockets_requested": len(tokens),
        "sockets_authenticated": connected,
        "sockets_answering_ping": pongs,
        "connect_wall_s": round(connect_wall, 2),
        "connects_per_s": round(connected / connect_wall, 1) if connect_wall else None,
        "server_rss_before_mib": rounded(rss_before),
        "server_rss_after_mib": rounded(rss_after),
        "server_rss_peak_mib": rounded(peak),
        "server_rss_after_close_mib": rounded(rss_closed),
        "rss_per_socket_kib": round((rss_after - rss_before) * 1024 / connected, 1)
        if rss_after and rss_before and connected
        else None,
        "server_fds_before_after": [fds_before, fds_after],
        "server_nofile_limit": nofile_limit(pid),
        "closed_by_server": merge_counts(d.closed for d in dones),
        "errors": errors,
    }
    latency = {}
    summary = summarize(s for r in readies for s in r.connect_s)
    if summary is not None:
        latency["connect+authenticate"] = summary
    goals = {}
    if goal and rss_after is not None and len(tokens) >= GOAL_SOCKETS:
        ok = rss_after < GOAL_RSS_MIB and connected >= GOAL_SOCKETS
        goals["10,000 sockets < 1 GiB RSS"] = f"{'met' if ok else 'MISSED'}: {connected} sockets, {rss_after:.0f} MiB"
    return SocketResult("idle", len(targets), deflate, figures, latency, cpu,
                        [r.cpu_share for r in readies], goals, [])  # fmt: skip
