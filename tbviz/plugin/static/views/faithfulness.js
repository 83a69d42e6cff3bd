// Faithfulness (Petsiuk et al. 2018): each method's deletion and insertion curves, one chart
// per metric with every method in it (the panel's groups: {method, metric, fractions,
// scores, auc}, see tbviz/summary/metadata.py), and the table of an attribution panel's
// metrics that the Attribution view shows beside its heatmaps.
import { fmt, h, str } from "../lib/dom.js";
import { frameError } from "../lib/errors.js";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b"];
// Which way is more faithful, per curve (the area under it is the metric).
const CURVES = { deletion: "lower", insertion: "higher" };

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

const finite = (v) => typeof v === "number" && Number.isFinite(v);

// One chart: x the fraction of pixels removed (deletion) or restored (insertion), y the
// target's score; a line per method. Points that are not numbers are skipped, not drawn at 0.
function chart(metric, curves, color) {
  const W = 300;
  const H = 190;
  const m = { l: 40, r: 10, t: 10, b: 30 };
  const pts = curves.map((c) =>
    (Array.isArray(c.fractions) ? c.fractions : [])
      .map((x, i) => [x, Array.isArray(c.scores) ? c.scores[i] : null])
      .filter(([x, y]) => finite(x) && finite(y)),
  );
  const ys = pts.flat().map(([, y]) => y);
  let lo = Math.min(0, ...ys);
  let hi = Math.max(...ys, lo + 1e-6);
  if (!ys.length) [lo, hi] = [0, 1];
  const X = (x) => m.l + x * (W - m.l - m.r);
  const Y = (y) => H - m.b - ((y - lo) / (hi - lo)) * (H - m.t - m.b);
  const axes = svg(
    "g",
    { class: "axes" },
    svg("line", { x1: X(0), y1: Y(lo), x2: X(1), y2: Y(lo) }),
    svg("line", { x1: X(0), y1: Y(lo), x2: X(0), y2: Y(hi) }),
    ...[0, 0.5, 1].map((x) => svg("text", { x: X(x), y: H - m.b + 14, "text-anchor": "middle" }, fmt(x))),
    ...[lo, hi].map((y) => svg("text", { x: m.l - 4, y: Y(y) + 4, "text-anchor": "end" }, fmt(y))),
    svg("text", { x: X(0.5), y: H - 2, "text-anchor": "middle" }, `fraction of pixels ${metric === "deletion" ? "removed" : "restored"}`),
  );
  const lines = pts.map((p, i) =>
    svg("polyline", {
      points: p.map(([x, y]) => `${X(x)},${Y(y)}`).join(" "),
      fill: "none",
      stroke: color(curves[i].method),
      "stroke-width": 2,
    }),
  );
  return h(
    "figure",
    { class: "curve" },
    h("figcaption", {}, `${metric} (${CURVES[metric] ?? "?"} area is more faithful)`),
    svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": `${metric} curves` }, axes, ...lines),
    h(
      "ul",
      { class: "legend" },
      curves.map((c) =>
        h("li", {}, h("span", { class: "swatch", style: `background:${color(c.method)}` }), `${str(c.method)} · area ${fmt(c.auc)}`),
      ),
    ),
  );
}

export function faithfulnessView(run, panel) {
  return (frame) => {
    const groups = frame.groups ?? [];
    const methods = [...new Set(groups.map((g) => str(g.method)))];
    const color = (method) => COLORS[methods.indexOf(str(method)) % COLORS.length];
    const metrics = [...new Set(groups.map((g) => str(g.metric)))];
    return h(
      "div",
      {},
      frameError(frame),
      groups.length ? null : h("p", { class: "note" }, "no curves in this step"),
      h(
        "div",
        { class: "curves" },
        metrics.map((metric) => chart(metric, groups.filter((g) => str(g.metric) === metric), color)),
      ),
    );
  };
}

// The faithfulness values an attribution frame's tiles carry ({metric: value}), as a table
// beside the heatmaps: a row per probe image and their mean; each metric says which way is
// more faithful (the panel's faithfulness_higher, written by AttributionCallback).
export function faithfulnessTable(panel, frame) {
  const rows = frame.tiles.filter((t) => t.faithfulness && typeof t.faithfulness === "object");
  if (!rows.length) return null;
  const metrics = [...new Set(rows.flatMap((t) => Object.keys(t.faithfulness)))];
  const higher = panel.faithfulness_higher && typeof panel.faithfulness_higher === "object" ? panel.faithfulness_higher : {};
  const arrow = (k) => (higher[k] === true ? " ↑" : higher[k] === false ? " ↓" : "");
  const mean = (k) => {
    const vs = rows.map((t) => t.faithfulness[k]).filter(finite);
    return vs.length ? vs.reduce((a, b) => a + b, 0) / vs.length : null;
  };
  return h(
    "table",
    { class: "evo faith", "aria-label": "faithfulness of these maps" },
    h("caption", {}, "faithfulness (↑/↓: higher/lower is more faithful)"),
    h(
      "thead",
      {},
      h("tr", {}, h("th", {}, "image"), metrics.map((k) => h("th", { scope: "col" }, `${k}${arrow(k)}`))),
    ),
    h(
      "tbody",
      {},
      h("tr", { class: "mean" }, h("th", { scope: "row" }, "mean"), metrics.map((k) => h("td", {}, fmt(mean(k))))),
      rows.map((t, i) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, fmt(t.image_index ?? i)),
          metrics.map((k) => h("td", {}, fmt(t.faithfulness[k]))),
        ),
      ),
    ),
  );
}
