// What the user chose, shared by the shell and the views; and the one way a view asks the
// shell for another view (a feature map's title opens its evolution) without importing it.

export const state = {
  runs: [], // [{run, panels: [{tag, kind, layer, layer_index, ...}], skipped, problems}]
  selected: new Set(), // runs shown side by side
  view: "topk",
  layer: null, // the chosen layer's key, see layerKey in index.js
  showPatches: false,
  tileSize: null, // px, once the user moved the slider
  chosen: new Map(), // "run\0tag" -> Set of steps picked (evolution, stylized); default spread
  focusMap: null, // the feature map whose evolution was opened from the Feature maps view
  current: new Map(), // "run\0tag" -> the one step picked (top-k, attribution); default last
  cache: new Map(), // request URL -> Promise of its JSON
};

export const key = (run, tag) => `${run}\0${tag}`;

// The shell listens for this event (see index.js) and switches to view `kind`.
export const openView = (kind) =>
  document.dispatchEvent(new CustomEvent("tbviz:view", { detail: kind }));
