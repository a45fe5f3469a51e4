// The textft service page: a client of the /v1 API, like curl. No framework and no build step.
// Every string that comes from the server or from a file is put into the page as text, never as HTML.
"use strict";

const KEY = "textft.key";
const ACTIVE = ["queued", "running"];
const $ = (sel, root = document) => root.querySelector(sel);

// ---- small helpers ---------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElementNS(
    ["svg", "path", "line", "text", "rect", "circle", "g", "polyline", "title"].includes(tag) && attrs.svg !== false
      ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false || k === "svg") continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

const fmt = {
  num(v, digits = 4) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (typeof v !== "number") return String(v);
    if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e6)) return v.toExponential(2);
    return Number.isInteger(v) ? v.toLocaleString("en") : String(+v.toFixed(digits));
  },
  pct: (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)}%`),
  bytes(n) {
    if (!n && n !== 0) return "–";
    const units = ["B", "KB", "MB", "GB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  },
  duration(s) {
    if (s === null || s === undefined) return "–";
    s = Math.round(s);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  },
  when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return d.toLocaleString("en-GB", { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });
  },
};

function toast(message, kind = "info") {
  const t = $("#toast");
  t.textContent = message;
  t.className = `toast show ${kind}`;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = "toast"; }, 5000);
}

// ---- the API -----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.problems = (body && body.problems) || [];
  }
}

function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

async function api(path, { method = "GET", json, form, signal, as = "json", key } = {}) {
  const headers = key ? { Authorization: `Bearer ${key}` } : authHeaders();
  let body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form !== undefined) body = form;
  let resp;
  try {
    resp = await fetch(path, { method, headers, body, signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, { error: "the service cannot be reached; is it running?" });
  }
  if (!resp.ok) {
    let data = null;
    try { data = await resp.json(); } catch (_) { /* not JSON: a proxy's page */ }
    const err = new ApiError(resp.status, data || { error: `${resp.status} ${resp.statusText}` });
    if (resp.status === 401 && !key) signOut(err.message);
    throw err;
  }
  if (as === "text") return resp.text();
  if (as === "blob") return resp.blob();
  if (as === "response") return resp;
  return resp.status === 204 ? null : resp.json();
}

// Shows each problem of an error answer next to the control it concerns ([data-field] slots);
// problems about anything else go to the form's general message.
function showProblems(form, err, aliases = {}) {
  clearProblems(form);
  const general = [];
  const problems = err.problems.length ? err.problems : [{ field: null, message: err.message }];
  for (const p of problems) {
    const field = aliases[p.field] || p.field;
    const slot = field && form.querySelector(`[data-field="${CSS.escape(field)}"]`);
    if (slot) {
      slot.classList.add("invalid");
      const out = slot.querySelector(".field-error");
      out.textContent = out.textContent ? `${out.textContent} ${p.message}` : p.message;
      const control = slot.querySelector("input, select, textarea");
      if (control) control.setAttribute("aria-invalid", "true");
    } else {
      general.push(p.message);
    }
  }
  const box = form.querySelector(".form-error");
  if (box && general.length) box.textContent = general.join(" ");
  const first = form.querySelector(".invalid input, .invalid select, .invalid textarea");
  if (first) first.focus();
  else if (box && general.length) box.scrollIntoView({ block: "nearest" });
}

function clearProblems(form) {
  form.querySelectorAll(".invalid").forEach((n) => n.classList.remove("invalid"));
  form.querySelectorAll(".field-error, .form-error").forEach((n) => { n.textContent = ""; });
  form.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
}

async function saveBlob(path, filename) {
  const blob = await api(path, { as: "blob" });
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// Server-Sent Events over fetch (EventSource cannot send the bearer header). A dropped connection
// is resumed with Last-Event-ID, so no event is missed; the server ends the stream once the job has
// finished and every event was sent.
async function followEvents(jobId, onEvent, signal) {
  let last = 0;
  while (!signal.aborted) {
    try {
      const headers = authHeaders(last ? { "Last-Event-ID": String(last) } : {});
      const resp = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, { headers, signal });
      if (resp.status === 401) { signOut("the API key is no longer valid"); return; }
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = { type: "message", data: "" };
          for (const line of block.split("\n")) {
            if (line.startsWith("id:")) event.id = Number(line.slice(3).trim());
            else if (line.startsWith("event:")) event.type = line.slice(6).trim();
            else if (line.startsWith("data:")) event.data += line.slice(5).trim();
          }
          if (event.id === undefined) continue;
          last = event.id;
          onEvent(event.type, JSON.parse(event.data));
        }
      }
      const job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`, { signal });
      if (!ACTIVE.includes(job.state)) return;
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiError && e.status === 404) return;
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// ---- charts (SVG drawn here: no library to vendor) -----------------------------------------------

const COLORS = ["#2563eb", "#d97706", "#059669", "#9333ea", "#dc2626"];

function niceTicks(lo, hi, count = 5) {
  if (hi === lo) { hi = lo + 1; }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toFixed(10));
  return ticks;
}

