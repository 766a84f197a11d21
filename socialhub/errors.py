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


# When a client may try again after `unavailable`: a restart or failover of PostgreSQL or
# Redis takes a few seconds, and the Redis pub/sub reconnects with backoff capped at 5 s.
UNAVAILABLE_RETRY_AFTER = 5.0


class Unavailable(SocialhubError):
    """A dependency (the database, a broker, the mail relay) cannot be reached: the
    request did nothing that the client can rely on, and may be tried again later."""

    code = "unavailable"
    default_message = "service unavailable"

    def __init__(self, message: str | None = None, *, retry_after: float = UNAVAILABLE_RETRY_AFTER) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def invalid(field: str, problem: str) -> ValidationFailed:
    """A validation error about one field."""
    return ValidationFailed(f"{field}: {problem}", fields={field: problem})
