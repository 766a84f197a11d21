"""Write -> visible in a follower's GET /feed: how long the home feed's fan-out takes.

The `post-to-feed` scenario: `python -m bench post-to-feed [--kafka] [--database-url URL]
[--redis [URL]]` (outbox path, or with `--kafka` a tansu broker the server relays the
outbox through). Options: `--followers` (default 20), `--posts` measured (default 200)
at `--rate` posts per second (default 5) after `--warmup` unmeasured posts (default 10),
`--sample` followers polled per post (default all), `--poll-ms` between one follower's
polls (default 10), `--timeout` per post (default 10 s).

It starts its own `socialhub serve` (rate limits off; see `bench.target`), signs up an
author and the followers, has each follower read its feed once (which builds its
timeline and marks it active: fan-out only reaches active users with a timeline) and
follow the author. Then, on a fixed schedule, the author posts; the clock starts when
the POST is sent, and each polled follower calls `GET /feed` (the default page of 20)
until the new post's id is in it. Per post it records the time until the first polled
follower saw it and until every polled follower had. A follower's first sight is the
arrival of the first response that holds the post, so a figure is late by at most one
poll interval plus one GET.

Why warm-up posts: until a follower's timeline holds a post, GET /feed answers from
PostgreSQL, where a new post is visible the moment it commits, whatever the consumers
do. After the first fanned-out post the timeline is what is read, and what is
measured is the fan-out. On the Kafka path the warm-up starts only once the server has
logged that both consumer groups joined (several seconds on tansu): before that, every
post would be found in PostgreSQL and the backlog would land in the first measurements.

Then (unless `--no-ceiling`) the same client, with the same options, runs against a
bare Starlette app (`bench.ceiling feed`) whose feed is an in-memory list the POST
appends to: a post is readable as soon as its POST is handled. Its figures are the floor of the method (the
POST round trip, the spread of the first poll over one interval, one GET under the
same polling load); socialhub's figures minus these are its pipeline.

The polling is load on the same process that runs the consumers: 20 followers each
polling every 10 ms is several hundred GET /feed per second while a post is in flight.
The report gives the GET latency and the CPU used during the window by the server,
PostgreSQL, tansu, the client and every other process (a shared machine skews every
figure); `--sample` lowers the load.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import sys
import time
from collections.abc import Callable

import httpx
import msgspec
import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.ceiling import CeilingServer
from bench.progress import Progress
from bench.report import Comparison, Report, Section, Series, new_report
from bench.server import ServerWatch, SpawnedServer
from bench.stats import summarize
from bench.target import Target, TargetError

# The goals (issue 3, "Done means"): p99 of write -> visible in a follower's feed.
GOAL_P99_MS = {"outbox": 250.0, "kafka": 500.0}
SIGNUP_CONCURRENCY = 4
# Until the first fanned-out post reaches every timeline: the Kafka consumer groups'
# first join takes seconds on tansu (it holds a JoinGroup for half the session timeout).
WARMUP_TIMEOUT_S = 90.0
# A client process above this share of one core is (part of) what is measured.
CLIENT_BOUND_CPU = 0.9
# Other processes using this many cores during the window compete with the server: say so.
OTHERS_NOTE_CORES = 0.25


class PostSample(msgspec.Struct, frozen=True):
    post_id: str
    post_s: float  # POST /posts/ round trip
    first_s: float | None  # to the first polled follower seeing it; None: not within --timeout
    all_s: float | None  # to the last polled follower seeing it
    seen_by: int  # polled followers that saw it within --timeout
    polled: int


class CpuUse(msgspec.Struct, frozen=True):
    """Cores used on average over the measured window, by whom."""

    seconds: float
    machine_cores: int
    busy: float  # every process on the machine
    server: float
    postgres: float | None  # None: not the embedded one (counted in `others`)
    tansu: float | None
    client: float
    others: float


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "steal", 0.0))


def _cpu_seconds(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    try:
        t = proc.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


class CpuWindow:
    """CPU time over the measured window: the whole machine, the server (and its
    embedded PostgreSQL), tansu, this client, and so everything else. Other work on a
    shared machine shows up in every latency figure; this says how much there was."""

    def __init__(self, watch: ServerWatch, tansu: psutil.Process | None) -> None:
        self.watch = watch
        self.tansu = tansu
        self.use: CpuUse | None = None

    def begin(self) -> None:
        self._start = (time.perf_counter(), _busy_seconds(), self.watch.snapshot(), _cpu_seconds(self.tansu))
        self._client = time.process_time()

    def end(self) -> None:
        wall0, busy0, server0, tansu0 = self._start
        wall = time.perf_counter() - wall0
        usage = self.watch.usage(server0, self.watch.snapshot())
        busy = (_busy_seconds() - busy0) / wall
        server = usage.app_cpu_s / wall
        postgres = usage.postgres_cpu_s / wall if usage.postgres_cpu_s is not None else None
        tansu = (_cpu_seconds(self.tansu) - tansu0) / wall if self.tansu is not None else None
        client = (time.process_time() - self._client) / wall
        self.use = CpuUse(
            seconds=wall,
            machine_cores=psutil.cpu_count() or 1,
            busy=busy,
            server=server,
            postgres=postgres,
            tansu=tansu,
            client=client,
            others=max(0.0, busy - server - (postgres or 0.0) - (tansu or 0.0) - client),
        )


class User(msgspec.Struct, frozen=True):
    id: str
    headers: dict[str, str]


class Bench:
    def __init__(
        self, client: httpx.AsyncClient, args: argparse.Namespace, window: tuple[Callable[[], None], ...] = ()
    ) -> None:
        self.client = client
        self.args = args
        self.window = window  # called when the measured window begins and ends
        self.feed_get_s: list[float] = []
        self.measuring = False

    async def signup(self) -> User:
        name = "b" + secrets.token_hex(7)
        body = {"name": name, "email": f"{name}@bench.test", "username": name, "password": "bench password 1"}
        r = await self.client.post("/auth/signup", json=body)
        if r.status_code != 201:
            raise SetupError(f"POST /auth/signup answered {r.status_code}: {r.text[:200]}")
        data = r.json()
        return User(id=data["user"]["id"], headers={"Authorization": f"Bearer {data['token']}"})

    async def setup(self) -> tuple[User, list[User]]:
        gate = asyncio.Semaphore(SIGNUP_CONCURRENCY)

        async def one() -> User:
            async with gate:
                return await self.signup()

        author, *followers = await asyncio.gather(*(one() for _ in range(self.args.followers + 1)))
        for f in followers:
            await self.feed_ids(f)  # builds the timeline, marks the follower active
            r = await self.client.post(f"/users/follow/{author.id}", headers=f.headers)
            if r.status_code != 200:
                raise SetupError(f"POST /users/follow answered {r.status_code}: {r.text[:200]}")
        return author, followers

    async def feed_ids(self, user: User) -> set[str]:
        started = time.perf_counter()
        r = await self.client.get("/feed", headers=user.headers)
        if self.measuring:
            self.feed_get_s.append(time.perf_counter() - started)
        if r.status_code != 200:
            raise SetupError(f"GET /feed answered {r.status_code}: {r.text[:200]}")
        return {item["id"] for item in r.json()["items"]}

    async def post(self, author: User, content: str) -> tuple[str, float, float]:
        """The post's id, when the POST was sent (perf_counter) and its round trip."""
        sent = time.perf_counter()
        r = await self.client.post("/posts/", json={"content": content}, headers=author.headers)
        took = time.perf_counter() - sent
        if r.status_code != 201:
            raise SetupError(f"POST /posts/ answered {r.status_code}: {r.text[:200]}")
        return str(r.json()["id"]), sent, took

    async def seen_at(self, user: User, post_id: str, deadline: float) -> float | None:
        """perf_counter time of the first GET /feed response holding `post_id`."""
        poll_s = self.args.poll_ms / 1000
        # Followers start their polls spread over one interval, not in lockstep.
        await asyncio.sleep(random.uniform(0, poll_s))
        while True:
            if post_id in await self.feed_ids(user):
                return time.perf_counter()
            if time.perf_counter() > deadline:
                return None
            await asyncio.sleep(poll_s)

    async def measure(self, author: User, polled: list[User], n: int) -> PostSample:
        post_id, sent, took = await self.post(author, f"bench post {n}")
        deadline = sent + self.args.timeout
        seen = await asyncio.gather(*(self.seen_at(f, post_id, deadline) for f in polled))
        times = [t - sent for t in seen if t is not None]
        complete = len(times) == len(polled)
        return PostSample(
            post_id=post_id,
            post_s=took,
            first_s=min(times) if times else None,
            all_s=max(times) if complete else None,
            seen_by=len(times),
            polled=len(polled),
        )

    async def warm_up(self, author: User, followers: list[User]) -> None:
        """Unmeasured posts, until the last of them is in every follower's feed."""
        last = ""
        for n in range(self.args.warmup):
            last, _, _ = await self.post(author, f"warm-up post {n}")
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        for f in followers:
            while last not in await self.feed_ids(f):
                if time.monotonic() > deadline:
                    raise SetupError(f"warm-up: a post did not reach a follower's feed within {WARMUP_TIMEOUT_S:.0f} s")
                await asyncio.sleep(0.05)

    async def run(self) -> list[PostSample]:
        author, followers = await self.setup()
        warmup = f"setup: author and {len(followers)} followers; {self.args.warmup} warm-up posts ..."
        print(warmup, file=sys.stderr, flush=True)
        await self.warm_up(author, followers)
        polled = followers[: self.args.sample] if self.args.sample else followers
        interval = 1 / self.args.rate
        print(
            f"measuring: {self.args.posts} posts at {self.args.rate:g}/s, {len(polled)} followers polled "
            f"every {self.args.poll_ms:g} ms ...",
            file=sys.stderr,
            flush=True,
        )
        self.measuring = True
        if self.window:
            self.window[0]()
        start = time.perf_counter()
        tasks: list[asyncio.Task[PostSample]] = []
        for n in range(self.args.posts):
            # Open loop: each post goes out on schedule, even while an earlier one is still
            # being polled, so a slow fan-out cannot slow the offered load down.
            delay = start + n * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.measure(author, polled, n)))
        samples = list(await asyncio.gather(*tasks))
        if self.window:
            self.window[1]()
        self.measuring = False
        return samples


