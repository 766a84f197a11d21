"""Access tokens: short-lived HS256 JWTs (pyjwt) that name a user and a session."""

from __future__ import annotations

import secrets
import time

import jwt

from socialhub.domain.users import Principal
from socialhub.errors import Unauthenticated
from socialhub.ids import parse_id

ALGORITHM = "HS256"
# A real token is ~250 bytes; refuse megabyte "tokens" before any parsing.
MAX_TOKEN_LENGTH = 2048
REQUIRED_CLAIMS = ["sub", "sid", "exp", "iat", "jti"]
# Clock skew tolerated between instances when checking exp/iat.
LEEWAY_SECONDS = 5
# Tokens already verified, so a client's requests check its token's signature once:
# PyJWT's decode was ~8% of the CPU of a GET /feed. ~400 bytes an entry: ~4 MB.
VERIFIED_CACHE_ENTRIES = 10_000


class TokenCodec:
    """Issues and checks access tokens. Checking here is signature and expiry only;
    SessionGuard adds the revocation check."""

    def __init__(self, secret: str, access_ttl: float) -> None:
        self._secret = secret
        self.access_ttl = access_ttl
        # token -> (principal, exp); keyed by the whole token, so only these exact bytes
        # skip the signature check, and only until the expiry PyJWT would enforce.
        self._verified: dict[str, tuple[Principal, float]] = {}

    def issue(self, user_id: int, session_id: int) -> str:
        now = int(time.time())
        claims = {
            "sub": str(user_id),
            "sid": str(session_id),
            "iat": now,
            "exp": now + int(self.access_ttl),
            "jti": secrets.token_urlsafe(12),
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def decode(self, token: str) -> Principal:
        """The principal a token names; Unauthenticated for anything but a valid, unexpired token."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("invalid token")
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires = cached
            if time.time() < expires + LEEWAY_SECONDS:  # PyJWT's test, the other way round
                return principal
            del self._verified[token]  # expired: PyJWT says so below
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],  # never trust the header's alg: no "none", no key confusion
                options={"require": REQUIRED_CLAIMS},
                leeway=LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.PyJWTError:
            raise Unauthenticated("invalid token") from None
        user_id = parse_id(str(claims["sub"]))
        session_id = parse_id(str(claims["sid"]))
        if user_id is None or session_id is None:
            raise Unauthenticated("invalid token")
        principal = Principal(user_id=user_id, session_id=session_id)
        if len(self._verified) >= VERIFIED_CACHE_ENTRIES:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[token] = (principal, float(claims["exp"]))
        return principal
