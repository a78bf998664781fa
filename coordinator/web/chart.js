// Plume's line chart: hand-written canvas code, no dependencies.
//
// Draws several series (x ascending, y may hold null for a gap), with nice ticks, a log-y
// option, EMA smoothing drawn over the faint raw line (as TensorBoard does), a hover
// crosshair with every series' value at the nearest x, drag to zoom on x and double-click to
// reset. The server already downsampled the curves (keeping every extreme), so drawing is a
// straight pass over at most a few thousand points a series.
(() => {
"use strict";

const PALETTE = ["#3b6fd8", "#e0662b", "#2e9a5a", "#c43b7a", "#8256d0", "#a8861f",
  "#1d9bb2", "#d64545", "#5b6b7c", "#7aa32b"];

function seriesColor(i) { return PALETTE[i % PALETTE.length]; }

// 1, 2 or 5 times a power of ten, about (max - min) / count apart.
function niceTicks(min, max, count) {
  if (!(max > min)) { return [min]; }
  const raw = (max - min) / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) {
    out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  }
  return out;
}

function formatNumber(v) {
  if (v === null || v === undefined || Number.isNaN(v)) { return "NaN"; }
  if (!Number.isFinite(v)) { return v > 0 ? "inf" : "-inf"; }
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) { return v.toExponential(2); }
  if (a >= 1000) { return v.toFixed(0); }
  return Number(v.toPrecision(4)).toString();
}

function formatTime(seconds) {
  const d = new Date(seconds * 1000);
  return d.toTimeString().slice(0, 8);
}

// Debiased exponential moving average (TensorBoard's smoothing); nulls stay gaps.
function smooth(ys, weight) {
  if (!(weight > 0)) { return ys; }
  const out = new Array(ys.length);
  let last = 0;
  let n = 0;
  for (let i = 0; i < ys.length; i++) {
    const y = ys[i];
    if (y === null || !Number.isFinite(y)) { out[i] = null; continue; }
    last = last * weight + (1 - weight) * y;
    n++;
    out[i] = last / (1 - Math.pow(weight, n));
  }
  return out;
}

class LineChart {
  constructor(container, options) {
    this.options = Object.assign({ title: "", height: 220, logY: false, smoothing: 0,
      xLabel: "step", xFormat: formatNumber, onZoom: null }, options || {});
    this.series = [];
    this.zoom = null;
    this.hoverX = null;
    this.drag = null;
    this.root = document.createElement("div");
    this.root.className = "chart";
    const title = document.createElement("div");
    title.className = "chart-title";
    title.textContent = this.options.title;
    this.canvas = document.createElement("canvas");
    this.canvas.height = this.options.height;
    this.tip = document.createElement("div");
    this.tip.className = "chart-tip";
    this.tip.hidden = true;
    this.legend = document.createElement("div");
    this.legend.className = "chart-legend";
    this.root.append(title, this.canvas, this.tip, this.legend);
    container.appendChild(this.root);
    this.canvas.addEventListener("mousemove", (e) => this.onMove(e));
    this.canvas.addEventListener("mouseleave", () => { this.hoverX = null; this.tip.hidden = true; this.draw(); });
    this.canvas.addEventListener("mousedown", (e) => { this.drag = { from: this.pixelX(e), to: this.pixelX(e) }; });
    window.addEventListener("mouseup", () => this.onUp());
    this.canvas.addEventListener("dblclick", () => this.setZoom(null));
    this.resizer = new ResizeObserver(() => this.draw());
    this.resizer.observe(this.root);
  }

  // series: [{label, xs, ys, color?}]; xs ascending.
  setSeries(series) {
    this.series = series.map((s, i) => Object.assign({ color: seriesColor(i), hidden: false }, s,
      { hidden: (this.series.find((o) => o.label === s.label) || {}).hidden || false }));
    this.renderLegend();
    this.draw();
  }

  set(option, value) { this.options[option] = value; this.draw(); }

  setZoom(range) {
    this.zoom = range;
    if (this.options.onZoom) { this.options.onZoom(range); }
    this.draw();
  }

  destroy() { this.resizer.disconnect(); this.root.remove(); }

  renderLegend() {
    this.legend.replaceChildren();
    if (this.series.length < 2) { return; }
    for (const s of this.series) {
      const item = document.createElement("span");
      item.className = "legend-item" + (s.hidden ? " off" : "");
      const swatch = document.createElement("i");
      swatch.style.background = s.color;
      item.append(swatch, document.createTextNode(s.label));
      item.title = "click to hide or show";
      item.addEventListener("click", () => { s.hidden = !s.hidden; this.renderLegend(); this.draw(); });
      this.legend.appendChild(item);
    }
  }

