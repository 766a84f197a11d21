// The JavaScript SDK against a real socialhub. Run by tests/e2e/test_sdk_js.py, which
// starts the server and passes:
//   SOCIALHUB_URL          the server
//   SOCIALHUB_CONTROL_URL  POST /restart (SIGTERM: sockets closed 1012, then started again)
//                          and POST /kill (SIGKILL: no close frame, then started again)
//   SOCIALHUB_ACCESS_TTL   the access token's lifetime in seconds (short, so refreshes are seen)
//   SOCIALHUB_MAIL_DIR     where the server writes its mail (.eml files)
// Node >= 20 with --experimental-websocket (the global WebSocket).

import { after, test } from "node:test";
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";

import {
  ApiError,
  ConnectionError,
  MemoryStorage,
  RequestTimeoutError,
  SignedOutError,
  Socialhub,
  tokenClaims,
} from "../../static/socialhub.js";

const BASE = process.env.SOCIALHUB_URL;
const CONTROL = process.env.SOCIALHUB_CONTROL_URL;
const TTL = Number(process.env.SOCIALHUB_ACCESS_TTL);
const MAIL_DIR = process.env.SOCIALHUB_MAIL_DIR;
const KEY = "socialhub.session";
// A 1x1 PNG.
const PNG = Buffer.from(
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
  "base64",
);
// The smallest offer the server's SDP check takes: one audio section.
const SDP = [
  "v=0",
  "o=- 0 0 IN IP4 127.0.0.1",
  "s=-",
  "t=0 0",
  "m=audio 9 UDP/TLS/RTP/SAVPF 111",
  "c=IN IP4 0.0.0.0",
  "a=rtpmap:111 opus/48000/2",
  "a=mid:0",
  "a=sendrecv",
  "",
].join("\r\n");

assert.ok(BASE && CONTROL && TTL, "run through tests/e2e/test_sdk_js.py");
assert.ok(globalThis.WebSocket, "run node with --experimental-websocket");

// -- helpers ----------------------------------------------------------------------------

/**
 * A WebSocket for one client whose network the test controls: `offline` makes new
 * sockets fail to connect (as a browser with no network), `drop(frame)` loses frames
 * the server sent on the way in.
 */
function makeNet() {
  const net = { offline: false, drop: null, opened: 0, current: null };
  // Close the current socket from this side, as a flaky network would.
  net.cut = () => net.current.real.close(4000, "cut by the test");
  net.WebSocket = class {
    constructor(url) {
      const real = new WebSocket(net.offline ? "ws://127.0.0.1:9/ws" : url);
      if (!net.offline) net.opened++;
      this.real = real;
      net.current = this;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      real.onopen = (e) => this.onopen && this.onopen(e);
      real.onerror = (e) => this.onerror && this.onerror(e);
      real.onclose = (e) => this.onclose && this.onclose(e);
      real.onmessage = (e) => {
        if (net.drop && net.drop(JSON.parse(e.data))) return;
        if (this.onmessage) this.onmessage(e);
      };
    }
    set binaryType(v) {
      this.real.binaryType = v;
    }
    send(data) {
      this.real.send(data);
    }
    close(code, reason) {
      this.real.close(code, reason);
    }
  };
  return net;
}

const clients = [];
after(() => {
  for (const c of clients) c.close();
});

function client(options = {}) {
  const net = makeNet();
  const sh = new Socialhub({
    baseUrl: BASE,
    storage: new MemoryStorage(),
    WebSocket: net.WebSocket,
    reconnectInitialDelay: 50,
    reconnectMaxDelay: 500,
    ...options,
  });
  sh.net = net;
  clients.push(sh);
  if (process.env.SDK_DEBUG) {
    const name = `client${clients.length}`;
    sh.on("state", (s) => console.log(Date.now() % 100000, name, "state", JSON.stringify(s)));
    sh.on("frame", (f) => console.log(Date.now() % 100000, name, "frame", JSON.stringify(f).slice(0, 160)));
  }
  return sh;
}

let count = 0;
function person() {
  const u = `sdk${process.pid % 10000}_${++count}_${Math.random().toString(36).slice(2, 6)}`;
  return { name: `User ${u}`, email: `${u}@example.test`, username: u, password: "correct horse 1" };
}

