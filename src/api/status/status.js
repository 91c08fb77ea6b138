// The status page: draws every flow's graph from /api/flows, then polls each flow's
// nodes and the broker once a second to show rates, states and recent errors.
// No framework, no build step, no request to any other origin.
"use strict";

const POLL_MS = 1000;
const NODE_W = 150, NODE_H = 54, GAP_X = 60, GAP_Y = 22, PAD = 12;
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  flows: [],          // from /api/flows
  previous: new Map(), // "flow/node" -> { count, at }
  broker: null,        // previous broker snapshot and when
  errors: [],          // { at, node, text }
  lastErrors: new Map(), // "flow/node" -> last_error seen
  updates: 0,
};

function token() { return sessionStorage.getItem("headwater-token"); }

async function api(path) {
  const headers = {};
  if (token()) headers["Authorization"] = "Bearer " + token();
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) {
    askForToken(token() ? "that token was refused" : "");
    throw new Error("unauthorized");
  }
  return response;
}

function askForToken(message) {
  const form = document.getElementById("token-form");
  form.hidden = false;
  document.getElementById("token-error").textContent = message;
  setConnection("needs a token", "error");
}

function setConnection(text, cls) {
  const el = document.getElementById("connection");
  el.textContent = text;
  el.className = cls || "muted";
}

function el(name, attrs, text) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Columns by longest path from the sources, rows in file order within a column:
// the left-to-right layout `headwater graph` gives with Graphviz's rankdir=LR.
function layout(flow) {
  const byName = new Map(flow.nodes.map((n) => [n.name, n]));
  const column = new Map();
  const visiting = new Set();
  function depth(name) {
    if (column.has(name)) return column.get(name);
    if (visiting.has(name)) return 0; // a cycle cannot pass check; stay safe anyway
    visiting.add(name);
    const node = byName.get(name);
    let d = 0;
    for (const input of node ? node.inputs : []) {
      if (byName.has(input.node)) d = Math.max(d, depth(input.node) + 1);
    }
    visiting.delete(name);
    column.set(name, d);
    return d;
  }
  flow.nodes.forEach((n) => depth(n.name));
  const rows = [];
  const place = new Map();
  for (const node of flow.nodes) {
    const c = column.get(node.name);
    rows[c] = (rows[c] || 0);
    place.set(node.name, {
      x: PAD + c * (NODE_W + GAP_X),
      y: PAD + rows[c] * (NODE_H + GAP_Y),
    });
    rows[c] += 1;
  }
  const width = PAD * 2 + rows.length * (NODE_W + GAP_X) - GAP_X;
  const height = PAD * 2 + Math.max(1, ...rows.map((r) => r || 0)) * (NODE_H + GAP_Y) - GAP_Y;
  return { place, width: Math.max(width, NODE_W), height };
}

