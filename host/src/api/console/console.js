// The weft console: reads the node's HTTP API and renders it. No framework, no build step.
//
// Every call carries `Authorization: Bearer <token>` when a token was entered (kept in this tab's
// sessionStorage only). Everything from the node is put in the page as text, never as HTML.
// `#entity/<type>/<id>` in the address shows that entity, so a view can be linked to.
"use strict";

const TOKEN_KEY = "weft-console-token";
const ENTITIES_PAGE = 50;
const NOTIFICATIONS_KEPT = 200;
const RECONNECT_MS = 3000;

const $ = (id) => document.getElementById(id);

/** An element with attributes (`on*` as listeners) and children (strings become text). */
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    node.append(child instanceof Node ? child : String(child ?? ""));
  }
  return node;
}

function fill(container, ...children) {
  container.replaceChildren(...children.flat());
}

/** A table of `rows` (objects) under `columns` ([heading, row => cell]). */
function table(columns, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, columns.map(([heading]) => el("th", {}, heading)))),
    el("tbody", {}, rows.map((row) =>
      el("tr", {}, columns.map(([, cell]) => el("td", {}, cell(row)))))));
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

function code(value) {
  return el("code", {}, typeof value === "string" ? value : JSON.stringify(value));
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function authHeaders() {
  return token() ? { Authorization: `Bearer ${token()}` } : {};
}

/** An API error as the console shows it. */
class ApiFailure extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

/** `fetch` of an API route; resolves to its JSON, rejects with an ApiFailure. */
async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Accept: "application/json", ...authHeaders(), ...(options.headers || {}) },
  });
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const error = body && body.error ? body.error : { code: "http_error", message: text };
    throw new ApiFailure(response.status, error.code, error.message);
  }
  return body;
}

/** A path from segments, each percent-encoded whole. */
function route(...segments) {
  return "/" + segments.map(encodeURIComponent).join("/");
}

/** Shows what went wrong in `container`, with a hint for the token. */
function showFailure(container, error) {
  const hint = error.status === 401
    ? " — enter a bearer token above"
    : error.status === 403 ? " — this token's scope does not allow it" : "";
  fill(container, el("span", { class: "error" }, `${error.message}${hint}`));
}

async function loadMembers() {
  const container = $("members");
  try {
    const cluster = await api("/cluster");
    fill(container, table([
      ["name", (m) => m.name + (m.local ? " (this node)" : "")],
      ["role", (m) => m.role],
      ["status", (m) => m.unreachable ? `unreachable: ${m.unreachable}` : m.status],
      ["address", (m) => m.addr],
      ["active entities", (m) => m.active_entities ?? ""],
    ], cluster.members || []));
  } catch (error) {
    if (error.code === "not_clustered") {
      fill(container, el("span", { class: "muted" },
        "this node runs alone: no [cluster] in its weft.toml"));
    } else {
      showFailure(container, error);
    }
  }
}

async function loadPlugins() {
  const container = $("plugins");
  try {
    const answer = await api("/plugins");
    const members = (answer.cluster && answer.cluster.members) || [];
    const columns = [
      ["name", (p) => p.name],
      ["version", (p) => code(p.version)],
      ["world", (p) => p.world],
      ["size", (p) => `${Math.round(p.size_bytes / 1024)} KiB`],
    ];
    // In a cluster, each member's build of each plugin (by content hash).
    for (const member of members) {
      columns.push([member.name, (p) => member.unreachable
        ? "unreachable"
        : (member.plugins && member.plugins[p.name] ? code(member.plugins[p.name].slice(0, 12)) : "—")]);
    }
    const parts = [table(columns, answer.plugins)];
    if (answer.cluster) {
      parts.push(el("p", { class: "muted" },
        answer.cluster.converged ? "every member runs the same builds" : "members differ"));
    }
    fill(container, parts);
  } catch (error) {
    showFailure(container, error);
  }
}

/** The entity types as the node last listed them, by name. */
let entityTypes = new Map();

async function loadEntityTypes() {
  const container = $("entity-types");
  try {
    const answer = await api("/entity-types");
    entityTypes = new Map(answer.entity_types.map((type) => [type.name, type]));
    fill(container, table([
      ["type", (t) => el("button", { class: "link", type: "button", "data-type": t.name,
        onclick: () => listEntities(t.name) }, t.name)],
      ["plugin", (t) => t.plugin],
      ["kind", (t) => t.replication
        ? `replicated: ${t.replication.replicas.join(", ")}`
        : t.single_writer ? "single writer" : "placed"],
    ], answer.entity_types));
  } catch (error) {
    showFailure(container, error);
  }
}

