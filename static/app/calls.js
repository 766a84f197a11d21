// 1:1 audio and video calls: WebRTC in the page, signaling through the SDK's socket
// (call_invite / call_answer / call_candidate / call_reject / call_hangup) and ICE
// servers from GET /calls/ice-servers (STUN, and TURN with short-lived credentials).
//
// Screens: the incoming call (accept / reject) and the call itself (status, remote and
// local video, mute, camera, hang up; then why it ended: busy, missed, rejected...).

import { sh } from "./client.js";
import { avatar, displayName, errorText, h, trapFocus } from "./dom.js";

const ENDED_TEXT = {
  busy: "Busy: they are in another call.",
  missed: "No answer.",
  rejected: "Call declined.",
  hangup: "Call ended.",
  answered_elsewhere: "Answered on another device.",
  unavailable: "They cannot be called.",
  failed: "The call could not connect.",
};

let call = null; // the one call of this page: {id, peer, media, role, pc, local, ...}
let incoming = null; // {call, sdp, candidates: []} ringing here, not yet answered
let layer = null;

/** Show a call screen (or none); the page behind it is inert while one shows. */
function showLayer(el) {
  layer = layer || document.getElementById("calls");
  if (el) layer.replaceChildren(el);
  else layer.replaceChildren();
  for (const sel of [".top", ".nav", "#view"]) {
    const part = document.querySelector(sel);
    if (part) part.inert = !!el;
  }
}

// -- media and the peer connection --------------------------------------------------------

async function iceServers() {
  try {
    const r = await sh.calls.iceServers();
    return r.ice_servers || [];
  } catch {
    return [];
  }
}

async function localMedia(media) {
  return navigator.mediaDevices.getUserMedia({ audio: true, video: media === "video" });
}

function newPeer(servers) {
  const pc = new RTCPeerConnection({ iceServers: servers });
  pc.addEventListener("icecandidate", (ev) => {
    if (!ev.candidate || !call) return;
    if (call.id) sh.calls.candidate(call.id, ev.candidate).catch(() => {});
    else call.outbox.push(ev.candidate); // the invite's ack (the call id) is not back yet
  });
  pc.addEventListener("track", (ev) => {
    if (!call) return;
    const remote = call.ui.remote;
    if (remote.srcObject !== ev.streams[0]) {
      remote.srcObject = ev.streams[0] || new MediaStream([ev.track]);
      remote.play().catch(() => {});
    }
  });
  pc.addEventListener("connectionstatechange", () => {
    if (!call || call.pc !== pc) return;
    const s = pc.connectionState;
    if (s === "connected") {
      setStatus("connected", "Connected");
      if (!call.timer) {
        const since = Date.now();
        const tick = () => {
          const t = Math.floor((Date.now() - since) / 1000);
          call.ui.duration.textContent = `${Math.floor(t / 60)}:${String(t % 60).padStart(2, "0")}`;
        };
        tick();
        call.timer = setInterval(tick, 1000);
      }
    }
    else if (s === "connecting") setStatus("connecting", "Connecting…");
    else if (s === "failed") {
      if (call.id) sh.calls.hangup(call.id).catch(() => {});
      end("failed");
    }
  });
  return pc;
}

async function addRemoteCandidate(candidate) {
  if (!call || !call.pc) return;
  if (!call.pc.remoteDescription) {
    call.inbox.push(candidate);
    return;
  }
  try {
    await call.pc.addIceCandidate(candidate);
  } catch (err) {
    console.warn("ICE candidate refused", err && err.message);
  }
}

async function drainInbox() {
  const list = call.inbox.splice(0);
  for (const c of list) await addRemoteCandidate(c);
}

// -- the call screen ----------------------------------------------------------------------

