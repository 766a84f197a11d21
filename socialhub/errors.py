"""One error hierarchy with stable codes.

Services raise these; the HTTP layer (api/http/errors.py) and the WebSocket layer
map each code to a status or close code in one table. No HTTP numbers here.
"""

from __future__ import annotations


class SocialhubError(Exception):
    """Base of every error a client may see. `code` is stable and snake_case."""

    code = "internal"
    default_message = "internal error"

    def __init__(self, message: str | None = None, *, fields: dict[str, str] | None = None) -> None:
        self.message = message or self.default_message
        self.fields = fields
        super().__init__(self.message)


class BadRequest(SocialhubError):
    code = "bad_request"
    default_message = "bad request"


class Unauthenticated(SocialhubError):
    code = "unauthenticated"
    default_message = "authentication required"


class Forbidden(SocialhubError):
    code = "forbidden"
    default_message = "not allowed"


class NotFound(SocialhubError):
    code = "not_found"
    default_message = "not found"


class Conflict(SocialhubError):
    code = "conflict"
    default_message = "conflict"


class TooLarge(SocialhubError):
    code = "too_large"
    default_message = "request too large"


class UnsupportedMediaType(SocialhubError):
    code = "unsupported_media_type"
    default_message = "unsupported media type"


class ValidationFailed(SocialhubError):
    code = "validation_error"
    default_message = "the request is not valid"


class RateLimited(SocialhubError):
    code = "rate_limited"
    default_message = "too many requests"

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(SocialhubError):
    code = "unavailable"
    default_message = "service unavailable"


def invalid(field: str, problem: str) -> ValidationFailed:
    """A validation error about one field."""
    return ValidationFailed(f"{field}: {problem}", fields={field: problem})