// series: [{name, points: [[x, y], ...], dots?}]
function lineChart(container, { series, xLabel, xMax, yMin, yMax, empty }) {
  container.replaceChildren();
  const all = series.flatMap((s) => s.points);
  if (!all.length) {
    container.append(el("p", { class: "hint chart-empty", text: empty }, ));
    return;
  }
  // drawn at the container's own width, so that the labels keep their size on a phone
  const W = Math.max(280, Math.round(container.clientWidth || 640)), H = W < 500 ? 220 : 260;
  const m = { l: 52, r: 16, t: 12, b: 38 };
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(0, ...xs), x1 = Math.max(...xs, xMax || 1);
  let y0 = yMin ?? Math.min(...ys), y1 = yMax ?? Math.max(...ys);
  if (yMin === undefined) y0 = Math.min(y0, 0);
  if (y1 - y0 < 1e-9) y1 = y0 + 1;
  const yt = niceTicks(y0, y1), xt = niceTicks(x0, x1, 6);
  y0 = Math.min(y0, yt[0]); y1 = Math.max(y1, yt[yt.length - 1]);
  const X = (v) => m.l + ((v - x0) / (x1 - x0 || 1)) * (W - m.l - m.r);
  const Y = (v) => H - m.b - ((v - y0) / (y1 - y0)) * (H - m.t - m.b);
  const summary = series.filter((s) => s.points.length)
    .map((s) => `${s.name} ${fmt.num(s.points[s.points.length - 1][1])} at step ${s.points[s.points.length - 1][0]}`)
    .join("; ");
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${summary}`, class: "chart-svg" });
  svg.append(el("title", { text: summary }));
  for (const v of yt) {
    svg.append(el("line", { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v), class: "grid" }));
    svg.append(el("text", { x: m.l - 6, y: Y(v) + 4, "text-anchor": "end", class: "tick", text: fmt.num(v, 3) }));
  }
  for (const v of xt) {
    svg.append(el("text", { x: X(v), y: H - m.b + 16, "text-anchor": "middle", class: "tick", text: fmt.num(v, 1) }));
  }
  svg.append(el("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, class: "axis" }));
  svg.append(el("text", { x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle", class: "axis-label", text: xLabel }));
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const color = COLORS[i % COLORS.length];
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
    svg.append(el("path", { d, fill: "none", stroke: color, "stroke-width": 2, class: "series",
      "data-series": s.name, "data-points": s.points.length }));
    if (s.dots || s.points.length === 1) {
      for (const p of s.points) svg.append(el("circle", { cx: X(p[0]), cy: Y(p[1]), r: 3, fill: color }));
    }
  });
  const legend = el("ul", { class: "legend" }, series.filter((s) => s.points.length).map((s) => {
    const i = series.indexOf(s);
    const lastPoint = s.points[s.points.length - 1];
    return el("li", {}, el("span", { class: "swatch", style: `background:${COLORS[i % COLORS.length]}` }),
      `${s.name}: ${fmt.num(lastPoint[1])}`);
  }));
  container.append(svg, legend);
}

// Horizontal bars, one per label, largest first (HTML rather than SVG, so that the names stay
// readable text at any width).
function labelBars(counts, caption) {
  const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
  const total = entries.reduce((s, e) => s + e[1], 0) || 1;
  const max = Math.max(...entries.map((e) => e[1]), 1);
  return el("ol", { class: "dist", "aria-label": `${caption}: ${entries.map(([k, v]) => `${k} ${v}`).join(", ")}` },
    entries.map(([name, n]) => {
      const fill = el("span", { class: "bar-fill" });
      fill.style.width = `${((100 * n) / max).toFixed(1)}%`;
      return el("li", {}, el("span", { class: "dist-name", title: name, text: name }), el("span", { class: "bar-track" }, fill),
        el("span", { class: "dist-count", text: `${n.toLocaleString("en")} · ${((100 * n) / total).toFixed(1)}%` }));
    }));
}

function table(rows, columns, highlight = []) {
  if (!rows.length) return el("p", { class: "hint", text: "No rows." });
  columns = columns || [...new Set(rows.flatMap((r) => Object.keys(r)))];
  return el("table", {},
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col", class: highlight.includes(c) ? "hl" : null, text: c })))),
    el("tbody", {}, rows.map((r) => el("tr", {}, columns.map((c) => {
      const v = r[c];
      return el("td", { class: highlight.includes(c) ? "hl" : null, "data-label": c,
        text: v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v) });
    })))));
}

function progressBar(job) {
  const p = job.progress || {};
  const total = p.total_steps, step = p.step || 0;
  let pct = total ? Math.min(100, (100 * step) / total) : 0;
  let text;
  if (job.state === "succeeded") {
    pct = 100;
    text = total && step < total ? `done: ${step} of ${total} steps (${(job.stop_reason || "").replace(/_/g, " ")})`
      : `done: ${step} / ${total ?? step} steps`;
  } else if (job.state === "queued") {
    text = job.queue_position ? `queued, position ${job.queue_position}` : "queued";
  } else if (!total) {
    text = job.state === "running" ? "starting…" : job.state;
  } else {
    text = `${step} / ${total} steps`;
    if (job.state === "running" && p.eta_s !== undefined && p.eta_s !== null) text += ` · ETA ${fmt.duration(p.eta_s)}`;
    if (job.state !== "running") text += ` · ${job.state}`;
  }
  const rounded = Math.round(pct);
  const fill = el("div", { class: "fill" });
  fill.style.width = `${pct}%`;
  return el("div", { class: `progress ${job.state}`, role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
    "aria-valuenow": rounded, "aria-valuetext": text, "aria-label": `Progress of ${job.id}` },
  fill, el("span", { class: "progress-text", text: `${rounded}% · ${text}` }));
}

// ---- metrics: each task has its own, some of them lower-is-better ----------------------------------

const METRIC_NAMES = { accuracy: "accuracy", macro_f1: "macro-F1", weighted_f1: "weighted-F1", loss: "loss", ece: "ECE",
  micro_f1: "micro-F1", samples_f1: "samples-F1", subset_accuracy: "subset accuracy", hamming_loss: "Hamming loss",
  mae: "MAE", rmse: "RMSE", r2: "R²", pearson: "Pearson", spearman: "Spearman" };
// for jobs that ended before their metrics said which are lower-is-better
const LOWER_IS_BETTER = ["loss", "ece", "mae", "rmse", "hamming_loss"];
const SINGLE_LABEL_HEADLINE = ["accuracy", "macro_f1", "weighted_f1", "loss"];
// the validation curves drawn while a job trains, by task
const CURVES = { single_label: ["accuracy", "macro_f1", "weighted_f1"], multi_label: ["macro_f1", "micro_f1", "samples_f1"],
  regression: ["rmse", "mae"] };
const metricName = (k) => METRIC_NAMES[k] || k.replace(/_/g, "-");
const direction = (lower) => (lower ? "lower is better" : "higher is better");

// The task of a set of validation numbers (a job's log does not name it).
const taskOf = (m) => ("rmse" in m ? "regression" : "micro_f1" in m ? "multi_label" : "single_label");

function bestText(job) {
  const best = (job.progress && job.progress.best) || (job.metrics && job.metrics.best);
  if (!best) return "–";
  const lower = best.lower_is_better ?? LOWER_IS_BETTER.includes(best.metric);
  return `${best.metric.replace(/_/g, "-")} ${fmt.num(best.value, 4)} (${direction(lower)}, step ${best.step})`;
}

// A table of each split's headline metrics (test first), every column marked ↓ or ↑.
function metricsTable(splits, headline, lower) {
  headline = headline && headline.length ? headline : SINGLE_LABEL_HEADLINE;
  lower = lower || LOWER_IS_BETTER;
  const names = Object.keys(splits || {}).sort((a, b) => (b === "test") - (a === "test"));
  if (!names.length) return el("p", { class: "hint", text: "No metrics." });
  const column = (k) => `${metricName(k)} ${lower.includes(k) ? "↓" : "↑"}`;
  // A value with its 95% interval, as the run's report writes it (3 decimals when narrower than 5 points).
  const shown = (m, k) => {
    const ci = m.intervals && m.intervals[k];
    if (!ci || typeof m[k] !== "number") return fmt.num(m[k]);
    const d = ci[1] - ci[0] < 0.05 ? 3 : 2;
    return `${m[k].toFixed(4)} [${ci[0].toFixed(d)}, ${ci[1].toFixed(d)}]`;
  };
  const rows = names.map((split) => Object.fromEntries([["split", split], ["examples", fmt.num(splits[split].num_examples)],
    ...headline.map((k) => [column(k), shown(splits[split], k)])]));
  const intervals = names.some((split) => splits[split].intervals);
  return el("div", { class: "metrics" }, el("div", { class: "table-wrap" }, table(rows, ["split", "examples", ...headline.map(column)])),
    el("p", { class: "hint", text: "↓ lower is better · ↑ higher is better"
      + (intervals ? " · [low, high]: 95% bootstrap interval over the split's examples" : "") }));
}

// What a model answers, in a few words: its labels, or the number it predicts.
function answersText(model, list = false) {
  const labels = model.labels || [];
  if (model.task === "regression") return `predicts ${labels[0] || "a value"} (a number)`;
  const shown = list ? `: ${labels.slice(0, 12).join(", ")}${labels.length > 12 ? ", …" : ""}` : "";
  return `${labels.length} labels${model.task === "multi_label" ? ", any number per text" : ""}${shown}`;
}

const badge = (state) => el("span", { class: `badge ${state}`, text: state });

// ---- views -----------------------------------------------------------------------------------

let cleanup = [];
let me = null;
let datasetNames = {};

function mount(templateId) {
  const main = $("#main");
  main.replaceChildren($(templateId).content.cloneNode(true));
  return main;
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  me = null;
  $("#nav").hidden = true;
  $("#who").hidden = true;
  const wanted = location.hash && !location.hash.startsWith("#/sign-in") ? location.hash : "#/jobs";
  sessionStorage.setItem("textft.after", wanted);
  showSignIn(message);
}

function showSignIn(message) {
  cleanup.forEach((f) => f());
  cleanup = [];
  if (location.hash !== "#/sign-in") history.replaceState(null, "", "#/sign-in");
  document.title = "Sign in · textft";
  const main = mount("#t-sign-in");
  const form = $("#sign-in-form", main);
  const input = $("#key", main);
  if (message) { $(".field-error", form).textContent = message; form.querySelector(".field").classList.add("invalid"); }
  input.focus();
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearProblems(form);
    const key = input.value.trim();
    if (!key) { showProblems(form, new ApiError(0, { error: "enter the API key", problems: [{ field: "key", message: "Enter the API key." }] })); return; }
    try {
      me = await api("/v1/me", { key });
    } catch (e) {
      const message = e.status === 401 ? `Wrong key: ${e.message}` : e.message;
      showProblems(form, new ApiError(e.status, { error: message, problems: [{ field: "key", message }] }));
      return;
    }
    sessionStorage.setItem(KEY, key);
    const after = sessionStorage.getItem("textft.after") || "#/jobs";
    sessionStorage.removeItem("textft.after");
    location.hash = after;
  });
}

async function loadDatasetNames() {
  const list = await api("/v1/datasets");
  datasetNames = Object.fromEntries(list.map((d) => [d.id, d.name]));
  return list;
}

// -- datasets

async function viewDatasets(main) {
  document.title = "Datasets · textft";
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
      const peek = await api("/v1/datasets/columns", { method: "POST", form: body });
      for (const [id, suggested] of [["text_column", peek.suggested.text_column], ["label_column", peek.suggested.label_column]]) {
        const select = $(`#${id}`, main);
        select.replaceChildren(...peek.columns.map((c) => el("option", { value: c, text: c, selected: c === suggested })));
      }
      const pairSuggested = peek.suggested.text_pair_column || "";
      $("#text_pair_column", main).replaceChildren(el("option", { value: "", text: "none: single texts", selected: !pairSuggested }),
        ...peek.columns.map((c) => el("option", { value: c, text: c, selected: c === pairSuggested })));
      $("#ds-name", main).value = file.name;
      const render = () => $("#peek-preview", main).replaceChildren(
        table(peek.rows, peek.columns, ["text_column", "text_pair_column", "label_column"].map((f) => $(`#${f}`, main).value).filter(Boolean)));
      render();
      for (const f of ["text_column", "text_pair_column", "label_column"]) $(`#${f}`, main).onchange = render;
      details.hidden = false;
    } catch (e) {
      if (e.name === "AbortError") return;
      showProblems(form, e);
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
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!chosen) { showProblems(form, new ApiError(0, { problems: [{ field: "file", message: "Choose a file first." }] })); return; }
    const body = new FormData();
    body.append("file", chosen);
    body.append("text_column", $("#text_column", main).value);
    body.append("label_column", $("#label_column", main).value);
    if ($("#text_pair_column", main).value) body.append("text_pair_column", $("#text_pair_column", main).value);
    body.append("name", $("#ds-name", main).value);
    body.append("drop_empty", $("#drop_empty", main).checked ? "true" : "false");
    const button = $("#upload-button", main);
    button.disabled = true;
    button.textContent = "Checking…";
    try {
      const ds = await api("/v1/datasets", { method: "POST", form: body });
      toast(`Uploaded ${ds.name}: ${ds.rows.toLocaleString("en")} rows, ${Object.keys(ds.labels).length} labels`);
      form.reset();
      await renderList();
      const card = document.getElementById(`ds-${ds.id}`);
      if (card) card.scrollIntoView({ block: "nearest" });
    } catch (e) {
      showProblems(form, e);
    } finally {
      button.disabled = false;
      button.textContent = "Upload and check";
    }
  });

  async function renderList() {
    const list = await loadDatasetNames();
    const box = $("#dataset-list", main);
    if (!list.length) { box.replaceChildren(el("p", { class: "hint", text: "No datasets yet: upload one above." })); return; }
    box.replaceChildren(...list.slice().reverse().map((ds) => {
      const nLabels = Object.keys(ds.labels).length;
      const kind = { regression: "numeric target (regression)", multi_label: `${nLabels} labels, several per text` }[ds.task] || `${nLabels} labels`;
      const columns = ds.pairs ? `text pairs: ${ds.text_column} + ${ds.text_pair_column}` : `text: ${ds.text_column}`;
      return el("article", { class: "card dataset", id: `ds-${ds.id}`, "aria-labelledby": `ds-${ds.id}-title` },
        el("div", { class: "title-row" },
          el("h3", { id: `ds-${ds.id}-title`, text: ds.name }),
          el("div", { class: "actions" },
            el("a", { class: "button", href: `#/new?dataset=${encodeURIComponent(ds.id)}`, text: "New job",
              "aria-label": `New job on ${ds.name}` }),
            el("button", { type: "button", class: "quiet", "aria-label": `Delete dataset ${ds.name}`, text: "Delete",
              onclick: async () => {
                if (!confirm(`Delete the dataset ${ds.name}?`)) return;
                try { await api(`/v1/datasets/${ds.id}`, { method: "DELETE" }); toast(`Deleted ${ds.name}`); renderList(); }
                catch (e) { toast(e.message, "error"); }
              } }))),
        el("p", { class: "meta", text: `${ds.id} · ${ds.rows.toLocaleString("en")} rows · ${kind} · ${ds.format} · ${fmt.bytes(ds.size_bytes)} · ${columns} · label: ${ds.label_column} · ${fmt.when(ds.created_at)}` }),
        el("div", { class: "dataset-body" },
          el("figure", { class: "label-chart" }, el("figcaption", { text: "Label distribution" }), labelBars(ds.labels, "Label distribution")),
          el("div", { class: "preview" }, el("h4", { text: "First rows" }),
            el("div", { class: "table-wrap" }, table(ds.preview, ds.pairs ? ["text", "text_pair", "label"] : null)))));
    }));
  }
  await renderList();
}

