"""The request metrics as Prometheus reads them: counted in plain dicts, turned into the
families of `socialhub_http_requests_total` and `socialhub_http_request_seconds` when
scraped."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from socialhub.api.http.middleware import HttpMetrics


def test_counts_and_cumulative_buckets() -> None:
    metrics = HttpMetrics()
    registry = CollectorRegistry()
    registry.register(metrics)
    for elapsed in (0.0005, 0.001, 0.003, 0.2, 9.0):
        metrics.observe("GET", "/feed", 200, elapsed)
    metrics.observe("GET", "/feed", 401, 0.002)
    text = generate_latest(registry).decode()
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}
    assert lines['socialhub_http_requests_total{method="GET",route="/feed",status="200"}'] == 5
    assert lines['socialhub_http_requests_total{method="GET",route="/feed",status="401"}'] == 1

    def bucket(le: str) -> float:
        return next(v for k, v in lines.items() if "_bucket{" in k and f'le="{le}"' in k)

    # An observation on a bound counts in its bucket (le: less or equal).
    assert bucket("0.001") == 2
    assert bucket("0.0025") == 3
    assert bucket("0.005") == 4
    assert bucket("0.25") == 5
    assert bucket("5.0") == 5
    assert bucket("+Inf") == 6 == lines['socialhub_http_request_seconds_count{method="GET",route="/feed"}']
    assert abs(lines['socialhub_http_request_seconds_sum{method="GET",route="/feed"}'] - 9.2065) < 1e-9
