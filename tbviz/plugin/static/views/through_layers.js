// Through the layers (Liu et al.'s Fig. 2): each probe photo (rows) followed through the
// logged layers (columns, in network order), ending with its stylized output where the run
// has one; last steps. A column whose panel fails says why in its head; the others draw.
import { fmt, h, str } from "../lib/dom.js";
import { frames, getAll } from "../lib/fetch.js";
import { tile } from "../lib/tiles.js";

export async function throughLayers(col, entry) {
  const order = (a, b) =>
    str(a.model).localeCompare(str(b.model)) || (+a.layer_index || 0) - (+b.layer_index || 0);
  const panels = entry.panels.filter((p) => p.kind === "perimage").sort(order);
  const stylized = entry.panels.find((p) => p.kind === "stylized");
  const columns = stylized ? [...panels, stylized] : panels;
  const last = async (p) => {
    try {
      const steps = (await getAll("steps", { run: entry.run, tag: p.tag })).map((s) => s.step);
      return steps.length ? (await frames(entry.run, p.tag, [steps.at(-1)]))[0] : null;
    } catch (err) {
      return { tiles: [], error: String(err.message ?? err) };
    }
  };
  const frs = await Promise.all(columns.map(last));
  const rows = Math.max(0, ...frs.slice(0, panels.length).map((f) => f?.tiles.length ?? 0));
  const cell = (p, f, i) => {
    const t = f?.tiles[i];
    if (!t) return h("td", { class: "note" }, "–");
    const lines =
      p.kind === "stylized" ? [`step ${f.step}`] : [fmt(t.value), `map ${fmt(t.channel)}`];
    return h("td", {}, tile(entry.run, p, f, i, lines));
  };
  const head = (p, f) =>
    h(
      "th",
      { scope: "col" },
      p.kind === "stylized" ? "stylized" : str(p.layer),
      f?.error
        ? h("p", { class: "error" }, `${p.tag}${f.step != null ? ` at step ${f.step}` : ""}: ${f.error}`)
        : null,
    );
  col.append(
    h(
      "table",
      { class: "evo layers-through" },
      h("thead", {}, h("tr", {}, h("th", {}, ""), columns.map((p, c) => head(p, frs[c])))),
      h(
        "tbody",
        {},
        [...Array(rows).keys()].map((i) =>
          h(
            "tr",
            {},
            h("th", { scope: "row" }, `photo ${i}`),
            columns.map((p, c) => cell(p, frs[c], i)),
          ),
        ),
      ),
    ),
  );
}