// -- new job

function parseExtra(text) {
  const overrides = {}, problems = [];
  text.split("\n").forEach((line, i) => {
    line = line.trim();
    if (!line || line.startsWith("#")) return;
    const eq = line.indexOf("=");
    if (eq < 1) { problems.push(`line ${i + 1}: expected section.key=value, got '${line}'`); return; }
    const key = line.slice(0, eq).trim(), raw = line.slice(eq + 1).trim();
    let value = raw;
    try { value = JSON.parse(raw); } catch (_) { /* a plain string such as head+tail */ }
    overrides[key] = value;
  });
  return { overrides, problems };
}

const RECIPE_SHOWN = ["train.lr", "train.head_lr", "train.epochs", "train.batch_size", "train.eval_every_steps",
  "train.warmup_ratio", "data.max_length"];

async function viewNewJob(main, params) {
  document.title = "New job · textft";
  const form = $("#job-form", main);
  const [datasets, presets, launches] = await Promise.all([loadDatasetNames(), api("/v1/presets"), api("/v1/accelerate-configs")]);
  const dsOptions = (blank) => [el("option", { value: "", text: blank }),
    ...datasets.slice().reverse().map((d) => el("option", { value: d.id, text: `${d.name} (${d.rows} rows · ${d.id})` }))];
  $("#dataset", main).replaceChildren(...dsOptions("choose a dataset"));
  $("#validation_dataset", main).replaceChildren(...dsOptions("none: hold out part of the training data"));
  $("#test_dataset", main).replaceChildren(...dsOptions("none"));
  if (params.get("dataset")) $("#dataset", main).value = params.get("dataset");
  const presetByName = Object.fromEntries(presets.map((p) => [p.name, p]));
  $("#config", main).replaceChildren(...presets.map((p) => el("option", { value: p.name, text: p.name, selected: p.name === "quickstart" })));
  $("#accelerate_config", main).replaceChildren(el("option", { value: "", text: "one process (default)" }),
    ...launches.map((a) => el("option", { value: a.name, text: `${a.name}: ${a.num_processes} process(es), ${a.gpus} GPU(s)${a.num_machines > 1 ? `, ${a.num_machines} machines` : ""}` })));
  if (!datasets.length) $("#recipe-status", main).replaceChildren("No datasets yet: ", el("a", { href: "#/datasets", text: "upload one first" }), ".");

  const edited = new Set();
  let recipeValues = {};
  function presetChanged() {
    const p = presetByName[$("#config", main).value];
    $("#config-help", main).textContent = p ? p.description : "";
    $("#backbone", main).placeholder = p ? p.model : "";
    if (!edited.has("backbone")) $("#backbone", main).value = p ? p.model : "";
    if (!edited.has("transfer")) $("#transfer", main).value = (p && p.settings["model.transfer"]) || "full";
    $("#transfer-help", main).textContent = `Preset default: ${(p && p.settings["model.transfer"]) || "full"}`;
  }
  presetChanged();

  function request() {
    const p = presetByName[$("#config", main).value];
    const overrides = {};
    const backbone = $("#backbone", main).value.trim();
    if (backbone && (!p || backbone !== p.model)) overrides["model.name_or_path"] = backbone;
    const transfer = $("#transfer", main).value;
    if (transfer !== ((p && p.settings["model.transfer"]) || "full")) overrides["model.transfer"] = transfer;
    const extra = parseExtra($("#extra", main).value);
    Object.assign(overrides, extra.overrides);
    for (const input of main.querySelectorAll("#recipe input[data-key]")) {
      const key = input.dataset.key;
      if (edited.has(key) && input.value.trim() !== String(recipeValues[key])) {
        let v = input.value.trim();
        try { v = JSON.parse(v); } catch (_) { /* auto, or a string */ }
        overrides[key] = v;
      }
    }
    const body = { dataset: $("#dataset", main).value, config: $("#config", main).value, overrides };
    for (const k of ["validation_dataset", "test_dataset", "accelerate_config"]) if ($(`#${k}`, main).value) body[k] = $(`#${k}`, main).value;
    return { body, extraProblems: extra.problems };
  }

  const aliases = { "overrides.model.name_or_path": "overrides.model.name_or_path", body: "overrides" };
  function fieldAliases() {
    const a = { ...aliases };
    for (const k of Object.keys(parseExtra($("#extra", main).value).overrides)) {
      if (!main.querySelector(`[data-field="overrides.${CSS.escape(k)}"]`)) a[`overrides.${k}`] = "overrides";
    }
    return a;
  }

  let recipeCall = 0, timer = null;
  async function refreshRecipe() {
    const { body, extraProblems } = request();
    const status = $("#recipe-status", main);
    if (!body.dataset) { $("#recipe", main).replaceChildren(); $("#plan", main).textContent = ""; return; }
    if (extraProblems.length) { showProblems(form, new ApiError(0, { problems: extraProblems.map((m) => ({ field: "overrides", message: m })) })); return; }
    const call = ++recipeCall;
    status.textContent = "Asking the service for its recipe…";
    try {
      const r = await api("/v1/recipe", { method: "POST", json: body });
      if (call !== recipeCall) return;
      clearProblems(form);
      renderRecipe(r);
      status.textContent = "Values textft chose for this data and backbone, with why. Change any of them to override it.";
      $("#plan", main).textContent = `${r.plan.total_steps} steps, ${r.plan.steps_per_epoch} per epoch · ${r.facts.n_train} training and ${r.facts.n_validation} validation examples`;
    } catch (e) {
      if (call !== recipeCall) return;
      status.textContent = "The service refused these settings:";
      showProblems(form, e, fieldAliases());
    }
  }
  const schedule = () => { clearTimeout(timer); timer = setTimeout(refreshRecipe, 350); };
  cleanup.push(() => clearTimeout(timer));

  function renderRecipe(r) {
    const box = $("#recipe", main);
    const rows = [];
    const keys = [...new Set([...Object.keys(r.auto), ...RECIPE_SHOWN.filter((k) => k in r.settings)])];
    for (const key of keys) {
      const auto = r.auto[key];
      const value = auto ? auto.value : r.settings[key];
      const previous = box.querySelector(`input[data-key="${CSS.escape(key)}"]`);
      recipeValues[key] = value;
      const id = `rec-${key.replace(/\W/g, "-")}`;
      const overridden = key in (request().body.overrides) && !edited.has(key);
      const reason = auto ? auto.reason : overridden ? "your setting" : `set by the preset '${r.config}'`;
      const input = el("input", { id, type: "text", "data-key": key, value: edited.has(key) && previous ? previous.value : fmt.num(value, 6),
        "aria-describedby": `${id}-why overrides.${key}-error`, spellcheck: "false", class: auto ? "auto" : null });
      input.addEventListener("input", () => { edited.add(key); schedule(); });
      rows.push(el("div", { class: "field recipe-row", "data-field": `overrides.${key}` },
        el("label", { for: id, text: key }), input,
        el("p", { class: "why", id: `${id}-why` }, auto ? el("span", { class: "tag", text: "auto" }) : null, reason),
        el("p", { class: "field-error", id: `overrides.${key}-error`, role: "alert" })));
    }
    box.replaceChildren(...rows);
  }

  $("#backbone", main).addEventListener("input", () => { edited.add("backbone"); schedule(); });
  $("#transfer", main).addEventListener("change", () => { edited.add("transfer"); schedule(); });
  $("#config", main).addEventListener("change", () => { presetChanged(); schedule(); });
  for (const id of ["dataset", "validation_dataset", "test_dataset", "accelerate_config"]) $(`#${id}`, main).addEventListener("change", schedule);
  $("#extra", main).addEventListener("input", schedule);
  if ($("#dataset", main).value) schedule();

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearTimeout(timer);
    const { body, extraProblems } = request();
    if (extraProblems.length) { showProblems(form, new ApiError(0, { problems: extraProblems.map((m) => ({ field: "overrides", message: m })) })); return; }
    if (!body.dataset) { showProblems(form, new ApiError(0, { problems: [{ field: "dataset", message: "Choose the training dataset." }] })); return; }
    const button = $("#start-job", main);
    button.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", json: body });
      toast(`Started ${job.id}`);
      location.hash = `#/jobs/${job.id}`;
    } catch (e) {
      showProblems(form, e, fieldAliases());
    } finally {
      button.disabled = false;
    }
  });
}

