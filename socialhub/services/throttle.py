"""Login throttling per account, with device tokens so the owner is slowed down, never locked out.

The per-IP limit (`ratelimit.login`) does nothing against credential stuffing from many
addresses at one account. This adds a limit per *identifier* (`ratelimit.login_account`,
GCRA over the rate-limiter port, so it holds across instances with Redis): a burst of
attempts, then one every `period / limit` seconds; over it, 429 `rate_limited` with
Retry-After.

Locking an account after N failures would hand the attacker a way to lock its owner
out. Following OWASP's "Slow Down Online Guessing Attacks with Device Cookies", a
successful login hands the client a *device token* (a cookie, signed by the server,
naming the account and a random device id). An attempt that brings a valid device
token of the account it names is counted in a bucket of that device alone, not in the
account's; so the owner's phone and laptop log in however many guesses strangers make,
and a stolen device token buys its thief one bucket, no more.

What the limit looks like from outside is the same whether an account exists or not:
the bucket is keyed by the normalized identifier (not the account, which would link an
email to its username: both names of one account would share a bucket), it is charged
before any answer is decided, and a refusal comes at the same step for both.

Attempts are charged when they arrive, not when they fail: the check and the count are
one atomic step, so a thousand parallel guesses cannot all pass the check before any
of them is counted. A success spends one too; it is the step that hands out a device
token, after which the owner's logins go to their own bucket.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time

from socialhub.config import Rate
from socialhub.errors import RateLimited
from socialhub.infra.kv.base import RateLimiter

logger = logging.getLogger(__name__)

# A device stays known this long after its last successful login (each one renews the
# token). 90 days: longer than a refresh token lives (30 days), so a device that has
# signed out or let its session expire is still recognised when its owner comes back.
DEVICE_TTL = 90 * 86400.0
DEVICE_ID_BYTES = 16
# HMAC-SHA256 cut to 128 bits: forging one is 2^128 work.
MAC_BYTES = 16


def normalized(identifier: str) -> str:
    """The identifier as accounts are looked up (email or username, case-insensitive)."""
    return identifier.strip().lower()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class DeviceToken:
    """`<user id>.<device id>.<issued at>.<mac>`: which account a device signed in to, and when."""

    def __init__(self, user_id: int, device_id: str, issued_at: int) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.issued_at = issued_at


class LoginThrottle:
    """The per-account login limit and the device tokens that step around it."""

    def __init__(self, *, limiter: RateLimiter, rate: Rate | None, secret: str) -> None:
        self.limiter = limiter
        self.rate = rate  # None: the limit is off (ratelimit.enabled = false, or "off")
        self._key = hmac.new(secret.encode(), b"socialhub device token", hashlib.sha256).digest()

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:MAC_BYTES])

    def issue(self, user_id: int, previous: DeviceToken | None = None) -> str:
        """A device token for `user_id`, keeping the device id of `previous` (renewed) when it is theirs."""
        device_id = previous.device_id if previous and previous.user_id == user_id else None
        body = f"{user_id}.{device_id or _b64(secrets.token_bytes(DEVICE_ID_BYTES))}.{int(time.time())}"
        return f"{body}.{self._mac(body)}"

    def read(self, token: str | None) -> DeviceToken | None:
        """The device token's content when it is well formed, signed by us and not expired."""
        if not token or len(token) > 200:
            return None
        body, _, mac = token.rpartition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            return None
        user_id, device_id, issued_at = body.split(".")  # signed by us, so in our shape
        if time.time() - int(issued_at) > DEVICE_TTL:
            return None
        return DeviceToken(int(user_id), device_id, int(issued_at))

    async def charge(self, identifier: str, user_id: int | None, device: DeviceToken | None) -> None:
        """Count one attempt at `identifier` (whose account is `user_id`, None when there is
        none); RateLimited when its bucket is empty. `device` is the client's device token."""
        if self.rate is None:
            return
        if device is not None and user_id is not None and device.user_id == user_id:
            key = f"login_device:{device.device_id}"
        else:
            digest = hashlib.sha256(normalized(identifier).encode()).hexdigest()[:32]
            key = f"login_account:{digest}"  # hashed: the store need not hold addresses
        try:
            decision = await self.limiter.rate_limit(f"rl:{key}", self.rate)
        except Exception:
            # As the rate-limit middleware: an outage of the store must not stop every login.
            logger.warning("login throttle store failed; letting the attempt through", exc_info=True)
            return
        if not decision.allowed:
            raise RateLimited(
                decision.retry_after,
                f"too many sign-in attempts for this account; try again in {max(1, round(decision.retry_after))} s",
            )
