// Attribution: one step's heatmaps over the probe images, captioned with image and target.
import { fmt, h } from "../lib/dom.js";
import { frameError } from "../lib/errors.js";
import { tile } from "../lib/tiles.js";

export function attributionView(run, panel) {
  return (frame) =>
    h(
      "div",
      {},
      frameError(frame),
      h(
        "div",
        { class: "grid wide" },
        frame.tiles.map((t, i) =>
          tile(
            run,
            panel,
            frame,
            i,
            [`image ${fmt(t.image_index ?? i)}`, t.target != null ? `target ${fmt(t.target)}` : null],
            "photo",
          ),
        ),
      ),
    );
}
