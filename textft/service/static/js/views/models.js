// The models list: every job that succeeded, with what it answers and its headline metrics.
import { api, datasetName, loadDatasets } from "../api.js";
import { answersText } from "../answers.js";
import { $, el } from "../dom.js";
import { fmt } from "../format.js";
import { metricsTable } from "../metrics.js";

function modelCard(m) {
  const facts = [m.base_model || "?", `preset ${m.config}`, `data ${datasetName(m.dataset)}`,
    `${answersText(m)}${m.pairs ? " · reads text pairs" : ""}`, fmt.bytes(m.size_bytes), fmt.when(m.created_at)];
  return el("article", { class: "card" },
    el("div", { class: "title-row" }, el("h2", { text: m.id }),
      el("div", { class: "actions" },
        el("a", { class: "button primary", href: `#/models/${m.id}`, text: "Try it" }),
        el("a", { class: "button quiet", href: `#/jobs/${m.id}`, text: "Job" }))),
    el("p", { class: "meta", text: facts.join(" · ") }),
    metricsTable(m.metrics, m.headline, m.lower_is_better, m.task));
}

export async function viewModels(main) {
  document.title = "Models · textft";
  const models = await api("/v1/models");
  await loadDatasets();
  const box = $("#model-list", main);
  if (!models.length) { box.replaceChildren(el("p", { class: "hint", text: "No models yet: a job that succeeds becomes one." })); return; }
  box.replaceChildren(...models.slice().reverse().map(modelCard));
}
