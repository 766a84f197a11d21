"""`socialhub serve | migrate | bench | events`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import logging
import signal
import socket
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from types import FrameType

from socialhub import __version__, cli_events
from socialhub.config import ConfigError, Settings, load_settings, with_overrides
from socialhub.domain.protocol import MAX_FRAME_BYTES, PING_INTERVAL_SECONDS
from socialhub.logs import setup_logging

logger = logging.getLogger(__name__)


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    server: dict[str, object] = {}
    if getattr(args, "host", None):
        server["host"] = args.host
    if getattr(args, "port", None) is not None:
        server["port"] = args.port
    return with_overrides(settings, server=server) if server else settings


# Each socket keeps ~230 objects the cyclic collector tracks; with CPython's default
# thresholds a full collection ran every ~30 s under fan-out and took 160 ms at 1,000
# sockets, 1.1-1.4 s at 10,000 (the fan-out p99 was exactly such a pause). Fewer, later
# collections, and the start-up objects frozen out of them: fan-out p99 81 -> 52 ms,
# connects 767 -> 1,197/s (then bench/ws_bench.py, now `python -m bench ws-chat`; see bench/README.md).
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def serve(settings: Settings) -> int:
    import uvicorn

    from socialhub.lifecycle import Drain

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, with the first SIGTERM draining the instance before it stops
        (`Drain`: not ready, still serving, then sockets closed with 1012 a few at a time).
        SIGINT (Ctrl-C), a second signal, or a drain of 0 s stop at once, as uvicorn does."""

        def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
            super().__init__(config)
            self.drain = drain
            self._draining: asyncio.Task[None] | None = None
            self._loop: asyncio.AbstractEventLoop | None = None

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            loop = self._loop
            # Not yet serving (still migrating, say): nothing to drain, stop at once.
            at_once = loop is None or not self.started or self.drain.seconds <= 0
            if sig != signal.SIGTERM or self._draining is not None or at_once:
                super().handle_exit(sig, frame)
                return
            # A signal handler runs between two steps of the loop's thread: hand the drain
            # to the loop, which stops the server when it is done.
            assert loop is not None
            self._draining = loop.create_task(self._drain())
            loop.call_soon_threadsafe(lambda: None)  # wake the loop if it sleeps

        async def _drain(self) -> None:
            try:
                await self.drain.run()
            finally:
                self.should_exit = True

    from socialhub.api.http.connection import HeadLimitedProtocol
    from socialhub.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        # httptools, with SPEC's 431 for a head over 32 KiB; /ws upgrades go to socialhub's
        # own socket protocol (api/ws/session.py), outside ASGI.
        http=HeadLimitedProtocol.serving(app.state.sockets),
        # Upgrades to any other path: uvicorn's sans-I/O websockets protocol and the app
        # (which has no WebSocket route: refused). The ws_* settings below are for them;
        # /ws has the same ones of its own (api/ws/session.py, api/ws/endpoint.py).
        ws="websockets-sansio",
        lifespan="on",
        proxy_headers=True,
        forwarded_allow_ips=settings.server.forwarded_allow_ips,
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=15,
        # SPEC: frames over 64 KiB close the socket (1009); ping every 20 s, drop the silent.
        ws_max_size=MAX_FRAME_BYTES,
        ws_ping_interval=PING_INTERVAL_SECONDS,
        ws_ping_timeout=PING_INTERVAL_SECONDS,
        # Frames are small JSON; per-message deflate gives every socket its own zlib state
        # (~100 KiB: 10,000 sockets went from 0.48 to 1.4 GiB) and compresses a fan-out
        # frame once per member (`python -m bench ws-idle` / `ws-chat --deflate`).
        ws_per_message_deflate=False,
    )
    server = DrainingServer(config, app.state.drain)
    tune_gc()
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal under the
    # handler that was there before it; a quiet one makes a clean stop exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    # uvicorn exits quietly when the lifespan start-up fails; say so in the exit code.
    return 0 if server.started else 3


async def _migrate(settings: Settings) -> list[int]:
    from socialhub.app import open_database
    from socialhub.storage.database import Database

    async with AsyncExitStack() as stack:
        db = Database()
        await open_database(settings, db, stack)
        return []


# What the benchmark clients import beyond the server's own dependencies (pyproject's
# `bench` extra).
BENCH_NEEDS = ("httpx", "psutil", "websockets")


def bench(args: list[str]) -> int:
    """Run `python -m bench` with these arguments; the benchmarks ship with the source
    checkout (bench/ next to socialhub/), not with the installed package."""
    # `python -m bench` below also finds bench/ in the working directory (a source checkout
    # with a non-editable install, where this process cannot import it).
    if importlib.util.find_spec("bench.__main__") is None and not Path("bench", "__main__.py").is_file():
        print(
            "socialhub bench: the benchmarks are not installed with the package; run this from a source "
            "checkout of socialhub (the directory holding bench/), e.g. `cd socialhub && socialhub bench rest-read`",
            file=sys.stderr,
        )
        return 2
    missing = [name for name in BENCH_NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"socialhub bench: needs {', '.join(missing)}, which the plain install leaves out; "
            "install the bench extra: pip install -e '.[bench]'",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, "-m", "bench", *args])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return bench(argv[1:])  # its own options and --help: passed through untouched
    parser = argparse.ArgumentParser(prog="socialhub", description="socialhub server")
    parser.add_argument("--version", action="version", version=f"socialhub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the server (migrations are applied first)")
    p_serve.add_argument("--host")
    p_serve.add_argument("--port", type=int)
    p_serve.add_argument("--config", help="path of socialhub.toml (default: $SOCIALHUB_CONFIG)")
    p_migrate = sub.add_parser("migrate", help="apply migrations and exit")
    p_migrate.add_argument("--config", help="path of socialhub.toml (default: $SOCIALHUB_CONFIG)")
    sub.add_parser("bench", help="run a benchmark (source checkout only): socialhub bench <scenario> --help")
    cli_events.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"socialhub: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.server.log_level)
    from socialhub.app import check_reachable

    try:
        asyncio.run(check_reachable(settings, redis=args.command == "serve"))
    except ConfigError as exc:
        print(f"socialhub: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(settings)
    if args.command == "events":
        return cli_events.run(args, settings)
    asyncio.run(_migrate(settings))
    logger.info("migrations are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
