// The tbviz tab of TensorBoard. A plain ES module, no build step: TensorBoard loads it in
// an iframe whose <base> is /data/plugin/tbviz/, so every URL below is relative to the
// plugin's routes (see tbviz_plugin.py). Only what is on screen is fetched: one frame per
// chosen step, images lazily.

// The views, one row per panel kind (tbviz/summary/metadata.py names the kinds). Adding a
// kind is its constant there and its row here:
//   kind     the panel kind the view draws
//   label    its tab
//   layered  true: one panel per layer, the one picked in the layer list; false: all at once
//   steps    stepSlider (one logged step at a time) or stepChips (chosen steps side by side)
//   draw     (run, panel) => a function of the frame (stepSlider) or frames (stepChips)
//            returning the element that shows them
//   whole    instead of steps and draw: (column, run entry) => draws all the run's panels of
//            the kind at once (one picture across layers)
//   marks    optional, (panel, logged steps) => the steps the view marks, shown by default
// A stepChips view (steps side by side) also downloads the shown steps as an animation.
const VIEWS = [
  { kind: "topk", label: "Top-k", layered: true, steps: stepSlider, draw: topkView },
  {
    kind: "evolution",
    label: "Evolution",
    layered: true,
    steps: stepChips,
    draw: evolutionView,
    marks: settledStep,
  },
  { kind: "featuremaps", label: "Feature maps", layered: true, steps: stepSlider, draw: featuremapsView },
  { kind: "perimage", label: "Through the layers", layered: false, whole: throughLayers },
  { kind: "stylized", label: "Stylized probes", layered: false, steps: stepChips, draw: stylizedView },
  { kind: "attribution", label: "Attribution", layered: false, steps: stepSlider, draw: attributionView },
  { kind: "probes", label: "Probe images", layered: false, steps: stepChips, draw: stylizedView },
];
const viewOf = (kind) => VIEWS.find((v) => v.kind === kind);
const MAX_FRAMES = 50; // the server's per-request cap on /frames

const state = {
  runs: [], // [{run, panels: [{tag, kind, layer, layer_index, ...}], skipped}]
  selected: new Set(), // runs shown side by side
  view: "topk",
  layer: null, // the chosen layer's key, see layerKey
  showPatches: false,
  tileSize: null, // px, once the user moved the slider
  chosen: new Map(), // "run\0tag" -> Set of steps picked (evolution, stylized); default spread
  focusMap: null, // the feature map whose evolution was opened from the Feature maps view
  current: new Map(), // "run\0tag" -> the one step picked (top-k, attribution); default last
  cache: new Map(), // request URL -> Promise of its JSON
};
let ui; // the page's fixed elements, made once by render()

// -- tiny DOM and HTTP helpers ------------------------------------------------------------
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else if (v !== false && v != null) el.setAttribute(k, v);
  }
  el.append(...children.flat().filter((c) => c != null));
  return el;
}

function getJSON(route, params = {}) {
  const url = `${route}?${new URLSearchParams(params)}`;
  if (!state.cache.has(url)) {
    const p = fetch(url).then(async (r) => {
      if (!r.ok) throw new Error(`${route}: ${r.status} ${await r.text()}`);
      return r.json();
    });
    p.catch(() => state.cache.delete(url)); // let a retry ask again
    state.cache.set(url, p);
  }
  return state.cache.get(url);
}

async function getAll(route, params = {}) {
  const items = [];
  for (let offset = 0; offset != null;) {
    const page = await getJSON(route, { ...params, offset });
    items.push(...page.items);
    offset = page.next_offset;
  }
  return items;
}

