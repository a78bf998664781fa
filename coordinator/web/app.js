// Plume's dashboard: one page, routed by the URL fragment, over the JSON API (docs/api.md).
//   #/                          experiments
//   #/e/EXP                     an experiment: stage graph, runs, best checkpoints
//   #/e/EXP/r/RUN               a run: live curves, checkpoints, pictures, attempts, log
//   #/e/EXP/compare?run=a&run=b&metric=m&smooth=0.6&log=1&x=step
//                               runs overlaid on one metric
"use strict";

const { LineChart, seriesColor, formatNumber, formatTime, mergePoints } = window.PlumeChart;
const main = document.getElementById("main");
const crumbs = document.getElementById("crumbs");
// Things the current page must stop when the user leaves it (streams, timers, charts).
let cleanups = [];

class AuthError extends Error {}

// Element builder: h("a", {href: "#/"}, "text", child, ...). Text is always set as text.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) { continue; }
    if (k.startsWith("on")) { el.addEventListener(k.slice(2), v); } else if (k === "class") { el.className = v; } else if (k === "style") { el.style.cssText = v; } else { el.setAttribute(k, v === true ? "" : v); }
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) { continue; }
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Replaces an element's children, skipping null/false (conditional parts of a page).
function put(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
}

async function api(path, options) {
  const opts = Object.assign({ credentials: "same-origin" }, options || {});
  opts.headers = Object.assign({}, opts.headers || {});
  if (opts.method && opts.method !== "GET") { opts.headers["X-Plume-Request"] = "1"; }
  const res = await fetch("/api" + path, opts);
  if (res.status === 401) { showLogin(); throw new AuthError("sign in"); }
  const type = res.headers.get("content-type") || "";
  const body = type.includes("json") ? await res.json() : null;
  if (!res.ok) { throw new Error((body && body.error) || res.status + " " + res.statusText); }
  return body;
}

const enc = encodeURIComponent;
const expPath = (e) => "/experiments/" + enc(e);
const runPath = (e, r) => expPath(e) + "/runs/" + enc(r);

function badge(state) { return h("span", { class: "badge " + state }, state); }

function progress(step, total) {
  const frac = total > 0 ? Math.min(1, step / total) : 0;
  const bar = h("span", { class: "bar" }, h("span", { style: "width:" + (frac * 100).toFixed(1) + "%" }));
  return h("span", { class: "progress", title: step + " / " + total }, bar, h("small", {}, total > 0 ? step + "/" + total : String(step)));
}

function bytes(n) {
  const u = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + u[i];
}

function ago(unix) {
  const s = Math.max(0, Date.now() / 1000 - unix);
  if (s < 60) { return Math.round(s) + " s ago"; }
  if (s < 3600) { return Math.round(s / 60) + " min ago"; }
  if (s < 86400) { return (s / 3600).toFixed(1) + " h ago"; }
  return new Date(unix * 1000).toLocaleDateString();
}

function errorBox(e) { return h("div", { class: "error" }, String(e.message || e)); }

// "eval/score (max)" -> ["eval/score", "max"].
function objectiveOf(s) {
  const m = /^(.*) \((max|min)\)$/.exec(s || "");
  return m ? [m[1], m[2]] : [s || "", "max"];
}

function metricOrder(a, b) {
  const rank = (n) => (n.startsWith("loss") ? 0 : n.startsWith("eval/") ? 1 : 2);
  return rank(a) - rank(b) || a.localeCompare(b);
}

// Calls fn at most every `ms` (the last call always runs).
function throttle(fn, ms) {
  let timer = null, pending = false;
  return () => {
    if (timer) { pending = true; return; }
    fn();
    timer = setTimeout(() => { timer = null; if (pending) { pending = false; fn(); } }, ms);
  };
}

function every(ms, fn) {
  const t = setInterval(fn, ms);
  cleanups.push(() => clearInterval(t));
}

// A live stream of one experiment (see coordinator/src/web/stream.rs): EventSource
// reconnects by itself and resumes from the last event id.
function follow(exp, params, handlers) {
  const q = new URLSearchParams(params).toString();
  const src = new EventSource("/api" + expPath(exp) + "/stream?" + q);
  for (const [name, fn] of Object.entries(handlers)) {
    src.addEventListener(name, (ev) => fn(JSON.parse(ev.data)));
  }
  src.addEventListener("done", () => src.close());
  const live = document.getElementById("live");
  src.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  src.onerror = () => { live.textContent = src.readyState === 2 ? "" : "reconnecting"; live.className = "live"; };
  cleanups.push(() => { src.close(); live.textContent = ""; live.className = "live"; });
  return src;
}

// ---------------------------------------------------------------------------------------
// Sign-in

