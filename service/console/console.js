"use strict";
// The MEND console: plain DOM, no framework, no build. Everything shown is set as text (textContent, or strings
// given to append), never parsed as HTML: prompts, targets, notes, authors and replies are anyone's text. The
// Content-Security-Policy of routes/console.py is the second wall.

const PAGE = 20; // audit rows per page
const REPLY_TOKENS = 24; // a preview's replies are 24 greedy tokens (routes/edits.py): a try compares with them
const KEY = "mend-api-key"; // sessionStorage: this tab only, gone when it closes
const AUTHOR = "mend-author"; // localStorage: a name is no secret

const $ = (id) => document.getElementById(id);
const state = { offset: 0, filter: { status: "", author: "" }, preview: null, detail: null, formRun: 0, listRun: 0 };

class ApiError extends Error {
  constructor(status, detail) {
    super(status ? `${status}: ${detail}` : detail);
    this.status = status;
  }
}

// Paths are relative to the page (/console -> /edits), so a proxy's path prefix in front of the app keeps working.
async function api(method, path, body, headers = {}) {
  const key = sessionStorage.getItem(KEY);
  const init = { method, headers: { ...headers } };
  if (key) init.headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, `the server did not answer (${e.message})`);
  }
  const data = await response.json().catch(() => null);
  if (response.ok) return data;
  if (response.status === 401) needKey(key ? "The server refused this key." : "This server needs its API key.");
  const detail = data && typeof data.detail === "string" ? data.detail : response.statusText;
  throw new ApiError(response.status, detail);
}

// el("td", {className: "x"}, "text", node): strings become text nodes. Never give it innerHTML.
function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function say(id, text) {
  $(id).textContent = text || "";
  $(id).hidden = !text;
}

const logprob = (x) => (typeof x === "number" ? x.toFixed(2) : "?");
const yesNo = (b) => (b ? "yes" : "no");
const percent = (x) => `${(100 * x).toFixed(1)}%`;
const when = (iso) => (iso || "").replace("T", " ").slice(0, 19);
const author = () => $("author").value.trim() || "anonymous";

function randomKey() {
  // getRandomValues, not randomUUID: the latter exists only on https or localhost pages
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- the key

function needKey(message) {
  say("key-status", `${message} Enter it above: it is kept in this browser tab only and sent with every request.`);
  $("key").focus();
}

function showKeyState() {
  $("key").placeholder = sessionStorage.getItem(KEY) ? "set for this tab" : "";
}

$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $("key").value);
  $("key").value = "";
  say("key-status", "");
  showKeyState();
  refresh();
});

$("key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  showKeyState();
  refresh();
});

$("author").addEventListener("change", () => localStorage.setItem(AUTHOR, $("author").value));

// ---- the server line (/ready is open: no key needed)

async function loadServer() {
  const r = await fetch("ready").catch(() => null);
  const d = r && (await r.json().catch(() => null));
  if (!d || typeof d.version !== "number") {
    $("server").textContent = r ? `server answered ${r.status}` : "server unreachable";
    return;
  }
  const edits = `${d.active_edits} active edit${d.active_edits === 1 ? "" : "s"}`;
  $("server").textContent = `log version ${d.version} · ${edits}${d.ready ? "" : ` · not ready: ${d.reason}`}`;
}

// ---- make an edit: preview first, then commit exactly what was previewed

function editBody() {
  return { prompt: $("prompt").value, target: $("target").value, author: author(), note: $("note").value,
           force: $("force").checked };
}

function stalePreview() {
  state.formRun += 1; // a preview still on its way is then of a request the form no longer holds
  state.preview = null;
  $("commit-btn").disabled = true;
  $("preview").hidden = true;
}

for (const id of ["prompt", "target", "note", "author"]) $(id).addEventListener("input", stalePreview);

// Force does not change the preview (the guard's verdict is reported either way), only what a commit asks for:
// a new request, so a new Idempotency-Key.
$("force").addEventListener("change", () => {
  if (!state.preview) return;
  state.preview.body.force = $("force").checked;
  state.preview.idempotencyKey = randomKey();
});

