"""Mail as files: each mail becomes one `.eml` file in a directory.

The default back end: a developer or an operator without SMTP reads the reset codes
from `data_dir/mail/` (any mail client opens the files).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import secrets
import tempfile
from datetime import UTC, datetime

from socialhub.errors import Unavailable
from socialhub.infra.mail.base import Mail, Mailer, build_message

logger = logging.getLogger(__name__)


class FileMailer(Mailer):
    """Writes each mail as `<UTC time>-<random>.eml` into `directory`."""

    def __init__(self, directory: pathlib.Path, sender: str) -> None:
        self._directory = directory
        self._sender = sender

    async def send(self, mail: Mail) -> None:
        now = datetime.now(UTC)
        data = build_message(mail, self._sender, now).as_bytes()
        # Time first so the names sort by time; 64 random bits so two mails in the
        # same millisecond (or from two processes sharing the directory) never collide.
        name = f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(8)}.eml"
        try:
            await asyncio.to_thread(self._write, name, data)
        except OSError as exc:
            logger.warning("mail could not be written to %s: %s", self._directory, exc)
            raise Unavailable("mail could not be sent") from exc
        logger.info("mail written to %s", self._directory / name)

    def _write(self, name: str, data: bytes) -> None:
        # 0o700: the mails hold password-reset codes. An existing directory keeps its mode.
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The temp file starts with a dot and does not end in .eml, so a reader listing
        # *.eml never sees it; os.replace then publishes the whole file at once.
        fd, tmp = tempfile.mkstemp(dir=self._directory, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                # Without it a crash soon after the rename can leave an empty file
                # under the final name on some file systems.
                os.fsync(f.fileno())
            os.replace(tmp, self._directory / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
