"""Accounts: sign-up, login, refresh rotation, logout, password reset by emailed code."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import timedelta

import msgspec

from socialhub.domain.text import EMAIL_MAX_LENGTH, is_mailbox
from socialhub.domain.time import utcnow
from socialhub.domain.users import Principal, User, UserRecord
from socialhub.errors import BadRequest, Unauthenticated
from socialhub.infra.mail.base import Mail, Mailer
from socialhub.services.passwords import Passwords
from socialhub.services.sessions import SessionGuard
from socialhub.services.throttle import LoginThrottle
from socialhub.services.tokens import TokenCodec
from socialhub.storage.auth import AuthStore, RefreshOutcome
from socialhub.storage.units import Units
from socialhub.storage.users import UserStore
from socialhub.supervisor import Spawn

logger = logging.getLogger(__name__)

# SPEC: the reset code has 6 digits (what a person copies from a mail without error).
OTP_DIGITS = 6
OTP_PATTERN = f"^[0-9]{{{OTP_DIGITS}}}$"
# A login names an email or a username; the longer is an email (RFC 5321's 254).
LOGIN_IDENTIFIER_MAX_LENGTH = EMAIL_MAX_LENGTH
# A bound on what one login makes argon2 hash. Above the sign-up maximum, so a longer
# password is only wrong (401), like any other wrong one, not a different answer.
LOGIN_PASSWORD_MAX_LENGTH = 1024
# Refresh tokens are secrets.token_urlsafe(32), 43 characters; a longer one is no token
# of ours, and the bound keeps what is hashed to look one up small.
REFRESH_TOKEN_MAX_LENGTH = 512
BAD_CODE = "the code is wrong, spent or expired; ask for a new one"


class AuthResult(msgspec.Struct, frozen=True):
    user: User
    token: str
    refresh_token: str
    # Seconds the access token lives (OAuth 2.0's `expires_in`): a client refreshes before
    # then without reading the token's own claims.
    expires_in: int


class TokenPair(msgspec.Struct, frozen=True):
    token: str
    refresh_token: str
    expires_in: int


class Verified(msgspec.Struct, frozen=True):
    user_id: str
    username: str


def _hash_refresh(token: str) -> bytes:
    # 256 random bits: a plain SHA-256 is enough (no dictionary to attack).
    return hashlib.sha256(token.encode()).digest()


class AccountService:
    """The rules of accounts and sessions."""

    def __init__(
        self,
        *,
        units: Units,
        users: UserStore,
        auth: AuthStore,
        passwords: Passwords,
        tokens: TokenCodec,
        guard: SessionGuard,
        mailer: Mailer,
        throttle: LoginThrottle,
        spawn: Spawn,
        secret: str,
        refresh_ttl: float,
        otp_ttl: float,
        otp_max_attempts: int,
    ) -> None:
        self.units = units
        self.users = users
        self.auth = auth
        self.passwords = passwords
        self.tokens = tokens
        self.guard = guard
        self.mailer = mailer
        self.throttle = throttle
        self.spawn = spawn
        # 6 digits are a small space: the stored codes are HMACs under a server key, so a
        # leaked table alone does not give them away.
        self._otp_key = hmac.new(secret.encode(), b"socialhub password reset", hashlib.sha256).digest()
        self.refresh_ttl = refresh_ttl
        self.otp_ttl = otp_ttl
        self.otp_max_attempts = otp_max_attempts

    async def signup(
        self, *, name: str, email: str, username: str, password: str, user_agent: str, ip: str
    ) -> AuthResult:
        password_hash = await self.passwords.hash(password)
        user = await self.users.insert_user(
            username=username, email=email.strip(), name=name.strip(), password_hash=password_hash
        )
        return await self._new_session(user, user_agent, ip)

    async def login(
        self, *, identifier: str, password: str, user_agent: str, ip: str, device_token: str | None = None
    ) -> tuple[AuthResult, str]:
        """The same answer, in about the same time, for an unknown user and a wrong password.

        Also answers a device token for the client to bring next time (see LoginThrottle);
        RateLimited when the account's attempts, or this device's, are used up.
        """
        user = await self.users.get_user_by_login(identifier.strip())
        device = self.throttle.read(device_token)
        await self.throttle.charge(identifier, user.id if user else None, device)
        if user is None:
            await self.passwords.verify_none(password)
            raise Unauthenticated("wrong identifier or password")
        if not await self.passwords.verify(user.password_hash, password):
            raise Unauthenticated("wrong identifier or password")
        if self.passwords.needs_rehash(user.password_hash):
            async with self.units.begin() as uow:
                await self.users.update_password(uow, user.id, await self.passwords.hash(password))
        return await self._new_session(user, user_agent, ip), self.throttle.issue(user.id, device)

    async def _new_session(self, user: UserRecord, user_agent: str, ip: str) -> AuthResult:
        refresh = secrets.token_urlsafe(32)
        session_id = await self.auth.insert_session(
            user_id=user.id,
            refresh_hash=_hash_refresh(refresh),
            expires_at=utcnow() + timedelta(seconds=self.refresh_ttl),
            user_agent=user_agent,
            ip=ip,
        )
        return AuthResult(
            user=User.of(user, with_email=True),
            token=self.tokens.issue(user.id, session_id),
            refresh_token=refresh,
            expires_in=int(self.tokens.access_ttl),
        )

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate: the old refresh token is spent; presenting it again ends the session."""
        if not refresh_token or len(refresh_token) > 256:
            raise Unauthenticated("invalid refresh token")
        new = secrets.token_urlsafe(32)
        rotation = await self.auth.update_refresh_token(
            _hash_refresh(refresh_token), _hash_refresh(new), utcnow() + timedelta(seconds=self.refresh_ttl)
        )
        outcome, session = rotation.outcome, rotation.session
        if outcome is RefreshOutcome.REPLAYED and session is not None:
            logger.warning("refresh token replayed; session %s revoked", session.id)
            await self.guard.revoked(session.user_id, [session.id])
        if outcome is not RefreshOutcome.ROTATED or session is None:
            raise Unauthenticated("invalid refresh token")
        return TokenPair(
            token=self.tokens.issue(session.user_id, session.id),
            refresh_token=new,
            expires_in=int(self.tokens.access_ttl),
        )

    async def logout(self, principal: Principal) -> None:
        await self.auth.update_session_revoked(principal.session_id, "logout")
        await self.guard.revoked(principal.user_id, [principal.session_id])

    async def me(self, principal: Principal) -> User:
        user = await self.users.get_user(principal.user_id)
        if user is None:
            raise Unauthenticated("account no longer exists")
        return User.of(user, with_email=True)

    async def verify(self, principal: Principal) -> Verified:
        user = await self.users.get_user(principal.user_id)
        if user is None:
            raise Unauthenticated("account no longer exists")
        return Verified(user_id=str(user.id), username=user.username)

    def forgot_password(self, email: str) -> None:
        """Accepted at once for any address; the lookup and the mail happen in the
        background, so neither the answer nor its timing says whether the account exists."""
        self.spawn("reset mail", self._send_reset_code(email.strip()))

    async def _send_reset_code(self, email: str) -> None:
        try:
            user = await self.users.get_user_by_login(email)
            if user is None or user.email.lower() != email.lower():
                return
            if not is_mailbox(user.email):
                # An address stored before the one-mailbox rule: never mail a list or a group.
                logger.warning("no reset code for user %s: the stored address is not one mailbox", user.id)
                return
            otp = f"{secrets.randbelow(10**OTP_DIGITS):0{OTP_DIGITS}d}"
            minutes = round(self.otp_ttl / 60)
            mail = Mail(
                to=user.email,
                subject="Your socialhub password reset code",
                text=(
                    f"Hello {user.name},\n\nYour code is {otp}. It is valid for {minutes} minutes "
                    f"and {self.otp_max_attempts} tries.\n\nIf you did not ask for it, ignore this mail; "
                    "your password has not changed.\n"
                ),
            )
            # The mail goes out while the user's reset row is locked: two requests at once
            # store and send in the same order, so the newest mail holds the valid code; a
            # mail that cannot be sent leaves no code behind.
            async with self.units.begin() as uow:
                await self.auth.upsert_password_reset(
                    uow, user.id, self._otp_hash(user.id, otp), utcnow() + timedelta(seconds=self.otp_ttl)
                )
                await self.mailer.send(mail)
        except Exception:
            logger.exception("sending a password reset code failed")

    def _otp_hash(self, user_id: int, otp: str) -> bytes:
        return hmac.new(self._otp_key, f"{user_id}:{otp}".encode(), hashlib.sha256).digest()

    async def reset_password(self, *, email: str, otp: str, new_password: str) -> None:
        """Check the code (counting the try even when it is wrong), set the password and
        end every session of the user. The new password is hashed before the lookup, so an
        unknown address costs the same argon2 work as a known one: the answer's timing does
        not tell who has an account (as login's dummy verify)."""
        new_hash = await self.passwords.hash(new_password)
        user = await self.users.get_user_by_login(email.strip())
        if user is None or user.email.lower() != email.strip().lower():
            raise BadRequest(BAD_CODE)
        revoked: list[int] = []
        ok = False
        async with self.units.begin() as uow:
            reset = await self.auth.get_password_reset_for_update(uow, user.id)
            if reset is not None and reset.spent_at is None and reset.expires_at > utcnow():
                attempts = reset.attempts + 1
                ok = hmac.compare_digest(reset.otp_hash, self._otp_hash(user.id, otp))
                spent = ok or attempts >= self.otp_max_attempts
                await self.auth.update_password_reset(uow, user.id, attempts=attempts, spent=spent)
                if ok:
                    await self.users.update_password(uow, user.id, new_hash)
                    revoked = await self.auth.update_user_sessions_revoked(uow, user.id, "password_reset")
        if not ok:
            raise BadRequest(BAD_CODE)
        await self.guard.revoked(user.id, revoked)
