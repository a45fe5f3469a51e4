// The models list: every job that succeeded, with what it answers and its headline metrics.
import { api, datasetName, loadDatasets, saveBlob } from "../api.js";
import { answersText } from "../answers.js";
import { $, el, toast } from "../dom.js";
import { fmt } from "../format.js";
import { metricsTable, versusBest } from "../metrics.js";

// How the model is stored: a LoRA adapter on its base (rank, size) or a full model, and its size on disk.
function storageText(m) {
  if (m.stored_as !== "adapter" || !m.adapter) return `full model, ${fmt.bytes(m.size_bytes)} on disk`;
  const a = m.adapter;
  return `LoRA adapter on ${m.base_model || "its base"} (rank ${a.rank}, alpha ${a.alpha}): ${fmt.bytes(a.size_bytes)}`
    + ` adapter, ${fmt.bytes(m.size_bytes)} on disk with reports and tokenizer`;
}

// A download button per format the model offers, each saying what the archive holds.
function downloads(m) {
  const names = { model: "Download model", adapter: "Download adapter" };
  return el("div", { class: "downloads" }, ...Object.entries(m.downloads || { model: "" }).map(([format, what]) => {
    const suffix = format === "model" ? "" : `-${format}`;
    const button = el("button", { type: "button", class: "quiet", text: `${names[format] || format} (.tar.gz)`, "data-format": format });
    button.addEventListener("click", async () => {
      button.disabled = true;
      try { await saveBlob(`/v1/models/${encodeURIComponent(m.id)}/download?format=${format}`, `${m.id}${suffix}.tar.gz`); }
      catch (e) { toast(e.message, "error"); }
      button.disabled = false;
    });
    return el("p", { class: "hint download" }, button, ` ${what}`);
  }));
}

function modelCard(m) {
  const facts = [m.base_model || "?", `preset ${m.config}`, `data ${datasetName(m.dataset)}`,
    `${answersText(m)}${m.pairs ? " · reads text pairs" : ""}`, fmt.when(m.created_at)];
  return el("article", { class: "card" },
    el("div", { class: "title-row" }, el("h2", { text: m.id }),
      el("div", { class: "actions" },
        el("a", { class: "button primary", href: `#/models/${m.id}`, text: "Try it" }),
        el("a", { class: "button quiet", href: `#/jobs/${m.id}`, text: "Job" }))),
    el("p", { class: "meta", text: facts.join(" · ") }),
    el("p", { class: "meta storage", text: storageText(m) }),
    metricsTable(m.metrics, m.headline, m.lower_is_better, m.task), versusBest(m), downloads(m));
}

export async function viewModels(main) {
  document.title = "Models · textft";
  const models = await api("/v1/models");
  await loadDatasets();
  const box = $("#model-list", main);
  if (!models.length) { box.replaceChildren(el("p", { class: "hint", text: "No models yet: a job that succeeds becomes one." })); return; }
  box.replaceChildren(...models.slice().reverse().map(modelCard));
}
