// Chat: the rooms list (unread counts, presence dots), one room (history paging, live
// messages, typing indicators, read receipts), and new direct or group rooms.
//
// Every room of the list is joined on the socket once the user is signed in (the SDK
// resumes them after each reconnect with `since_seq`), because a socket hears only the
// rooms it joined: that is how unread counts and the badge stay live.

import { me, sh } from "./client.js";
import { avatar, busy, clock, displayName, errorText, h, toast, updateTitle, uuid } from "./dom.js";
import { startCall } from "./calls.js";
import { icon } from "./icons.js";
import { roomSeen } from "./notifications.js";
import { go } from "./router.js";

const TYPING_SEND_EVERY = 4000; // the server ends `typing true` by itself after 6 s
const TYPING_IDLE = 3000;
const TYPING_SHOW_MAX = 7000;

// -- shared state -------------------------------------------------------------------------

/** room id -> Room (from GET /chat/rooms, kept live) */
const rooms = new Map();
/** user id -> "online" | "offline" */
const presence = new Map();
/** room id -> Map(user id -> seq read up to), from live `read` frames */
const readBy = new Map();
/** room id -> Map(user id -> expiry timer) */
const typers = new Map();
let openRoomId = null;
const changed = new Set(); // listeners: () => void, called when rooms/presence/typing change
let started = false;

function notify() {
  for (const fn of [...changed]) fn();
  renderBadge();
}

function renderBadge() {
  const badge = document.querySelector('[data-testid="chat-badge"]');
  if (!badge) return;
  let total = 0;
  for (const r of rooms.values()) total += r.unread_count || 0;
  badge.textContent = total > 99 ? "99+" : String(total);
  badge.hidden = total === 0;
  badge.closest("a")?.setAttribute("aria-label", total ? `Chat, ${total} unread` : "Chat");
  updateTitle();
}

function otherMembers(room) {
  const self = me();
  return room.members.filter((m) => !self || m.id !== self.id);
}

export function roomTitle(room) {
  if (room.name) return room.name;
  const others = otherMembers(room);
  return others.length ? others.map(displayName).join(", ") : "Just you";
}

function directPeer(room) {
  return room.kind === "direct" ? otherMembers(room)[0] || null : null;
}

async function follow(room) {
  // Join from the room's last seq: what came before is read from history on demand.
  const since = sh.chat.lastSeq(room.id) ?? room.last_seq ?? 0;
  try {
    await sh.chat.join(room.id, { sinceSeq: since });
  } catch (err) {
    if (err.code !== "timeout" && err.code !== "disconnected") console.warn("join_room", room.id, err.code);
  }
  const peer = directPeer(room);
  if (peer) sh.presence.subscribe([peer.id]).catch(() => {});
}

async function loadRooms() {
  const page = await sh.chat.rooms({ limit: 100 });
  for (const r of page.items) {
    const known = rooms.get(r.id);
    rooms.set(r.id, { ...r, unread_count: r.id === openRoomId ? 0 : r.unread_count });
    if (!known) follow(r);
  }
  notify();
  return page;
}

/** Add a room the user just opened or made, and follow it. */
function adopt(room) {
  if (!rooms.has(room.id)) {
    rooms.set(room.id, { ...room, unread_count: 0 });
    follow(room);
    notify();
  }
}

