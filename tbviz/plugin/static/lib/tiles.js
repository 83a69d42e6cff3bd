// One tile: its image (its own blob, or a crop of the image it is cut from) and captions.
import { h, str } from "./dom.js";
import { reason } from "./fetch.js";

export const blobURL = (run, tag, frame, index) =>
  `blob?${new URLSearchParams({ run, tag, step: frame.step, index, v: frame.wall_time })}`;
export const position = (t) => (t.row != null ? `(${str(t.row)}, ${str(t.col)})` : null);

// Positions of a frame's projections and of their patches, in the same order.
export function byRole(frame) {
  const proj = [];
  const patch = [];
  frame.tiles.forEach((t, i) => (t.role === "patch" ? patch : proj).push(i));
  return [proj, patch];
}

// An image the server would not serve (e.g. a truncated blob) is replaced by its reason.
async function broken(e) {
  const img = e.target;
  const why = await fetch(img.src).then(reason, () => "could not be loaded");
  (img.closest(".crop") ?? img).replaceWith(h("span", { class: "error tile-error" }, why));
}

// Tile k's image: its own blob (the tiles without a crop are blobs 1..n, in order) or, for a
// tile with a crop, the part of the image it is cut from: blob source + 1 of the tile's or
// else the panel's sources at the tile's source_step, or else the same step (see
// tbviz/summary/metadata.py).
export function tileImage(run, panel, frame, k) {
  const t = frame.tiles[k];
  const img = h("img", {
    loading: "lazy",
    decoding: "async",
    alt: `${str(t.role ?? t.label ?? t.method ?? "tile")} ${k + 1} at step ${frame.step}`,
    onload: (e) =>
      e.target.classList.toggle("pixelated", e.target.naturalWidth < e.target.clientWidth),
    onerror: broken,
  });
  if (!t.crop) {
    const index = frame.tiles.slice(0, k + 1).filter((x) => !x.crop).length;
    img.src = blobURL(run, panel.tag, frame, index);
    return img;
  }
  const [top, bottom, left, right] = t.crop;
  const [, width] = t.source_size ?? panel.source_size;
  const w = right - left;
  const hgt = bottom - top;
  const from = t.source_step != null ? { step: t.source_step, wall_time: 0 } : frame;
  img.src = blobURL(run, t.sources ?? panel.sources, from, t.source + 1);
  img.style.width = `${(100 * width) / w}%`;
  img.style.left = `${(-100 * left) / w}%`;
  img.style.top = `${(-100 * top) / hgt}%`;
  const fit = w >= hgt ? "width: 100%" : "height: 100%";
  const crop = h("span", { style: `aspect-ratio: ${w} / ${hgt}; ${fit}` }, img);
  return h("span", { class: "crop" }, crop);
}

export function tile(run, panel, frame, k, lines, cls = "") {
  return h(
    "figure",
    { class: `tile ${cls}`, title: JSON.stringify(frame.tiles[k]) },
    tileImage(run, panel, frame, k),
    h(
      "figcaption",
      {},
      lines.filter(Boolean).map((l) => h("span", {}, l)),
    ),
  );
}
