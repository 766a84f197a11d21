// Profiles: the header with counts, follow/unfollow, presence, message and call buttons;
// the user's posts; follower and following lists; editing one's own profile and avatar.

import { startCall } from "./calls.js";
import { me, sh } from "./client.js";
import { ago, avatar, busy, displayName, errorText, field, h, showFieldErrors, toast, whenVisible } from "./dom.js";
import { icon } from "./icons.js";
import { postCard } from "./post.js";
import { go } from "./router.js";

function userRef(name) {
  return /^\d+$/.test(name) ? name : `@${name.replace(/^@/, "")}`;
}

function presenceText(p) {
  if (!p) return "";
  if (p.status === "online") return "Online";
  if (!p.last_seen) return "Offline";
  const when = ago(p.last_seen);
  return when === "now" ? "Last seen just now" : `Last seen ${when}${/^\d/.test(when) ? " ago" : ""}`;
}

export function profileScreen(view, { name }) {
  const root = h("div", {});
  view.append(root);
  const offs = [];
  let stopScroll = () => {};
  (async () => {
    let user;
    try {
      user = await sh.users.get(name === "me" ? "me" : userRef(name));
    } catch (err) {
      root.append(h("p", { class: "error", role: "alert", testid: "profile-error" }, err.status === 404 ? "No such user." : errorText(err)));
      return;
    }
    const self = me();
    const mine = self && self.id === user.id;
    const presence = h("span", { class: "row muted", testid: "profile-presence", dataset: { status: "offline" } });
    const dot = h("span", { class: "dot", dataset: { status: "offline" }, "aria-hidden": "true" });
    const setPresence = (p) => {
      presence.dataset.status = dot.dataset.status = p.status;
      presence.replaceChildren(h("span", { class: "dot", dataset: { status: p.status }, "aria-hidden": "true" }), presenceText(p));
    };
    if (!mine) {
      offs.push(sh.on("presence", (p) => p.user_id === user.id && setPresence(p)));
      sh.users.presence(user.id).then(setPresence, () => {});
      sh.presence.subscribe([user.id]).catch(() => {});
    }

    const followers = h("a", { href: `#/u/${user.username}/followers`, testid: "profile-followers" }, h("b", {}, String(user.followers_count)), user.followers_count === 1 ? " follower" : " followers");
    const following = h("a", { href: `#/u/${user.username}/following`, testid: "profile-following" }, h("b", {}, String(user.following_count)), " following");
    const actions = h("div", { class: "row" });
    if (mine) {
      actions.append(h("a", { href: "#/settings", class: "button", testid: "profile-edit" }, "Edit profile"));
    } else {
      const follow = h("button", { type: "button", class: "primary", testid: "profile-follow" });
      const render = (on) => {
        follow.setAttribute("aria-pressed", String(on));
        follow.textContent = on ? "Unfollow" : "Follow";
        follow.classList.toggle("primary", !on);
      };
      render(!!user.following);
      follow.addEventListener("click", () =>
        busy(follow, async () => {
          const on = follow.getAttribute("aria-pressed") !== "true";
          try {
            const r = on ? await sh.users.follow(user.id) : await sh.users.unfollow(user.id);
            render(r.following);
            const fresh = await sh.users.get(user.id);
            followers.firstChild.textContent = String(fresh.followers_count);
          } catch (err) {
            toast(errorText(err), "error");
          }
        }),
      );
      const message = h("button", { type: "button", testid: "profile-message" }, "Message");
      message.addEventListener("click", () =>
        busy(message, async () => {
          try {
            const room = await sh.chat.direct(user.id);
            go(`/chat/${room.id}`);
          } catch (err) {
            toast(errorText(err), "error");
          }
        }),
      );
      const audio = h("button", { type: "button", testid: "profile-call-audio", "aria-label": `Voice call ${displayName(user)}` }, icon("phone", 18), "Call");
      const video = h("button", { type: "button", testid: "profile-call-video", "aria-label": `Video call ${displayName(user)}` }, icon("video", 18), "Video");
      audio.addEventListener("click", () => startCall(user, "audio"));
      video.addEventListener("click", () => startCall(user, "video"));
      actions.append(follow, message, audio, video);
    }
    const head = h(
      "section",
      { class: "card", testid: "profile", dataset: { userId: user.id } },
      h(
        "div",
        { class: "profile-head" },
        h("span", { class: "avatar-wrap", testid: "profile-avatar" }, avatar(user, 72), mine ? null : dot),
        h(
          "div",
          { class: "names" },
          h("h1", { testid: "profile-name" }, displayName(user)),
          h("div", { class: "muted row" }, h("span", { testid: "profile-username" }, `@${user.username}`),
            user.followed_by ? h("span", { class: "tag", testid: "profile-follows-you" }, "Follows you") : null),
          mine ? null : presence,
        ),
      ),
      user.bio ? h("p", { testid: "profile-bio" }, user.bio) : null,
      h("div", { class: "counts" },
        h("span", { testid: "profile-posts-count" }, h("b", {}, String(user.posts_count)), user.posts_count === 1 ? " post" : " posts"),
        followers, following),
      actions,
    );
    const posts = h("div", { testid: "profile-posts", "aria-label": `Posts by ${displayName(user)}` });
    const state = h("p", { class: "list-state" });
    const sentinel = h("div", { style: "height:1px" });
    root.append(head, h("h2", {}, "Posts"), posts, state, sentinel);
    const pager = sh.pager((q) => sh.posts.byUser(user.id, q), { limit: 20 });
    let busyLoading = false;
    const more = async () => {
      if (busyLoading || pager.done) return;
      busyLoading = true;
      state.textContent = "Loading…";
      try {
        for (const p of await pager.next()) posts.append(postCard(p));
        state.textContent = pager.done ? (posts.childElementCount ? "" : "No posts yet.") : "";
      } catch (err) {
        state.textContent = errorText(err);
      } finally {
        busyLoading = false;
      }
    };
    stopScroll = whenVisible(sentinel, more);
  })();
  return () => {
    stopScroll();
    for (const off of offs) off();
  };
}

