"""`socialhub events dead | retry [ID…]`: list dead letters, and ask for their replay.

Both connect with the configured settings, as `socialhub migrate` does (migrations
are applied first). `retry` only marks the dead letters: the running reader of each
one's consumer (outbox reader, Kafka relay or Kafka consumer group, on any instance)
claims it within `events.replay_poll` seconds and hands it to the consumer again;
consumers are idempotent, so an event that had partly taken effect is no harm. With
no server running, the replay happens when one starts. `events dead` shows the outcome:
a handled dead letter leaves the list (`--all` shows it as replayed), one that failed
again is back as dead, with its new error.

Output: one line per dead letter on stdout; notes and errors on stderr. Exit status 0,
or 2 for an unknown or unretryable id, a bad configuration or an unreachable database.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import AsyncExitStack

import asyncpg

from socialhub.config import Settings
from socialhub.domain.delivery import DeadLetter
from socialhub.domain.time import rfc3339
from socialhub.storage.deadletters import DeadLetterStore

# One line per dead letter: the error is cut here (the whole text is in the table).
ERROR_COLUMN = 200


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p_events = sub.add_parser("events", help="dead-lettered events: list them, replay them")
    events = p_events.add_subparsers(dest="events_command", required=True)
    p_dead = events.add_parser("dead", help="list the dead letters (oldest first)")
    p_dead.add_argument("--all", action="store_true", help="include those replayed already")
    p_dead.add_argument("--config", help="path of socialhub.toml (default: $SOCIALHUB_CONFIG)")
    p_retry = events.add_parser(
        "retry", help="have the running consumers handle dead letters again (no id: every one waiting)"
    )
    p_retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead letter ids, as `events dead` shows")
    p_retry.add_argument("--config", help="path of socialhub.toml (default: $SOCIALHUB_CONFIG)")


def line(d: DeadLetter) -> str:
    e = d.envelope
    error = " ".join(d.error.split())
    if len(error) > ERROR_COLUMN:
        error = error[: ERROR_COLUMN - 1] + "…"
    return (
        f"{d.id}  {d.status:<9}  {d.consumer:<13}  {e.event_type} {e.event_id} key={e.key}  "
        f"tries={d.attempts}  first_failed={rfc3339(d.first_failed_at)}  dead={rfc3339(d.dead_at)}  {error}"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return asyncio.run(_run(args, settings))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"socialhub events: cannot use the database: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from socialhub.app import open_database
    from socialhub.storage.database import Database

    async with AsyncExitStack() as stack:
        db = Database()
        await open_database(settings, db, stack)
        store = DeadLetterStore(db)
        if args.events_command == "dead":
            return await _dead(store, include_replayed=args.all)
        return await _retry(store, args.ids or None, settings)


async def _dead(store: DeadLetterStore, *, include_replayed: bool) -> int:
    letters = await store.get_dead_letters(include_replayed=include_replayed)
    for d in letters:
        print(line(d))
    if not letters:
        print("socialhub events: no dead letters", file=sys.stderr)
    return 0


async def _retry(store: DeadLetterStore, ids: list[int] | None, settings: Settings) -> int:
    status = 0
    if ids is not None:
        found = {d.id: d for d in await store.get_by_ids(ids)}
        unknown = [i for i in ids if i not in found]
        if unknown:
            print(f"socialhub events: no dead letter {', '.join(map(str, unknown))}; nothing done", file=sys.stderr)
            return 2
    marked = await store.update_retry_requested(ids)
    for d in marked:
        print(line(d))
    if ids is not None:
        for i in sorted(set(ids) - {d.id for d in marked}):
            state = found[i].status
            print(f"socialhub events: dead letter {i} is {state}, not queued again", file=sys.stderr)
            status = 2
    if marked:
        print(
            f"socialhub events: {len(marked)} queued for retry; the running readers replay them within "
            f"{settings.events.replay_poll:g} s (`socialhub events dead` shows what failed again)",
            file=sys.stderr,
        )
    elif ids is None:
        print("socialhub events: no dead letters to retry", file=sys.stderr)
    return status
