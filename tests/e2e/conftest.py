"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from tests.e2e.wsclient import WsClient


@pytest.fixture
async def sockets() -> AsyncIterator[list[WsClient]]:
    """Sockets a test opens (append them) are closed after it, whatever happened."""
    opened: list[WsClient] = []
    yield opened
    await asyncio.gather(*(s.close() for s in opened), return_exceptions=True)


# What the fuzz tests sent, by run; printed in the summary (test_fuzz_http, test_fuzz_ws).
_SENT = pytest.StashKey[Counter[str]]()


@pytest.fixture(scope="session")
def sent(request: pytest.FixtureRequest) -> Counter[str]:
    """Requests or frames a fuzz test sent, by run: `sent["http: with a token"] += 1`."""
    return request.config.stash.setdefault(_SENT, Counter())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    counts = config.stash.get(_SENT, None)
    if counts:
        terminalreporter.section("fuzz: sent")
        for run, n in sorted(counts.items()):
            terminalreporter.write_line(f"{run}: {n}")
