"""The pure parts of `vs-synapse`: Synapse's generated config, the shared-secret
registration MAC, the /sync filter and answers, the samples and the side-by-side table.
None of them needs Synapse installed."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from bench.peers import synapse_server
from bench.peers.matrix import (
    CREATE_DATABASE,
    RATE_LIMITS,
    database_args,
    dump,
    homeserver_config,
    log_config,
    registration_mac,
    sent_path,
    signing_key,
    sync_filter,
    timeline_limited,
    timeline_marks,
)
from bench.peers.synapse_result import ChatWindow, after_ack, comparison, ratio, summarize_side, window_samples
from bench.target import TargetError
from bench.vs_synapse import _port_range


def _config(presence: bool = False) -> dict[str, object]:
    db = database_args("postgresql://bench:p%40ss@127.0.0.1:5433/test", "synapse_bench_x")
    return homeserver_config(port=18123, data_dir="/tmp/d", database=db, shared_secret="s3cret", presence=presence)


def test_config_has_one_plain_client_listener_and_no_federation() -> None:
    config = _config()
    assert config["server_name"] == "localhost"
    (listener,) = config["listeners"]  # type: ignore[misc]
    assert listener == {
        "port": 18123,
        "bind_addresses": ["127.0.0.1"],
        "type": "http",
        "tls": False,
        "x_forwarded": False,
        "resources": [{"names": ["client"], "compress": False}],
    }
    assert config["federation_domain_whitelist"] == []
    assert config["trusted_key_servers"] == []
    assert config["report_stats"] is False


def test_config_database_is_postgres_from_the_url() -> None:
    database = _config()["database"]
    assert database == {
        "name": "psycopg2",
        "args": {
            "dbname": "synapse_bench_x",
            "host": "127.0.0.1",
            "port": 5433,
            "user": "bench",
            "password": "p@ss",
            "cp_min": 5,
            "cp_max": 10,
        },
    }
    assert database_args("postgresql://127.0.0.1/test", "d") == {
        "dbname": "d",
        "host": "127.0.0.1",
        "port": 5432,
        "cp_min": 5,
        "cp_max": 10,
    }
    # The encoding and collation Synapse checks for at start.
    sql = CREATE_DATABASE.format(name="synapse_bench_x")
    assert "ENCODING 'UTF8'" in sql and "LC_COLLATE 'C'" in sql and "LC_CTYPE 'C'" in sql
    assert sql.endswith("TEMPLATE template0")


def test_config_lifts_every_rate_limit_nested_as_synapse_reads_them() -> None:
    config = _config()
    for key in RATE_LIMITS:
        section: object = config
        for part in key.split("."):
            assert isinstance(section, dict)
            section = section[part]
        assert section == {"per_second": 100_000, "burst_count": 100_000}, key
    assert config["rc_login"].keys() == {"address", "account", "failed_attempts"}  # type: ignore[attr-defined]
    assert config["rc_joins"].keys() == {"local", "remote"}  # type: ignore[attr-defined]
    assert config["rc_invites"].keys() == {"per_room", "per_user", "per_issuer"}  # type: ignore[attr-defined]


def test_config_registration_presence_and_secrets() -> None:
    config = _config()
    assert config["registration_shared_secret"] == "s3cret"
    assert config["enable_registration"] is False
    assert config["presence"] == {"enabled": False}
    assert _config(presence=True)["presence"] == {"enabled": True}
    assert config["macaroon_secret_key"] != _config()["macaroon_secret_key"]  # new per server
    assert config["log_config"] == "/tmp/d/log.config"
    assert config["signing_key_path"] == "/tmp/d/localhost.signing.key"
    # JSON is YAML: the file Synapse reads is the dict as it is.
    assert json.loads(dump(config)) == config


def test_log_config_is_warning_to_a_file() -> None:
    config = log_config("/tmp/d/homeserver.log")
    assert config["root"] == {"level": "WARNING", "handlers": ["file"]}
    assert config["handlers"]["file"]["filename"] == "/tmp/d/homeserver.log"


def test_signing_key_is_an_ed25519_seed_in_unpadded_base64() -> None:
    algorithm, version, seed = signing_key().split()
    assert algorithm == "ed25519" and version.startswith("a_")
    assert "=" not in seed
    assert len(base64.b64decode(seed + "=" * (-len(seed) % 4))) == 32


def test_registration_mac_matches_synapse_hmac_sha1() -> None:
    # printf 'abcd\0alice\0pw\0notadmin' | openssl dgst -sha1 -hmac s3cret
    assert registration_mac("s3cret", "abcd", "alice", "pw") == "24833b74b70a799741f94328b27d25e20391a75b"
    assert registration_mac("s3cret", "abcd", "alice", "pw", admin=True) == "f668c373fd5a47b376c021f2e46fb887a81ff287"


def test_sync_filter_keeps_only_the_room_timeline() -> None:
    f = json.loads(sync_filter("!r:localhost"))
    assert f["room"]["rooms"] == ["!r:localhost"]
    assert f["room"]["timeline"]["types"] == ["m.room.message"]
    for part in (f["presence"], f["account_data"], f["room"]["ephemeral"], f["room"]["account_data"]):
        assert part == {"not_types": ["*"]}


def test_sent_path_quotes_room_and_txn() -> None:
    assert sent_path("!abc:localhost", "t-1") == "/_matrix/client/v3/rooms/%21abc%3Alocalhost/send/m.room.message/t-1"


def test_timeline_marks_in_order_only_of_marked_messages_of_the_room() -> None:
    def event(kind: str, mark: object) -> dict[str, object]:
        return {"type": kind, "content": {"body": "x", "m": mark}}

    events = [event("m.room.message", "t-1"), event("m.room.member", "t-9"), event("m.room.message", None),
              event("m.room.message", "t-2")]  # fmt: skip
    body = {
        "next_batch": "s2",
        "rooms": {
            "join": {
                "!r": {"timeline": {"limited": True, "events": events}},
                "!other": {"timeline": {"events": [event("m.room.message", "t-3")]}},
            }
        },
    }
    assert timeline_marks(body, "!r", "m") == ["t-1", "t-2"]
    assert timeline_limited(body, "!r") is True
    assert timeline_marks({"next_batch": "s3"}, "!r", "m") == []
    assert timeline_limited({"next_batch": "s3"}, "!r") is False


def test_window_samples_leave_out_the_warmup_and_count_the_lost() -> None:
    sends = {f"t-{i}": float(i) for i in range(5)}
    arrivals = {"t-0": 0.5, "t-2": 2.01, "t-3": 3.02}
    acks = {"t-1": 1.1, "t-2": 2.005, "t-3": 3.001, "t-4": 4.002}
    latency, ack, lost, measured = window_samples("t", 1, sends, arrivals, acks)
    assert measured == 4
    assert latency == pytest.approx([0.01, 0.02])
    assert ack == pytest.approx([0.1, 0.005, 0.001, 0.002])
    assert lost == 2
    assert after_ack("t", 1, sends, arrivals, acks) == pytest.approx([0.005, 0.019])


def _window(latency_ms: list[float], cpu_s: float) -> ChatWindow:
    return ChatWindow(sent=len(latency_ms) + 1, measured=len(latency_ms), latency_s=[x / 1000 for x in latency_ms],
                      ack_s=[x / 2000 for x in latency_ms], lost=0, errors={}, server_cpu_s=cpu_s, wall_s=1.0,
                      cores={}, client_cpu=0.1, max_send_lag_ms=0.0)  # fmt: skip


def test_sides_merge_rounds_before_the_percentiles_and_cpu_is_a_total() -> None:
    s = summarize_side("synapse", [_window([10.0] * 99, 0.99), _window([100.0], 0.01)])
    assert s.rounds == 2
    assert s.latency is not None and s.latency.count == 100
    assert s.latency.p99_ms == pytest.approx(10.0) and s.latency.max_ms == pytest.approx(100.0)
    assert s.cpu_ms_per_message == pytest.approx(10.0)  # 1.0 s over 100 messages
    assert s.round_p99_ms == pytest.approx([10.0, 100.0])


def test_comparison_ratios_and_the_goal() -> None:
    ours = summarize_side("socialhub", [_window([2.0] * 100, 0.05)])
    peer = summarize_side("synapse", [_window([25.0] * 100, 1.7)])
    section, ratios, verdict = comparison(ours, peer)
    assert ratios["send -> receive p99, ms"] == pytest.approx(0.08)
    assert ratios["server CPU per message, ms"] == pytest.approx(0.5 / 17.0, abs=1e-4)
    assert verdict == "goal p99 ratio <= 0.10: met (0.080)"
    assert section.figures["p99 of each round, Synapse, ms"] == "25.0"
    assert section.figures["p99 ratio of each round (socialhub round n / Synapse round n)"] == "0.080"
    header, rule, *rows = section.text
    assert header.split()[-5:] == ["socialhub", "Synapse", "socialhub", "/", "Synapse"]
    assert set(rule) <= {"-", " "}
    p99 = next(r for r in rows if r.startswith("send -> receive p99"))
    assert p99.split()[-3:] == ["2.000", "25.0", "0.080"]
    assert rows[-1].split() == ["messages", "measured", "/", "lost", "100", "/", "0", "100", "/", "0"]
    _, slower, missed = comparison(summarize_side("socialhub", [_window([3.0] * 100, 0.05)]), peer)
    assert slower["send -> receive p99, ms"] == pytest.approx(0.12)
    assert missed == "goal p99 ratio <= 0.10: MISSED (0.120)"
    pg = next(r for r in rows if r.startswith("PostgreSQL transactions per message"))
    assert pg.split()[-3:] == ["-", "-", "-"]  # not read: no figure, no ratio
    assert comparison(ours, summarize_side("synapse", []))[2] == "goal p99 ratio <= 0.10: not measured"


def test_ratio_is_undefined_without_both_figures() -> None:
    assert ratio(1.0, 4.0) == 0.25
    assert ratio(None, 4.0) is None and ratio(1.0, None) is None and ratio(1.0, 0.0) is None


def test_port_range() -> None:
    assert _port_range("") is None
    assert _port_range("18000-18999") == (18000, 18999)
    for bad in ("18000", "a-b", "19000-18000", "80-90"):
        with pytest.raises(TargetError):
            _port_range(bad)


def test_database_counts_per_message_need_both_readings() -> None:
    counter = synapse_server.DbCounter("postgresql://127.0.0.1/test", "d")
    assert counter.per_message(100) is None
    counter.before, counter.after = (1000, 50), (1250, 550)
    assert counter.per_message(100) == (2.5, 5.0)
    assert counter.per_message(0) is None


def test_without_the_venv_the_install_command_is_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(synapse_server, "VENV", tmp_path / "missing")
    with pytest.raises(TargetError, match=r"pip install -r bench/peers/synapse/requirements.txt"):
        synapse_server.synapse_python()