async function frames(run, tag, steps) {
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

const blobURL = (run, tag, frame, index) =>
  `blob?${new URLSearchParams({ run, tag, step: frame.step, index, v: frame.wall_time })}`;
const key = (run, tag) => `${run}\0${tag}`;
const fmt = (v) => (typeof v === "number" ? String(Number(v.toPrecision(4))) : String(v ?? "–"));
const position = (t) => (t.row != null ? `(${t.row}, ${t.col})` : null);

// Default columns of an evolution grid: the 1st, 2nd, 5th, 10th, 20th, 50th, ... logged
// step (epochs 1, 2, 5, 10, ... when logged once an epoch, like Zeiler & Fergus' figure of
// features evolving through training) and always the last.
function spread(steps) {
  const picks = new Set([steps.length - 1]);
  for (let m = 1; m <= steps.length; m *= 10)
    for (const f of [1, 2, 5]) if (f * m <= steps.length) picks.add(f * m - 1);
  return new Set([...picks].map((i) => steps[i]));
}

// Positions of a frame's projections and of their patches, in the same order.
function byRole(frame) {
  const proj = [];
  const patch = [];
  frame.tiles.forEach((t, i) => (t.role === "patch" ? patch : proj).push(i));
  return [proj, patch];
}

// -- one tile: the image and what it shows -------------------------------------------------
// Tile k's image: its own blob (the tiles without a crop are blobs 1..n, in order) or, for a
// tile with a crop, the part of the image it is cut from: blob source + 1 of the tile's or
// else the panel's sources at the tile's source_step, or else the same step (see
// tbviz/summary/metadata.py).
function tileImage(run, panel, frame, k) {
  const t = frame.tiles[k];
  const img = h("img", {
    loading: "lazy",
    decoding: "async",
    alt: `${t.role ?? t.label ?? t.method ?? "tile"} ${k + 1} at step ${frame.step}`,
    onload: (e) =>
      e.target.classList.toggle("pixelated", e.target.naturalWidth < e.target.clientWidth),
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

function tile(run, panel, frame, k, lines, cls = "") {
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

// -- the views: each renders one run's column ----------------------------------------------
// One step at a time (top-k, attribution). Unless a step was picked, the last one is shown,
// so Reload follows a run that is still training.
async function stepSlider(col, run, tag, draw) {
  const steps = (await getAll("steps", { run, tag })).map((s) => s.step);
  if (!steps.length) return col.append(h("p", { class: "note" }, "no steps logged yet"));
  const k = key(run, tag);
  const current = () =>
    steps.includes(state.current.get(k)) ? state.current.get(k) : steps.at(-1);
  const label = h("output", {});
  const body = h("div", {});
  const show = async () => {
    const step = current();
    label.textContent = `step ${step} (${steps.indexOf(step) + 1} of ${steps.length})`;
    const [frame] = await frames(run, tag, [step]);
    if (current() === step) body.replaceChildren(draw(frame)); // newest wins
  };
  const slider = h("input", {
    type: "range",
    min: 0,
    max: steps.length - 1,
    value: steps.indexOf(current()),
    "aria-label": `step of ${tag} in ${run}`,
    oninput: (e) => {
      const i = +e.target.value;
      i === steps.length - 1 ? state.current.delete(k) : state.current.set(k, steps[i]);
      show().catch(fail(body));
    },
  });
  col.append(h("div", { class: "steps" }, slider, label), body);
  await show();
}

// Several steps side by side (evolution, stylized). Unless steps were picked, the spread
// of the logged steps and the marked ones are shown, again following new steps on Reload.
// GIF and APNG download the shown steps as an animation (the server's /animation).
async function stepChips(col, run, tag, draw, marked = () => []) {
  const steps = (await getAll("steps", { run, tag })).map((s) => s.step);
  if (!steps.length) return col.append(h("p", { class: "note" }, "no steps logged yet"));
  const k = key(run, tag);
  const chosen = () => state.chosen.get(k) ?? new Set([...spread(steps), ...marked(steps)]);
  const body = h("div", { class: "scroll" });
  let latest = 0;
  const show = async () => {
    chips.forEach((c, i) => c.setAttribute("aria-pressed", String(chosen().has(steps[i]))));
    const pick = steps.filter((s) => chosen().has(s));
    const mine = ++latest;
    const content = pick.length
      ? draw(await frames(run, tag, pick))
      : h("p", { class: "note" }, "choose steps above");
    if (mine === latest) body.replaceChildren(content); // newest wins
  };
  const choose = (set) => {
    set ? state.chosen.set(k, set) : state.chosen.delete(k);
    show().catch(fail(body));
  };
  const chips = steps.map((s) =>
    h(
      "button",
      {
        class: "chip",
        onclick: () => {
          const set = new Set(chosen());
          set.has(s) ? set.delete(s) : set.add(s);
          choose(set);
        },
      },
      String(s),
    ),
  );
  col.append(
    h(
      "div",
      { class: "chips", role: "group", "aria-label": `steps of ${tag} shown` },
      h("span", { class: "note" }, "steps:"),
      chips,
      h("button", { class: "preset", onclick: () => choose(null) }, "spread"),
      h("button", { class: "preset", onclick: () => choose(new Set(steps)) }, "all"),
      ["GIF", "APNG"].map((fmt) =>
        h(
          "button",
          {
            class: "preset download",
            title: `the shown steps as an animated ${fmt}, one frame per step`,
            onclick: () =>
              downloadAnimation(run, tag, fmt.toLowerCase(), steps.filter((s) => chosen().has(s)))
                .catch(fail(body)),
          },
          fmt,
        ),
      ),
    ),
    body,
  );
  await show();
}

// The layer's latest settling (ConvergenceCallback, listed with the panel by the server)
// as the first logged step at or after it: the step column the evolution marks.
function settledStep(panel, steps) {
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

// The shown steps of a panel as an animated image, assembled by the server with Pillow.
async function downloadAnimation(run, tag, format, steps) {
  const params = { run, tag, format, steps: steps.join(","), patches: state.showPatches ? 1 : 0 };
  const r = await fetch(`animation?${new URLSearchParams(params)}`);
  if (!r.ok) throw new Error(`animation: ${r.status} ${await r.text()}`);
  const name = `${run}-${tag}`.replace(/[^\w.-]+/g, "_") + (format === "gif" ? ".gif" : ".png");
  const url = URL.createObjectURL(await r.blob());
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function topkView(run, panel) {
  return (frame) => {
    const [proj, patch] = byRole(frame);
    const caption = (t) => [
      `${fmt(t.value)}${t.channel != null ? ` · map ${t.channel}` : ""}`,
      [t.image_index != null ? `img ${t.image_index}` : null, position(t)]
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

// Zeiler & Fergus' Fig. 2: per feature map (a group of the frame) its top-k projections
// over the scanned data beside their input patches. A map's title opens its evolution.
function featuremapsView(run, panel) {
  return (frame) => {
    const [proj, patch] = byRole(frame);
    const caption = (t) => [fmt(t.value), t.image_index != null ? `img ${t.image_index}` : null];
    const grid = (idx, cls) =>
      h(
        "div",
        { class: "grid", style: `--cols:${Math.ceil(Math.sqrt(idx.length || 1))}` },
        idx.map((i) => tile(run, panel, frame, i, caption(frame.tiles[i]), cls)),
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
                pickView("evolution");
              },
            },
            `map ${g.channel}`,
          ),
        ),
        h(
          "div",
          { class: "zf" },
          h("div", { class: "zf-half" }, grid(g.units.map((u) => proj[u]), "proj")),
          h("div", { class: "zf-half" }, grid(g.units.map((u) => patch[u]), "patch")),
        ),
      ),
    );
    return h("div", { class: "fmaps" }, frameError(frame), blocks);
  };
}

function evolutionView(run, panel) {
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
            h("th", { scope: "row" }, `map ${id}`),
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
    return h("div", {}, settledNote(panel), table);
  };
}

function stylizedView(run, panel) {
  return (frs) => {
    const labels = [
      ...new Set(frs.flatMap((f) => f.tiles.map((t, i) => t.label ?? `photo ${t.index ?? i}`))),
    ];
    return h(
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
              const i = f.tiles.findIndex((t, j) => (t.label ?? `photo ${t.index ?? j}`) === label);
              return h("td", {}, i < 0 ? "–" : tile(run, panel, f, i, [], "photo"));
            }),
          ),
        ),
      ),
    );
  };
}

