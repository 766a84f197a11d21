"""Voice calls (issue 5; SPEC: the `call_*` frames, /calls/*, Call) against real
`socialhub serve` instances, with real WebRTC peers.

Each aiortc `RTCPeerConnection` is driven only by frames from its own socialhub socket:
the caller's offer goes out in `call_invite`, the callee's answer in `call_answer`, and
ICE candidates either inside the SDP or trickled one by one through `call_candidate`.
The peers must reach `connected`, swap a data-channel message both ways and carry a
440 Hz tone from the caller to the callee, on one instance and across two (Redis).
Then every other way a call ends (reject, hangup, missed, busy, answered elsewhere, a
party vanishing, the ringing instance killed), who may signal, what SDP is refused,
the history and the ICE servers; and, with a real coturn, that the TURN credentials
from /calls/ice-servers are accepted (a call relayed through it).
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import math
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import aioice
import httpx
import pytest
from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp
from av import AudioFrame

from socialhub.services.calls import DISCONNECT_GRACE, MAX_SDP_BYTES
from socialhub.services.presence import DEFAULT_GRACE as PRESENCE_GRACE
from tests.conftest import REDIS_URL, create_database, drop_database
from tests.e2e.server import Server, server_env, start_pair
from tests.e2e.wsclient import Frame, User, WsClient, signups
from tests.ports import free_port

RING_TIMEOUT = 2.0  # calls.ring_timeout in every server here
TURN_SECRET = "turn-shared-secret-" + "t" * 16
TURN_TTL = 3600
STUN_URL = "stun:stun.socialhub.test:3478"
CONNECT_WITHIN = 20.0  # offer to `connected` on loopback takes ~1 s; slack for a loaded machine
# The sweeper runs every second; end-to-end a ring deadline is announced within this.
SWEEP_SLACK = 4.0


def base_env(database_url: str, **extra: str) -> dict[str, str]:
    return server_env(
        database_url,
        SOCIALHUB_RATELIMIT_ENABLED="false",
        SOCIALHUB_CALLS_RING_TIMEOUT=str(RING_TIMEOUT),
        **extra,
    )


@pytest.fixture(scope="module")
def turn_port() -> int:
    """Where the coturn test starts its TURN server (the single instance hands it out)."""
    return free_port()


@pytest.fixture(scope="module")
async def single_db() -> AsyncIterator[str]:
    """The single instance's own database. Every instance on a database sweeps its calls
    and must share its pub/sub (Redis), so the single instance and the pair cannot share."""
    url = await create_database("socialhub_calls")
    yield url
    await drop_database(url)


@pytest.fixture(scope="module")
async def cluster_db() -> AsyncIterator[str]:
    url = await create_database("socialhub_calls_cluster")
    yield url
    await drop_database(url)


@pytest.fixture(scope="module")
def server(single_db: str, turn_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One instance, in-process pub/sub, STUN and TURN configured."""
    env = base_env(
        single_db,
        SOCIALHUB_REDIS_URL="",
        SOCIALHUB_CALLS_STUN_URLS=STUN_URL,
        SOCIALHUB_CALLS_TURN_URLS=f"turn:127.0.0.1:{turn_port}?transport=udp,turn:127.0.0.1:{turn_port}?transport=tcp",
        SOCIALHUB_CALLS_TURN_SECRET=TURN_SECRET,
        SOCIALHUB_CALLS_TURN_TTL=str(TURN_TTL),
    )
    srv = Server(tmp_path_factory.mktemp("calls") / "data", env=env).start()
    yield srv
    srv.kill()


def redis_env(database_url: str) -> dict[str, str]:
    """For instances on one PostgreSQL and one Redis: TURN URLs but no secret."""
    return base_env(
        database_url,
        SOCIALHUB_REDIS_URL=REDIS_URL,
        SOCIALHUB_REDIS_KEY_PREFIX=f"shcalls:{secrets.token_hex(4)}:",
        SOCIALHUB_CALLS_STUN_URLS=STUN_URL,
        SOCIALHUB_CALLS_TURN_URLS="turn:turn.socialhub.test:3478",
    )


