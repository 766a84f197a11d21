// One load driver for both sides of `python -m bench vs-socketio`: socialhub's raw WebSocket
// JSON protocol (`ws`) and the Socket.IO peer (`socket.io-client`, which runs over the same
// `ws` package in Node). Everything but the two small socket classes is shared: connecting,
// pacing, time stamps, what is reported.
//
// The Python side spawns one driver process per role and share of sockets:
//   stdin line 1: the job, JSON {proto: "socialhub"|"socketio", url, role: "idle"|"receiver"|"sender",
//                 tokens: [...], room_id?, tag?, messages?, interval_ms?, warmup?}
//   stdout:       {"event": "ready", connected, errors, connect_ms, cpu_share}
//   stdin "go":   start the window (a sender sends `messages`, one every `interval_ms`, open loop:
//                 it never waits for acks; {"event": "warm"} just before message number `warmup`),
//                 then {"event": "sent"} once every ack is in (or DRAIN_MS)
//   stdin "stop": {"event": "done", arrivals, sends, acks, closed, cpu_share, max_send_lag_ms}, exit
// Times are milliseconds of CLOCK_MONOTONIC (process.hrtime), one clock for every process of the
// machine, so that a send stamped in the sender's process and its receipt in a receiver's compare.
// A message is stamped when the driver's handler has it decoded (after JSON.parse on both sides).
"use strict";

const readline = require("node:readline");
const WebSocket = require("ws");
const { io } = require("socket.io-client");

// As bench/ws/workers.py: handshakes in flight per process, setup limit, time for stragglers.
const CONNECT_CONCURRENCY = 64;
const SETUP_TIMEOUT_MS = 60_000;
const DRAIN_MS = 3000;
const BODY = "The quick brown fox jumps over the lazy dog; a chat line of realistic length. "; // ~80 chars

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// Resolves once the line is handed to the OS: a large `done` line must not be cut off by the exit.
const emitLine = (obj) => new Promise((resolve) => process.stdout.write(JSON.stringify(obj) + "\n", resolve));

// socialhub: GET /ws, one JSON object a text frame, `type` names it, `ref` is echoed on the ack.
class RawSocket {
  constructor(url) {
    this.url = url.replace(/^http/, "ws") + "/ws";
    this.handlers = new Map();
    this.waiters = new Map();
    this.acks = new Map();
    this.closed = null;
  }

  open() {
    return new Promise((resolve, reject) => {
      this.ws = new WebSocket(this.url, { perMessageDeflate: false });
      this.ws.once("open", resolve);
      this.ws.on("error", (err) => reject(err));
      this.ws.on("close", (code) => {
        this.closed = String(code);
        this.failWaiters(new Error(`closed with ${code}`));
        reject(new Error(`closed with ${code}`));
      });
      this.ws.on("message", (data) => this.dispatch(JSON.parse(data)));
    });
  }

  dispatch(frame) {
    const t = nowMs();
    if (frame.type === "ack" && this.acks.has(frame.ref)) {
      const onAck = this.acks.get(frame.ref);
      this.acks.delete(frame.ref);
      return onAck(frame, t);
    }
    if (frame.type === "error" && this.waiters.size) return this.failWaiters(new Error(`error ${frame.code}`));
    const waiter = this.waiters.get(frame.type);
    if (waiter) {
      this.waiters.delete(frame.type);
      return waiter.resolve(frame);
    }
    const handler = this.handlers.get(frame.type);
    if (handler) handler(frame, t);
  }

  failWaiters(err) {
    for (const w of this.waiters.values()) w.reject(err);
    this.waiters.clear();
  }

  on(type, fn) {
    this.handlers.set(type, fn);
  }

  next(type) {
    return new Promise((resolve, reject) => this.waiters.set(type, { resolve, reject }));
  }

  emit(type, payload, onAck) {
    if (onAck) this.acks.set(payload.ref, onAck);
    this.ws.send(JSON.stringify({ type, ...payload }));
  }

  close() {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
  }
}

// The peer: Socket.IO events of the same names and payloads; the ack is Socket.IO's callback.
class IoSocket {
  constructor(url) {
    this.socket = io(url, { transports: ["websocket"], forceNew: true, reconnection: false, autoConnect: false });
    this.closed = null;
  }

  open() {
    return new Promise((resolve, reject) => {
      this.socket.once("connect", resolve);
      this.socket.once("connect_error", reject);
      this.socket.on("disconnect", (reason) => {
        if (reason !== "io client disconnect") this.closed = reason;
      });
      this.socket.connect();
    });
  }

  on(type, fn) {
    this.socket.on(type, (payload) => fn(payload, nowMs()));
  }