function showLogin(message) {
  stopPage();
  put(crumbs, h("a", { href: "#/" }, "Plume"));
  const input = h("input", { type: "password", id: "token", placeholder: "user token", autocomplete: "current-password" });
  const note = h("p", { class: "muted" }, message || "This coordinator needs its user token (printed by `plume up`, or PLUME_USER_TOKEN of `plume serve`).");
  const form = h("form", { class: "login", onsubmit: async (e) => {
    e.preventDefault();
    try {
      await signIn(input.value);
      route();
    } catch (err) {
      note.textContent = err.message;
      note.className = "error";
    }
  } }, h("h1", {}, "Sign in"), note, input, h("button", { type: "submit" }, "Sign in"));
  put(main, form);
  input.focus();
}

async function signIn(token) {
  const res = await fetch("/api/login", { method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: token.trim() }) });
  if (!res.ok) { throw new Error("That token was refused."); }
}

// ---------------------------------------------------------------------------------------
// Experiments

async function experimentsPage() {
  put(crumbs, h("a", { href: "#/" }, "Experiments"));
  const body = h("tbody");
  const table = h("table", { class: "grid", id: "experiments" },
    h("thead", {}, h("tr", {}, ["Experiment", "State", "Runs", "Objective", "Best", "Created"].map((c) => h("th", {}, c)))), body);
  put(main, h("h1", {}, "Experiments"), table);
  const load = async () => {
    const list = await api("/experiments");
    put(body, ...(list.experiments || []).map((e) => {
      const states = e.run_states || {};
      const total = Object.values(states).reduce((a, b) => a + b, 0);
      const done = e.runs_ended || 0;
      const text = Object.entries(states).map(([s, n]) => n + " " + s).join(", ");
      return h("tr", { "data-experiment": e.name },
        h("td", {}, h("a", { href: "#/e/" + enc(e.name) }, e.name), h("small", { class: "muted" }, " #" + e.id)),
        h("td", {}, badge(e.state)),
        h("td", {}, progress(done, total), h("div", { class: "muted small" }, text)),
        h("td", {}, e.objective),
        h("td", { class: "num" }, e.has_best ? formatNumber(e.best_objective) : "–"),
        h("td", {}, ago(e.created_unix)));
    }));
    if (!list.experiments || list.experiments.length === 0) {
      put(body, h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No experiments yet: plume submit experiments/quickstart.yaml")));
    }
  };
  await load();
  every(3000, () => load().catch(() => {}));
}

// ---------------------------------------------------------------------------------------
// One experiment

// The stage graph: runs in columns by depth of `needs`, edges from each need.
function stageGraph(exp, runs) {
  const depth = {};
  const byName = Object.fromEntries(runs.map((r) => [r.name, r]));
  const d = (name, seen) => {
    if (depth[name] !== undefined) { return depth[name]; }
    if (seen.has(name)) { return 0; }
    seen.add(name);
    const r = byName[name];
    const needs = (r && r.needs) || [];
    depth[name] = needs.length === 0 ? 0 : 1 + Math.max(...needs.map((n) => d(n, seen)));
    return depth[name];
  };
  runs.forEach((r) => d(r.name, new Set()));
  const columns = [];
  runs.forEach((r) => { (columns[depth[r.name]] = columns[depth[r.name]] || []).push(r); });
  const W = 170, H = 30, GX = 60, GY = 10;
  const pos = {};
  columns.forEach((col, i) => col.forEach((r, j) => { pos[r.name] = { x: 10 + i * (W + GX), y: 10 + j * (H + GY) }; }));
  const width = 20 + columns.length * (W + GX) - GX;
  const height = 20 + Math.max(...columns.map((c) => c.length)) * (H + GY) - GY;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "graph");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  const mk = (tag, attrs) => { const e = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) { e.setAttribute(k, v); } return e; };
  for (const r of runs) {
    for (const n of r.needs || []) {
      if (!pos[n]) { continue; }
      const a = pos[n], b = pos[r.name];
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
      svg.appendChild(mk("path", { d: `M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}`, class: "edge" }));
    }
  }
  for (const r of runs) {
    const p = pos[r.name];
    const link = mk("a", { href: "#/e/" + enc(exp) + "/r/" + enc(r.name) });
    const title = mk("title", {});
    title.textContent = r.name + " (" + r.state + ")";
    link.appendChild(title);
    link.appendChild(mk("rect", { x: p.x, y: p.y, width: W, height: H, rx: 5, class: "node " + r.state }));
    const t = mk("text", { x: p.x + 8, y: p.y + H / 2 + 4 });
    t.textContent = r.name.length > 24 ? r.name.slice(0, 23) + "…" : r.name;
    link.appendChild(t);
    if (r.total_steps > 0 && r.step > 0 && !r.ended) {
      link.appendChild(mk("rect", { x: p.x, y: p.y + H - 3, width: W * Math.min(1, r.step / r.total_steps), height: 3, class: "node-progress" }));
    }
    svg.appendChild(link);
  }
  return svg;
}

