// How a model's answers are shown, per task: what it predicts in a few words, how scores become an
// answer, one prediction, and the columns of a predicted file. Each task registers its presentation
// in TASK_VIEWS below; the metrics and their names come from the service (tasks.js).
import { bar, el } from "./dom.js";
import { countsText, fmt } from "./format.js";
import { metricName, taskInfo } from "./tasks.js";

const quote = (v) => `"${String(v ?? "").replace(/"/g, '""')}"`;
const target = (model) => `predicted ${(model.labels || [])[0] || "value"}`;
const labelList = (labels, n = 12) => labels.slice(0, n).join(", ") + (labels.length > n ? ", …" : "");
const thresholdOf = (model, label) => (model.thresholds && model.thresholds.values ? model.thresholds.values[label] : 0.5);

export function scoreRow(label, score, attrs = {}) {
  return el("li", attrs, el("span", { class: "topk-label", text: label }), bar(score),
    el("span", { class: "topk-score", text: fmt.pct(score) }));
}

// How a long text was read: whole, truncated (which end) or in overlapping windows.
export function longTextNote(input, model) {
  if (!input) return null;
  if (input.mode === "window") {
    return input.windows > 1
      ? `${input.tokens} tokens: read in ${input.windows} overlapping windows of ${input.max_length} tokens (stride ${input.stride}), ${input.pooling}-pooled`
      : `${input.tokens} tokens: fits in one window of ${input.max_length}`;
  }
  if (!input.truncated) return `${input.tokens} of ${input.max_length} tokens: read whole`;
  const how = { head: `kept the first ${input.max_length} tokens`, tail: `kept the last ${input.max_length} tokens`,
    "head+tail": `kept the beginning and the end (${Math.round(100 * (model.head_fraction ?? 0.25))}% head, the rest tail)` }[input.mode] || input.mode;
  return `${input.tokens} tokens, over the model's ${input.max_length}: ${input.mode} truncation ${how}`;
}

// -- one label per text, possibly out of scope

// What each out-of-scope score measures, in the words of a verdict.
const OOS_SCORES = {
  msp: "confidence (highest softmax probability)", energy: "energy score (logsumexp of the logits)",
  mahalanobis: "closeness to the training intents (Mahalanobis score)", knn: "similarity to the nearest training examples",
};

function singleLabelView(p, model) {
  const oos = model.out_of_scope;
  const method = (oos && oos.method) || "msp";
  const score = OOS_SCORES[method] || `${method} score`;
  const threshold = `the threshold ${fmt.num(oos && oos.threshold)}`;
  const rows = p.top_k || [{ label: p.model_label || p.label, score: p.score }];
  const verdict = p.out_of_scope === undefined ? null
    : p.out_of_scope
      ? el("p", { class: "verdict out", text: `Out of scope: its ${score} is below ${threshold}; the model would have said '${p.model_label}'.` })
      : el("p", { class: "verdict in", text: `In scope: its ${score} reaches ${threshold}.` });
  return [el("p", { class: "answer" }, el("span", { class: "label-name", text: p.label }), el("span", { class: "score", text: fmt.pct(p.score) })),
    verdict,
    el("ol", { class: "topk", "aria-label": "Most likely labels" }, rows.map((r) => scoreRow(r.label, r.score)))];
}

const SINGLE_LABEL = {
  summary: (model, list) => `${(model.labels || []).length} labels${list ? `: ${labelList(model.labels || [])}` : ""}`,
  datasetKind: (n) => `${n} labels`,
  decision(model) {
    const oos = model.out_of_scope;
    return oos ? `out-of-scope threshold ${fmt.num(oos.threshold)} (${oos.method}) answers '${oos.label}'`
      : "no out-of-scope threshold (textft calibrate sets one)";
  },
  rankLabel: "Labels shown",
  view: singleLabelView,
  batch: () => ({
    cells: (p) => ({ label: p.label, score: fmt.pct(p.score),
      ...(p.out_of_scope !== undefined ? { "out of scope": p.out_of_scope ? `yes (model: ${p.model_label})` : "no" } : {}) }),
    head: ["label", "score", "out_of_scope", "model_label"],
    csv: (p) => [quote(p.label), p.score, p.out_of_scope ?? "", quote(p.model_label ?? "")],
    summary: (results) => countsText(results.map((p) => p.label)),
  }),
};

