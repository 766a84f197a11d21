"""`python -m bench <scenario> [options]`: the one entry point of the benchmarks.

Scenarios: rest-read, rest-write, login, ws-idle, ws-chat, post-to-feed, calls. Each
starts its own server (or measures `--url`), loads it from separate client processes,
shows progress, prints a summary table with socialhub as a fraction of a bare ceiling
where one applies, and writes a JSON result file (default under bench/results/).
`socialhub bench ...` runs this with the same arguments. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import rest
from bench.progress import Progress
from bench.report import default_json_path, format_report, plot, write_json
from bench.target import TargetError, add_target_options

SCENARIOS = {
    "rest-read": "GET /feed and GET /posts/{id} on a seeded data set, vs bare Starlette",
    "rest-write": "POST /posts/, like, follow, vs bare Starlette",
    "login": "POST /auth/login (argon2id cost shown separately)",
    "ws-idle": "N authenticated idle sockets: RSS per socket (bench.ws_bench idle)",
    "ws-chat": "send -> receive one-to-one and fan-out to a room, vs a bare websockets relay",
    "post-to-feed": "write -> visible in followers' GET /feed, outbox or --kafka (bench.post_to_feed)",
    "calls": "call_invite -> both aiortc peers connected, N concurrent calls",
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--procs", type=int, default=max(2, os.cpu_count() or 2), help="client processes")
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
    for name in ("rest-read", "rest-write", "login"):
        p = sub.add_parser(name, help=SCENARIOS[name])
        add_target_options(p)
        rest.add_options(p, name)
        _common(p)
    from bench import realtime

    realtime.add_parsers(sub, SCENARIOS, add_target_options, _common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = Progress()
    if args.scenario in ("rest-read", "rest-write", "login"):
        try:
            report, runs = rest.run(args.scenario, args, progress)
        except TargetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        series = {name: r.samples for name, r in runs.items()}
    else:
        from bench import realtime

        outcome = realtime.run(args.scenario, args, progress)
        if outcome is None:
            return 2
        report, series = outcome
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