function summaryOf(run, metric) { return (run.metrics || []).find((m) => m.name === metric); }

async function experimentPage(exp) {
  put(crumbs, h("a", { href: "#/" }, "Experiments"), " / ", h("a", { href: "#/e/" + enc(exp) }, exp));
  let detail = await api(expPath(exp));
  const selected = new Set();
  let sortKey = "order", sortDir = 1, filter = "";
  const [objective, mode] = objectiveOf(detail.summary.objective);
  let metric = objective;
  const head = h("div", { class: "page-head" });
  const graph = h("div", { class: "panel scroll" });
  const tbody = h("tbody");
  const thead = h("thead");
  const metricSelect = h("select", { id: "metric-column", onchange: () => { metric = metricSelect.value; renderRuns(); } });
  const compareBtn = h("button", { onclick: () => { location.hash = "#/e/" + enc(exp) + "/compare?" + compareQuery([...selected], { metric }); } }, "Compare selected");
  const bestBox = h("div", { class: "panel" });
  put(main, head, h("h2", {}, "Stages"), graph,
    h("h2", {}, "Runs"),
    h("div", { class: "toolbar" },
      h("input", { type: "search", placeholder: "filter runs (name, method, state, k=v)", oninput: (e) => { filter = e.target.value.toLowerCase(); renderRuns(); } }),
      h("label", {}, "metric ", metricSelect), compareBtn),
    h("table", { class: "grid", id: "runs" }, thead, tbody),
    h("h2", {}, "Best checkpoints"), bestBox);

  const renderHead = () => {
    const s = detail.summary;
    const states = Object.entries(s.run_states || {}).map(([k, n]) => n + " " + k).join(", ");
    const saved = Math.max(0, detail.checkpoint_bytes - detail.stored_bytes);
    put(head, 
      h("h1", {}, exp, " ", badge(s.state)),
      h("p", { class: "muted" }, "objective ", h("b", {}, s.objective), " · best ", s.has_best ? formatNumber(s.best_objective) : "–",
        " · runs: ", states, " · checkpoints ", bytes(detail.weight_bytes || 0), " weights + ", bytes(detail.state_bytes || 0),
        " resume state, stored as ", bytes(detail.stored_bytes), " (dedup and encoding saved ", bytes(saved), ")"),
      h("div", { class: "toolbar" },
        detail.runs.some((r) => !r.ended) ? h("button", { class: "danger", onclick: async () => {
          if (!confirm("Cancel every unfinished run of " + exp + "?")) { return; }
          await api(expPath(exp) + "/cancel", { method: "POST" });
          refresh();
        } }, "Cancel experiment") : null,
        (s.run_states || {}).failed || (s.run_states || {}).cancelled ? h("button", { onclick: async () => {
          if (!confirm("Requeue the failed and cancelled runs of " + exp + "? Each resumes from its latest checkpoint.")) { return; }
          await api(expPath(exp) + "/rerun?cancelled=true", { method: "POST" });
          refresh();
        } }, "Rerun failed runs") : null,
        h("details", {}, h("summary", {}, "experiment YAML"), h("pre", {}, detail.yaml))));
  };

  const columns = [
    ["", null], ["run", (r) => r.name], ["job", (r) => r.job_kind], ["method", (r) => r.method],
    ["params", (r) => Object.entries(r.params || {}).map(([k, v]) => k + "=" + v).join(" ")],
    ["state", (r) => r.state], ["attempts", (r) => r.attempt], ["progress", (r) => (r.total_steps ? r.step / r.total_steps : 0)],
    ["last", (r) => { const m = summaryOf(r, metric); return m ? m.last : null; }],
    ["best", (r) => { const m = summaryOf(r, metric); return m ? (bestMode() === "max" ? m.max : m.min) : null; }],
    ["rung", (r) => ((r.rungs || []).length ? r.rungs.length - 1 : null)],
  ];
  const bestMode = () => (metric === objective ? mode : (metric.startsWith("loss") || metric.includes("fid") || metric.endsWith("realism") ? "min" : "max"));

  const renderRuns = () => {
    const names = new Set();
    detail.runs.forEach((r) => (r.metrics || []).forEach((m) => names.add(m.name)));
    if (!names.has(metric) && names.size > 0 && metric !== objective) { metric = [...names].sort(metricOrder)[0]; }
    names.add(objective);
    put(metricSelect, ...[...names].sort(metricOrder).map((n) => h("option", { value: n, selected: n === metric }, n)));
    put(thead, h("tr", {}, columns.map(([label, key], i) => {
      const text = label === "last" ? metric + " (last)" : label === "best" ? metric + " (" + bestMode() + ")" : label;
      const arrow = sortKey === i ? (sortDir > 0 ? " ▲" : " ▼") : "";
      return h("th", { class: key ? "sortable" : "", onclick: key ? () => { sortDir = sortKey === i ? -sortDir : 1; sortKey = i; renderRuns(); } : null }, text + arrow);
    })));
    let rows = detail.runs.map((r, i) => Object.assign({ order: i }, r));
    if (filter) {
      rows = rows.filter((r) => [r.name, r.job_kind, r.method, r.state, columns[4][1](r)].join(" ").toLowerCase().includes(filter));
    }
    if (sortKey !== "order") {
      const key = columns[sortKey][1];
      rows.sort((a, b) => {
        const x = key(a), y = key(b);
        if (x === y) { return a.order - b.order; }
        if (x === null || x === undefined) { return 1; }
        if (y === null || y === undefined) { return -1; }
        return (x < y ? -1 : 1) * sortDir;
      });
    }
    put(tbody, ...rows.map((r) => {
      const m = summaryOf(r, metric);
      const box = h("input", { type: "checkbox", checked: selected.has(r.name), onchange: (e) => { if (e.target.checked) { selected.add(r.name); } else { selected.delete(r.name); } compareBtn.disabled = selected.size === 0; } });
      return h("tr", { "data-run": r.name },
        h("td", {}, box),
        h("td", {}, h("a", { href: "#/e/" + enc(exp) + "/r/" + enc(r.name) }, r.name)),
        h("td", {}, r.job_kind), h("td", {}, r.method || ""), h("td", { class: "small" }, columns[4][1](r)),
        h("td", {}, badge(r.state), r.error ? h("div", { class: "error small", title: r.error }, r.error.slice(0, 80)) : null),
        h("td", { class: "num", title: (r.attempts || []).map((a) => "#" + a.attempt + " " + a.state + (a.message ? ": " + a.message : "")).join("\n") }, r.attempt),
        h("td", {}, progress(r.step, r.total_steps)),
        h("td", { class: "num" }, m ? formatNumber(m.last) : "–"),
        h("td", { class: "num" }, m ? formatNumber(bestMode() === "max" ? m.max : m.min) : "–"),
        rungCell(r));
    }));
    compareBtn.disabled = selected.size === 0;
  };

  let bestMetric = objective;
  const renderBest = async () => {
    const best = await api(expPath(exp) + "/best?top=10&metric=" + enc(bestMetric));
    const names = new Set([objective]);
    detail.runs.forEach((r) => (r.metrics || []).forEach((m) => names.add(m.name)));
    const select = h("select", { onchange: (e) => { bestMetric = e.target.value; renderBest(); } },
      [...names].sort(metricOrder).map((n) => h("option", { value: n, selected: n === bestMetric }, n)));
    const rows = best.checkpoints.map((c, i) => h("tr", {},
      h("td", { class: "num" }, i + 1),
      h("td", {}, h("a", { href: "#/e/" + enc(exp) + "/r/" + enc(c.run) }, c.run)),
      h("td", { class: "num" }, c.step), h("td", { class: "num" }, formatNumber(c.value)),
      h("td", { class: "num" }, bytes(c.size)), h("td", { class: "mono small" }, c.sha256.slice(0, 12)),
      h("td", {}, h("a", { href: "/api/checkpoints/" + c.checkpoint_id + "/file", download: "" }, "download"))));
    put(bestBox, h("div", { class: "toolbar" }, h("label", {}, "rank by ", select), h("span", { class: "muted" }, " (" + best.mode + ")")),
      rows.length === 0 ? h("p", { class: "muted" }, "No checkpoint has this metric yet.")
        : h("table", { class: "grid", id: "best" }, h("thead", {}, h("tr", {}, ["#", "run", "step", best.metric, "size", "sha256", ""].map((c) => h("th", {}, c)))), h("tbody", {}, rows)));
  };

  const refresh = async () => {
    detail = await api(expPath(exp));
    renderHead();
    put(graph, stageGraph(exp, detail.runs));
    renderRuns();
  };
  renderHead();
  put(graph, stageGraph(exp, detail.runs));
  renderRuns();
  await renderBest();
  const later = throttle(() => { refresh().then(renderBest).catch(() => {}); }, 2000);
  if (detail.runs.some((r) => !r.ended)) {
    follow(exp, { points: "false" }, { run: later, done: later });
  }
}