function drawFlow(flow) {
  const box = document.createElement("div");
  box.className = "flow";
  box.dataset.flow = flow.name;
  const title = document.createElement("h3");
  title.textContent = flow.name;
  const stateEl = document.createElement("span");
  stateEl.className = "flow-state state-" + flow.state;
  stateEl.textContent = flow.state;
  const file = document.createElement("span");
  file.className = "flow-file";
  file.textContent = flow.file;
  title.append(stateEl, file);
  box.append(title);

  const { place, width, height } = layout(flow);
  const svg = el("svg", { class: "graph", width, height, viewBox: `0 0 ${width} ${height}`,
    role: "img", "aria-label": "graph of flow " + flow.name });
  const defs = el("defs");
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5",
    markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" });
  marker.append(el("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#8a94a0" }));
  defs.append(marker);
  svg.append(defs);
  for (const node of flow.nodes) {
    const to = place.get(node.name);
    for (const input of node.inputs) {
      const from = place.get(input.node);
      if (!from) continue;
      const x1 = from.x + NODE_W, y1 = from.y + NODE_H / 2, x2 = to.x, y2 = to.y + NODE_H / 2;
      const mid = (x1 + x2) / 2;
      svg.append(el("path", { class: "wire", d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`,
        "data-from": input.node, "data-to": node.name }));
      if (input.port !== "out") {
        svg.append(el("text", { class: "wire-label", x: mid, y: (y1 + y2) / 2 - 4, "text-anchor": "middle" }, input.port));
      }
    }
  }
  for (const node of flow.nodes) {
    const p = place.get(node.name);
    const g = el("g", { class: "node", transform: `translate(${p.x},${p.y})`, "data-node": `${flow.name}/${node.name}` });
    g.append(el("rect", { width: NODE_W, height: NODE_H }));
    g.append(el("text", { class: "name", x: 8, y: 17 }, node.name));
    g.append(el("text", { class: "kind", x: 8, y: 31 }, node.kind));
    g.append(el("text", { class: "rate", x: 8, y: 46 }, "–"));
    const tip = el("title", {}, `${node.name} (${node.kind})`);
    g.append(tip);
    svg.append(g);
  }
  box.append(svg);
  return box;
}

async function loadFlows() {
  const response = await api("/api/flows");
  if (!response.ok) throw new Error("GET /api/flows: " + response.status);
  const body = await response.json();
  state.flows = body.flows;
  const list = document.getElementById("flow-list");
  list.replaceChildren(...body.flows.map(drawFlow));
  if (body.flows.length === 0) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "no flows loaded";
    list.append(p);
  }
}

function formatRate(r) {
  if (r >= 100) return r.toFixed(0);
  if (r >= 10) return r.toFixed(1);
  return r.toFixed(2);
}

function noteError(id, text) {
  if (!text || state.lastErrors.get(id) === text) return;
  state.lastErrors.set(id, text);
  state.errors.unshift({ at: new Date(), node: id, text });
  state.errors.length = Math.min(state.errors.length, 50);
  const list = document.getElementById("error-list");
  list.replaceChildren(...state.errors.map((e) => {
    const li = document.createElement("li");
    li.textContent = `${e.at.toLocaleTimeString()} ${e.node}: ${e.text}`;
    return li;
  }));
}

async function pollFlow(flow) {
  const response = await api(`/api/flows/${encodeURIComponent(flow.name)}/nodes`);
  if (!response.ok) return;
  const body = await response.json();
  const now = performance.now();
  let worst = "running";
  for (const node of body.nodes) {
    const id = `${flow.name}/${node.name}`;
    const g = document.querySelector(`g.node[data-node="${CSS.escape(id)}"]`);
    // Sources count what they emit, everything else what it takes in.
    const count = node.inputs.length === 0 ? node.emitted : node.received;
    const before = state.previous.get(id);
    state.previous.set(id, { count, at: now });
    if (node.state === "failed") worst = "failed";
    else if (node.state === "restarting" && worst !== "failed") worst = "restarting";
    noteError(id, node.last_error);
    if (!g) continue;
    g.setAttribute("class", "node state-" + node.state);
    const rate = g.querySelector(".rate");
    const depth = node.inputs.reduce((sum, i) => sum + i.depth, 0);
    if (before && now > before.at) {
      const perSecond = ((count - before.count) * 1000) / (now - before.at);
      rate.textContent = `${formatRate(Math.max(0, perSecond))} msg/s` + (depth ? ` · q ${depth}` : "")
        + (node.failed ? ` · ${node.failed} failed` : "");
      rate.dataset.rate = String(perSecond);
    }
    g.querySelector("title").textContent =
      `${node.name} (${node.kind}) ${node.state}\nin ${node.received} out ${node.emitted} failed ${node.failed} dropped ${node.dropped}` +
      (node.last_error ? `\nlast error: ${node.last_error}` : "");
  }
  const stateEl = document.querySelector(`.flow[data-flow="${CSS.escape(flow.name)}"] .flow-state`);
  if (stateEl && body.nodes.every((n) => n.state === "stopped")) worst = "stopped";
  if (stateEl) { stateEl.textContent = worst; stateEl.className = "flow-state state-" + worst; }
}

async function pollBroker() {
  const response = await api("/api/broker");
  const figures = document.getElementById("broker-figures");
  if (response.status === 404) {
    figures.replaceChildren(Object.assign(document.createElement("dd"), { className: "muted", textContent: "the built-in broker is off" }));
    return;
  }
  if (!response.ok) return;
  const b = await response.json();
  const now = performance.now();
  let inRate = "–", outRate = "–";
  if (state.broker) {
    const dt = (now - state.broker.at) / 1000;
    inRate = formatRate((b.messages_received - state.broker.b.messages_received) / dt) + " msg/s";
    outRate = formatRate((b.messages_sent - state.broker.b.messages_sent) / dt) + " msg/s";
  }
  state.broker = { b, at: now };
  const rows = [
    ["clients connected", b.connected], ["sessions", b.sessions], ["subscriptions", b.subscriptions],
    ["retained", b.retained], ["queued", b.queued], ["in flight", b.inflight],
    ["received", inRate], ["sent", outRate],
  ];
  for (const bridge of b.bridges) rows.push([`bridge ${bridge.name}`, bridge.connected ? "connected" : "down"]);
  const items = [];
  for (const [k, v] of rows) {
    items.push(Object.assign(document.createElement("dt"), { textContent: k }));
    items.push(Object.assign(document.createElement("dd"), { textContent: String(v) }));
  }
  figures.replaceChildren(...items);
}

let timer = null;
async function tick() {
  try {
    await Promise.all([...state.flows.map(pollFlow), pollBroker()]);
    state.updates += 1;
    document.body.dataset.updates = String(state.updates);
    setConnection("live · updated " + new Date().toLocaleTimeString(), "muted");
  } catch (err) {
    if (err.message !== "unauthorized") setConnection("cannot reach the API: " + err.message, "error");
    else return; // wait for a token
  }
  timer = setTimeout(tick, POLL_MS);
}

async function start() {
  clearTimeout(timer);
  try {
    await loadFlows();
  } catch (err) {
    if (err.message !== "unauthorized") {
      setConnection("cannot load flows: " + err.message, "error");
      timer = setTimeout(start, 5 * POLL_MS);
    }
    return;
  }
  document.getElementById("token-form").hidden = true;
  tick();
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("headwater-token", document.getElementById("token").value.trim());
  start();
});

start();
