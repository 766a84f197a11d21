"""Schemathesis against a real `socialhub serve`: every operation of the served
/openapi.json, with a bearer token and without one, every check on.

The checks: no 5xx; every status, content type, header and body as the document
says; schema-valid requests accepted and schema-violating ones (negative data)
refused with a 4xx; OPTIONS and other unsupported methods answered 405 with an
`Allow` naming every documented method of the path. The runs are seeded and
derandomized, so CI sends the same requests each time; the number sent is
reported at the end of the module.

Sizes: FUZZ_EXAMPLES per operation (and mode) in the normal suite, SLOW_EXAMPLES in
the `slow`-marked variant (`-m slow`). The server runs with rate limits off, so
429 never hides an answer.
"""

from __future__ import annotations

import secrets
import tempfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import Case
from schemathesis.config import SchemathesisConfig

from socialhub.app import create_app
from socialhub.config import load_settings, with_overrides
from tests.conftest import TEST_SECRET
from tests.e2e.server import Server, server_env

# Per operation and generation mode (positive, negative) in the fuzzing phase; the
# coverage phase adds its boundary cases (each pattern, length and type edge) on top.
# 60 keeps the module near a minute on a 2-core CI machine.
FUZZ_EXAMPLES = 60
SLOW_EXAMPLES = 500
SEED = 20261127
PASSWORD = "pass word 1"

# Statuses a schema-valid request may still get, for rules no JSON Schema can state:
# following oneself (422) and a wrong, spent or expired reset code (400).
SEMANTIC_REFUSALS: dict[str, list[str]] = {
    "post_users_follow_ref": ["422"],
    "delete_users_follow_ref": ["422"],
    "post_users_unfollow_ref": ["422"],
    "post_auth_reset_password": ["400"],
    "post_chat_rooms": ["422"],  # a room of the caller alone
}
POSITIVE_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "5xx"]


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = server_env(database_url, SOCIALHUB_REDIS_URL="", SOCIALHUB_RATELIMIT_ENABLED="false")
    srv = Server(tmp_path_factory.mktemp("fuzz-http") / "data", env=env).start()
    yield srv
    srv.kill()


def _signup(client: httpx.Client, name: str) -> dict[str, Any]:
    username = f"{name}_{secrets.token_hex(4)}"
    body = {"name": name, "email": f"{username}@example.test", "username": username, "password": PASSWORD}
    r = client.post("/auth/signup", json=body)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


class Caller:
    """The fuzzing user: a token, and a fresh one for /auth/logout (which ends its session)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        with httpx.Client(base_url=server.url, timeout=10) as c:
            me = _signup(c, "fuzz")
            other = _signup(c, "other")
        self.username: str = me["user"]["username"]
        self.token: str = me["token"]
        self.other_id: str = other["user"]["id"]

    def fresh_token(self) -> str:
        with httpx.Client(base_url=self.server.url, timeout=10) as c:
            r = c.post("/auth/login", json={"identifier": self.username, "password": PASSWORD})
        assert r.status_code == 200, r.text
        token: str = r.json()["token"]
        return token


@pytest.fixture(scope="module")
def caller(server: Server) -> Caller:
    return Caller(server)


def fuzz_config(examples: int) -> SchemathesisConfig:
    operations = [
        {
            "include-operation-id": op,
            "checks": {"positive_data_acceptance": {"expected-statuses": [*POSITIVE_ACCEPTED, *extra]}},
        }
        for op, extra in SEMANTIC_REFUSALS.items()
    ]
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": "all",
                "max-examples": examples,
                "deterministic": True,
                "database": "none",
                "unique-inputs": True,
            },
            "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True}},
            "checks": {
                "enabled": True,
                "positive_data_acceptance": {"expected-statuses": POSITIVE_ACCEPTED},
            },
            "operations": operations,
        }
    )


def served_document() -> dict[str, Any]:
    """The document `socialhub serve` serves with rate limits off, built as app.py builds
    it (nothing connects before the lifespan). Schemathesis' pytest integration wants the
    schema when the module is collected, before the server fixture runs; its fixture-based
    loader does not work with pytest 9.2 (it sets `Node._nodeid`, which 9.2 removed), and
    test_the_served_document_is_the_one_fuzzed checks the server serves this very document."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = with_overrides(
            load_settings(env={}),
            server={"data_dir": tmp},
            auth={"jwt_secret": TEST_SECRET},
            ratelimit={"enabled": False},
        )
        document: dict[str, Any] = create_app(settings).state.openapi
    return document


DOCUMENT = served_document()
api = schemathesis.openapi.from_dict(DOCUMENT, config=fuzz_config(FUZZ_EXAMPLES))
api_long = schemathesis.openapi.from_dict(DOCUMENT, config=fuzz_config(SLOW_EXAMPLES))


def test_the_served_document_is_the_one_fuzzed(server: Server) -> None:
    r = httpx.get(server.url + "/openapi.json", timeout=10)
    assert r.status_code == 200
    assert r.json() == DOCUMENT


def call(case: Case, caller: Caller, sent: Counter[str], run: str, *, token: bool) -> None:
    """Send `case` and apply every check. With `token`, the caller's bearer token, except
    where the case leaves Authorization out on purpose (a negative case of its own);
    without, whatever the case generated (nothing, or a random credential)."""
    headers: dict[str, str] = {}
    if token and not case.operation.schema.is_security_param_negated(case):
        # Logging out ends the session: it gets a session of its own.
        fresh = case.operation.path == "/auth/logout"
        headers["Authorization"] = f"Bearer {caller.fresh_token() if fresh else caller.token}"
    sent[f"http requests, {run}"] += 1
    case.call_and_validate(base_url=caller.server.url, headers=headers, timeout=30)


@api.parametrize()
def test_every_operation_with_a_token(case: Case, caller: Caller, sent: Counter[str]) -> None:
    call(case, caller, sent, "with a token", token=True)


@api.parametrize()
def test_every_operation_without_a_token(case: Case, caller: Caller, sent: Counter[str]) -> None:
    call(case, caller, sent, "without a token", token=False)


@pytest.mark.slow
@api_long.parametrize()
def test_every_operation_at_length(case: Case, caller: Caller, sent: Counter[str]) -> None:
    call(case, caller, sent, "slow, with a token", token=True)