const LEASES_SHOWN = 100;

function leaseRows(leases) {
  return table([
    ["lease", (l) => l.name],
    ["owner", (l) => l.holder.owner],
    ["fencing token", (l) => String(l.holder.fencing_token)],
    ["expires in", (l) => `${l.holder.expires_in_ms} ms`],
  ], leases);
}

async function loadLeases() {
  const container = $("leases");
  try {
    const answer = await api(`/leases?${new URLSearchParams({ limit: LEASES_SHOWN })}`);
    if (answer.leases.length === 0) {
      fill(container, el("span", { class: "muted" }, "no live leases"));
      return;
    }
    fill(container, leaseRows(answer.leases),
      answer.next ? el("p", { class: "muted" }, `the first ${LEASES_SHOWN}; look others up below`) : []);
  } catch (error) {
    showFailure(container, error);
  }
}

/** Which listing the "More" button continues. */
let listing = null;

async function listEntities(entityType, after = null) {
  const container = $("entities");
  const more = $("entities-more");
  $("entities-type").textContent = entityType;
  if (!after) fill(container, "loading…");
  const query = new URLSearchParams({ limit: ENTITIES_PAGE });
  if (after) query.set("after", after);
  try {
    const page = await api(`${route("entities", entityType)}?${query}`);
    const rows = page.entities.map((entity) => el("tr", {},
      el("td", {}, el("a", { href: `#entity/${encodeURIComponent(entityType)}/${encodeURIComponent(entity.id)}`,
        "data-entity": entity.id }, entity.id)),
      el("td", {}, String(entity.seq_nr))));
    if (after && container.querySelector("tbody")) {
      container.querySelector("tbody").append(...rows);
    } else if (rows.length === 0) {
      fill(container, el("span", { class: "muted" }, "no entities with events yet"));
    } else {
      fill(container, el("table", {},
        el("thead", {}, el("tr", {}, el("th", {}, "id"), el("th", {}, "seq nr"))),
        el("tbody", {}, rows)));
    }
    listing = page.next ? { entityType, after: page.next } : null;
    more.hidden = !listing;
  } catch (error) {
    showFailure(container, error);
    more.hidden = true;
  }
}

/** Shows an entity's state and events; `replica` names the stream of a replicated one. */
async function showEntity(entityType, entityId, replica = null) {
  $("entity-type").value = entityType;
  $("entity-id").value = entityId;
  const replicas = entityTypes.get(entityType)?.replication?.replicas || [];
  const select = $("entity-replica");
  select.hidden = replicas.length === 0;
  if (replicas.length > 0) {
    if (!replica || !replicas.includes(replica)) replica = replicas[0];
    fill(select, replicas.map((r) => el("option", { value: r, selected: r === replica }, `replica ${r}`)));
  }
  const stateBox = $("entity-state");
  const eventsBox = $("entity-events");
  fill(stateBox, "loading…");
  fill(eventsBox, "loading…");
  const path = route("entities", entityType, entityId);
  try {
    const state = await api(path);
    fill(stateBox,
      el("p", {}, `seq nr ${state.seq_nr}, plugin `, code(state.plugin)),
      el("pre", {}, json(state.state)));
  } catch (error) {
    showFailure(stateBox, error);
  }
  try {
    const query = replica ? `?${new URLSearchParams({ replica })}` : "";
    const answer = await api(`${path}/events${query}`);
    if (answer.events.length === 0) {
      fill(eventsBox, el("span", { class: "muted" }, "no events"));
      return;
    }
    fill(eventsBox, table([
      ["seq nr", (e) => String(e.seq_nr)],
      ["event", (e) => code(e.payload)],
      ["fencing token", (e) => String(e.fencing_token)],
      ["time", (e) => new Date(Math.floor(e.timestamp / 65536)).toISOString()],
      ["plugin", (e) => code(e.plugin)],
    ], answer.events));
  } catch (error) {
    showFailure(eventsBox, error);
  }
}

function showEntityFromAddress() {
  const match = /^#entity\/([^/]+)\/([^/]+)$/.exec(location.hash);
  if (match) showEntity(decodeURIComponent(match[1]), decodeURIComponent(match[2]));
}

