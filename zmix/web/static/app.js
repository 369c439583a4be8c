// The zmix web view: draws /api/network once, then updates from the server-sent events of
// /events (one "status" event per refresh). Plain DOM calls, no framework; every text is set with
// textContent, never parsed as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const STALE_MS = 5000; // no report for this long: the page says "stale"
const BOX_W = 200, BOX_H = 102, COL_W = 270, ROW_H = 122, TOP = 34, MARGIN = 16;

const state = { graph: null, columns: [], lastUpdate: 0, updates: 0, source: null };

function el(tag, attrs, text) {
  const node = tag === "tr" || tag === "td" ? document.createElement(tag)
    : document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmtRate(v) { return v === null || v === undefined ? "–" : v.toFixed(1); }
function fmtLoss(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(1) + " %"; }
function fmtInt(v) { return v === null || v === undefined ? "–" : String(v); }
function fmtAge(v) {
  if (v === null || v === undefined) return "–";
  const s = Math.floor(v);
  return s >= 3600 ? Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min"
    : s >= 60 ? Math.floor(s / 60) + " min " + (s % 60) + " s" : s + " s";
}

// The columns of the map: providers as packets enter, each layer, providers as they leave.
function columnsOf(graph) {
  return [{ title: "providers (in)", names: graph.providers },
    ...graph.layers.map((names, i) => ({ title: "layer " + i, names })),
    { title: "providers (out)", names: graph.providers }];
}

function position(col, row, count, rows) {
  const offset = (rows - count) * ROW_H / 2;
  return { x: MARGIN + col * COL_W, y: TOP + offset + row * ROW_H };
}

function drawMap(graph) {
  const svg = document.getElementById("map");
  svg.replaceChildren();
  const columns = columnsOf(graph);
  const rows = Math.max(...columns.map((c) => c.names.length));
  const width = 2 * MARGIN + (columns.length - 1) * COL_W + BOX_W;
  const height = TOP + rows * ROW_H;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const at = new Map(); // "name@column" -> top-left corner
  columns.forEach((column, c) => {
    svg.appendChild(el("text", { class: "column-title", x: MARGIN + c * COL_W + BOX_W / 2, y: 18 },
      column.title));
    column.names.forEach((name, r) => at.set(name + "@" + c, position(c, r, column.names.length, rows)));
  });
  const links = el("g", { class: "links" });
  const layerOf = new Map(graph.nodes.map((n) => [n.name, n.layer]));
  for (const link of graph.links) {
    const fromCol = layerOf.get(link.from) === null ? 0 : layerOf.get(link.from) + 1;
    const toCol = layerOf.get(link.to) === null ? columns.length - 1 : layerOf.get(link.to) + 1;
    const a = at.get(link.from + "@" + fromCol), b = at.get(link.to + "@" + toCol);
    if (!a || !b) continue;
    const line = el("line", { class: "link rate-0 loss-none", "data-from": link.from,
      "data-to": link.to, x1: a.x + BOX_W, y1: a.y + BOX_H / 2, x2: b.x, y2: b.y + BOX_H / 2 });
    line.appendChild(el("title", {}, `${link.from} → ${link.to}: no data yet`));
    links.appendChild(line);
  }
  svg.appendChild(links);
  const roles = new Map(graph.nodes.map((n) => [n.name, n.role]));
  columns.forEach((column, c) => {
    for (const name of column.names) {
      const p = at.get(name + "@" + c);
      const g = el("g", { class: "node unknown", "data-node": name, "data-state": "unknown",
        "data-role": roles.get(name), transform: `translate(${p.x},${p.y})` });
      g.appendChild(el("title", {}, name));
      g.appendChild(el("rect", { width: BOX_W, height: BOX_H, rx: 6 }));
      const lines = ["name", "state", "rates", "queue", "loss"];
      if (roles.get(name) === "provider") lines.push("clients");
      lines.forEach((cls, i) => g.appendChild(el("text", { class: cls, x: 8, y: 16 + 15 * i },
        cls === "name" ? name : cls === "state" ? "NO DATA" : "")));
      svg.appendChild(g);
    }
  });
}

function drawTable(graph) {
  const body = document.querySelector("#nodes tbody");
  body.replaceChildren();
  for (const node of graph.nodes) {
    const row = el("tr", { "data-node": node.name, "data-state": "unknown" });
    const cells = [node.name, node.role, node.layer === null ? "–" : node.layer, "NO DATA"];
    for (let i = 0; i < 16; i++) row.appendChild(el("td", {}, i < cells.length ? String(cells[i]) : "–"));
    body.appendChild(row);
  }
}

// A report's node is "up", "down" or "unknown" (not readable from here: neither local nor with a
// metrics_port); a report without "state" says only up or not.
function nodeState(node) {
  if (!node || node.up === undefined) return "unknown";
  if (node.state === "up" || node.state === "down" || node.state === "unknown") return node.state;
  return node.up ? "up" : "down";
}
function stateText(s) { return s === "up" ? "UP" : s === "down" ? "DOWN" : "NO DATA"; }

function rateClass(v) {
  if (v === null || v === undefined || v < 0.05) return "rate-0";
  return v < 2 ? "rate-1" : v < 20 ? "rate-2" : v < 100 ? "rate-3" : "rate-4";
}

function lossClass(link) {
  if (link.loop_loss === null || link.loop_loss === undefined || !link.loop_samples) return "loss-none";
  return link.loop_loss < 0.01 ? "loss-low" : link.loop_loss < 0.1 ? "loss-mid" : "loss-high";
}

function dropsText(node) {
  const reasons = Object.entries(node.drops || {}).filter(([, n]) => n > 0)
    .sort((a, b) => b[1] - a[1]).slice(0, 3).map(([r, n]) => `${r} ${n}`);
  return fmtInt(node.dropped_total) + (reasons.length ? " (" + reasons.join(", ") + ")" : "");
}

function clientsText(node, graph) {
  const declared = (graph.clients[node.name] || []).length;
  return `clients online ${fmtInt(node.clients_online)} / ${declared} declared`;
}

function updateNode(node, graph) {
  const s = nodeState(node);
  const received = node && node.stats ? node.stats.received : undefined;
  for (const g of document.querySelectorAll(`#map g.node[data-node="${CSS.escape(node.name)}"]`)) {
    g.setAttribute("class", "node " + s);
    g.setAttribute("data-state", s);
    g.setAttribute("data-packets-in", node.packets_in_per_s ?? "");
    g.setAttribute("data-received", received ?? "");
    g.querySelector(".state").textContent = stateText(s);
    g.querySelector("title").textContent = `${node.name}: ${stateText(s)}` +
      (node.error ? ` (${node.error})` : "") +
      `, ${fmtRate(node.packets_in_per_s)} packets/s in, ${fmtRate(node.packets_out_per_s)} out,` +
      ` queue ${fmtInt(node.queue)}, drops ${dropsText(node)},` +
      ` loop loss ${fmtLoss(node.loop_loss)} over ${node.loop_samples || 0} loops`;
    g.querySelector(".rates").textContent = `in ${fmtRate(node.packets_in_per_s)}/s · out ${fmtRate(node.packets_out_per_s)}/s`;
    g.querySelector(".queue").textContent = `queue ${fmtInt(node.queue)} · drops ${fmtInt(node.dropped_total)}`;
    g.querySelector(".loss").textContent = `loop loss ${fmtLoss(node.loop_loss)} (${node.loop_samples || 0} loops)`;
    const clients = g.querySelector(".clients");
    if (clients) clients.textContent = clientsText(node, graph);
  }
  const row = document.querySelector(`#nodes tr[data-node="${CSS.escape(node.name)}"]`);
  if (!row) return;
  row.setAttribute("data-state", s);
  row.setAttribute("data-received", received ?? "");
  const loops = `${fmtInt(node.loops_sent)} / ${fmtInt(node.loops_returned)} / ${fmtInt(node.loops_lost)}`;
  const cells = [node.name, node.role, node.layer === null ? "–" : node.layer, stateText(s),
    fmtRate(node.packets_in_per_s), fmtRate(node.packets_out_per_s), fmtInt(received),
    fmtInt(node.queue), dropsText(node), fmtInt(node.workers), loops, fmtLoss(node.loop_loss),
    node.role === "provider" ? fmtInt(node.clients_online) : "–",
    node.role === "provider" ? fmtInt(node.mailbox_items) : "–", fmtAge(node.age), node.error || ""];
  cells.forEach((text, i) => { row.children[i].textContent = String(text); });
}

function updateLink(link) {
  const sel = `#map line.link[data-from="${CSS.escape(link.from)}"][data-to="${CSS.escape(link.to)}"]`;
  const line = document.querySelector(sel);
  if (!line) return;
  line.setAttribute("class", `link ${rateClass(link.packets_per_s)} ${lossClass(link)}`);
  line.setAttribute("data-packets-per-s", link.packets_per_s ?? "");
  line.setAttribute("data-loop-loss", link.loop_loss ?? "");
  line.querySelector("title").textContent = `${link.from} → ${link.to}: ${fmtRate(link.packets_per_s)} packets/s, loop loss ${fmtLoss(link.loop_loss)} (${link.loop_samples || 0} loops)`;
}

function applyReport(report) {
  const graph = state.graph;
  if (!graph) return;
  const byName = new Map(report.nodes.map((n) => [n.name, n]));
  for (const node of graph.nodes) updateNode(byName.get(node.name) || { name: node.name, role: node.role, layer: node.layer }, graph);
  for (const link of report.links) updateLink(link);
  const down = report.down || [];
  const unknown = report.unknown || [];
  const up = report.nodes.filter((n) => n.up).length;
  const loops = report.loops || { returned: 0, lost: 0 };
  document.getElementById("summary").textContent =
    `${graph.nodes.length} nodes, ${up} up` +
    (down.length ? `, down: ${down.join(", ")}` : "") +
    (unknown.length ? `, not readable from here: ${unknown.join(", ")}` : "") +
    ` · loops returned ${loops.returned}, lost ${loops.lost} (last ${report.window} s)`;
  document.getElementById("window").textContent = String(report.window);
  state.lastUpdate = Date.now();
  state.updates += 1;
  document.body.setAttribute("data-updates", state.updates);
  document.body.setAttribute("data-report-time", report.time);
  setConnection("live", "live");
}

function setConnection(s, text) {
  const p = document.getElementById("connection");
  p.setAttribute("data-state", s);
  p.textContent = text;
}

function checkStale() {
  if (!state.lastUpdate) return;
  const age = Date.now() - state.lastUpdate;
  if (age > STALE_MS) setConnection("stale", `stale: no update for ${Math.round(age / 1000)} s`);
}

function connect() {
  const source = new EventSource("/events");
  state.source = source;
  source.addEventListener("status", (event) => applyReport(JSON.parse(event.data)));
  // EventSource reconnects by itself after the server's retry delay; say so meanwhile.
  source.addEventListener("error", () => {
    const p = document.getElementById("connection");
    if (p.getAttribute("data-state") !== "stale") setConnection("reconnecting", "reconnecting");
  });
}

async function start() {
  const answer = await fetch("/api/network", { cache: "no-store" });
  const graph = await answer.json();
  state.graph = graph;
  document.getElementById("network").textContent = graph.network;
  document.getElementById("network").setAttribute("data-network", graph.network);
  document.title = "zmix " + graph.network;
  drawMap(graph);
  drawTable(graph);
  connect();
  setInterval(checkStale, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  start().catch((err) => setConnection("stale", "cannot load the network: " + err));
});
