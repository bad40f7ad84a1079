// The tidings dashboard: plain JavaScript over the control plane's JSON API.
//
// Every second it polls /v1/stats (rates are differences of the cumulative
// totals between two polls), the conversations, the agents, and the causal
// graph of the conversation on view. The admin token comes from the URL
// fragment (#token=...) or the sign-in box; it is kept in sessionStorage and
// sent only in the Authorization header. Text from the server (message
// previews, names) is only ever set with textContent, never parsed as HTML.
"use strict";

const TOKEN_KEY = "tidings.admin-token";
const POLL_MS = 1000;
const SPARK_POINTS = 60;
const SVG_NS = "http://www.w3.org/2000/svg";
// graph geometry (px)
const LANE_H = 54;
const COL_W = 84;
const NODE_W = 70;
const NODE_H = 34;
const PAD_X = 24;
const PAD_Y = 14;
const LABEL_W = 150;

const state = {
  token: null,
  prev: null, // the previous /v1/stats answer, for rates
  spark: { published: [], delivered: [] },
  conversations: [],
  selected: null, // "<group>/<name>"
  graphKey: "", // what was drawn last, to redraw only on change
  graph: null,
  chosenNode: null,
  timer: null,
  busy: false,
};

const $ = (id) => document.getElementById(id);

// -- the token ---------------------------------------------------------------

function takeTokenFromFragment() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const token = params.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token.trim());
    params.delete("token");
    const rest = params.toString();
    // Drop the token from the address bar (and so from history and bookmarks).
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function showLogin(message) {
  clearInterval(state.timer);
  state.timer = null;
  state.token = null;
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setStatus("idle", "not connected");
}

function start(token) {
  state.token = token;
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  const conv = new URLSearchParams(location.hash.replace(/^#/, "")).get("conv");
  if (conv) state.selected = conv;
  tick();
  state.timer = setInterval(tick, POLL_MS);
}

// -- HTTP --------------------------------------------------------------------

class AuthError extends Error {}

async function api(path) {
  const reply = await fetch(path, {
    headers: { Authorization: "Bearer " + state.token, Accept: "application/json" },
    cache: "no-store",
    referrerPolicy: "no-referrer",
  });
  if (reply.status === 401 || reply.status === 403) {
    let message = reply.status === 401 ? "the token was refused" : "not an admin token";
    try {
      message = (await reply.json()).message || message;
    } catch (_) {
      /* keep the default */
    }
    throw new AuthError(message);
  }
  if (!reply.ok) throw new Error(path + ": HTTP " + reply.status);
  return reply.json();
}

async function tick() {
  if (state.busy) return; // the previous poll is still running (a slow or restarting server)
  state.busy = true;
  try {
    const [stats, conversations, agents] = await Promise.all([
      api("/v1/stats"),
      api("/v1/conversations?limit=1000"),
      api("/v1/agents"),
    ]);
    renderStats(stats);
    renderConversations(conversations);
    renderAgents(agents);
    if (state.selected) await refreshGraph();
    setStatus("live", "live · " + new Date(stats.time_ms).toLocaleTimeString());
  } catch (err) {
    if (err instanceof AuthError) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(err.message);
    } else {
      // The server may be restarting (the demo kills it on purpose): keep the last figures.
      setStatus("down", "no answer from the server, retrying…");
      state.prev = null;
    }
  } finally {
    state.busy = false;
  }
}

function setStatus(kind, text) {
  $("status").dataset.state = kind;
  $("status-text").textContent = text;
}

// -- figures -----------------------------------------------------------------

const fmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const fmt1 = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1, minimumFractionDigits: 1 });

function ms(value, count) {
  if (count === 0 || value === null || value === undefined) return "–";
  if (value < 1) return (value * 1000).toFixed(0) + " µs";
  if (value < 100) return fmt1.format(value) + " ms";
  return fmt.format(value) + " ms";
}

