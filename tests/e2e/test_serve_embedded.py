"""The README's promise: `socialhub serve` with nothing configured works, and keeps
accounts across a restart (embedded PostgreSQL in data_dir)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import psutil

from tests.e2e.server import Server


def _postgres_running(data_dir: Path) -> bool:
    pgdata = str(data_dir / "postgres")
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and pgdata in " ".join(proc.info["cmdline"] or []):
            return True
    return False


def test_serve_on_embedded_defaults_signup_login_follow_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = Server(data).start()
    try:
        with httpx.Client(base_url=server.url, timeout=20) as c:
            users = []
            for name in ("alice_e2e", "bob_e2e"):
                r = c.post(
                    "/auth/signup",
                    json={"name": name, "email": f"{name}@example.test", "username": name, "password": "pass word 1"},
                )
                assert r.status_code == 201, r.text
                assert r.headers["ratelimit-limit"] == "30"
                users.append(r.json()["user"]["id"])
            r = c.post("/auth/login", json={"identifier": "alice_e2e", "password": "pass word 1"})
            assert r.status_code == 200
            auth = {"Authorization": f"Bearer {r.json()['token']}"}
            r = c.post(f"/users/follow/{users[1]}", headers=auth)
            assert r.status_code == 200 and r.json() == {"following": True}
            assert int(r.headers["ratelimit-remaining"]) < int(r.headers["ratelimit-limit"])
            assert c.get("/no/such", headers=auth).json()["error"]["code"] == "not_found"
    finally:
        code = server.stop()
    assert code == 0
    assert (data / "jwt_secret").exists()
    # The embedded database is stopped with the server.
    deadline = time.monotonic() + 10
    while _postgres_running(data) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _postgres_running(data)

    server = Server(data).start()
    try:
        with httpx.Client(base_url=server.url, timeout=20) as c:
            r = c.post("/auth/login", json={"identifier": "bob_e2e@example.test", "password": "pass word 1"})
            assert r.status_code == 200, r.text
            me = c.get("/auth/me", headers={"Authorization": f"Bearer {r.json()['token']}"}).json()
            assert me["followers_count"] == 1
    finally:
        assert server.stop() == 0


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    r = subprocess.run(
        ["socialhub", "serve"],
        env={"PATH": str(Path(__import__("sys").executable).parent), "SOCIALHUB_SERVER_PORT": "nope"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 2
    assert "server.port" in r.stderr


def test_migrate_command(tmp_path: Path) -> None:
    import sys

    exe = str(Path(sys.executable).parent / "socialhub")
    env = {"PATH": str(Path(sys.executable).parent), "SOCIALHUB_SERVER_DATA_DIR": str(tmp_path / "d")}
    for _ in range(2):  # the second run finds nothing to do
        r = subprocess.run([exe, "migrate"], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    assert "migrations are up to date" in r.stderr


def test_unreachable_database_or_redis_exits_2_in_one_line(tmp_path: Path) -> None:
    import sys

    from tests.ports import free_port

    closed = free_port()  # nothing listens there
    cases = {
        "database.url": {"SOCIALHUB_DATABASE_URL": f"postgresql://someone:hunter2secret@127.0.0.1:{closed}/x"},
        "redis.url": {
            "SOCIALHUB_DATABASE_URL": "postgresql://root@127.0.0.1:5432/test",
            "SOCIALHUB_REDIS_URL": f"redis://:hunter2secret@127.0.0.1:{closed}/0",
        },
    }
    for key, env in cases.items():
        r = subprocess.run(
            [str(Path(sys.executable).parent / "socialhub"), "serve"],
            env={"PATH": str(Path(sys.executable).parent), **env},
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
        assert r.returncode == 2, (key, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"socialhub: {key}: cannot connect to "), r.stderr
        assert f"127.0.0.1:{closed}" in lines[0] and "hunter2secret" not in r.stderr
