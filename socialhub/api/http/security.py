"""Bearer-token authentication for HTTP endpoints."""

from __future__ import annotations

from starlette.requests import Request

from socialhub.domain.users import Principal
from socialhub.errors import Unauthenticated
from socialhub.services.sessions import SessionGuard


def bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def client_ip(request: Request) -> str:
    # uvicorn has already replaced this with X-Forwarded-For when the peer is a trusted proxy.
    return request.client.host if request.client else ""


class Authenticator:
    """`await auth(request)` is the caller's Principal, or Unauthenticated (401)."""

    def __init__(self, guard: SessionGuard) -> None:
        self.guard = guard

    async def __call__(self, request: Request) -> Principal:
        # Read from the raw headers: a request's Headers object is not made for this alone.
        authorization = ""
        for name, value in request.scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        token = bearer_token(authorization)
        if token is None:
            raise Unauthenticated("missing bearer token")
        principal = await self.guard.authenticate(token)
        request.scope.setdefault("state", {})["user_id"] = principal.user_id  # for the access log
        return principal
