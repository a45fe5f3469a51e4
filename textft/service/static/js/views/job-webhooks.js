// A job's webhook deliveries: one row per state change POSTed to the job's webhook_url, with its
// attempts (GET /v1/jobs/{id}/deliveries). Refreshed while any delivery is still pending.
import { api } from "../api.js";
import { $ } from "../dom.js";
import { fmt } from "../format.js";
import { badge, table } from "../widgets.js";

const when = (unix) => (unix ? new Date(unix * 1000).toLocaleTimeString("en-GB") : "–");

// What one attempt got: the receiver's status, or why none came.
const outcome = (a) => (a.error ? a.error : `answered ${a.status}`);

function deliveryRow(d) {
  const change = JSON.parse(d.body).state || "–";
  const last = d.history[d.history.length - 1];
  return {
    change, delivery: d.state, attempts: d.attempts,
    latest: last ? `${when(last.at)}: ${outcome(last)} (${fmt.num(last.seconds, 2)} s)` : "not tried yet",
    next: d.next_attempt_at ? fmt.when(d.next_attempt_at) : "–",
  };
}

export class Deliveries {
  constructor(main, path, signal) {
    this.main = main;
    this.path = `${path}/deliveries`;
    this.signal = signal;
    this.timer = null;
  }

  // Shown only for a job with a webhook; fetched again after each state change and while pending.
  async refresh(job) {
    const section = $("#webhook-section", this.main);
    section.hidden = !job.webhook_url;
    if (!job.webhook_url) return;
    $("#webhook-url", this.main).textContent = job.webhook_url;
    clearTimeout(this.timer);
    try {
      const deliveries = await api(this.path, { signal: this.signal });
      const rows = deliveries.map(deliveryRow);
      const box = $("#webhook-deliveries", this.main);
      box.replaceChildren(table(rows, ["change", "delivery", "attempts", "latest", "next"]));
      box.querySelectorAll("tbody tr").forEach((tr, i) => tr.children[1].replaceChildren(badge(rows[i].delivery)));
      if (deliveries.some((d) => d.state === "pending")) this.timer = setTimeout(() => this.refresh(job), 3000);
    } catch (e) { /* the next state change retries */ }
  }

  stop() { clearTimeout(this.timer); }
}
