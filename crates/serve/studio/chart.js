// Line charts drawn as SVG: series of [x, y] points on shared axes, with a legend. Each series'
// path carries data-series and data-points, so what a chart shows can be read back.

import { h, fmt } from "./api.js";

const NS = "http://www.w3.org/2000/svg";
export const COLORS = ["#2456c9", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#5c940d", "#e67700"];

function s(tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function ticks(lo, hi, n) {
  if (!(hi > lo)) return [lo];
  const step0 = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((st) => st >= step0) || step0;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

/** A chart element; `chart.update(series)` redraws it with [{name, points, color?, dashed?}]. */
export function lineChart({ title, xLabel = "step", yLabel = "", id }) {
  const W = 720, H = 260, L = 56, R = 12, T = 12, B = 34;
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const legend = h("div", { class: "legend" });
  const box = h("div", { class: "chart-box", id }, title ? h("h2", {}, title) : null, svg, legend);
  box.update = (series) => {
    svg.replaceChildren();
    legend.replaceChildren();
    const all = series.flatMap((se) => se.points).filter((p) => Number.isFinite(p[1]));
    if (!all.length) {
      svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no points yet"));
    }
    let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
    let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
    if (!all.length) [x0, x1, y0, y1] = [0, 1, 0, 1];
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y0 -= Math.abs(y0) * 0.05 || 0.5; y1 += Math.abs(y1) * 0.05 || 0.5; }
    const pad = (y1 - y0) * 0.05;
    y0 -= pad; y1 += pad;
    const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const Y = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    for (const v of ticks(y0, y1, 5)) {
      svg.append(s("line", { class: "grid-line", x1: L, x2: W - R, y1: Y(v), y2: Y(v) }));
      svg.append(s("text", { x: L - 6, y: Y(v) + 4, "text-anchor": "end" }, fmt.num(v, 3)));
    }
    for (const v of ticks(x0, x1, 6)) {
      svg.append(s("text", { x: X(v), y: H - B + 16, "text-anchor": "middle" }, fmt.num(v, 4)));
    }
    svg.append(s("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
    svg.append(s("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    svg.append(s("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, xLabel));
    if (yLabel) svg.append(s("text", { x: 12, y: T + 8 }, yLabel));
    series.forEach((se, i) => {
      const color = se.color || COLORS[i % COLORS.length];
      const pts = se.points.filter((p) => Number.isFinite(p[1]));
      const d = pts.map((p, j) => `${j ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
      svg.append(s("path", {
        d: d || "M0,0", fill: "none", stroke: color, "stroke-width": 2,
        "stroke-dasharray": se.dashed ? "6 4" : "none", "data-series": se.name, "data-points": pts.length,
      }));
      if (pts.length === 1 || se.dots) {
        for (const p of pts) svg.append(s("circle", { cx: X(p[0]), cy: Y(p[1]), r: 3, fill: color }));
      }
      const last = pts.length ? fmt.num(pts[pts.length - 1][1]) : "–";
      const swatch = h("i");
      swatch.style.background = color;
      legend.append(h("span", {}, swatch, `${se.name}: ${last}`));
    });
  };
  box.update([]);
  return box;
}
