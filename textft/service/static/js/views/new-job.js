// The new-job form: data, preset, backbone and launch; the recipe the service would run, refreshed as
// the form changes; the job started with exactly the settings shown.
import { ApiError, api, loadDatasets, problem } from "../api.js";
import { $, el, toast } from "../dom.js";
import { fmt } from "../format.js";
import { clearProblems, showProblems } from "../forms.js";
import { onLeave } from "../lifecycle.js";
import { parseExtra, renderRecipe, typedValue } from "./recipe.js";

const OPTIONAL = ["validation_dataset", "test_dataset", "accelerate_config", "webhook_url"];

function fillChoices(main, datasets, presets, launches) {
  const dsOptions = (blank) => [el("option", { value: "", text: blank }),
    ...datasets.slice().reverse().map((d) => el("option", { value: d.id, text: `${d.name} (${d.rows} rows · ${d.id})` }))];
  $("#dataset", main).replaceChildren(...dsOptions("choose a dataset"));
  $("#validation_dataset", main).replaceChildren(...dsOptions("none: hold out part of the training data"));
  $("#test_dataset", main).replaceChildren(...dsOptions("none"));
  $("#config", main).replaceChildren(...presets.map((p) => el("option", { value: p.name, text: p.name, selected: p.name === "quickstart" })));
  const machines = (a) => `${a.num_processes} process(es), ${a.gpus} GPU(s)${a.num_machines > 1 ? `, ${a.num_machines} machines` : ""}`;
  $("#accelerate_config", main).replaceChildren(el("option", { value: "", text: "one process (default)" }),
    ...launches.map((a) => el("option", { value: a.name, text: `${a.name}: ${machines(a)}` })));
  if (!datasets.length) $("#recipe-status", main).replaceChildren("No datasets yet: ", el("a", { href: "#/datasets", text: "upload one first" }), ".");
}

// One box per LoRA key (model.lora_*), from GET /v1/transfer-options: empty means its default.
function loraFields(box, options) {
  box.replaceChildren(el("p", { class: "hint", text: "LoRA settings: leave a box empty for its default." }),
    ...options.lora.map((o) => el("div", { class: "field", "data-field": `overrides.${o.key}` },
      el("label", { for: `lora-${o.key}`, text: o.key.replace("model.lora_", "") }),
      el("input", { id: `lora-${o.key}`, type: "text", spellcheck: "false", "data-lora-key": o.key,
        placeholder: `default: ${Array.isArray(o.default) ? o.default.join(",") : o.default}`,
        "aria-describedby": `lora-${o.key}-help` }),
      el("p", { class: "hint", id: `lora-${o.key}-help`, text: o.help.replace(/``/g, "").replace(/^Under transfer: lora: /, "") }),
      el("p", { class: "field-error", id: `overrides.${o.key}-error`, role: "alert" }))));
}

class JobForm {
  constructor(main, presets) {
    this.main = main;
    this.form = $("#job-form", main);
    this.presets = Object.fromEntries(presets.map((p) => [p.name, p]));
    this.edited = new Set();  // the recipe keys, backbone and transfer the user changed
    this.recipeValues = {};
    this.recipeCall = 0;
    this.timer = null;
  }

  field(id) { return $(`#${id}`, this.main); }

  preset() { return this.presets[this.field("config").value]; }

  presetChanged() {
    const p = this.preset();
    const transfer = (p && p.settings["model.transfer"]) || "auto";
    this.field("config-help").textContent = p ? p.description : "";
    this.field("backbone").placeholder = p ? p.model : "";
    if (!this.edited.has("backbone")) this.field("backbone").value = p ? p.model : "";
    if (!this.edited.has("transfer")) this.field("transfer").value = transfer;
    this.field("transfer-help").textContent = `Preset default: ${transfer}`;
    this.transferChanged();
  }

  transferChanged() {
    this.field("lora-keys").hidden = this.field("transfer").value !== "lora";
  }

  // The job's request as the form stands: only what differs from the preset and the recipe.
  request() {
    const p = this.preset();
    const overrides = {};
    const backbone = this.field("backbone").value.trim();
    if (backbone && (!p || backbone !== p.model)) overrides["model.name_or_path"] = backbone;
    const transfer = this.field("transfer").value;
    if (transfer !== ((p && p.settings["model.transfer"]) || "auto")) overrides["model.transfer"] = transfer;
    if (transfer === "lora") {
      for (const input of this.main.querySelectorAll("#lora-keys input[data-lora-key]")) {
        if (input.value.trim()) overrides[input.dataset.loraKey] = typedValue(input.value.trim());
      }
    }
    const extra = parseExtra(this.field("extra").value);
    Object.assign(overrides, extra.overrides);
    for (const input of this.main.querySelectorAll("#recipe input[data-key]")) {
      const key = input.dataset.key;
      if (this.edited.has(key) && input.value.trim() !== String(this.recipeValues[key])) overrides[key] = typedValue(input.value.trim());
    }
    const body = { dataset: this.field("dataset").value, config: this.field("config").value, overrides };
    for (const k of OPTIONAL) if (this.field(k).value) body[k] = this.field(k).value;
    return { body, extraProblems: extra.problems };
  }

