"""`python -m bench <scenario> [options]`: the one entry point of the benchmarks.

Scenarios: rest-read, rest-write, login, ws-idle, ws-chat, post-to-feed, calls, vs-socketio,
vs-synapse, asgi-cpu, pg-commit. Each is a module of this package called here with its options (`add_options`,
then `run`): it starts its own server (or measures `--url`), loads it from separate client processes,
shows progress and fills the one report (bench.report): a summary with socialhub as a
fraction of a bare ceiling where one applies, printed and written as JSON (default under
bench/results/). `socialhub bench ...` runs this with the same arguments. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from bench import asgi_cpu, calls, pg_commit, post_to_feed, rest, sockets, vs_socketio, vs_synapse
from bench.load import WorkerError
from bench.progress import Progress
from bench.report import Report, Series, default_json_path, format_report, plot, write_json
from bench.server import ServerStartError
from bench.target import TargetError, add_target_options

SCENARIOS = {
    "rest-read": "GET /feed, GET /posts/{id} and GET /users/{id} on a seeded data set, vs bare Starlette",
    "rest-write": "POST /posts/, like, follow, vs bare Starlette",
    "login": "POST /auth/login (argon2id cost shown separately), vs bare Starlette",
    "ws-idle": "N authenticated idle sockets: RSS per socket, connects/s, vs a bare websockets server",
    "ws-chat": "send -> receive one-to-one and fan-out to a room, vs a bare websockets relay",
    "post-to-feed": "write -> visible in followers' GET /feed, outbox or --kafka, vs an in-memory feed",
    "calls": "call_invite -> both aiortc peers connected, N concurrent calls",
    "vs-socketio": "one-to-one latency, fan-out CPU, idle RSS: socialhub vs Socket.IO 4 + Redis adapter",
    "vs-synapse": "one-to-one send -> receive latency and server CPU: socialhub vs Matrix Synapse",
    "asgi-cpu": "CPU a REST read costs inside the ASGI app (in process, no sockets), vs bare Starlette",
    "pg-commit": "what a chat message's statement costs in PostgreSQL: round trip, statement, the commit's flush",
}
# The module that runs each scenario: `add_options(parser, scenario)` and
# `run(scenario, args, progress) -> (Report, Series)`.
MODULES: dict[str, ModuleType] = {
    "rest-read": rest,
    "rest-write": rest,
    "login": rest,
    "ws-idle": sockets,
    "ws-chat": sockets,
    "post-to-feed": post_to_feed,
    "calls": calls,
    "vs-socketio": vs_socketio,
    "vs-synapse": vs_synapse,
    "asgi-cpu": asgi_cpu,
    "pg-commit": pg_commit,
}
# What stops a run early with a one-line message (exit 2) rather than a traceback.
STOPS = (TargetError, ServerStartError, WorkerError)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, help="result file (default bench/results/<scenario>-<time>.json)")
    p.add_argument("--plot", type=Path, nargs="?", const=Path(""), help="also a PNG of latency over time")
    p.add_argument("--seed", type=int, help="for the random choices (default: random)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="socialhub benchmarks: one scenario per run.",
        epilog="scenarios:\n" + "\n".join(f"  {k:13} {v}" for k, v in SCENARIOS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="scenario")
    for name, help_text in SCENARIOS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_target_options(p, twice=MODULES[name] is sockets)
        MODULES[name].add_options(p, name)
        _common(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = Progress()
    run: Callable[[str, argparse.Namespace, Progress], tuple[Report, Series]] = MODULES[args.scenario].run
    try:
        report, series = run(args.scenario, args, progress)
    except STOPS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(format_report(report))
    path = args.json or default_json_path(args.scenario)
    write_json(report, path)
    print(f"\nresult file: {path}")
    if args.plot is not None:
        png = args.plot if str(args.plot) not in ("", ".") else path.with_suffix(".png")
        print(plot(png, report, series))
    return 0


if __name__ == "__main__":
    sys.exit(main())
