// The tbviz tab of TensorBoard: the shell that holds the views. Plain ES modules, no build
// step: TensorBoard loads this one in an iframe whose <base> is /data/plugin/tbviz/, so
// every URL is relative to the plugin's routes (see tbviz_plugin.py, which serves every
// file of static/). Only what is on screen is fetched: one frame per chosen step, images
// lazily. Each view is a module of views/; what they share is in lib/.
import { h, str } from "./lib/dom.js";
import { downloadPNG, fileName } from "./lib/download.js";
import { errorBox, showError } from "./lib/errors.js";
import { getAll } from "./lib/fetch.js";
import { state } from "./lib/state.js";
import { stepChips, stepSlider } from "./lib/steps.js";
import { attributionView } from "./views/attribution.js";
import { evolutionView, settledStep } from "./views/evolution.js";
import { featuremapsView } from "./views/featuremaps.js";
import { stylizedView } from "./views/stylized.js";
import { throughLayers } from "./views/through_layers.js";
import { topkView } from "./views/topk.js";

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
let ui; // the page's fixed elements, made once by render()

// One run's column of the current view: a section per panel, its title (the tag) kept
// whatever happens below it; a panel that fails shows its error in its own body.
async function drawRun(col, entry) {
  const view = viewOf(state.view);
  if (view.whole) return view.whole(col, entry);
  const ofView = entry.panels.filter((p) => p.kind === view.kind);
  let panels = ofView.filter((p) => !view.layered || layerKey(p) === state.layer);
  if (view.layered && !panels.length) {
    // Another run's network may carry another name (Keras numbers unnamed models per
    // process): compare by layer path when this run has no panel under the same network.
    const path = state.layer?.split("\0")[1];
    panels = ofView.filter((p) => str(p.layer) === path);
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
    const body = h("div", { class: "panel-body" });
    const sub = h(
      "section",
      { class: "panel" },
      h(
        "h3",
        {},
        p.tag.replace(/^tbviz\//, ""),
        p.rule ? h("small", {}, ` · ${str(p.rule)}`) : null,
        h(
          "button",
          {
            class: "preset download",
            onclick: (e) => downloadPNG(e.target.closest("section"), fileName(entry.run, p.tag)),
          },
          "PNG",
        ),
      ),
    );
    if (p.description) sub.append(h("p", { class: "note" }, p.description));
    sub.append(body);
    col.append(sub);
    const marked = view.marks ? (steps) => view.marks(p, steps) : undefined;
    try {
      await view.steps(body, entry.run, p.tag, view.draw(entry.run, p), marked);
    } catch (err) {
      showError(body)(err);
    }
  }
}

// -- page: runs, views, layers, columns ----------------------------------------------------
// A layer is keyed by network and path: one run may hold the layers of two networks (the
// style pipeline logs its transform-net and VGG19), each listed in its own order.
const layerKey = (p) => `${str(p.model)}\0${str(p.layer)}`;

function layers() {
  const index = new Map();
  for (const e of state.runs)
    if (state.selected.has(e.run))
      for (const p of e.panels)
        if (p.layer != null && viewOf(p.kind)?.layered) {
          const k = layerKey(p);
          const at = Number.isFinite(p.layer_index) ? p.layer_index : Infinity;
          const i = Math.min(index.get(k)?.i ?? Infinity, at);
          index.set(k, { key: k, model: str(p.model), name: str(p.layer), i });
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
      drawRun(col, e).catch((err) => col.append(errorBox(err)));
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
    return showError(ui.main)(err);
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
  // A view asks for another (lib/state.js openView): a feature map's title opens its evolution.
  document.addEventListener("tbviz:view", (e) => pickView(e.detail));
  await reload();
}
