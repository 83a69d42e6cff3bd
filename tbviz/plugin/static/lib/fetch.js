// The plugin's JSON routes (tbviz_plugin.py): cached, paged, and failing with the
// server's own reason, which names the panel and what is wrong.
import { state } from "./state.js";

export const MAX_FRAMES = 50; // the server's per-request cap on /frames

// Why a response failed, in the server's words: its text (TensorBoard answers errors as
// plain text; anything else, e.g. an HTML error page, is cut to its words) and status.
export async function reason(r) {
  if (r.ok) return "the image could not be decoded";
  const text = (await r.text().catch(() => ""))
    .replace(/<[^>]*>/g, " ")
    .replace(/\s+/g, " ")
    .trim();
  return `${text.length > 400 ? text.slice(0, 400) + "…" : text || r.statusText} (HTTP ${r.status})`;
}

export function getJSON(route, params = {}) {
  const url = `${route}?${new URLSearchParams(params)}`;
  if (!state.cache.has(url)) {
    const p = fetch(url).then(async (r) => {
      if (!r.ok) throw new Error(await reason(r));
      return r.json();
    });
    p.catch(() => state.cache.delete(url)); // let a retry ask again
    state.cache.set(url, p);
  }
  return state.cache.get(url);
}

export async function getAll(route, params = {}) {
  const items = [];
  for (let offset = 0; offset != null;) {
    const page = await getJSON(route, { ...params, offset });
    items.push(...page.items);
    offset = page.next_offset;
  }
  return items;
}

export async function frames(run, tag, steps) {
  const out = [];
  for (let i = 0; i < steps.length; i += MAX_FRAMES) {
    const page = await getJSON("frames", {
      run,
      tag,
      steps: steps.slice(i, i + MAX_FRAMES).join(","),
    });
    out.push(...page.frames);
  }
  return out;
}
