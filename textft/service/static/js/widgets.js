// Tables, progress bars and state badges, shared by the views.
import { el } from "./dom.js";
import { fmt } from "./format.js";

export const badge = (state) => el("span", { class: `badge ${state}`, text: state });

const cellText = (v) => (v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));

// A table of `rows` (objects) with `columns` (default: every key), `highlight`ed columns marked. Each
// cell carries its column as data-label, the heading a phone shows above it.
export function table(rows, columns, highlight = []) {
  if (!rows.length) return el("p", { class: "hint", text: "No rows." });
  columns = columns || [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const hl = (c) => (highlight.includes(c) ? "hl" : null);
  return el("table", {},
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col", class: hl(c), text: c })))),
    el("tbody", {}, rows.map((r) => el("tr", {}, columns.map((c) => el("td", { class: hl(c), "data-label": c, text: cellText(r[c]) }))))));
}

// [percent done, what the bar says] of a job.
function progressState(job) {
  const p = job.progress || {};
  const total = p.total_steps, step = p.step || 0;
  const pct = total ? Math.min(100, (100 * step) / total) : 0;
  if (job.state === "succeeded") {
    return [100, total && step < total ? `done: ${step} of ${total} steps (${fmt.words(job.stop_reason)})`
      : `done: ${step} / ${total ?? step} steps`];
  }
  if (job.state === "queued") return [pct, job.queue_position ? `queued, position ${job.queue_position}` : "queued"];
  if (!total) return [pct, job.state === "running" ? "starting…" : job.state];
  let text = `${step} / ${total} steps`;
  if (job.state === "running" && p.eta_s !== undefined && p.eta_s !== null) text += ` · ETA ${fmt.duration(p.eta_s)}`;
  if (job.state !== "running") text += ` · ${job.state}`;
  return [pct, text];
}

export function progressBar(job) {
  const [pct, text] = progressState(job);
  const rounded = Math.round(pct);
  const fill = el("div", { class: "fill" });
  fill.style.width = `${pct}%`;
  return el("div", { class: `progress ${job.state}`, role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
    "aria-valuenow": rounded, "aria-valuetext": text, "aria-label": `Progress of ${job.id}` },
  fill, el("span", { class: "progress-text", text: `${rounded}% · ${text}` }));
}
