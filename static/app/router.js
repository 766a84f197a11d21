// Hash routes -> screens. A screen is `render(view, params) -> cleanup?`: it fills the
// view and may return a function the router calls when the screen is left (to drop
// SDK listeners, observers, timers).

const routes = [];
let cleanup = null;
let guard = null;
let current = "";

/** `pattern` like "/u/:name/followers". */
export function route(pattern, screen, { name, public: isPublic = false } = {}) {
  const keys = [];
  const re = new RegExp(
    "^" + pattern.replace(/:(\w+)/g, (_, k) => (keys.push(k), "([^/]+)")) + "/?$",
  );
  routes.push({ re, keys, screen, name, isPublic });
}

/** `check(route) -> redirect path | null`, e.g. send the signed-out to /login. */
export function setGuard(check) {
  guard = check;
}

export function path() {
  return location.hash.replace(/^#/, "") || "/";
}

export function go(to, { replace = false } = {}) {
  const target = `#${to}`;
  if (location.hash === target) {
    render();
    return;
  }
  if (replace) {
    history.replaceState(null, "", target);
    render();
  } else location.hash = target;
}

export function rerender() {
  render(true);
}

function match(p) {
  for (const r of routes) {
    const m = r.re.exec(p);
    if (m) {
      const params = {};
      r.keys.forEach((k, i) => (params[k] = decodeURIComponent(m[i + 1])));
      return { r, params };
    }
  }
  return null;
}

async function render(force = false) {
  const p = path();
  if (p === current && !force) return;
  const found = match(p);
  if (!found) {
    go("/feed", { replace: true });
    return;
  }
  const redirect = guard && guard(found.r);
  if (redirect && redirect !== p) {
    go(redirect, { replace: true });
    return;
  }
  current = p;
  if (cleanup) {
    try {
      cleanup();
    } catch (e) {
      console.warn("screen cleanup failed", e);
    }
    cleanup = null;
  }
  const view = document.getElementById("view");
  view.replaceChildren();
  view.dataset.screen = found.r.name || "";
  for (const a of document.querySelectorAll(".nav a")) {
    const href = a.getAttribute("href").slice(1);
    if (p === href || (href !== "/" && p.startsWith(href + "/"))) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  window.scrollTo(0, 0);
  const done = found.r.screen(view, found.params);
  cleanup = typeof done === "function" ? done : null;
  // Keyboard and screen-reader users land on the new screen, unless it focused a field.
  if (!view.contains(document.activeElement)) view.focus({ preventScroll: true });
  if (done && typeof done.then === "function") {
    // An async screen resolves to its cleanup; if the route changed meanwhile, run it now.
    done.then((fn) => {
      if (typeof fn !== "function") return;
      if (current === p && cleanup === null) cleanup = fn;
      else fn();
    });
  }
}

export function start() {
  window.addEventListener("hashchange", () => render());
  render(true);
}