  pixelX(e) {
    const r = this.canvas.getBoundingClientRect();
    return e.clientX - r.left;
  }

  // The plotted ranges, in data units.
  ranges() {
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    const log = this.options.logY;
    for (const s of this.series) {
      if (s.hidden) { continue; }
      const ys = s.plotYs || s.ys;
      for (let i = 0; i < s.xs.length; i++) {
        const x = s.xs[i];
        if (x < x0) { x0 = x; }
        if (x > x1) { x1 = x; }
        if (this.zoom && (x < this.zoom[0] || x > this.zoom[1])) { continue; }
        for (const y of [s.ys[i], ys[i]]) {
          if (y === null || !Number.isFinite(y) || (log && y <= 0)) { continue; }
          if (y < y0) { y0 = y; }
          if (y > y1) { y1 = y; }
        }
      }
    }
    if (this.zoom) { [x0, x1] = this.zoom; }
    if (!Number.isFinite(x0)) { x0 = 0; x1 = 1; }
    if (x0 === x1) { x0 -= 0.5; x1 += 0.5; }
    if (!Number.isFinite(y0)) { y0 = log ? 1 : 0; y1 = log ? 10 : 1; }
    if (log) { y0 = Math.log10(y0); y1 = Math.log10(y1); }
    if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
    const pad = (y1 - y0) * 0.05;
    return { x0, x1, y0: y0 - pad, y1: y1 + pad };
  }