async function signedUp(options) {
  const sh = client(options);
  sh.person = person();
  await sh.auth.signup(sh.person);
  return sh;
}

function collect(sh, type) {
  const list = [];
  sh.on(type, (detail) => list.push(detail));
  return list;
}

async function until(condition, what, timeout = 10_000) {
  const end = Date.now() + timeout;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

async function control(action) {
  const r = await fetch(`${CONTROL}/${action}`, { method: "POST" });
  assert.equal(r.status, 204, `control ${action}: ${r.status}`);
}

async function readOtp(email) {
  let otp = null;
  await until(async () => {
    let names = [];
    try {
      names = await readdir(MAIL_DIR);
    } catch {
      return false;
    }
    for (const name of names.sort().reverse()) {
      const raw = await readFile(`${MAIL_DIR}/${name}`, "utf8");
      if (!raw.includes(`To: ${email}`)) continue;
      const body = raw.split(/\r?\n\r?\n/).slice(1).join("\n");
      const text = /code is \d{6}/.test(body) ? body : Buffer.from(body, "base64").toString("utf8");
      const m = /code is (\d{6})/.exec(text);
      if (m) {
        otp = m[1];
        return true;
      }
    }
    return false;
  }, `the reset mail to ${email}`);
  return otp;
}

const seqs = (frames) => frames.map((f) => f.message.seq);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

// -- the tests --------------------------------------------------------------------------

test("sign up, log in, and the socket's authenticate first", { timeout: 60_000 }, async () => {
  const a = await signedUp();
  assert.ok(a.signedIn);
  assert.equal(a.user.username, a.person.username);

  const b = client();
  const states = collect(b, "state");
  const r = await b.auth.login(a.person.username, a.person.password);
  assert.equal(r.user.id, a.user.id);
  assert.equal(JSON.parse(b.storage.get(KEY)).refresh_token, r.refresh_token);
  const session = await b.connect();
  assert.equal(session.user_id, a.user.id);
  assert.ok(session.session_id);
  assert.equal(b.state, "open");
  assert.deepEqual(
    states.map((s) => s.state),
    ["connecting", "authenticating", "open"],
  );
  assert.deepEqual(await b.connect(), session, "connect() again is the same socket");
  const me = await b.users.me();
  assert.equal(me.email, a.person.email);

  // A client made on the same storage (a reload) starts signed in.
  const c = client({ storage: b.storage });
  await c.ready;
  assert.equal(c.user.id, a.user.id);
  assert.equal((await c.connect()).user_id, a.user.id);
  c.disconnect();
  assert.equal(c.state, "closed");
});

test("socket requests pair with their replies by ref; a missing reply times out", { timeout: 60_000 }, async () => {
  const a = await signedUp();
  await a.connect();
  const replies = await Promise.all(range(1, 8).map(() => a.rpc({ type: "ping" })));
  assert.ok(replies.every((r) => r.type === "pong"));
  assert.equal(new Set(replies.map((r) => r.ref)).size, 8);

  a.net.drop = (f) => f.type === "pong";
  await assert.rejects(
    a.rpc({ type: "ping" }, { timeout: 300 }),
    (e) => e instanceof RequestTimeoutError && e.code === "timeout",
  );
  a.net.drop = null;
  assert.equal((await a.rpc({ type: "ping" })).type, "pong", "the socket works on");

  // An `error` reply rejects with the server's code (and fields).
  await assert.rejects(
    a.rpc({ type: "join_room", room_id: "12345" }),
    (e) => e instanceof ApiError && e.code === "not_found" && e.status === 0,
  );
  await assert.rejects(a.rpc({ type: "no_such_frame" }), (e) => e instanceof ApiError && e.code === "bad_request");
  await assert.rejects(
    a.rpc({ type: "send_message", room_id: "1", body: "", client_msg_id: "x" }),
    (e) => e instanceof ApiError && e.code === "bad_request" && /body/.test(e.message),
  );
  assert.equal(a.state, "open");

  // Not connected: a request fails at once, typed.
  const b = await signedUp();
  await assert.rejects(b.rpc({ type: "ping" }), (e) => e instanceof ConnectionError && e.code === "disconnected");
});

test("REST errors carry the server's status, code, message and fields", { timeout: 60_000 }, async () => {
  const anon = client();
  await assert.rejects(
    anon.auth.login("nobody_here_at_all", "wrong password"),
    (e) => e instanceof ApiError && e.status === 401 && e.code === "unauthenticated" && e.message.length > 0,
  );
  await assert.rejects(
    anon.auth.signup({ ...person(), email: "not an email" }),
    (e) => e instanceof ApiError && e.status === 422 && e.code === "validation_error" && "email" in e.fields,
  );
  const b = await signedUp();
  await assert.rejects(
    anon.auth.signup({ ...person(), username: b.person.username }),
    (e) => e instanceof ApiError && e.status === 409 && e.code === "conflict",
  );
  await assert.rejects(b.users.get("@no_such_user_zz"), (e) => e instanceof ApiError && e.code === "not_found");
  await assert.rejects(b.users.follow(b.user.id), (e) => e instanceof ApiError && e.status === 422);
  await assert.rejects(anon.users.me(), (e) => e instanceof SignedOutError && e.code === "unauthenticated");
  await assert.rejects(anon.connect(), (e) => e instanceof SignedOutError);
  assert.equal(anon.state, "closed");
  const nowhere = new Socialhub({ baseUrl: "http://127.0.0.1:9", storage: new MemoryStorage() });
  await assert.rejects(nowhere.auth.login("x", "y"), (e) => e instanceof ConnectionError && e.code === "network");
});

test("chat: messages once and in order, idempotent sends, typing, read receipts, presence, history", { timeout: 60_000 }, async () => {
  const a = await signedUp();
  const b = await signedUp();
  await Promise.all([a.connect(), b.connect()]);
  const room = await a.chat.direct(b.user.id);
  assert.equal(room.kind, "direct");
  assert.equal((await b.chat.direct(a.user.id)).id, room.id, "one direct room per pair");
  const got = collect(b, "new_message");
  await a.chat.join(room.id);
  const joined = await b.chat.join(room.id);
  assert.equal(joined.room_id, room.id);

  const m1 = await a.chat.send(room.id, "one");
  assert.equal(m1.seq, 1);
  assert.equal(m1.body, "one");
  const again = await a.chat.send(room.id, "one", { clientMsgId: m1.client_msg_id });
  assert.equal(again.id, m1.id, "the same client_msg_id is stored once");
  await a.chat.send(room.id, "two");
  await a.chat.send(room.id, "three");
  await until(() => got.length >= 3, "three messages");
  await sleep(200);
  assert.deepEqual(seqs(got), [1, 2, 3]);
  assert.deepEqual(
    got.map((f) => f.message.body),
    ["one", "two", "three"],
  );
  assert.equal(b.chat.lastSeq(room.id), 3);

  const typing = b.waitFor("typing", (f) => f.room_id === room.id && f.user_id === a.user.id && f.state === true);
  assert.equal(a.chat.typing(room.id, true), true);
  await typing;
  const read = a.waitFor("read", (f) => f.room_id === room.id && f.user_id === b.user.id && f.seq === 3);
  await b.chat.markRead(room.id, 3);
  await read;

  const online = a.waitFor("presence", (f) => f.user_id === b.user.id && f.status === "online");
  await a.presence.subscribe([b.user.id]);
  await online;
  assert.equal((await a.presence.get(b.user.id)).status, "online");

  const page = await b.chat.history(room.id, { limit: 2 });
  assert.deepEqual(
    page.items.map((m) => m.seq),
    [3, 2],
  );
  assert.ok(page.next);
  const pager = b.chat.historyPager(room.id, { limit: 2 });
  assert.deepEqual(
    (await pager.next()).map((m) => m.seq),
    [3, 2],
  );
  assert.deepEqual(
    (await pager.next()).map((m) => m.seq),
    [1],
  );
  assert.ok(pager.done);
  assert.deepEqual(await pager.next(), []);

  const rooms = await b.chat.rooms();
  assert.ok(rooms.items.some((r) => r.id === room.id));
  const group = await a.chat.group("team", [b.user.id]);
  assert.equal(group.kind, "group");
  assert.equal(group.name, "team");
});

test("after a server restart (close 1012) every missed message arrives once and in order", { timeout: 60_000 }, async () => {
  const a = await signedUp();
  const b = await signedUp();
  await Promise.all([a.connect(), b.connect()]);
  const room = await a.chat.direct(b.user.id);
  const gotA = collect(a, "new_message");
  const gotB = collect(b, "new_message");
  const statesA = collect(a, "state");
  const resumed = collect(a, "resumed");
  const joinedA = collect(a, "joined");
  await a.chat.join(room.id);
  await b.chat.join(room.id);
  await b.chat.send(room.id, "m1");
  await b.chat.send(room.id, "m2");
  await until(() => gotA.length === 2, "m1 and m2 at a");

  // a loses its network; the server restarts under both.
  a.net.offline = true;
  const bBack = b.waitFor("authenticated", () => true, 60_000);
  await control("restart");
  await bBack;
  assert.ok(
    statesA.some((s) => s.state === "reconnecting" && s.code === 1012),
    JSON.stringify(statesA),
  );
  // b's room was resumed by itself: it sends while a is away, and a queues one of its own.
  for (const body of ["m3", "m4", "m5", "m6", "m7"]) await b.chat.send(room.id, body);
  const queued = a.chat.send(room.id, "m8 from a");
  await sleep(300);
  assert.notEqual(a.state, "open");

  a.net.offline = false;
  const m8 = await queued;
  assert.equal(m8.seq, 8);
  await until(() => gotA.length >= 8 && gotB.length >= 8, "eight messages at both");
  await sleep(300); // nothing more comes
  assert.deepEqual(seqs(gotA), range(1, 8));
  assert.deepEqual(seqs(gotB), range(1, 8));
  assert.deepEqual(
    gotA.map((f) => f.message.body),
    ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8 from a"],
  );
  assert.deepEqual(
    resumed.map((r) => [r.room_id, r.since_seq]),
    [[room.id, 2]],
  );
  // Resumed by `since_seq` alone: joined once at first and once on the new socket, no
  // gap seen, no rejoin.
  assert.equal(joinedA.length, 2);
  assert.equal(a.state, "open");
});

test("after a server is killed (no close frame) the clients reconnect and resume", { timeout: 60_000 }, async () => {
  const a = await signedUp();
  const b = await signedUp();
  await Promise.all([a.connect(), b.connect()]);
  const room = await a.chat.direct(b.user.id);
  const gotA = collect(a, "new_message");
  const statesA = collect(a, "state");
  await a.chat.join(room.id);
  await b.chat.join(room.id);
  await b.chat.send(room.id, "before");
  await until(() => gotA.length === 1, "the first message");

  a.net.offline = true;
  const bBack = b.waitFor("authenticated", () => true, 60_000);
  await control("kill");
  await bBack;
  assert.ok(
    statesA.some((s) => s.state === "reconnecting" && s.code === 1006),
    JSON.stringify(statesA),
  );
  for (const body of ["after 1", "after 2", "after 3"]) await b.chat.send(room.id, body);
  a.net.offline = false;
  await until(() => gotA.length >= 4, "the messages sent while a was away");
  await sleep(300);
  assert.deepEqual(seqs(gotA), [1, 2, 3, 4]);
});

test("a message lost on the way is fetched again: the room is joined again from the last seq", { timeout: 60_000 }, async () => {
  const a = await signedUp();
  const b = await signedUp();
  await Promise.all([a.connect(), b.connect()]);
  const room = await a.chat.direct(b.user.id);
  const gotA = collect(a, "new_message");
  await a.chat.join(room.id);
  let dropped = 0;
  a.net.drop = (f) => f.type === "new_message" && f.message.seq === 2 && dropped++ === 0;
  for (const body of ["one", "two", "three", "four"]) await b.chat.send(room.id, body);
  await until(() => gotA.length >= 4, "four messages");
  await sleep(300);
  assert.equal(dropped >= 1, true, "the frame was dropped");
  assert.deepEqual(seqs(gotA), [1, 2, 3, 4]);
});

test("the access token is refreshed before it expires; the refresh token rotates and is stored", { timeout: 60_000 }, async () => {
  const a = await signedUp();
  await a.connect();
  const states = collect(a, "state");
  const first = a.token;
  const firstRefresh = JSON.parse(a.storage.get(KEY)).refresh_token;
  const claims = tokenClaims(first);
  assert.equal(claims.exp - claims.iat, TTL);

  const tokens = await a.waitFor("tokens", () => true, TTL * 1000);
  assert.ok(Date.now() / 1000 < claims.exp, "refreshed before the old token expired");
  assert.notEqual(tokens.token, first);
  assert.notEqual(tokens.refresh_token, firstRefresh);
  assert.equal(a.token, tokens.token);
  assert.equal(JSON.parse(a.storage.get(KEY)).refresh_token, tokens.refresh_token);

  // Past the first token's expiry the REST calls and the socket work on, the socket never dropped.
  await sleep(Math.max(0, claims.exp * 1000 - Date.now()) + 500);
  assert.equal((await a.users.me()).id, a.user.id);
  assert.equal((await a.rpc({ type: "ping" })).type, "pong");
  assert.deepEqual(states, []);
});

test("a 401 refreshes once and retries; a refused refresh token signs out", { timeout: 60_000 }, async () => {
  const a = await signedUp();
  const refreshToken = JSON.parse(a.storage.get(KEY)).refresh_token;
  await a.setSession({ token: "not.a.token", refresh_token: refreshToken });
  const me = await a.users.me();
  assert.equal(me.id, a.user.id);
  assert.notEqual(a.token, "not.a.token");

  const out = a.waitFor("signed_out");
  await a.setSession({ token: "not.a.token", refresh_token: "not-a-refresh-token" });
  await assert.rejects(a.users.me(), (e) => e instanceof SignedOutError);
  assert.equal((await out).reason, "refresh_failed");
  assert.equal(a.signedIn, false);
  assert.equal(a.storage.get(KEY), null);
});

test("two clients on one storage (two tabs) never reuse a rotated refresh token", { timeout: 60_000 }, async () => {
  const x = await signedUp();
  const y = client({ storage: x.storage });
  await y.ready;
  await x.refresh();
  await y.refresh(); // takes the pair x stored instead of spending its old one
  assert.equal(y.token, x.token);
  assert.equal((await x.users.me()).id, x.user.id);
  assert.equal((await y.users.me()).id, x.user.id);
});

test("logout ends the socket; a session ended elsewhere signs the socket's client out", { timeout: 60_000 }, async () => {
  const a = await signedUp();
  await a.connect();
  const out = a.waitFor("signed_out");
  await a.auth.logout();
  assert.equal((await out).reason, "logout");
  assert.equal(a.state, "closed");
  assert.equal(a.signedIn, false);

  const b = await signedUp();
  const bId = b.user.id;
  await b.connect();
  const bOut = b.waitFor("signed_out", () => true, 20_000);
  const other = client();
  await other.auth.forgotPassword(b.person.email);
  const otp = await readOtp(b.person.email);
  await other.auth.resetPassword({ email: b.person.email, otp, new_password: "another horse 2" });
  assert.equal((await bOut).reason, "refresh_failed");
  assert.equal(b.state, "closed");
  assert.equal((await other.auth.login(b.person.username, "another horse 2")).user.id, bId);
  assert.equal(b.user, null);
});

test("posts: upload with progress, likes, comments, feed pages, live notifications", { timeout: 60_000 }, async () => {
  const a = await signedUp();
  const b = await signedUp();
  await a.connect();
  const notes = collect(a, "notification");
  assert.deepEqual(await b.users.follow(a.user.id), { following: true });
  await until(() => notes.some((n) => n.notification.type === "follow"), "the follow notification");
  assert.ok((await a.notifications.unreadCount()) >= 1);
  assert.ok((await a.users.followers(a.user.id)).items.some((u) => u.id === b.user.id));
  assert.ok((await b.users.following("me")).items.some((u) => u.id === a.user.id));
  assert.equal((await b.users.get(`@${a.person.username}`)).following, true);

  const progress = [];
  const post = await a.posts.create({
    content: "hello from the sdk",
    files: [new Blob([PNG], { type: "image/png" })],
    onProgress: (p) => progress.push(p),
  });
  assert.equal(post.content, "hello from the sdk");
  assert.equal(post.media.length, 1);
  assert.equal(post.media[0].content_type, "image/png");
  assert.equal(progress.at(-1).fraction, 1);
  const key = `key-${Date.now()}`;
  const once = await a.posts.create({ content: "once", idempotencyKey: key });
  assert.equal((await a.posts.create({ content: "once", idempotencyKey: key })).id, once.id);

  assert.deepEqual(await b.posts.like(post.id), { liked: true, likes_count: 1 });
  const comment = await b.posts.comment(post.id, "nice");
  assert.ok((await a.posts.comments(post.id)).items.some((c) => c.id === comment.id));
  await until(() => ["like", "comment"].every((t) => notes.some((n) => n.notification.type === t)), "like, comment");
  const listed = await a.notifications.list();
  assert.ok(listed.items.some((n) => n.type === "follow"));
  await a.notifications.markAllRead();
  assert.equal(await a.notifications.unreadCount(), 0);

  await until(async () => (await b.feed.page()).items.some((p) => p.id === post.id), "the post in b's feed");
  const pager = b.feed.pager({ limit: 1 });
  const seen = [];
  while (!pager.done) seen.push(...(await pager.next()));
  assert.deepEqual(
    seen.map((p) => p.id),
    [once.id, post.id],
  );

  const user = await a.users.updateProfile({ bio: "hi", avatar: new Blob([PNG], { type: "image/png" }) });
  assert.equal(user.bio, "hi");
  assert.ok(user.avatar_url);
  assert.equal((await a.users.updateProfile({ name: "Renamed" })).name, "Renamed");
  assert.equal(await a.posts.delete(once.id), null);
  await assert.rejects(a.posts.get(once.id), (e) => e instanceof ApiError && e.status === 404);
});

test("calls: ICE servers and signaling both ways", { timeout: 60_000 }, async () => {
  const a = await signedUp();
  const b = await signedUp();
  await Promise.all([a.connect(), b.connect()]);
  const ice = await a.calls.iceServers();
  assert.ok(Array.isArray(ice.ice_servers));
  assert.equal(typeof ice.ttl, "number");

  const incoming = b.waitFor("call_incoming");
  const call = await a.calls.invite(b.user.id, { media: "audio", sdp: SDP });
  assert.equal(call.state, "ringing");
  const ring = await incoming;
  assert.equal(ring.call.id, call.id);
  assert.equal(ring.sdp, SDP);
  const answered = a.waitFor("call_answered", (f) => f.call_id === call.id);
  const active = await b.calls.accept(call.id, SDP);
  assert.equal(active.state, "active");
  assert.equal((await answered).sdp, SDP);
  const candidate = { candidate: "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", sdpMid: "0", sdpMLineIndex: 0 };
  const relayed = b.waitFor("call_candidate", (f) => f.call_id === call.id);
  await a.calls.candidate(call.id, candidate);
  assert.deepEqual((await relayed).candidate, candidate);
  const endedA = a.waitFor("call_ended", (f) => f.call_id === call.id);
  const endedB = b.waitFor("call_ended", (f) => f.call_id === call.id);
  await b.calls.hangup(call.id);
  assert.equal((await endedA).reason, "hangup");
  assert.equal((await endedB).reason, "hangup");

  const ring2 = b.waitFor("call_incoming");
  const second = await a.calls.invite(b.user.id, { media: "video", sdp: SDP });
  await ring2;
  const rejected = a.waitFor("call_ended", (f) => f.call_id === second.id);
  await b.calls.reject(second.id);
  assert.equal((await rejected).reason, "rejected");
  const history = await a.calls.history();
  assert.deepEqual(
    history.items.map((c) => c.id),
    [second.id, call.id],
  );
});

test("a burst of frames is paced under the server's frame limit: 80 rooms joined, and resumed", { timeout: 60_000 }, async () => {
  const a = await signedUp();
  const b = await signedUp();
  const rooms = [];
  for (let i = 0; i < 80; i++) rooms.push(await a.chat.group(`room ${i}`, [b.user.id]));
  await a.connect();
  const errors = [];
  a.on("frame", (f) => f.type === "error" && errors.push(f));
  const joined = collect(a, "joined");
  await Promise.all(rooms.map((r) => a.chat.join(r.id)));
  for (let i = 0; i < 100; i++) a.chat.typing(rooms[0].id, i % 2 === 0);
  assert.equal(joined.length, 80);

  a.net.cut();
  await until(() => joined.length >= 160, "every room joined again", 30_000);
  await sleep(500);
  assert.deepEqual(errors, []);
  assert.equal(a.joinedRooms().size, 80);
  // And the rooms stream: a message in the last one arrives.
  const last = rooms.at(-1);
  const got = a.waitFor("new_message", (f) => f.message.room_id === last.id);
  await a.chat.send(last.id, "still here");
  assert.equal((await got).message.body, "still here");
});