// A run's ASHA rungs: the last one reached, whether it went on, every rung in the tooltip.
function rungCell(r) {
  const rungs = r.rungs || [];
  if (rungs.length === 0) { return h("td", { class: "num muted" }, "–"); }
  const last = rungs[rungs.length - 1];
  const title = rungs.map((g) => "rung " + g.rung + " @" + g.step + ": " + formatNumber(g.value) + ", rank " + g.rank + "/" + g.seen + (g.promoted ? ", promoted" : ", stopped")).join("\n");
  return h("td", { class: "num rung", title }, String(last.rung) + " ", h("span", { class: last.promoted ? "promoted" : "stopped" }, last.promoted ? "promoted" : "stopped"));
}

// Whether ASHA promoted a run at every rung it reached (runs without rungs count as promoted).
function promoted(r) {
  return (r.rungs || []).every((g) => g.promoted);
}

// The compare view's query: one `run=` per run (generated run names hold commas).
function compareQuery(runs, rest) {
  const q = new URLSearchParams();
  for (const r of runs) { q.append("run", r); }
  for (const [k, v] of Object.entries(rest)) { q.set(k, v); }
  return q.toString();
}

// ---------------------------------------------------------------------------------------
// Curves shared by the run and compare pages

function xValues(curve, axis) {
  if (axis === "wall") { return curve.times; }
  if (axis === "relative") { const t0 = curve.times[0] || 0; return curve.times.map((t) => t - t0); }
  return curve.steps;
}

