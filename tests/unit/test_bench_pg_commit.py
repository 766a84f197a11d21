"""`python -m bench pg-commit`'s pure parts: the pacing and what it refuses (the scenario
itself needs PostgreSQL and is never run by the suite)."""

from __future__ import annotations

import argparse

import pytest

from bench.pg_commit import _paced, run
from bench.progress import Progress
from bench.target import TargetError


async def test_statements_are_paced_numbered_and_the_first_tenth_left_out() -> None:
    seen: list[int] = []

    async def statement(i: int) -> None:
        seen.append(i)

    samples = await _paced(statement, 20, 2000.0, 100)
    assert seen == list(range(100, 120))
    assert len(samples) == 18 and all(s >= 0 for s in samples)


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ({"url": "http://x", "database_url": "postgresql://h/db", "rate": 20.0, "count": 200, "rounds": 1}, "no --url"),
        ({"url": None, "database_url": None, "rate": 20.0, "count": 200, "rounds": 1}, "needs --database-url"),
        ({"url": None, "database_url": "postgresql://h/db", "rate": 0.0, "count": 200, "rounds": 1}, "--rate"),
        ({"url": None, "database_url": "postgresql://h/db", "rate": 20.0, "count": 5, "rounds": 1}, "--count"),
    ],
)
def test_what_the_scenario_refuses_before_it_starts(options: dict[str, object], refusal: str) -> None:
    with pytest.raises(TargetError, match=refusal):
        run("pg-commit", argparse.Namespace(**options), Progress())
