"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.e2e.wsclient import WsClient


@pytest.fixture
async def sockets() -> AsyncIterator[list[WsClient]]:
    """Sockets a test opens (append them) are closed after it, whatever happened."""
    opened: list[WsClient] = []
    yield opened
    await asyncio.gather(*(s.close() for s in opened), return_exceptions=True)
