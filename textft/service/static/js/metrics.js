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
    ...headline.map((k) => [column(k), fmt.num(splits[split][k])])]));
  return el("div", { class: "metrics" }, el("div", { class: "table-wrap" }, table(rows, ["split", "examples", ...headline.map(column)])),
    el("p", { class: "hint", text: "↓ lower is better · ↑ higher is better" }));
}
