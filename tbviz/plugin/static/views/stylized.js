// Stylized probes (and the probe images): each photo (rows) across the chosen steps.
import { h, str } from "../lib/dom.js";
import { frameError } from "../lib/errors.js";
import { tile } from "../lib/tiles.js";

const labelOf = (t, i) => str(t.label ?? `photo ${str(t.index ?? i)}`);

export function stylizedView(run, panel) {
  return (frs) => {
    const labels = [...new Set(frs.flatMap((f) => f.tiles.map(labelOf)))];
    return h(
      "div",
      {},
      frs.map(frameError),
      h(
        "table",
        { class: "evo" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", {}, ""),
            frs.map((f) => h("th", { scope: "col" }, `step ${f.step}`)),
          ),
        ),
        h(
          "tbody",
          {},
          labels.map((label) =>
            h(
              "tr",
              {},
              h("th", { scope: "row" }, label),
              frs.map((f) => {
                const i = f.tiles.findIndex((t, j) => labelOf(t, j) === label);
                return h("td", {}, i < 0 ? "–" : tile(run, panel, f, i, [], "photo"));
              }),
            ),
          ),
        ),
      ),
    );
  };
}
