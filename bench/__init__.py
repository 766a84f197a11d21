"""socialhub's benchmarks: `python -m bench <scenario>` (or `socialhub bench <scenario>`).

One entry point (bench/__main__.py) runs one scenario in-process: `rest-read`,
`rest-write`, `login` (bench/rest.py), `ws-idle`, `ws-chat` (bench/sockets.py, parts in
bench/ws/), `post-to-feed` (bench/post_to_feed.py), `calls` (bench/calls.py). Each starts
its own `socialhub serve` (bench/target.py, bench/server.py) or measures `--url`, loads it
from separate client processes, measures a bare ceiling on the same machine where one
applies (bench/ceiling.py, bench/ws_ceiling.py) and fills the one report (bench/report.py).

The package comes with the source checkout only: the wheel does not ship it, the server
imports nothing from it, and nothing here runs in the default test suite. What it imports
beyond the server's dependencies is pyproject's `bench` extra. See bench/README.md.
"""
