// Errors shown where they happen: inside the panel that failed, under its title (so its
// tag stays named), never in place of the page or of the other panels.
import { h } from "./dom.js";

export const errorBox = (err) =>
  h("p", { class: "error", role: "alert" }, String(err?.message ?? err));

// A promise's catch: `where` (a panel's body) shows the error instead of its content.
export const showError = (where) => (err) => where.replaceChildren(errorBox(err));

// A step the server could not read says so (the other steps are drawn beside it).
export const frameError = (f) => (f.error ? h("p", { class: "error" }, `step ${f.step}: ${f.error}`) : null);