function xFormatter(axis) {
  if (axis === "wall") { return formatTime; }
  if (axis === "relative") { return (s) => (s >= 3600 ? (s / 3600).toFixed(1) + "h" : Math.floor(s / 60) + ":" + String(Math.floor(s % 60)).padStart(2, "0")); }
  return formatNumber;
}

function chartControls(view, onChange) {
  const smooth = h("input", { type: "range", min: 0, max: 0.99, step: 0.01, value: view.smooth, id: "smoothing" });
  const smoothText = h("span", { class: "num" }, view.smooth.toFixed(2));
  smooth.addEventListener("input", () => { view.smooth = Number(smooth.value); smoothText.textContent = view.smooth.toFixed(2); onChange(); });
  const log = h("input", { type: "checkbox", id: "log-scale", checked: view.log, onchange: (e) => { view.log = e.target.checked; onChange(); } });
  const axis = h("select", { id: "x-axis", onchange: (e) => { view.x = e.target.value; onChange(true); } },
    [["step", "step"], ["relative", "relative time"], ["wall", "wall clock"]].map(([v, t]) => h("option", { value: v, selected: view.x === v }, t)));
  return h("div", { class: "toolbar" }, h("label", {}, "smoothing ", smooth, " ", smoothText),
    h("label", {}, log, " log scale"), h("label", {}, "x axis ", axis));
}

// ---------------------------------------------------------------------------------------
// One run