$("edit-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = editBody();
  stalePreview();
  const run = state.formRun;
  say("edit-error", "");
  say("commit-result", "");
  $("preview-btn").disabled = true;
  try {
    const preview = await api("POST", "edit", { ...body, dry_run: true });
    if (run !== state.formRun) return;
    renderPreview(preview);
    // One key per previewed request: a commit clicked again after an error or a timeout gets the first
    // outcome instead of a second edit.
    state.preview = { body, idempotencyKey: randomKey() };
    $("commit-btn").disabled = false;
  } catch (e) {
    say("edit-error", e.message);
  } finally {
    $("preview-btn").disabled = false;
  }
});

function guardText(g) {
  if (g.would_refuse) return `The guard would refuse this edit: ${g.reason}`;
  if (g.canaries === null || g.canaries === undefined) return "The guard lets it through (canary check off).";
  const measured = g.captured !== null && g.captured !== undefined
    ? `${g.captured} of ${g.canaries} canary prompts inside its scope, limit ${percent(g.max_captured)}`
    : `${g.changed} of ${g.canaries} canary answers changed, limit ${percent(g.max_changed)}`;
  return `The guard lets it through: ${measured}.`;
}

function renderPreview(p) {
  $("preview-meta").textContent =
    `on log version ${p.version} · rank ${p.rank} · ${p.bytes} bytes · ${Math.round(p.elapsed_ms)} ms · nothing written`;
  $("preview-guard").textContent = guardText(p.guard);
  $("preview-guard").className = p.guard.would_refuse ? "error" : "ok";
  $("preview-scores").replaceChildren(...p.scores.map((s) => el("tr", {},
    el("td", { className: "text" }, s.prompt), el("td", { className: "text" }, s.target),
    el("td", { className: "num" }, `${logprob(s.pre_logprob)} → ${logprob(s.post_logprob)}`),
    el("td", {}, `${yesNo(s.pre_exact)} → ${yesNo(s.post_exact)}`))));
  $("preview-replies").replaceChildren(...p.replies.map((r) => el("tr", { title: r.prompt },
    el("td", { className: "text reply-before" }, r.before), el("td", { className: "text reply-after" }, r.after))));
  $("preview").hidden = false;
}

$("commit-btn").addEventListener("click", async () => {
  const { body, idempotencyKey } = state.preview;
  $("commit-btn").disabled = true;
  say("edit-error", "");
  try {
    const r = await api("POST", "edit", body, { "Idempotency-Key": idempotencyKey });
    state.preview = null;
    say("commit-result", `Committed edit ${r.edit_id} as log version ${r.version} (${Math.round(r.elapsed_ms)} ms).`);
    await Promise.all([loadEdits(0), loadServer(), openEdit(r.edit_id), tryPrompt(body.prompt)]);
  } catch (e) {
    say("edit-error", e.message);
    $("commit-btn").disabled = false; // e.g. after a guard refusal: tick force and commit again
  }
});

// ---- the audit trail, newest first

async function loadEdits(offset = state.offset) {
  const run = ++state.listRun; // only the latest request draws the list: answers may come back out of order
  const query = new URLSearchParams({ order: "newest", offset, limit: PAGE });
  for (const [name, value] of Object.entries(state.filter)) if (value) query.set(name, value);
  try {
    const page = await api("GET", `edits?${query}`);
    if (run !== state.listRun) return;
    state.offset = offset;
    $("edits").replaceChildren(...page.data.map(auditRow));
    if (!page.data.length) $("edits").append(el("tr", {}, el("td", { colSpan: 5, className: "muted" }, "no edits")));
    $("page-info").textContent = page.count
      ? `${offset + 1}–${offset + page.data.length} of ${page.count}` : "";
    $("newer").disabled = offset === 0;
    $("older").disabled = offset + PAGE >= page.count;
    say("list-error", "");
  } catch (e) {
    if (run === state.listRun) say("list-error", e.message);
  }
}