  // Problems about a setting typed in "Other settings" go to that box, unless the setting has its own field.
  fieldAliases() {
    const a = { "overrides.model.name_or_path": "overrides.model.name_or_path", body: "overrides" };
    for (const k of Object.keys(parseExtra(this.field("extra").value).overrides)) {
      if (!this.main.querySelector(`[data-field="overrides.${CSS.escape(k)}"]`)) a[`overrides.${k}`] = "overrides";
    }
    return a;
  }

  extraProblems(messages) {
    showProblems(this.form, new ApiError(0, { problems: messages.map((m) => ({ field: "overrides", message: m })) }));
  }

  async refreshRecipe() {
    const { body, extraProblems } = this.request();
    const status = this.field("recipe-status");
    if (!body.dataset) { this.field("recipe").replaceChildren(); this.field("plan").textContent = ""; this.field("estimate").hidden = true; return; }
    if (extraProblems.length) { this.extraProblems(extraProblems); return; }
    const call = ++this.recipeCall;
    status.textContent = "Asking the service for its recipe…";
    try {
      const r = await api("/v1/recipe", { method: "POST", json: body });
      if (call !== this.recipeCall) return;
      clearProblems(this.form);
      Object.assign(this.recipeValues, renderRecipe(this.field("recipe"), r, { edited: this.edited, overrides: body.overrides,
        onEdit: (key) => { this.edited.add(key); this.schedule(); } }));
      status.textContent = "Values textft chose for this data and backbone, with why. Change any of them to override it.";
      const e = r.estimate;
      const time = e.seconds === null ? "" : ` · about ${fmt.duration(e.seconds)} on this service`;
      this.field("plan").textContent = `${r.plan.total_steps} steps, ${r.plan.steps_per_epoch} per epoch · ${r.facts.n_train} training and ${r.facts.n_validation} validation examples${time}`;
      this.field("estimate").hidden = false;
      this.field("estimate").textContent = e.seconds === null ? `No time estimate: ${e.how}`
        : `Expected time: about ${fmt.duration(e.seconds)} once it starts, ${e.how.replace(/^from/, "estimated from")}`;
    } catch (e) {
      if (call !== this.recipeCall) return;
      status.textContent = "The service refused these settings:";
      showProblems(this.form, e, this.fieldAliases());
    }
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refreshRecipe(), 350);
  }

  async submit() {
    clearTimeout(this.timer);
    const { body, extraProblems } = this.request();
    if (extraProblems.length) { this.extraProblems(extraProblems); return; }
    if (!body.dataset) { showProblems(this.form, problem("dataset", "Choose the training dataset.")); return; }
    const button = this.field("start-job");
    button.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", json: body });
      toast(`Started ${job.id}`);
      location.hash = `#/jobs/${job.id}`;
    } catch (e) {
      showProblems(this.form, e, this.fieldAliases());
    } finally {
      button.disabled = false;
    }
  }

  bind() {
    const schedule = () => this.schedule();
    this.field("backbone").addEventListener("input", () => { this.edited.add("backbone"); schedule(); });
    this.field("transfer").addEventListener("change", () => { this.edited.add("transfer"); this.transferChanged(); schedule(); });
    this.field("lora-keys").addEventListener("input", schedule);
    this.field("config").addEventListener("change", () => { this.presetChanged(); schedule(); });
    for (const id of ["dataset", ...OPTIONAL]) this.field(id).addEventListener("change", schedule);
    this.field("extra").addEventListener("input", schedule);
    this.form.addEventListener("submit", (ev) => { ev.preventDefault(); this.submit(); });
    onLeave(() => clearTimeout(this.timer));
  }
}

export async function viewNewJob(main, params) {
  document.title = "New job · textft";
  const [datasets, presets, launches, transfers] = await Promise.all([loadDatasets(), api("/v1/presets"),
    api("/v1/accelerate-configs"), api("/v1/transfer-options")]);
  fillChoices(main, datasets, presets, launches);
  loraFields($("#lora-keys", main), transfers);
  if (params.get("dataset")) $("#dataset", main).value = params.get("dataset");
  const form = new JobForm(main, presets);
  form.presetChanged();
  form.bind();
  if ($("#dataset", main).value) form.schedule();
}