// -- jobs

async function viewJobs(main) {
  document.title = "Jobs · textft";
  const box = $("#job-list", main);
  let stopped = false, timer = null;
  cleanup.push(() => { stopped = true; clearTimeout(timer); });
  async function refresh() {
    try {
      const [jobs] = await Promise.all([api("/v1/jobs"), loadDatasetNames()]);
      if (stopped) return;
      if (!jobs.length) {
        box.replaceChildren(el("p", { class: "hint" }, "No jobs yet. ", el("a", { href: "#/new", text: "Start one" }), "."));
      } else {
        box.replaceChildren(el("table", { class: "jobs" },
          el("thead", {}, el("tr", {}, ["Job", "Dataset", "Preset", "State", "Progress", "Best", "Created"].map((h) => el("th", { scope: "col", text: h })))),
          el("tbody", {}, jobs.slice().reverse().map((j) => el("tr", { id: `job-row-${j.id}` },
            el("td", { "data-label": "Job" }, el("a", { href: `#/jobs/${j.id}`, text: j.id })),
            el("td", { "data-label": "Dataset", text: datasetNames[j.dataset] || j.dataset }),
            el("td", { "data-label": "Preset", text: j.config }),
            el("td", { "data-label": "State" }, badge(j.state)),
            el("td", { "data-label": "Progress", class: "progress-cell" }, progressBar(j)),
            el("td", { "data-label": "Best", text: bestText(j) }),
            el("td", { "data-label": "Created", text: fmt.when(j.created_at) }))))));
      }
      if (jobs.some((j) => ACTIVE.includes(j.state))) timer = setTimeout(refresh, 1500);
      else timer = setTimeout(refresh, 10000);
    } catch (e) {
      if (!stopped) { toast(e.message, "error"); timer = setTimeout(refresh, 5000); }
    }
  }
  await refresh();
}

