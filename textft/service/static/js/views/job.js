// A job's page: its settings, progress and stats, the learning curves streamed over SSE, the metrics
// and run report once it ends, its log, and what can be done with it (cancel, download, try, delete).
import { api, datasetName, loadDatasets, saveBlob } from "../api.js";
import { $, el, toast } from "../dom.js";
import { ACTIVE, followEvents } from "../events.js";
import { fmt } from "../format.js";
import { onLeave } from "../lifecycle.js";
import { bestText, metricsTable } from "../metrics.js";
import { badge, progressBar } from "../widgets.js";
import { Curves } from "./job-curves.js";
import { Deliveries } from "./job-webhooks.js";

function metaText(job) {
  const parts = [`preset ${job.config}`, `data ${datasetName(job.dataset)}`];
  if (job.validation_dataset) parts.push(`validation ${datasetName(job.validation_dataset)}`);
  if (job.test_dataset) parts.push(`test ${datasetName(job.test_dataset)}`);
  parts.push(`created ${fmt.when(job.created_at)}`);
  if (job.started_at) parts.push(`started ${fmt.when(job.started_at)}`);
  if (job.finished_at) parts.push(`finished ${fmt.when(job.finished_at)}`);
  if (job.attempt > 1) parts.push(`attempt ${job.attempt}`);
  return parts.join(" · ");
}

function stats(job) {
  const p = job.progress || {};
  const rows = [["Step", p.total_steps ? `${p.step || 0} / ${p.total_steps}` : "–"], ["Epoch", fmt.num(p.epoch, 2)],
    ["Loss", fmt.num(p.loss)], ["Learning rate", fmt.num(p.lr)], ["Samples/s", fmt.num(p.samples_per_s, 1)],
    ["ETA", job.state === "running" ? fmt.duration(p.eta_s) : "–"], ["Best", bestText(job)]];
  if (job.stop_reason) rows.push(["Stopped", fmt.words(job.stop_reason)]);
  if (job.metrics && job.metrics.task) rows.push(["Task", job.metrics.task.replace(/_/g, "-")]);
  return rows.map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", { text: v })));
}

const taskOf = (job) => (job.metrics && job.metrics.task) || (job.progress && job.progress.task);

class JobPage {
  constructor(main, job, abort) {
    this.main = main;
    this.job = job;
    this.id = job.id;
    this.path = `/v1/jobs/${encodeURIComponent(job.id)}`;
    this.abort = abort;
    this.curves = new Curves(main, taskOf(job));
    this.reportShown = false;
    this.logTimer = this.refreshTimer = null;
    this.drawPending = false;
    this.deliveries = new Deliveries(main, this.path, abort.signal);
    this.deliveriesFor = null;  // the state whose deliveries were last fetched
    onLeave(() => { clearTimeout(this.logTimer); clearTimeout(this.refreshTimer); this.deliveries.stop(); });
  }

  get active() { return ACTIVE.includes(this.job.state); }

  redraw() {
    if (this.drawPending) return;
    this.drawPending = true;
    requestAnimationFrame(() => { this.drawPending = false; this.curves.draw(this.job); });
  }

  render() {
    const { job, main } = this;
    this.curves.know(taskOf(job));
    $("#job-state", main).replaceWith(Object.assign(badge(job.state), { id: "job-state" }));
    $("#job-meta", main).textContent = metaText(job);
    const overrides = Object.entries(job.overrides || {});
    $("#job-overrides", main).hidden = !overrides.length;
    $("#job-overrides", main).replaceChildren(el("span", { class: "opt", text: "Settings: " }),
      ...overrides.map(([k, v]) => el("code", { text: `${k}=${typeof v === "string" ? v : JSON.stringify(v)}` })));
    $("#job-progress", main).replaceChildren(progressBar(job));
    $("#job-stats", main).replaceChildren(...stats(job));
    const m = job.metrics;
    $("#job-metrics", main).replaceChildren(m && m.splits ? metricsTable(m.splits, m.headline, m.lower_is_better, m.task) : "");
    this.renderActions();
    if (this.deliveriesFor !== job.state) { this.deliveriesFor = job.state; this.deliveries.refresh(job); }
    if (!this.active && !this.reportShown && job.state !== "queued") this.showReport();
  }