function renderStats(s) {
  const t = s.totals;
  const prev = state.prev;
  let pubRate = null;
  let delRate = null;
  if (prev) {
    const dt = (s.time_ms - prev.time_ms) / 1000;
    const dp = t.published - prev.totals.published;
    const dd = t.delivered - prev.totals.delivered;
    // A negative difference means the server restarted and its counters began again.
    if (dt > 0 && dp >= 0 && dd >= 0) {
      pubRate = dp / dt;
      delRate = dd / dt;
    }
  }
  state.prev = s;
  $("fig-connections").textContent = fmt.format(s.connections);
  $("fig-agents-online").textContent = fmt.format(s.agents_online);
  $("fig-subscriptions").textContent = "subscriptions " + fmt.format(s.subscriptions);
  if (pubRate !== null) {
    $("fig-published-rate").textContent = fmt.format(pubRate);
    $("fig-delivered-rate").textContent = fmt.format(delRate);
    pushSpark("published", pubRate);
    pushSpark("delivered", delRate);
  }
  $("fig-published-total").textContent = "total " + fmt.format(t.published) + " · acked " + fmt.format(t.publish_acks);
  $("fig-delivered-total").textContent = "total " + fmt.format(t.delivered) + " · acks " + fmt.format(t.acks);
  $("fig-redeliveries").textContent = fmt.format(t.redeliveries);
  $("fig-dead-letters").textContent = "dead letters " + fmt.format(t.dead_letters) + " · duplicates " + fmt.format(t.duplicates);
  $("fig-dropped").textContent = fmt.format(t.dropped);
  $("fig-rejected").textContent = fmt.format(t.rejected);
  const codes = Object.entries(s.rejected || {}).filter(([, n]) => n > 0);
  $("fig-rejected-codes").textContent = codes.length
    ? codes.map(([code, n]) => code + " " + fmt.format(n)).join(" · ")
    : "by code: none";
  for (const id of ["fig-dropped", "fig-rejected"]) {
    $(id).closest(".figure").classList.toggle("alert", $(id).textContent !== "0");
  }
  if (s.storage) {
    $("fig-fsync-p99").textContent = ms(s.storage.fsync_p99_ms, 1);
    $("fig-storage").textContent =
      "p50 " + ms(s.storage.fsync_p50_ms, 1) + " · batch " + fmt1.format(s.storage.commit_batch_mean) +
      " · queue " + fmt.format(s.storage.queue_depth);
  } else {
    $("fig-fsync-p99").textContent = "n/a";
    $("fig-storage").textContent = "no embedded storage here";
  }
  for (const row of document.querySelectorAll("#latency-table tr[data-stage]")) {
    const l = s.latency_ms[row.dataset.stage];
    if (!l) continue;
    row.querySelector(".p50").textContent = ms(l.p50, l.count);
    row.querySelector(".p99").textContent = ms(l.p99, l.count);
    row.querySelector(".samples").textContent = fmt.format(l.count);
  }
}

function pushSpark(name, value) {
  const points = state.spark[name];
  points.push(value);
  if (points.length > SPARK_POINTS) points.shift();
  const svg = $("spark-" + name);
  const max = Math.max(1, ...points);
  // a short history fills the width too (at least 10 points' worth), then it scrolls
  const span = Math.max(points.length, 10) - 1;
  const offset = span + 1 - points.length;
  const coords = points.map((v, i) => (((offset + i) * 120) / span).toFixed(1) + "," + (27 - (v / max) * 25).toFixed(1));
  svg.replaceChildren();
  if (coords.length > 1) {
    const first = coords[0].split(",")[0];
    svg.append(el("path", { d: "M" + first + ",28 L" + coords.join(" L") + " L120,28 Z", class: "spark-fill" }));
    svg.append(el("polyline", { points: coords.join(" "), class: "spark-line" }));
  }
}

// -- conversations and agents --------------------------------------------------

