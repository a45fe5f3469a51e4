// The upload form of the datasets page: the file's columns come from the service (/v1/datasets/columns)
// with its suggestions; the upload is checked there and refused with a problem per field.
import { api, problem } from "../api.js";
import { $, el, toast } from "../dom.js";
import { fmt } from "../format.js";
import { clearProblems, options, showProblems } from "../forms.js";
import { table } from "../widgets.js";

const COLUMN_FIELDS = ["text_column", "text_pair_column", "label_column"];

// Fills the column choices from the service's peek at the file, and previews its first rows with
// the chosen columns highlighted.
function showColumns(main, peek, file) {
  for (const id of ["text_column", "label_column"]) $(`#${id}`, main).replaceChildren(...options(peek.columns, peek.suggested[id]));
  const pairSuggested = peek.suggested.text_pair_column || "";
  $("#text_pair_column", main).replaceChildren(el("option", { value: "", text: "none: single texts", selected: !pairSuggested }),
    ...options(peek.columns, pairSuggested));
  $("#ds-name", main).value = file.name;
  const render = () => $("#peek-preview", main).replaceChildren(
    table(peek.rows, peek.columns, COLUMN_FIELDS.map((f) => $(`#${f}`, main).value).filter(Boolean)));
  render();
  for (const f of COLUMN_FIELDS) $(`#${f}`, main).onchange = render;
}

function uploadBody(main, file) {
  const body = new FormData();
  body.append("file", file);
  body.append("text_column", $("#text_column", main).value);
  body.append("label_column", $("#label_column", main).value);
  if ($("#text_pair_column", main).value) body.append("text_pair_column", $("#text_pair_column", main).value);
  body.append("name", $("#ds-name", main).value);
  body.append("drop_empty", $("#drop_empty", main).checked ? "true" : "false");
  return body;
}

// Wires the form; `uploaded(dataset)` is called after each accepted upload.
export function setUpUpload(main, uploaded) {
  const form = $("#upload-form", main);
  const fileInput = $("#file", main), drop = $("#drop", main), details = $("#upload-details", main);
  let chosen = null;

  async function choose(file) {
    clearProblems(form);
    chosen = file;
    details.hidden = true;
    $("#drop-file", main).textContent = file ? `${file.name} · ${fmt.bytes(file.size)}` : "";
    if (!file) return;
    const body = new FormData();
    body.append("file", file);
    try {
      showColumns(main, await api("/v1/datasets/columns", { method: "POST", form: body }), file);
      details.hidden = false;
    } catch (e) {
      if (e.name !== "AbortError") showProblems(form, e);
    }
  }

  fileInput.addEventListener("change", () => choose(fileInput.files[0] || null));
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    const file = ev.dataTransfer.files[0];
    if (file) choose(file);
  });
  form.addEventListener("reset", () => { chosen = null; details.hidden = true; clearProblems(form); $("#drop-file", main).textContent = ""; });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!chosen) { showProblems(form, problem("file", "Choose a file first.")); return; }
    upload(main, form, chosen, uploaded);
  });
}

async function upload(main, form, file, uploaded) {
  const button = $("#upload-button", main);
  button.disabled = true;
  button.textContent = "Checking…";
  try {
    const ds = await api("/v1/datasets", { method: "POST", form: uploadBody(main, file) });
    toast(`Uploaded ${ds.name}: ${ds.rows.toLocaleString("en")} rows, ${Object.keys(ds.labels).length} labels`);
    form.reset();
    await uploaded(ds);
  } catch (e) {
    showProblems(form, e);
  } finally {
    button.disabled = false;
    button.textContent = "Upload and check";
  }
}
