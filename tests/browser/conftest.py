"""Fixtures of the browser tests: a real `socialhub serve`, Debian's chromium, two people.

- `live`: one `socialhub serve` for the run (its own fresh database, timelines and pub/sub
  in process, rate limits off), restartable mid-test on the same port (`live.restart()`).
- `chromium`: headless Debian chromium driven by Playwright (no browser download: the
  system's `chromium` is the executable), with a fake camera and microphone that need no
  permission prompt.
- `people`: alice and bob, each in a browser context of their own (cookies, storage and
  sockets apart): alice with a desktop window, bob with a phone's. `shot(label)` saves a
  screenshot under screenshots/<test>/ (git-ignored); every console error and uncaught
  exception a page logs fails the test, except chromium's own network failures inside a
  declared `async with person.outage():` (the browser logs each refused connection).
- `cable`: a forwarder to the server that a test can unplug (tests/browser/cable.py).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import socket
from collections.abc import AsyncIterator, Generator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, async_playwright

from tests.browser.cable import Cable
from tests.conftest import fresh_database
from tests.e2e.server import Server, server_env

SCREENSHOTS = Path(__file__).resolve().parents[2] / "screenshots"
# Ports of this suite's servers (socialhub, the other origins' pages): a block of their
# own, so that a restart finds its port free again and parallel suites do not collide.
PORTS = range(20500, 21000)
# How long a step may wait for the page (a live update, a reconnect): generous, as CI has
# two cores and chromium, the server and PostgreSQL share them.
STEP_MS = 15_000
# A restart drains first (serving, then sockets closed with 1012 over a window as long):
# the deploy path, kept short (the default is 10 s, then 10 s more).
DRAIN_SECONDS = "2"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1100, "height": 800}
CHROMIUM_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
# What chromium logs by itself when a connection is refused or dropped: tolerated only
# inside a declared outage (the server restarting, the context offline).
NETWORK_FAILURE = re.compile(r"net::ERR_|WebSocket connection to .* failed")


_HANDED_OUT: set[int] = set()


def free_port_in_range() -> int:
    """A port of PORTS that nothing listens on now, from a random start, and never the
    same one twice in a run (a port handed out may be bound only later)."""
    start = secrets.randbelow(len(PORTS))
    for i in range(len(PORTS)):
        port = PORTS[(start + i) % len(PORTS)]
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port in {PORTS}")


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed: `apt-get install chromium` (scripts/test does it)")
    return path


class LiveServer:
    """A real `socialhub serve`; `restart()` stops it gracefully and starts it again on the
    same port and database, as a deploy would."""

    def __init__(self, server: Server) -> None:
        self.server = server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return "ws" + self.server.url.removeprefix("http") + "/ws"

    async def restart(self, down: asyncio.Event | None = None) -> None:
        """SIGTERM (a graceful stop: where the server drains, it keeps serving a while,
        then closes its sockets with 1012), then start again; in a thread, so the pages'
        events keep being handled meanwhile. `down` is set once the old process is gone
        and before the new one is up."""
        loop = asyncio.get_running_loop()

        def stop_start() -> None:
            self.server.stop()
            if down is not None:
                loop.call_soon_threadsafe(down.set)
            self.server.start()

        await asyncio.to_thread(stop_start)


@dataclass
class CorsOrigins:
    """Origins of the pages the CORS test serves: `allowed` is in server.cors_origins,
    `other` is not. `supported` is False when this server's config refuses the key."""

    allowed: int
    other: int
    supported: bool


def config_takes(name: str, value: str) -> bool:
    """Whether the server's own config loader takes this SOCIALHUB_* setting (a branch
    older than the key refuses it, naming it)."""
    from socialhub.config import ConfigError, load_settings

    key = name.removeprefix("SOCIALHUB_SERVER_").lower()
    try:
        load_settings(env={name: value})
    except ConfigError as exc:
        # "SOCIALHUB_SERVER_X: server has no key 'x' (keys: ...)"; a bad value raises.
        if f"no key {key!r}" in str(exc):
            return False
        raise
    return True


@pytest.fixture(scope="session")
def cors_origins() -> CorsOrigins:
    allowed, other = free_port_in_range(), free_port_in_range()
    return CorsOrigins(allowed, other, config_takes("SOCIALHUB_SERVER_CORS_ORIGINS", f"http://127.0.0.1:{allowed}"))


