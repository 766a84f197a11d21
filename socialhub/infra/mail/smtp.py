"""Mail through an SMTP server, with the standard library's smtplib in a worker thread.

`smtp://[user:pass@]host[:port]` connects in clear and upgrades with STARTTLS when the
server offers it; the port defaults to 25, as for smtplib, curl, Django and Symfony
(name 587 for a provider's submission port). `smtps://` is TLS from the first byte,
port 465 by default. User and password are percent-decoded, so a password may hold
`@`, `:` or `/` written as `%40`, `%3A`, `%2F`.

Certificates are checked against the system's CAs. Credentials are never sent over a
connection without TLS, except to a loopback host (a local relay): otherwise a
man in the middle who strips the STARTTLS offer would read the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import smtplib
import ssl
import urllib.parse
from datetime import UTC, datetime
from email.message import EmailMessage

from socialhub.errors import Unavailable
from socialhub.infra.mail.base import Mail, Mailer, build_message

logger = logging.getLogger(__name__)

_DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
_URL_FORM = "expected smtp://[user:pass@]host[:port] or smtps://[user:pass@]host[:port]"


class SmtpMailer(Mailer):
    """Sends each mail over a new SMTP connection.

    No pooled connection: servers drop idle ones within minutes and mail here is rare
    (reset codes), so a connection per mail is simpler and as fast as it needs to be.
    `ssl_context` replaces the system CAs (a private CA; the tests' own certificate).
    """

    def __init__(
        self,
        url: str,
        sender: str,
        timeout: float = 10.0,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # Error messages here never quote the URL: it may hold the password.
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError(f"smtp url: {_URL_FORM}") from None
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"smtp url: {_URL_FORM}")
        self._implicit_tls = parts.scheme == "smtps"
        self._host = parts.hostname
        self._port = port or _DEFAULT_PORTS[parts.scheme]
        self._username = urllib.parse.unquote(parts.username) if parts.username is not None else None
        self._password = urllib.parse.unquote(parts.password or "")
        self._sender = sender
        self._timeout = timeout
        self._ssl_context = ssl_context or ssl.create_default_context()
        self._loopback = _is_loopback(self._host)

    def __repr__(self) -> str:
        scheme = "smtps" if self._implicit_tls else "smtp"
        user = "<user>@" if self._username is not None else ""
        return f"SmtpMailer({scheme}://{user}{self._host}:{self._port})"

    async def send(self, mail: Mail) -> None:
        message = build_message(mail, self._sender, datetime.now(UTC))
        # A cancelled caller does not stop the thread: the mail may still go out.
        try:
            await asyncio.to_thread(self._send, message, mail.to)
        except (smtplib.SMTPException, OSError) as exc:
            # smtplib's errors carry the server's reply, never the credentials.
            logger.warning("mail could not be sent through %r: %s: %s", self, type(exc).__name__, exc)
            raise Unavailable("mail could not be sent") from exc
        logger.info("mail sent through %r", self)

    def _send(self, message: EmailMessage, to: str) -> None:
        client: smtplib.SMTP
        if self._implicit_tls:
            client = smtplib.SMTP_SSL(self._host, self._port, timeout=self._timeout, context=self._ssl_context)
        else:
            client = smtplib.SMTP(self._host, self._port, timeout=self._timeout)
        try:
            client.ehlo()
            encrypted = self._implicit_tls
            if not encrypted and client.has_extn("starttls"):
                # A certificate that does not verify fails the send: no fallback to clear text.
                client.starttls(context=self._ssl_context)
                client.ehlo()
                encrypted = True
            if self._username is not None:
                if not encrypted and not self._loopback:
                    raise smtplib.SMTPNotSupportedError(
                        "the server offers no STARTTLS; credentials are not sent in clear text"
                    )
                client.login(self._username, self._password)
            # The envelope names the one recipient: smtplib would otherwise take every
            # address it can parse out of the To header.
            client.send_message(message, to_addrs=[to])
            # The mail is accepted from here on: a failed QUIT must not report a failure
            # that would make the caller send it again.
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()
        finally:
            client.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
