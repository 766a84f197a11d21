// Start-up: the routes, the session, the socket and the live parts of the frame
// (connection dot, notification and chat badges, incoming calls).

import { forgotScreen, loginScreen, resetScreen, signupScreen } from "./auth.js";
import { startCalls } from "./calls.js";
import { roomScreen, roomsScreen, startChat } from "./chat.js";
import { me, sh } from "./client.js";
import { errorText, toast } from "./dom.js";
import { feedScreen } from "./feed.js";
import { fillIcons } from "./icons.js";
import { notificationsScreen, setUnread, startBadge } from "./notifications.js";
import { followListScreen, postScreen, profileScreen, settingsScreen } from "./profile.js";
import { go, rerender, route, setGuard, start } from "./router.js";

const app = document.getElementById("app");
const nav = document.querySelector('[data-testid="nav"]');
const find = document.querySelector('[data-testid="find-user-form"]');
const conn = document.querySelector('[data-testid="connection-status"]');

route("/login", loginScreen, { name: "login", public: true });
route("/signup", signupScreen, { name: "signup", public: true });
route("/forgot", forgotScreen, { name: "forgot", public: true });
route("/reset", resetScreen, { name: "reset", public: true });
route("/feed", feedScreen, { name: "feed" });
route("/me", (view) => profileScreen(view, { name: "me" }), { name: "profile" });
route("/u/:name", profileScreen, { name: "profile" });
route("/u/:name/followers", (view, p) => followListScreen(view, { ...p, kind: "followers" }), { name: "follow-list" });
route("/u/:name/following", (view, p) => followListScreen(view, { ...p, kind: "following" }), { name: "follow-list" });
route("/settings", settingsScreen, { name: "settings" });
route("/post/:id", postScreen, { name: "post" });
route("/notifications", notificationsScreen, { name: "notifications" });
route("/chat", roomsScreen, { name: "rooms" });
route("/chat/:id", roomScreen, { name: "room" });
route("/", () => go(sh.signedIn ? "/feed" : "/login", { replace: true }), { name: "", public: true });

setGuard((r) => {
  if (!r.isPublic && !sh.signedIn) return "/login";
  if (r.isPublic && r.name && r.name !== "reset" && sh.signedIn) return "/feed";
  return null;
});

// -- the signed-in frame --------------------------------------------------------------

let stops = [];

function signedIn() {
  const user = me();
  if (user) app.dataset.userId = user.id;
  nav.hidden = false;
  find.hidden = false;
  if (stops.length) return;
  stops = [startBadge(), startChat(), startCalls()];
  sh.connect().catch((err) => {
    if (err.code !== "unauthenticated") toast(errorText(err), "error");
  });
  sh.auth.me().then((u) => (app.dataset.userId = u.id)).catch(() => {});
}

function signedOut() {
  for (const stop of stops) stop();
  stops = [];
  delete app.dataset.userId;
  nav.hidden = true;
  find.hidden = true;
  setUnread(0);
}

sh.on("state", ({ state }) => {
  const shown = state === "authenticating" ? "connecting" : state === "idle" ? "closed" : state;
  conn.dataset.state = shown;
  const label = { open: "Online", connecting: "Connecting…", reconnecting: "Reconnecting…", closed: "Offline" }[shown] || shown;
  conn.title = label;
  // Words only when something is wrong; the green dot says "live" by itself.
  conn.textContent = shown === "open" || !sh.signedIn ? "" : label;
  conn.setAttribute("aria-label", label);
});

sh.on("tokens", (tokens) => {
  if (tokens && !stops.length) signedIn();
});

sh.on("signed_out", ({ reason }) => {
  signedOut();
  if (reason !== "logout") toast("Your session ended. Please log in again.", "error");
  go("/login");
});

document.querySelector('[data-testid="nav-logout"]').addEventListener("click", async (ev) => {
  const button = ev.currentTarget;
  button.disabled = true;
  try {
    await sh.auth.logout();
  } catch (err) {
    toast(errorText(err), "error");
  } finally {
    button.disabled = false;
  }
});

find.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = find.querySelector("input");
  const error = find.querySelector('[data-testid="find-user-error"]');
  const name = input.value.trim().replace(/^@/, "");
  error.textContent = "";
  if (!name) return;
  try {
    const user = await sh.users.get(`@${name}`);
    input.value = "";
    go(`/u/${user.username}`);
  } catch (err) {
    error.textContent = err.status === 404 || err.status === 422 ? `No user @${name}` : errorText(err);
    setTimeout(() => (error.textContent = ""), 4000);
  }
});

fillIcons();
await sh.ready;
if (sh.signedIn) signedIn();
start();
// A route guarded while the session loaded: show it again now.
if (sh.signedIn && location.hash === "#/login") rerender();
