"""/auth/*: sign-up, login, refresh, logout, password reset, /auth/me, verify-user."""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from socialhub.api.http.codec import json_response, read_json
from socialhub.api.http.routing import Endpoint, Operation, RouteGroup
from socialhub.api.http.security import Authenticator, client_ip
from socialhub.domain.text import EMAIL_MAX_LENGTH, EMAIL_PATTERN
from socialhub.domain.users import (
    PASSWORD_MAX_LENGTH,
    PASSWORD_MIN_LENGTH,
    USERNAME_PATTERN,
    DisplayName,
    User,
)
from socialhub.services.accounts import (
    LOGIN_IDENTIFIER_MAX_LENGTH,
    LOGIN_PASSWORD_MAX_LENGTH,
    OTP_DIGITS,
    OTP_PATTERN,
    REFRESH_TOKEN_MAX_LENGTH,
    AccountService,
    AuthResult,
    TokenPair,
    Verified,
)
from socialhub.services.throttle import DEVICE_TTL

# One plain mailbox (domain/text.py), the same rule for sign-up and both reset steps.
Email = Annotated[str, msgspec.Meta(max_length=EMAIL_MAX_LENGTH, pattern=EMAIL_PATTERN)]
Username = Annotated[str, msgspec.Meta(pattern=USERNAME_PATTERN)]
Password = Annotated[str, msgspec.Meta(min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH)]
# The device token of services/throttle.py travels as a cookie that only the login route
# sees (browsers keep it without any code; other clients keep it in their cookie jar).
DEVICE_COOKIE = "socialhub_device"


class SignupBody(msgspec.Struct, frozen=True):
    name: DisplayName
    email: Email
    username: Username
    password: Password


class LoginBody(msgspec.Struct, frozen=True):
    identifier: Annotated[str, msgspec.Meta(min_length=1, max_length=LOGIN_IDENTIFIER_MAX_LENGTH)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=LOGIN_PASSWORD_MAX_LENGTH)]


class RefreshBody(msgspec.Struct, frozen=True):
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=REFRESH_TOKEN_MAX_LENGTH)]


class ForgotBody(msgspec.Struct, frozen=True):
    email: Email


class ResetBody(msgspec.Struct, frozen=True):
    email: Email
    otp: Annotated[str, msgspec.Meta(pattern=OTP_PATTERN)]
    new_password: Password


class Accepted(msgspec.Struct, frozen=True):
    status: str


class AuthRoutes(RouteGroup):
    def __init__(self, accounts: AccountService, auth: Authenticator, max_body: int) -> None:
        self.accounts = accounts
        self.auth = auth
        self.max_body = max_body

    def endpoints(self) -> list[Endpoint]:
        forgot = (
            f"Mails a {OTP_DIGITS}-digit code (valid 10 min, 5 tries); the same answer whether or not the "
            "address is known."
        )
        return [
            Endpoint(self.signup, Operation(
                method="POST", path="/auth/signup", summary="Create an account and sign in", tag="auth",
                body=SignupBody, response=AuthResult, status=201, auth=False, errors=(409,),
                description="409 when the email or username is taken.", limit_by_ip="signup",
            )),
            Endpoint(self.login, Operation(
                method="POST", path="/auth/login", summary="Sign in with email or username", tag="auth",
                body=LoginBody, response=AuthResult, auth=False, errors=(401,), limit_by_ip="login",
                description=(
                    f"Sets the `{DEVICE_COOKIE}` cookie: sent back on later logins, it keeps this device out of "
                    "the per-account limit on attempts (429 once strangers used it up)."
                ),
            )),
            Endpoint(self.refresh, Operation(
                method="POST", path="/auth/refresh", summary="Trade a refresh token for a new pair", tag="auth",
                body=RefreshBody, response=TokenPair, auth=False, errors=(401,), limit_by_ip="refresh",
                description="A refresh token works once: presenting a spent one again ends its whole session.",
            )),
            Endpoint(self.logout, Operation(
                method="POST", path="/auth/logout", summary="End this session", tag="auth", status=204,
            )),
            Endpoint(self.forgot_password, Operation(
                method="POST", path="/auth/forgot-password", summary="Ask for a password reset code", tag="auth",
                body=ForgotBody, response=Accepted, status=202, auth=False, description=forgot,
                limit_by_ip="forgot_password",
            )),
            Endpoint(self.forgot_password, Operation(
                method="POST", path="/auth/request-password-reset", summary="Alias of /auth/forgot-password",
                tag="auth", body=ForgotBody, response=Accepted, status=202, auth=False,
                description="Kept for the original clients. " + forgot, limit_by_ip="forgot_password",
            )),
            Endpoint(self.reset_password, Operation(
                method="POST", path="/auth/reset-password", summary="Set a new password with the mailed code",
                tag="auth", body=ResetBody, response=Accepted, auth=False, limit_by_ip="reset_password",
                description="400 when the code is wrong, spent or expired. Every session of the user is signed out.",
            )),
            Endpoint(self.me, Operation(
                method="GET", path="/auth/me", summary="The caller, with email", tag="auth", response=User,
            )),
            Endpoint(self.verify_user, Operation(
                method="GET", path="/api/v1/auth/verify-user", summary="Check a token (for an external gateway)",
                tag="auth", response=Verified,
            )),
        ]  # fmt: skip

    async def signup(self, request: Request) -> Response:
        body = await read_json(request, SignupBody, self.max_body)
        result = await self.accounts.signup(
            name=body.name,
            email=body.email,
            username=body.username,
            password=body.password,
            user_agent=request.headers.get("user-agent", ""),
            ip=client_ip(request),
        )
        return json_response(result, 201)

    async def login(self, request: Request) -> Response:
        body = await read_json(request, LoginBody, self.max_body)
        result, device_token = await self.accounts.login(
            identifier=body.identifier,
            password=body.password,
            user_agent=request.headers.get("user-agent", ""),
            ip=client_ip(request),
            device_token=request.cookies.get(DEVICE_COOKIE),
        )
        response = json_response(result)
        response.set_cookie(
            DEVICE_COOKIE,
            device_token,
            max_age=int(DEVICE_TTL),
            path="/auth/login",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def refresh(self, request: Request) -> Response:
        body = await read_json(request, RefreshBody, self.max_body)
        return json_response(await self.accounts.refresh(body.refresh_token))

    async def logout(self, request: Request) -> Response:
        await self.accounts.logout(await self.auth(request))
        return Response(status_code=204)

    async def forgot_password(self, request: Request) -> Response:
        body = await read_json(request, ForgotBody, self.max_body)
        self.accounts.forgot_password(body.email)
        return json_response(Accepted(status="if that address has an account, a code is on its way"), 202)

    async def reset_password(self, request: Request) -> Response:
        body = await read_json(request, ResetBody, self.max_body)
        await self.accounts.reset_password(email=body.email, otp=body.otp, new_password=body.new_password)
        return json_response(Accepted(status="password changed; every session was signed out"))

    async def me(self, request: Request) -> Response:
        return json_response(await self.accounts.me(await self.auth(request)))

    async def verify_user(self, request: Request) -> Response:
        return json_response(await self.accounts.verify(await self.auth(request)))
