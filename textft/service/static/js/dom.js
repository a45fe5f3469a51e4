// The element builder and the few page-wide helpers around it. Every string that comes from the
// server or from a file goes into the page as text or an attribute value, never as HTML.

const SVG_TAGS = ["svg", "path", "line", "text", "rect", "circle", "g", "polyline", "title"];

export const $ = (sel, root = document) => root.querySelector(sel);

// el("a", { href, text: "label", onclick }, ...children): attributes null, undefined or false are
// left out; `text` becomes the node's text; `on*` become listeners; SVG tags get the SVG namespace.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElementNS(
    SVG_TAGS.includes(tag) && attrs.svg !== false ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false || k === "svg") continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

// Replaces the page's main area with a copy of one of index.html's templates, in an element of its
// own: a view still loading when the user moves on finds its own elements, now out of the page, and
// never draws into the next view.
export function mount(templateId) {
  const view = el("div", { class: "view" }, $(templateId).content.cloneNode(true));
  $("#main").replaceChildren(view);
  return view;
}

let toastTimer = null;

export function toast(message, kind = "info") {
  const t = $("#toast");
  t.textContent = message;
  t.className = `toast show ${kind}`;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.className = "toast"; }, 5000);
}

// Hands a blob to the browser as a download named `filename`.
export function download(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// A bar in a track, `fraction` of its width filled (a style property, set outside any attribute string).
export function bar(fraction) {
  const fill = el("span", { class: "bar-fill" });
  fill.style.width = `${(100 * fraction).toFixed(1)}%`;
  return el("span", { class: "bar-track" }, fill);
}
