"""Settings: defaults, file, env overrides, and errors that name the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from socialhub.cli import main
from socialhub.config import ConfigError, Rate, load_settings, parse_duration, parse_rate


def test_defaults_match_the_spec() -> None:
    s = load_settings(env={})
    assert (s.server.host, s.server.port, s.server.data_dir) == ("127.0.0.1", 8000, "./data")
    assert s.database.url == "" and s.redis.url == "" and s.kafka.bootstrap_servers == ""
    assert (s.kafka.posts_topic, s.kafka.users_topic) == ("posts", "users")
    assert s.auth.access_ttl == 900 and s.auth.refresh_ttl == 30 * 86400
    assert s.media.store == "disk" and s.mail.backend == "file"
    assert s.calls.ring_timeout == 30 and s.calls.stun_urls == ()
    assert s.ratelimit.enabled and s.ratelimit.rule("login") == Rate(limit=10, period=60, burst=10)
    assert s.metrics.enabled


def test_file_then_env(tmp_path: Path) -> None:
    cfg = tmp_path / "socialhub.toml"
    cfg.write_text(
        '[server]\nport = 9001\n[auth]\naccess_ttl = "5m"\n[calls]\nstun_urls = ["stun:a:3478"]\n'
        '[ratelimit]\nlogin = "3/10s"\nsignup = "off"\n[mail]\nfrom = "me <me@x.test>"\n'
    )
    s = load_settings(cfg, env={"SOCIALHUB_SERVER_PORT": "9002", "SOCIALHUB_CALLS_TURN_URLS": "turn:a, turn:b"})
    assert s.server.port == 9002  # env wins over the file
    assert s.auth.access_ttl == 300
    assert s.calls.stun_urls == ("stun:a:3478",) and s.calls.turn_urls == ("turn:a", "turn:b")
    assert s.ratelimit.rule("login") == Rate(limit=3, period=10, burst=3)
    assert s.ratelimit.rule("signup") is None
    assert s.mail.from_address == "me <me@x.test>"
    off = load_settings(cfg, env={"SOCIALHUB_RATELIMIT_ENABLED": "false"})
    assert off.ratelimit.rule("login") is None


def test_drain_seconds() -> None:
    assert load_settings(env={}).server.drain_seconds == 10.0
    assert load_settings(env={"SOCIALHUB_SERVER_DRAIN_SECONDS": "0"}).server.drain_seconds == 0.0  # stop at once
    assert load_settings(env={"SOCIALHUB_SERVER_DRAIN_SECONDS": "1m"}).server.drain_seconds == 60.0


def test_config_path_from_env(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nhost = '0.0.0.0'\n")
    assert load_settings(env={"SOCIALHUB_CONFIG": str(cfg)}).server.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"SOCIALHUB_SERVER_PORT": "eighty"}, "server.port"),
        ({"SOCIALHUB_SERVER_PORT": "70000"}, "server.port"),
        ({"SOCIALHUB_SERVER_PROT": "1"}, "SOCIALHUB_SERVER_PROT"),
        ({"SOCIALHUB_NOPE_X": "1"}, "SOCIALHUB_NOPE_X"),
        ({"SOCIALHUB_DATABASE_URL": "mysql://x"}, "database.url"),
        ({"SOCIALHUB_REDIS_URL": "http://x"}, "redis.url"),
        ({"SOCIALHUB_AUTH_JWT_SECRET": "short"}, "auth.jwt_secret"),
        ({"SOCIALHUB_AUTH_ACCESS_TTL": "soon"}, "auth.access_ttl"),
        ({"SOCIALHUB_AUTH_ACCESS_TTL": "0"}, "auth.access_ttl"),
        ({"SOCIALHUB_SERVER_DRAIN_SECONDS": "-1"}, "server.drain_seconds"),
        ({"SOCIALHUB_SERVER_DRAIN_SECONDS": "soon"}, "server.drain_seconds"),
        ({"SOCIALHUB_MEDIA_STORE": "ftp"}, "media.store"),
        ({"SOCIALHUB_MEDIA_STORE": "s3"}, "media.s3_bucket"),
        ({"SOCIALHUB_MEDIA_SERVE": "presigned"}, "media.serve"),
        ({"SOCIALHUB_MEDIA_SERVE": "cdn"}, "media.serve"),
        ({"SOCIALHUB_MEDIA_PUBLIC_BASE_URL": "cdn.example"}, "media.public_base_url"),
        (
            {"SOCIALHUB_MEDIA_STORE": "s3", "SOCIALHUB_MEDIA_S3_BUCKET": "b", "SOCIALHUB_MEDIA_S3_ENDPOINT": "x"},
            "media.s3_endpoint",
        ),
        ({"SOCIALHUB_MEDIA_S3_SECRET_KEY_FILE": "/nonexistent/secret"}, "media.s3_secret_key_file"),
        ({"SOCIALHUB_MEDIA_PREVIEW_WIDTHS": "400,0"}, "media.preview_widths"),
        ({"SOCIALHUB_MEDIA_MAX_FILES": "-1"}, "media.max_files"),
        ({"SOCIALHUB_MEDIA_MAX_FILES": "0"}, "media.max_files"),
        ({"SOCIALHUB_MEDIA_MAX_FILE_BYTES": "-7"}, "media.max_file_bytes"),
        ({"SOCIALHUB_SERVER_MAX_BODY_BYTES": "100"}, "server.max_body_bytes"),
        ({"SOCIALHUB_DATABASE_POOL_MAX": "0"}, "database.pool_max"),
        ({"SOCIALHUB_DATABASE_POOL_MIN": "30"}, "database.pool_min"),
        ({"SOCIALHUB_FEED_FANOUT_THRESHOLD": "0"}, "feed.fanout_threshold"),
        ({"SOCIALHUB_FEED_CACHE_POSTS": "-1"}, "feed.cache_posts"),
        ({"SOCIALHUB_KAFKA_PARTITIONS": "0"}, "kafka.partitions"),
        ({"SOCIALHUB_AUTH_OTP_MAX_ATTEMPTS": "0"}, "auth.otp_max_attempts"),
        ({"SOCIALHUB_AUTH_ARGON2_TIME_COST": "0"}, "auth.argon2_time_cost"),
        ({"SOCIALHUB_MAIL_BACKEND": "smtp"}, "mail.smtp_url"),
        ({"SOCIALHUB_RATELIMIT_LOGIN": "ten per minute"}, "ratelimit.login"),
        ({"SOCIALHUB_RATELIMIT_BOGUS": "1/1s"}, "ratelimit.bogus"),
        ({"SOCIALHUB_RATELIMIT_ENABLED": "maybe"}, "ratelimit.enabled"),
        ({"SOCIALHUB_METRICS_ENABLED": "perhaps"}, "metrics.enabled"),
        ({"SOCIALHUB_SERVER_CORS_ORIGINS": "app.example"}, "server.cors_origins"),
        ({"SOCIALHUB_SERVER_CORS_ORIGINS": "https://app.example/"}, "server.cors_origins"),
        ({"SOCIALHUB_SERVER_CORS_ORIGINS": "https://app.example, *"}, "server.cors_origins"),
        ({"SOCIALHUB_SERVER_CORS_ORIGINS": "ftp://app.example"}, "server.cors_origins"),
        ({"SOCIALHUB_SERVER_CORS_ORIGINS": "https://App.Example"}, "server.cors_origins"),
        ({"SOCIALHUB_SERVER_CORS_ORIGINS": "https://app.example:443"}, "server.cors_origins"),
        ({"SOCIALHUB_SERVER_CORS_ORIGINS": "https://app.example:99999"}, "server.cors_origins"),
        ({"SOCIALHUB_SERVER_CORS_ORIGINS": "https://me@app.example"}, "server.cors_origins"),
    ],
)
def test_bad_values_name_their_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env=env)
    assert str(err.value).startswith(key), str(err.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nport=")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_settings(broken, env={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[servr]\nport = 1\n")
    with pytest.raises(ConfigError, match=r"^servr"):
        load_settings(unknown, env={})
    typo = tmp_path / "typo.toml"
    typo.write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"^server\.prot"):
        load_settings(typo, env={})


def test_settings_are_frozen() -> None:
    s = load_settings(env={})
    with pytest.raises(AttributeError):
        s.server.port = 1  # type: ignore[misc]


def test_durations_and_rates() -> None:
    assert parse_duration("1500ms", "k") == 1.5
    assert parse_duration("2h", "k") == 7200
    assert parse_duration(30, "k") == 30
    assert parse_rate("30/1s burst 60", "k") == Rate(limit=30, period=1, burst=60)
    assert parse_rate("OFF", "k") is None
    assert parse_rate("5/2m", "k") == Rate(limit=5, period=120, burst=5)
    for bad in ("0/1s", "1/0s", "x/1s", "5", 5):
        with pytest.raises(ConfigError):
            parse_rate(bad, "k")


def test_example_file_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "socialhub.toml"
    s = load_settings(example, env={})
    assert s.server.port == 8000


def test_cors_origins() -> None:
    assert load_settings(env={}).server.cors_origins == ()
    env = {"SOCIALHUB_SERVER_CORS_ORIGINS": "https://app.example, http://127.0.0.1:3000,http://[::1]:8080"}
    assert load_settings(env=env).server.cors_origins == (
        "https://app.example",
        "http://127.0.0.1:3000",
        "http://[::1]:8080",
    )
    with pytest.raises(
        ConfigError, match=r"^server\.cors_origins: .*'https://app\.example:443'.*'https://app\.example'"
    ):
        load_settings(env={"SOCIALHUB_SERVER_CORS_ORIGINS": "https://app.example:443"})


def test_a_bad_cors_origin_stops_the_server_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("SOCIALHUB_")]:
        monkeypatch.delenv(name)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\ncors_origins = ["https://app.example/path"]\n')
    assert main(["serve", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "server.cors_origins" in err and len(err.strip().splitlines()) == 1


def test_s3_settings_and_a_secret_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "s3_secret"
    secret.write_text("very-secret-key\n")
    s = load_settings(
        env={
            "SOCIALHUB_MEDIA_STORE": "s3",
            "SOCIALHUB_MEDIA_S3_BUCKET": "media",
            "SOCIALHUB_MEDIA_S3_ENDPOINT": "http://minio:9000",
            "SOCIALHUB_MEDIA_S3_SECRET_KEY_FILE": str(secret),
            "SOCIALHUB_MEDIA_SERVE": "presigned",
            "SOCIALHUB_MEDIA_PRESIGN_TTL": "10m",
            "SOCIALHUB_MEDIA_PREVIEW_WIDTHS": "320, 960",
        }
    )
    m = s.media
    assert (m.store, m.s3_bucket, m.s3_secret_key, m.serve, m.presign_ttl) == (
        "s3",
        "media",
        "very-secret-key",
        "presigned",
        600.0,
    )
    assert m.preview_widths == (320, 960)
    toml = tmp_path / "s.toml"
    toml.write_text(f'[media]\nstore = "s3"\ns3_bucket = "b"\ns3_secret_key_file = "{secret}"\n')
    assert load_settings(toml, env={}).media.s3_secret_key == "very-secret-key"
    both = tmp_path / "both.toml"
    both.write_text(f'[media]\ns3_secret_key = "x"\ns3_secret_key_file = "{secret}"\n')
    with pytest.raises(ConfigError, match=r"^media\.s3_secret_key_file") as err:
        load_settings(both, env={})
    assert "very-secret-key" not in str(err.value)
    # Not a secret: no _file form.
    with pytest.raises(ConfigError, match="SOCIALHUB_MEDIA_S3_BUCKET_FILE"):
        load_settings(env={"SOCIALHUB_MEDIA_S3_BUCKET_FILE": str(secret)})
