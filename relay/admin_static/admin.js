// relay's admin page: what arrived, what is stuck and why, and replay, over /admin/api/.
//
// Everything a provider sent is anyone's text: it is written with text nodes and attributes only, never as
// markup (no string is parsed as HTML here), and the page's Content-Security-Policy runs no other script.
"use strict";

const TOKEN_KEY = "relay-admin-token";
const STATUSES = ["queued", "delivering", "retrying", "held", "failed", "delivered"];
const FAILURE_REASONS = ["mapping", "rejected", "exhausted"];
const REPLAYABLE = ["failed", "held"];
const PAGE_SIZE = 50;
const REFRESH_MS = 10000;

let shown = 0; // each render's number: an answer that comes back after the next render started is dropped
let sourceNames = [];

class Halted extends Error {}

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.error)) || `HTTP ${status}`);
    this.status = status;
  }
}

// ---- small helpers ------------------------------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function $(id) {
  return document.getElementById(id);
}

function pad(number) {
  return String(number).padStart(2, "0");
}

function localTime(iso) {
  if (!iso) return "";
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return iso;
  return (
    `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())} ` +
    `${pad(at.getHours())}:${pad(at.getMinutes())}:${pad(at.getSeconds())}`
  );
}

function timeCell(iso) {
  return el("time", { datetime: iso || "", title: iso || "" }, localTime(iso));
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "none";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} days`;
}

function ago(iso) {
  if (!iso) return "never";
  return `${duration(Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000))} ago`;
}

function bytes(count) {
  if (count === null || count === undefined) return "unknown";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function deliveries(count) {
  return count === 1 ? "1 delivery" : `${count} deliveries`;
}

function badge(status, reason) {
  const text = reason ? `${status}/${reason}` : status;
  return el("span", { class: `badge status-${status}` }, text);
}

// The web server's sources, and one the URL names that it has not loaded (removed, or added since it started).
function knownSources(named) {
  return Array.from(new Set([...sourceNames, named].filter(Boolean))).sort();
}

function deliveryLink(id) {
  return el("a", { href: `#/d/${encodeURIComponent(id)}`, class: "id" }, id);
}

function listLink(filters, text) {
  return el("a", { href: `#/deliveries?${new URLSearchParams(filters)}` }, text);
}

// A stored text shown as readably as it goes: JSON indented, a form's fields one a line, else as it is.
function readable(text, contentType) {
  if (text === null || text === undefined) return "";
  if (typeof text !== "string") return JSON.stringify(text, null, 2);
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch (_) {
    // not JSON
  }
  if ((contentType || "").includes("x-www-form-urlencoded")) {
    return Array.from(new URLSearchParams(text), ([key, value]) => `${key} = ${value}`).join("\n");
  }
  return text;
}

// A table in a box that scrolls sideways on a narrow screen, rather than the whole page.
function table(headings, rows, className, bodyId) {
  return el(
    "div",
    { class: "scrolls" },
    el(
      "table",
      { class: className || null },
      el("thead", {}, el("tr", {}, headings.map((heading) => el("th", { scope: "col" }, heading)))),
      el("tbody", { id: bodyId || null }, rows),
    ),
  );
}

