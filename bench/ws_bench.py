"""WebSocket benchmarks: idle sockets per process, one-to-one latency, room fan-out.

Usage (from the project root, with the venv):

    # the benchmark starts `socialhub serve` itself (rate limits off); an external
    # PostgreSQL is faster to set up than the embedded one: a throw-away database is
    # created on it for the run and dropped after
    .venv/bin/python -m bench.ws_bench idle   --database-url postgresql://root@127.0.0.1:5432/test
    .venv/bin/python -m bench.ws_bench chat   --database-url postgresql://root@127.0.0.1:5432/test
    .venv/bin/python -m bench.ws_bench chat   --database-url ... --redis   # A on server 1, B on server 2
    .venv/bin/python -m bench.ws_bench fanout --database-url ... [--members 1000]
    .venv/bin/python -m bench.ws_bench fanout --database-url ... --profile /tmp/prof   # py-spy the server

    # or a running server: its own database (users and sessions are inserted there) and
    # its JWT secret (tokens are signed here); give --url twice for --redis
    .venv/bin/python -m bench.ws_bench chat --url http://127.0.0.1:8000 \
        --database-url postgresql://.../socialhub --jwt-secret "$SECRET" [--server-pid PID]

Scenarios:

- `idle`: `--sockets` (default 10,000) sockets to one process, each authenticated, then
  each answers one `ping`; the server's RSS before, after (at the end of `--hold`) and
  per socket, and how long connecting took.
- `chat`: A sends `--messages` (default 2,000) `send_message` at `--interval` (10 ms)
  in a direct room; the figure is send -> B's `new_message`. With `--redis`, A is on
  server 1 and B on server 2 (two processes on one PostgreSQL and one Redis).
- `fanout`: a room of `--members` (default 1,000) receivers plus the sender, every one
  with a socket joined; `--messages` (100) sends at `--interval` (250 ms). Per message:
  send -> the last member's `new_message`, and send -> the median member's. With
  `--redis` the receivers alternate between the two servers.

Accounts are not signed up (10,000 argon2id hashes would take longer than the run):
users and sessions rows are inserted with SQL, and access tokens are signed with the
server's JWT secret by `socialhub.services.tokens.TokenCodec`, exactly as the server
issues them. Rooms are made through `POST /chat/rooms`.

Clients: separate processes (`--procs`, spawn start method, uvloop), each speaking
RFC 6455 directly over asyncio protocols so that a frame costs the client microseconds
and its arrival is stamped in `data_received`, before any parsing. Times are
`time.monotonic()` (CLOCK_MONOTONIC, one clock for every process of the machine), so a
send stamped in one process and a receipt stamped in another are comparable.
`--deflate` offers `permessage-deflate` as browsers and the `websockets` client do;
the default is not to (the server then keeps no zlib state per socket). A client
process using more than 90% of a core is reported as client-bound. The CPU of every
process during the measured window is added up by group (server, clients, PostgreSQL,
Redis, others) because on this 2-core machine they all share the same cores.

File descriptors: the soft RLIMIT_NOFILE of this process and of every client process is
raised to the hard limit; a server spawned by the benchmark inherits the raised limit.
A server started by hand needs `ulimit -n` raised itself (its limit is printed).

The parts live in bench/ws/: `client` (the RFC 6455 client), `workers` (client
processes), `servers` and `accounts` (what is measured, and its users), `machine` (CPU,
memory, py-spy), `idle` and `messages` (the scenarios), `report`.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from bench.server import ServerStartError, ThrowawayDatabase
from bench.ws.accounts import seed_accounts
from bench.ws.idle import run_idle
from bench.ws.messages import run_messages
from bench.ws.report import build_notes, format_report, machine_description
from bench.ws.servers import (
    BenchServer,
    Target,
    drop_redis_keys,
    server_pid,
)
from bench.ws.workers import raise_nofile

SCENARIOS = ("idle", "chat", "fanout")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ws_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--url", action="append", help="a running server (twice with --redis); default: spawn")
    p.add_argument("--server-pid", type=int, action="append", help="pid of each --url server (default: found by port)")
    p.add_argument("--database-url", help="spawn: admin URL of a PostgreSQL to make a throw-away database on "
                   "(default: embedded); --url: the server's own database")  # fmt: skip
    p.add_argument("--jwt-secret", help="the running server's auth.jwt_secret (with --url)")
    p.add_argument("--redis", nargs="?", const="redis://127.0.0.1:6379/0", help="two servers on this Redis")
    p.add_argument("--procs", type=int, help="client processes (default: idle 4, fanout 3; chat: 1 + 1)")
    p.add_argument("--sockets", type=int, default=10_000, help="idle: sockets (default 10000)")
    p.add_argument("--members", type=int, default=1000, help="fanout: receiving members (default 1000)")
    p.add_argument("--messages", type=int, help="chat: 2000, fanout: 100")
    p.add_argument("--interval", type=float, help="seconds between sends (chat 0.01, fanout 0.25)")
    p.add_argument("--warmup", type=int, help="first messages left out (chat 100, fanout 10)")
    p.add_argument("--hold", type=float, default=5.0, help="idle: seconds the sockets stay open (default 5)")
    p.add_argument("--deflate", action="store_true", help="offer permessage-deflate, as browsers do")
    p.add_argument("--profile", metavar="DIR", help="py-spy record each server during the window into DIR")
    p.add_argument("--keep-db", action="store_true", help="do not drop the throw-away database")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    args = p.parse_args(argv)
    fanout = args.scenario == "fanout"
    args.procs = args.procs or {"idle": 4, "fanout": 3, "chat": 1}[args.scenario]
    args.messages = args.messages or (100 if fanout else 2000)
    args.interval = args.interval if args.interval is not None else (0.25 if fanout else 0.01)
    args.warmup = args.warmup if args.warmup is not None else (10 if fanout else 100)
    args.warmup = min(args.warmup, args.messages - 1)
    if args.url and not (args.database_url and args.jwt_secret):
        p.error("--url needs --database-url (the server's database) and --jwt-secret")
    if args.url and args.redis and len(args.url) < 2:
        p.error("--redis with --url needs two --url")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = raise_nofile()
    print(f"RLIMIT_NOFILE of the benchmark (inherited by a spawned server): {nofile}", file=sys.stderr)
    needed = {"idle": args.sockets, "chat": 2, "fanout": args.members + 1}[args.scenario]
    count = 2 if args.redis else 1
    servers: list[BenchServer] = []
    database: ThrowawayDatabase | None = None
    redis_prefix = f"wsbench:{secrets.token_hex(4)}:"  # the spawned servers' keys, deleted after
    try:
        if args.url:
            urls = args.url[:count]
            targets = [Target(u.rstrip("/"), server_pid(u, args.server_pid, i)) for i, u in enumerate(urls)]
            db_url, secret = args.database_url, args.jwt_secret
        else:
            secret = secrets.token_urlsafe(32)
            settings = {"SOCIALHUB_AUTH_JWT_SECRET": secret}
            if args.database_url:
                database = ThrowawayDatabase(args.database_url, "socialhub_wsbench_", keep=args.keep_db)
                settings["SOCIALHUB_DATABASE_URL"] = database.create()
            if args.redis:
                settings["SOCIALHUB_REDIS_URL"] = args.redis
                settings["SOCIALHUB_REDIS_KEY_PREFIX"] = redis_prefix
            first = BenchServer(settings)
            servers.append(first)
            first.start()
            if args.redis:
                second_settings = dict(settings)
                if not args.database_url:
                    embedded = first.embedded_url()
                    if embedded is None:
                        raise ServerStartError("cannot find the embedded PostgreSQL of server 1")
                    second_settings["SOCIALHUB_DATABASE_URL"] = embedded
                second = BenchServer(second_settings)
                servers.append(second)
                second.start()
            db_url = settings.get("SOCIALHUB_DATABASE_URL") or first.embedded_url()
            assert db_url is not None
            targets = [Target(s.url, s.proc.pid if s.proc else None) for s in servers]
        print("servers: " + ", ".join(f"{t.url} (pid {t.pid})" for t in targets), file=sys.stderr)
        t0 = time.monotonic()
        accounts = asyncio.run(seed_accounts(db_url, secret, needed, secrets.token_hex(3)))
        print(f"seeded {len(accounts)} users and sessions in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        if args.scenario == "idle":
            report = run_idle(targets, [a.token for a in accounts], args.procs, args.hold, args.deflate)
        else:
            report = run_messages(args, targets, accounts, fanout=args.scenario == "fanout")
        for i, server in enumerate(servers, 1):
            logged = server.logged_errors()
            if logged:
                report.figures[f"server{i}_logged_errors"] = logged
    finally:
        for server in reversed(servers):
            server.stop()
        if database is not None:
            database.drop()
        if servers and args.redis:
            asyncio.run(drop_redis_keys(args.redis, redis_prefix))
    report.machine = machine_description()
    report.command = " ".join(["python -m bench.ws_bench", *(argv if argv is not None else sys.argv[1:])])
    report.notes = build_notes(report)
    print(format_report(report))
    if args.json:
        Path(args.json).write_bytes(msgspec.json.format(msgspec.json.encode(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
