// One post card: author, text, media, likes and comments.

import { me, sh } from "./client.js";
import { avatar, busy, displayName, errorText, h, timeEl, toast } from "./dom.js";
import { icon } from "./icons.js";

function mediaEl(m) {
  const type = m.content_type || "";
  if (type.startsWith("image/")) {
    // The WebP previews (narrowest first) and the original, for the browser to pick the
    // smallest that fills the card: a feed of photos does not download the originals.
    const sources = [...(m.previews || []).map((p) => `${p.url} ${p.width}w`)];
    if (m.width) sources.push(`${m.url} ${m.width}w`);
    return h("img", {
      src: m.preview_url || m.url, alt: "", loading: "lazy", testid: "post-media",
      srcset: sources.length > 1 ? sources.join(", ") : undefined,
      sizes: sources.length > 1 ? "(min-width: 900px) 600px, 100vw" : undefined,
      width: m.width, height: m.height, dataset: { mediaId: m.id },
    });
  }
  if (type.startsWith("video/")) {
    return h("video", {
      src: m.url, controls: true, preload: "metadata", playsinline: true, testid: "post-media",
      poster: m.preview_url, dataset: { mediaId: m.id },
    });
  }
  if (type.startsWith("audio/")) {
    return h("audio", { src: m.url, controls: true, preload: "none", testid: "post-media", dataset: { mediaId: m.id } });
  }
  return h("a", { href: m.url, testid: "post-media" }, "Attachment");
}

function commentEl(c) {
  return h(
    "div",
    { class: "comment", testid: "comment", dataset: { commentId: c.id } },
    avatar(c.author, 28),
    h(
      "div",
      { class: "bubble" },
      h("a", { href: `#/u/${c.author.username}`, testid: "comment-author" }, h("b", {}, displayName(c.author))),
      " ",
      timeEl(c.created_at, "comment-time"),
      h("div", { testid: "comment-content" }, c.content),
    ),
  );
}

/** A post card. `onDelete(post)` is called after the author deleted it. */
export function postCard(post, { onDelete, openComments = false } = {}) {
  const self = me();
  const likeCount = h("span", { testid: "post-likes-count" }, String(post.likes_count));
  const like = h(
    "button",
    {
      type: "button", class: "post-like", testid: "post-like", "aria-pressed": String(!!post.liked),
      "aria-label": post.liked ? "Unlike" : "Like",
    },
    icon("heart", 18),
    likeCount,
  );
  like.addEventListener("click", () =>
    busy(like, async () => {
      const want = like.getAttribute("aria-pressed") !== "true";
      try {
        const state = want ? await sh.posts.like(post.id) : await sh.posts.unlike(post.id);
        like.setAttribute("aria-pressed", String(state.liked));
        like.setAttribute("aria-label", state.liked ? "Unlike" : "Like");
        likeCount.textContent = String(state.likes_count);
      } catch (err) {
        toast(errorText(err), "error");
      }
    }),
  );

  const commentsCount = h("span", { testid: "post-comments-count" }, String(post.comments_count));
  const commentsToggle = h(
    "button",
    { type: "button", testid: "post-comments-toggle", "aria-expanded": "false" },
    icon("comment", 18),
    h("span", { class: "sr-only" }, "Comments"),
    commentsCount,
  );
  let comments = null;
  commentsToggle.addEventListener("click", () => {
    if (comments) {
      comments.remove();
      comments = null;
      commentsToggle.setAttribute("aria-expanded", "false");
      return;
    }
    comments = commentsBox(post, () => {
      commentsCount.textContent = String(Number(commentsCount.textContent) + 1);
    });
    card.append(comments);
    commentsToggle.setAttribute("aria-expanded", "true");
  });

  const actions = h("div", { class: "post-actions" }, like, commentsToggle);
  if (self && post.author.id === self.id) {
    const del = h("button", { type: "button", testid: "post-delete", class: "link" }, "Delete");
    del.addEventListener("click", () =>
      busy(del, async () => {
        if (!confirm("Delete this post?")) return;
        try {
          await sh.posts.delete(post.id);
          card.remove();
          if (onDelete) onDelete(post);
        } catch (err) {
          toast(errorText(err), "error");
        }
      }),
    );
    actions.append(h("span", { class: "spacer" }), del);
  }

  const card = h(
    "article",
    { class: "card post", testid: "post", dataset: { postId: post.id }, "aria-label": `Post by ${displayName(post.author)}` },
    h(
      "header",
      { class: "post-head" },
      avatar(post.author, 40),
      h(
        "div",
        {},
        h("a", { href: `#/u/${post.author.username}`, testid: "post-author" }, displayName(post.author)),
        " ",
        h("span", { class: "handle" }, `@${post.author.username}`),
        h("div", { class: "when" }, h("a", { href: `#/post/${post.id}`, "aria-label": "Open post" }, timeEl(post.created_at, "post-time"))),
      ),
    ),
    post.content ? h("div", { class: "post-content", testid: "post-content" }, post.content) : null,
    post.media && post.media.length ? h("div", { class: "media" }, post.media.map(mediaEl)) : null,
    actions,
  );
  if (openComments) commentsToggle.click();
  return card;
}

function commentsBox(post, onAdded) {
  const list = h("div", { class: "comments-list" });
  const more = h("button", { type: "button", class: "link", testid: "comments-more", hidden: true }, "More comments");
  const input = h("input", {
    type: "text", testid: "comment-input", placeholder: "Write a comment…", maxlength: 2000, required: true,
    "aria-label": "Write a comment",
  });
  const submit = h("button", { type: "submit", testid: "comment-submit" }, "Send");
  const form = h("form", { class: "comment-form", testid: "comment-form" }, input, submit);
  const box = h("section", { class: "comments", testid: "comments", "aria-label": "Comments" }, list, more, form);
  let after = null;
  const seen = new Set();

  async function load() {
    try {
      const page = await sh.posts.comments(post.id, after ? { after } : {});
      for (const c of page.items) {
        if (seen.has(c.id)) continue;
        seen.add(c.id);
        list.append(commentEl(c));
      }
      if (page.items.length) after = page.items[page.items.length - 1].id;
      more.hidden = !page.next;
    } catch (err) {
      toast(errorText(err), "error");
    }
  }
  more.addEventListener("click", () => busy(more, load));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    busy(submit, async () => {
      try {
        const c = await sh.posts.comment(post.id, text);
        seen.add(c.id);
        list.append(commentEl(c));
        input.value = "";
        onAdded();
      } catch (err) {
        toast(errorText(err), "error");
      }
    });
  });
  load();
  queueMicrotask(() => input.focus());
  return box;
}
