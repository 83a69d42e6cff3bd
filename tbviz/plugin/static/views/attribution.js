// Attribution: one step's heatmaps over the probe images, captioned with image and target
// (an attention tile holds each head side by side: its caption says which is where), and
// beside them, when the callback measured it, how faithful the maps are.
import { fmt, h } from "../lib/dom.js";
import { frameError } from "../lib/errors.js";
import { tile } from "../lib/tiles.js";
import { faithfulnessTable } from "./faithfulness.js";

export function attributionView(run, panel) {
  return (frame) => {
    const caption = (t, i) => [
      `image ${fmt(t.image_index ?? i)}`,
      t.target != null ? `target ${fmt(t.target)}` : null,
      Number.isInteger(t.heads) && t.heads > 1 ? `heads 0–${t.heads - 1}, left to right` : null,
    ];
    return h(
      "div",
      {},
      frameError(frame),
      h(
        "div",
        { class: "beside" },
        h(
          "div",
          { class: "grid wide" },
          frame.tiles.map((t, i) => tile(run, panel, frame, i, caption(t, i), "photo")),
        ),
        faithfulnessTable(panel, frame),
      ),
    );
  };
}
