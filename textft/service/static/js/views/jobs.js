// The jobs list: every job of the user with its state, progress and best evaluation, refreshed every
// 1.5 s while one is active (10 s otherwise).
import { api, datasetName, loadDatasets } from "../api.js";
import { $, el, toast } from "../dom.js";
import { ACTIVE } from "../events.js";
import { fmt } from "../format.js";
import { onLeave } from "../lifecycle.js";
import { bestText } from "../metrics.js";
import { badge, progressBar } from "../widgets.js";

const COLUMNS = ["Job", "Dataset", "Preset", "State", "Progress", "Best", "Created"];

function jobRow(j) {
  return el("tr", { id: `job-row-${j.id}` },
    el("td", { "data-label": "Job" }, el("a", { href: `#/jobs/${j.id}`, text: j.id })),
    el("td", { "data-label": "Dataset", text: datasetName(j.dataset) }),
    el("td", { "data-label": "Preset", text: j.config }),
    el("td", { "data-label": "State" }, badge(j.state)),
    el("td", { "data-label": "Progress", class: "progress-cell" }, progressBar(j)),
    el("td", { "data-label": "Best", text: bestText(j) }),
    el("td", { "data-label": "Created", text: fmt.when(j.created_at) }));
}

function jobTable(jobs) {
  if (!jobs.length) return el("p", { class: "hint" }, "No jobs yet. ", el("a", { href: "#/new", text: "Start one" }), ".");
  return el("table", { class: "jobs" },
    el("thead", {}, el("tr", {}, COLUMNS.map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, jobs.slice().reverse().map(jobRow)));
}

export async function viewJobs(main) {
  document.title = "Jobs · textft";
  const box = $("#job-list", main);
  let stopped = false, timer = null;
  onLeave(() => { stopped = true; clearTimeout(timer); });
  async function refresh() {
    try {
      const [jobs] = await Promise.all([api("/v1/jobs"), loadDatasets()]);
      if (stopped) return;
      box.replaceChildren(jobTable(jobs));
      timer = setTimeout(refresh, jobs.some((j) => ACTIVE.includes(j.state)) ? 1500 : 10000);
    } catch (e) {
      if (!stopped) { toast(e.message, "error"); timer = setTimeout(refresh, 5000); }
    }
  }
  await refresh();
}
