// The datasets page: the upload form (upload.js) above the user's datasets, each with its label
// distribution and first rows.
import { api, loadDatasets } from "../api.js";
import { answerView } from "../answers.js";
import { $, el, toast } from "../dom.js";
import { labelBars } from "../charts.js";
import { fmt } from "../format.js";
import { table } from "../widgets.js";
import { setUpUpload } from "./upload.js";

function datasetCard(ds, deleted) {
  const kind = answerView(ds.task).datasetKind(Object.keys(ds.labels).length);
  const columns = ds.pairs ? `text pairs: ${ds.text_column} + ${ds.text_pair_column}` : `text: ${ds.text_column}`;
  const remove = async () => {
    if (!confirm(`Delete the dataset ${ds.name}?`)) return;
    try { await api(`/v1/datasets/${ds.id}`, { method: "DELETE" }); toast(`Deleted ${ds.name}`); deleted(); }
    catch (e) { toast(e.message, "error"); }
  };
  return el("article", { class: "card dataset", id: `ds-${ds.id}`, "aria-labelledby": `ds-${ds.id}-title` },
    el("div", { class: "title-row" },
      el("h3", { id: `ds-${ds.id}-title`, text: ds.name }),
      el("div", { class: "actions" },
        el("a", { class: "button", href: `#/new?dataset=${encodeURIComponent(ds.id)}`, text: "New job",
          "aria-label": `New job on ${ds.name}` }),
        el("button", { type: "button", class: "quiet", "aria-label": `Delete dataset ${ds.name}`, text: "Delete", onclick: remove }))),
    el("p", { class: "meta", text: `${ds.id} · ${ds.rows.toLocaleString("en")} rows · ${kind} · ${ds.format} · ${fmt.bytes(ds.size_bytes)} · ${columns} · label: ${ds.label_column} · ${fmt.when(ds.created_at)}` }),
    el("div", { class: "dataset-body" },
      el("figure", { class: "label-chart" }, el("figcaption", { text: "Label distribution" }), labelBars(ds.labels, "Label distribution")),
      el("div", { class: "preview" }, el("h4", { text: "First rows" }),
        el("div", { class: "table-wrap" }, table(ds.preview, ds.pairs ? ["text", "text_pair", "label"] : null)))));
}

export async function viewDatasets(main) {
  document.title = "Datasets · textft";
  const box = $("#dataset-list", main);
  async function renderList() {
    const list = await loadDatasets();
    if (!list.length) { box.replaceChildren(el("p", { class: "hint", text: "No datasets yet: upload one above." })); return; }
    box.replaceChildren(...list.slice().reverse().map((ds) => datasetCard(ds, renderList)));
  }
  setUpUpload(main, async (ds) => {
    await renderList();
    const card = document.getElementById(`ds-${ds.id}`);
    if (card) card.scrollIntoView({ block: "nearest" });
  });
  await renderList();
}
