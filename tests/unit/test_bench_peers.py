"""The pure parts of `vs-socketio` (bench.peers.result): the Node driver's lines, the CPU
of /proc/<pid>/stat, the per-message samples, and the side-by-side table's ratios."""

from __future__ import annotations

import msgspec
import pytest

from bench.peers.result import (
    Done,
    IdleSample,
    Ready,
    RoundResult,
    Sent,
    Warm,
    WindowSamples,
    comparison,
    cpu_ms_per_message,
    decode_event,
    idle_kib_per_socket,
    proc_cpu_seconds,
    proc_cpu_split,
    ratio,
    summarize_side,
    window_samples,
)

# A real /proc/<pid>/stat line of a node process, with a command name holding ") (" and a
# space to show why the fields are counted from the last ')'; utime 1234, stime 56.
STAT = (
    "4242 (node (x) y) S 4200 4242 4200 0 -1 4194560 9000 0 0 0 1234 56 0 0 20 0 11 0 "
    "300000 1100000000 20000 18446744073709551615 1 1 0 0 0 0 0 16781312 17922 0 0 0 17 1 0 0 0 0 0"
)


def test_proc_stat_gives_user_plus_system_seconds() -> None:
    assert proc_cpu_seconds(STAT, 100) == pytest.approx(12.9)
    assert proc_cpu_seconds(STAT, 1000) == pytest.approx(1.29)
    assert proc_cpu_split(STAT, 100) == (pytest.approx(12.34), pytest.approx(0.56))


def test_proc_stat_of_this_process_reads() -> None:
    import os
    from pathlib import Path

    seconds = proc_cpu_seconds(Path(f"/proc/{os.getpid()}/stat").read_text(), os.sysconf("SC_CLK_TCK"))
    times = os.times()
    assert seconds == pytest.approx(times.user + times.system, abs=0.05)


def test_driver_lines_decode_by_event() -> None:
    ready = decode_event(b'{"event":"ready","connected":2,"errors":{},"connect_ms":[1.5,2.0],"cpu_share":0.4}')
    assert ready == Ready(2, {}, [1.5, 2.0], 0.4)
    assert isinstance(decode_event(b'{"event":"sent"}'), Sent)
    assert isinstance(decode_event(b'{"event":"warm"}'), Warm)
    done = decode_event(
        b'{"event":"done","arrivals":{"t-0":[10.5]},"sends":{"t-0":10.0},"acks":{},'
        b'"closed":{"4401":1},"cpu_share":0.01,"max_send_lag_ms":0.2}'
    )
    assert isinstance(done, Done) and done.arrivals == {"t-0": [10.5]} and done.closed == {"4401": 1}
    with pytest.raises(msgspec.ValidationError):
        decode_event(b'{"event":"ready","connected":"two"}')


def _done(arrivals: dict[str, list[float]], sends: dict[str, float] | None = None,
          acks: dict[str, float] | None = None) -> Done:  # fmt: skip
    return Done(arrivals, sends or {}, acks or {}, {}, 0.0, 0.0)


def test_window_samples_in_seconds_last_member_only_when_all_got_it() -> None:
    sender = _done({}, {"t-0": 100.0, "t-1": 200.0, "t-2": 300.0}, {"t-1": 201.0, "t-2": 302.0})
    receivers = [_done({"t-1": [203.0], "t-2": [304.0]}), _done({"t-0": [101.0], "t-1": [205.0]})]
    last, each, acks, lost, measured = window_samples("t", 1, 2, receivers, sender)
    assert measured == 2  # t-0 is the warm-up
    assert last == [pytest.approx(0.005)]  # t-2 reached one of two members
    assert sorted(each) == [pytest.approx(0.003), pytest.approx(0.004), pytest.approx(0.005)]
    assert acks == [pytest.approx(0.001), pytest.approx(0.002)]
    assert lost == 1


def _window(
    sent: int, cpu_s: float, latency: list[float], measured: int | None = None, system_s: float | None = None
) -> WindowSamples:
    measured = sent if measured is None else measured
    return WindowSamples(members=1, sent=sent, measured=measured, latency_s=latency, each_s=latency, ack_s=[],
                         lost=0, server_cpu_s=cpu_s, wall_s=1.0, cores={}, driver_cpu=[], closed={},
                         server_system_s=system_s)  # fmt: skip


