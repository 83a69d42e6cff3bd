// DOM and text helpers shared by the shell and the views. Every field of a panel or a
// tile comes from an event file and may be a number, an object or null where a string is
// expected: it is shown as text, never trusted to have a string's methods.

// An element with attributes (on* are listeners) and children (nodes, or anything else
// shown as text).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else if (v !== false && v != null) el.setAttribute(k, v);
  }
  el.append(
    ...children
      .flat()
      .filter((c) => c != null)
      .map((c) => (c instanceof Node ? c : str(c))),
  );
  return el;
}

// Any value as text: "" for null, JSON for objects.
export const str = (v) => (v == null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));

// A number to 4 significant digits, anything else as text, "–" for nothing.
export const fmt = (v) => (typeof v === "number" ? String(Number(v.toPrecision(4))) : v == null ? "–" : str(v));
