"""A plain-text progress line: a bar on a terminal, a line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from bench.server import ServerWatch

BAR_WIDTH = 24
# Without a terminal (a log file, CI) one line every this many seconds.
PLAIN_EVERY_S = 5.0


def bar(done: float, total: float, width: int = BAR_WIDTH) -> str:
    """`[#####.....]` for the share `done / total`, clamped to [0, 1]."""
    share = 0.0 if total <= 0 else min(1.0, max(0.0, done / total))
    filled = round(share * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


class Progress:
    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.tty = self.out.isatty()

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def wait_until(self, deadline: float, label: str) -> None:
        if deadline > time.monotonic():
            self.say(f"{label} {deadline - time.monotonic():.1f} s ...")
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.5))

    def window(
        self,
        label: str,
        start: float,
        end: float,
        count: Callable[[], int],
        watch: ServerWatch | None,
    ) -> None:
        """Wait for the measured window to end, showing elapsed time and requests/s so far."""
        last_plain = start
        while (now := time.monotonic()) < end:
            time.sleep(min(0.5, end - now))
            if watch is not None:
                watch.sample_memory()
            now = time.monotonic()
            elapsed = now - start
            n = count()
            rate = n / max(elapsed, 1e-9)
            line = f"{label} {bar(elapsed, end - start)} {elapsed:5.1f}/{end - start:g} s  {n} ok  {rate:8.1f}/s"
            if self.tty:
                print("\r" + line, end="", file=self.out, flush=True)
            elif now - last_plain >= PLAIN_EVERY_S or now >= end:
                last_plain = now
                self.say(line)
        if self.tty:
            print(file=self.out, flush=True)
