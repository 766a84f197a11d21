// The stack socialhub replaces, reduced to its chat path, for `python -m bench vs-socketio`:
// Socket.IO 4 with the Redis adapter, history in a Redis list per room.
//
// Per message it does what the original chat service did, and nothing more:
//   authenticate {token}  -> HS256 JWT checked with socialhub's secret and claims
//                            (sub, sid, exp, iat, jti), so socialhub's tokens work here;
//                            `authenticated {user_id, session_id}`, or `error` and a disconnect
//   join_room {room_id}   -> socket.join(room), `joined {room_id}` (no membership check:
//                            the original had none)
//   send_message {room_id, body, client_msg_id, ref}
//                         -> RPUSH of the message's JSON to `<prefix>room:<id>:messages`,
//                            then `new_message {message}` to the room through the Redis
//                            adapter, and the ack callback `{ref, message}` to the sender
// No seq, no idempotency, no membership, no notifications, no durability beyond Redis.
//
// Settings from the environment: PORT, REDIS_URL, KEY_PREFIX, JWT_SECRET. Prints
// `listening <port>` once Redis is connected and the port is open; GET /healthz answers 200.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");
const jwt = require("jsonwebtoken");

const PORT = Number(process.env.PORT || 3000);
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379/0";
const KEY_PREFIX = process.env.KEY_PREFIX || "sio:";
const JWT_SECRET = process.env.JWT_SECRET;
// socialhub's: the first frame within 10 s, 5 s of clock skew, bodies of 1..4000 chars.
const AUTH_TIMEOUT_MS = 10_000;
const LEEWAY_S = 5;
const MAX_BODY = 4000;
const REQUIRED_CLAIMS = ["sub", "sid", "exp", "iat", "jti"];

if (!JWT_SECRET) {
  console.error("JWT_SECRET is not set");
  process.exit(2);
}

function verify(token) {
  if (typeof token !== "string" || !token || token.length > 2048) return null;
  try {
    const claims = jwt.verify(token, JWT_SECRET, { algorithms: ["HS256"], clockTolerance: LEEWAY_S });
    return REQUIRED_CLAIMS.every((c) => claims[c] !== undefined) ? claims : null;
  } catch {
    return null;
  }
}

async function main() {
  const pub = createClient({ url: REDIS_URL });
  const sub = pub.duplicate();
  for (const client of [pub, sub]) client.on("error", (err) => console.error("redis:", err.message));
  await Promise.all([pub.connect(), sub.connect()]);

  const httpServer = http.createServer((req, res) => {
    res.writeHead(req.url === "/healthz" ? 200 : 404, { "content-type": "text/plain" });
    res.end(req.url === "/healthz" ? "ok" : "not found");
  });
  // Socket.IO's defaults otherwise (no permessage-deflate, as socialhub; 1 MB max buffer).
  const io = new Server(httpServer, { adapter: createAdapter(pub, sub, { key: `${KEY_PREFIX}socket.io` }) });
  let counter = 0;

  io.on("connection", (socket) => {
    let user = null;
    const timer = setTimeout(() => user || socket.disconnect(true), AUTH_TIMEOUT_MS);

    socket.on("authenticate", (data) => {
      const claims = verify(data && data.token);
      if (!claims) {
        socket.emit("error", { code: "unauthenticated", ref: data && data.ref });
        socket.disconnect(true);
        return;
      }
      clearTimeout(timer);
      user = { id: String(claims.sub), session: String(claims.sid) };
      socket.emit("authenticated", { user_id: user.id, session_id: user.session });
    });

    socket.on("join_room", (data) => {
      if (!user) return socket.emit("error", { code: "unauthenticated" });
      if (!data || typeof data.room_id !== "string") return socket.emit("error", { code: "bad_request" });
      socket.join(data.room_id);
      socket.emit("joined", { room_id: data.room_id });
    });

    socket.on("send_message", async (data, ack) => {
      const reply = typeof ack === "function" ? ack : (answer) => socket.emit("ack", answer);
      if (!user) return reply({ type: "error", code: "unauthenticated" });
      const ok =
        data &&
        typeof data.room_id === "string" &&
        typeof data.body === "string" &&
        data.body.length >= 1 &&
        data.body.length <= MAX_BODY;
      if (!ok) return reply({ type: "error", code: "bad_request", ref: data && data.ref });
      const message = {
        id: `${Date.now()}-${process.pid}-${++counter}`,
        room_id: data.room_id,
        sender: { id: user.id },
        body: data.body,
        client_msg_id: data.client_msg_id,
        created_at: new Date().toISOString(),
      };
      try {
        await pub.rPush(`${KEY_PREFIX}room:${data.room_id}:messages`, JSON.stringify(message));
      } catch (err) {
        return reply({ type: "error", code: "unavailable", ref: data.ref });
      }
      io.to(data.room_id).emit("new_message", { message });
      reply({ type: "ack", ref: data.ref, message });
    });
  });

  httpServer.listen(PORT, "127.0.0.1", () => {
    console.log(`listening ${PORT}`);
  });

  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
    setTimeout(() => process.exit(0), 5000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