class SetupError(TargetError):
    """The server answered the setup with an error: the run cannot go on."""


def wait_for_groups(server: SpawnedServer) -> None:
    """Until the server has logged that its feed and notifications consumer groups joined."""
    wanted = [f"kafka source socialhub-{name} joined" for name in ("feed", "notifications")]
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    while True:
        text = server.log_path.read_text(errors="replace")
        if all(w in text for w in wanted):
            return
        if time.monotonic() > deadline:
            raise SetupError(f"the Kafka consumer groups did not join within {WARMUP_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


def run_client(url: str, args: argparse.Namespace, window: CpuWindow) -> tuple[list[PostSample], list[float], float]:
    async def go() -> tuple[list[PostSample], list[float], float]:
        # One connection per follower poll in flight, with room for overlapping posts.
        limits = httpx.Limits(max_connections=4 * (args.followers + 1), max_keepalive_connections=4 * args.followers)
        async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:
            bench = Bench(client, args, (window.begin, window.end))
            cpu0, wall0 = time.process_time(), time.perf_counter()
            samples = await bench.run()
            share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
            return samples, bench.feed_get_s, share

    return asyncio.run(go())


class Run(msgspec.Struct, frozen=True):
    """What one run of the client gave, against socialhub or the ceiling."""

    samples: list[PostSample]
    feed_gets: list[float]
    client_cpu_share: float
    cpu: CpuUse | None
    server_errors: dict[str, int]


def add_options(p: argparse.ArgumentParser, scenario: str) -> None:
    p.add_argument("--followers", type=int, default=20, help="followers of the author (default 20)")
    p.add_argument("--posts", type=int, default=200, help="measured posts (default 200)")
    p.add_argument("--rate", type=float, default=5.0, help="posts per second (default 5)")
    p.add_argument("--warmup", type=int, default=10, help="unmeasured posts first (default 10, at least 2)")
    p.add_argument("--sample", type=int, default=0, help="followers polled per post (default 0: all)")
    p.add_argument("--poll-ms", type=float, default=10.0, help="between one follower's polls (default 10)")
    p.add_argument("--timeout", type=float, default=10.0, help="per post, seconds (default 10)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the bare in-memory feed")


def _check(args: argparse.Namespace) -> None:
    if args.url:
        raise TargetError("post-to-feed starts its own server (it signs up its users and reads the server's log)")
    if args.followers < 1 or args.posts < 1 or args.rate <= 0 or args.timeout <= 0 or args.poll_ms <= 0:
        raise TargetError("--followers, --posts, --rate, --timeout and --poll-ms must be positive")
    if args.warmup < 2:
        raise TargetError("--warmup must be at least 2: the first post is read from PostgreSQL, not the timeline")
    if not 0 <= args.sample <= args.followers:
        raise TargetError("--sample must be between 0 (all) and --followers")


def run(scenario: str, args: argparse.Namespace, progress: Progress) -> tuple[Report, Series]:
    _check(args)
    path = "kafka" if args.kafka else "outbox"
    report = new_report(scenario, "")
    report.setup = {"path": path, "followers": args.followers, "posts": args.posts, "rate per s": args.rate,
                    "warm-up posts": args.warmup, "poll ms": args.poll_ms}  # fmt: skip
    mine = run_socialhub(args, report, progress)
    report.sections.append(_section(mine, args, f"socialhub ({path} path)", GOAL_P99_MS[path]))
    if mine.server_errors:
        report.server["logged errors"] = mine.server_errors
    if not args.no_ceiling:
        bare = run_ceiling(args, progress)
        report.sections.append(_section(bare, args, "ceiling: in-memory feed (bench.ceiling feed)", None))
        for label, pick in (("first polled follower", _first), ("all polled followers", _all)):
            own, floor = summarize(pick(mine.samples)), summarize(pick(bare.samples))
            if own is None or floor is None:
                continue
            report.comparisons.append(Comparison(f"write -> visible, {label} p50", own.p50_ms, floor.p50_ms, False))
            report.comparisons.append(Comparison(f"write -> visible, {label} p99", own.p99_ms, floor.p99_ms, False))
        report.notes.append(
            "ceiling: bench.ceiling feed, an in-memory list the POST appends to, so its figures are the floor of "
            "the method (POST round trip + first poll within one interval + one GET); the rest is socialhub's pipeline"
        )
    return report, {}


def _first(samples: list[PostSample]) -> list[float]:
    return [s.first_s for s in samples if s.first_s is not None]


def _all(samples: list[PostSample]) -> list[float]:
    return [s.all_s for s in samples if s.all_s is not None]


def run_socialhub(args: argparse.Namespace, report: Report, progress: Progress) -> Run:
    """Start socialhub serve (and tansu with --kafka), run the client against it, stop them."""
    with Target(args) as target:
        report.target = target.description
        server = target.server
        assert server is not None and server.proc is not None and target.watch is not None
        try:
            if args.kafka:
                progress.say("waiting for the feed and notifications consumer groups to join ...")
                wait_for_groups(server)
            tansu = next((p for p in psutil.Process().children() if "tansu" in p.name()), None) if args.kafka else None
            window = CpuWindow(target.watch, tansu)
            samples, feed_gets, cpu_share = run_client(target.url, args, window)
        except (SetupError, httpx.TransportError):
            if server.proc.poll() is not None:
                progress.say(f"the server exited with {server.proc.returncode}")
            progress.say(f"last lines of the server's log:\n{server.log_tail()}")
            raise
        errors = target.logged_errors()
    return Run(samples, feed_gets, cpu_share, window.use, errors)


def run_ceiling(args: argparse.Namespace, progress: Progress) -> Run:
    """The same client against the bare in-memory feed (bench.ceiling feed)."""
    with CeilingServer("feed") as bare:
        progress.say(f"ceiling: bare in-memory feed (bench.ceiling feed) on {bare.url}, the same client and load ...")
        assert bare.proc is not None
        window = CpuWindow(ServerWatch(bare.proc.pid), None)
        samples, feed_gets, cpu_share = run_client(bare.url, args, window)
    return Run(samples, feed_gets, cpu_share, window.use, {})


def _section(run: Run, args: argparse.Namespace, title: str, goal_p99_ms: float | None) -> Section:
    samples = run.samples
    polled = samples[0].polled if samples else 0
    latency = {
        "write -> visible, first polled follower": summarize(_first(samples)),
        f"write -> visible, all {polled} polled followers": summarize(_all(samples)),
        "POST /posts/ round trip": summarize(s.post_s for s in samples),
        f"GET /feed while polling ({len(run.feed_gets)})": summarize(run.feed_gets),
    }
    not_visible = sum(1 for s in samples if s.all_s is None)
    figures: dict[str, object] = {
        "load": f"{len(samples)} posts at {args.rate:g}/s; {args.followers} followers, {polled} polled every "
        f"{args.poll_ms:g} ms",
        "posts not seen by every polled follower within --timeout": not_visible,
    }
    if goal_p99_ms is not None:
        every = latency[f"write -> visible, all {polled} polled followers"]
        met = every is not None and every.p99_ms <= goal_p99_ms and not not_visible
        figures[f"goal (issue 3): p99 <= {goal_p99_ms:g} ms, all followers"] = "met" if met else "MISSED"
    if run.cpu is not None:
        c = run.cpu
        parts = [f"server {c.server:.2f}"]
        if c.postgres is not None:
            parts.append(f"PostgreSQL {c.postgres:.2f}")
        if c.tansu is not None:
            parts.append(f"tansu {c.tansu:.2f}")
        parts += [f"this client {c.client:.2f}", f"other processes {c.others:.2f}"]
        figures[f"CPU over the {c.seconds:.0f} s window (cores of {c.machine_cores})"] = (
            f"{c.busy:.2f} busy = " + ", ".join(parts)
            + (" (others competed for the CPU: every figure is skewed)" if c.others > OTHERS_NOTE_CORES else "")
        )  # fmt: skip
    figures["client CPU (one process)"] = f"{run.client_cpu_share:.0%}" + (
        " (near one core: its own queueing is in the figures; try --sample)"
        if run.client_cpu_share > CLIENT_BOUND_CPU
        else ""
    )
    return Section(title, figures, {k: v for k, v in latency.items() if v is not None})