  draw() {
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(200, this.root.clientWidth);
    const height = this.options.height;
    if (this.canvas.width !== Math.round(width * dpr)) {
      this.canvas.width = Math.round(width * dpr);
      this.canvas.height = Math.round(height * dpr);
      this.canvas.style.width = width + "px";
      this.canvas.style.height = height + "px";
    }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const log = this.options.logY;
    for (const s of this.series) {
      s.plotYs = smooth(s.ys, this.options.smoothing);
    }
    const r = this.ranges();
    const left = 58, right = 12, top = 8, bottom = 24;
    const pw = width - left - right, ph = height - top - bottom;
    const X = (x) => left + ((x - r.x0) / (r.x1 - r.x0)) * pw;
    const Y = (y) => top + (1 - ((log ? Math.log10(y) : y) - r.y0) / (r.y1 - r.y0)) * ph;
    this.geometry = { r, left, pw, X };
    ctx.font = "11px system-ui, sans-serif";
    ctx.strokeStyle = "#e4e7ec";
    ctx.fillStyle = "#5b6472";
    ctx.lineWidth = 1;
    // Grid and tick labels.
    const yTicks = log
      ? niceTicks(Math.floor(r.y0), Math.ceil(r.y1), Math.min(6, Math.ceil(r.y1) - Math.floor(r.y0)))
        .filter((t) => Number.isInteger(t) && t >= r.y0 && t <= r.y1).map((t) => Math.pow(10, t))
      : niceTicks(r.y0, r.y1, 5);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const t of yTicks) {
      const y = Y(t);
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + pw, y); ctx.stroke();
      ctx.fillText(formatNumber(t), left - 6, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    // Steps are whole numbers: no tick at step 1.5.
    const xTicks = niceTicks(r.x0, r.x1, Math.max(2, Math.floor(pw / 90)))
      .filter((t) => this.options.xLabel !== "step" || Number.isInteger(t));
    for (const t of xTicks) {
      const x = X(t);
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + ph); ctx.stroke();
      ctx.fillText(this.options.xFormat(t), x, top + ph + 6);
    }
    ctx.strokeStyle = "#9aa3af";
    ctx.strokeRect(left, top, pw, ph);
    // Lines: raw faint under the smoothed curve when smoothing is on.
    ctx.save();
    ctx.beginPath(); ctx.rect(left, top, pw, ph); ctx.clip();
    let drawn = 0;
    const smoothing = this.options.smoothing > 0;
    for (const s of this.series) {
      if (s.hidden) { continue; }
      const passes = smoothing ? [[s.ys, 0.25], [s.plotYs, 1]] : [[s.ys, 1]];
      for (const [ys, alpha] of passes) {
        ctx.globalAlpha = alpha;
        ctx.strokeStyle = s.color;
        ctx.lineWidth = 1.5;
        ctx.beginPath();
        let pen = false;
        for (let i = 0; i < s.xs.length; i++) {
          const y = ys[i];
          if (y === null || !Number.isFinite(y) || (log && y <= 0)) { pen = false; continue; }
          const px = X(s.xs[i]), py = Y(y);
          if (pen) { ctx.lineTo(px, py); } else { ctx.moveTo(px, py); pen = true; }
        }
        ctx.stroke();
        if (s.xs.length === 1 && ys[0] !== null) {
          ctx.fillStyle = s.color;
          ctx.fillRect(X(s.xs[0]) - 2, Y(ys[0]) - 2, 4, 4);
        }
      }
      drawn += s.xs.length;
    }
    ctx.restore();
    ctx.globalAlpha = 1;
    this.canvas.dataset.points = String(drawn);
    // Milliseconds from navigation start to the first drawing with data (for benchmarks).
    if (drawn > 0 && !this.canvas.dataset.firstDraw) {
      this.canvas.dataset.firstDraw = performance.now().toFixed(1);
    }
    // Zoom selection and hover crosshair.
    if (this.drag && Math.abs(this.drag.to - this.drag.from) > 2) {
      ctx.fillStyle = "rgba(59,111,216,0.12)";
      const a = Math.min(this.drag.from, this.drag.to), b = Math.max(this.drag.from, this.drag.to);
      ctx.fillRect(a, top, b - a, ph);
    }
    if (this.hoverX !== null) {
      ctx.strokeStyle = "#6b7280";
      ctx.beginPath(); ctx.moveTo(X(this.hoverX), top); ctx.lineTo(X(this.hoverX), top + ph); ctx.stroke();
    }
  }

  dataX(px) {
    const g = this.geometry;
    return g.r.x0 + ((px - g.left) / g.pw) * (g.r.x1 - g.r.x0);
  }

  onMove(e) {
    if (!this.geometry) { return; }
    const px = this.pixelX(e);
    if (this.drag) { this.drag.to = px; }
    const x = this.dataX(px);
    const rows = [];
    let nearest = null;
    for (const s of this.series) {
      if (s.hidden || s.xs.length === 0) { continue; }
      let lo = 0, hi = s.xs.length - 1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (s.xs[mid] < x) { lo = mid + 1; } else { hi = mid; }
      }
      if (lo > 0 && Math.abs(s.xs[lo - 1] - x) < Math.abs(s.xs[lo] - x)) { lo--; }
      if (nearest === null || Math.abs(s.xs[lo] - x) < Math.abs(nearest - x)) { nearest = s.xs[lo]; }
      rows.push([s, lo]);
    }
    if (nearest === null) { return; }
    this.hoverX = nearest;
    this.tip.replaceChildren();
    const head = document.createElement("div");
    head.className = "tip-head";
    head.textContent = this.options.xLabel + " " + this.options.xFormat(nearest);
    this.tip.appendChild(head);
    for (const [s, i] of rows) {
      const line = document.createElement("div");
      const sw = document.createElement("i");
      sw.style.background = s.color;
      const shown = this.options.smoothing > 0 ? s.plotYs[i] : s.ys[i];
      line.append(sw, document.createTextNode(
        (s.label ? s.label + ": " : "") + formatNumber(shown) + " @" + this.options.xFormat(s.xs[i])));
      this.tip.appendChild(line);
    }
    this.tip.hidden = false;
    const r = this.canvas.getBoundingClientRect();
    this.tip.style.left = Math.min(px + 14, r.width - 180) + "px";
    this.tip.style.top = "28px";
    this.draw();
  }

  onUp() {
    if (!this.drag) { return; }
    const d = this.drag;
    this.drag = null;
    if (Math.abs(d.to - d.from) > 5 && this.geometry) {
      const a = this.dataX(Math.min(d.from, d.to)), b = this.dataX(Math.max(d.from, d.to));
      this.setZoom([a, b]);
    } else {
      this.draw();
    }
  }
}

// Merges live points into a curve {steps, values, times}: a point whose step is not after
// the curve's last replaces the curve from that step on (a resumed attempt re-reports the
// steps after its checkpoint), so points are never duplicated.
function mergePoints(curve, steps, values, times) {
  for (let i = 0; i < steps.length; i++) {
    let n = curve.steps.length;
    if (n > 0 && curve.steps[n - 1] >= steps[i]) {
      while (n > 0 && curve.steps[n - 1] >= steps[i]) { n--; }
      curve.steps.length = n;
      curve.values.length = n;
      curve.times.length = n;
    }
    curve.steps.push(steps[i]);
    curve.values.push(values[i]);
    curve.times.push(times[i]);
  }
}

window.PlumeChart = { LineChart, seriesColor, formatNumber, formatTime, mergePoints, smooth };
})();