  renderActions() {
    const { job, main } = this;
    const cancel = $("#cancel-job", main);
    cancel.hidden = !this.active;
    cancel.disabled = job.cancel_requested;
    cancel.textContent = job.cancel_requested ? "Cancelling…" : "Cancel job";
    $("#download-model", main).hidden = job.state !== "succeeded";
    const tryLink = $("#try-model", main);
    tryLink.hidden = job.state !== "succeeded";
    tryLink.href = `#/models/${job.id}`;
    $("#delete-job", main).hidden = this.active;
    const error = $("#job-error", main);
    error.hidden = !job.error;
    error.textContent = job.error ? `Failed: ${job.error}` : "";
  }

  // The run report in a sandboxed frame (no scripts), and a button to open it in a tab of its own.
  async showReport() {
    this.reportShown = true;
    try {
      const html = await api(`${this.path}/report`, { as: "text", signal: this.abort.signal });
      $("#report", this.main).srcdoc = html;
      $("#report-section", this.main).hidden = false;
      $("#open-report", this.main).onclick = () => {
        const url = URL.createObjectURL(new Blob([html], { type: "text/html" }));
        window.open(url, "_blank", "noopener");
        setTimeout(() => URL.revokeObjectURL(url), 60_000);
      };
    } catch (e) {
      if (e.status !== 404 && e.name !== "AbortError") toast(e.message, "error");
    }
  }

  // The log's last lines, every 2 s while the job is active; the view stays at the end if it was there.
  async refreshLog() {
    try {
      const text = await api(`${this.path}/log?lines=200`, { as: "text", signal: this.abort.signal });
      const pre = $("#job-log", this.main);
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      pre.textContent = text || (this.job.state === "queued" ? "The job has not started yet." : "No output yet.");
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    } catch (e) { /* shown on the next refresh */ }
    if (this.active && !this.abort.signal.aborted) this.logTimer = setTimeout(() => this.refreshLog(), 2000);
  }

  async refreshJob() {
    this.refreshTimer = null;
    try {
      const total = this.job.progress && this.job.progress.total_steps;
      this.job = await api(this.path, { signal: this.abort.signal });
      this.render();
      if ((this.job.progress && this.job.progress.total_steps) !== total) this.redraw();
    } catch (e) { /* the next event retries */ }
  }

  refreshSoon() {
    if (!this.refreshTimer) this.refreshTimer = setTimeout(() => this.refreshJob(), 500);
  }

  onEvent(type, data) {
    if (type === "log") {
      this.curves.add(data);
      this.redraw();
    } else if (type === "state") {
      if (data.state === "running" && data.attempt > 1) this.curves.reset();
      if (!ACTIVE.includes(data.state)) { clearTimeout(this.logTimer); this.refreshLog(); }
      else if (!this.logTimer) this.refreshLog();
    } else if (type === "plan") {
      this.curves.know(data.task);
    }
    if (["log", "state", "plan"].includes(type)) this.refreshSoon();
  }

  bindActions() {
    const { main, id } = this;
    $("#cancel-job", main).addEventListener("click", () => $("#cancel-dialog", main).showModal());
    $("#cancel-dialog", main).addEventListener("close", async () => {
      if ($("#cancel-dialog", main).returnValue !== "cancel") return;
      try {
        this.job = await api(`${this.path}/cancel`, { method: "POST" });
        toast(this.job.state === "cancelled" ? `Cancelled ${id}` : `Cancelling ${id}: it stops after its current step`);
        this.render();
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
      try { await api(this.path, { method: "DELETE" }); toast(`Deleted ${id}`); location.hash = "#/jobs"; }
      catch (e) { toast(e.message, "error"); }
    });
  }

  // The charts are drawn at their container's width: redrawn when it changes.
  followWidth() {
    let width = 0;
    const onResize = () => { const w = $("#loss-chart", this.main).clientWidth; if (w !== width) { width = w; this.redraw(); } };
    window.addEventListener("resize", onResize);
    onLeave(() => window.removeEventListener("resize", onResize));
  }

  start() {
    this.bindActions();
    this.followWidth();
    this.render();
    this.curves.draw(this.job);
    this.refreshLog();
    const signal = this.abort.signal;
    followEvents(this.id, (type, data) => this.onEvent(type, data), signal)
      .then(() => { if (!signal.aborted) { this.refreshJob(); this.refreshLog(); } });
  }
}

export async function viewJob(main, id) {
  document.title = `${id} · textft`;
  const abort = new AbortController();  // the event stream and every request of the page end with it
  onLeave(() => abort.abort());
  const job = await api(`/v1/jobs/${encodeURIComponent(id)}`, { signal: abort.signal });
  await loadDatasets();
  $("#job-title", main).textContent = `Job ${job.id}`;
  new JobPage(main, job, abort).start();
}