function callScreen(peer, media) {
  const status = h("p", { class: "call-status", testid: "call-status", dataset: { state: "calling" }, role: "status", "aria-live": "polite" }, "Calling…");
  const remote = h("video", { class: "remote", testid: "call-remote-video", autoplay: true, playsinline: true });
  const local = h("video", { class: "local", testid: "call-local-video", autoplay: true, playsinline: true, muted: true });
  const mute = h("button", { type: "button", class: "toggle", testid: "call-mute", "aria-pressed": "false" }, "Mute");
  const camera = h("button", { type: "button", class: "toggle", testid: "call-camera", "aria-pressed": "false", hidden: media !== "video" }, "Camera off");
  const hangup = h("button", { type: "button", class: "danger", testid: "call-hangup" }, "Hang up");
  const reason = h("p", { testid: "call-ended-reason", hidden: true, role: "alert" });
  const close = h("button", { type: "button", testid: "call-close", hidden: true }, "Close");
  const stage = h("div", { class: `call-stage ${media}` }, remote, local);
  const face = h("div", { class: `call-face${media === "audio" ? " show" : ""}` }, avatar(peer, 120));
  const duration = h("span", { class: "call-duration", testid: "call-duration" });
  const el = h(
    "div",
    { class: "overlay", testid: "call-screen", role: "dialog", "aria-modal": "true", "aria-label": `Call with ${displayName(peer)}` },
    h("div", { class: "who row", testid: "call-peer" }, media === "video" ? avatar(peer, 40) : null, displayName(peer)),
    face,
    status,
    duration,
    stage,
    reason,
    h("div", { class: "controls" }, mute, camera, hangup, close),
  );
  mute.addEventListener("click", () => {
    const on = mute.getAttribute("aria-pressed") !== "true";
    for (const t of call?.local?.getAudioTracks() || []) t.enabled = !on;
    mute.setAttribute("aria-pressed", String(on));
    mute.textContent = on ? "Unmute" : "Mute";
  });
  camera.addEventListener("click", () => {
    const off = camera.getAttribute("aria-pressed") !== "true";
    for (const t of call?.local?.getVideoTracks() || []) t.enabled = !off;
    camera.setAttribute("aria-pressed", String(off));
    camera.textContent = off ? "Camera on" : "Camera off";
  });
  hangup.addEventListener("click", () => {
    if (call?.id) sh.calls.hangup(call.id).catch(() => {});
    end("hangup", { local: true });
  });
  close.addEventListener("click", closeScreen);
  el.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && !close.hidden) closeScreen();
  });
  showLayer(trapFocus(el));
  hangup.focus();
  return { el, status, remote, local, mute, camera, hangup, reason, close, stage, face, duration };
}

function setStatus(state, text) {
  if (!call) return;
  call.ui.status.dataset.state = state;
  call.ui.status.textContent = text;
}

function closeScreen() {
  if (call && !call.ended) return;
  const back = call?.returnFocus;
  call = null;
  showLayer(null);
  if (back && document.contains(back)) back.focus();
}

/** Take an ended call's screen away without moving focus (a new call takes its place). */
function dismissEnded() {
  call = null;
  showLayer(null);
}

/** End the call here: stop media, show why. */
function end(reason, { local = false } = {}) {
  if (!call || call.ended) return;
  call.ended = true;
  clearInterval(call.timer);
  call.ui.stage.classList.add("ended");
  call.ui.face.classList.add("show");
  try {
    call.pc?.close();
  } catch {
    // closed already
  }
  for (const t of call.local?.getTracks() || []) t.stop();
  const ui = call.ui;
  ui.status.dataset.state = "ended";
  ui.status.textContent = "Call ended";
  ui.reason.dataset.reason = reason;
  ui.reason.textContent = local && reason === "hangup" ? "You hung up." : ENDED_TEXT[reason] || `Call ended (${reason}).`;
  ui.reason.hidden = false;
  ui.mute.hidden = ui.camera.hidden = ui.hangup.hidden = true;
  ui.close.hidden = false;
  ui.close.focus();
  ui.remote.srcObject = null;
  ui.local.srcObject = null;
  // An ended call shows for a while, then leaves by itself.
  const mine = call;
  setTimeout(() => call === mine && closeScreen(), 8000);
}

// -- placing a call -----------------------------------------------------------------------

/** Call `peer` (a User summary) with "audio" or "video". */
// The ICE servers and the camera/microphone, then the peer connection with the local
// tracks, for `mine`; false when that call ended (or another began) while they came.
async function startMedia(mine, media) {
  const [servers, stream] = await Promise.all([iceServers(), localMedia(media)]);
  if (call !== mine || mine.ended) {
    for (const t of stream.getTracks()) t.stop();
    return false;
  }
  mine.local = stream;
  mine.ui.local.srcObject = stream;
  mine.pc = newPeer(servers);
  for (const t of stream.getTracks()) mine.pc.addTrack(t, stream);
  return true;
}

export async function startCall(peer, media) {
  if (call && call.ended) dismissEnded();
  if (call || incoming) return;
  const returnFocus = document.activeElement;
  call = { id: null, peer, media, role: "caller", pc: null, local: null, outbox: [], inbox: [], ended: false, returnFocus };
  call.ui = callScreen(peer, media);
  const mine = call;
  try {
    if (!(await startMedia(mine, media))) return;
    const offer = await call.pc.createOffer();
    await call.pc.setLocalDescription(offer);
    setStatus("ringing", `Ringing ${displayName(peer)}…`);
    const c = await sh.calls.invite(peer.id, { media, sdp: offer.sdp });
    if (call !== mine) {
      sh.calls.hangup(c.id).catch(() => {});
      return;
    }
    call.id = c.id;
    call.ui.el.dataset.callId = c.id;
    if (mine.pendingEnd) return end(mine.pendingEnd);
    if (c.state === "ended") return end(c.end_reason || "busy");
    for (const cand of call.outbox.splice(0)) sh.calls.candidate(c.id, cand).catch(() => {});
  } catch (err) {
    if (call !== mine) return;
    const denied = err && (err.name === "NotAllowedError" || err.name === "NotFoundError");
    end("failed");
    call.ui.reason.textContent = denied ? "The camera or microphone is not available." : errorText(err);
  }
}