async function runPage(exp, run) {
  put(crumbs, h("a", { href: "#/" }, "Experiments"), " / ", h("a", { href: "#/e/" + enc(exp) }, exp), " / ", h("span", {}, run));
  const [info, loaded] = await Promise.all([api(runPath(exp, run)), api(runPath(exp, run) + "/curves?points=2000")]);
  const view = { smooth: 0, log: false, x: "step" };
  const curves = loaded.curves;
  const charts = {};
  const head = h("div", { class: "page-head" });
  const grid = h("div", { class: "charts", id: "charts" });
  const checkpointsBox = h("div", { class: "panel" });
  const galleryBox = h("div", { class: "gallery", id: "gallery" });
  const attemptsBox = h("div", { class: "panel" });
  const logBox = h("pre", { class: "log", id: "log" });
  const redrawAll = (axisChanged) => { for (const name of Object.keys(charts)) { drawCurve(name, axisChanged); } };
  put(main, head, chartControls(view, redrawAll), grid,
    h("h2", {}, "Pictures"), galleryBox, h("h2", {}, "Checkpoints"), checkpointsBox,
    h("h2", {}, "Attempts"), attemptsBox, h("h2", {}, "Log"), logBox);

  function drawCurve(name, axisChanged) {
    let chart = charts[name];
    if (!chart) {
      chart = new LineChart(grid, { title: name, onZoom: (range) => zoomCurve(name, range) });
      chart.root.dataset.metric = name;
      charts[name] = chart;
    }
    chart.options.xLabel = view.x === "step" ? "step" : "time";
    chart.options.xFormat = xFormatter(view.x);
    chart.options.logY = view.log;
    chart.options.smoothing = view.smooth;
    if (axisChanged) { chart.zoom = null; }
    const c = curves[name];
    chart.setSeries([{ label: "", xs: xValues(c, view.x), ys: c.values }]);
  }

  // Zooming in on steps fetches that range again, so the detail shown is the real one.
  async function zoomCurve(name, range) {
    if (view.x !== "step") { return; }
    const q = "/curves?points=2000&names=" + enc(name) + (range ? "&from=" + Math.floor(range[0]) + "&to=" + Math.ceil(range[1]) : "");
    const got = await api(runPath(exp, run) + q);
    if (got.curves[name]) { curves[name] = got.curves[name]; drawCurve(name, false); }
  }

  const renderInfo = (info) => {
    const r = info.run;
    const params = Object.entries(r.params || {}).map(([k, v]) => k + "=" + v).join(", ");
    put(head, 
      h("h1", {}, run, " ", badge(r.state)),
      h("p", { class: "muted" }, r.job_kind, r.method ? " · " + r.method : "", params ? " · " + params : "",
        " · attempt ", r.attempt, (r.needs || []).length ? " · needs " : "",
        (r.needs || []).map((n, i) => [i ? ", " : "", h("a", { href: "#/e/" + enc(exp) + "/r/" + enc(n) }, n)]),
        r.storage && r.storage.checkpoints > 0 ? [" · ", r.storage.checkpoints, " checkpoints: ", bytes(r.storage.weight_bytes || 0), " weights + ",
          bytes(r.storage.state_bytes || 0), " resume state, ", bytes(r.storage.own_stored_bytes || 0), " stored for this run alone"] : null),
      h("div", { class: "toolbar" }, progress(r.step, r.total_steps),
        h("a", { class: "button", href: "#/e/" + enc(exp) + "/compare?" + compareQuery([run], {}) }, "Compare with…"),
        r.ended ? null : h("button", { class: "danger", onclick: async () => {
          if (!confirm("Cancel " + run + "?")) { return; }
          await api(expPath(exp) + "/cancel?run=" + enc(run), { method: "POST" });
        } }, "Cancel run"),
        h("details", {}, h("summary", {}, "config"), h("pre", {}, r.config))),
      r.error ? h("div", { class: "error" }, r.error) : null);
    put(attemptsBox, h("table", { class: "grid" },
      h("thead", {}, h("tr", {}, ["#", "worker", "state", "started", "ended", "resumed from", "message"].map((c) => h("th", {}, c)))),
      h("tbody", {}, (r.attempts || []).map((a) => h("tr", {}, h("td", { class: "num" }, a.attempt), h("td", { class: "num" }, a.worker_id), h("td", {}, badge(a.state)),
        h("td", {}, new Date(a.started_unix * 1000).toLocaleTimeString()), h("td", {}, a.ended_unix ? new Date(a.ended_unix * 1000).toLocaleTimeString() : "–"),
        h("td", { class: "num" }, a.resumed_from_step), h("td", { class: "small" }, a.message))))));
    const [objective] = objectiveOf(info.objective);
    const shown = new Set([objective]);
    info.checkpoints.forEach((c) => Object.keys(c.metrics).filter((n) => n.startsWith("eval/")).forEach((n) => shown.add(n)));
    const cols = [...shown].slice(0, 6);
    put(checkpointsBox, info.checkpoints.length === 0 ? h("p", { class: "muted" }, "No checkpoint yet.") :
      h("table", { class: "grid", id: "checkpoints" },
        h("thead", {}, h("tr", {}, ["step", "attempt", ...cols, "weights", "resume state", "sha256", ""].map((c) => h("th", {}, c)))),
        h("tbody", {}, info.checkpoints.map((c) => h("tr", {}, h("td", { class: "num" }, c.step), h("td", { class: "num" }, c.attempt),
          cols.map((n) => h("td", { class: "num" }, c.metrics[n] === undefined ? "–" : formatNumber(c.metrics[n]))),
          h("td", { class: "num" }, bytes(c.size - c.state_size)),
          h("td", { class: "num" }, c.state_size > 0 ? bytes(c.state_size) : (c.state_dropped ? "dropped" : "–")),
          h("td", { class: "mono small" }, c.sha256.slice(0, 12)),
          h("td", {}, h("a", { href: "/api/checkpoints/" + c.id + "/file", download: "" }, "download"),
            c.state_size > 0 ? [" · ", h("a", { href: "/api/checkpoints/" + c.id + "/file?with_state=true", download: "" }, "with state")] : null))))));
    renderGallery(info.artifacts);
  };

  // One figure per picture name, with a step slider (latest first), as TensorBoard shows images.
  const galleryChoice = {};
  const renderGallery = (artifacts) => {
    const byName = {};
    artifacts.forEach((a) => (byName[a.name] = byName[a.name] || []).push(a));
    if (artifacts.length === 0) { put(galleryBox, h("p", { class: "muted" }, "No pictures yet.")); return; }
    put(galleryBox, ...Object.entries(byName).map(([name, list]) => {
      list.sort((a, b) => a.step - b.step);
      const pick = Math.min(galleryChoice[name] ?? list.length - 1, list.length - 1);
      const img = h("img", { src: "/api/artifacts/" + list[pick].id, alt: name + " at step " + list[pick].step });
      const caption = h("figcaption", {}, name + " · step " + list[pick].step);
      const slider = list.length > 1 ? h("input", { type: "range", min: 0, max: list.length - 1, value: pick, oninput: (e) => {
        const a = list[Number(e.target.value)];
        galleryChoice[name] = Number(e.target.value) === list.length - 1 ? undefined : Number(e.target.value);
        img.src = "/api/artifacts/" + a.id;
        img.alt = name + " at step " + a.step;
        caption.textContent = name + " · step " + a.step;
      } }) : null;
      return h("figure", { "data-artifact": name }, h("a", { href: img.src, target: "_blank" }, img), caption, slider);
    }));
  };

  const loadLog = async () => {
    const l = await api(runPath(exp, run) + "/logs?tail=200");
    const atEnd = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
    logBox.textContent = l.lines.join("\n") || "(no log lines)";
    if (atEnd) { logBox.scrollTop = logBox.scrollHeight; }
  };

  renderInfo(info);
  Object.keys(curves).sort(metricOrder).forEach((n) => drawCurve(n, false));
  if (Object.keys(curves).length === 0) { grid.appendChild(h("p", { class: "muted", id: "no-curves" }, "No metrics yet.")); }
  await loadLog();
  if (info.run.ended) { return; }
  const dirty = new Set();
  const redraw = throttle(() => { for (const n of dirty) { drawCurve(n, false); } dirty.clear(); }, 250);
  const refresh = throttle(() => {
    Promise.all([api(runPath(exp, run)).then(renderInfo), loadLog()]).catch(() => {});
  }, 2000);
  follow(exp, { runs: String(info.run.id), after: info.run.id + ":" + loaded.cursor }, {
    points: (ev) => {
      const none = document.getElementById("no-curves");
      if (none) { none.remove(); }
      for (const [name, p] of Object.entries(ev.metrics)) {
        curves[name] = curves[name] || { steps: [], values: [], times: [], total: 0 };
        mergePoints(curves[name], p.steps, p.values, p.times);
        dirty.add(name);
      }
      redraw();
    },
    run: refresh,
    done: refresh,
  });
  every(5000, refresh);
}

