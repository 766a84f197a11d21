"""The page `/docs` serves: the OpenAPI document (REST) and the AsyncAPI document (the
socket and the Kafka topics) rendered in the browser by a small script of its own (no
CDN, nothing fetched: both documents are embedded in the page, and a
Content-Security-Policy allows exactly this script and style by their hashes)."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title} API</title><style>{style}</style></head>
<body><nav>REST: <a href="#rest">reference</a>, <a href="openapi.json">openapi.json</a>
&middot; Socket and events: <a href="#socket">reference</a>, <a href="asyncapi.json">asyncapi.json</a></nav>
<main id="root"><p>The API reference needs JavaScript; the documents themselves are at
<a href="openapi.json">openapi.json</a> and <a href="asyncapi.json">asyncapi.json</a>.</p></main>
<script type="application/json" id="doc">{doc}</script>
<script type="application/json" id="asyncapi">{asyncapi}</script>
<script>{script}</script></body></html>
"""

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem;color:#222}
h2{border-bottom:1px solid #ccc;margin-top:2rem}details{border:1px solid #ddd;border-radius:4px;margin:.4rem 0}
summary{cursor:pointer;padding:.4rem .6rem}details[open] summary{background:#f4f4f4}
details>div{padding:0 .8rem .6rem}.m{display:inline-block;width:4.5rem;font-weight:bold;font-family:monospace}
.GET{color:#06c}.POST{color:#080}.PATCH{color:#a60}.DELETE{color:#c00}.lock{color:#888;font-size:.85em}
pre{background:#f8f8f8;padding:.5rem;overflow-x:auto;margin:.2rem 0}table{border-collapse:collapse}
td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}
nav{padding:.4rem 0;border-bottom:1px solid #ccc}h1{margin-top:2rem}h3{margin-top:1.6rem}
.dir{color:#888;font-size:.85em}pre.text{white-space:pre-wrap}
"""

SCRIPT = """
"use strict";
const doc = JSON.parse(document.getElementById("doc").textContent);
const asyncapi = JSON.parse(document.getElementById("asyncapi").textContent);
let schemas = (doc.components || {}).schemas || {};
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function add(parent, ...children) { for (const c of children) parent.appendChild(c); return parent; }
function limits(s) {
  if (!s) return [];
  if (s.anyOf) return s.anyOf.flatMap(limits);
  const c = [];
  if (s.minLength !== undefined || s.maxLength !== undefined)
    c.push("length " + (s.minLength ?? 0) + ".." + (s.maxLength ?? "*"));
  if (s.pattern) c.push("pattern " + s.pattern);
  if (s.minimum !== undefined) c.push(">= " + s.minimum);
  if (s.maximum !== undefined) c.push("<= " + s.maximum);
  if (s.default !== undefined && s.default !== null) c.push("default " + JSON.stringify(s.default));
  return c;
}
function show(s, depth, seen) {
  if (!s || Object.keys(s).length === 0) return "any";
  const pad = "  ".repeat(depth);
  if (s.$ref) {
    const name = s.$ref.split("/").pop();
    if (seen.includes(name)) return name;
    return name + " " + show(schemas[name], depth, seen.concat([name]));
  }
  if (s.anyOf) return s.anyOf.map((x) => show(x, depth, seen)).join(" | ");
  if (s.enum) return s.enum.map((x) => JSON.stringify(x)).join(" | ");
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (s.type === "array") return show(s.items, depth, seen) + "[]";
  if (s.type === "object" && s.properties) {
    const required = new Set(s.required || []);
    const lines = Object.entries(s.properties).map(([k, v]) => {
      const c = limits(v);
      return pad + "  " + k + (required.has(k) ? "" : "?") + ": " + show(v, depth + 1, seen) +
        (c.length ? "    // " + c.join(", ") : "");
    });
    return "{\\n" + lines.join("\\n") + "\\n" + pad + "}";
  }
  if (s.type === "object" && s.additionalProperties)
    return "{[key: string]: " + show(s.additionalProperties, depth, seen) + "}";
  return Array.isArray(s.type) ? s.type.join(" | ") : (s.type || "any");
}
function operation(path, method, op) {
  const d = el("details");
  const sum = add(el("summary"), el("span", method.toUpperCase(), "m " + method.toUpperCase()),
    el("code", path), document.createTextNode(" " + (op.summary || "")));
  add(sum, el("span", (op.security || []).length ? " (bearer token)" : " (public)", "lock"));
  const body = el("div");
  add(d, sum, body);
  if (op.description) add(body, el("p", op.description));
  if ((op.parameters || []).length) {
    const t = add(el("table"), add(el("tr"), el("th", "parameter"), el("th", "in"), el("th", "type"), el("th", "")));
    for (const p of op.parameters)
      add(t, add(el("tr"), el("td", p.name + (p.required ? "" : "?")), el("td", p.in), el("td", show(p.schema, 0, [])),
        el("td", [p.description || "", ...limits(p.schema)].filter(Boolean).join("; "))));
    add(body, el("h4", "Parameters"), t);
  }
  if (op.requestBody) {
    add(body, el("h4", "Request body" + (op.requestBody.required ? "" : " (optional)")));
    for (const [type, media] of Object.entries(op.requestBody.content))
      add(body, el("div", type), el("pre", show(media.schema, 0, [])));
  }
  add(body, el("h4", "Responses"));
  for (const [status, r] of Object.entries(op.responses)) {
    const head = status + " " + r.description +
      (r.headers ? "   [headers: " + Object.keys(r.headers).join(", ") + "]" : "");
    add(body, el("div", head));
    for (const [type, media] of Object.entries(r.content || {})) {
      // Errors all share one envelope: name it here, it is spelled out under Schemas.
      const brief = Number(status) >= 400 && media.schema && media.schema.$ref;
      const shown = brief ? media.schema.$ref.split("/").pop() : media.schema ? show(media.schema, 0, []) : "";
      add(body, el("pre", type + "  " + shown));
    }
  }
  return d;
}
const root = document.getElementById("root");
root.textContent = "";
add(root, Object.assign(el("h1", "REST: " + doc.info.title + " " + doc.info.version), {id: "rest"}),
  el("pre", doc.info.description || ""));
add(root, add(el("p", "The document: "), Object.assign(el("a", "openapi.json"), {href: "openapi.json"})));
for (const tag of doc.tags || []) {
  add(root, el("h2", tag.name));
  for (const [path, item] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(item))
      if ((op.tags || []).includes(tag.name)) add(root, operation(path, method, op));
}
add(root, el("h2", "Schemas"));
for (const name of Object.keys(schemas))
  add(root, add(el("details"), el("summary", name), el("pre", show({$ref: "#/components/schemas/" + name}, 0, []))));

// The AsyncAPI document: the socket's frames both ways, its close codes and limits, the topics.
function resolve(ref) {
  let node = asyncapi;
  for (const part of ref.slice(2).split("/")) node = node[part];
  return node;
}
function deref(node) {
  while (node && node.$ref) node = resolve(node.$ref);
  return node;
}
const repliesOf = {};
for (const op of Object.values((asyncapi || {}).operations || {}))
  if (op.reply)
    for (const m of op.messages) repliesOf[m.$ref.split("/").pop()] = op.reply.messages.map((r) => deref(r).name);
function table(head, rows) {
  const t = add(el("table"), add(el("tr"), ...head.map((h) => el("th", h))));
  for (const row of rows) add(t, add(el("tr"), ...row.map((c) => el("td", String(c)))));
  return t;
}
function message(key, m) {
  const tags = (m.tags || []).map((t) => t.name);
  const d = el("details");
  add(d, add(el("summary"), el("code", m.name), document.createTextNode(" " + (m.summary || "")),
    el("span", tags.length ? "  (" + tags.join(", ") + ")" : "", "dir")));
  const body = add(el("div"), el("p", m.description || ""));
  if (repliesOf[key]) add(body, el("p", "Answered by: " + repliesOf[key].join(", ")));
  add(body, el("h4", "Payload"), el("pre", show(m.payload, 0, [])));
  const key_ = ((m.bindings || {}).kafka || {}).key;
  if (key_) add(body, el("h4", "Key"), el("pre", show(key_, 0, []) + "    // " + (key_.description || "")));
  return add(d, body);
}
if (asyncapi) {
  schemas = (asyncapi.components || {}).schemas || {};
  add(root, Object.assign(el("h1", "Socket and events: " + asyncapi.info.title + " " + asyncapi.info.version),
    {id: "socket"}), el("p", asyncapi.info.description || ""));
  add(root, add(el("p", "The document: "), Object.assign(el("a", "asyncapi.json"), {href: "asyncapi.json"})));
  for (const [name, ch] of Object.entries(asyncapi.channels)) {
    const servers = (ch.servers || []).map((s) => resolve(s.$ref));
    add(root, el("h2", (ch.title || name) + "  " + servers.map((s) => s.protocol + "://" + s.host).join(", ") +
      (servers.length && servers[0].protocol.startsWith("ws") ? ch.address : "")));
    add(root, el("pre", ch.description || "", "text"));
    const limitRows = (ch["x-limits"] || []).map((l) => [l.name, l.value, l.description]);
    if (limitRows.length) add(root, el("h3", "Limits"), table(["name", "value", "note"], limitRows));
    const closeRows = (ch["x-close-codes"] || []).map((c) => [c.code, c.name, c.description]);
    if (closeRows.length)
      add(root, el("h3", "Close codes"), table(["code", "name", "what it means, what the client does"], closeRows));
    const groups = {};
    for (const [key, ref] of Object.entries(ch.messages || {})) {
      const m = ref.$ref ? resolve(ref.$ref) : ref;
      const group = ((m.tags || [])[0] || {name: "messages"}).name;
      (groups[group] = groups[group] || []).push([key, m]);
    }
    for (const [group, items] of Object.entries(groups)) {
      add(root, el("h3", group === "client frame" ? "The client sends" : group === "server frame" ? "The server sends" :
        group === "event" ? "Events" : group));
      for (const [key, m] of items) add(root, message(key, m));
    }
  }
  add(root, el("h2", "Schemas of the socket and the events"));
  for (const name of Object.keys(schemas))
    add(root, add(el("details"), el("summary", name), el("pre", show({$ref: "#/components/schemas/" + name}, 0, []))));
}
"""
