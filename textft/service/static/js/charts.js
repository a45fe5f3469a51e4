// Charts drawn here as SVG and HTML (no library to vendor): learning curves and label distributions.
import { bar, el } from "./dom.js";
import { fmt } from "./format.js";

const COLORS = ["#2563eb", "#d97706", "#059669", "#9333ea", "#dc2626"];
const color = (i) => COLORS[i % COLORS.length];
const lastPoint = (s) => s.points[s.points.length - 1];

export function niceTicks(lo, hi, count = 5) {
  if (hi === lo) { hi = lo + 1; }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toFixed(10));
  return ticks;
}

// The chart's size, ranges and ticks, and X/Y from data to pixels. Drawn at the container's own
// width, so that the labels keep their size on a phone.
function frame(container, points, { xMax, yMin, yMax }) {
  const W = Math.max(280, Math.round(container.clientWidth || 640)), H = W < 500 ? 220 : 260;
  const m = { l: 52, r: 16, t: 12, b: 38 };
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(0, ...xs), x1 = Math.max(...xs, xMax || 1);
  let y0 = yMin ?? Math.min(...ys), y1 = yMax ?? Math.max(...ys);
  if (yMin === undefined) y0 = Math.min(y0, 0);
  if (y1 - y0 < 1e-9) y1 = y0 + 1;
  const yt = niceTicks(y0, y1), xt = niceTicks(x0, x1, 6);
  y0 = Math.min(y0, yt[0]); y1 = Math.max(y1, yt[yt.length - 1]);
  const X = (v) => m.l + ((v - x0) / (x1 - x0 || 1)) * (W - m.l - m.r);
  const Y = (v) => H - m.b - ((v - y0) / (y1 - y0)) * (H - m.t - m.b);
  return { W, H, m, xt, yt, X, Y };
}

function axes(svg, { W, H, m, xt, yt, X, Y }, xLabel) {
  for (const v of yt) {
    svg.append(el("line", { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v), class: "grid" }));
    svg.append(el("text", { x: m.l - 6, y: Y(v) + 4, "text-anchor": "end", class: "tick", text: fmt.num(v, 3) }));
  }
  for (const v of xt) {
    svg.append(el("text", { x: X(v), y: H - m.b + 16, "text-anchor": "middle", class: "tick", text: fmt.num(v, 1) }));
  }
  svg.append(el("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, class: "axis" }));
  svg.append(el("text", { x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle", class: "axis-label", text: xLabel }));
}

// series: [{name, points: [[x, y], ...], dots?}]; the path carries data-series and data-points for
// tests and assistive tools, the svg's label the last value of each series.
export function lineChart(container, { series, xLabel, xMax, yMin, yMax, empty }) {
  container.replaceChildren();
  const all = series.flatMap((s) => s.points);
  if (!all.length) {
    container.append(el("p", { class: "hint chart-empty", text: empty }));
    return;
  }
  const f = frame(container, all, { xMax, yMin, yMax });
  const shown = series.filter((s) => s.points.length);
  const summary = shown.map((s) => `${s.name} ${fmt.num(lastPoint(s)[1])} at step ${lastPoint(s)[0]}`).join("; ");
  const svg = el("svg", { viewBox: `0 0 ${f.W} ${f.H}`, role: "img", "aria-label": summary, class: "chart-svg" });
  svg.append(el("title", { text: summary }));
  axes(svg, f, xLabel);
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${f.X(p[0]).toFixed(1)},${f.Y(p[1]).toFixed(1)}`).join("");
    svg.append(el("path", { d, fill: "none", stroke: color(i), "stroke-width": 2, class: "series",
      "data-series": s.name, "data-points": s.points.length }));
    if (s.dots || s.points.length === 1) {
      for (const p of s.points) svg.append(el("circle", { cx: f.X(p[0]), cy: f.Y(p[1]), r: 3, fill: color(i) }));
    }
  });
  const legend = el("ul", { class: "legend" }, shown.map((s) => el("li", {},
    el("span", { class: "swatch", style: `background:${color(series.indexOf(s))}` }), `${s.name}: ${fmt.num(lastPoint(s)[1])}`)));
  container.append(svg, legend);
}

// Horizontal bars, one per label, largest first (HTML rather than SVG, so that the names stay
// readable text at any width).
export function labelBars(counts, caption) {
  const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
  const total = entries.reduce((s, e) => s + e[1], 0) || 1;
  const max = Math.max(...entries.map((e) => e[1]), 1);
  return el("ol", { class: "dist", "aria-label": `${caption}: ${entries.map(([k, v]) => `${k} ${v}`).join(", ")}` },
    entries.map(([name, n]) => el("li", {}, el("span", { class: "dist-name", title: name, text: name }), bar(n / max),
      el("span", { class: "dist-count", text: `${n.toLocaleString("en")} · ${((100 * n) / total).toFixed(1)}%` }))));
}
