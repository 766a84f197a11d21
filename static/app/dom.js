// Small DOM helpers shared by every screen: building elements, times, toasts, errors.

/**
 * Build an element. `attrs`: `testid` -> data-testid, `class`, `dataset`, `on<event>`
 * handlers, booleans as present/absent attributes, anything else as an attribute or
 * property. Children: nodes, strings, arrays, null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "testid") el.dataset.testid = value;
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "value" || key === "checked" || key === "muted" || key === "srcObject") el[key] = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** "3m", "2h", "Dec 4": short relative times for lists. */
export function ago(iso) {
  if (!iso) return "";
  const then = new Date(iso);
  const s = Math.max(0, (Date.now() - then.getTime()) / 1000);
  if (s < 45) return "now";
  if (s < 3600) return `${Math.round(s / 60)}m`;
  if (s < 86400) return `${Math.round(s / 3600)}h`;
  if (s < 86400 * 7) return `${Math.round(s / 86400)}d`;
  return then.toLocaleDateString(undefined, { month: "short", day: "numeric" });
}

export function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" }) : "";
}

export function timeEl(iso, testid, fmt = ago) {
  return h("time", { datetime: iso, title: iso ? new Date(iso).toLocaleString() : "", testid }, fmt(iso));
}

/** A round avatar: the picture, or the first letter of the name on a colour. */
export function avatar(user, size = 40) {
  const label = (user && (user.name || user.username)) || "?";
  if (user && user.avatar_url) {
    return h("img", { class: "avatar", src: user.avatar_url, alt: "", width: size, height: size, style: `--s:${size}px` });
  }
  let hue = 0;
  for (const c of (user && user.username) || "?") hue = (hue * 31 + c.charCodeAt(0)) % 360;
  return h(
    "span",
    { class: "avatar letter", "aria-hidden": "true", style: `--s:${size}px;--hue:${hue}` },
    label.trim().charAt(0).toUpperCase(),
  );
}

export function displayName(user) {
  return (user && (user.name || user.username)) || "someone";
}

/** A human sentence for an error thrown by the SDK (an API error body) or the network. */
export function errorText(err) {
  if (!err) return "Something went wrong.";
  const status = err.status;
  const code = err.code;
  if (status === 429 || code === "rate_limited") {
    const retry = err.retryAfter ?? err.retry_after;
    return retry ? `Too many attempts. Try again in ${retry} s.` : "Too many attempts. Try again soon.";
  }
  if (status === 413 || code === "too_large") return err.message || "That is too large.";
  if (status === 415 || code === "unsupported_media_type") return err.message || "That kind of file is not supported.";
  if (status === 503 || code === "unavailable") return "The service is briefly unavailable. Try again in a moment.";
  if (code === "network") return "Cannot reach socialhub. Check your connection and try again.";
  if (code === "timeout") return "socialhub did not answer in time. Try again.";
  if (code === "disconnected") return "Not connected right now. Try again in a moment.";
  if (status >= 500) return "Something went wrong on the server. Try again.";
  if (err.message) return err.message;
  return "Something went wrong.";
}

/** Field problems of a 422, as {field: problem}. */
export function fieldErrors(err) {
  return (err && (err.fields || (err.body && err.body.error && err.body.error.fields))) || {};
}

/** Show a 422's field problems next to the inputs of a form (elements `field-error-<name>`). */
export function showFieldErrors(form, err) {
  for (const el of form.querySelectorAll(".field-error")) {
    el.textContent = "";
    el.hidden = true;
  }
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  const fields = fieldErrors(err);
  for (const [name, problem] of Object.entries(fields)) {
    const slot = form.querySelector(`[data-testid="field-error-${name}"]`);
    const input = form.querySelector(`[name="${name}"]`);
    if (slot) {
      slot.textContent = problem;
      slot.hidden = false;
    }
    if (input) input.setAttribute("aria-invalid", "true");
  }
  return Object.keys(fields).length > 0;
}

/** A labelled input with a slot for its field error. */
export function field(label, input, name) {
  const id = input.id || `f-${name}-${Math.random().toString(36).slice(2, 8)}`;
  input.id = id;
  input.name = name;
  const err = h("span", { class: "field-error", testid: `field-error-${name}`, id: `${id}-err`, hidden: true, role: "alert" });
  input.setAttribute("aria-describedby", `${id}-err`);
  return h("div", { class: "field" }, h("label", { for: id }, label), input, err);
}

let toastRoot = null;
export function toast(text, kind = "info") {
  toastRoot = toastRoot || document.querySelector(".toasts");
  if (!toastRoot) return;
  const el = h("div", { class: `toast ${kind}`, testid: "toast", role: kind === "error" ? "alert" : "status" }, text);
  toastRoot.append(el);
  setTimeout(() => el.remove(), 4000);
}

/** Run an async handler with the button disabled, so a double click does one thing. */
export async function busy(button, fn) {
  if (button.disabled) return undefined;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    return await fn();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

/** Call `fn` when `el` scrolls into view (endless scroll); returns a stop function. */
export function whenVisible(el, fn, rootMargin = "400px") {
  const io = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) fn();
  }, { rootMargin });
  io.observe(el);
  return () => io.disconnect();
}

export function uuid() {
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(36).slice(2)}`;
}

/** "(3) socialhub": the unread notifications and chat messages in the tab's title. */
export function updateTitle() {
  let total = 0;
  for (const id of ["notif-badge", "chat-badge"]) {
    const b = document.querySelector(`[data-testid="${id}"]`);
    if (b && !b.hidden) total += parseInt(b.textContent, 10) || 0;
  }
  document.title = total ? `(${total}) socialhub` : "socialhub";
}

/** Keep Tab and Shift+Tab inside a modal layer (the call screens). */
export function trapFocus(el) {
  el.addEventListener("keydown", (ev) => {
    if (ev.key !== "Tab") return;
    const items = [...el.querySelectorAll("button, a[href], input, textarea, select, [tabindex]")].filter(
      (x) => !x.disabled && !x.hidden && x.tabIndex >= 0 && x.offsetParent !== null,
    );
    if (!items.length) return;
    const first = items[0];
    const last = items[items.length - 1];
    if (ev.shiftKey && (document.activeElement === first || !el.contains(document.activeElement))) {
      ev.preventDefault();
      last.focus();
    } else if (!ev.shiftKey && (document.activeElement === last || !el.contains(document.activeElement))) {
      ev.preventDefault();
      first.focus();
    }
  });
  return el;
}