@pytest.fixture(scope="module")
def pair(cluster_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    a, b = start_pair(tmp_path_factory.mktemp("calls-cluster"), redis_env(cluster_db))
    yield a, b
    for srv in (a, b):
        srv.kill()


# -- signaling -----------------------------------------------------------------------------


async def acked(client: WsClient, frame: Frame) -> Frame:
    reply = await client.request(frame)
    assert reply["type"] == "ack", reply
    return reply


async def refused(client: WsClient, frame: Frame, code: str) -> Frame:
    reply = await client.request(frame)
    assert reply["type"] == "error" and reply["code"] == code, reply
    assert set(reply) == {"type", "code", "message", "ref"}, reply
    return reply


# -- real peers ----------------------------------------------------------------------------


class Tone(AudioStreamTrack):
    """440 Hz at 8 kHz, paced like aiortc's silent AudioStreamTrack."""

    AMPLITUDE = 8000

    async def recv(self) -> AudioFrame:
        frame = await super().recv()
        assert isinstance(frame, AudioFrame) and isinstance(frame.pts, int)
        start = frame.pts
        samples = array.array(
            "h",
            (int(self.AMPLITUDE * math.sin(2 * math.pi * 440 * (start + i) / 8000)) for i in range(frame.samples)),
        )
        frame.planes[0].update(samples.tobytes())
        frame.time_base = Fraction(1, 8000)
        return frame


class Peer:
    """An aiortc peer whose only input is what the test hands it from its own socket."""

    def __init__(self, config: RTCConfiguration | None = None) -> None:
        # iceServers=[]: aiortc would otherwise ask Google's STUN server; loopback needs none.
        self.pc = RTCPeerConnection(config or RTCConfiguration(iceServers=[]))
        self.channel: RTCDataChannel | None = None
        self.channel_open = asyncio.Event()
        self.messages: asyncio.Queue[str] = asyncio.Queue()
        self.audio_frames = 0
        self.audio_peak = 0
        self._remote_ended = False
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("datachannel", self._use_channel)
        self.pc.on("track", self._on_track)

    def _use_channel(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        channel.on("message", lambda m: self.messages.put_nowait(str(m)))
        if channel.readyState == "open":
            self.channel_open.set()
        channel.on("open", self.channel_open.set)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._tasks.append(asyncio.create_task(self._listen(track)))

    async def _listen(self, track: MediaStreamTrack) -> None:
        """The receiving end of the audio: counts frames and keeps the loudest sample."""
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, AudioFrame)
                pcm = array.array("h", bytes(frame.planes[0]))
                self.audio_frames += 1
                self.audio_peak = max(self.audio_peak, max((abs(s) for s in pcm), default=0))

    async def offer(self, *, trickle: bool) -> str:
        self._use_channel(self.pc.createDataChannel("chat"))
        self.pc.addTrack(Tone())
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.local_sdp(trickle=trickle)

    async def answer(self, offer: str, *, trickle: bool) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.local_sdp(trickle=trickle)

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    def local_sdp(self, *, trickle: bool) -> str:
        """aiortc gathers before it returns; to trickle, the candidates leave the SDP and
        go through `call_candidate` instead."""
        sdp: str = self.pc.localDescription.sdp
        if not trickle:
            return sdp
        lines = [line for line in sdp.splitlines() if not line.startswith(("a=candidate:", "a=end-of-candidates"))]
        return "\r\n".join(lines) + "\r\n"

    def candidates(self) -> list[dict[str, Any]]:
        """The local candidates as browsers send them (RTCIceCandidateInit), then an
        end-of-candidates (empty candidate)."""
        found: list[dict[str, Any]] = []
        index, mid = -1, None
        for line in self.pc.localDescription.sdp.splitlines():
            if line.startswith("m="):
                index, mid = index + 1, None
            elif line.startswith("a=mid:"):
                mid = line[len("a=mid:") :]
            elif line.startswith("a=candidate:"):
                found.append({"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": index})
        return [*found, {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}]

    async def add_candidate(self, init: dict[str, Any]) -> None:
        if not init["candidate"]:
            if not self._remote_ended:
                self._remote_ended = True
                await self.pc.addIceCandidate(None)
            return
        candidate = candidate_from_sdp(init["candidate"].removeprefix("candidate:"))
        candidate.sdpMid = init["sdpMid"]
        candidate.sdpMLineIndex = init["sdpMLineIndex"]
        await self.pc.addIceCandidate(candidate)

    async def connected(self, timeout: float = CONNECT_WITHIN) -> None:
        end = time.monotonic() + timeout
        while self.pc.connectionState != "connected":
            assert self.pc.connectionState not in ("failed", "closed"), self.pc.connectionState
            assert time.monotonic() < end, f"not connected in {timeout}s: {self.pc.connectionState}"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def relay_candidates(receiver: WsClient, peer: Peer, call_id: str, sent: list[dict[str, Any]]) -> None:
    """Feed the peer each `call_candidate` its socket gets for the call: those the other
    party sent, as they were sent, in order."""
    for init in sent:
        frame = await receiver.expect("call_candidate", timeout=CONNECT_WITHIN, call_id=call_id)
        assert frame == {"type": "call_candidate", "call_id": call_id, "candidate": init}, frame
        await peer.add_candidate(frame["candidate"])


async def real_call(
    caller: WsClient,
    callee: WsClient,
    callee_id: str,
    *,
    trickle: bool,
    config: RTCConfiguration | None = None,
    callee_config: RTCConfiguration | None = None,
    other_callee_sockets: Sequence[WsClient] = (),
) -> tuple[str, Peer, Peer]:
    """A full call between two aiortc peers through socialhub; checks every frame on the way."""
    caller_peer, callee_peer = Peer(config), Peer(callee_config or config)
    try:
        offer = await caller_peer.offer(trickle=trickle)
        ack = await acked(caller, {"type": "call_invite", "callee_id": callee_id, "media": "audio", "sdp": offer})
        call = ack["call"]
        call_id = call["id"]
        assert call["state"] == "ringing" and call["media"] == "audio" and call["callee"]["id"] == callee_id
        assert "end_reason" not in call and "answered_at" not in call

        # Every socket of the callee rings, on whichever instance it is.
        for sock in (callee, *other_callee_sockets):
            incoming = await sock.expect("call_incoming")
            assert incoming["call"] == call and incoming["sdp"] == offer, incoming

        answer = await callee_peer.answer(offer, trickle=trickle)
        caller_candidates = caller_peer.candidates()
        callee_candidates = callee_peer.candidates()
        if not trickle:
            # Everything is in the SDP; one candidate each way still crosses the relay
            # (aiortc ignores it after the SDP's end-of-candidates).
            caller_candidates, callee_candidates = caller_candidates[:1], callee_candidates[:1]
            assert caller_candidates[0]["candidate"] and f"a={caller_candidates[0]['candidate']}" in offer
        # The caller may trickle before the answer: the callee's ringing sockets get them.
        for init in caller_candidates:
            await acked(caller, {"type": "call_candidate", "call_id": call_id, "candidate": init})
        answered = await acked(callee, {"type": "call_answer", "call_id": call_id, "sdp": answer})
        assert answered["call"]["state"] == "active" and "answered_at" in answered["call"], answered
        for init in callee_candidates:
            await acked(callee, {"type": "call_candidate", "call_id": call_id, "candidate": init})

        got = await caller.expect("call_answered", call_id=call_id)
        assert got == {"type": "call_answered", "call_id": call_id, "sdp": answer}
        await caller_peer.accept(got["sdp"])
        await asyncio.gather(
            relay_candidates(callee, callee_peer, call_id, caller_candidates),
            relay_candidates(caller, caller_peer, call_id, callee_candidates),
        )
        await asyncio.gather(caller_peer.connected(), callee_peer.connected())

        # Data both ways.
        await asyncio.wait_for(asyncio.gather(caller_peer.channel_open.wait(), callee_peer.channel_open.wait()), 10)
        assert caller_peer.channel is not None and callee_peer.channel is not None
        caller_peer.channel.send("hello from the caller")
        assert await asyncio.wait_for(callee_peer.messages.get(), 10) == "hello from the caller"
        callee_peer.channel.send("hello from the callee")
        assert await asyncio.wait_for(caller_peer.messages.get(), 10) == "hello from the callee"

        # The tone arrives: frames, and not silence.
        end = time.monotonic() + 10
        while callee_peer.audio_frames < 25 or callee_peer.audio_peak < 1000:
            assert time.monotonic() < end, (callee_peer.audio_frames, callee_peer.audio_peak)
            await asyncio.sleep(0.05)
        return call_id, caller_peer, callee_peer
    except BaseException:
        await asyncio.gather(caller_peer.close(), callee_peer.close())
        raise


async def hang_up(by: WsClient, other: WsClient, call_id: str, *peers: Peer) -> None:
    ack = await acked(by, {"type": "call_hangup", "call_id": call_id})
    assert ack["call"]["state"] == "ended" and ack["call"]["end_reason"] == "hangup"
    for sock in (by, other):
        assert await sock.expect("call_ended", call_id=call_id) == {
            "type": "call_ended",
            "call_id": call_id,
            "reason": "hangup",
        }
    await asyncio.gather(*(p.close() for p in peers))


@pytest.fixture(scope="module")
async def sdp() -> AsyncIterator[tuple[str, str]]:
    """A real offer and answer, for tests about signaling only."""
    a, b = Peer(), Peer()
    offer = await a.offer(trickle=False)
    answer = await b.answer(offer, trickle=False)
    await asyncio.gather(a.close(), b.close())
    yield offer, answer


async def history(user: User, **params: Any) -> dict[str, Any]:
    r = await user.get("/calls/history", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# -- real calls ----------------------------------------------------------------------------


async def test_a_real_call_on_one_instance(server: Server, sockets: list[WsClient]) -> None:
    alice, bob = await signups(server, "alice", "bob")
    a, b = await alice.socket(), await bob.socket()
    sockets += [a, b]
    call_id, pa, pb = await real_call(a, b, bob.id, trickle=False)
    assert pa.pc.connectionState == pb.pc.connectionState == "connected"
    await hang_up(b, a, call_id, pa, pb)
    (call,) = (await history(alice))["items"]
    assert call["id"] == call_id and call["state"] == "ended" and call["end_reason"] == "hangup"
    assert call["caller"]["id"] == alice.id and call["callee"]["id"] == bob.id
    assert {"started_at", "answered_at", "ended_at"} <= set(call)


async def test_a_real_call_across_two_instances_with_trickled_candidates(
    pair: tuple[Server, Server], sockets: list[WsClient]
) -> None:
    """Caller on A, callee on B (and on A too: every socket rings). The candidates are
    not in the SDP: the peers connect only through what `call_candidate` relays."""
    a_srv, b_srv = pair
    alice, bob = await signups(a_srv, "alice", "bob")
    caller = await alice.socket(a_srv)
    callee = await bob.socket(b_srv)
    callee_elsewhere = await bob.socket(a_srv, await bob.login(a_srv))
    sockets += [caller, callee, callee_elsewhere]
    call_id, pa, pb = await real_call(caller, callee, bob.id, trickle=True, other_callee_sockets=[callee_elsewhere])
    # The other device of the callee stopped ringing; the answering one was not told so.
    await callee_elsewhere.expect("call_ended", call_id=call_id, reason="answered_elsewhere")
    assert not callee.matching("call_ended")
    # Before the answer it saw the caller's candidates too; after, none of the callee's.
    assert callee_elsewhere.matching("call_candidate", call_id=call_id)
    await hang_up(caller, callee, call_id, pa, pb)


# -- ways a call ends ------------------------------------------------------------------------


async def test_reject_ends_the_call_for_both(server: Server, sockets: list[WsClient], sdp: tuple[str, str]) -> None:
    alice, bob = await signups(server, "alice", "bob")
    a, b = await alice.socket(), await bob.socket()
    sockets += [a, b]
    call_id = (await acked(a, {"type": "call_invite", "callee_id": bob.id, "media": "video", "sdp": sdp[0]}))["call"][
        "id"
    ]
    await b.expect("call_incoming")
    # Only the callee rejects; the caller hangs up.
    await refused(a, {"type": "call_reject", "call_id": call_id}, "forbidden")
    ack = await acked(b, {"type": "call_reject", "call_id": call_id})
    assert ack["call"]["state"] == "ended" and ack["call"]["end_reason"] == "rejected"
    for sock in (a, b):
        assert await sock.expect("call_ended", call_id=call_id) == {
            "type": "call_ended",
            "call_id": call_id,
            "reason": "rejected",
        }
    # It is over: no answer, no second ending.
    await refused(b, {"type": "call_answer", "call_id": call_id, "sdp": sdp[1]}, "conflict")
    await refused(a, {"type": "call_hangup", "call_id": call_id}, "conflict")
    (call,) = (await history(bob))["items"]
    assert call["media"] == "video" and call["end_reason"] == "rejected" and "answered_at" not in call


@pytest.mark.parametrize("who", ["caller", "callee"])
async def test_hangup_by_either_party_ends_the_call_for_both(
    server: Server, sockets: list[WsClient], sdp: tuple[str, str], who: str
) -> None:
    alice, bob = await signups(server, "alice", "bob")
    a, b = await alice.socket(), await bob.socket()
    sockets += [a, b]
    call_id = (await acked(a, {"type": "call_invite", "callee_id": bob.id, "media": "audio", "sdp": sdp[0]}))["call"][
        "id"
    ]
    await b.expect("call_incoming")
    await acked(b, {"type": "call_answer", "call_id": call_id, "sdp": sdp[1]})
    await a.expect("call_answered", call_id=call_id)
    by, other = (a, b) if who == "caller" else (b, a)
    await hang_up(by, other, call_id)
    (call,) = (await history(alice))["items"]
    assert call["state"] == "ended" and call["end_reason"] == "hangup" and "answered_at" in call


async def test_the_caller_cancelling_a_ring_is_a_hangup(
    server: Server, sockets: list[WsClient], sdp: tuple[str, str]
) -> None:
    alice, bob = await signups(server, "alice", "bob")
    a, b = await alice.socket(), await bob.socket()
    sockets += [a, b]
    call_id = (await acked(a, {"type": "call_invite", "callee_id": bob.id, "media": "audio", "sdp": sdp[0]}))["call"][
        "id"
    ]
    await b.expect("call_incoming")
    await hang_up(a, b, call_id)
    # Ended before its ring deadline: the sweeper must not also call it missed.
    await asyncio.sleep(RING_TIMEOUT + 1.5)
    assert not a.matching("call_ended", reason="missed") and not b.matching("call_ended", reason="missed")


async def test_an_unanswered_call_is_missed_and_the_callee_notified(
    server: Server, sockets: list[WsClient], sdp: tuple[str, str]
) -> None:
    alice, bob = await signups(server, "alice", "bob")
    a, b = await alice.socket(), await bob.socket()
    sockets += [a, b]
    started = time.monotonic()
    call_id = (await acked(a, {"type": "call_invite", "callee_id": bob.id, "media": "audio", "sdp": sdp[0]}))["call"][
        "id"
    ]
    await b.expect("call_incoming")
    for sock in (a, b):
        ended = await sock.expect("call_ended", timeout=RING_TIMEOUT + SWEEP_SLACK, call_id=call_id)
        assert ended["reason"] == "missed", ended
    assert time.monotonic() - started >= RING_TIMEOUT - 0.2  # not before the ring timeout
    live = await b.expect("notification")
    assert live["notification"]["type"] == "missed_call" and live["notification"]["call_id"] == call_id
    assert not a.matching("notification")  # the caller is not notified of their own call
    r = await bob.get("/notify/notifications")
    assert r.status_code == 200, r.text
    (note,) = r.json()["items"]
    assert note["type"] == "missed_call" and note["call_id"] == call_id and note["actor"]["id"] == alice.id
    await refused(b, {"type": "call_answer", "call_id": call_id, "sdp": sdp[1]}, "conflict")
    (call,) = (await history(alice))["items"]
    assert call["end_reason"] == "missed"


async def test_busy_callee_and_busy_caller(server: Server, sockets: list[WsClient], sdp: tuple[str, str]) -> None:
    alice, bob, carol, dave = await signups(server, "alice", "bob", "carol", "dave")
    a, b, c, d = [await u.socket() for u in (alice, bob, carol, dave)]
    sockets += [a, b, c, d]
    live_id = (await acked(a, {"type": "call_invite", "callee_id": bob.id, "media": "audio", "sdp": sdp[0]}))["call"][
        "id"
    ]
    await b.expect("call_incoming")
    await acked(b, {"type": "call_answer", "call_id": live_id, "sdp": sdp[1]})

    # Carol calls Bob, who is in a call: her ack, then call_ended busy; Bob hears nothing.
    ack = await acked(c, {"type": "call_invite", "callee_id": bob.id, "media": "audio", "sdp": sdp[0]})
    busy_id = ack["call"]["id"]
    assert ack["call"]["state"] == "ended" and ack["call"]["end_reason"] == "busy", ack
    ended = await c.expect("call_ended", call_id=busy_id)
    assert ended["reason"] == "busy" and c.index(ack) < c.index(ended)
    # Alice (in the call) calls Dave: she is the busy one.
    ack = await acked(a, {"type": "call_invite", "callee_id": dave.id, "media": "audio", "sdp": sdp[0]})
    caller_busy_id = ack["call"]["id"]
    ended = await a.expect("call_ended", call_id=caller_busy_id)
    assert ended["reason"] == "busy" and a.index(ack) < a.index(ended)
    await asyncio.sleep(0.5)
    assert len(b.matching("call_incoming")) == 1 and not d.matching("call_incoming")  # nobody rang
    # The first call is untouched, and once it ends Bob can be called again.
    assert not b.matching("call_ended") and not a.matching("call_ended", call_id=live_id)
    await hang_up(a, b, live_id)
    again = await acked(c, {"type": "call_invite", "callee_id": bob.id, "media": "audio", "sdp": sdp[0]})
    assert again["call"]["state"] == "ringing"
    assert (await b.expect("call_incoming"))["call"]["id"] == again["call"]["id"]
    await hang_up(c, b, again["call"]["id"])
    states = {x["id"]: (x["state"], x.get("end_reason")) for x in (await history(carol))["items"]}
    assert states[busy_id] == ("ended", "busy")


async def test_answered_elsewhere_on_two_tabs_of_one_session(
    server: Server, sockets: list[WsClient], sdp: tuple[str, str]
) -> None:
    """Two sockets with one token (two tabs): the tab that did not answer stops ringing."""
    alice, bob = await signups(server, "alice", "bob")
    a = await alice.socket()
    tab1, tab2 = await bob.socket(), await bob.socket()
    sockets += [a, tab1, tab2]
    assert tab1.session_id == tab2.session_id
    invite = {"type": "call_invite", "callee_id": bob.id, "media": "audio", "sdp": sdp[0]}
    call_id = (await acked(a, invite))["call"]["id"]
    await tab1.expect("call_incoming")
    await tab2.expect("call_incoming")
    await acked(tab2, {"type": "call_answer", "call_id": call_id, "sdp": sdp[1]})
    await a.expect("call_answered", call_id=call_id)
    ended = await tab1.expect("call_ended", call_id=call_id)
    assert ended["reason"] == "answered_elsewhere"
    candidate = {"candidate": "candidate:1 1 udp 2130706431 192.0.2.9 5000 typ host", "sdpMid": "0"}
    await acked(a, {"type": "call_candidate", "call_id": call_id, "candidate": candidate})
    assert (await tab2.expect("call_candidate", call_id=call_id))["candidate"] == candidate
    await hang_up(a, tab2, call_id)


async def test_answered_elsewhere(server: Server, sockets: list[WsClient], sdp: tuple[str, str]) -> None:
    alice, bob = await signups(server, "alice", "bob")
    a = await alice.socket()
    phone = await bob.socket()
    laptop = await bob.socket(token=await bob.login())
    sockets += [a, phone, laptop]
    assert phone.session_id != laptop.session_id
    call_id = (await acked(a, {"type": "call_invite", "callee_id": bob.id, "media": "audio", "sdp": sdp[0]}))["call"][
        "id"
    ]
    await phone.expect("call_incoming")
    await laptop.expect("call_incoming")
    await acked(laptop, {"type": "call_answer", "call_id": call_id, "sdp": sdp[1]})
    await a.expect("call_answered", call_id=call_id)
    assert await phone.expect("call_ended", call_id=call_id) == {
        "type": "call_ended",
        "call_id": call_id,
        "reason": "answered_elsewhere",
    }
    # The first device to answer wins; the second gets a conflict.
    await refused(phone, {"type": "call_answer", "call_id": call_id, "sdp": sdp[1]}, "conflict")
    # After the answer the caller's candidates reach the answering device only.
    candidate = {"candidate": "candidate:1 1 udp 2130706431 192.0.2.9 5000 typ host", "sdpMid": "0"}
    await acked(a, {"type": "call_candidate", "call_id": call_id, "candidate": candidate})
    assert (await laptop.expect("call_candidate", call_id=call_id))["candidate"] == candidate
    await asyncio.sleep(0.3)
    assert not phone.matching("call_candidate") and not laptop.matching("call_ended")
    await hang_up(a, laptop, call_id)


async def test_a_party_whose_sockets_all_vanish_ends_the_call(
    server: Server, sockets: list[WsClient], sdp: tuple[str, str]
) -> None:
    """The caller's only socket drops: after presence's grace (offline) and the call's own
    DISCONNECT_GRACE, the call ends; the callee hears `hangup`, the record says why."""
    alice, bob = await signups(server, "alice", "bob")
    a, b = await alice.socket(), await bob.socket()
    sockets += [b]
    call_id = (await acked(a, {"type": "call_invite", "callee_id": bob.id, "media": "audio", "sdp": sdp[0]}))["call"][
        "id"
    ]
    await b.expect("call_incoming")
    await acked(b, {"type": "call_answer", "call_id": call_id, "sdp": sdp[1]})
    await a.expect("call_answered", call_id=call_id)
    gone = time.monotonic()
    await a.close()
    ended = await b.expect("call_ended", timeout=PRESENCE_GRACE + DISCONNECT_GRACE + SWEEP_SLACK + 2, call_id=call_id)
    assert ended["reason"] == "hangup"
    assert time.monotonic() - gone >= DISCONNECT_GRACE  # a network switch has time to reconnect
    (call,) = (await history(bob))["items"]
    assert call["state"] == "ended" and call["end_reason"] == "disconnected"


async def test_the_ring_times_out_when_its_instance_dies(
    tmp_path_factory: pytest.TempPathFactory, sockets: list[WsClient], sdp: tuple[str, str]
) -> None:
    """Two instances of their own: invite on A, SIGKILL A. B alone, where the callee is,
    still ends the ring on time (the deadline is in PostgreSQL and every instance sweeps)."""
    db = await create_database("socialhub_calls_kill")
    root = tmp_path_factory.mktemp("calls-kill")
    a_srv = b_srv = None
    try:
        env = redis_env(db)
        a_srv = Server(root / "a", env).start()
        b_srv = Server(root / "b", env).start()
        alice, bob = await signups(b_srv, "alice", "bob")
        caller = await alice.socket(a_srv)
        callee = await bob.socket(b_srv)
        sockets += [caller, callee]
        invite = {"type": "call_invite", "callee_id": bob.id, "media": "audio", "sdp": sdp[0]}
        call_id = (await acked(caller, invite))["call"]["id"]
        await callee.expect("call_incoming")
        a_srv.kill()
        killed = time.monotonic()
        ended = await callee.expect("call_ended", timeout=RING_TIMEOUT + SWEEP_SLACK, call_id=call_id)
        assert ended["reason"] == "missed"
        assert time.monotonic() - killed < RING_TIMEOUT + SWEEP_SLACK
        note = await callee.expect("notification")
        assert note["notification"]["type"] == "missed_call" and note["notification"]["call_id"] == call_id
        (call,) = (await history(bob))["items"]
        assert call["end_reason"] == "missed"
    finally:
        for srv in (a_srv, b_srv):
            if srv is not None:
                srv.kill()
        await drop_database(db)


# -- who may signal, and what ------------------------------------------------------------------


async def test_only_the_two_parties_may_signal(server: Server, sockets: list[WsClient], sdp: tuple[str, str]) -> None:
    alice, bob, eve = await signups(server, "alice", "bob", "eve")
    a, b, e = await alice.socket(), await bob.socket(), await eve.socket()
    sockets += [a, b, e]
    call_id = (await acked(a, {"type": "call_invite", "callee_id": bob.id, "media": "audio", "sdp": sdp[0]}))["call"][
        "id"
    ]
    await b.expect("call_incoming")
    candidate = {"candidate": "candidate:1 1 udp 2130706431 192.0.2.9 5000 typ host", "sdpMid": "0"}
    await refused(e, {"type": "call_answer", "call_id": call_id, "sdp": sdp[1]}, "forbidden")
    await refused(e, {"type": "call_candidate", "call_id": call_id, "candidate": candidate}, "forbidden")
    await refused(e, {"type": "call_hangup", "call_id": call_id}, "forbidden")
    await refused(e, {"type": "call_reject", "call_id": call_id}, "forbidden")
    # The caller answers not their own call.
    await refused(a, {"type": "call_answer", "call_id": call_id, "sdp": sdp[1]}, "forbidden")
    # Unknown calls.
    for frame in (
        {"type": "call_answer", "call_id": "1234567890123", "sdp": sdp[1]},
        {"type": "call_candidate", "call_id": "1234567890123", "candidate": candidate},
        {"type": "call_hangup", "call_id": "1234567890123"},
        {"type": "call_reject", "call_id": "1234567890123"},
    ):
        await refused(a, frame, "not_found")
    # Nothing of it reached the parties, and the call still rings.
    await asyncio.sleep(0.3)
    assert not a.matching("call_ended") and not b.matching("call_ended") and not b.matching("call_candidate")
    await acked(b, {"type": "call_answer", "call_id": call_id, "sdp": sdp[1]})
    await hang_up(a, b, call_id)


def sdp_without_media(offer: str) -> str:
    return offer.split("m=", 1)[0]


def oversized(offer: str) -> str:
    padding = "".join(f"a=x-padding:{i:06d}{'p' * 100}\r\n" for i in range(MAX_SDP_BYTES // 100 + 10))
    big = offer + padding
    assert MAX_SDP_BYTES < len(big.encode()) < 60_000
    return big


async def test_bad_sdp_is_refused_and_creates_no_call(
    server: Server, sockets: list[WsClient], sdp: tuple[str, str]
) -> None:
    alice, bob = await signups(server, "alice", "bob")
    a, b = await alice.socket(), await bob.socket()
    sockets += [a, b]
    offer, answer = sdp
    bad = {
        "garbage": "this is not sdp at all",
        "garbage lines": "v=0\r\nq=what\r\nm=audio\r\n",
        "no media": sdp_without_media(offer),
        "too large": oversized(offer),
    }
    for what, body in bad.items():
        reply = await a.request({"type": "call_invite", "callee_id": bob.id, "media": "audio", "sdp": body})
        assert reply["type"] == "error" and reply["code"] == "bad_request", (what, reply)
    # Empty SDP, and media that is neither audio nor video: refused by the frame's schema.
    for frame in (
        {"type": "call_invite", "callee_id": bob.id, "media": "audio", "sdp": ""},
        {"type": "call_invite", "callee_id": bob.id, "media": "screen", "sdp": offer},
    ):
        reply = await a.request(frame)
        assert reply["type"] == "error" and reply["code"] in ("bad_request", "validation_error"), reply
    assert (await history(alice))["items"] == []
    assert not b.matching("call_incoming")

    # The answer is checked the same way, and a refused answer leaves the call ringing.
    call_id = (await acked(a, {"type": "call_invite", "callee_id": bob.id, "media": "audio", "sdp": offer}))["call"][
        "id"
    ]
    await b.expect("call_incoming")
    for what, body in bad.items():
        reply = await b.request({"type": "call_answer", "call_id": call_id, "sdp": body})
        assert reply["type"] == "error" and reply["code"] == "bad_request", (what, reply)
    assert not a.matching("call_answered")
    (call,) = (await history(alice))["items"]
    assert call["state"] == "ringing"
    await acked(b, {"type": "call_answer", "call_id": call_id, "sdp": answer})
    await hang_up(a, b, call_id)


async def test_calling_yourself_or_nobody(server: Server, sockets: list[WsClient], sdp: tuple[str, str]) -> None:
    (alice,) = await signups(server, "alice")
    a = await alice.socket()
    sockets += [a]
    invite = {"type": "call_invite", "media": "audio", "sdp": sdp[0]}
    await refused(a, {**invite, "callee_id": alice.id}, "validation_error")
    await refused(a, {**invite, "callee_id": "1234567890123"}, "not_found")
    assert (await history(alice))["items"] == []


# -- REST -------------------------------------------------------------------------------------


async def test_history_lists_calls_newest_first_with_pages(
    server: Server, sockets: list[WsClient], sdp: tuple[str, str]
) -> None:
    alice, bob, carol = await signups(server, "alice", "bob", "carol")
    a, b, c = await alice.socket(), await bob.socket(), await carol.socket()
    sockets += [a, b, c]
    made: list[tuple[str, str, str]] = []  # (id, state, end_reason)

    async def invite(caller: WsClient, callee: User) -> str:
        call_id: str = (
            await acked(caller, {"type": "call_invite", "callee_id": callee.id, "media": "audio", "sdp": sdp[0]})
        )["call"]["id"]
        return call_id

    one = await invite(a, bob)  # rejected
    await b.expect("call_incoming")
    await acked(b, {"type": "call_reject", "call_id": one})
    made.append((one, "ended", "rejected"))
    two = await invite(c, alice)  # answered, hung up
    await a.expect("call_incoming")
    await acked(a, {"type": "call_answer", "call_id": two, "sdp": sdp[1]})
    await acked(c, {"type": "call_hangup", "call_id": two})
    made.append((two, "ended", "hangup"))
    three = await invite(a, carol)  # active
    await c.expect("call_incoming")
    await acked(c, {"type": "call_answer", "call_id": three, "sdp": sdp[1]})
    made.append((three, "active", ""))
    four = await invite(b, alice)  # alice is busy
    made.append((four, "ended", "busy"))

    body = await history(alice)
    listed = [(x["id"], x["state"], x.get("end_reason", "")) for x in body["items"]]
    assert listed == list(reversed(made)) and body["next"] is None
    assert [int(x["id"]) for x in body["items"]] == sorted((int(x["id"]) for x in body["items"]), reverse=True)
    first = await history(alice, limit=3)
    assert [x["id"] for x in first["items"]] == [four, three, two] and first["next"] == two
    rest = await history(alice, limit=3, before=first["next"])
    assert [x["id"] for x in rest["items"]] == [one] and rest["next"] is None
    # Only calls one took part in.
    assert [x["id"] for x in (await history(bob))["items"]] == [four, one]
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as anon:
        assert (await anon.get("/calls/history")).status_code == 401
    await hang_up(a, c, three)


async def test_ice_servers_hand_out_turn_rest_credentials(server: Server) -> None:
    (alice,) = await signups(server, "alice")
    before = int(time.time())
    r = await alice.get("/calls/ice-servers")
    after = int(time.time())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ttl"] == TURN_TTL
    stun, turn = body["ice_servers"]
    assert stun == {"urls": [STUN_URL]}
    assert turn["urls"][0].startswith("turn:127.0.0.1:") and len(turn["urls"]) == 2
    expiry, user_id = turn["username"].split(":")
    assert user_id == alice.id and before + TURN_TTL <= int(expiry) <= after + TURN_TTL
    digest = hmac.new(TURN_SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest()
    assert turn["credential"] == base64.b64encode(digest).decode()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as anon:
        assert (await anon.get("/calls/ice-servers")).status_code == 401


async def test_without_a_turn_secret_there_are_no_credentials(pair: tuple[Server, Server]) -> None:
    a_srv, _ = pair
    (alice,) = await signups(a_srv, "alice")
    r = await alice.get("/calls/ice-servers")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ice_servers"] == [{"urls": [STUN_URL]}]
    assert "username" not in json.dumps(body) and "credential" not in json.dumps(body)


# -- coturn ----------------------------------------------------------------------------------


@pytest.fixture
def coturn(turn_port: int, tmp_path: Path) -> Iterator[int]:
    """A real coturn on `turn_port` checking the TURN REST scheme (use-auth-secret) with
    the server's secret. Not installed is a failure, never a skip (.ci/run installs it)."""
    exe = shutil.which("turnserver")
    if exe is None:
        pytest.fail("turnserver (Debian package coturn) is not installed: apt-get install -y coturn (see .ci/run)")
    low = free_port()
    log = tmp_path / "turnserver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                exe, "-n",
                "--listening-ip", "127.0.0.1", "--listening-port", str(turn_port),
                "--relay-ip", "127.0.0.1", "--allow-loopback-peers",  # the peers are on this host
                "--min-port", str(low), "--max-port", str(low + 200),
                "--use-auth-secret", "--static-auth-secret", TURN_SECRET, "--realm", "socialhub.test",
                "--no-tls", "--no-dtls", "--no-cli", "--no-stdout-log", "--log-file", str(log), "--simple-log",
                "--db", str(tmp_path / "turndb"), "--pidfile", str(tmp_path / "turnserver.pid"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        end = time.monotonic() + 15
        while b"Total General servers" not in log.read_bytes():
            assert proc.poll() is None, f"turnserver exited with {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < end, f"turnserver not ready:\n{log.read_text()}"
            time.sleep(0.1)
        yield turn_port
    finally:
        proc.kill()
        proc.wait(10)


async def relay_candidate_types(port: int, username: str, password: str) -> list[str]:
    """What a TURN allocation with these credentials yields: ["relay"] when coturn accepts them."""
    conn = aioice.Connection(
        ice_controlling=True,
        turn_server=("127.0.0.1", port),
        turn_username=username,
        turn_password=password,
        transport_policy=aioice.TransportPolicy.RELAY,
    )
    try:
        await conn.gather_candidates()
        return [c.type for c in conn.local_candidates]
    finally:
        await conn.close()


async def test_coturn_accepts_the_credentials_and_relays_a_call(
    server: Server, coturn: int, sockets: list[WsClient]
) -> None:
    alice, bob = await signups(server, "alice", "bob")

    async def relay_only(user: User) -> tuple[RTCConfiguration, dict[str, Any]]:
        r = await user.get("/calls/ice-servers")
        assert r.status_code == 200, r.text
        turn = next(s for s in r.json()["ice_servers"] if "credential" in s)
        udp = [u for u in turn["urls"] if u.endswith("transport=udp")]
        ice = RTCIceServer(urls=udp, username=turn["username"], credential=turn["credential"])
        return RTCConfiguration(iceServers=[ice], iceTransportPolicy=RTCIceTransportPolicy.RELAY), turn

    (alice_config, alice_turn), (bob_config, _) = await asyncio.gather(relay_only(alice), relay_only(bob))

    # coturn checks them: accepted as handed out, refused when forged or expired.
    assert await relay_candidate_types(coturn, alice_turn["username"], alice_turn["credential"]) == ["relay"]
    forged = base64.b64encode(hmac.new(b"not the secret", alice_turn["username"].encode(), hashlib.sha1).digest())
    assert await relay_candidate_types(coturn, alice_turn["username"], forged.decode()) == []
    expired = f"{int(time.time()) - 60}:{alice.id}"
    expired_credential = base64.b64encode(hmac.new(TURN_SECRET.encode(), expired.encode(), hashlib.sha1).digest())
    assert await relay_candidate_types(coturn, expired, expired_credential.decode()) == []

    # A whole call through the relay: each peer offers relayed candidates only.
    a, b = await alice.socket(), await bob.socket()
    sockets += [a, b]
    call_id, pa, pb = await real_call(a, b, bob.id, trickle=False, config=alice_config, callee_config=bob_config)
    for peer in (pa, pb):
        kinds = {line.split(" typ ")[1].split()[0] for line in peer.pc.localDescription.sdp.splitlines()
                 if line.startswith("a=candidate:")}  # fmt: skip
        assert kinds == {"relay"}, peer.pc.localDescription.sdp
    await hang_up(a, b, call_id, pa, pb)
