// What differs by task, as the service defines it (GET /v1/tasks): each metric's display name and
// direction, each task's headline metrics, learning curves and default metric. Fetched once, before
// the first view is drawn; the page keeps no copy of its own.
import { api } from "./api.js";

let loading = null;
let tasks = [];
const byName = new Map();
const metrics = new Map();

function store(list) {
  tasks = list;
  for (const t of list) {
    byName.set(t.name, t);
    for (const m of t.metrics) metrics.set(m.name, m);
  }
}

// The tasks, from the service on the first call (a failed call is tried again on the next).
export function loadTasks() {
  if (!loading) loading = api("/v1/tasks").then(store).catch((e) => { loading = null; throw e; });
  return loading;
}

// The task called `name`; runs and models from before textft had tasks name none, and were the
// service's default task, which it lists first.
export const taskInfo = (name) => byName.get(name) || tasks[0];

export const metricName = (k) => (metrics.has(k) ? metrics.get(k).display_name : k.replace(/_/g, "-"));

// `given`: the metrics a record itself says are lower-is-better (a finished job's, a model's).
export const lowerIsBetter = (k, given) => (given ? given.includes(k) : Boolean(metrics.get(k)?.lower_is_better));

export const direction = (lower) => (lower ? "lower is better" : "higher is better");

// The task of a job's validation numbers when the job does not name it yet: the task whose every
// learning curve is there (the curves of different tasks name different metrics).
export function taskOfScores(scores) {
  const fits = tasks.filter((t) => t.curves.every((k) => typeof scores[k] === "number"));
  return fits.length ? fits[0].name : null;
}
