// Writing a post: text, files from the picker or dropped on the composer, previews,
// upload progress and the server's errors (413 too large, 415 a kind it does not take).

import { sh } from "./client.js";
import { errorText, h, uuid } from "./dom.js";
import { icon } from "./icons.js";

const MAX_FILES = 10;
const MAX_BYTES = 10 * 1024 * 1024;
const ACCEPT = "image/*,video/*,audio/*";

function sizeText(n) {
  return n >= 1024 * 1024 ? `${(n / 1024 / 1024).toFixed(1)} MB` : `${Math.ceil(n / 1024)} KB`;
}

/** The composer; `onPosted(post)` gets each new post. Returns {el, destroy}. */
export function composer(onPosted) {
  let files = []; // [{file, url}]
  let idempotencyKey = uuid();

  const text = h("textarea", {
    testid: "composer-text", placeholder: "What's happening?", maxlength: 5000, rows: 3, "aria-label": "Post text",
  });
  const fileInput = h("input", {
    type: "file", multiple: true, accept: ACCEPT, testid: "composer-file-input", class: "sr-only", tabindex: "-1",
    "aria-hidden": "true",
  });
  const attach = h("button", { type: "button", testid: "composer-attach" }, icon("clip", 18), "Photo/video");
  const previews = h("div", { class: "previews", testid: "composer-previews", "aria-label": "Attached files" });
  const progress = h("progress", { testid: "composer-progress", max: 100, value: 0, hidden: true, "aria-label": "Upload progress" });
  const error = h("p", { class: "error", testid: "composer-error", role: "alert" });
  const submit = h("button", { type: "submit", class: "primary", testid: "composer-submit" }, "Post");
  const hint = h("span", { class: "muted" }, "or drop files here");
  const form = h(
    "form",
    { class: "card composer", testid: "composer", "aria-label": "New post" },
    text,
    previews,
    progress,
    error,
    h("div", { class: "actions" }, fileInput, attach, hint, h("span", { class: "spacer" }), submit),
  );

  function renderPreviews() {
    previews.replaceChildren(
      ...files.map((f, i) => {
        const kind = f.file.type.split("/")[0];
        const media =
          kind === "image" ? h("img", { src: f.url, alt: f.file.name })
          : kind === "video" ? h("video", { src: f.url, muted: true, playsinline: true, preload: "metadata" })
          : h("span", { class: "muted" }, "♪");
        const remove = h("button", { type: "button", testid: "composer-preview-remove", "aria-label": `Remove ${f.file.name}` }, "×");
        remove.addEventListener("click", () => {
          URL.revokeObjectURL(f.url);
          files.splice(i, 1);
          renderPreviews();
          attach.focus();
        });
        return h(
          "div",
          { class: "preview", testid: "composer-preview", dataset: { name: f.file.name } },
          media,
          h("span", { class: "name" }, `${f.file.name} · ${sizeText(f.file.size)}`),
          remove,
        );
      }),
    );
  }

  function add(list) {
    error.textContent = "";
    const problems = [];
    for (const file of list) {
      if (files.length >= MAX_FILES) {
        problems.push(`At most ${MAX_FILES} files per post.`);
        break;
      }
      if (!/^(image|video|audio)\//.test(file.type)) {
        problems.push(`${file.name}: only images, video and audio can be attached.`);
        continue;
      }
      if (file.size > MAX_BYTES) {
        problems.push(`${file.name} is ${sizeText(file.size)}; the limit is 10 MB.`);
        continue;
      }
      files.push({ file, url: URL.createObjectURL(file) });
    }
    error.textContent = problems.join(" ");
    renderPreviews();
  }

  attach.addEventListener("click", () => fileInput.click());
  fileInput.addEventListener("change", () => {
    add([...fileInput.files]);
    fileInput.value = "";
  });
  // Drag and drop onto the whole composer.
  let depth = 0;
  form.addEventListener("dragenter", (ev) => {
    if (![...(ev.dataTransfer?.types || [])].includes("Files")) return;
    ev.preventDefault();
    depth++;
    form.classList.add("drag");
  });
  form.addEventListener("dragover", (ev) => {
    if ([...(ev.dataTransfer?.types || [])].includes("Files")) ev.preventDefault();
  });
  form.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) form.classList.remove("drag");
  });
  form.addEventListener("drop", (ev) => {
    ev.preventDefault();
    depth = 0;
    form.classList.remove("drag");
    if (ev.dataTransfer?.files?.length) add([...ev.dataTransfer.files]);
  });
  // Paste an image from the clipboard.
  text.addEventListener("paste", (ev) => {
    const pasted = [...(ev.clipboardData?.files || [])];
    if (pasted.length) {
      ev.preventDefault();
      add(pasted);
    }
  });
  text.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) form.requestSubmit();
  });

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (submit.disabled) return;
    const content = text.value.trim();
    if (!content && !files.length) {
      error.textContent = "Write something or attach a file.";
      text.focus();
      return;
    }
    error.textContent = "";
    submit.disabled = attach.disabled = text.readOnly = true;
    progress.hidden = !files.length;
    progress.value = 0;
    try {
      const post = await sh.posts.create({
        content,
        files: files.map((f) => f.file),
        idempotencyKey,
        onProgress: (p) => {
          progress.value = Math.round(p.fraction * 100);
        },
      });
      for (const f of files) URL.revokeObjectURL(f.url);
      files = [];
      renderPreviews();
      text.value = "";
      idempotencyKey = uuid();
      onPosted(post);
    } catch (err) {
      // The same key on a retry: the server answers with the first post, never two.
      error.textContent = errorText(err);
    } finally {
      submit.disabled = attach.disabled = text.readOnly = false;
      progress.hidden = true;
    }
  });

  return {
    el: form,
    destroy() {
      for (const f of files) URL.revokeObjectURL(f.url);
    },
  };
}
