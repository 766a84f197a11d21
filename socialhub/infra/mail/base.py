"""The mailer port: outgoing mail (password-reset codes).

Two implementations, picked by `mail.backend` in app.py: `file.FileMailer` (the
default; one `.eml` file per mail under `data_dir/mail/`) and `smtp.SmtpMailer`
(hands each mail to an SMTP server).
"""

from __future__ import annotations

import abc
import email.policy
import email.utils
from datetime import datetime
from email.message import EmailMessage

import msgspec

# CRLF line ends as RFC 5322 asks, and a 7-bit body (quoted-printable or base64 when the
# text is not ASCII) so the bytes pass any SMTP hop, even one without 8BITMIME.
POLICY = email.policy.SMTP.clone(cte_type="7bit")


class Mail(msgspec.Struct, frozen=True):
    """One plain-text mail to one recipient."""

    to: str
    subject: str
    text: str


class Mailer(abc.ABC):
    """Sends mail. Implementations are safe to call concurrently."""

    @abc.abstractmethod
    async def send(self, mail: Mail) -> None:
        """Deliver `mail`, or hand it to the next hop.

        Raises `socialhub.errors.Unavailable` when it could not be sent, and ValueError
        when the mail cannot be written as a message (a line break in the subject).
        """

    async def close(self) -> None:  # noqa: B027 - optional hook; most mailers hold nothing open
        """Release resources (none by default)."""


def build_message(mail: Mail, sender: str, date: datetime) -> EmailMessage:
    """The RFC 5322 message for `mail`; `date` must be timezone-aware."""
    message = EmailMessage(policy=POLICY)
    message["From"] = sender
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Date"] = email.utils.format_datetime(date)
    # The domain comes from the sender: make_msgid's default asks DNS (socket.getfqdn),
    # which can stall for seconds on a host without a resolvable name.
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = email.utils.make_msgid(domain=domain)
    message.set_content(mail.text, charset="utf-8")
    return message
