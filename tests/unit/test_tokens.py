"""TokenCodec: the cache of verified tokens never outlives what PyJWT would accept."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import jwt
import pytest

from socialhub.errors import Unauthenticated
from socialhub.services.tokens import LEEWAY_SECONDS, TokenCodec

SECRET = "unit-test-secret-0123456789abcdef0123456789"


def test_a_verified_token_decodes_again_to_the_same_principal() -> None:
    codec = TokenCodec(SECRET, access_ttl=900)
    token = codec.issue(42, 7)
    first = codec.decode(token)
    assert codec.decode(token) == first and (first.user_id, first.session_id) == (42, 7)


def test_a_tampered_copy_of_a_verified_token_is_refused() -> None:
    codec = TokenCodec(SECRET, access_ttl=900)
    token = codec.issue(42, 7)
    codec.decode(token)
    header, _payload, signature = token.split(".")
    forged = jwt.encode(
        {"sub": "43", "sid": "7", "iat": 0, "exp": 2**40, "jti": "x"}, "another secret, at least thirty-two bytes long"
    )
    with pytest.raises(Unauthenticated):
        codec.decode(f"{header}.{forged.split('.')[1]}.{signature}")


def test_a_verified_token_is_refused_once_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = TokenCodec(SECRET, access_ttl=60)
    token = codec.issue(42, 7)
    codec.decode(token)  # now cached
    later = time.time() + 60 + LEEWAY_SECONDS + 1
    monkeypatch.setattr(time, "time", lambda: later)

    class Later(datetime):
        @classmethod
        def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
            return datetime.fromtimestamp(later, UTC)

    monkeypatch.setattr(jwt.api_jwt, "datetime", Later)
    with pytest.raises(Unauthenticated, match="expired"):
        codec.decode(token)
