// A model's try page: what it reads and answers, its metrics, one text (or pair) predicted with the
// reasons for its answer, and a file of texts predicted in batches (batch.js).
import { api, problem } from "../api.js";
import { answerView, answersText, decisionText, predictionView } from "../answers.js";
import { $, el } from "../dom.js";
import { clearProblems, showProblems } from "../forms.js";
import { metricsTable } from "../metrics.js";
import { currentUser } from "../session.js";
import { setUpBatch } from "./batch.js";

// What a model reads: both texts of a pair together, or one text with its truncation.
function readsText(model) {
  return model.pairs ? `reads pairs of texts (the second from column ${model.text_pair_column}), ${model.max_length} tokens together`
    : `reads ${model.max_length} tokens (${model.truncation} truncation for longer texts)`;
}

// The choice of how many labels to show, where the task ranks any.
function setUpRanking(main, model) {
  const topk = $("#top_k", main), label = $("#top_k-label", main);
  const n = (model.labels || []).length;
  const choices = [...new Set([1, 2, 3, 5, 10, Math.min(n, 20)].filter((v) => v <= n))].sort((a, b) => a - b);
  topk.replaceChildren(...choices.map((v) => el("option", { value: v, text: v === n ? `all ${v}` : v, selected: v === Math.min(3, n) })));
  const rankLabel = answerView(model.task).rankLabel;
  if (rankLabel) label.textContent = rankLabel;
  else { topk.hidden = true; label.hidden = true; }
}

// The page's words for a model that reads pairs: ask for both texts, and for files with two columns.
function askForPairs(main, maxChars) {
  $("#try-title", main).textContent = "A pair of texts";
  $("#text-label", main).textContent = "First text";
  $("#text_pair-field", main).hidden = false;
  $("#text_pair", main).maxLength = maxChars;
  $("#batch-title", main).textContent = "A file of text pairs";
  $("label[for=batch-file]", main).replaceChildren("Pairs file ", el("span", { class: "opt", text: "(.csv, .tsv, .jsonl with two text columns)" }));
  $("label[for=batch-column]", main).textContent = "First text column";
  main.querySelectorAll(".batch-pair").forEach((n) => { n.hidden = false; });
}

function setUpPredict(main, model) {
  const form = $("#predict-form", main);
  const path = `/v1/models/${encodeURIComponent(model.id)}/predict?explain=true`;
  const ranks = answerView(model.task).rankLabel !== null;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearProblems(form);
    const text = $("#text", main).value, pair = $("#text_pair", main).value;
    if (!text.trim()) { showProblems(form, problem("inputs", "Type a text to classify.")); return; }
    if (model.pairs && !pair.trim()) { showProblems(form, problem("text_pair", "This model reads pairs: type the second text too.")); return; }
    const button = $("#predict-button", main);
    button.disabled = true;
    try {
      const inputs = model.pairs ? { text, text_pair: pair } : text;
      const r = await api(path, { method: "POST", json: { inputs, top_k: ranks ? +$("#top_k", main).value : 1 } });
      $("#prediction", main).replaceChildren(predictionView(r.predictions[0], model));
    } catch (e) {
      showProblems(form, e, { body: "inputs" });
    } finally { button.disabled = false; }
  });
  // Ctrl+Enter predicts from either text box.
  for (const box of ["#text", "#text_pair"]) {
    $(box, main).addEventListener("keydown", (ev) => { if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) form.requestSubmit(); });
  }
}

export async function viewModel(main, id) {
  document.title = `Try ${id} · textft`;
  const model = await api(`/v1/models/${encodeURIComponent(id)}`);
  const me = currentUser();
  const limits = me ? me.limits : { max_texts_per_prediction: 64, max_chars_per_text: 20000 };
  $("#model-title", main).textContent = `Try ${model.id}`;
  $("#model-job-link", main).href = `#/jobs/${model.id}`;
  $("#model-meta", main).textContent = [`${model.base_model}`, answersText(model, true), readsText(model), decisionText(model)]
    .filter(Boolean).join(" · ");
  $("#model-metrics", main).replaceChildren(metricsTable(model.metrics, model.headline, model.lower_is_better, model.task));
  setUpRanking(main, model);
  $("#text", main).maxLength = limits.max_chars_per_text;
  if (model.pairs) askForPairs(main, limits.max_chars_per_text);
  setUpPredict(main, model);
  setUpBatch(main, model, limits.max_texts_per_prediction);
}
