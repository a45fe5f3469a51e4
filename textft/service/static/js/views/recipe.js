// The recipe of the new-job form: the values the service picks for the data and backbone (POST
// /v1/recipe), each with why, editable in place; and the free `section.key=value` lines.
import { el } from "../dom.js";
import { fmt } from "../format.js";

// Settings shown even when the preset, not the recipe, sets them.
const RECIPE_SHOWN = ["train.lr", "train.head_lr", "train.epochs", "train.batch_size", "train.eval_every_steps",
  "train.warmup_ratio", "data.max_length"];

// A value typed in a box: JSON where it reads as JSON (numbers, true), else the text (auto, head+tail).
export function typedValue(raw) {
  try { return JSON.parse(raw); } catch (_) { return raw; }
}

// {overrides, problems} of the "Other settings" box: one section.key=value a line, # comments.
export function parseExtra(text) {
  const overrides = {}, problems = [];
  text.split("\n").forEach((line, i) => {
    line = line.trim();
    if (!line || line.startsWith("#")) return;
    const eq = line.indexOf("=");
    if (eq < 1) { problems.push(`line ${i + 1}: expected section.key=value, got '${line}'`); return; }
    overrides[line.slice(0, eq).trim()] = typedValue(line.slice(eq + 1).trim());
  });
  return { overrides, problems };
}

// One row of the recipe: the key, its value (what the user typed, once edited) and why it has it.
function recipeRow(key, r, { edited, previous, overridden, onInput }) {
  const auto = r.auto[key];
  const value = auto ? auto.value : r.settings[key];
  const id = `rec-${key.replace(/\W/g, "-")}`;
  const reason = auto ? auto.reason : overridden ? "your setting" : `set by the preset '${r.config}'`;
  const input = el("input", { id, type: "text", "data-key": key, value: edited && previous ? previous.value : fmt.num(value, 6),
    "aria-describedby": `${id}-why overrides.${key}-error`, spellcheck: "false", class: auto ? "auto" : null });
  input.addEventListener("input", onInput);
  return el("div", { class: "field recipe-row", "data-field": `overrides.${key}` },
    el("label", { for: id, text: key }), input,
    el("p", { class: "why", id: `${id}-why` }, auto ? el("span", { class: "tag", text: "auto" }) : null, reason),
    el("p", { class: "field-error", id: `overrides.${key}-error`, role: "alert" }));
}

// Draws recipe `r` into `box`; returns each key's value as the service chose it. `edited`: the keys
// the user typed into (their text is kept), `overrides`: the keys the request sets, `onEdit(key)`.
export function renderRecipe(box, r, { edited, overrides, onEdit }) {
  const values = {};
  const keys = [...new Set([...Object.keys(r.auto), ...RECIPE_SHOWN.filter((k) => k in r.settings)])];
  const rows = keys.map((key) => {
    values[key] = r.auto[key] ? r.auto[key].value : r.settings[key];
    return recipeRow(key, r, { edited: edited.has(key), previous: box.querySelector(`input[data-key="${CSS.escape(key)}"]`),
      overridden: key in overrides && !edited.has(key), onInput: () => onEdit(key) });
  });
  box.replaceChildren(...rows);
  return values;
}
