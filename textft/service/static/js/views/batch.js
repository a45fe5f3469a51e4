// The try page's file of texts: read in the browser, sent in requests of at most the service's
// max_texts_per_prediction, shown as a table (the first 200 rows) and downloaded as CSV.
import { api, problem } from "../api.js";
import { answerView } from "../answers.js";
import { $, download, el } from "../dom.js";
import { clearProblems, options, showProblems } from "../forms.js";
import { cell, guessTextColumns, readTexts } from "../textfiles.js";
import { table } from "../widgets.js";

const SHOWN = 200;
const short = (t) => (t.length > 160 ? `${t.slice(0, 159)}…` : t);
const quote = (v) => `"${String(v ?? "").replace(/"/g, '""')}"`;
const tokensText = (input) => (!input ? ""
  : `${input.tokens}${input.truncated ? ` (${input.mode})` : input.windows > 1 ? ` (${input.windows} windows)` : ""}`);

// What is wrong with the texts (and second texts) read from the chosen columns, or null.
function textsProblem(texts, column, pairs, pairColumn) {
  if (!texts.length) return "the file has no texts";
  if (pairColumn === column) return "choose two different columns: the first and the second text";
  return [[texts, column], [pairs || [], pairColumn]].map(([list, c]) => {
    const empty = list.findIndex((t) => !t.trim());
    return empty >= 0 ? `row ${empty + 1} has no text in column '${c}'` : null;
  }).find(Boolean);
}

class BatchForm {
  constructor(main, model, perRequest) {
    this.main = main;
    this.model = model;
    this.perRequest = perRequest;
    this.form = $("#batch-form", main);
    this.parsed = null;
    this.results = null;
    this.noun = model.pairs ? "pairs" : "texts";
  }

  fail(message) { showProblems(this.form, problem("batch", message)); }

  async choose(file) {
    clearProblems(this.form);
    this.parsed = null;
    $("#batch-column-row", this.main).hidden = true;
    if (!file) return;
    try {
      this.parsed = readTexts(file.name, await file.text());
      if (this.model.pairs && !this.parsed.columns) throw new Error("this model reads pairs: give a .csv, .tsv or .jsonl file with two text columns");
    } catch (e) {
      this.parsed = null;
      this.fail(`could not read ${file.name}: ${e.message}`);
      return;
    }
    const columns = this.parsed.columns;
    if (columns) {
      const [first, second] = guessTextColumns(columns);
      $("#batch-column", this.main).replaceChildren(...options(columns, first));
      $("#batch-pair-column", this.main).replaceChildren(...options(columns, second));
      $("#batch-column-row", this.main).hidden = false;
    }
    $("#batch-status", this.main).textContent = `${this.parsed.records.length.toLocaleString("en")} ${this.noun} in ${file.name}`;
  }

  // The inputs of the chosen columns: {texts, pairs (or null), problem}.
  inputs() {
    const column = this.parsed.columns ? $("#batch-column", this.main).value : "text";
    const pairColumn = this.model.pairs ? $("#batch-pair-column", this.main).value : null;
    const texts = this.parsed.records.map((r) => cell(r, column));
    const pairs = pairColumn ? this.parsed.records.map((r) => cell(r, pairColumn)) : null;
    return { texts, pairs, problem: textsProblem(texts, column, pairs, pairColumn) };
  }

  async predict(texts, pairs, status) {
    const path = `/v1/models/${encodeURIComponent(this.model.id)}/predict?explain=true`;
    const inputs = pairs ? texts.map((text, i) => ({ text, text_pair: pairs[i] })) : texts;
    const step = this.perRequest;
    this.results = [];
    for (let i = 0; i < texts.length; i += step) {
      status.textContent = `Predicting ${Math.min(i + step, texts.length)} / ${texts.length}…`;
      const r = await api(path, { method: "POST", json: { inputs: inputs.slice(i, i + step), top_k: 1 } });
      r.predictions.forEach((p, j) => this.results.push({ text: texts[i + j], ...(pairs ? { text_pair: pairs[i + j] } : {}), ...p }));
    }
  }

  show(status) {
    const answers = answerView(this.model.task).batch(this.model), results = this.results;
    const rows = results.map((p) => ({ text: short(p.text), ...(this.model.pairs ? { "second text": short(p.text_pair) } : {}),
      ...answers.cells(p), tokens: tokensText(p.input) }));
    $("#batch-results", this.main).replaceChildren(table(rows.slice(0, SHOWN)));
    status.textContent = `${results.length} ${this.noun}: ${answers.summary(results)}${results.length > SHOWN ? ` (first ${SHOWN} shown; the CSV has all)` : ""}`;
    $("#batch-download", this.main).hidden = false;
  }

  async submit() {
    clearProblems(this.form);
    if (!this.parsed) { this.fail("Choose a file of texts first."); return; }
    const { texts, pairs, problem: wrong } = this.inputs();
    if (wrong) { this.fail(wrong); return; }
    const button = $("#batch-button", this.main), status = $("#batch-status", this.main);
    button.disabled = true;
    try {
      await this.predict(texts, pairs, status);
      this.show(status);
    } catch (e) {
      status.textContent = "";
      showProblems(this.form, e, { body: "batch", inputs: "batch" });
    } finally { button.disabled = false; }
  }

  csv() {
    const pairs = this.model.pairs, answers = answerView(this.model.task).batch(this.model);
    const lines = [["text", ...(pairs ? ["text_pair"] : []), ...answers.head, "tokens"].join(",")]
      .concat(this.results.map((p) => [quote(p.text), ...(pairs ? [quote(p.text_pair)] : []), ...answers.csv(p), p.input ? p.input.tokens : ""].join(",")));
    return new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
  }
}

export function setUpBatch(main, model, perRequest) {
  const batch = new BatchForm(main, model, perRequest);
  const fileInput = $("#batch-file", main);
  fileInput.addEventListener("change", () => batch.choose(fileInput.files[0]));
  batch.form.addEventListener("submit", (ev) => { ev.preventDefault(); batch.submit(); });
  $("#batch-download", main).addEventListener("click", () => download(batch.csv(), `${model.id}-predictions.csv`));
}