// ---------------------------------------------------------------------------------------
// Compare runs

async function comparePage(exp, query) {
  put(crumbs, h("a", { href: "#/" }, "Experiments"), " / ", h("a", { href: "#/e/" + enc(exp) }, exp), " / ", h("span", {}, "compare"));
  const detail = await api(expPath(exp));
  const [objective] = objectiveOf(detail.summary.objective);
  const view = {
    runs: query.getAll("run").filter((r) => detail.runs.some((x) => x.name === r)),
    metric: query.get("metric") || objective,
    smooth: Number(query.get("smooth") || 0.6),
    log: query.get("log") === "1",
    x: query.get("x") || "step",
    promotedOnly: query.get("promoted") === "1",
  };
  const searched = detail.runs.some((r) => (r.rungs || []).length > 0);
  const shown = () => view.runs.filter((r) => !view.promotedOnly || promoted(detail.runs.find((x) => x.name === r)));
  const curves = {};
  const cursors = {};
  const picker = h("div", { class: "run-picker", id: "run-picker" });
  const metricSelect = h("select", { id: "compare-metric", onchange: () => { view.metric = metricSelect.value; save(); reload(); } });
  const chartBox = h("div", { class: "charts wide", id: "compare-chart" });
  const table = h("div", { class: "panel" });
  const chart = new LineChart(chartBox, { title: "", height: 360 });
  put(main, h("h1", {}, "Compare runs of ", exp),
    h("div", { class: "toolbar" }, h("label", {}, "metric ", metricSelect),
      searched ? h("label", { title: "hide the runs ASHA stopped at a rung" }, h("input", { type: "checkbox", id: "promoted-only", checked: view.promotedOnly,
        onchange: (e) => { view.promotedOnly = e.target.checked; save(); draw(false); } }), " promoted runs only") : null),
    chartControls(view, (axisChanged) => { save(); draw(axisChanged); }),
    h("div", { class: "compare" }, picker, h("div", { class: "compare-main" }, chartBox, table)));

  function save() {
    const q = compareQuery(view.runs, { metric: view.metric, smooth: String(view.smooth), log: view.log ? "1" : "0", x: view.x, promoted: view.promotedOnly ? "1" : "0" });
    history.replaceState(null, "", "#/e/" + enc(exp) + "/compare?" + q);
  }

  function draw(axisChanged) {
    chart.options.title = view.metric;
    chart.root.querySelector(".chart-title").textContent = view.metric;
    chart.options.logY = view.log;
    chart.options.smoothing = view.smooth;
    chart.options.xLabel = view.x === "step" ? "step" : "time";
    chart.options.xFormat = xFormatter(view.x);
    if (axisChanged) { chart.zoom = null; }
    chart.setSeries(shown().filter((r) => curves[r]).map((r) => ({
      label: r, color: seriesColor(detail.runs.findIndex((x) => x.name === r)), xs: xValues(curves[r], view.x), ys: curves[r].values })));
    put(table, h("table", { class: "grid" },
      h("thead", {}, h("tr", {}, ["run", "state", "points", "last", "min", "max"].map((c) => h("th", {}, c)))),
      h("tbody", {}, shown().map((r) => {
        const run = detail.runs.find((x) => x.name === r);
        const m = summaryOf(run, view.metric);
        return h("tr", {}, h("td", {}, h("a", { href: "#/e/" + enc(exp) + "/r/" + enc(r) }, r)), h("td", {}, badge(run.state)),
          h("td", { class: "num" }, m ? m.count : 0), h("td", { class: "num" }, m ? formatNumber(m.last) : "–"),
          h("td", { class: "num" }, m ? formatNumber(m.min) : "–"), h("td", { class: "num" }, m ? formatNumber(m.max) : "–"));
      }))));
  }

  function renderPicker() {
    const metrics = new Set([objective]);
    detail.runs.filter((r) => view.runs.includes(r.name)).forEach((r) => (r.metrics || []).forEach((m) => metrics.add(m.name)));
    if (view.runs.length === 0) { detail.runs.forEach((r) => (r.metrics || []).forEach((m) => metrics.add(m.name))); }
    metrics.add(view.metric);
    put(metricSelect, ...[...metrics].sort(metricOrder).map((n) => h("option", { value: n, selected: n === view.metric }, n)));
    put(picker, h("div", { class: "muted small" }, "runs"), ...detail.runs.map((r, i) => h("label", { "data-run": r.name },
      h("input", { type: "checkbox", checked: view.runs.includes(r.name), onchange: (e) => {
        if (e.target.checked) { view.runs.push(r.name); } else { view.runs = view.runs.filter((x) => x !== r.name); }
        save(); renderPicker(); reload();
      } }), h("i", { class: "swatch", style: "background:" + seriesColor(i) }), " " + r.name)));
  }

  let stream = null;
  async function reload() {
    if (stream) { stream.close(); }
    const got = await Promise.all(view.runs.map((r) => api(runPath(exp, r) + "/curves?points=2000&names=" + enc(view.metric)).then((c) => [r, c])));
    for (const k of Object.keys(curves)) { delete curves[k]; }
    for (const [r, c] of got) {
      const run = detail.runs.find((x) => x.name === r);
      cursors[run.id] = c.cursor;
      if (c.curves[view.metric]) { curves[r] = c.curves[view.metric]; }
    }
    draw(false);
    const live = detail.runs.filter((r) => view.runs.includes(r.name) && !r.ended);
    if (live.length === 0) { return; }
    const redraw = throttle(() => draw(false), 250);
    stream = follow(exp, { runs: live.map((r) => r.id).join(","), after: live.map((r) => r.id + ":" + cursors[r.id]).join(",") }, {
      points: (ev) => {
        const p = ev.metrics[view.metric];
        if (!p) { return; }
        curves[ev.run] = curves[ev.run] || { steps: [], values: [], times: [], total: 0 };
        mergePoints(curves[ev.run], p.steps, p.values, p.times);
        redraw();
      },
      run: (ev) => { const r = detail.runs.find((x) => x.name === ev.run); if (r) { r.state = ev.state; r.ended = ev.ended; } },
    });
  }
  renderPicker();
  await reload();
}