async function viewJob(main, id) {
  document.title = `${id} · textft`;
  const abort = new AbortController();
  cleanup.push(() => abort.abort());
  let job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
  await loadDatasetNames();
  $("#job-title", main).textContent = `Job ${job.id}`;
  const curves = { loss: [], evalLoss: [] };  // and one per validation metric of the task, as they come
  let task = job.metrics && job.metrics.task;
  let reportShown = false, logTimer = null, refreshTimer = null, drawPending = false;
  cleanup.push(() => { clearTimeout(logTimer); clearTimeout(refreshTimer); });

  function draw() {
    drawPending = false;
    // both charts span the planned steps: they line up, and an early stop shows as one
    const xMax = (job.progress && job.progress.total_steps) || 0;
    lineChart($("#loss-chart", main), { xLabel: "optimizer step", xMax, empty: "The loss appears here from the first logged step.",
      series: [{ name: "training loss", points: curves.loss }, { name: "validation loss", points: curves.evalLoss, dots: true }] });
    // scores live in [0, 1]; errors (regression) in the label's units
    const keys = CURVES[task || "single_label"], lower = keys.every((k) => LOWER_IS_BETTER.includes(k));
    $("#metric-title", main).textContent = task ? `Validation metrics (${direction(lower)})` : "Validation metrics";
    lineChart($("#metric-chart", main), { xLabel: "optimizer step", xMax, yMin: 0, yMax: lower ? undefined : 1,
      empty: "Validation scores appear here after the first evaluation.",
      series: keys.map((k) => ({ name: metricName(k), points: curves[k] || [], dots: true })) });
  }
  const redraw = () => { if (!drawPending) { drawPending = true; requestAnimationFrame(draw); } };

  function render() {
    task = task || (job.metrics && job.metrics.task);
    $("#job-state", main).replaceWith(Object.assign(badge(job.state), { id: "job-state" }));
    const parts = [`preset ${job.config}`, `data ${datasetNames[job.dataset] || job.dataset}`];
    if (job.validation_dataset) parts.push(`validation ${datasetNames[job.validation_dataset] || job.validation_dataset}`);
    if (job.test_dataset) parts.push(`test ${datasetNames[job.test_dataset] || job.test_dataset}`);
    parts.push(`created ${fmt.when(job.created_at)}`);
    if (job.started_at) parts.push(`started ${fmt.when(job.started_at)}`);
    if (job.finished_at) parts.push(`finished ${fmt.when(job.finished_at)}`);
    if (job.attempt > 1) parts.push(`attempt ${job.attempt}`);
    $("#job-meta", main).textContent = parts.join(" · ");
    const overrides = Object.entries(job.overrides || {});
    $("#job-overrides", main).hidden = !overrides.length;
    $("#job-overrides", main).replaceChildren(el("span", { class: "opt", text: "Settings: " }),
      ...overrides.map(([k, v]) => el("code", { text: `${k}=${typeof v === "string" ? v : JSON.stringify(v)}` })));
    $("#job-progress", main).replaceChildren(progressBar(job));
    const p = job.progress || {};
    const stats = [["Step", p.total_steps ? `${p.step || 0} / ${p.total_steps}` : "–"], ["Epoch", fmt.num(p.epoch, 2)],
      ["Loss", fmt.num(p.loss)], ["Learning rate", fmt.num(p.lr)], ["Samples/s", fmt.num(p.samples_per_s, 1)],
      ["ETA", job.state === "running" ? fmt.duration(p.eta_s) : "–"], ["Best", bestText(job)]];
    if (job.stop_reason) stats.push(["Stopped", job.stop_reason.replace(/_/g, " ")]);
    if (job.metrics && job.metrics.task) stats.push(["Task", job.metrics.task.replace(/_/g, "-")]);
    $("#job-stats", main).replaceChildren(...stats.flatMap(([k, v]) => [el("div", {}, el("dt", { text: k }), el("dd", { text: v }))]));
    const m = job.metrics;
    $("#job-metrics", main).replaceChildren(m && m.splits ? metricsTable(m.splits, m.headline, m.lower_is_better) : "");
    const active = ACTIVE.includes(job.state);
    const cancel = $("#cancel-job", main);
    cancel.hidden = !active;
    cancel.disabled = job.cancel_requested;
    cancel.textContent = job.cancel_requested ? "Cancelling…" : "Cancel job";
    $("#download-model", main).hidden = job.state !== "succeeded";
    const tryLink = $("#try-model", main);
    tryLink.hidden = job.state !== "succeeded";
    tryLink.href = `#/models/${job.id}`;
    $("#delete-job", main).hidden = active;
    const error = $("#job-error", main);
    error.hidden = !job.error;
    error.textContent = job.error ? `Failed: ${job.error}` : "";
    if (!active && !reportShown && job.state !== "queued") showReport();
  }

  async function showReport() {
    reportShown = true;
    try {
      const html = await api(`/v1/jobs/${encodeURIComponent(id)}/report`, { as: "text", signal: abort.signal });
      const frame = $("#report", main);
      frame.srcdoc = html;
      $("#report-section", main).hidden = false;
      $("#open-report", main).onclick = () => {
        const url = URL.createObjectURL(new Blob([html], { type: "text/html" }));
        window.open(url, "_blank", "noopener");
        setTimeout(() => URL.revokeObjectURL(url), 60_000);
      };
    } catch (e) {
      if (e.status !== 404 && e.name !== "AbortError") toast(e.message, "error");
    }
  }

  async function refreshLog() {
    try {
      const text = await api(`/v1/jobs/${encodeURIComponent(id)}/log?lines=200`, { as: "text", signal: abort.signal });
      const pre = $("#job-log", main);
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      pre.textContent = text || (job.state === "queued" ? "The job has not started yet." : "No output yet.");
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    } catch (e) { /* shown on the next refresh */ }
    if (ACTIVE.includes(job.state) && !abort.signal.aborted) logTimer = setTimeout(refreshLog, 2000);
  }

  async function refreshJob() {
    refreshTimer = null;
    try {
      const total = job.progress && job.progress.total_steps;
      job = await api(`/v1/jobs/${encodeURIComponent(id)}`, { signal: abort.signal });
      render();
      if ((job.progress && job.progress.total_steps) !== total) redraw();
    } catch (e) { /* the next event retries */ }
  }
  const refreshSoon = () => { if (!refreshTimer) refreshTimer = setTimeout(refreshJob, 500); };

  function onEvent(type, data) {
    if (type === "log") {
      if (typeof data.loss === "number") curves.loss.push([data.step, data.loss]);
      if (data.eval) {
        if (typeof data.eval.loss === "number") curves.evalLoss.push([data.step, data.eval.loss]);
        task = task || taskOf(data.eval);
        for (const k of CURVES[task]) if (typeof data.eval[k] === "number") (curves[k] = curves[k] || []).push([data.step, data.eval[k]]);
      }
      redraw();
      refreshSoon();
    } else if (type === "state") {
      if (data.state === "running" && data.attempt > 1) {
        // a resumed attempt logs again from its checkpoint's step: keep the curves monotone
        for (const k of Object.keys(curves)) curves[k] = [];
      }
      refreshSoon();
      if (!ACTIVE.includes(data.state)) { clearTimeout(logTimer); refreshLog(); }
      else if (!logTimer) refreshLog();
    } else if (type === "plan") {
      refreshSoon();
    }
  }

  $("#cancel-job", main).addEventListener("click", () => $("#cancel-dialog", main).showModal());
  $("#cancel-dialog", main).addEventListener("close", async () => {
    if ($("#cancel-dialog", main).returnValue !== "cancel") return;
    try {
      job = await api(`/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
      toast(job.state === "cancelled" ? `Cancelled ${id}` : `Cancelling ${id}: it stops after its current step`);
      render();
    } catch (e) { toast(e.message, "error"); }
  });
  $("#download-model", main).addEventListener("click", async (ev) => {
    const b = ev.currentTarget;
    b.disabled = true;
    b.textContent = "Preparing download…";
    try { await saveBlob(`/v1/models/${encodeURIComponent(id)}/download`, `${id}.tar.gz`); } catch (e) { toast(e.message, "error"); }
    b.disabled = false;
    b.textContent = "Download model (.tar.gz)";
  });
  $("#delete-job", main).addEventListener("click", async () => {
    if (!confirm(`Delete ${id}, its files and its model?`)) return;
    try { await api(`/v1/jobs/${encodeURIComponent(id)}`, { method: "DELETE" }); toast(`Deleted ${id}`); location.hash = "#/jobs"; }
    catch (e) { toast(e.message, "error"); }
  });

  let width = 0;
  const onResize = () => { const w = $("#loss-chart", main).clientWidth; if (w !== width) { width = w; redraw(); } };
  window.addEventListener("resize", onResize);
  cleanup.push(() => window.removeEventListener("resize", onResize));

  render();
  draw();
  refreshLog();
  followEvents(id, onEvent, abort.signal).then(() => { if (!abort.signal.aborted) { refreshJob(); refreshLog(); } });
}

// -- models

async function viewModels(main) {
  document.title = "Models · textft";
  const models = await api("/v1/models");
  await loadDatasetNames();
  const box = $("#model-list", main);
  if (!models.length) { box.replaceChildren(el("p", { class: "hint", text: "No models yet: a job that succeeds becomes one." })); return; }
  box.replaceChildren(...models.slice().reverse().map((m) => el("article", { class: "card" },
    el("div", { class: "title-row" }, el("h2", { text: m.id }),
      el("div", { class: "actions" },
        el("a", { class: "button primary", href: `#/models/${m.id}`, text: "Try it" }),
        el("a", { class: "button quiet", href: `#/jobs/${m.id}`, text: "Job" }))),
    el("p", { class: "meta", text: `${m.base_model || "?"} · preset ${m.config} · data ${datasetNames[m.dataset] || m.dataset} · ${answersText(m)}${m.pairs ? " · reads text pairs" : ""} · ${fmt.bytes(m.size_bytes)} · ${fmt.when(m.created_at)}` }),
    metricsTable(m.metrics, m.headline, m.lower_is_better), versusBest(m))));
}

