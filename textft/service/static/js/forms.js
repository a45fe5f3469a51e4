// Problems of an answer (or found before asking) shown next to the controls they concern.
import { el } from "./dom.js";

// Each problem goes to its [data-field] slot (after `aliases` renames its field); problems about
// anything else go to the form's general message. The first invalid control gets the focus.
export function showProblems(form, err, aliases = {}) {
  clearProblems(form);
  const general = [];
  const problems = err.problems.length ? err.problems : [{ field: null, message: err.message }];
  for (const p of problems) {
    const field = aliases[p.field] || p.field;
    const slot = field && form.querySelector(`[data-field="${CSS.escape(field)}"]`);
    if (slot) markInvalid(slot, p.message);
    else general.push(p.message);
  }
  const box = form.querySelector(".form-error");
  if (box && general.length) box.textContent = general.join(" ");
  const first = form.querySelector(".invalid input, .invalid select, .invalid textarea");
  if (first) first.focus();
  else if (box && general.length) box.scrollIntoView({ block: "nearest" });
}

function markInvalid(slot, message) {
  slot.classList.add("invalid");
  const out = slot.querySelector(".field-error");
  out.textContent = out.textContent ? `${out.textContent} ${message}` : message;
  const control = slot.querySelector("input, select, textarea");
  if (control) control.setAttribute("aria-invalid", "true");
}

export function clearProblems(form) {
  form.querySelectorAll(".invalid").forEach((n) => n.classList.remove("invalid"));
  form.querySelectorAll(".field-error, .form-error").forEach((n) => { n.textContent = ""; });
  form.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
}

// <option>s of `values`, the one equal to `selected` chosen.
export function options(values, selected, label = (v) => v) {
  return values.map((v) => el("option", { value: v, text: label(v), selected: v === selected }));
}
