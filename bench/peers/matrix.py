"""The pure parts of `vs-synapse`: Synapse's generated config, the shared-secret
registration MAC, the /sync filter and what a /sync answer holds for the benchmark.

Nothing here imports Synapse or talks to it: the config is a dict written as JSON (JSON
is YAML, which Synapse reads), so that tests check it without Synapse installed. The
options are those of Synapse's configuration manual for the version pinned in
bench/peers/synapse/requirements.txt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any
from urllib.parse import quote, unquote, urlsplit

# Every rate limiter of Synapse's config that a benchmark could hit, lifted: per_second
# and burst_count far above anything sent here (each key as Synapse's config manual
# names it; dotted keys are nested sections).
UNLIMITED = {"per_second": 100_000, "burst_count": 100_000}
RATE_LIMITS = (
    "rc_message",
    "rc_registration",
    "rc_login.address",
    "rc_login.account",
    "rc_login.failed_attempts",
    "rc_joins.local",
    "rc_joins.remote",
    "rc_joins_per_room",
    "rc_invites.per_room",
    "rc_invites.per_user",
    "rc_invites.per_issuer",
    "rc_room_creation",
    "rc_presence.per_user",
    "rc_delayed_event_mgmt",
    "rc_admin_redaction",
)
# PostgreSQL databases Synapse accepts: UTF8 with the C collation (its docs' CREATE DATABASE).
CREATE_DATABASE = "CREATE DATABASE \"{name}\" ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"


def database_args(database_url: str, name: str) -> dict[str, Any]:
    """psycopg2's connection arguments for database `name` on the server of `database_url`
    (user, password, host and port as the URL gives them; libpq's defaults otherwise)."""
    parts = urlsplit(database_url)
    args: dict[str, Any] = {"dbname": name, "host": parts.hostname or "127.0.0.1", "port": parts.port or 5432}
    if parts.username:
        args["user"] = unquote(parts.username)
    if parts.password:
        args["password"] = unquote(parts.password)
    # Synapse's own pool; one process, one homeserver: its defaults' bounds.
    args["cp_min"] = 5
    args["cp_max"] = 10
    return args


def homeserver_config(
    *,
    port: int,
    data_dir: str,
    database: dict[str, Any],
    shared_secret: str,
    presence: bool = False,
) -> dict[str, Any]:
    """A single-process homeserver for `localhost`: one plain HTTP listener on 127.0.0.1
    with the client API only (no federation resource, federation allowed with nobody),
    PostgreSQL, shared-secret registration, every rate limit lifted, presence off unless
    asked, logs at WARNING (no per-request access log) in `data_dir`."""
    config: dict[str, Any] = {
        "server_name": "localhost",
        "public_baseurl": f"http://127.0.0.1:{port}/",
        "pid_file": f"{data_dir}/homeserver.pid",
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "psycopg2", "args": database},
        "log_config": f"{data_dir}/log.config",
        "media_store_path": f"{data_dir}/media_store",
        "signing_key_path": f"{data_dir}/localhost.signing.key",
        "registration_shared_secret": shared_secret,
        "enable_registration": False,
        "report_stats": False,
        "enable_metrics": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "federation_domain_whitelist": [],
        "url_preview_enabled": False,
        "presence": {"enabled": presence},
        "macaroon_secret_key": base64.b64encode(os.urandom(32)).decode(),
        "form_secret": base64.b64encode(os.urandom(32)).decode(),
    }
    for key in RATE_LIMITS:
        section = config
        *parents, last = key.split(".")
        for part in parents:
            section = section.setdefault(part, {})
        section[last] = dict(UNLIMITED)
    return config


def log_config(path: str) -> dict[str, Any]:
    """Python logging's dictConfig for Synapse: WARNING and above to one file."""
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": path, "formatter": "plain"}},
        "root": {"level": "WARNING", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def signing_key() -> str:
    """A new ed25519 signing key in Synapse's key file format: algorithm, version, the
    32-byte seed in unpadded base64."""
    seed = base64.b64encode(os.urandom(32)).decode().rstrip("=")
    return f"ed25519 a_{os.urandom(2).hex()} {seed}\n"


def dump(config: dict[str, Any]) -> str:
    """The config as Synapse reads it (YAML; JSON is YAML)."""
    return json.dumps(config, indent=2) + "\n"


def registration_mac(shared_secret: str, nonce: str, username: str, password: str, admin: bool = False) -> str:
    """The `mac` of `POST /_synapse/admin/v1/register`: HMAC-SHA1 keyed by the shared
    secret over nonce, username, password and "admin"/"notadmin", NUL-separated, in hex."""
    mac = hmac.new(shared_secret.encode(), digestmod=hashlib.sha1)
    mac.update(nonce.encode())
    mac.update(b"\x00")
    mac.update(username.encode())
    mac.update(b"\x00")
    mac.update(password.encode())
    mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    return mac.hexdigest()


def sync_filter(room_id: str) -> str:
    """An inline /sync filter (JSON): only that room's timeline; no presence, account data,
    ephemeral events (typing, receipts) or other rooms; members lazily loaded."""
    nothing = {"not_types": ["*"]}
    return json.dumps(
        {
            "presence": nothing,
            "account_data": nothing,
            "room": {
                "rooms": [room_id],
                "timeline": {"limit": 50, "types": ["m.room.message"]},
                "state": {"lazy_load_members": True},
                "ephemeral": nothing,
                "account_data": nothing,
            },
        },
        separators=(",", ":"),
    )


def sent_path(room_id: str, txn_id: str) -> str:
    """`PUT` path of one message (the transaction id makes a retry idempotent)."""
    return f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/send/m.room.message/{quote(txn_id, safe='')}"


def timeline_marks(body: dict[str, Any], room_id: str, field: str) -> list[str]:
    """The `content[field]` marks of the m.room.message events of `room_id`'s timeline in a
    /sync answer, in order (events without the mark are someone else's)."""
    room = body.get("rooms", {}).get("join", {}).get(room_id)
    if not room:
        return []
    marks = []
    for event in room.get("timeline", {}).get("events", []):
        if event.get("type") != "m.room.message":
            continue
        mark = event.get("content", {}).get(field)
        if isinstance(mark, str):
            marks.append(mark)
    return marks


def timeline_limited(body: dict[str, Any], room_id: str) -> bool:
    """Whether the server cut the room's timeline (more events than the filter's limit)."""
    room = body.get("rooms", {}).get("join", {}).get(room_id) or {}
    return bool(room.get("timeline", {}).get("limited"))
