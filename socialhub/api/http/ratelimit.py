"""Rate limiting as ASGI middleware, over the rate-limiter port (in-process or Redis).

Public routes are limited per client IP, writes per user (the `sub` of a validly
signed token; the session check happens later, in the endpoint). Every response of a
limited route carries RateLimit-Limit/-Remaining/-Reset; a refused one is 429 with
Retry-After. If the store fails, requests pass (an outage of Redis must not lock
everyone out) and the failure is logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from socialhub.api.http.errors import error_response
from socialhub.api.http.security import bearer_token
from socialhub.config import RateLimitSettings
from socialhub.errors import Unauthenticated, Unavailable
from socialhub.infra.kv.base import RateDecision, RateLimiter
from socialhub.services.tokens import TokenCodec
from socialhub.supervisor import OutageLog

logger = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def limits_writes(method: str, path: str) -> bool:
    """Whether the per-user `write` rule counts a request with a signed token: any write
    outside /auth/ (whose public routes have their rules by IP), to a known path or not."""
    return method in WRITE_METHODS and not path.startswith("/auth/")


def rate_headers(d: RateDecision) -> list[tuple[bytes, bytes]]:
    return [
        (b"ratelimit-limit", str(d.limit).encode()),
        (b"ratelimit-remaining", str(d.remaining).encode()),
        (b"ratelimit-reset", str(math.ceil(d.reset_after)).encode()),
    ]


class RateLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: RateLimiter,
        settings: RateLimitSettings,
        tokens: TokenCodec,
        by_ip: Mapping[tuple[str, str], str],
    ) -> None:
        """`by_ip`: (method, path without a trailing slash) of a public route -> the rule
        it is counted against per client IP (routing.ip_limits of the routes' operations)."""
        self.app = app
        self.limiter = limiter
        self._outage = OutageLog(logger, "rate limits (letting requests through)")
        self.settings = settings
        self.tokens = tokens
        self.by_ip = by_ip
        # Methods that some rule counts: any other request passes at once (reads, mostly).
        self._methods = WRITE_METHODS | {method for method, _ in by_ip}

    def _rule(self, scope: Scope) -> tuple[str, str] | None:
        """(rule name, subject key) for this request, or None when it is not limited."""
        method = scope["method"]
        path = scope["path"].rstrip("/") or "/"
        name = self.by_ip.get((method, path))
        if name is not None:
            client = scope.get("client")
            return name, f"ip:{client[0] if client else 'unknown'}"
        if limits_writes(method, path):
            token = None
            for key, value in scope.get("headers", []):
                if key == b"authorization":
                    token = bearer_token(value.decode("latin-1"))
                    break
            if token is None:
                return None
            try:
                principal = self.tokens.decode(token)
            except Unauthenticated:
                return None  # the endpoint answers 401
            return "write", f"user:{principal.user_id}"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.settings.enabled or scope["method"] not in self._methods:
            await self.app(scope, receive, send)
            return
        found = self._rule(scope)
        rate = self.settings.rule(found[0]) if found else None
        if found is None or rate is None:
            await self.app(scope, receive, send)
            return
        name, subject = found
        try:
            decision = await self.limiter.rate_limit(f"rl:{name}:{subject}", rate)
        except Unavailable as exc:
            # Redis is down: every request would fail here; say so once per outage.
            self._outage.failed(exc)
            await self.app(scope, receive, send)
            return
        except Exception:
            logger.warning("rate limit store failed; letting the request through", exc_info=True)
            await self.app(scope, receive, send)
            return
        self._outage.ok()
        headers = rate_headers(decision)
        if not decision.allowed:
            retry = max(1, math.ceil(decision.retry_after))
            response = error_response(
                "rate_limited",
                f"too many requests; try again in {retry} s",
                headers={"Retry-After": str(retry), **{k.decode(): v.decode() for k, v in headers}},
            )
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)