/** Start the live chat state for the signed-in user. Returns a stop function. */
export function startChat() {
  if (started) return () => {};
  started = true;
  const offs = [
    sh.on("new_message", ({ message }) => {
      const room = rooms.get(message.room_id);
      if (!room) {
        loadRooms().catch(() => {});
        return;
      }
      room.last_message = message;
      room.last_seq = Math.max(room.last_seq || 0, message.seq);
      const mine = me() && message.sender.id === me().id;
      if (!mine && message.room_id !== openRoomId) room.unread_count = (room.unread_count || 0) + 1;
      clearTyping(message.room_id, message.sender.id);
      notify();
    }),
    sh.on("presence", (p) => {
      presence.set(p.user_id, p.status);
      notify();
    }),
    sh.on("typing", ({ room_id, user_id, state }) => {
      if (me() && user_id === me().id) return;
      if (state) {
        let map = typers.get(room_id);
        if (!map) typers.set(room_id, (map = new Map()));
        clearTimeout(map.get(user_id));
        map.set(user_id, setTimeout(() => clearTyping(room_id, user_id), TYPING_SHOW_MAX));
        notify();
      } else clearTyping(room_id, user_id);
    }),
    sh.on("read", ({ room_id, user_id, seq }) => {
      if (me() && user_id === me().id) {
        // Read on another device of mine.
        const room = rooms.get(room_id);
        if (room && room.last_seq <= seq) room.unread_count = 0;
      } else {
        let map = readBy.get(room_id);
        if (!map) readBy.set(room_id, (map = new Map()));
        map.set(user_id, Math.max(map.get(user_id) || 0, seq));
      }
      notify();
    }),
    // A room made by someone else is heard of by a `message` notification (the server
    // notifies members with no socket in the room): load the list again.
    sh.on("notification", ({ notification }) => {
      if (notification.type === "message" && notification.room_id && !rooms.has(notification.room_id)) {
        loadRooms().catch(() => {});
      }
    }),
    sh.on("state", ({ state, previous }) => {
      if (state === "open" && previous !== "open") loadRooms().catch(() => {});
    }),
  ];
  loadRooms().catch(() => {});
  return () => {
    offs.forEach((off) => off());
    rooms.clear();
    presence.clear();
    readBy.clear();
    typers.clear();
    started = false;
    renderBadge();
  };
}

function clearTyping(roomId, userId) {
  const map = typers.get(roomId);
  if (!map || !map.has(userId)) return;
  clearTimeout(map.get(userId));
  map.delete(userId);
  notify();
}

function presenceDot(userId, testid) {
  const status = presence.get(userId) || "offline";
  return h("span", { class: "dot", testid, dataset: { status, userId }, title: status, role: "img", "aria-label": status });
}

// -- the rooms list ---------------------------------------------------------------------

function roomItem(room) {
  const peer = directPeer(room);
  const last = room.last_message;
  const unread = room.unread_count || 0;
  const typingNow = typers.get(room.id)?.size;
  return h(
    "a",
    { href: `#/chat/${room.id}`, class: "room-item", testid: "room-item", dataset: { roomId: room.id, kind: room.kind } },
    h("span", { class: "avatar-wrap" }, avatar(peer || { username: room.name || "group", name: roomTitle(room) }, 44),
      peer ? presenceDot(peer.id, "room-presence") : null),
    h(
      "span",
      { class: "text" },
      h("b", {}, roomTitle(room)),
      h("div", { class: "last" }, typingNow ? "typing…" : last ? `${last.sender.id === me()?.id ? "You: " : ""}${last.body}` : "No messages yet"),
    ),
    h("span", { class: "count", testid: "room-unread", hidden: unread === 0, "aria-label": `${unread} unread` }, String(unread)),
  );
}