function ago(msValue) {
  if (!msValue) return "no messages";
  const s = Math.max(0, (Date.now() - msValue) / 1000);
  if (s < 2) return "active now";
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function renderConversations(list) {
  list.sort((a, b) => a.id.localeCompare(b.id, "en", { numeric: true }));
  state.conversations = list;
  $("conversation-count").textContent = list.length;
  const ul = $("conversations");
  const items = list.map((c) => {
    const li = h("li", { class: "item conv" + (c.id === state.selected ? " selected" : "") });
    li.dataset.conversation = c.id;
    li.dataset.messages = c.messages;
    li.append(
      h("div", { class: "line" }, [
        h("span", { class: "name" }, c.topic),
        h("span", { class: "badge state-" + c.state }, c.state),
      ]),
      h("div", { class: "sub" }, [
        h("span", {}, fmt.format(c.messages) + " messages"),
        h("span", {}, c.members_online.length + "/" + c.members.length + " online"),
        h("span", {}, ago(c.last_activity_ms)),
      ]),
    );
    li.addEventListener("click", () => select(c.id));
    return li;
  });
  ul.replaceChildren(...items);
  if (!list.length) ul.replaceChildren(h("li", { class: "none" }, "No conversations yet: POST /v1/conversations creates one."));
}

function renderAgents(list) {
  list.sort((a, b) => Number(b.online) - Number(a.online) || a.agent.localeCompare(b.agent, "en", { numeric: true }));
  $("agent-count").textContent = list.filter((a) => a.online).length + " / " + list.length;
  const items = list.map((a) => {
    const li = h("li", { class: "item agent" + (a.online ? " online" : " offline") });
    li.dataset.agent = a.agent;
    li.dataset.online = String(a.online);
    const convs = a.conversations.map((t) => t.replace(/^conv\//, "")).join(", ");
    li.append(
      h("div", { class: "line" }, [
        h("span", { class: "presence", title: a.online ? "online" : "offline" }),
        h("span", { class: "name" }, a.agent),
        h("span", { class: "badge" }, a.online ? a.status || "online" : "offline"),
      ]),
      h("div", { class: "sub" }, [
        h("span", {}, convs || "no conversation"),
        a.capabilities.length ? h("span", {}, a.capabilities.join(" · ")) : null,
      ]),
    );
    return li;
  });
  $("agents").replaceChildren(...items);
  if (!list.length) $("agents").replaceChildren(h("li", { class: "none" }, "No agent has connected yet."));
}

function select(id) {
  state.selected = id;
  state.graphKey = "";
  state.chosenNode = null;
  $("details").hidden = true;
  history.replaceState(null, "", location.pathname + location.search + "#conv=" + encodeURIComponent(id));
  for (const li of document.querySelectorAll("#conversations li.conv")) {
    li.classList.toggle("selected", li.dataset.conversation === id);
  }
  refreshGraph().catch(() => setStatus("down", "no answer from the server, retrying…"));
}

// -- the causal graph -----------------------------------------------------------

async function refreshGraph() {
  const id = state.selected;
  const conv = state.conversations.find((c) => c.id === id);
  if (!conv) return;
  const limit = $("graph-limit").value;
  const [group, name] = id.split("/");
  const path = "/v1/conversations/" + encodeURIComponent(group) + "/" + encodeURIComponent(name);
  const [graph, presence] = await Promise.all([api(path + "/graph?limit=" + limit), api(path + "/presence")]);
  if (state.selected !== id) return; // another one was picked meanwhile
  $("conversation-empty").hidden = true;
  $("conversation-body").hidden = false;
  $("conversation").dataset.topic = conv.topic;
  $("conv-title").textContent = conv.topic;
  $("conv-meta").textContent =
    conv.state + " · " + fmt.format(conv.messages) + " messages retained · head offset " + fmt.format(graph.head) +
    " · created " + new Date(conv.created_ms).toLocaleTimeString();
  renderMembers(presence);
  const key = [id, limit, graph.head, graph.nodes.length, graph.nodes.map((n) => n.redeliveries + (n.dead_letter ? "d" : "")).join("")].join("|");
  if (key !== state.graphKey) {
    state.graphKey = key;
    state.graph = graph;
    drawGraph(graph, conv);
  }
}

function renderMembers(presence) {
  const chips = presence.map((a) => {
    const chip = h("span", { class: "chip" + (a.online ? " online" : "") }, [h("span", { class: "presence" }), a.agent]);
    chip.dataset.member = a.agent;
    return chip;
  });
  $("conv-members").replaceChildren(...chips);
}

// A sender's colour: its role (the name without a trailing -N) picks a hue, the
// first roles seen taking well-separated ones, so "coder-4" and "coder-9" match.
const HUES = [205, 140, 30, 285, 350, 175, 55, 255, 100, 320];
const roleHues = new Map();
function hue(sender) {
  const role = sender.replace(/[-_.:]?\d+$/, "");
  if (!roleHues.has(role)) roleHues.set(role, HUES[roleHues.size % HUES.length] + 7 * Math.floor(roleHues.size / HUES.length));
  return roleHues.get(role);
}

// Columns follow causal order: nodes sorted by Lamport time share a column when
// their Lamport times are equal (concurrent), and a node always lands right of
// its parent and of its sender's previous message, whatever clocks clients keep.
function layout(nodes) {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const lanes = [];
  const laneOf = new Map();
  for (const n of nodes) {
    if (!laneOf.has(n.sender)) {
      laneOf.set(n.sender, lanes.length);
      lanes.push(n.sender);
    }
  }
  const order = [...nodes].sort((a, b) => a.lamport - b.lamport || a.ts - b.ts || a.offset - b.offset);
  const col = new Map();
  const lastOfSender = new Map();
  let cur = -1;
  let lastLamport = null;
  for (const n of order) {
    if (n.lamport === 0 || n.lamport !== lastLamport) cur += 1;
    lastLamport = n.lamport;
    let c = cur;
    if (n.parent && col.has(n.parent)) c = Math.max(c, col.get(n.parent) + 1);
    if (lastOfSender.has(n.sender)) c = Math.max(c, lastOfSender.get(n.sender) + 1);
    col.set(n.id, c);
    lastOfSender.set(n.sender, c);
    cur = Math.max(cur, c);
  }
  return { byId, lanes, laneOf, col, columns: cur + 1 };
}

function relTime(ts, origin) {
  const s = Math.max(0, (ts - origin) / 1000);
  if (s < 100) return "+" + s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  return "+" + m + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
}

function short(name, max) {
  return name.length <= max ? name : name.slice(0, max - 1) + "…";
}

function drawGraph(graph, conv) {
  const scroller = $("graph-scroll");
  const atEnd = scroller.scrollLeft + scroller.clientWidth >= scroller.scrollWidth - 40;
  const { byId, lanes, laneOf, col, columns } = layout(graph.nodes);
  // "fit to width" narrows the columns to the space there is; when boxes no longer fit,
  // messages become small marks (the lane names the sender; hovering tells the rest)
  const room = (scroller.clientWidth || 800) - PAD_X * 2;
  const colW = $("graph-fit").checked ? Math.max(6, Math.min(COL_W, room / Math.max(1, columns))) : COL_W;
  const compact = colW < NODE_W + 8;
  const nodeW = compact ? Math.max(4, Math.min(14, colW - 2)) : NODE_W;
  const nodeH = compact ? 14 : NODE_H;
  const width = PAD_X * 2 + Math.max(1, columns) * colW;
  const height = PAD_Y * 2 + Math.max(1, lanes.length) * LANE_H;
  const origin = conv.created_ms || (graph.nodes[0] ? graph.nodes[0].ts : 0);
  const x = (id) => PAD_X + col.get(id) * colW;
  const y = (sender) => PAD_Y + laneOf.get(sender) * LANE_H + (LANE_H - nodeH) / 2;

  // the sender labels, fixed at the left
  const lanesSvg = $("graph-lanes");
  lanesSvg.setAttribute("width", LABEL_W);
  lanesSvg.setAttribute("height", height);
  lanesSvg.replaceChildren(
    ...lanes.map((sender, i) => {
      const g = el("g", { class: "lane-label", "data-lane": sender });
      g.append(
        el("circle", { cx: 14, cy: PAD_Y + i * LANE_H + LANE_H / 2, r: 5, fill: "hsl(" + hue(sender) + " 70% 60%)" }),
        text(short(sender, 17), { x: 26, y: PAD_Y + i * LANE_H + LANE_H / 2 + 4, class: "lane-name" }),
      );
      return g;
    }),
  );

  const svg = $("graph-svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  const defs = el("defs");
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(el("path", { d: "M0,0 L10,5 L0,10 z", class: "edge-head" }));
  defs.append(marker);
  const bands = el("g", { class: "bands" });
  lanes.forEach((_, i) => {
    if (i % 2 === 0) bands.append(el("rect", { x: 0, y: PAD_Y + i * LANE_H, width, height: LANE_H, class: "band" }));
  });
  const edges = el("g", { class: "edges" });
  for (const e of graph.edges) {
    const a = byId.get(e.source);
    const b = byId.get(e.target);
    if (!a || !b) continue;
    const x1 = x(a.id) + nodeW;
    const y1 = y(a.sender) + nodeH / 2;
    const x2 = x(b.id);
    const y2 = y(b.sender) + nodeH / 2;
    const bend = Math.max(compact ? 4 : 16, (x2 - x1) / 2);
    const path = el("path", {
      d: "M" + x1 + "," + y1 + " C" + (x1 + bend) + "," + y1 + " " + (x2 - bend) + "," + y2 + " " + x2 + "," + y2,
      class: "edge",
      "marker-end": "url(#arrow)",
    });
    path.dataset.edge = e.source + ">" + e.target;
    path.dataset.source = e.source;
    path.dataset.target = e.target;
    edges.append(path);
  }
  const nodes = el("g", { class: "nodes" });
  for (const n of graph.nodes) {
    const classes = compact ? ["node", "compact"] : ["node"];
    if (n.redeliveries > 0) classes.push("redelivered");
    if (n.dead_letter) classes.push("dead");
    if (!n.parent) classes.push("root");
    const g = el("g", { class: classes.join(" "), transform: "translate(" + x(n.id) + "," + y(n.sender) + ")", tabindex: 0 });
    g.dataset.nodeId = n.id;
    g.dataset.sender = n.sender;
    g.dataset.offset = n.offset;
    g.dataset.redeliveries = n.redeliveries;
    g.dataset.deadLetter = String(n.dead_letter);
    const tip = el("title");
    tip.textContent =
      n.sender + " · offset " + n.offset + " · lamport " + n.lamport + "\n" + new Date(n.ts).toLocaleTimeString() +
      (n.parent ? "\nreplies to " + n.parent : "\nstarts a thread") +
      (n.redeliveries ? "\nredelivered " + n.redeliveries + "×" : "") + (n.dead_letter ? "\ndead letter" : "") +
      "\n" + n.preview;
    const h0 = hue(n.sender);
    const box = { width: nodeW, height: nodeH, rx: compact ? 3 : 6, class: "box" };
    g.append(tip, el("rect", { ...box, fill: "hsl(" + h0 + " 45% 22%)", stroke: "hsl(" + h0 + " 70% 60%)" }));
    // compact: no room for text or badges; the box's colour, dashes and fill still say it
    if (!compact) {
      g.append(
        text(short(n.sender, 11), { x: NODE_W / 2, y: 14, class: "node-sender" }),
        text(relTime(n.ts, origin), { x: NODE_W / 2, y: 27, class: "node-time" }),
      );
      if (n.dead_letter) {
        g.append(el("rect", { x: NODE_W - 24, y: -8, width: 30, height: 14, rx: 7, class: "badge-dead" }),
          text("DLQ", { x: NODE_W - 9, y: 2.5, class: "badge-text" }));
      } else if (n.redeliveries > 0) {
        g.append(el("rect", { x: NODE_W - 22, y: -8, width: 28, height: 14, rx: 7, class: "badge-redelivered" }),
          text("↻" + n.redeliveries, { x: NODE_W - 8, y: 2.5, class: "badge-text" }));
      }
    }
    g.addEventListener("click", () => choose(n.id));
    g.addEventListener("keydown", (ev) => { if (ev.key === "Enter") choose(n.id); });
    nodes.append(g);
  }
  svg.replaceChildren(defs, bands, edges, nodes);

  const shown = graph.nodes.length;
  const summary = $("graph-summary");
  summary.dataset.nodes = shown;
  summary.dataset.edges = edges.childElementCount;
  summary.dataset.head = graph.head;
  const roots = graph.nodes.filter((n) => !n.parent).length;
  const red = graph.nodes.filter((n) => n.redeliveries > 0).length;
  const dead = graph.nodes.filter((n) => n.dead_letter).length;
  summary.textContent =
    shown + " messages (" + (conv.messages > shown ? "the latest of " + fmt.format(conv.messages) : "all") + ") · " +
    edges.childElementCount + " replies · " + roots + " thread starts · " + lanes.length + " senders · " +
    red + " redelivered · " + dead + " dead-lettered";
  if (atEnd) scroller.scrollLeft = scroller.scrollWidth;
  if (state.chosenNode) highlight(state.chosenNode);
}

function choose(id) {
  state.chosenNode = id;
  const n = state.graph && state.graph.nodes.find((m) => m.id === id);
  if (!n) return;
  $("details").hidden = false;
  $("d-id").textContent = n.id;
  $("d-sender").textContent = n.sender;
  $("d-offset").textContent = n.offset;
  $("d-lamport").textContent = n.lamport;
  $("d-time").textContent = new Date(n.ts).toLocaleString();
  $("d-parent").textContent = n.parent || "none: it starts a thread";
  const fate = [];
  if (n.redeliveries) fate.push("redelivered " + n.redeliveries + "× (nacked, or its ack timed out)");
  if (n.dead_letter) fate.push("dead letter: a consumer never acked it; a copy is in dlq/" + state.graph.topic);
  $("d-deliveries").textContent = fate.length ? fate.join(" · ") : "no redelivery";
  $("d-preview").textContent = n.preview;
  highlight(id);
}

// Highlight a message's thread: its ancestors up the parent links, and its replies.
function highlight(id) {
  const graph = state.graph;
  if (!graph) return;
  const byId = new Map(graph.nodes.map((n) => [n.id, n]));
  const thread = new Set();
  for (let n = byId.get(id); n && !thread.has(n.id); n = byId.get(n.parent)) thread.add(n.id);
  for (const e of graph.edges) if (e.source === id) thread.add(e.target);
  for (const g of document.querySelectorAll("#graph-svg .node")) {
    g.classList.toggle("in-thread", thread.has(g.dataset.nodeId));
    g.classList.toggle("chosen", g.dataset.nodeId === id);
  }
  for (const p of document.querySelectorAll("#graph-svg .edge")) {
    p.classList.toggle("in-thread", thread.has(p.dataset.source) && thread.has(p.dataset.target));
  }
  $("graph").classList.add("focused");
}

// -- DOM helpers ------------------------------------------------------------------

function el(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function text(content, attrs) {
  const t = el("text", attrs);
  t.textContent = content;
  return t;
}

function h(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of [].concat(children ?? [])) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// -- start -----------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token-input").value.trim().replace(/^export TIDINGS_ADMIN_TOKEN=/, "");
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-input").value = "";
    start(token);
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("");
  });
  $("graph-fit").addEventListener("change", () => {
    if (state.graph) drawGraph(state.graph, state.conversations.find((c) => c.id === state.selected) || {});
  });
  $("graph-limit").addEventListener("change", () => {
    state.graphKey = "";
    if (state.selected) refreshGraph().catch(() => {});
  });
  $("graph-svg").addEventListener("click", (ev) => {
    if (ev.target.closest(".node")) return;
    state.chosenNode = null;
    $("details").hidden = true;
    $("graph").classList.remove("focused");
  });
  window.addEventListener("hashchange", () => {
    const token = takeTokenFromFragment();
    if (token && token !== state.token) {
      clearInterval(state.timer);
      start(token);
    }
  });
  const token = takeTokenFromFragment();
  if (token) start(token);
  else showLogin("");
});