export function followListScreen(view, { name, kind }) {
  const title = h("h1", {}, kind === "followers" ? "Followers" : "Following");
  const list = h("div", { testid: "follow-list", dataset: { kind }, class: "card" });
  const more = h("button", { type: "button", testid: "follow-list-more", hidden: true }, "Show more");
  const empty = h("p", { class: "list-state", testid: "follow-list-empty", hidden: true }, kind === "followers" ? "No followers yet." : "Not following anyone yet.");
  const back = h("a", { href: `#/u/${name}` }, `← @${name}`);
  view.append(back, title, list, empty, more);
  (async () => {
    let user;
    try {
      user = await sh.users.get(userRef(name));
    } catch (err) {
      list.replaceWith(h("p", { class: "error", role: "alert" }, errorText(err)));
      return;
    }
    title.textContent = `${kind === "followers" ? "Followers of" : "Followed by"} ${displayName(user)}`;
    const pager = sh.pager((q) => (kind === "followers" ? sh.users.followers(user.id, q) : sh.users.following(user.id, q)), { limit: 30 });
    const load = async () => {
      try {
        for (const u of await pager.next()) {
          list.append(
            h("a", { href: `#/u/${u.username}`, class: "user-row", testid: "follow-list-item", dataset: { userId: u.id } },
              avatar(u, 36), h("div", {}, h("b", {}, displayName(u)), h("div", { class: "muted" }, `@${u.username}`))),
          );
        }
        more.hidden = pager.done;
        empty.hidden = list.childElementCount > 0;
        list.hidden = list.childElementCount === 0;
      } catch (err) {
        toast(errorText(err), "error");
      }
    };
    more.addEventListener("click", () => busy(more, load));
    await load();
  })();
}

export function settingsScreen(view) {
  const user = me() || {};
  const name = h("input", { type: "text", testid: "settings-name", value: user.name || "", maxlength: 100, required: true });
  const bio = h("textarea", { testid: "settings-bio", maxlength: 500, rows: 3 });
  bio.value = user.bio || "";
  const fileInput = h("input", { type: "file", accept: "image/*", testid: "settings-avatar-input", class: "sr-only", tabindex: "-1" });
  const choose = h("button", { type: "button", testid: "settings-avatar-choose" }, "Change photo");
  const preview = h("span", { testid: "settings-avatar-preview", class: "avatar-wrap" }, avatar(user, 88));
  const progress = h("progress", { max: 100, value: 0, hidden: true, testid: "settings-progress", "aria-label": "Upload progress" });
  const error = h("p", { class: "error", testid: "settings-error", role: "alert" });
  const saved = h("p", { class: "ok", testid: "settings-saved", hidden: true, role: "status" }, "Saved.");
  const submit = h("button", { type: "submit", class: "primary", testid: "settings-submit" }, "Save");
  let file = null;
  let url = null;
  choose.addEventListener("click", () => fileInput.click());
  fileInput.addEventListener("change", () => {
    const f = fileInput.files[0];
    if (!f) return;
    error.textContent = "";
    if (!f.type.startsWith("image/")) {
      error.textContent = "Choose an image file.";
      return;
    }
    if (f.size > 10 * 1024 * 1024) {
      error.textContent = "That image is over 10 MB.";
      return;
    }
    file = f;
    if (url) URL.revokeObjectURL(url);
    url = URL.createObjectURL(f);
    preview.replaceChildren(h("img", { class: "avatar", src: url, alt: "New profile photo", style: "--s:88px" }));
  });
  const form = h(
    "form",
    { class: "card", testid: "settings-form" },
    h("h1", {}, "Edit profile"),
    h("div", { class: "row" }, preview, fileInput, choose),
    progress,
    field("Name", name, "name"),
    field("Bio", bio, "bio"),
    error,
    saved,
    h("div", { class: "actions" }, submit),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    error.textContent = "";
    saved.hidden = true;
    busy(submit, async () => {
      progress.hidden = !file;
      try {
        await sh.users.updateProfile({
          name: name.value.trim(),
          bio: bio.value,
          avatar: file || undefined,
          onProgress: file ? (p) => (progress.value = Math.round(p.fraction * 100)) : undefined,
        });
        file = null;
        saved.hidden = false;
        toast("Profile saved");
      } catch (err) {
        const hasFields = showFieldErrors(form, err);
        error.textContent = hasFields ? "Please fix the fields marked above." : errorText(err);
      } finally {
        progress.hidden = true;
      }
    });
  });
  view.append(form);
  sh.auth.me().then((fresh) => {
    if (!name.value) name.value = fresh.name;
    if (!bio.value) bio.value = fresh.bio;
  }, () => {});
  return () => url && URL.revokeObjectURL(url);
}

export function postScreen(view, { id }) {
  const root = h("div", {});
  view.append(root);
  sh.posts.get(id).then(
    (post) => root.append(postCard(post, { openComments: true, onDelete: () => go("/feed") })),
    (err) => root.append(h("p", { class: "error", role: "alert" }, err.status === 404 ? "This post is gone." : errorText(err))),
  );
}
