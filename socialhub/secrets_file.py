"""The JWT secret generated into data_dir when `auth.jwt_secret` is not set."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

SECRET_FILE = "jwt_secret"


def load_or_create_secret(data_dir: Path) -> str:
    """Read data_dir/jwt_secret, creating it (0600, 256 random bits) on first use.

    Created with O_EXCL so two processes starting at once on one data_dir agree.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):
            value = path.read_text().strip()
            if value:
                return value
            time.sleep(0.02)  # the other process is writing it
        raise RuntimeError(f"{path} is empty; delete it or set auth.jwt_secret") from None
    value = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value
