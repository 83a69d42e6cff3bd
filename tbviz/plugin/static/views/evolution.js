// Evolution: the fixed feature maps of a layer (rows) across the chosen steps (columns),
// the step at which the layer settled (ConvergenceCallback) marked.
import { fmt, h } from "../lib/dom.js";
import { frameError } from "../lib/errors.js";
import { state } from "../lib/state.js";
import { byRole, position, tile } from "../lib/tiles.js";

// The layer's latest settling (listed with the panel by the server) as the first logged
// step at or after it: the step column the evolution marks.
export function settledStep(panel, steps) {
  const at = panel.convergence?.settled.at(-1)?.step;
  const step = at == null ? undefined : steps.find((s) => s >= at);
  return step == null ? [] : [step];
}

// What the evolution says about its layer's convergence: nothing when the run's
// ConvergenceCallback did not watch the layer.
function settledNote(panel) {
  const c = panel.convergence;
  if (!c) return null;
  const at = c.settled.at(-1);
  const title = [c.rule, c.layer !== panel.layer ? `convergence layer ${c.layer}` : null]
    .filter(Boolean)
    .join("; ");
  if (!at) return h("p", { class: "settled-note note", title }, "not settled yet");
  const earlier = c.settled.slice(0, -1).map((s) => s.step);
  return h(
    "p",
    { class: "settled-note", title },
    h("span", { class: "badge" }, "settled"),
    ` at step ${at.step}` + (earlier.length ? `, before at ${earlier.join(", ")}` : ""),
  );
}

export function evolutionView(run, panel) {
  return (frs) => {
    const steps = frs.map((f) => f.step);
    const [marked] = settledStep(panel, steps);
    // Rows are the fixed feature maps, keyed by channel (or by order when unlabelled).
    const rows = new Map();
    for (const f of frs) {
      const [proj, patch] = byRole(f);
      proj.forEach((i, n) => {
        const t = f.tiles[i];
        const id = t.channel ?? `#${n}`;
        if (!rows.has(id)) rows.set(id, new Map());
        rows.get(id).set(f.step, [i, patch[n]]);
      });
    }
    const settled = panel.convergence?.settled.at(-1);
    const head = (f) =>
      f.step === marked
        ? h(
            "th",
            {
              scope: "col",
              class: "settled",
              title: `layer settled at step ${settled.step}: ${panel.convergence.rule ?? ""}`,
            },
            `step ${f.step}`,
            h("span", { class: "badge" }, "settled"),
          )
        : h("th", { scope: "col" }, `step ${f.step}`);
    const table = h(
      "table",
      { class: "evo" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "map"), frs.map(head))),
      h(
        "tbody",
        {},
        [...rows].map(([id, cells]) =>
          h(
            "tr",
            { class: id === state.focusMap ? "focus" : null },
            h("th", { scope: "row" }, `map ${fmt(id)}`),
            frs.map((f) => {
              const c = cells.get(f.step);
              if (!c) return h("td", { class: "note" }, "–");
              const t = f.tiles[c[0]];
              return h(
                "td",
                { class: f.step === marked ? "settled" : null },
                h(
                  "div",
                  { class: "cell" },
                  tile(run, panel, f, c[0], [fmt(t.value), position(t)]),
                  state.showPatches && c[1] != null
                    ? tile(run, panel, f, c[1], ["patch"], "patch")
                    : null,
                ),
              );
            }),
          ),
        ),
      ),
    );
    return h("div", {}, settledNote(panel), frs.map(frameError), table);
  };
}