async function sendCommand(event) {
  event.preventDefault();
  const reply = $("command-reply");
  const entityType = $("command-type").value.trim();
  const entityId = $("command-id").value.trim();
  let body;
  try {
    body = JSON.parse($("command-body").value);
  } catch (error) {
    fill(reply, el("span", { class: "error" }, `the command is not valid JSON: ${error.message}`));
    return;
  }
  fill(reply, "sending…");
  try {
    const answer = await api(route("entities", entityType, entityId), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    fill(reply, json(answer));
    // Show the entity the command went to, with its new event.
    const target = `#entity/${encodeURIComponent(entityType)}/${encodeURIComponent(entityId)}`;
    if (location.hash === target) showEntityFromAddress();
    else location.hash = target;
  } catch (error) {
    showFailure(reply, error);
  }
}

async function showLease(event) {
  event.preventDefault();
  const container = $("lease");
  const name = $("lease-name").value.trim();
  try {
    const lease = await api(route("leases", name));
    fill(container, lease.holder
      ? leaseRows([lease])
      : el("span", { class: "muted" }, `${lease.name}: nobody holds it`));
  } catch (error) {
    showFailure(container, error);
  }
}

async function readDdata(event) {
  event.preventDefault();
  const container = $("ddata");
  try {
    fill(container, json(await api(route("ddata", $("ddata-key").value.trim()))));
  } catch (error) {
    showFailure(container, error);
  }
}

/** The live notifications stream: a `fetch` read as server-sent events (EventSource cannot send
 * the Authorization header), reconnected when it ends. */
let notifications = null;

function followNotifications() {
  if (notifications) notifications.abort();
  const controller = new AbortController();
  notifications = controller;
  const state = $("notifications-state");
  const list = $("notifications");
  const reconnect = () => {
    if (notifications === controller) setTimeout(() => {
      if (notifications === controller) followNotifications();
    }, RECONNECT_MS);
  };
  (async () => {
    const response = await fetch("/notifications", {
      headers: { Accept: "text/event-stream", ...authHeaders() },
      signal: controller.signal,
    });
    if (!response.ok) {
      state.textContent = response.status === 401 || response.status === 403
        ? "(needs a client token)" : `(${response.status})`;
      reconnect();
      return;
    }
    state.textContent = "(live)";
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += value.replaceAll("\r\n", "\n");
      let end;
      while ((end = buffered.indexOf("\n\n")) >= 0) {
        const block = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        const fields = { event: "message", data: [] };
        for (const line of block.split("\n")) {
          const colon = line.indexOf(":");
          if (colon <= 0) continue;
          const [name, text] = [line.slice(0, colon), line.slice(colon + 1).replace(/^ /, "")];
          if (name === "data") fields.data.push(text);
          else if (name === "event") fields.event = text;
        }
        if (fields.data.length === 0) continue;
        list.prepend(el("li", {}, el("strong", {}, fields.event), " ",
          code(fields.data.join("\n")), " ",
          el("span", { class: "muted" }, new Date().toLocaleTimeString())));
        while (list.children.length > NOTIFICATIONS_KEPT) list.lastChild.remove();
      }
    }
    state.textContent = "(reconnecting)";
    reconnect();
  })().catch((error) => {
    if (controller.signal.aborted) return;
    state.textContent = `(disconnected: ${error.message})`;
    reconnect();
  });
}

function refresh() {
  $("status").textContent = "";
  loadMembers();
  loadPlugins();
  loadLeases();
  loadEntityTypes().then(showEntityFromAddress);
  const shownType = $("entities-type").textContent;
  if (shownType) listEntities(shownType);
}

function start() {
  $("token").value = token();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    refresh();
    followNotifications();
  });
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
    refresh();
    followNotifications();
  });
  $("refresh").addEventListener("click", refresh);
  $("entities-more").addEventListener("click", () => {
    if (listing) listEntities(listing.entityType, listing.after);
  });
  $("entity-form").addEventListener("submit", (event) => {
    event.preventDefault();
    showEntity($("entity-type").value.trim(), $("entity-id").value.trim(), $("entity-replica").value || null);
  });
  $("command-form").addEventListener("submit", sendCommand);
  $("lease-form").addEventListener("submit", showLease);
  $("ddata-form").addEventListener("submit", readDdata);
  window.addEventListener("hashchange", showEntityFromAddress);
  window.addEventListener("error", (event) => {
    $("status").textContent = `console error: ${event.message}`;
  });
  refresh();
  followNotifications();
}

start();