// How a model stands against the best of the models scored on the same test set (a paired test).
function versusBest(m) {
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

function longTextNote(input, model) {
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

function scoreRow(label, score, attrs = {}) {
  const bar = el("span", { class: "bar-fill" });
  bar.style.width = `${(100 * score).toFixed(1)}%`;
  return el("li", attrs, el("span", { class: "topk-label", text: label }), el("span", { class: "bar-track" }, bar),
    el("span", { class: "topk-score", text: fmt.pct(score) }));
}

// How the model turns scores into an answer: an out-of-scope threshold, or a threshold per label.
function decisionText(model) {
  if (model.task === "regression") return null;
  if (model.task === "multi_label") {
    const t = model.thresholds;
    return t ? `decision thresholds chosen on ${t.split || "validation"} (${(t.tuning || "").replace(/_/g, "-")}, for ${metricName(t.metric || "macro_f1")})`
      : "every label at the 0.5 threshold (textft calibrate tunes them)";
  }
  const oos = model.out_of_scope;
  return oos ? `out-of-scope threshold ${fmt.num(oos.threshold)} (${oos.method}) answers '${oos.label}'` : "no out-of-scope threshold (textft calibrate sets one)";
}

const thresholdOf = (model, label) => (model.thresholds && model.thresholds.values ? model.thresholds.values[label] : 0.5);

function singleLabelView(p, model) {
  const oos = model.out_of_scope;
  const rows = p.top_k || [{ label: p.model_label || p.label, score: p.score }];
  const verdict = p.out_of_scope === undefined ? null
    : p.out_of_scope
      ? el("p", { class: "verdict out", text: `Out of scope: confidence below the threshold ${fmt.num(oos && oos.threshold)} (${(oos && oos.method) || "msp"}); the model would have said '${p.model_label}'.` })
      : el("p", { class: "verdict in", text: `In scope: confidence above the threshold ${fmt.num(oos && oos.threshold)} (${(oos && oos.method) || "msp"}).` });
  return [el("p", { class: "answer" }, el("span", { class: "label-name", text: p.label }), el("span", { class: "score", text: fmt.pct(p.score) })),
    verdict,
    el("ol", { class: "topk", "aria-label": "Most likely labels" }, rows.map((r) => scoreRow(r.label, r.score)))];
}

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

function regressionView(p, model) {
  return [el("p", { class: "answer" }, el("span", { class: "label-name value", text: fmt.num(p.value, 4) }),
    el("span", { class: "score", text: `predicted ${(model.labels || [])[0] || "value"}` }))];
}

function predictionView(p, model) {
  const view = { multi_label: multiLabelView, regression: regressionView }[model.task] || singleLabelView;
  return el("div", { class: "prediction" }, view(p, model), el("p", { class: "hint long-text", text: longTextNote(p.input, model) }));
}

// The batch table's answer columns, the status line's summary and the CSV's columns, by task.
function batchAnswers(model) {
  const target = `predicted ${(model.labels || [])[0] || "value"}`;
  const q = (v) => `"${String(v ?? "").replace(/"/g, '""')}"`;
  if (model.task === "regression") {
    return { cells: (p) => ({ [target]: fmt.num(p.value, 4) }), head: ["value"], csv: (p) => [p.value],
      summary(results) {
        // a loop, not Math.min(...values): a large file would overflow the call's argument list
        let lo = Infinity, hi = -Infinity, sum = 0;
        for (const p of results) { lo = Math.min(lo, p.value); hi = Math.max(hi, p.value); sum += p.value; }
        return `${target} from ${fmt.num(lo, 3)} to ${fmt.num(hi, 3)}, mean ${fmt.num(sum / (results.length || 1), 3)}`;
      } };
  }
  if (model.task === "multi_label") {
    return { cells: (p) => ({ labels: p.labels.length ? p.labels.map((l) => l.label).join(", ") : "none",
      scores: p.labels.map((l) => fmt.pct(l.score)).join(", ") }),
    head: ["labels", "scores"], csv: (p) => [q(p.labels.map((l) => l.label).join(";")), q(p.labels.map((l) => l.score.toFixed(4)).join(";"))],
    summary(results) {
      const counts = {};
      results.forEach((p) => { for (const l of p.labels.length ? p.labels : [{ label: "none" }]) counts[l.label] = (counts[l.label] || 0) + 1; });
      return Object.entries(counts).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(", ");
    } };
  }
  return { cells: (p) => ({ label: p.label, score: fmt.pct(p.score),
    ...(p.out_of_scope !== undefined ? { "out of scope": p.out_of_scope ? `yes (model: ${p.model_label})` : "no" } : {}) }),
  head: ["label", "score", "out_of_scope", "model_label"], csv: (p) => [q(p.label), p.score, p.out_of_scope ?? "", q(p.model_label ?? "")],
  summary(results) {
    const counts = {};
    results.forEach((p) => { counts[p.label] = (counts[p.label] || 0) + 1; });
    return Object.entries(counts).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(", ");
  } };
}

function parseCsv(text, sep) {
  const rows = [];
  let row = [], field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; } else if (c === '"') quoted = false; else field += c;
    } else if (c === '"' && field === "") quoted = true;
    else if (c === sep) { row.push(field); field = ""; }
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field); field = "";
      if (row.length > 1 || row[0] !== "") rows.push(row);
      row = [];
    } else field += c;
  }
  if (field !== "" || row.length) { row.push(field); rows.push(row); }
  return rows;
}

