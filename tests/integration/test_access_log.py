"""The access log: one JSON line per request, like every other log line, and the
request metrics beside it."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from socialhub.logs import access_log
from tests.conftest import signup


async def test_each_request_is_one_json_line_without_its_query(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="socialhub.access")
    a = await signup(client)
    capsys.readouterr()
    r = await client.get("/feed?limit=5&token=secret", headers={**a.headers, "X-Request-Id": "req-42"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "req-42"
    missing = await client.get("/posts/123456789")
    # SPEC, Conventions: JSON out as application/json; charset=utf-8, errors too.
    assert r.headers["content-type"] == missing.headers["content-type"] == "application/json; charset=utf-8"
    access_log.flush()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"socialhub.access"' in line]
    feed = next(entry for entry in lines if entry["path"] == "/feed")
    assert feed["request_id"] == "req-42"
    assert feed["method"] == "GET" and feed["status"] == 200 and feed["user_id"] == a.id
    assert feed["level"] == "info" and feed["msg"] == "GET /feed 200"
    assert feed["ts"].endswith("Z") and isinstance(feed["duration_ms"], float)
    assert "secret" not in json.dumps(lines)
    anonymous = next(entry for entry in lines if entry["path"] == "/posts/123456789")
    assert anonymous["status"] == missing.status_code == 401 and anonymous["user_id"] is None
    assert anonymous["request_id"] == missing.headers["x-request-id"] and len(anonymous["request_id"]) == 16

    metrics = (await client.get("/metrics")).text
    assert 'socialhub_http_requests_total{method="GET",route="/feed",status="200"}' in metrics
    assert 'socialhub_http_request_seconds_count{method="GET",route="/posts/{id}"}' in metrics


async def test_the_access_log_is_off_when_its_logger_is_above_info(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    access_log.flush()
    capsys.readouterr()
    caplog.set_level(logging.WARNING, logger="socialhub.access")
    await client.get("/healthz")
    access_log.flush()
    assert '"socialhub.access"' not in capsys.readouterr().err
