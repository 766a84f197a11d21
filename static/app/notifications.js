// Notifications: the list (reading it marks it read, as the API does) and the live
// unread badge in the navigation.

import { sh } from "./client.js";
import { avatar, busy, displayName, errorText, h, timeEl, toast, updateTitle } from "./dom.js";

const TEXT = {
  post: "'s post is published",
  comment: " commented on your post",
  like: " liked your post",
  follow: " followed you",
  message: " sent you a message",
  missed_call: " tried to call you",
};

function link(n) {
  if (n.type === "follow") return `#/u/${n.actor.username}`;
  if (n.type === "message" && n.room_id) return `#/chat/${n.room_id}`;
  if (n.type === "missed_call") return `#/u/${n.actor.username}`;
  if (n.post_id) return `#/post/${n.post_id}`;
  return `#/u/${n.actor.username}`;
}

export function describe(n) {
  if (n.type === "post") return "Your post is published";
  return `${displayName(n.actor)}${TEXT[n.type] || ` (${n.type})`}`;
}

// -- the badge --------------------------------------------------------------------------

let count = 0;
let badge = null;

function render() {
  badge = badge || document.querySelector('[data-testid="notif-badge"]');
  if (!badge) return;
  badge.textContent = count > 99 ? "99+" : String(count);
  badge.hidden = count === 0;
  const link = badge.closest("a");
  if (link) link.setAttribute("aria-label", count ? `Notifications, ${count} unread` : "Notifications");
  updateTitle();
}

/** The user read this room to its end: the server has marked its `message`
 * notifications read (those made while the page was closed too), so the badge is
 * counted again. */
export function roomSeen() {
  sh.notifications.unreadCount().then(setUnread, () => {});
}

export function setUnread(n) {
  count = Math.max(0, n);
  render();
}

/** Count from the server, then +1 per `notification` frame. Returns a stop function. */
export function startBadge() {
  const refresh = () => sh.notifications.unreadCount().then(setUnread, () => {});
  refresh();
  const offs = [
    sh.on("notification", ({ notification }) => {
      if (location.hash.startsWith("#/notifications")) return; // the open list shows it
      if (notification.type === "message" && notification.room_id) {
        if (location.hash === `#/chat/${notification.room_id}`) {
          sh.notifications.markRead([notification.id]).catch(() => {});
          return;
        }
      }
      setUnread(count + 1);
      if (notification.type !== "post") toast(describe(notification));
    }),
    // After a reconnect, frames sent while away are lost: ask again.
    sh.on("state", ({ state, previous }) => state === "open" && previous !== "open" && refresh()),
  ];
  return () => offs.forEach((off) => off());
}

// -- the list ---------------------------------------------------------------------------

function item(n) {
  return h(
    "a",
    { href: link(n), class: "notification", testid: "notification", dataset: { type: n.type, read: String(n.read), id: n.id } },
    avatar(n.actor, 36),
    h("span", { class: "text" }, describe(n)),
    timeEl(n.created_at, "notification-time"),
  );
}

export function notificationsScreen(view) {
  const list = h("div", { class: "card", testid: "notifications", "aria-label": "Notifications", style: "padding:0" });
  const more = h("button", { type: "button", testid: "notifications-more", hidden: true }, "Older");
  const empty = h("p", { class: "list-state", testid: "notifications-empty", hidden: true }, "No notifications yet.");
  view.append(h("h1", {}, "Notifications"), list, empty, more);
  const seen = new Set();
  const pager = sh.notifications.pager({ limit: 30 });
  const load = async () => {
    try {
      for (const n of await pager.next()) {
        if (seen.has(n.id)) continue;
        seen.add(n.id);
        list.append(item(n));
      }
      more.hidden = pager.done;
      empty.hidden = seen.size > 0;
      list.hidden = seen.size === 0;
      // The server marked these read; what is left unread is older than the page.
      sh.notifications.unreadCount().then(setUnread, () => {});
    } catch (err) {
      toast(errorText(err), "error");
    }
  };
  more.addEventListener("click", () => busy(more, load));
  load();
  const off = sh.on("notification", ({ notification }) => {
    if (seen.has(notification.id)) return;
    seen.add(notification.id);
    list.prepend(item({ ...notification, read: false }));
    empty.hidden = true;
    list.hidden = false;
    sh.notifications.markRead([notification.id]).catch(() => {});
  });
  return off;
}