function readTexts(name, text) {
  const ext = name.toLowerCase().split(".").pop();
  if (ext === "txt") return { columns: null, records: text.split(/\r?\n/).filter((l) => l.trim()).map((t) => ({ text: t })) };
  if (ext === "csv" || ext === "tsv") {
    const [head, ...rows] = parseCsv(text, ext === "tsv" ? "\t" : ",");
    if (!head) return { columns: [], records: [] };
    return { columns: head, records: rows.map((r) => Object.fromEntries(head.map((h, i) => [h, r[i] ?? ""]))) };
  }
  const trimmed = text.trim();
  const records = trimmed.startsWith("[") ? JSON.parse(trimmed) : trimmed.split(/\r?\n/).filter((l) => l.trim()).map((l) => JSON.parse(l));
  const columns = [...new Set(records.flatMap((r) => (r && typeof r === "object" ? Object.keys(r) : [])))];
  return { columns, records };
}

async function viewModel(main, id) {
  document.title = `Try ${id} · textft`;
  const model = await api(`/v1/models/${encodeURIComponent(id)}`);
  const limits = me ? me.limits : { max_texts_per_prediction: 64, max_chars_per_text: 20000 };
  $("#model-title", main).textContent = `Try ${model.id}`;
  $("#model-job-link", main).href = `#/jobs/${model.id}`;
  const oos = model.out_of_scope;
  $("#model-meta", main).textContent = [`${model.base_model}`, answersText(model, true),
    model.pairs ? `reads pairs of texts (the second from column ${model.text_pair_column}), ${model.max_length} tokens together` : `reads ${model.max_length} tokens (${model.truncation} truncation for longer texts)`,
    decisionText(model)].filter(Boolean).join(" · ");
  $("#model-metrics", main).replaceChildren(metricsTable(model.metrics, model.headline, model.lower_is_better));
  const topk = $("#top_k", main);
  const n = (model.labels || []).length;
  const choices = [...new Set([1, 2, 3, 5, 10, Math.min(n, 20)].filter((v) => v <= n))].sort((a, b) => a - b);
  topk.replaceChildren(...choices.map((v) => el("option", { value: v, text: v === n ? `all ${v}` : v, selected: v === Math.min(3, n) })));
  if (model.task === "regression") { topk.hidden = true; $("#top_k-label", main).hidden = true; }  // one number: nothing to rank
  if (model.task === "multi_label") $("#top_k-label", main).textContent = "Scores ranked";
  $("#text", main).maxLength = limits.max_chars_per_text;
  if (model.pairs) {  // the model reads two texts together: ask for both
    $("#try-title", main).textContent = "A pair of texts";
    $("#text-label", main).textContent = "First text";
    $("#text_pair-field", main).hidden = false;
    $("#text_pair", main).maxLength = limits.max_chars_per_text;
    $("#batch-title", main).textContent = "A file of text pairs";
    $("label[for=batch-file]", main).replaceChildren("Pairs file ", el("span", { class: "opt", text: "(.csv, .tsv, .jsonl with two text columns)" }));
    $("label[for=batch-column]", main).textContent = "First text column";
    main.querySelectorAll(".batch-pair").forEach((n) => { n.hidden = false; });
  }

  const form = $("#predict-form", main);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearProblems(form);
    const text = $("#text", main).value, pair = $("#text_pair", main).value;
    if (!text.trim()) { showProblems(form, new ApiError(0, { problems: [{ field: "inputs", message: "Type a text to classify." }] })); return; }
    if (model.pairs && !pair.trim()) { showProblems(form, new ApiError(0, { problems: [{ field: "text_pair", message: "This model reads pairs: type the second text too." }] })); return; }
    const button = $("#predict-button", main);
    button.disabled = true;
    try {
      const r = await api(`/v1/models/${encodeURIComponent(id)}/predict?explain=true`, { method: "POST", json: { inputs: model.pairs ? { text, text_pair: pair } : text, top_k: model.task === "regression" ? 1 : +topk.value } });
      $("#prediction", main).replaceChildren(predictionView(r.predictions[0], model));
    } catch (e) {
      showProblems(form, e, { body: "inputs" });
    } finally { button.disabled = false; }
  });
  // Ctrl+Enter predicts from either text box.
  for (const box of ["#text", "#text_pair"]) {
    $(box, main).addEventListener("keydown", (ev) => { if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) form.requestSubmit(); });
  }

  const batch = $("#batch-form", main), fileInput = $("#batch-file", main);
  let parsed = null, results = null;
  fileInput.addEventListener("change", async () => {
    clearProblems(batch);
    parsed = null;
    $("#batch-column-row", main).hidden = true;
    const file = fileInput.files[0];
    if (!file) return;
    try {
      parsed = readTexts(file.name, await file.text());
      if (model.pairs && !parsed.columns) throw new Error("this model reads pairs: give a .csv, .tsv or .jsonl file with two text columns");
    } catch (e) {
      showProblems(batch, new ApiError(0, { problems: [{ field: "batch", message: `could not read ${file.name}: ${e.message}` }] }));
      return;
    }
    if (parsed.columns) {
      const select = $("#batch-column", main);
      const guess = parsed.columns.find((c) => /^(text|sentence|review|content|body|query|utterance|comment)$/i.test(c)) || parsed.columns[0];
      select.replaceChildren(...parsed.columns.map((c) => el("option", { value: c, text: c, selected: c === guess })));
      const pairGuess = parsed.columns.find((c) => /^(text_pair|sentence2|question2|text_b|hypothesis|text2)$/i.test(c))
        || parsed.columns.find((c) => c !== guess);
      $("#batch-pair-column", main).replaceChildren(...parsed.columns.map((c) => el("option", { value: c, text: c, selected: c === pairGuess })));
      $("#batch-column-row", main).hidden = false;
    }
    $("#batch-status", main).textContent = `${parsed.records.length.toLocaleString("en")} ${model.pairs ? "pairs" : "texts"} in ${file.name}`;
  });
  batch.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearProblems(batch);
    if (!parsed) { showProblems(batch, new ApiError(0, { problems: [{ field: "batch", message: "Choose a file of texts first." }] })); return; }
    const column = parsed.columns ? $("#batch-column", main).value : "text";
    const pairColumn = model.pairs ? $("#batch-pair-column", main).value : null;
    const cell = (r, c) => (r && r[c] !== undefined && r[c] !== null ? String(r[c]) : "");
    const texts = parsed.records.map((r) => cell(r, column));
    const pairs = pairColumn ? parsed.records.map((r) => cell(r, pairColumn)) : null;
    const problem = !texts.length ? "the file has no texts"
      : pairColumn === column ? "choose two different columns: the first and the second text"
        : [[texts, column], [pairs || [], pairColumn]].map(([list, c]) => {
          const empty = list.findIndex((t) => !t.trim());
          return empty >= 0 ? `row ${empty + 1} has no text in column '${c}'` : null;
        }).find(Boolean);
    if (problem) {
      showProblems(batch, new ApiError(0, { problems: [{ field: "batch", message: problem }] }));
      return;
    }
    const inputs = pairs ? texts.map((text, i) => ({ text, text_pair: pairs[i] })) : texts;
    const button = $("#batch-button", main);
    button.disabled = true;
    results = [];
    const status = $("#batch-status", main);
    try {
      const step = limits.max_texts_per_prediction;
      for (let i = 0; i < texts.length; i += step) {
        status.textContent = `Predicting ${Math.min(i + step, texts.length)} / ${texts.length}…`;
        const r = await api(`/v1/models/${encodeURIComponent(id)}/predict?explain=true`, { method: "POST", json: { inputs: inputs.slice(i, i + step), top_k: 1 } });
        r.predictions.forEach((p, j) => results.push({ text: texts[i + j], ...(pairs ? { text_pair: pairs[i + j] } : {}), ...p }));
      }
      const short = (t) => (t.length > 160 ? `${t.slice(0, 159)}…` : t);
      const answers = batchAnswers(model);
      const rows = results.map((p) => ({ text: short(p.text), ...(pairs ? { "second text": short(p.text_pair) } : {}), ...answers.cells(p),
        tokens: p.input ? `${p.input.tokens}${p.input.truncated ? ` (${p.input.mode})` : p.input.windows > 1 ? ` (${p.input.windows} windows)` : ""}` : "" }));
      $("#batch-results", main).replaceChildren(table(rows.slice(0, 200)));
      status.textContent = `${results.length} ${model.pairs ? "pairs" : "texts"}: ${answers.summary(results)}${results.length > 200 ? " (first 200 shown; the CSV has all)" : ""}`;
      $("#batch-download", main).hidden = false;
    } catch (e) {
      status.textContent = "";
      showProblems(batch, e, { body: "batch", inputs: "batch" });
    } finally { button.disabled = false; }
  });
  $("#batch-download", main).addEventListener("click", () => {
    const q = (v) => `"${String(v ?? "").replace(/"/g, '""')}"`;
    const answers = batchAnswers(model);
    const lines = [["text", ...(model.pairs ? ["text_pair"] : []), ...answers.head, "tokens"].join(",")]
      .concat(results.map((p) => [q(p.text), ...(model.pairs ? [q(p.text_pair)] : []), ...answers.csv(p), p.input ? p.input.tokens : ""].join(",")));
    const url = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
    const a = el("a", { href: url, download: `${id}-predictions.csv` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  });
}

// ---- routing ---------------------------------------------------------------------------------

const ROUTES = [
  [/^#\/datasets$/, "#t-datasets", viewDatasets],
  [/^#\/new$/, "#t-new-job", viewNewJob],
  [/^#\/jobs$/, "#t-jobs", viewJobs],
  [/^#\/jobs\/([\w-]+)$/, "#t-job", viewJob],
  [/^#\/models$/, "#t-models", viewModels],
  [/^#\/models\/([\w-]+)$/, "#t-model", viewModel],
];

async function route() {
  cleanup.forEach((f) => f());
  cleanup = [];
  if (!sessionStorage.getItem(KEY)) { signOut(); return; }
  if (!me) {
    try { me = await api("/v1/me"); } catch (e) { if (e.status !== 401) toast(e.message, "error"); return; }
  }
  $("#nav").hidden = false;
  $("#who").hidden = false;
  $("#who-name").textContent = `${me.name}${me.admin ? " (admin)" : ""}`;
  const [path, query] = (location.hash || "#/jobs").split("?");
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("#nav a")) {
    const current = path === a.getAttribute("href") || (a.getAttribute("href") !== "#/new" && path.startsWith(`${a.getAttribute("href")}/`));
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  for (const [pattern, template, view] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    const main = mount(template);
    try {
      await view(main, match[1] !== undefined ? match[1] : params, params);
    } catch (e) {
      if (e.name === "AbortError" || e.status === 401) return;
      main.replaceChildren(el("h1", { text: "Something went wrong" }), el("p", { class: "error-box", role: "alert", text: e.message }),
        el("p", {}, el("a", { href: "#/jobs", text: "Back to the jobs" })));
    }
    return;
  }
  location.replace("#/jobs");
}

window.addEventListener("hashchange", () => {
  if (location.hash === "#/sign-in" && sessionStorage.getItem(KEY)) { location.replace("#/jobs"); return; }
  if (location.hash !== "#/sign-in") route();
});
document.addEventListener("DOMContentLoaded", () => {
  $("#sign-out").addEventListener("click", () => { signOut(); toast("Signed out: the key was forgotten by this tab"); });
  route();
});
