// A run's numbers: the headline table of each split and the best evaluation, every metric named and
// given its direction as the service's tasks define them.
import { el } from "./dom.js";
import { fmt } from "./format.js";
import { direction, lowerIsBetter, metricName, taskInfo } from "./tasks.js";
import { table } from "./widgets.js";

// "macro-f1 0.91 (higher is better, step 40)": the best evaluation so far, as the loop chose it.
export function bestText(job) {
  const best = (job.progress && job.progress.best) || (job.metrics && job.metrics.best);
  if (!best) return "–";
  const lower = best.lower_is_better ?? lowerIsBetter(best.metric);
  return `${best.metric.replace(/_/g, "-")} ${fmt.num(best.value, 4)} (${direction(lower)}, step ${best.step})`;
}

// A table of each split's headline metrics (test first), every column marked ↓ or ↑. `headline` and
// `lower` come with the job or model; `task` names whose headline to show where they do not.
export function metricsTable(splits, headline, lower, task) {
  headline = headline && headline.length ? headline : taskInfo(task).headline;
  const names = Object.keys(splits || {}).sort((a, b) => (b === "test") - (a === "test"));
  if (!names.length) return el("p", { class: "hint", text: "No metrics." });
  const column = (k) => `${metricName(k)} ${lowerIsBetter(k, lower) ? "↓" : "↑"}`;
  const rows = names.map((split) => Object.fromEntries([["split", split], ["examples", fmt.num(splits[split].num_examples)],
    ...headline.map((k) => [column(k), withInterval(splits[split], k)])]));
  const intervals = names.some((split) => splits[split].intervals);
  return el("div", { class: "metrics" }, el("div", { class: "table-wrap" }, table(rows, ["split", "examples", ...headline.map(column)])),
    el("p", { class: "hint", text: "↓ lower is better · ↑ higher is better"
      + (intervals ? " · [low, high]: 95% bootstrap interval over the split's examples" : "") }));
}

// A value with its 95% interval, as the run's report writes it (3 decimals when narrower than 5 points).
function withInterval(m, k) {
  const ci = m.intervals && m.intervals[k];
  if (!ci || typeof m[k] !== "number") return fmt.num(m[k]);
  const d = ci[1] - ci[0] < 0.05 ? 3 : 2;
  return `${m[k].toFixed(4)} [${ci[0].toFixed(d)}, ${ci[1].toFixed(d)}]`;
}

// How a model stands against the best of the models scored on the same test set (a paired test).
export function versusBest(m) {
  const v = m.vs_best;
  if (!v) return null;
  const name = `test ${metricName(v.metric)}`;
  if (v.best) return el("p", { class: "hint vs-best", text: `Best ${name} of the ${v.models} models scored on this test set.` });
  if (v.p_value === null || v.p_value === undefined) {
    return el("p", { class: "hint vs-best", text: `${name} against ${v.model}, the best on this test set: not tested (${v.reason}).` });
  }
  const p = v.p_value < 0.001 ? "p < 0.001" : `p ${v.p_value.toFixed(3)}`;
  const verdict = v.significant ? "a significant difference at 5%" : "not separable at 5%";
  return el("p", { class: "hint vs-best", text: `${name} against ${v.model}, the best on this test set:`
    + ` ${v.difference >= 0 ? "+" : ""}${v.difference.toFixed(4)} (${v.test}, ${p}, ${fmt.num(v.examples)} examples): ${verdict}.` });
}