@pytest.fixture(scope="session")
async def live(tmp_path_factory: pytest.TempPathFactory, cors_origins: CorsOrigins) -> AsyncIterator[LiveServer]:
    async with fresh_database("socialhub_browser") as url:
        extra = {
            "SOCIALHUB_RATELIMIT_ENABLED": "false",
            # Timelines, presence and pub/sub in process: one instance, and a restart keeps
            # only what PostgreSQL holds, which is what the pages must resume from.
            "SOCIALHUB_REDIS_URL": "",
        }
        if cors_origins.supported:
            extra["SOCIALHUB_SERVER_CORS_ORIGINS"] = f"http://127.0.0.1:{cors_origins.allowed}"
        if config_takes("SOCIALHUB_SERVER_DRAIN_SECONDS", DRAIN_SECONDS):
            extra["SOCIALHUB_SERVER_DRAIN_SECONDS"] = DRAIN_SECONDS
        server = Server(tmp_path_factory.mktemp("browser") / "srv", server_env(url, **extra), port=free_port_in_range())
        server.start()
        try:
            yield LiveServer(server)
        finally:
            server.kill()


@pytest.fixture(scope="session")
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as p:
        yield p


@pytest.fixture(scope="session")
async def chromium(playwright: Playwright) -> AsyncIterator[Browser]:
    browser = await playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        await browser.close()


@dataclass
class Shots:
    """Screenshots of one test, numbered in the order taken."""

    folder: Path
    taken: int = 0

    def next_path(self, who: str, label: str) -> Path:
        self.taken += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / f"{self.taken:02d}-{who}-{re.sub(r'[^a-z0-9]+', '-', label.lower())}.png"


@dataclass
class Person:
    """One person at their own browser: a context of their own and its page."""

    name: str
    context: BrowserContext
    page: Page
    shots: Shots
    errors: list[str] = field(default_factory=list)
    tolerated: list[str] = field(default_factory=list)
    in_outage: bool = False

    def watch(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type != "error":
            return
        text = f"{msg.text} ({msg.location.get('url', '')}:{msg.location.get('lineNumber', '')})"
        if self.in_outage and NETWORK_FAILURE.search(msg.text):
            self.tolerated.append(text)
        else:
            self.errors.append(text)

    async def shot(self, label: str) -> Path:
        path = self.shots.next_path(self.name, label)
        await self.page.screenshot(path=str(path), full_page=False)
        return path

    @asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        """Network failures the browser logs inside the block are expected, not errors."""
        self.in_outage = True
        try:
            yield
        finally:
            self.in_outage = False


def folder_of(request: pytest.FixtureRequest) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    folder = SCREENSHOTS / name
    if folder.exists():
        shutil.rmtree(folder)
    return folder


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Shots:
    return Shots(folder_of(request))


@contextmanager
def no_console_errors(people: list[Person]) -> Iterator[None]:
    yield
    found = [f"{p.name}: {e}" for p in people for e in p.errors]
    assert not found, "console errors:\n" + "\n".join(found)


async def open_person(chromium: Browser, name: str, viewport: dict[str, int], shots: Shots) -> Person:
    context = await chromium.new_context(viewport=viewport, locale="en-GB", timezone_id="UTC")  # type: ignore[arg-type]
    context.set_default_timeout(STEP_MS)
    page = await context.new_page()
    person = Person(name, context, page, shots)
    person.watch(page)
    return person


_CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.when == "call":
        item.stash[_CALL_REPORT] = report
    return report


@pytest.fixture
async def people(
    chromium: Browser, shots: Shots, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Person, Person]]:
    """alice (desktop window) and bob (phone), in browser contexts of their own. After the
    test, neither page may have logged a console error outside a declared outage; a failed
    test leaves a screenshot of each page as it was."""
    alice = await open_person(chromium, "alice", DESKTOP, shots)
    bob = await open_person(chromium, "bob", PHONE, shots)
    try:
        yield alice, bob
        report = request.node.stash.get(_CALL_REPORT, None)
        if report is not None and report.failed:
            for person in (alice, bob):
                await person.shot("at the failure")
            print("console errors:", {p.name: p.errors for p in (alice, bob)})
        else:
            for person in (alice, bob):
                for text in person.tolerated:
                    print(f"{person.name}, in an outage: {text}")
            with no_console_errors([alice, bob]):
                pass
    finally:
        for person in (alice, bob):
            await person.context.close()


@pytest.fixture
def cable(live: LiveServer) -> Iterator[Cable]:
    """A forwarder to the live server that the test can unplug (tests/browser/cable.py)."""
    c = Cable(free_port_in_range(), live.server.port).start()
    try:
        yield c
    finally:
        c.stop()