// -- receiving a call ---------------------------------------------------------------------

function incomingScreen(c) {
  const accept = h("button", { type: "button", class: "accept", testid: "call-accept" }, c.media === "video" ? "Accept video" : "Accept");
  const reject = h("button", { type: "button", class: "danger", testid: "call-reject" }, "Decline");
  const el = h(
    "div",
    { class: "overlay", testid: "call-incoming", role: "alertdialog", "aria-modal": "true", "aria-label": `Incoming call from ${displayName(c.caller)}`, dataset: { callId: c.id } },
    h("div", { class: "ring" }, avatar(c.caller, 96)),
    h("div", { class: "who", testid: "call-incoming-from" }, displayName(c.caller)),
    h("p", { testid: "call-incoming-media", dataset: { media: c.media } }, c.media === "video" ? "Incoming video call" : "Incoming voice call"),
    h("div", { class: "controls" }, reject, accept),
  );
  accept.addEventListener("click", () => answer());
  reject.addEventListener("click", () => {
    const id = incoming?.call.id;
    incoming = null;
    showLayer(null);
    if (id) sh.calls.reject(id).catch(() => {});
  });
  showLayer(trapFocus(el));
  accept.focus();
}

async function answer() {
  if (!incoming) return;
  const { call: c, sdp, candidates } = incoming;
  incoming = null;
  const peer = c.caller;
  call = { id: c.id, peer, media: c.media, role: "callee", pc: null, local: null, outbox: [], inbox: [...candidates], ended: false };
  call.ui = callScreen(peer, c.media);
  call.ui.el.dataset.callId = c.id;
  setStatus("connecting", "Connecting…");
  const mine = call;
  try {
    if (!(await startMedia(mine, c.media))) return;
    await call.pc.setRemoteDescription({ type: "offer", sdp });
    const reply = await call.pc.createAnswer();
    await call.pc.setLocalDescription(reply);
    await sh.calls.accept(c.id, reply.sdp);
    await drainInbox();
  } catch (err) {
    if (call !== mine) return;
    sh.calls.hangup(c.id).catch(() => {});
    const denied = err && (err.name === "NotAllowedError" || err.name === "NotFoundError");
    end("failed");
    call.ui.reason.textContent = denied ? "The camera or microphone is not available." : errorText(err);
  }
}

// -- signaling from the socket ------------------------------------------------------------

/** Listen for call frames. Returns a stop function. */
export function startCalls() {
  const offs = [
    sh.on("call_incoming", ({ call: c, sdp }) => {
      if (call && call.ended) dismissEnded();
      if (call || incoming) {
        // Busy here: the server rings every socket of the user; decline only a second call.
        if (call && call.id === c.id) return;
        sh.calls.reject(c.id).catch(() => {});
        return;
      }
      incoming = { call: c, sdp, candidates: [] };
      incomingScreen(c);
    }),
    sh.on("call_answered", async ({ call_id, sdp }) => {
      if (!call || call.id !== call_id || !call.pc) return;
      setStatus("connecting", "Connecting…");
      try {
        await call.pc.setRemoteDescription({ type: "answer", sdp });
        await drainInbox();
      } catch (err) {
        console.warn("bad answer", err && err.message);
        sh.calls.hangup(call_id).catch(() => {});
        end("failed");
      }
    }),
    sh.on("call_candidate", ({ call_id, candidate }) => {
      if (incoming && incoming.call.id === call_id) incoming.candidates.push(candidate);
      else if (call && call.id === call_id) addRemoteCandidate(candidate);
    }),
    sh.on("call_ended", ({ call_id, reason }) => {
      if (incoming && incoming.call.id === call_id) {
        incoming = null;
        showLayer(null);
        return;
      }
      if (call && call.id === call_id) end(reason);
      else if (call && !call.id && call.role === "caller") call.pendingEnd = reason; // before the ack
    }),
  ];
  return () => {
    offs.forEach((off) => off());
    if (call && call.id && !call.ended) sh.calls.hangup(call.id).catch(() => {});
    if (call) end("hangup", { local: true });
    call = null;
    incoming = null;
    showLayer(null);
  };
}
