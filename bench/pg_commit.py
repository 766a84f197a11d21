"""`pg-commit`: what one chat message costs in PostgreSQL, apart from socialhub's server.

The one-to-one path (`ws-chat`, `vs-socketio`, `vs-synapse`) waits for one statement,
`socialhub_send_message` (migrations/0006), committed durably before the message goes to
the other socket. This times, from one asyncpg connection at the chat windows' pace (20
a second by default: the database is idle between statements, as there), in alternating
rounds on a throw-away database:

- `SELECT 1`: the round trip alone (the server woken, the answer read);
- `socialhub_send_message`: the real statement, membership check, seq and insert, commit;
- a one-row `INSERT`, committed durably, and the same on a connection with
  `synchronous_commit = off`: the difference is the wait for the WAL flush. socialhub
  never runs so (a message is acked only once it is on disk); it is here to measure it.

What Socket.IO's Redis `RPUSH` costs instead is the round trip of a server that keeps
nothing on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg

from bench.progress import Progress
from bench.report import Report, Section, Series, new_report
from bench.server import ThrowawayDatabase
from bench.stats import summarize
from bench.target import TargetError

KINDS = (
    "SELECT 1",
    "socialhub_send_message (durable commit)",
    "one-row INSERT, durable commit",
    "one-row INSERT, commit not waited for (synchronous_commit off: diagnosis only)",
)


def add_options(p: argparse.ArgumentParser, scenario: str) -> None:
    p.add_argument("--rate", type=float, default=20.0, help="statements a second (default 20, the chat windows')")
    p.add_argument("--count", type=int, default=200, help="statements of each kind a round (default 200)")
    p.add_argument("--rounds", type=int, default=2, help="rounds; the kinds alternate within each (default 2)")


async def _paced(run: Callable[[int], Awaitable[object]], count: int, rate: float, offset: int) -> list[float]:
    out = []
    for i in range(count):
        started = time.perf_counter()
        await run(offset + i)
        out.append(time.perf_counter() - started)
        await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - started)))
    return out[count // 10 :]  # the first tenth warms the connection's statement cache


async def _measure(db_url: str, args: argparse.Namespace, progress: Progress) -> dict[str, list[float]]:
    from socialhub.storage.migrate import migrate

    await migrate(db_url)
    durable = await asyncpg.connect(db_url)
    relaxed = await asyncpg.connect(db_url)
    try:
        await relaxed.execute("SET synchronous_commit = off")
        await durable.execute("CREATE TABLE bench_rows (id bigserial PRIMARY KEY, body text NOT NULL)")
        users = [
            await durable.fetchval(
                "INSERT INTO users (username, email, name, password_hash) "
                "VALUES ($1, $1 || '@bench.invalid', $1, 'x') RETURNING id",
                name,
            )
            for name in ("pg_a", "pg_b")
        ]
        sender = users[0]
        room = await durable.fetchval(
            "INSERT INTO rooms (kind, name, created_by) VALUES ('group', 'bench', $1) RETURNING id", sender
        )
        await durable.execute("INSERT INTO room_members (room_id, user_id) VALUES ($1, $2), ($1, $3)", room, *users)
        runs: dict[str, Callable[[int], Awaitable[object]]] = {
            KINDS[0]: lambda i: durable.fetchval("SELECT 1"),
            KINDS[1]: lambda i: durable.fetchrow(
                "SELECT * FROM socialhub_send_message($1, $2, $3, $4)", room, sender, "hello there", f"m{i}"
            ),
            KINDS[2]: lambda i: durable.execute("INSERT INTO bench_rows (body) VALUES ('hello there')"),
            KINDS[3]: lambda i: relaxed.execute("INSERT INTO bench_rows (body) VALUES ('hello there')"),
        }
        samples: dict[str, list[float]] = {k: [] for k in KINDS}
        for r in range(args.rounds):
            for k, run in runs.items():
                progress.say(f"round {r + 1}: {k}, {args.count} at {args.rate:g}/s ...")
                samples[k] += await _paced(run, args.count, args.rate, r * args.count)
        return samples
    finally:
        await durable.close()
        await relaxed.close()


def run(scenario: str, args: argparse.Namespace, progress: Progress) -> tuple[Report, Series]:
    if args.url or not args.database_url:
        raise TargetError("pg-commit needs --database-url (a PostgreSQL to make a throw-away database on), no --url")
    if args.rate <= 0 or args.count < 10 or args.rounds < 1:
        raise TargetError("--rate must be above 0, --count at least 10, --rounds at least 1")
    with ThrowawayDatabase(args.database_url, prefix="socialhub_pgcommit_") as db:
        samples = asyncio.run(_measure(db.url, args, progress))
    report = new_report("pg-commit", f"PostgreSQL of {args.database_url} (a throw-away database)")
    latency = {k: s for k, s in ((k, summarize(v)) for k, v in samples.items()) if s is not None}
    report.sections.append(Section(title="one statement from one connection, round trip", latency=latency))
    report.setup = {"rate /s": args.rate, "statements of each kind a round": args.count, "rounds": args.rounds}
    report.notes.append(
        "each kind's first tenth of a round is left out (statement cache); the kinds alternate within a round; "
        "the last kind is never how socialhub runs: it shows what the durable commit's WAL flush costs"
    )
    return report, {}
