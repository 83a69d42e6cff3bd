// Downloads: a panel's shown steps as an animation (made by the server), any panel as one
// PNG of what is on screen.
import { h } from "./dom.js";
import { reason } from "./fetch.js";

// A file name from a run and tag: letters of any script kept, the rest "_" (as the server
// names its downloads).
export const fileName = (run, tag) => `${run}-${tag}`.replace(/[^\p{L}\p{N}_.-]+/gu, "_");

function save(href, name) {
  const a = h("a", { href, download: name });
  document.body.append(a);
  a.click();
  a.remove();
}

// The shown steps of a panel as an animated image, assembled by the server with Pillow.
export async function downloadAnimation(run, tag, format, steps, patches) {
  const params = { run, tag, format, steps: steps.join(","), patches: patches ? 1 : 0 };
  const r = await fetch(`animation?${new URLSearchParams(params)}`);
  if (!r.ok) throw new Error(`${format.toUpperCase()} not made: ${await reason(r)}`);
  const url = URL.createObjectURL(await r.blob());
  save(url, fileName(run, tag) + (format === "gif" ? ".gif" : ".png"));
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// Any panel as one PNG: its images drawn where they are on screen.
export async function downloadPNG(section, name) {
  const box = section.getBoundingClientRect();
  const canvas = document.createElement("canvas");
  canvas.width = Math.ceil(box.width);
  canvas.height = Math.ceil(box.height);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = false; // tiles are enlarged nearest-neighbour, keep them sharp
  for (const img of section.querySelectorAll("img")) {
    if (!img.complete) await new Promise((r) => img.addEventListener("load", r, { once: true }));
    const r = img.getBoundingClientRect();
    // A crop (a patch cut from a probe image) shows only the part inside its frame.
    const c = (img.closest(".crop") ? img.parentElement : img).getBoundingClientRect();
    ctx.save();
    ctx.beginPath();
    ctx.rect(c.left - box.left, c.top - box.top, c.width, c.height);
    ctx.clip();
    ctx.drawImage(img, r.left - box.left, r.top - box.top, r.width, r.height);
    ctx.restore();
  }
  save(canvas.toDataURL("image/png"), `${name}.png`);
}
