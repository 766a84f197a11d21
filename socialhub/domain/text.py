"""Rules for client text: what PostgreSQL can store, and what an email address is.

Both are checked once where client input is decoded (the HTTP codec, the path and
query guard, the WebSocket frame decoder), so no route or service meets them later.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

# PostgreSQL's text types cannot hold U+0000 (its C strings end there): asyncpg passes
# such a value and the server refuses it mid-query, which surfaced as a 500. SPEC
# (Conventions): such a string is 422 for its field.
NUL = "\x00"
NUL_PROBLEM = "must not contain the character U+0000 (NUL)"
# JSON can carry U+0000 only as this escape (a raw control character in a string is
# malformed JSON), so a body without these six bytes holds no NUL and is not walked.
# Finding them may be a false alarm (`\\u0000` is an escaped backslash), which the walk
# over the decoded value settles.
_NUL_ESCAPE = b"\\u0000"


def may_hold_nul(raw: bytes) -> bool:
    """False when JSON `raw` certainly decodes to no string holding U+0000."""
    return _NUL_ESCAPE in raw


def holds_nul(value: Any) -> bool:
    """Whether a decoded JSON value (or form field) holds U+0000 in any string or key.

    A loop, not recursion: a value may be nested nearly as deep as the decoder allows,
    which would leave no room for a recursive walk below the caller's frames."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if NUL in item:
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def nul_fields(data: Mapping[str, Any], names: Iterable[str]) -> dict[str, str]:
    """The fields among `names` whose value in `data` holds U+0000, each with its problem.

    Only named fields are checked: an unknown field is ignored by validation and never
    stored, so it is no reason to refuse a request."""
    return {name: NUL_PROBLEM for name in names if name in data and holds_nul(data[name])}


# An email address is one plain mailbox, `local@domain` (SPEC, Conventions). The rule is
# the WHATWG HTML "valid e-mail address" grammar (what <input type=email> accepts, a
# deliberate, practical subset of RFC 5322): no quoted local parts, comments, groups,
# route addresses or lists, so a stored address is always exactly one recipient. One
# addition: the domain needs a dot (a mailbox on a bare host name is not deliverable from
# here, and the original service's rule asked for one too). 254 is RFC 5321's limit on a
# forward path (256 octets minus the angle brackets).
EMAIL_MAX_LENGTH = 254
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# `$` alone would also match before a final newline (Python's re, which msgspec uses);
# the lookahead keeps "a@example.com\n" out and reads the same in ECMAScript.
EMAIL_PATTERN = rf"^[A-Za-z0-9.!#$%&'*+/=?^_`{{|}}~-]+@{_LABEL}(?:\.{_LABEL})+$(?!\n)"
_EMAIL = re.compile(EMAIL_PATTERN)


def is_mailbox(value: str) -> bool:
    """Whether `value` is one plain mailbox (the pattern above; also used by msgspec)."""
    return len(value) <= EMAIL_MAX_LENGTH and _EMAIL.search(value) is not None