export function roomsScreen(view) {
  const list = h("nav", { testid: "rooms", class: "card", "aria-label": "Rooms", style: "padding:0 10px" });
  const empty = h("p", { class: "list-state", testid: "rooms-empty", hidden: true }, "No conversations yet.");
  const members = h("input", { type: "text", testid: "new-room-members", placeholder: "alice, bob", required: true, autocapitalize: "none" });
  const name = h("input", { type: "text", testid: "new-room-name", placeholder: "optional, makes a group", maxlength: 100 });
  const error = h("p", { class: "error", testid: "new-room-error", role: "alert" });
  const submit = h("button", { type: "submit", class: "primary", testid: "new-room-submit" }, "Start chat");
  const form = h(
    "form",
    { class: "card", testid: "new-room-form", "aria-label": "New conversation" },
    h("h2", {}, "New conversation"),
    h("div", { class: "field" }, h("label", { for: "new-room-members" }, "Usernames (comma separated)"), members),
    h("div", { class: "field" }, h("label", { for: "new-room-name" }, "Group name"), name),
    error,
    h("div", { class: "actions" }, submit),
  );
  members.id = "new-room-members";
  name.id = "new-room-name";
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    error.textContent = "";
    busy(submit, async () => {
      const names = members.value.split(/[\s,]+/).map((s) => s.replace(/^@/, "")).filter(Boolean);
      if (!names.length) return;
      try {
        const ids = [];
        for (const n of names) {
          try {
            ids.push((await sh.users.get(`@${n}`)).id);
          } catch (err) {
            if (err.status === 404) throw new Error(`No user @${n}.`);
            throw err;
          }
        }
        const room = await sh.chat.createRoom({ members: ids, name: name.value.trim() || undefined });
        adopt(room);
        go(`/chat/${room.id}`);
      } catch (err) {
        error.textContent = errorText(err);
      }
    });
  });
  const render = () => {
    const sorted = [...rooms.values()].sort((a, b) => {
      const ta = a.last_message ? a.last_message.created_at : a.created_at;
      const tb = b.last_message ? b.last_message.created_at : b.created_at;
      return ta < tb ? 1 : -1;
    });
    list.replaceChildren(...sorted.map(roomItem));
    empty.hidden = sorted.length > 0;
    list.hidden = sorted.length === 0;
  };
  view.append(h("h1", {}, "Chat"), list, empty, form);
  render();
  changed.add(render);
  loadRooms().catch((err) => toast(errorText(err), "error"));
  return () => changed.delete(render);
}

// -- one room ---------------------------------------------------------------------------

