// The home feed: the composer, the live "new posts" bar, the posts with endless scroll.
//
// The socket carries no frame for new posts in the feed, so the screen asks for the
// newest page every few seconds while it is visible, and offers what is new in a bar
// rather than moving the posts under the reader's eyes.

import { sh } from "./client.js";
import { composer } from "./composer.js";
import { errorText, h, whenVisible } from "./dom.js";
import { postCard } from "./post.js";

const POLL_MS = 4000;

export const newer = (a, b) => BigInt(a) > BigInt(b);

export function feedScreen(view) {
  const list = h("div", { testid: "feed", class: "feed", "aria-label": "Home feed", role: "feed", "aria-busy": "false" });
  const bar = h("button", { type: "button", class: "new-posts", testid: "feed-new-posts", hidden: true });
  const loading = h("p", { class: "list-state", testid: "feed-loading", hidden: true }, "Loading…");
  const end = h("p", { class: "list-state", testid: "feed-end", hidden: true }, "You're all caught up.");
  const empty = h(
    "p",
    { class: "list-state", testid: "feed-empty", hidden: true },
    "Your feed is empty. Post something, or find people to follow with the search box above.",
  );
  const error = h("p", { class: "error", role: "alert" });
  const sentinel = h("div", { "aria-hidden": "true", style: "height:1px" });

  const shown = new Set();
  let pending = []; // newer posts waiting behind the bar
  let topId = null;

  function show(post, where) {
    if (shown.has(post.id)) return;
    shown.add(post.id);
    const card = postCard(post, { onDelete: () => shown.delete(post.id) });
    if (where === "top") list.prepend(card);
    else list.append(card);
    if (!topId || newer(post.id, topId)) topId = post.id;
    empty.hidden = true;
  }

  const box = composer((post) => {
    pending = pending.filter((p) => p.id !== post.id);
    renderBar();
    show(post, "top");
  });

  function renderBar() {
    bar.hidden = pending.length === 0;
    if (pending.length) empty.hidden = true;
    bar.textContent = pending.length === 1 ? "1 new post" : `${pending.length} new posts`;
  }

  bar.addEventListener("click", () => {
    const posts = pending.sort((a, b) => (newer(a.id, b.id) ? 1 : -1)); // oldest first, each on top
    pending = [];
    for (const p of posts) show(p, "top");
    renderBar();
    window.scrollTo({ top: 0, behavior: "smooth" });
    const first = list.querySelector('[data-testid="post"]');
    if (first) first.querySelector("a, button")?.focus({ preventScroll: true });
  });

  const pager = sh.feed.pager({ limit: 20 });
  let loadingMore = false;
  async function more() {
    if (loadingMore || pager.done) return;
    loadingMore = true;
    loading.hidden = false;
    list.setAttribute("aria-busy", "true");
    error.textContent = "";
    try {
      const items = await pager.next();
      for (const p of items) show(p, "bottom");
      if (pager.done) {
        end.hidden = shown.size === 0;
        empty.hidden = shown.size !== 0;
      }
    } catch (err) {
      error.textContent = errorText(err);
    } finally {
      loadingMore = false;
      loading.hidden = true;
      list.setAttribute("aria-busy", "false");
    }
    // Short pages on tall screens: keep going while the sentinel is still in view.
    if (!pager.done && sentinel.getBoundingClientRect().top < window.innerHeight + 400) more();
  }

  async function poll() {
    if (document.hidden || !topId) return;
    try {
      const page = await sh.feed.page({ limit: 20 });
      const fresh = page.items.filter((p) => !shown.has(p.id) && newer(p.id, topId) && !pending.some((q) => q.id === p.id));
      if (fresh.length) {
        pending.push(...fresh);
        renderBar();
      }
    } catch {
      // the next tick tries again; the connection dot tells the user about outages
    }
  }

  view.append(box.el, bar, list, loading, error, empty, end, sentinel);
  const stopScroll = whenVisible(sentinel, more);
  const timer = setInterval(poll, POLL_MS);
  const onVisible = () => poll();
  document.addEventListener("visibilitychange", onVisible);
  const offState = sh.on("state", ({ state }) => state === "open" && poll());
  more().then(() => {
    if (!topId) topId = "0";
  });
  return () => {
    stopScroll();
    clearInterval(timer);
    document.removeEventListener("visibilitychange", onVisible);
    offState();
    box.destroy();
  };
}
