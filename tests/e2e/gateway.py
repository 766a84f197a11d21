"""Debian's `nginx` running the shipped gateway configuration (deploy/nginx/socialhub.conf)
for end-to-end tests: only its `listen` port and the `server` lines of its upstream are
changed, and nginx runs in the foreground with its pid, logs and temporary files in a
directory of the test's own."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.ports import free_port

GATEWAY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "socialhub.conf"
_LISTEN = re.compile(r"^(\s*)listen 80;$", re.M)
_UPSTREAM_SERVER = re.compile(r"^(\s*)server socialhub-\d+:8000( [^;]*)?;$", re.M)


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("nginx is not installed (scripts/test installs Debian's nginx)")
    return found


def gateway_conf(port: int, upstreams: list[str]) -> str:
    """The shipped configuration, listening on 127.0.0.1:`port`, in front of `upstreams`
    (host:port each) with the shipped server parameters."""
    text = GATEWAY_CONF.read_text()
    text, listens = _LISTEN.subn(rf"\1listen 127.0.0.1:{port};", text)
    found = _UPSTREAM_SERVER.findall(text)
    assert listens == 1 and len(found) >= 1, "deploy/nginx/socialhub.conf changed shape: update tests/e2e/gateway.py"
    indent, params = found[0]
    lines = "\n".join(f"{indent}server {address}{params};" for address in upstreams)
    first = _UPSTREAM_SERVER.search(text)
    assert first is not None
    text = text[: first.start()] + "\0" + _UPSTREAM_SERVER.sub("", text[first.start() :])
    return text.replace("\0", lines, 1)


class Gateway:
    """nginx with the shipped gateway configuration on a free port."""

    def __init__(self, root: Path, upstreams: list[str]) -> None:
        self.root = root
        self.port = free_port()
        self.upstreams = upstreams
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, timeout: float = 15) -> Gateway:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "socialhub.conf").write_text(gateway_conf(self.port, self.upstreams))
        temp = {name: self.root / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
        for path in temp.values():
            path.mkdir(exist_ok=True)
        # As root, nginx's workers would switch to `nobody`, who cannot enter the test's
        # directories: keep them as the user running the test.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        (self.root / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {self.root}/nginx.pid;\n"
            f"error_log {self.root}/error.log info;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            + "".join(f"    {name}_temp_path {path};\n" for name, path in temp.items())
            + f"    include {self.root}/socialhub.conf;\n}}\n"
        )
        conf, errors = self.root / "nginx.conf", self.root / "error.log"
        with open(self.root / "access.log", "ab") as log:
            self.proc = subprocess.Popen(
                [nginx_binary(), "-p", str(self.root), "-c", str(conf), "-e", str(errors)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"nginx did not listen within {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        logs = (self.root / "error.log", self.root / "access.log")
        parts = [p.read_text(errors="replace") for p in logs if p.exists()]
        return "\n".join(parts)[-5000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown: open sockets would hold a graceful one
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
