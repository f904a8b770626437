// Fresco dashboard: polls /api/v1/dashboard every second and draws the
// page with DOM and SVG elements (text is always set as text, never parsed
// as HTML: selectors and reasons come from API clients).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 1000;
const WINDOW_MS = 10 * 60 * 1000;
let token = null;
let timer = null;

function el(tag, attrs, ...children) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  }
  for (const c of children) {
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function pct(x) {
  return x === null || x === undefined ? "–" : (x * 100).toFixed(1) + " %";
}

function ago(ms) {
  if (ms < 1000) return ms + " ms";
  if (ms < 120000) return (ms / 1000).toFixed(1) + " s";
  return Math.round(ms / 60000) + " min";
}

// A line chart of points[key] over the last WINDOW_MS, with a grid and
// axis labels. `max` fixes the scale (ratios); otherwise it follows the data.
function chart(svg, points, key, nowMs, max, format) {
  const W = 400, H = 140, L = 42, R = 6, T = 8, B = 18;
  const values = points.filter(p => p[key] !== null && p[key] !== undefined);
  const top = max !== null ? max : Math.max(1, ...values.map(p => p[key])) * 1.1;
  // The history there is, at least a minute, at most WINDOW_MS.
  const span = Math.min(WINDOW_MS, Math.max(60000, points.length ? nowMs - points[0].at_ms : 0));
  const x = t => L + (W - L - R) * (1 - (nowMs - t) / span);
  const y = v => T + (H - T - B) * (1 - v / top);
  svg.replaceChildren();
  for (const f of [0, 0.5, 1]) {
    svg.append(el("svg:line", { class: "grid", x1: L, x2: W - R, y1: y(top * f), y2: y(top * f) }));
    svg.append(el("svg:text", { class: "axis", x: L - 4, y: y(top * f) + 3, "text-anchor": "end" }, format(top * f)));
  }
  svg.append(el("svg:text", { class: "axis", x: L, y: H - 4 }, "-" + ago(span)));
  svg.append(el("svg:text", { class: "axis", x: W - R, y: H - 4, "text-anchor": "end" }, "now"));
  const shown = values.filter(p => nowMs - p.at_ms <= span);
  svg.setAttribute("data-points", shown.length);
  if (shown.length === 0) return;
  const coords = shown.map(p => x(p.at_ms).toFixed(1) + "," + y(p[key]).toFixed(1));
  const first = x(shown[0].at_ms).toFixed(1), last = x(shown[shown.length - 1].at_ms).toFixed(1);
  svg.append(el("svg:polygon", { class: "area", points: `${first},${y(0)} ${coords.join(" ")} ${last},${y(0)}` }));
  svg.append(el("svg:polyline", { class: "line", points: coords.join(" ") }));
}

function renderNodes(data) {
  const head = data.cluster.head;
  document.getElementById("head").textContent = head === null ? "" : `log head: version ${head}`;
  const rows = data.cluster.nodes.map(n => {
    const lag = head === null ? null : Math.max(0, head - n.applied_version);
    const health = n.live ? (n.may_serve ? "live" : "live, not serving from store") : "down";
    const ratio = n.requests > 0 ? n.hits / n.requests : null;
    return el("tr", { "data-node": n.node },
      el("td", {}, el("code", {}, n.node), n.node === data.node ? " (this node)" : ""),
      el("td", { class: n.live ? "good" : "bad" }, health),
      el("td", { class: "num" }, n.applied_version),
      el("td", { class: "num " + (lag ? "warn" : "") }, lag === null ? "–" : lag),
      el("td", { class: "num" }, ago(n.heartbeat_age_ms) + " ago"),
      el("td", { class: "num" }, pct(ratio)));
  });
  document.querySelector("#nodes tbody").replaceChildren(...rows);
}

function selectorText(s) {
  if (s === "all") return "everything";
  const [kind, value] = Object.entries(s)[0];
  return `${kind} ${value}`;
}

// One row per node, from acceptance (left) to the slowest node (right): a
// dot where the node applied it; a node that has not confirmed yet is a
// hollow red mark at the right end.
function timeline(inv) {
  const lags = inv.nodes.map(n => n.lag_ms).filter(l => l !== null && l !== undefined);
  const span = Math.max(1, ...lags);
  const W = 320, L = 8, R = 70, ROW = 12;
  const H = 16 + ROW * inv.nodes.length;
  const svg = el("svg:svg", { class: "timeline", viewBox: `0 0 ${W} ${H}`, height: H });
  inv.nodes.forEach((n, i) => {
    const y = 8 + ROW * i;
    const lag = n.lag_ms === null || n.lag_ms === undefined ? span : n.lag_ms;
    const cx = L + (W - L - R) * (lag / span);
    svg.append(el("svg:line", { class: "track", x1: L, x2: W - R, y1: y, y2: y }));
    const mark = el("svg:circle", {
      class: n.applied ? "applied" : "pending", cx: cx.toFixed(1), cy: y, r: 4,
      "data-node": n.node, "data-applied": n.applied, "data-lag-ms": n.lag_ms,
    });
    const when = n.lag_ms === null || n.lag_ms === undefined ? "applied" : `applied after ${n.lag_ms} ms`;
    mark.append(el("svg:title", {}, `${n.node}: ` + (n.applied ? when : "not confirmed yet")));
    svg.append(mark);
    svg.append(el("svg:text", { x: W - R + 6, y: y + 3 }, n.applied ? `${n.node} +${lag} ms` : `${n.node} …`));
  });
  svg.append(el("svg:text", { x: L, y: H - 1 }, "accepted"));
  svg.append(el("svg:text", { x: W - R, y: H - 1, "text-anchor": "end" }, `+${span} ms`));
  return svg;
}

function renderInvalidations(data) {
  const rows = data.invalidations.map(inv => {
    const state = inv.converged ? el("span", { class: "good" }, "converged") : el("span", { class: "warn" }, `waiting on ${inv.unconfirmed.join(", ")}`);
    return el("tr", { "data-invalidation": inv.id, "data-converged": inv.converged },
      el("td", { class: "num" }, inv.id),
      el("td", { class: "num" }, ago(Math.max(0, data.now_ms - inv.accepted_ms)) + " ago"),
      el("td", {}, inv.mode),
      el("td", {}, inv.selectors.map(selectorText).join(", ")),
      el("td", {}, inv.reason),
      el("td", {}, inv.issuer),
      el("td", {}, timeline(inv), state, inv.down.length ? el("span", { class: "muted" }, ` (down, not counted: ${inv.down.join(", ")})`) : ""));
  });
  document.querySelector("#invalidations tbody").replaceChildren(...rows);
  document.getElementById("no-invalidations").hidden = rows.length > 0;
}

function renderClasses(data) {
  const box = document.getElementById("slo");
  if (data.classes.length === 0) {
    box.replaceChildren(el("p", { class: "muted" }, "No content classes configured ([[class]] in the configuration)."));
    return;
  }
  const rows = data.classes.map(c => {
    const slo = c.freshness_slo_ms;
    const over = c.over_slo || 0;
    const status = slo === null || slo === undefined ? el("span", { class: "muted" }, "no SLO")
      : over === 0 ? el("span", { class: "good" }, "within SLO") : el("span", { class: "bad" }, `${over} responses over the SLO`);
    return el("tr", { "data-class": c.name },
      el("td", {}, el("code", {}, c.name)),
      el("td", { class: "num" }, slo === null || slo === undefined ? "–" : ago(slo) + (c.capped ? " (enforced)" : " (measured only)")),
      el("td", { class: "num" }, c.stale_served === undefined ? "–" : c.stale_served),
      el("td", { class: "num" }, c.max_staleness_ms === undefined || c.max_staleness_ms === null ? "–" : ago(c.max_staleness_ms)),
      el("td", {}, status));
  });
  box.replaceChildren(el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "class"), el("th", {}, "freshness SLO"), el("th", {}, "stale responses"), el("th", {}, "most staleness served"), el("th", {}, "status"))),
    el("tbody", {}, ...rows)));
}