def _idle(connected: int, before: float, after: float) -> IdleSample:
    return IdleSample(connected, connected, before, after, None, {}, [])


def test_cpu_and_rss_are_totals_over_rounds_not_means_of_rounds() -> None:
    assert cpu_ms_per_message([_window(100, 0.5, []), _window(300, 0.5, [])]) == pytest.approx(2.5)
    assert cpu_ms_per_message([]) is None
    # The CPU is read from the first measured message on: it is divided by those only.
    assert cpu_ms_per_message([_window(100, 0.9, [], measured=90)]) == pytest.approx(10.0)
    # 10 MiB over 1,000 sockets, then 10 MiB over 3,000: 20 MiB / 4,000 = 5.12 KiB a socket
    # (a mean of the rounds' ratios would say 6.83).
    assert idle_kib_per_socket([_idle(1000, 50, 60), _idle(3000, 50, 60)]) == pytest.approx(5.12)
    assert idle_kib_per_socket([_idle(0, 50, 50)]) is None


def test_ratio_is_socialhub_over_socketio() -> None:
    assert ratio(2.0, 1.0) == 2.0
    assert ratio(None, 1.0) is None and ratio(1.0, 0.0) is None


def test_side_by_side_table_merges_rounds_and_gives_ratios() -> None:
    rounds = [
        RoundResult("socialhub", 1, chat=_window(2, 0.002, [0.001, 0.003]), idle=_idle(100, 10, 12)),
        RoundResult("socketio", 1, chat=_window(2, 0.001, [0.001, 0.001]), idle=_idle(100, 10, 11)),
        RoundResult("socialhub", 2, chat=_window(2, 0.002, [0.002, 0.002])),
    ]
    ours, peer = summarize_side("socialhub", rounds), summarize_side("socketio", rounds)
    assert ours.rounds == 2 and ours.one_to_one is not None and ours.one_to_one.count == 4
    section, ratios = comparison(ours, peer, 1000)
    assert ratios["one-to-one send -> receive p50"] == pytest.approx(2.0)
    assert ratios["one-to-one send -> receive p99"] == pytest.approx(3.0)
    assert ratios["RSS per idle authenticated socket"] == pytest.approx(2.0)
    assert ratios["fan-out to 1,000: server CPU per message"] is None  # no fan-out window
    assert section.text[0].split() == ["measure", "(lower", "is", "better)", "socialhub", "Socket.IO", "socialhub",
                                       "/", "Socket.IO"]  # fmt: skip
    rss_row = next(line for line in section.text if line.startswith("RSS per idle"))
    assert rss_row.split()[-3:] == ["20.5", "10.2", "2.00"]


def test_fanout_cpu_is_split_into_kernel_and_user_space() -> None:
    rounds = [
        RoundResult("socialhub", 1, fanout=_window(100, 1.0, [0.01], system_s=0.6)),
        RoundResult("socialhub", 2, fanout=_window(100, 1.0, [0.01], system_s=0.8)),
        RoundResult("socketio", 1, fanout=_window(100, 2.0, [0.01], system_s=0.7)),
        RoundResult("socketio", 2, fanout=_window(100, 2.0, [0.01])),  # an older result, without the split
    ]
    ours, peer = summarize_side("socialhub", rounds), summarize_side("socketio", rounds)
    assert ours.fanout_cpu_ms_per_message == pytest.approx(10.0)
    assert ours.fanout_system_ms_per_message == pytest.approx(7.0)
    assert peer.fanout_system_ms_per_message is None  # not all of its windows say
    _, ratios = comparison(ours, ours, 1000)
    assert ratios["fan-out to 1,000: of which in the kernel"] == pytest.approx(1.0)
    assert ratios["fan-out to 1,000: of which in user space"] == pytest.approx(1.0)
    section, ratios = comparison(ours, peer, 1000)
    assert ratios["fan-out to 1,000: server CPU per message"] == pytest.approx(0.5)
    assert ratios["fan-out to 1,000: of which in the kernel"] is None
    user_row = next(line for line in section.text if "user space" in line)
    assert user_row.split()[-3:] == ["3.000", "-", "-"]