// -- any number of labels per text, each at its threshold

// Every label whose score reaches its threshold (possibly none), then every score ranked on request.
function multiLabelView(p, model) {
  const chosen = p.labels || [], labels = model.labels || [];
  const thresholds = labels.slice(0, 12).map((l) => `${l} ${fmt.pct(thresholdOf(model, l))}`).join(", ") + (labels.length > 12 ? ", …" : "");
  return [chosen.length
    ? el("ol", { class: "topk chosen", "aria-label": "Labels above their threshold" }, chosen.map((r) => scoreRow(r.label, r.score)))
    : el("p", { class: "answer" }, el("span", { class: "label-name none", text: "none of the labels" })),
  el("p", { class: "hint threshold", text: `A label is given when its score reaches its threshold: ${thresholds}.` }),
  p.top_k ? el("p", { class: "sub", text: "Scores, ranked (faded: below the threshold)" }) : null,
  p.top_k ? el("ol", { class: "topk ranked", "aria-label": "Labels ranked by score" }, p.top_k.map((r) =>
    scoreRow(r.label, r.score, { class: r.score >= thresholdOf(model, r.label) ? "above" : "below" }))) : null];
}

const MULTI_LABEL = {
  summary: (model, list) => `${(model.labels || []).length} labels, any number per text${list ? `: ${labelList(model.labels || [])}` : ""}`,
  datasetKind: (n) => `${n} labels, several per text`,
  decision(model) {
    const t = model.thresholds;
    return t ? `decision thresholds chosen on ${t.split || "validation"} (${(t.tuning || "").replace(/_/g, "-")}, for ${metricName(t.metric || taskInfo(model.task).default_metric)})`
      : "every label at the 0.5 threshold (textft calibrate tunes them)";
  },
  rankLabel: "Scores ranked",
  view: multiLabelView,
  batch: () => ({
    cells: (p) => ({ labels: p.labels.length ? p.labels.map((l) => l.label).join(", ") : "none",
      scores: p.labels.map((l) => fmt.pct(l.score)).join(", ") }),
    head: ["labels", "scores"],
    csv: (p) => [quote(p.labels.map((l) => l.label).join(";")), quote(p.labels.map((l) => l.score.toFixed(4)).join(";"))],
    summary: (results) => countsText(results.flatMap((p) => (p.labels.length ? p.labels.map((l) => l.label) : ["none"]))),
  }),
};

// -- a number per text

// The range and mean of the predicted values (a loop, not Math.min(...values): a large file would
// overflow the call's argument list).
function valueSummary(results, model) {
  let lo = Infinity, hi = -Infinity, sum = 0;
  for (const p of results) { lo = Math.min(lo, p.value); hi = Math.max(hi, p.value); sum += p.value; }
  return `${target(model)} from ${fmt.num(lo, 3)} to ${fmt.num(hi, 3)}, mean ${fmt.num(sum / (results.length || 1), 3)}`;
}

const REGRESSION = {
  summary: (model) => `predicts ${(model.labels || [])[0] || "a value"} (a number)`,
  datasetKind: () => "numeric target (regression)",
  decision: () => null,
  rankLabel: null,  // one number: nothing to rank
  view: (p, model) => [el("p", { class: "answer" }, el("span", { class: "label-name value", text: fmt.num(p.value, 4) }),
    el("span", { class: "score", text: target(model) }))],
  batch: (model) => ({
    cells: (p) => ({ [target(model)]: fmt.num(p.value, 4) }),
    head: ["value"],
    csv: (p) => [p.value],
    summary: (results) => valueSummary(results, model),
  }),
};

const TASK_VIEWS = { single_label: SINGLE_LABEL, multi_label: MULTI_LABEL, regression: REGRESSION };

// The presentation of `task`; one the page does not know is shown as labels.
export const answerView = (task) => TASK_VIEWS[task] || SINGLE_LABEL;

// What a model answers, in a few words: its labels (listed when `list`), or the number it predicts.
export const answersText = (model, list = false) => answerView(model.task).summary(model, list);

export const decisionText = (model) => answerView(model.task).decision(model);

export function predictionView(p, model) {
  return el("div", { class: "prediction" }, answerView(model.task).view(p, model),
    el("p", { class: "hint long-text", text: longTextNote(p.input, model) }));
}