  next(type) {
    return new Promise((resolve, reject) => {
      const fail = (reason) => reject(new Error(typeof reason === "string" ? reason : `error ${reason.code}`));
      this.socket.once(type, (payload) => {
        this.socket.off("error", fail).off("disconnect", fail);
        resolve(payload);
      });
      this.socket.once("error", fail).once("disconnect", fail);
    });
  }

  emit(type, payload, onAck) {
    if (onAck) this.socket.emit(type, payload, (answer) => onAck(answer, nowMs()));
    else this.socket.emit(type, payload);
  }

  close() {
    this.socket.disconnect();
  }
}

async function openOne(job, token) {
  const sock = job.proto === "socketio" ? new IoSocket(job.url) : new RawSocket(job.url);
  await sock.open();
  sock.emit("authenticate", { token });
  await sock.next("authenticated");
  if (job.room_id && job.role !== "idle") {
    sock.emit("join_room", { room_id: job.room_id });
    await sock.next("joined");
  }
  return sock;
}

async function connectAll(job) {
  const sockets = [];
  const errors = {};
  const connectMs = [];
  let next = 0;
  const lane = async () => {
    while (next < job.tokens.length) {
      const token = job.tokens[next++];
      const t0 = nowMs();
      let timer;
      try {
        const timeout = new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error("setup timeout")), SETUP_TIMEOUT_MS);
        });
        sockets.push(await Promise.race([openOne(job, token), timeout]));
        connectMs.push(+(nowMs() - t0).toFixed(3));
      } catch (err) {
        const key = `${err.name}: ${err.message}`.slice(0, 120);
        errors[key] = (errors[key] || 0) + 1;
      } finally {
        clearTimeout(timer);
      }
    }
  };
  await Promise.all(Array.from({ length: CONNECT_CONCURRENCY }, lane));
  return { sockets, errors, connectMs };
}

async function sendPaced(sock, job, sends, acks) {
  const start = nowMs() + 50;
  let maxLag = 0;
  for (let i = 0; i < job.messages; i++) {
    const target = start + i * job.interval_ms;
    const delay = target - nowMs();
    if (delay > 0) await sleep(delay);
    if (i === (job.warmup || 0)) emitLine({ event: "warm" }); // the parent's CPU window starts here
    const cmid = `${job.tag}-${i}`;
    const payload = { room_id: job.room_id, body: BODY, client_msg_id: cmid, ref: cmid };
    const t = nowMs();
    sock.emit("send_message", payload, (_answer, at) => {
      acks[cmid] = +at.toFixed(3);
    });
    sends[cmid] = +t.toFixed(3);
    maxLag = Math.max(maxLag, t - target);
  }
  return maxLag;
}

function cpuShare(cpu0, t0) {
  const used = process.cpuUsage(cpu0);
  return (used.user + used.system) / 1000 / Math.max(nowMs() - t0, 1e-6);
}

async function main() {
  const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  const first = await lines.next();
  if (first.done) throw new Error("no job on stdin");
  const job = JSON.parse(first.value);

  let cpu0 = process.cpuUsage();
  let t0 = nowMs();
  const { sockets, errors, connectMs } = await connectAll(job);
  emitLine({ event: "ready", connected: sockets.length, errors, connect_ms: connectMs, cpu_share: cpuShare(cpu0, t0) });

  const arrivals = {};
  const sends = {};
  const acks = {};
  const prefix = `${job.tag}-`;
  for (const sock of sockets) {
    sock.on("new_message", (frame, t) => {
      const cmid = frame.message && frame.message.client_msg_id;
      if (typeof cmid === "string" && cmid.startsWith(prefix)) (arrivals[cmid] ||= []).push(+t.toFixed(3));
    });
  }

  let maxLag = 0;
  for (let line = await lines.next(); !line.done; line = await lines.next()) {
    const command = line.value.trim();
    if (command === "go") {
      cpu0 = process.cpuUsage();
      t0 = nowMs();
      if (job.role === "sender" && sockets.length) {
        maxLag = await sendPaced(sockets[0], job, sends, acks);
        const deadline = nowMs() + DRAIN_MS;
        while (Object.keys(acks).length < Object.keys(sends).length && nowMs() < deadline) await sleep(10);
        emitLine({ event: "sent" });
      }
    } else if (command === "stop") {
      break;
    }
  }
  const closed = {};
  for (const sock of sockets) if (sock.closed !== null) closed[sock.closed] = (closed[sock.closed] || 0) + 1;
  await emitLine({
    event: "done",
    arrivals,
    sends,
    acks,
    closed,
    cpu_share: cpuShare(cpu0, t0),
    max_send_lag_ms: +maxLag.toFixed(3),
  });
  for (const sock of sockets) sock.close();
  await sleep(200);
  process.exit(0);
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
