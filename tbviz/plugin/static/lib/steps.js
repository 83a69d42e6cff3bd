// How a view walks through a panel's logged steps: one at a time (stepSlider) or several
// side by side (stepChips). Both draw into `col`, the panel's body; a step that fails
// shows its error in place of the drawing, and the controls stay to pick another.
import { h } from "./dom.js";
import { downloadAnimation } from "./download.js";
import { errorBox, showError } from "./errors.js";
import { frames, getAll } from "./fetch.js";
import { key, state } from "./state.js";

// Default columns of an evolution grid: the 1st, 2nd, 5th, 10th, 20th, 50th, ... logged
// step (epochs 1, 2, 5, 10, ... when logged once an epoch, like Zeiler & Fergus' figure of
// features evolving through training) and always the last.
export function spread(steps) {
  const picks = new Set([steps.length - 1]);
  for (let m = 1; m <= steps.length; m *= 10)
    for (const f of [1, 2, 5]) if (f * m <= steps.length) picks.add(f * m - 1);
  return new Set([...picks].map((i) => steps[i]));
}

// One step at a time (top-k, attribution). Unless a step was picked, the last one is shown,
// so Reload follows a run that is still training.
export async function stepSlider(col, run, tag, draw) {
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
      show().catch(showError(body));
    },
  });
  col.append(h("div", { class: "steps" }, slider, label), body);
  await show().catch(showError(body));
}

// Several steps side by side (evolution, stylized). Unless steps were picked, the spread
// of the logged steps and the marked ones are shown, again following new steps on Reload.
// GIF and APNG download the shown steps as an animation (the server's /animation); a
// download that fails says why above the drawing, which stays.
export async function stepChips(col, run, tag, draw, marked = () => []) {
  const steps = (await getAll("steps", { run, tag })).map((s) => s.step);
  if (!steps.length) return col.append(h("p", { class: "note" }, "no steps logged yet"));
  const k = key(run, tag);
  const chosen = () => state.chosen.get(k) ?? new Set([...spread(steps), ...marked(steps)]);
  const body = h("div", { class: "scroll" });
  const said = h("div", {});
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
    show().catch(showError(body));
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
  const download = (format) => {
    said.replaceChildren();
    const shown = steps.filter((s) => chosen().has(s));
    downloadAnimation(run, tag, format, shown, state.showPatches).catch((err) =>
      said.replaceChildren(errorBox(err)),
    );
  };
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
            onclick: () => download(fmt.toLowerCase()),
          },
          fmt,
        ),
      ),
    ),
    said,
    body,
  );
  await show().catch(showError(body));
}