function render(data) {
  document.getElementById("node").textContent = `node ${data.node}`;
  document.getElementById("updated").textContent = "updated " + new Date(data.now_ms).toLocaleTimeString();
  renderNodes(data);
  const pts = data.points;
  const lastOf = k => { for (let i = pts.length - 1; i >= 0; i--) if (pts[i][k] !== null) return pts[i][k]; return null; };
  chart(document.getElementById("chart-rps"), pts, "requests_per_second", data.now_ms, null, v => v.toFixed(v < 10 ? 1 : 0));
  chart(document.getElementById("chart-hit"), pts, "hit_ratio", data.now_ms, 1, v => Math.round(v * 100) + "%");
  chart(document.getElementById("chart-offload"), pts, "origin_offload", data.now_ms, 1, v => Math.round(v * 100) + "%");
  const rps = lastOf("requests_per_second");
  document.getElementById("last-rps").textContent = rps === null ? "" : rps.toFixed(1) + "/s";
  document.getElementById("last-hit").textContent = pct(lastOf("hit_ratio"));
  document.getElementById("last-offload").textContent = pct(lastOf("origin_offload"));
  renderInvalidations(data);
  renderClasses(data);
  document.body.setAttribute("data-updated", data.now_ms);
}

function showLogin(message) {
  clearTimeout(timer);
  document.getElementById("main").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

async function poll() {
  try {
    const resp = await fetch("/api/v1/dashboard", { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
    if (resp.status === 401 || resp.status === 403) {
      sessionStorage.removeItem("fresco-token");
      const body = await resp.json().catch(() => ({}));
      showLogin(body.error || "the token was refused");
      return;
    }
    if (!resp.ok) throw new Error(`the node answered ${resp.status}`);
    document.getElementById("main").hidden = false;
    document.getElementById("login").hidden = true;
    render(await resp.json());
    document.getElementById("updated").classList.remove("bad");
  } catch (e) {
    const u = document.getElementById("updated");
    u.textContent = `cannot reach the node (${e.message}); retrying`;
    u.classList.add("bad");
  }
  timer = setTimeout(poll, POLL_MS);
}

function start() {
  // A token in the fragment (#token=...) is never sent to the server; it
  // is moved to this tab's storage and taken out of the address bar.
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("fresco-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  token = sessionStorage.getItem("fresco-token");
  document.getElementById("login").addEventListener("submit", ev => {
    ev.preventDefault();
    token = document.getElementById("token").value.trim();
    sessionStorage.setItem("fresco-token", token);
    poll();
  });
  if (token) poll(); else showLogin();
}

start();
