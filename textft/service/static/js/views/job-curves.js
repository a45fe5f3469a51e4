// The job page's two charts, fed by the job's events as they stream in: the training and validation
// loss, and the validation metrics the job's task draws as its learning curves (GET /v1/tasks).
import { $ } from "../dom.js";
import { lineChart } from "../charts.js";
import { direction, lowerIsBetter, metricName, taskInfo, taskOfScores } from "../tasks.js";

const STEP = "optimizer step";

export class Curves {
  constructor(main, task) {
    this.main = main;
    this.task = task || null;
    this.reset();
  }

  // A resumed attempt logs again from its checkpoint's step: start over, so the curves stay monotone.
  reset() {
    this.points = { loss: [], evalLoss: [] };  // and one per validation metric, by its name
  }

  // The job's task, once it names it (a finished job's metrics, its plan); the first one named stays.
  know(task) {
    this.task = this.task || task || null;
  }

  // One record of the training log: a logged step (loss) and/or an evaluation (eval).
  add(entry) {
    if (typeof entry.loss === "number") this.points.loss.push([entry.step, entry.loss]);
    if (!entry.eval) return;
    if (typeof entry.eval.loss === "number") this.points.evalLoss.push([entry.step, entry.eval.loss]);
    this.know(taskOfScores(entry.eval));
    for (const [k, v] of Object.entries(entry.eval)) {
      if (k !== "loss" && typeof v === "number") (this.points[k] = this.points[k] || []).push([entry.step, v]);
    }
  }

  // Both charts span the planned steps: they line up, and an early stop shows as one.
  draw(job) {
    const xMax = (job.progress && job.progress.total_steps) || 0;
    lineChart($("#loss-chart", this.main), { xLabel: STEP, xMax, empty: "The loss appears here from the first logged step.",
      series: [{ name: "training loss", points: this.points.loss }, { name: "validation loss", points: this.points.evalLoss, dots: true }] });
    // scores live in [0, 1]; errors (regression) in the label's units
    const keys = taskInfo(this.task).curves, lower = keys.every((k) => lowerIsBetter(k));
    $("#metric-title", this.main).textContent = this.task ? `Validation metrics (${direction(lower)})` : "Validation metrics";
    lineChart($("#metric-chart", this.main), { xLabel: STEP, xMax, yMin: 0, yMax: lower ? undefined : 1,
      empty: "Validation scores appear here after the first evaluation.",
      series: keys.map((k) => ({ name: metricName(k), points: this.points[k] || [], dots: true })) });
  }
}
