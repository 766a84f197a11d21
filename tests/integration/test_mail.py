"""The mailers against the real thing: files on disk, and an aiosmtpd server in this loop.

The SMTP server runs in the test's own event loop on a port the OS picks; the mailer's
smtplib runs in a worker thread, so the loop stays free to answer it. TLS uses a
certificate made here with the `openssl` command.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import email.utils
import logging
import pathlib
import re
import shutil
import smtplib
import socket
import ssl
import stat
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from socialhub.errors import Unavailable
from socialhub.infra.mail.base import Mail
from socialhub.infra.mail.file import FileMailer
from socialhub.infra.mail.smtp import SmtpMailer

SENDER = "socialhub <no-reply@socialhub.test>"
# Not ASCII on purpose: the subject must come back through RFC 2047, the body through
# quoted-printable.
MAIL = Mail(to="ana@example.com", subject="Dein Code – 123456", text="Grüße, Ana!\nDein Code: 123456\n")
USER = "mailer"
PASSWORD = "p@ss:w/rd"  # percent-encoded in the URL below
URL_PASSWORD = "p%40ss%3Aw%2Frd"


def parse(data: bytes) -> EmailMessage:
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def assert_is_mail(message: EmailMessage) -> None:
    assert message["From"] == SENDER
    assert message["To"] == MAIL.to
    assert message["Subject"] == MAIL.subject
    assert email.utils.parsedate_to_datetime(message["Date"]).tzinfo is not None
    assert re.fullmatch(r"<[^@<>\s]+@socialhub\.test>", message["Message-ID"])
    assert message.get_content_charset() == "utf-8"
    # The wire form of a text body ends its lines with CRLF (RFC 5322 / RFC 2045).
    assert message.get_content().replace("\r\n", "\n") == MAIL.text


# --- FileMailer ---------------------------------------------------------------------


async def test_file_mailer_writes_a_parseable_eml(tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "data" / "mail"
    await FileMailer(directory, SENDER).send(MAIL)

    files = list(directory.iterdir())
    assert len(files) == 1
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{16}\.eml", files[0].name)
    data = files[0].read_bytes()
    assert data.isascii()  # 7-bit clean, whatever the text
    assert_is_mail(parse(data))
    # The mails hold reset codes: only the owner may read them.
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600


async def test_file_mailer_concurrent_sends_make_separate_files(tmp_path: pathlib.Path) -> None:
    mailer = FileMailer(tmp_path, SENDER)
    other = Mail(to="bo@example.com", subject="second", text="two")
    await asyncio.gather(mailer.send(MAIL), mailer.send(other))

    names = sorted(p.name for p in tmp_path.iterdir())  # noqa: ASYNC240 - a test, nothing else runs
    assert len(names) == 2
    assert all(name.endswith(".eml") for name in names)  # no temp file left behind
    recipients = {parse((tmp_path / name).read_bytes())["To"] for name in names}
    assert recipients == {MAIL.to, other.to}


async def test_file_mailer_unwritable_directory_is_unavailable(tmp_path: pathlib.Path) -> None:
    # A regular file where the directory should be: fails even for root.
    blocker = tmp_path / "mail"
    blocker.write_bytes(b"")
    with pytest.raises(Unavailable) as caught:
        await FileMailer(blocker, SENDER).send(MAIL)
    assert isinstance(caught.value.__cause__, OSError)


async def test_a_line_break_in_the_subject_is_refused(tmp_path: pathlib.Path) -> None:
    # Header injection (an extra Bcc:) must not be possible through the subject.
    with pytest.raises(ValueError):
        await FileMailer(tmp_path, SENDER).send(Mail(to=MAIL.to, subject="hi\r\nBcc: x@y.z", text=""))
    assert list(tmp_path.iterdir()) == []  # noqa: ASYNC240 - a test, nothing else runs


# --- SMTP server ----------------------------------------------------------------------


class Recorder:
    """An aiosmtpd handler that keeps every envelope it accepts."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.logins: list[bytes | None] = []  # who had authenticated, per envelope

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        auth = session.auth_data  # set only by a successful AUTH
        self.logins.append(auth.login if isinstance(auth, LoginPassword) else None)
        return "250 OK"


def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (USER.encode(), PASSWORD.encode())
    # handled=False: aiosmtpd then answers 535 itself on a failure.
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