export function roomScreen(view, { id }) {
  const roomId = id;
  openRoomId = roomId;
  const self = me();
  const title = h("h1", { testid: "room-title" }, "…");
  const back = h("a", { href: "#/chat", class: "button", testid: "room-back", "aria-label": "Back to rooms" }, icon("back", 18));
  const headExtra = h("span", { class: "row" });
  const more = h("button", { type: "button", class: "link", testid: "history-more", hidden: true }, "Load older messages");
  const messages = h("div", { class: "messages", testid: "messages", role: "log", "aria-label": "Messages", "aria-live": "polite", tabindex: "0" });
  const typing = h("div", { class: "typing", testid: "typing-indicator", "aria-live": "polite", hidden: true });
  const input = h("textarea", {
    testid: "chat-input", placeholder: "Message", maxlength: 4000, rows: 1, "aria-label": "Message", enterkeyhint: "send",
  });
  const send = h("button", { type: "submit", class: "primary", testid: "chat-send" }, "Send");
  const form = h("form", { class: "chat-form", testid: "chat-form" }, input, send);
  const root = h(
    "section",
    { class: "room", testid: "room", dataset: { roomId } },
    h("header", { class: "room-head" }, back, title, headExtra),
    h("div", { class: "messages-wrap", style: "display:contents" }, more),
    messages,
    typing,
    form,
  );
  view.append(root);

  /** seq -> element, and client_msg_id -> element for messages still sending */
  const bySeq = new Map();
  const sending = new Map();
  let room = rooms.get(roomId) || null;
  let historyNext = null;
  let myReadSeq = 0;

  const atBottom = () => messages.scrollHeight - messages.scrollTop - messages.clientHeight < 60;
  const toBottom = () => (messages.scrollTop = messages.scrollHeight);

  function receiptState(seq) {
    const map = readBy.get(roomId);
    if (map) for (const s of map.values()) if (s >= seq) return "read";
    return "sent";
  }

  function receipt(state) {
    const text = { sending: "Sending…", sent: "Sent", read: "Read", failed: "Not sent" }[state];
    return h("span", { class: "receipt", testid: "message-receipt", dataset: { state } }, text);
  }

  function messageEl(m, state) {
    const mine = self && m.sender.id === self.id;
    const showSender = !mine && room && room.kind === "group";
    return h(
      "div",
      {
        class: "message", testid: "message",
        dataset: { seq: m.seq ?? "", messageId: m.id ?? "", mine: String(!!mine), clientMsgId: m.client_msg_id },
      },
      showSender ? h("div", { class: "sender", testid: "message-sender" }, displayName(m.sender)) : null,
      !showSender ? h("span", { class: "sr-only", testid: "message-sender" }, `${mine ? "You" : displayName(m.sender)}: `) : null,
      h("div", { class: "body", testid: "message-body" }, m.body),
      h(
        "div",
        { class: "meta" },
        h("time", { datetime: m.created_at || "", testid: "message-time" }, m.created_at ? clock(m.created_at) : ""),
        mine ? [" · ", receipt(state || receiptState(m.seq))] : null,
      ),
    );
  }

  /** Put a stored message in seq order (once). */
  function place(m) {
    if (bySeq.has(m.seq)) return;
    const pendingEl = sending.get(m.client_msg_id);
    const el = messageEl(m);
    if (pendingEl && self && m.sender.id === self.id) {
      sending.delete(m.client_msg_id);
      pendingEl.remove();
    }
    bySeq.set(m.seq, el);
    // Find the first placed message with a larger seq.
    let before = null;
    for (const child of messages.children) {
      const s = Number(child.dataset.seq);
      if (child.dataset.seq !== "" && s > m.seq) {
        before = child;
        break;
      }
    }
    if (before) messages.insertBefore(el, before);
    else {
      // After the last stored one, but before any still sending.
      const firstSending = [...messages.children].find((c) => c.dataset.seq === "");
      messages.insertBefore(el, firstSending || null);
    }
  }

  function refreshReceipts() {
    for (const [seq, el] of bySeq) {
      const r = el.querySelector('[data-testid="message-receipt"]');
      if (!r) continue;
      const state = receiptState(seq);
      if (r.dataset.state !== state) r.replaceWith(receipt(state));
    }
  }

  function markRead() {
    if (document.hidden) return;
    let top = 0;
    for (const seq of bySeq.keys()) top = Math.max(top, seq);
    if (top > myReadSeq) {
      myReadSeq = top;
      sh.chat.markRead(roomId, top).then(() => roomSeen(), () => {});
    }
    const r = rooms.get(roomId);
    if (r && r.unread_count) {
      r.unread_count = 0;
      notify();
    }
  }

  function renderHeader() {
    room = rooms.get(roomId) || room;
    if (!room) return;
    title.textContent = roomTitle(room);
    const peer = directPeer(room);
    headExtra.replaceChildren();
    if (peer) {
      const status = presence.get(peer.id) || "offline";
      headExtra.append(
        h("span", { class: "dot", testid: "room-presence-dot", dataset: { status }, role: "img", "aria-label": status, title: status }),
        h("button", { type: "button", testid: "room-call-audio", "aria-label": `Voice call ${displayName(peer)}`, onclick: () => startCall(peer, "audio") }, icon("phone", 18)),
        h("button", { type: "button", testid: "room-call-video", "aria-label": `Video call ${displayName(peer)}`, onclick: () => startCall(peer, "video") }, icon("video", 18)),
      );
    } else {
      headExtra.append(h("span", { class: "muted" }, `${room.members.length} members`));
    }
  }

  function renderTyping() {
    const map = typers.get(roomId);
    const names = map ? [...map.keys()].map((uid) => displayName(room?.members.find((m) => m.id === uid))) : [];
    typing.hidden = names.length === 0;
    typing.textContent = names.length === 1 ? `${names[0]} is typing…` : names.length ? `${names.join(", ")} are typing…` : "";
  }

  const onChange = () => {
    renderHeader();
    renderTyping();
    refreshReceipts();
  };
  changed.add(onChange);

  const offMessage = sh.on("new_message", ({ message }) => {
    if (message.room_id !== roomId) return;
    const stick = atBottom() || (self && message.sender.id === self.id);
    place(message);
    if (stick) toBottom();
    markRead();
  });
  const onVisible = () => markRead();
  document.addEventListener("visibilitychange", onVisible);

  async function older() {
    if (!historyNext) return;
    const height = messages.scrollHeight;
    try {
      const page = await sh.chat.history(roomId, { limit: 30, before: historyNext });
      historyNext = page.next;
      more.hidden = !page.next;
      for (const m of page.items) place(m);
      messages.scrollTop += messages.scrollHeight - height; // keep the reader's place
    } catch (err) {
      toast(errorText(err), "error");
    }
  }
  more.addEventListener("click", () => busy(more, older));
  messages.addEventListener("scroll", () => {
    if (messages.scrollTop < 40 && historyNext && !more.disabled) busy(more, older);
  });

  (async () => {
    try {
      if (!room) {
        const page = await sh.chat.rooms({ limit: 100 });
        room = page.items.find((r) => r.id === roomId) || null;
        if (!room) {
          root.replaceChildren(h("p", { class: "error", role: "alert" }, "This conversation is not available."), back);
          return;
        }
        adopt(room);
      }
      renderHeader();
      const page = await sh.chat.history(roomId, { limit: 30 });
      historyNext = page.next;
      more.hidden = !page.next;
      for (const m of page.items) place(m);
      toBottom();
      // Follow live from the newest seen (a no-op when the room is already joined).
      const newest = page.items.length ? page.items[0].seq : 0;
      await sh.chat.join(roomId, { sinceSeq: sh.chat.lastSeq(roomId) ?? newest }).catch(() => {});
      markRead();
    } catch (err) {
      root.append(h("p", { class: "error", role: "alert" }, errorText(err)));
    }
  })();

  // -- writing ------------------------------------------------------------------------

  let lastTypingSent = 0;
  let idleTimer = null;
  function stopTyping() {
    clearTimeout(idleTimer);
    if (lastTypingSent) {
      lastTypingSent = 0;
      sh.chat.typing(roomId, false);
    }
  }
  input.addEventListener("input", () => {
    if (!input.value.trim()) return stopTyping();
    const now = Date.now();
    if (now - lastTypingSent > TYPING_SEND_EVERY) {
      lastTypingSent = now;
      sh.chat.typing(roomId, true);
    }
    clearTimeout(idleTimer);
    idleTimer = setTimeout(stopTyping, TYPING_IDLE);
  });
  input.addEventListener("blur", stopTyping);
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      form.requestSubmit();
    }
  });

  function deliver(body, clientMsgId, pendingEl) {
    sh.chat.send(roomId, body, { clientMsgId }).then(
      (message) => {
        place(message);
        toBottom();
      },
      (err) => {
        if (!sending.has(clientMsgId)) return;
        const r = pendingEl.querySelector('[data-testid="message-receipt"]');
        const retry = h("button", { type: "button", class: "link", testid: "message-retry" }, "Retry");
        retry.addEventListener("click", () => {
          retry.remove();
          r.replaceWith(receipt("sending"));
          deliver(body, clientMsgId, pendingEl);
        });
        const failed = receipt("failed");
        failed.title = errorText(err);
        r.replaceWith(failed);
        failed.after(" ", retry);
      },
    );
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = input.value.trim();
    if (!body) return;
    input.value = "";
    stopTyping();
    const clientMsgId = uuid();
    const pendingEl = messageEl({ body, client_msg_id: clientMsgId, sender: self, created_at: null }, "sending");
    sending.set(clientMsgId, pendingEl);
    messages.append(pendingEl);
    toBottom();
    deliver(body, clientMsgId, pendingEl);
    input.focus();
  });
  input.focus();

  return () => {
    stopTyping();
    if (openRoomId === roomId) openRoomId = null;
    changed.delete(onChange);
    offMessage();
    document.removeEventListener("visibilitychange", onVisible);
  };
}
