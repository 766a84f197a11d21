"""A real S3-protocol server for the tests: moto's standalone server (`moto[server]`),
started as its own process and spoken to over HTTP, exactly as production talks to S3.

One server per test session (`s3_server`); each test gets a bucket of its own
(`s3_bucket`), so tests never see each other's objects. Nothing is skipped: when the
server cannot start, the fixture fails and says why.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session

from tests.ports import free_port

# Any non-empty pair: moto accepts every key and signs like S3 (SigV4 is checked for shape).
ACCESS_KEY = "socialhub-test"
SECRET_KEY = "socialhub-test-secret"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def settings(self, bucket: str, **more: Any) -> dict[str, Any]:
        """The [media] keys that point socialhub at `bucket` on this server."""
        return {
            "store": "s3",
            "s3_endpoint": self.endpoint,
            "s3_bucket": bucket,
            "s3_region": REGION,
            "s3_access_key": ACCESS_KEY,
            "s3_secret_key": SECRET_KEY,
            **more,
        }

    def env(self, bucket: str) -> dict[str, str]:
        """The same as SOCIALHUB_MEDIA_* variables, for a `socialhub serve` process."""
        return {f"SOCIALHUB_MEDIA_{k.upper()}": str(v) for k, v in self.settings(bucket).items()}

    def client(self) -> Any:
        """An async context manager giving a plain aiobotocore client, for setup and inspection."""
        return get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited:\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"moto_server did not listen within 30 s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_listening(port, proc, log)
    except RuntimeError as exc:
        proc.kill()
        proc.wait(10)
        pytest.fail(f"the S3 test server (moto[server], in the test extra) did not start: {exc}")
    yield S3Server(f"http://127.0.0.1:{port}")
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


async def _empty(client: Any, bucket: str) -> None:
    uploads = await client.list_multipart_uploads(Bucket=bucket)
    for u in uploads.get("Uploads", ()):
        await client.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
    async for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", ()):
            await client.delete_object(Bucket=bucket, Key=obj["Key"])
    await client.delete_bucket(Bucket=bucket)


async def new_bucket(server: S3Server) -> str:
    """A fresh, empty bucket (drop it with `drop_bucket`)."""
    bucket = f"sh-test-{secrets.token_hex(6)}"
    async with server.client() as client:
        await client.create_bucket(Bucket=bucket)
    return bucket


async def drop_bucket(server: S3Server, bucket: str) -> None:
    async with server.client() as client:
        await _empty(client, bucket)


@pytest.fixture
async def s3_bucket(s3_server: S3Server) -> AsyncIterator[str]:
    """A fresh, empty bucket of the test's own; emptied and removed after it."""
    bucket = await new_bucket(s3_server)
    yield bucket
    await drop_bucket(s3_server, bucket)