@asynccontextmanager
async def smtp_server(
    recorder: Recorder, *, implicit_tls: ssl.SSLContext | None = None, **smtp_kwargs: Any
) -> AsyncIterator[int]:
    """An SMTP server on 127.0.0.1 in this event loop; yields its port."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(recorder, hostname="localhost", loop=loop, **smtp_kwargs),
        "127.0.0.1",
        0,
        ssl=implicit_tls,
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[pathlib.Path, pathlib.Path]]:
    """A self-signed certificate for 127.0.0.1: (cert, key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the TLS tests need the openssl command to make a certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    yield cert, key


@pytest.fixture
def server_tls(certificate: tuple[pathlib.Path, pathlib.Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def client_tls(certificate: tuple[pathlib.Path, pathlib.Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


def assert_received(recorder: Recorder) -> None:
    assert len(recorder.envelopes) == 1
    envelope = recorder.envelopes[0]
    assert envelope.mail_from == "no-reply@socialhub.test"
    assert envelope.rcpt_tos == [MAIL.to]
    assert isinstance(envelope.content, bytes)
    assert_is_mail(parse(envelope.content))


# --- SmtpMailer -----------------------------------------------------------------------


async def test_smtp_sends_in_clear_when_no_starttls_is_offered() -> None:
    recorder = Recorder()
    async with smtp_server(recorder) as port:
        await SmtpMailer(f"smtp://127.0.0.1:{port}", SENDER).send(MAIL)
    assert_received(recorder)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_smtp_auth_over_starttls(mechanism: str, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    # aiosmtpd offers AUTH only after STARTTLS by default, so a pass proves both.
    recorder = Recorder()
    other = "LOGIN" if mechanism == "PLAIN" else "PLAIN"
    async with smtp_server(
        recorder,
        tls_context=server_tls,
        authenticator=authenticate,
        auth_required=True,
        auth_exclude_mechanism=[other],
    ) as port:
        url = f"smtp://{USER}:{URL_PASSWORD}@127.0.0.1:{port}"
        await SmtpMailer(url, SENDER, ssl_context=client_tls).send(MAIL)
    assert_received(recorder)
    assert recorder.logins == [USER.encode()]


async def test_smtp_auth_in_clear_to_a_loopback_relay() -> None:
    recorder = Recorder()
    async with smtp_server(recorder, authenticator=authenticate, auth_require_tls=False) as port:
        await SmtpMailer(f"smtp://{USER}:{URL_PASSWORD}@127.0.0.1:{port}", SENDER).send(MAIL)
    assert_received(recorder)
    assert recorder.logins == [USER.encode()]


async def test_smtps_implicit_tls(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    recorder = Recorder()
    async with smtp_server(recorder, implicit_tls=server_tls) as port:
        await SmtpMailer(f"smtps://127.0.0.1:{port}", SENDER, ssl_context=client_tls).send(MAIL)
    assert_received(recorder)


async def test_smtp_untrusted_certificate_fails_without_falling_back(server_tls: ssl.SSLContext) -> None:
    recorder = Recorder()
    async with smtp_server(recorder, tls_context=server_tls) as port:
        with pytest.raises(Unavailable) as caught:
            await SmtpMailer(f"smtp://127.0.0.1:{port}", SENDER).send(MAIL)  # system CAs only
    assert isinstance(caught.value.__cause__, ssl.SSLError)
    assert recorder.envelopes == []


async def test_smtp_wrong_password_is_unavailable_and_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    wrong = "hunter2-secret"
    async with smtp_server(recorder, authenticator=authenticate, auth_require_tls=False) as port:
        mailer = SmtpMailer(f"smtp://{USER}:{wrong}@127.0.0.1:{port}", SENDER, timeout=5.0)
        with caplog.at_level(logging.DEBUG), pytest.raises(Unavailable) as caught:
            await mailer.send(MAIL)
    assert caught.value.message == "mail could not be sent"
    assert isinstance(caught.value.__cause__, smtplib.SMTPAuthenticationError)
    assert recorder.envelopes == []
    assert caplog.records  # the failure is logged ...
    assert wrong not in caplog.text  # ... without the password
    assert wrong not in repr(mailer)


async def test_smtp_closed_port_is_unavailable() -> None:
    # Bound but not listening: connecting is refused at once.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(Unavailable) as caught:
            await SmtpMailer(f"smtp://127.0.0.1:{port}", SENDER, timeout=2.0).send(MAIL)
    assert isinstance(caught.value.__cause__, OSError)


@pytest.mark.parametrize(
    "url", ["http://host", "smtp://", "smtp://user:secret@host:notaport", "smtp://user:secret@host:99999"]
)
def test_smtp_bad_url_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        SmtpMailer(url, SENDER)
    assert "secret" not in str(caught.value)