function attributionView(run, panel) {
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
            [`image ${t.image_index ?? i}`, t.target != null ? `target ${t.target}` : null],
            "photo",
          ),
        ),
      ),
    );
}

const frameError = (f) => (f.error ? h("p", { class: "error" }, f.error) : null);
const fail = (where) => (err) =>
  where.replaceChildren(h("p", { class: "error" }, String(err.message ?? err)));

// Liu et al.'s Fig. 2: each probe photo (rows) followed through the logged layers (columns,
// in network order), ending with its stylized output where the run has one; last steps.
async function throughLayers(col, entry) {
  const order = (a, b) =>
    (a.model ?? "").localeCompare(b.model ?? "") || (a.layer_index ?? 0) - (b.layer_index ?? 0);
  const panels = entry.panels.filter((p) => p.kind === "perimage").sort(order);
  const stylized = entry.panels.find((p) => p.kind === "stylized");
  const columns = stylized ? [...panels, stylized] : panels;
  const last = async (p) => {
    const steps = (await getAll("steps", { run: entry.run, tag: p.tag })).map((s) => s.step);
    return steps.length ? (await frames(entry.run, p.tag, [steps.at(-1)]))[0] : null;
  };
  const frs = await Promise.all(columns.map(last));
  const rows = Math.max(0, ...frs.slice(0, panels.length).map((f) => f?.tiles.length ?? 0));
  const cell = (p, f, i) => {
    const t = f?.tiles[i];
    if (!t) return h("td", { class: "note" }, "–");
    const lines = p.kind === "stylized" ? [`step ${f.step}`] : [fmt(t.value), `map ${t.channel}`];
    return h("td", {}, tile(entry.run, p, f, i, lines));
  };
  col.append(
    h(
      "table",
      { class: "evo layers-through" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", {}, ""),
          columns.map((p) =>
            h("th", { scope: "col" }, p.kind === "stylized" ? "stylized" : p.layer),
          ),
        ),
      ),
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

// Any panel as one PNG: its images drawn where they are on screen.
async function downloadPNG(section, name) {
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
  const a = h("a", { href: canvas.toDataURL("image/png"), download: `${name}.png` });
  document.body.append(a);
  a.click();
  a.remove();
}

async function drawRun(col, entry) {
  const view = viewOf(state.view);
  if (view.whole) return view.whole(col, entry);
  const ofView = entry.panels.filter((p) => p.kind === view.kind);
  let panels = ofView.filter((p) => !view.layered || layerKey(p) === state.layer);
  if (view.layered && !panels.length) {
    // Another run's network may carry another name (Keras numbers unnamed models per
    // process): compare by layer path when this run has no panel under the same network.
    const path = state.layer?.split("\0")[1];
    panels = ofView.filter((p) => p.layer === path);
  }
  if (!panels.length) {
    const layer = state.layer?.split("\0").filter(Boolean).join(" / ");
    col.append(
      h(
        "p",
        { class: "note" },
        view.layered ? `no ${view.label} panel for layer ${layer}` : `no ${view.label} panels`,
      ),
    );
    return;
  }
  for (const p of panels) {
    const name = `${entry.run}-${p.tag}`.replace(/[^\w.-]+/g, "_");
    const sub = h(
      "section",
      { class: "panel" },
      h(
        "h3",
        {},
        p.tag.replace(/^tbviz\//, ""),
        p.rule ? h("small", {}, ` · ${p.rule}`) : null,
        h(
          "button",
          { class: "preset download", onclick: (e) => downloadPNG(e.target.closest("section"), name) },
          "PNG",
        ),
      ),
    );
    if (p.description) sub.append(h("p", { class: "note" }, p.description));
    col.append(sub);
    const marked = view.marks ? (steps) => view.marks(p, steps) : undefined;
    await view.steps(sub, entry.run, p.tag, view.draw(entry.run, p), marked).catch(fail(sub));
  }
}

// -- page: runs, views, layers, columns ----------------------------------------------------
// A layer is keyed by network and path: one run may hold the layers of two networks (the
// style pipeline logs its transform-net and VGG19), each listed in its own order.
const layerKey = (p) => `${p.model ?? ""}\0${p.layer}`;

function layers() {
  const index = new Map();
  for (const e of state.runs)
    if (state.selected.has(e.run))
      for (const p of e.panels)
        if (p.layer != null && viewOf(p.kind)?.layered) {
          const k = layerKey(p);
          const i = Math.min(index.get(k)?.i ?? Infinity, p.layer_index ?? Infinity);
          index.set(k, { key: k, model: p.model ?? "", name: p.layer, i });
        }
  return [...index.values()].sort(
    (a, b) => a.model.localeCompare(b.model) || a.i - b.i || a.name.localeCompare(b.name),
  );
}

function drawLayers() {
  const view = viewOf(state.view);
  const all = view.layered ? layers() : [];
  if (!all.some((l) => l.key === state.layer)) state.layer = all[0]?.key ?? null;
  const items = all.flatMap((l, n) => [
    l.model && l.model !== all[n - 1]?.model
      ? h("li", { role: "presentation", class: "model" }, l.model)
      : null,
    h(
      "li",
      {
        role: "option",
        "data-key": l.key,
        "aria-selected": String(l.key === state.layer),
        tabindex: l.key === state.layer ? 0 : -1,
        onclick: () => pickLayer(l.key, true),
      },
      l.name,
    ),
  ]);
  ui.layers.hidden = !view.layered;
  ui.layers.replaceChildren(
    h("h4", { id: "layers-label" }, "Layers"),
    h("ul", { role: "listbox", "aria-labelledby": "layers-label", onkeydown: layerKeys }, items),
  );
}

function pickLayer(key, focus) {
  state.layer = key;
  state.focusMap = null; // a map number names a map of one layer only
  for (const li of ui.layers.querySelectorAll("[role=option]")) {
    const on = li.dataset.key === key;
    li.setAttribute("aria-selected", String(on));
    li.tabIndex = on ? 0 : -1;
    if (on && focus) li.focus();
  }
  drawMain();
}

function layerKeys(e) {
  const keys = layers().map((l) => l.key);
  const i = keys.indexOf(state.layer);
  const j = { ArrowDown: i + 1, ArrowUp: i - 1, Home: 0, End: keys.length - 1 }[e.key];
  if (j == null) return;
  e.preventDefault();
  if (j >= 0 && j < keys.length && j !== i) pickLayer(keys[j], true);
}

function drawMain() {
  const view = viewOf(state.view);
  const selected = state.runs.filter((e) => state.selected.has(e.run));
  // Runs without this view's panels get a line, not an empty column.
  const shown = selected.filter((e) => e.panels.some((p) => p.kind === view.kind));
  const others = selected.filter((e) => !shown.includes(e)).map((e) => e.run);
  ui.main.style.setProperty("--runs", Math.max(shown.length, 1));
  // Two top-k grids side by side must fit a column: smaller tiles as runs are added,
  // until the user picks a size.
  if (!state.tileSize) setTile({ 1: 96, 2: 80 }[shown.length] ?? 64);
  ui.main.replaceChildren(
    ...shown.map((e) => {
      const col = h("section", { class: "run", "aria-label": `run ${e.run}` }, h("h2", {}, e.run));
      drawRun(col, e).catch(fail(col));
      return col;
    }),
  );
  if (!selected.length) ui.main.append(h("p", { class: "note" }, "Choose a run above."));
  if (others.length)
    ui.main.append(
      h("p", { class: "note wide" }, `No ${view.label} panels in ${others.join(", ")}.`),
    );
  // Panels the server could not read (e.g. written by a newer tbviz) or that no view draws
  // are said, never drawn as something else.
  const undrawn = selected.flatMap((e) => [
    ...(e.problems ?? []).map((p) => `${e.run}: ${p.tag} not shown: ${p.error}`),
    ...e.panels
      .filter((p) => !viewOf(p.kind))
      .map((p) => `${e.run}: ${p.tag} not shown: no view of kind ${p.kind} in this dashboard`),
  ]);
  if (undrawn.length)
    ui.main.append(h("ul", { class: "error wide problems" }, undrawn.map((m) => h("li", {}, m))));
}

function drawToolbar() {
  const kinds = new Set(state.runs.flatMap((e) => e.panels.map((p) => p.kind)));
  const views = VIEWS.filter((v) => kinds.has(v.kind));
  if (!views.some((v) => v.kind === state.view) && views.length) state.view = views[0].kind;
  const tabs = views.map((v) =>
    h(
      "button",
      {
        role: "tab",
        "aria-selected": String(v.kind === state.view),
        tabindex: v.kind === state.view ? 0 : -1,
        onclick: () => pickView(v.kind),
      },
      v.label,
    ),
  );
  const tablist = h(
    "div",
    {
      role: "tablist",
      "aria-label": "view",
      onkeydown: (e) => {
        const i = views.findIndex((v) => v.kind === state.view);
        const j = { ArrowRight: i + 1, ArrowLeft: i - 1 }[e.key];
        if (j == null || j < 0 || j >= views.length) return;
        pickView(views[j].kind);
        tabs[j].focus();
      },
    },
    tabs,
  );
  const runs = h(
    "fieldset",
    { class: "runs" },
    h("legend", {}, "Runs"),
    state.runs.map((e) =>
      h(
        "label",
        {},
        h("input", {
          type: "checkbox",
          checked: state.selected.has(e.run),
          onchange: (ev) => {
            ev.target.checked ? state.selected.add(e.run) : state.selected.delete(e.run);
            drawLayers();
            drawMain();
          },
        }),
        e.run,
      ),
    ),
  );
  const options = h(
    "div",
    { class: "options" },
    h(
      "label",
      {},
      h("input", {
        type: "checkbox",
        checked: state.showPatches,
        onchange: (e) => {
          state.showPatches = e.target.checked;
          drawMain();
        },
      }),
      "patches in evolution",
    ),
    h(
      "label",
      {},
      "tile size ",
      (ui.tile = h("input", {
        type: "range",
        min: 48,
        max: 256,
        value: 96,
        step: 8,
        oninput: (e) => setTile((state.tileSize = +e.target.value)),
      })),
    ),
    h("button", { onclick: reload }, "Reload"),
  );
  ui.toolbar.replaceChildren(runs, tablist, options);
}

function setTile(px) {
  document.body.style.setProperty("--tile", `${px}px`);
  if (ui.tile) ui.tile.value = px;
}

function pickView(kind) {
  state.view = kind;
  for (const tab of ui.toolbar.querySelectorAll("[role=tab]")) {
    const on = tab.textContent === viewOf(kind).label;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
  }
  drawLayers();
  drawMain();
}

async function reload() {
  state.cache.clear();
  try {
    state.runs = await getAll("panels");
  } catch (err) {
    return fail(ui.main)(err);
  }
  const names = state.runs.map((e) => e.run);
  state.selected = new Set([...state.selected].filter((r) => names.includes(r)));
  if (!state.selected.size && names.length) state.selected.add(names[0]);
  if (!names.length) {
    ui.main.replaceChildren(
      h(
        "p",
        { class: "note" },
        "No tbviz panels yet. Add a tbviz callback to model.fit and point " +
          "tensorboard --logdir at its log_dir.",
      ),
    );
    return;
  }
  drawToolbar();
  drawLayers();
  drawMain();
}

export async function render() {
  document.head.append(h("link", { rel: "stylesheet", href: "style.css" }));
  ui = {
    toolbar: h("header", { class: "toolbar" }),
    layers: h("nav", { class: "layers", "aria-label": "layers in network order" }),
    main: h("main", { class: "columns" }),
  };
  document.body.append(ui.toolbar, h("div", { class: "body" }, ui.layers, ui.main));
  await reload();
}