// A button that asks the API and may be asked again: disabled while it waits, `waiting` said meanwhile,
// then what `draw` makes of the answer drawn into `into`, or the error.
function asking(button, into, waiting, call, draw) {
  button.addEventListener("click", async () => {
    button.disabled = true;
    into.replaceChildren(el("p", { class: "quiet" }, waiting));
    try {
      into.replaceChildren(...[draw(await call())].flat(Infinity).filter(Boolean));
    } catch (error) {
      if (!(error instanceof Halted)) into.replaceChildren(el("p", { class: "error" }, error.message));
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

// A button that changes something once, after `question` is confirmed (none: at once): it gives way to what
// `said` makes of the answer, or to the error.
function acting(button, question, call, said) {
  button.addEventListener("click", async () => {
    if (question && !window.confirm(question)) return;
    button.disabled = true;
    try {
      button.replaceWith(said(await call()));
    } catch (error) {
      if (!(error instanceof Halted)) button.replaceWith(el("p", { class: "error" }, error.message));
    }
  });
  return button;
}

// A form's field with its label above it.
function labelled(label, input) {
  return el("label", {}, el("span", {}, label), input);
}

function showMessage(text) {
  const message = $("message");
  message.textContent = text || "";
  message.hidden = !text;
}

// ---- the API ------------------------------------------------------------------------------------------------

async function api(path, method, body) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    askToken();
    throw new Halted();
  }
  let response;
  try {
    const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    response = await fetch(`api/${path}`, {
      method: method || "GET",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (_) {
    throw new ApiError(0, { detail: "relay does not answer" });
  }
  let answer = null;
  try {
    answer = await response.json();
  } catch (_) {
    answer = null;
  }
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    askToken("That admin token was refused.");
    throw new Halted();
  }
  if (response.status === 403 && answer && answer.error === "admin_disabled") {
    sessionStorage.removeItem(TOKEN_KEY);
    askToken("The admin API is off: set RELAY_ADMIN_TOKEN where relay runs and restart it.");
    throw new Halted();
  }
  if (!response.ok) throw new ApiError(response.status, answer);
  return answer;
}

// /readyz answers anyone: what keeps relay from taking webhooks (the store, a mapping file), and whether
// deliveries wait for want of an upstream.
async function readiness() {
  try {
    const response = await fetch("../readyz", { cache: "no-store", credentials: "omit" });
    return await response.json();
  } catch (_) {
    return { status: "unavailable", problems: { relay: "does not answer /readyz" } };
  }
}

function readinessBanner(ready) {
  const lines = [];
  for (const [part, problem] of Object.entries(ready.problems || {})) {
    if (typeof problem === "string") lines.push(`${part}: ${problem}`);
    else for (const [name, found] of Object.entries(problem)) lines.push(`${part}: ${name}: ${[found].flat().join("; ")}`);
  }
  const parts = [];
  if (ready.status !== "ok") {
    parts.push(
      el("div", { class: "banner bad", id: "not-ready" }, el("strong", {}, "Not ready (/readyz answers 503):"), lines.map((line) => el("div", {}, line))),
    );
  }
  if (ready.upstream && ready.upstream !== "configured") {
    parts.push(
      el("div", { class: "banner wait", id: "no-upstream" }, "No upstream is set (RELAY_UPSTREAM_URL): deliveries wait as held, and go once it is."),
    );
  }
  return parts;
}

function askToken(why) {
  $("nav").hidden = true;
  $("tools").hidden = true;
  $("view").replaceChildren();
  showMessage("");
  $("sign-in").hidden = false;
  $("sign-in-message").textContent = why || "";
  $("token").focus();
}

// ---- views --------------------------------------------------------------------------------------------------

async function overviewView() {
  const [overview, ready] = await Promise.all([api("overview"), readiness()]);
  const cards = el(
    "div",
    { class: "cards" },
    el("div", { class: "card" }, el("strong", {}, overview.total), el("span", {}, "deliveries")),
    STATUSES.map((status) =>
      el(
        "a",
        { class: `card status-${status}`, href: `#/deliveries?status=${status}` },
        el("strong", {}, overview.by_status[status] || 0),
        el("span", {}, status),
      ),
    ),
  );
  const reasons = Object.entries(overview.failed_by_reason);
  const store = overview.store;
  const facts = el(
    "dl",
    { class: "facts" },
    el("dt", {}, "Oldest due delivery has waited"),
    el("dd", { id: "oldest-due" }, duration(overview.oldest_due_age_seconds)),
    el("dt", {}, "Failed, by reason"),
    el(
      "dd",
      {},
      reasons.length
        ? reasons.map(([reason, count], index) => [
            index ? ", " : "",
            listLink({ status: `failed/${reason}` }, `${reason} ${count}`),
          ])
        : "none",
    ),
    el("dt", {}, "Store"),
    el(
      "dd",
      {},
      store.kind,
      store.file_bytes === null ? "" : `, ${bytes(store.file_bytes)}`,
      store.disk_free_bytes === null ? "" : `, ${bytes(store.disk_free_bytes)} free on its disk`,
    ),
    el("dt", {}, "Housekeeping done"),
    el(
      "dd",
      { id: "housekeeping" },
      Object.entries(overview.housekeeping_done_at)
        .map(([task, iso]) => `${task} ${ago(iso)}`)
        .join(", ") || "not yet (the delivery worker does it)",
    ),
  );
  const problems = overview.problems.map((problem) =>
    el(
      "tr",
      {},
      el("td", {}, problem.source),
      el("td", {}, badge(...problem.status.split("/"))),
      el("td", { class: "number" }, listLink({ status: problem.status, source: problem.source }, problem.count)),
      el("td", { class: "detail" }, problem.detail || ""),
      el("td", {}, deliveryLink(problem.newest_id)),
    ),
  );
  const bySource = Object.entries(overview.by_source).map(([source, counts]) =>
    el(
      "tr",
      {},
      el("td", {}, listLink({ source }, source)),
      STATUSES.map((status) =>
        el(
          "td",
          { class: "number" },
          counts[status] ? listLink({ source, status }, counts[status]) : el("span", { class: "zero" }, "0"),
        ),
      ),
      el("td", {}, timeCell(overview.last_received_at[source]), " ", el("small", {}, ago(overview.last_received_at[source]))),
    ),
  );
  return [
    el("h1", {}, "Overview"),
    readinessBanner(ready),
    cards,
    facts,
    el("h2", {}, "What is stuck, and why"),
    problems.length
      ? table(["source", "status", "count", "last error", "newest"], problems, "problems")
      : el("p", { class: "quiet" }, "Nothing failed or retrying."),
    el("h2", {}, "Sources"),
    bySource.length
      ? table(["source", ...STATUSES, "last arrival"], bySource, "by-source")
      : el("p", { class: "quiet" }, "No webhook has arrived yet."),
  ];
}

function filterForm(params) {
  const statusOptions = [
    el("option", { value: "" }, "any status"),
    STATUSES.map((status) => el("option", { value: status, selected: params.get("status") === status }, status)),
    FAILURE_REASONS.map((reason) =>
      el(
        "option",
        { value: `failed/${reason}`, selected: params.get("status") === `failed/${reason}` },
        `failed/${reason}`,
      ),
    ),
  ];
  const names = knownSources(params.get("source"));
  const sourceOptions = [
    el("option", { value: "" }, "any source"),
    names.map((name) => el("option", { value: name, selected: params.get("source") === name }, name)),
  ];
  const localValue = (iso) => {
    if (!iso) return "";
    const at = new Date(iso);
    if (Number.isNaN(at.getTime())) return "";
    return `${localTime(at.toISOString()).replace(" ", "T")}`;
  };
  const form = el(
    "form",
    { class: "filters", id: "filters" },
    labelled("Status", el("select", { name: "status" }, statusOptions)),
    labelled("Source", el("select", { name: "source" }, sourceOptions)),
    labelled("Event", el("input", { name: "event", value: params.get("event") || "", placeholder: "orders/paid" })),
    labelled(
      "Person",
      el("input", { name: "contact", value: params.get("contact") || "", placeholder: "e-mail or phone" }),
    ),
    labelled("Since", el("input", { name: "since", type: "datetime-local", step: "1", value: localValue(params.get("since")) })),
    labelled("Until", el("input", { name: "until", type: "datetime-local", step: "1", value: localValue(params.get("until")) })),
    el("button", { type: "submit" }, "Show"),
    el("a", { href: "#/deliveries", class: "button" }, "Clear"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = new URLSearchParams();
    for (const [key, value] of new FormData(form)) {
      if (!value) continue;
      // datetime-local is the browser's local time: the API takes it as UTC ISO 8601.
      chosen.set(key, key === "since" || key === "until" ? new Date(value).toISOString() : value);
    }
    location.hash = `#/deliveries?${chosen}`;
  });
  return form;
}

function deliveryRow(delivery) {
  return el(
    "tr",
    { "data-id": delivery.id },
    el("td", {}, timeCell(delivery.received_at)),
    el("td", {}, delivery.source),
    el("td", {}, delivery.event || ""),
    el("td", {}, badge(delivery.status, delivery.reason)),
    el("td", { class: "number" }, delivery.attempts),
    el("td", { class: "detail" }, delivery.detail || ""),
    el("td", {}, deliveryLink(delivery.id)),
  );
}

function replayBox(params) {
  const filters = new URLSearchParams();
  for (const key of ["status", "source", "since", "until", "event"]) {
    if (params.get(key)) filters.set(key, params.get(key));
  }
  const box = el("div", { class: "replay", id: "replay-box" }, el("h2", {}, "Replay what these filters take"));
  if (params.get("contact")) {
    box.append(el("p", { class: "quiet" }, "A replay does not choose by person: replay each of them from its page."));
    return [box, forgetBox(params.get("contact"))];
  }
  if (![...filters.keys()].length) {
    box.append(el("p", { class: "quiet" }, "Choose a status, a source, a time or an event to replay what they take."));
    return box;
  }
  const status = params.get("status");
  if (status && !REPLAYABLE.includes(status.split("/")[0])) {
    box.append(el("p", { class: "quiet" }, `Only failed and held deliveries replay; ${status} ones never do.`));
    return box;
  }
  const result = el("div", { id: "replay-result" });
  const check = asking(
    el("button", { type: "button", id: "replay-check" }, "Check (dry run)"),
    result,
    "Translating them with the mapping files as they are now...",
    () => api(`replay?${filters}&dry_run=1`, "POST"),
    (answer) => dryRunReport(answer, filters),
  );
  box.append(
    el("p", {}, "Failed and held deliveries go back to the queue and are translated again with today's mapping files."),
    check,
    result,
  );
  return box;
}

// A person's erasure request: every stored delivery naming them goes, from every source, with its attempts.
function forgetBox(contact) {
  const result = el("div", { id: "forget-result" });
  const forgotten = (done) => {
    const left = done.being_delivered.length
      ? ` ${done.being_delivered.length} being sent at this moment stayed: forget again once they are sent.`
      : "";
    return el("p", { id: "forgotten" }, `Forgot ${deliveries(done.forgotten)}.${left}`);
  };
  const found = (answer) => [
    el("p", { id: "would-forget" }, `Would forget ${deliveries(answer.would_forget)}.`),
    answer.would_forget > 0
      ? acting(
          el("button", { type: "button", id: "forget-go", class: "danger" }, `Forget ${answer.would_forget}`),
          `Delete every stored delivery naming ${contact}? This cannot be undone.`,
          () => api("forget", "POST", { contact, dry_run: false }),
          forgotten,
        )
      : null,
  ];
  const check = asking(
    el("button", { type: "button", id: "forget-check" }, "Check (dry run)"),
    result,
    "Looking for their deliveries...",
    () => api("forget", "POST", { contact, dry_run: true }),
    found,
  );
  return el(
    "div",
    { class: "replay", id: "forget-box" },
    el("h2", {}, "Forget this person"),
    el(
      "p",
      {},
      `Deletes every stored delivery naming ${contact}, from every source, with its attempts: their erasure ` +
        "request. Their de-duplication keys stay, so a provider's retry is not stored again; their profile " +
        "upstream is the upstream's to erase.",
    ),
    check,
    result,
  );
}

function dryRunReport(answer, filters) {
  const parts = [];
  const byStatus = Object.entries(answer.by_status).map(([name, count]) => `${name} ${count}`).join(", ");
  parts.push(el("p", { id: "would-replay" }, `Would replay ${answer.would_replay}`, byStatus ? ` (${byStatus})` : "", "."));
  const now = answer.with_mappings_now;
  if (now) {
    parts.push(
      el(
        "p",
        { id: "with-mappings-now" },
        `With the mapping files as they are now, of the newest ${now.checked}: ${now.translate} translate, ` +
          `${now.ignored} ignored by their mapping, ${now.still_fail} still fail.`,
      ),
    );
    if (now.errors && now.errors.length) {
      parts.push(
        table(
          ["source", "still fails with", "count", "newest"],
          now.errors.map((error) =>
            el(
              "tr",
              {},
              el("td", {}, error.source),
              el("td", { class: "detail" }, error.error),
              el("td", { class: "number" }, error.count),
              el("td", {}, deliveryLink(error.newest_id)),
            ),
          ),
        ),
      );
    }
  }
  if (answer.would_replay > 0) {
    parts.push(
      acting(
        el("button", { type: "button", id: "replay-go", class: "danger" }, `Replay ${answer.would_replay}`),
        `Replay ${deliveries(answer.would_replay)}?`,
        () => api(`replay?${filters}`, "POST"),
        (done) => el("p", { id: "replayed" }, `Replayed ${done.replayed}.`),
      ),
    );
  }
  return parts;
}

// What one delivery's translation gives now: a replay would send these calls, or fail, or ignore it.
function previewReport(answer) {
  const said = {
    translate: "With the mapping files as they are now it translates to these calls:",
    ignored: `With the mapping files as they are now its mapping ignores it: ${answer.reason}.`,
    forget: "With the mapping files as they are now it is an erasure request: no call, its person's deliveries go.",
    fails: `With the mapping files as they are now it still fails: ${answer.error}`,
    fetch_first: `Not translated here: ${answer.detail}.`,
    ping: "A test ping of its provider: answered 200, neither stored nor sent.",
  };
  return [
    el("p", { id: "preview-outcome", class: answer.outcome === "fails" ? "error" : null }, said[answer.outcome]),
    (answer.passed_over || []).map((passed) => el("p", { class: "quiet" }, passed)),
    (answer.calls || []).map((call, index) =>
      el("details", { open: true, class: "call" }, el("summary", {}, `${index + 1}. ${call.method}`), el("pre", {}, readable(call.body))),
    ),
  ];
}

async function deliveriesView(params) {
  const query = new URLSearchParams();
  for (const key of ["status", "source", "since", "until", "event", "contact"]) {
    if (params.get(key)) query.set(key, params.get(key));
  }
  query.set("limit", String(PAGE_SIZE));
  const page = await api(`deliveries?${query}`);
  const list = table(
    ["received", "source", "event", "status", "tries", "detail", "id"],
    page.deliveries.map(deliveryRow),
    "deliveries",
    "delivery-rows",
  );
  const body = list.querySelector("tbody");
  const more = el("div", { class: "more" });
  const addOlder = (next) => {
    more.replaceChildren();
    if (!next) return;
    const button = el("button", { type: "button", id: "older" }, "Older");
    button.addEventListener("click", async () => {
      button.disabled = true;
      query.set("before", next);
      try {
        const older = await api(`deliveries?${query}`);
        body.append(...older.deliveries.map(deliveryRow));
        addOlder(older.next);
      } catch (error) {
        if (!(error instanceof Halted)) more.replaceChildren(el("p", { class: "error" }, error.message));
      }
    });
    more.append(button);
  };
  addOlder(page.next);
  return [
    el("h1", {}, "Deliveries"),
    filterForm(params),
    page.deliveries.length ? list : el("p", { class: "quiet", id: "no-deliveries" }, "No delivery matches."),
    more,
    replayBox(params),
  ];
}

async function detailView(id) {
  const delivery = await api(`deliveries/${encodeURIComponent(id)}`);
  const request = delivery.request;
  const head = el(
    "dl",
    { class: "facts" },
    el("dt", {}, "Status"),
    el("dd", { id: "detail-status" }, badge(delivery.status, delivery.reason)),
    delivery.detail ? [el("dt", {}, "Detail"), el("dd", { class: "detail", id: "detail-detail" }, delivery.detail)] : null,
    el("dt", {}, "Source"),
    el("dd", {}, listLink({ source: delivery.source }, delivery.source)),
    el("dt", {}, "Event"),
    el("dd", {}, delivery.event || "-"),
    el("dt", {}, "Received"),
    el("dd", {}, timeCell(delivery.received_at)),
    el("dt", {}, "Tries"),
    el("dd", {}, delivery.attempts),
    delivery.next_attempt_at ? [el("dt", {}, "Next try"), el("dd", {}, timeCell(delivery.next_attempt_at))] : null,
    delivery.profile_id ? [el("dt", {}, "Profile"), el("dd", {}, delivery.profile_id)] : null,
  );
  const actions = el("div", { class: "actions" });
  if (REPLAYABLE.includes(delivery.status)) {
    actions.append(
      acting(
        el("button", { type: "button", id: "replay-one", class: "danger" }, "Replay"),
        null,
        () => api(`deliveries/${encodeURIComponent(id)}/replay`, "POST"),
        (done) => el("p", { id: "replayed" }, `Replayed: ${done.status}.`),
      ),
    );
  }
  const preview = el("div", { id: "preview" });
  actions.append(
    asking(
      el("button", { type: "button", id: "preview-now" }, "Translate with the mapping files as they are now"),
      preview,
      "Translating it with the mapping files as they are now...",
      () => api(`deliveries/${encodeURIComponent(id)}/preview`),
      previewReport,
    ),
  );
  const headers = Object.entries(request.headers || {}).map(([name, value]) =>
    el("tr", {}, el("th", { scope: "row" }, name), el("td", {}, value)),
  );
  const requestPart = [
    el("h2", {}, "Request"),
    el(
      "dl",
      { class: "facts" },
      el("dt", {}, "Content type"),
      el("dd", {}, request.content_type || ""),
      el("dt", {}, "Client address"),
      el("dd", {}, request.client_ip || "unknown"),
    ),
    headers.length ? el("div", { class: "scrolls" }, el("table", { class: "headers" }, el("tbody", {}, headers))) : null,
    request.body === null
      ? el("p", { class: "quiet" }, "The body is not UTF-8 text; base64: ", el("code", {}, request.body_base64))
      : el("pre", { id: "request-body" }, readable(request.body, request.content_type)),
  ];
  const calls = delivery.calls;
  const callsPart = [
    el("h2", {}, "Calls to the upstream"),
    calls === null
      ? el("p", { class: "quiet" }, "Not translated yet.")
      : calls.length === 0
        ? el("p", { class: "quiet" }, "None: the mapping sends nothing for it.")
        : calls.map((call, index) =>
            el(
              "details",
              { open: true, class: "call" },
              el(
                "summary",
                {},
                `${index + 1}. ${call.method}`,
                index < (delivery.calls_done || 0) ? el("span", { class: "badge status-delivered" }, "sent") : "",
              ),
              el("pre", {}, readable(call.body)),
            ),
          ),
  ];
  const attempts = delivery.attempt_log.map((attempt) =>
    el(
      "tr",
      {},
      el("td", {}, timeCell(attempt.at)),
      el("td", {}, attempt.method || ""),
      el("td", {}, el("span", { class: `badge outcome-${attempt.outcome}` }, attempt.outcome)),
      el("td", { class: "number" }, attempt.http_status ?? ""),
      el("td", { class: "number" }, `${attempt.duration_ms} ms`),
      el(
        "td",
        { class: "detail" },
        attempt.error || "",
        attempt.request || attempt.response
          ? el(
              "details",
              {},
              el("summary", {}, "request and answer"),
              attempt.request ? el("pre", {}, readable(attempt.request)) : null,
              attempt.response ? el("pre", {}, readable(attempt.response)) : null,
            )
          : null,
      ),
    ),
  );
  return [
    el("h1", {}, "Delivery ", el("code", {}, delivery.id)),
    head,
    actions,
    preview,
    ...requestPart,
    ...callsPart,
    el("h2", {}, "Attempts"),
    attempts.length
      ? table(["at", "call", "outcome", "HTTP", "took", "error"], attempts, "attempts")
      : el("p", { class: "quiet" }, "None yet."),
  ];
}

async function sourcesView() {
  const answer = await api("sources");
  // Those that take webhooks first: the others refuse every request until their settings are set.
  const sources = [...answer.sources].sort((a, b) => Number(b.ready) - Number(a.ready) || a.name.localeCompare(b.name));
  const rows = sources.map((source) =>
    el(
      "tr",
      { "data-source": source.name },
      el(
        "td",
        {},
        listLink({ source: source.name }, source.name),
        el("div", { class: "quiet" }, source.kind),
        el("a", { href: `#/try/${encodeURIComponent(source.name)}`, class: "try" }, "try a payload"),
      ),
      el("td", {}, el("code", {}, source.url.startsWith("/") ? location.origin + source.url : source.url)),
      el("td", { class: "detail" }, source.auth.how || source.auth.scheme),
      el("td", { class: "detail" }, el("span", { class: source.ready ? "ready" : "not-ready" }, source.status)),
      el(
        "td",
        { class: "detail" },
        el(
          "details",
          {},
          el("summary", {}, source.rules.length === 1 ? "1 rule" : `${source.rules.length} rules`),
          el("ul", { class: "rules" }, source.rules.map((rule) => el("li", {}, el("strong", {}, rule.name), `: ${rule.does}`))),
        ),
      ),
    ),
  );
  const broken = Object.entries(answer.broken || {}).map(([name, problems]) =>
    el("li", {}, el("strong", {}, name), el("ul", {}, problems.map((problem) => el("li", {}, problem)))),
  );
  return [
    el("h1", {}, "Sources"),
    broken.length
      ? [el("h2", {}, "Mapping files that do not load"), el("ul", { class: "broken", id: "broken" }, broken)]
      : null,
    table(["source", "hook URL", "authentication", "state", "rules"], rows, "sources"),
  ];
}

const CONTENT_TYPES = ["application/json", "application/x-www-form-urlencoded", "application/xml", "text/plain"];

// A payload tried on a source's mapping file as it is on disk: a new source, or a fix, before a provider is
// pointed at it. Nothing is stored or sent.
function tryView(name) {
  const names = knownSources(name);
  const form = el(
    "form",
    { class: "try-form", id: "try-form" },
    labelled("Source", el("select", { name: "source" }, names.map((n) => el("option", { value: n, selected: n === name }, n)))),
    labelled(
      "Content type",
      el("select", { name: "content_type" }, CONTENT_TYPES.map((type) => el("option", { value: type }, type))),
    ),
    labelled("Headers, one a line", el("textarea", { name: "headers", rows: 3, placeholder: "X-Shopify-Topic: orders/paid" })),
    labelled("Hook URL's query", el("input", { name: "query", placeholder: "topic=orders/create" })),
    labelled("Body, as the provider sends it", el("textarea", { name: "body", rows: 14, required: true })),
  );
  const result = el("div", { id: "try-result" });
  const sample = () => {
    const given = new FormData(form);
    const headers = {};
    for (const line of String(given.get("headers")).split("\n")) {
      const at = line.indexOf(":");
      if (at > 0) headers[line.slice(0, at).trim()] = line.slice(at + 1).trim();
    }
    return {
      source: String(given.get("source")),
      sample: {
        body: String(given.get("body")),
        content_type: String(given.get("content_type")),
        headers,
        query: Object.fromEntries(new URLSearchParams(String(given.get("query")))),
      },
    };
  };
  const go = asking(
    el("button", { type: "button", id: "try-go" }, "Translate"),
    result,
    "Translating it with the mapping file as it is now...",
    () => {
      const { source, sample: body } = sample();
      return api(`sources/${encodeURIComponent(source)}/preview`, "POST", body);
    },
    previewReport,
  );
  form.append(go);
  form.addEventListener("submit", (event) => {
    event.preventDefault(); // Enter in a field: translate, not a page load
    go.click();
  });
  return [
    el("h1", {}, "Try a payload"),
    el(
      "p",
      { class: "quiet" },
      "The source's mapping file as it is on disk now translates the payload, as the worker would; nothing is " +
        "stored or sent, and the token is shown as ***. A file added since relay started is read too.",
    ),
    form,
    result,
  ];
}

// ---- routing --------------------------------------------------------------------------------------------------

function currentView() {
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query || "");
  if (path === "/deliveries") return { name: "deliveries", render: () => deliveriesView(params) };
  if (path.startsWith("/d/")) return { name: "deliveries", render: () => detailView(decodeURIComponent(path.slice(3))) };
  if (path === "/sources") return { name: "sources", render: sourcesView };
  if (path.startsWith("/try/")) return { name: "sources", render: async () => tryView(decodeURIComponent(path.slice(5))) };
  return { name: "overview", render: overviewView };
}

async function show() {
  if (!sessionStorage.getItem(TOKEN_KEY)) {
    askToken();
    return;
  }
  const number = ++shown;
  const view = currentView();
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("tools").hidden = false;
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", link.dataset.view === view.name);
  }
  try {
    if (!sourceNames.length) {
      sourceNames = (await api("sources")).sources.map((source) => source.name);
    }
    const parts = await view.render();
    if (number !== shown) return;
    showMessage("");
    $("view").replaceChildren(...[parts].flat(Infinity).filter(Boolean));
    document.body.dataset.shown = String(number);
  } catch (error) {
    if (error instanceof Halted || number !== shown) return;
    showMessage(error.message);
  }
}

function refreshIfIdle() {
  if (!$("auto-refresh").checked || $("sign-in").hidden === false) return;
  // Not while the operator types a filter, reads a dry run or a preview, or has older pages open: a refresh
  // would throw that away.
  if ($("view").contains(document.activeElement) && document.activeElement !== document.body) return;
  if ($("replay-result") && $("replay-result").childElementCount) return;
  if ($("preview") && $("preview").childElementCount) return;
  if ($("forget-result") && $("forget-result").childElementCount) return;
  if ($("try-form")) return; // a payload being written
  if (document.querySelectorAll("#delivery-rows tr").length > PAGE_SIZE) return; // older pages were asked for
  show();
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    show();
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    sourceNames = [];
    askToken("Signed out.");
  });
  $("refresh").addEventListener("click", show);
  window.addEventListener("hashchange", show);
  window.setInterval(refreshIfIdle, REFRESH_MS);
  show();
});