// ---------------------------------------------------------------------------------------
// Routing

function stopPage() {
  for (const f of cleanups) { f(); }
  cleanups = [];
}

async function route() {
  stopPage();
  const hash = location.hash || "#/";
  const [path, qs] = hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  try {
    if (parts.length === 0) {
      await experimentsPage();
    } else if (parts[0] === "e" && parts.length === 2) {
      await experimentPage(parts[1]);
    } else if (parts[0] === "e" && parts.length === 4 && parts[2] === "r") {
      await runPage(parts[1], parts[3]);
    } else if (parts[0] === "e" && parts.length === 3 && parts[2] === "compare") {
      await comparePage(parts[1], new URLSearchParams(qs || ""));
    } else {
      put(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Experiments")));
    }
    document.body.dataset.ready = path || "/";
  } catch (e) {
    if (!(e instanceof AuthError)) { put(main, errorBox(e)); }
  }
}

async function start() {
  // `plume up` prints a link with the token in the fragment (never sent to the server):
  // trade it for the session cookie, then drop it from the address bar and history.
  const m = /^#token=([^&]+)/.exec(location.hash);
  if (m) {
    history.replaceState(null, "", "#/");
    try { await signIn(decodeURIComponent(m[1])); } catch (e) { showLogin(e.message); return; }
  }
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/api/logout", { method: "POST", credentials: "same-origin", headers: { "X-Plume-Request": "1" } });
    showLogin("Signed out.");
  });
  window.addEventListener("hashchange", route);
  route();
}

start();
