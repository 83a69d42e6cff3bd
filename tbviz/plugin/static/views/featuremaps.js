// Feature maps (Zeiler & Fergus' Fig. 2): per feature map (a group of the frame) its top-k
// projections over the scanned data beside their input patches. A map's title opens its
// evolution.
import { fmt, h } from "../lib/dom.js";
import { frameError } from "../lib/errors.js";
import { openView, state } from "../lib/state.js";
import { byRole, tile } from "../lib/tiles.js";

export function featuremapsView(run, panel) {
  return (frame) => {
    const [proj, patch] = byRole(frame);
    const caption = (t) => [fmt(t.value), t.image_index != null ? `img ${fmt(t.image_index)}` : null];
    const grid = (idx, cls) =>
      h(
        "div",
        { class: "grid", style: `--cols:${Math.ceil(Math.sqrt(idx.length || 1))}` },
        idx.filter((i) => i != null).map((i) => tile(run, panel, frame, i, caption(frame.tiles[i]), cls)),
      );
    const blocks = (frame.groups ?? []).map((g) =>
      h(
        "div",
        { class: "fmap" },
        h(
          "h4",
          {},
          h(
            "button",
            {
              class: "preset",
              title: "open this map's strongest unit across steps",
              onclick: () => {
                state.focusMap = g.channel;
                openView("evolution");
              },
            },
            `map ${fmt(g.channel)}`,
          ),
        ),
        h(
          "div",
          { class: "zf" },
          h("div", { class: "zf-half" }, grid((g.units ?? []).map((u) => proj[u]), "proj")),
          h("div", { class: "zf-half" }, grid((g.units ?? []).map((u) => patch[u]), "patch")),
        ),
      ),
    );
    return h("div", { class: "fmaps" }, frameError(frame), blocks);
  };
}
