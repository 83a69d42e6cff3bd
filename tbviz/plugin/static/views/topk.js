// Top-k: one step's strongest projections of a layer beside the input patches that caused
// them (Zeiler & Fergus' Fig. 2), each captioned with its value, map, image and position.
import { fmt, h } from "../lib/dom.js";
import { frameError } from "../lib/errors.js";
import { byRole, position, tile } from "../lib/tiles.js";

export function topkView(run, panel) {
  return (frame) => {
    const [proj, patch] = byRole(frame);
    const caption = (t) => [
      `${fmt(t.value)}${t.channel != null ? ` · map ${fmt(t.channel)}` : ""}`,
      [t.image_index != null ? `img ${fmt(t.image_index)}` : null, position(t)]
        .filter(Boolean)
        .join(" · "),
    ];
    const grid = (title, idx, cls) =>
      h(
        "div",
        { class: "zf-half" },
        h("h4", {}, title),
        h(
          "div",
          { class: "grid", style: `--cols:${Math.ceil(Math.sqrt(idx.length || 1))}` },
          idx.map((i, n) =>
            tile(run, panel, frame, i, caption(frame.tiles[i]), `${cls} pair-${n}`),
          ),
        ),
      );
    // Hovering a tile outlines its partner: projection <-> the patch that caused it.
    const pair = (e, on) => {
      const n = [...(e.target.closest(".tile")?.classList ?? [])].find((c) =>
        c.startsWith("pair-"),
      );
      if (n) e.currentTarget.querySelectorAll(`.${n}`).forEach((t) => t.classList.toggle("hl", on));
    };
    return h(
      "div",
      { class: "zf", onmouseover: (e) => pair(e, true), onmouseout: (e) => pair(e, false) },
      frameError(frame),
      grid("Projections", proj, "proj"),
      grid("Input patches", patch, "patch"),
    );
  };
}