function auditRow(e) {
  const first = e.requests[0];
  const more = e.requests.length > 1 ? ` (+${e.requests.length - 1} more)` : "";
  const row = el("tr", { className: state.detail && state.detail.edit_id === e.edit_id ? "selected" : "" },
    el("td", { className: "num" }, String(e.version)),
    el("td", { className: "num" }, when(e.time)),
    el("td", { className: "text" }, e.author),
    el("td", {}, el("button", { type: "button", className: "link text", title: `open edit ${e.edit_id}`,
                               onclick: () => openEdit(e.edit_id) }, `${first.prompt} → ${first.target}${more}`)),
    el("td", {}, el("span", { className: `status ${e.status}` }, e.status.replace("_", " "))));
  row.dataset.editId = e.edit_id;
  return row;
}

$("filter-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.filter = { status: $("filter-status").value, author: $("filter-author").value };
  loadEdits(0);
});
$("newer").addEventListener("click", () => loadEdits(Math.max(0, state.offset - PAGE)));
$("older").addEventListener("click", () => loadEdits(state.offset + PAGE));

// ---- one edit, and rolling it back

async function openEdit(id) {
  try {
    renderDetail(await api("GET", `edits/${encodeURIComponent(id)}`));
  } catch (e) {
    say("detail-error", e.message);
  }
}

function renderDetail(e) {
  if (!state.detail || state.detail.edit_id !== e.edit_id) {
    say("detail-error", "");
    say("rollback-result", "");
  }
  state.detail = e;
  const rb = e.rollback || {};
  const fields = [
    ["status", e.status.replace("_", " ")], ["log version", String(e.version)], ["author", e.author],
    ["time (UTC)", when(e.time)], ["note", e.note], ["forced", yesNo(e.force)], ["rank", String(e.rank)],
    ["bytes", String(e.bytes)],
    ["guard", Object.entries(e.guard || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "nothing recorded"],
  ];
  if (rb.version) {
    fields.push(["rolled back", `at log version ${rb.version} by ${rb.author} on ${when(rb.time)}` +
                                (rb.note ? `: ${rb.note}` : "")]);
  }
  $("detail-id").textContent = e.edit_id;
  $("detail-fields").replaceChildren(...fields.flatMap(([k, v]) =>
    [el("dt", {}, k), el("dd", { id: `field-${k.split(" ")[0]}`, className: "text" }, v)]));
  $("detail-requests").replaceChildren(...e.requests.map((r, i) => el("tr", {},
    el("td", { className: "text" }, r.prompt), el("td", { className: "text" }, r.target),
    el("td", { className: "num" }, logprob((e.pre_scores[i] || {}).logprob)))));
  $("rollback-btn").disabled = e.status !== "active";
  $("detail-panel").hidden = false;
  for (const row of $("edits").children) row.classList.toggle("selected", row.dataset.editId === e.edit_id);
}

$("rollback-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const id = state.detail.edit_id;
  $("rollback-btn").disabled = true;
  say("detail-error", "");
  say("rollback-result", "");
  try {
    const r = await api("POST", "rollback", { edit_id: id, author: author(), note: $("rollback-note").value });
    $("rollback-note").value = "";
    say("rollback-result", `Rolled back as log version ${r.version}.`);
  } catch (e) {
    say("detail-error", e.message); // e.g. 409: someone else rolled it back since this page loaded it
  }
  await Promise.all([openEdit(id), loadEdits(), loadServer()]); // what the log says now, after an error too
});

$("detail-try").addEventListener("click", () => tryPrompt(state.detail.requests[0].prompt));

// ---- try a prompt

async function tryPrompt(prompt) {
  $("try-prompt").value = prompt;
  $("try-btn").disabled = true;
  try {
    const r = await api("POST", "generate", { prompt, max_new_tokens: REPLY_TOKENS });
    $("tries").prepend(el("tr", {}, el("td", { className: "num" }, `v${r.version}`),
      el("td", { className: "text" }, prompt), el("td", { className: "text reply" }, r.text)));
    say("try-error", "");
  } catch (e) {
    say("try-error", e.message);
  } finally {
    $("try-btn").disabled = false;
  }
}

$("try-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  tryPrompt($("try-prompt").value);
});

// ---- start

function refresh() {
  loadServer();
  loadEdits(0);
  if (state.detail) openEdit(state.detail.edit_id);
}

$("author").value = localStorage.getItem(AUTHOR) || "";
showKeyState();
refresh();
