"""Pages of lists: `{"items": [...], "next": "<id>" | null}` (SPEC, Conventions)."""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

T = TypeVar("T")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


class Page(msgspec.Struct, Generic[T], frozen=True):
    items: list[T]
    next: str | None


class PageRequest(msgspec.Struct, frozen=True):
    """`before` an id (exclusive), newest first; `limit` already clamped."""

    limit: int = DEFAULT_LIMIT
    before: int | None = None


def page_of(items: list[T], cursors: list[int], limit: int) -> Page[T]:
    """A page whose `next` is the last cursor when the page is full (there may be more)."""
    nxt = str(cursors[-1]) if len(items) >= limit and cursors else None
    return Page(items=items, next=nxt)
