"""The service's monitor: turns what executors and training runs write into job states and events.

It is the only writer of job progress. Every half second it looks at each queued or running job:

- a claim (``attempt-N.json``) moves a queued job to running;
- new lines of the run's ``train_log.jsonl`` become ``log`` events and the job's progress
  (step of total, epoch, loss, samples/s, ETA, best validation metric); the plan line of the job
  log (``training: N optimizer steps ...``) gives the total;
- an exit record (``exit-N.json``) ends the attempt: succeeded, cancelled, failed with the
  one-line reason the CLI printed, or interrupted (killed by a signal, the service stopping),
  which re-queues the job to resume from its latest checkpoint;
- a claim whose executor is gone (the service or a worker was killed) is an orphan: its process
  group is stopped if it still runs, and the job is re-queued the same way.

Queued jobs missing from the queue (a crash between the database and the queue) are put back.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from textft.service.jobs import RUN_DIR
from textft.service.layout import DataDir, is_local, process_alive, read_json, write_json
from textft.service.queue import PRIORITY_RESUMED, JobQueue
from textft.service.store import ACTIVE, Store, add_event, dumps
from textft.service.supervise import group_alive, stop_group
from textft.service.textft_api import DEFAULT_TASK, lower_is_better, task_headline

log = logging.getLogger("textft.service")

TICK_S = 0.5
RECONCILE_S = 5.0
STALE_S = 60.0
"""A remote executor whose heartbeat has not changed for this long (by this machine's clock) is gone."""
MAX_INTERRUPTIONS = 3
"""Times a job may be killed (out of memory, a stray kill, its executor killed) and resumed before it is
marked failed (textft service --max-retries)."""
MAX_READ = 1 << 20

PLAN = re.compile(r"training: (\d+) optimizer steps \((\d+) per epoch\), global batch (\d+)(?:, best model by (\w+))?")
SIGNALLED = re.compile(r"died with <Signals\.(SIG\w+): \d+>|Signal \d+ \((SIG\w+)\) received")
LAUNCHER_ERRORS = ("subprocess.CalledProcessError", "torch.distributed.elastic.multiprocessing.errors.ChildFailedError")
EXCEPTION = re.compile(r"^([\w.]+(?:Error|Exception)|KeyboardInterrupt)\b(:.*)?$")


def read_new_lines(path: Path, offset: int, limit: int = MAX_READ) -> tuple[list[str], int]:
    """Complete lines after ``offset`` (at most ``limit`` bytes) and the offset after them."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < offset:  # replaced by a shorter file: read it from the start
                offset = 0
            f.seek(offset)
            chunk = f.read(limit)
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    return chunk[:end].decode("utf-8", "replace").split("\n"), offset + end + 1


def failure_reason(log_path: Path, start: int, rc: int | None) -> tuple[str, bool]:
    """The one-line reason an attempt failed, and whether it was killed (worth resuming) rather than wrong."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(start, os.fstat(f.fileno()).st_size - 256 * 1024))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        text = ""
    lines = [line.rstrip() for line in text.splitlines()]
    errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    if errors:
        return "; ".join(dict.fromkeys(errors)), False
    killed = SIGNALLED.search(text)
    name = (killed.group(1) or killed.group(2)) if killed else None
    if name is None and rc is not None and rc > 128:
        try:
            name = signal.Signals(rc - 128).name
        except ValueError:
            name = f"signal {rc - 128}"
    if name is not None:
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"the training process was killed by {name}{hint}", True
    # The launcher's own error (CalledProcessError, ChildFailedError) only says that training failed.
    exceptions = [line for line in lines if EXCEPTION.match(line) and not line.startswith(LAUNCHER_ERRORS)]
    if exceptions:
        return exceptions[-1][:500], False
    return f"training exited with status {rc}", False


def headline_metrics(run: Path) -> dict | None:
    """What a finished job keeps of its evaluation: its task, each split's numbers of the task's own
    headline metrics, which of them are lower-is-better, and the best validation result."""
    report = read_json(run / "eval_report.json")
    if not isinstance(report, dict):
        return None
    task = report.get("task") or DEFAULT_TASK
    keys = task_headline(task)
    splits = {split: {k: m.get(k) for k in (*keys, "num_examples")}
              for split, m in (report.get("splits") or {}).items() if isinstance(m, dict)}
    best = report.get("best")
    if isinstance(best, dict) and best.get("metric"):
        best = {**best, "lower_is_better": lower_is_better(best["metric"])}
    return {"task": task, "headline": list(keys), "lower_is_better": [k for k in keys if lower_is_better(k)],
            "splits": splits, "best": best, "stop_reason": report.get("stop_reason"),
            "optimizer_steps": report.get("optimizer_steps"), "train_seconds": report.get("train_seconds"),
            "labels": report.get("label_names")}


class Monitor:
    def __init__(self, store: Store, data: DataDir, queue: JobQueue, notify: Callable[[], None] = lambda: None,
                 max_retries: int = MAX_INTERRUPTIONS):
        self.store, self.data, self.queue, self.notify = store, data, queue, notify
        self.max_retries = max_retries
        self._heartbeats: dict[str, tuple[str, float]] = {}
        self._missing: dict[tuple[str, int], float] = {}
        self._last_reconcile = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------

    def recover(self) -> None:
        """On start: drop half-built directories, settle every active job, refill the queue."""
        known_jobs = {r["id"] for r in self.store.rows("SELECT id FROM jobs")}
        for path in self.data.jobs.iterdir():
            if path.name not in known_jobs:
                shutil.rmtree(path, ignore_errors=True)
        known_sets = {r["id"] for r in self.store.rows("SELECT id FROM datasets")}
        for path in self.data.datasets.iterdir():
            if path.name not in known_sets:
                shutil.rmtree(path, ignore_errors=True)
        self.tick(startup=True)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="textft-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.tick()  # record what the stopping executors wrote

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self.tick()
            except Exception:  # one bad job or file must not stop the monitoring of the others
                log.exception("monitor tick failed")

    def tick(self, startup: bool = False) -> None:
        with self._lock:
            changed = False
            for job in self.store.rows(f"SELECT * FROM jobs WHERE state IN {ACTIVE} ORDER BY seq"):
                changed |= self._advance(job)
            if startup or time.monotonic() - self._last_reconcile > RECONCILE_S:
                changed |= self._reconcile(immediate=startup and self.queue.broker is None)
                self._last_reconcile = time.monotonic()
        if changed:
            self.notify()

    # -- one job ------------------------------------------------------------------------------

    def _advance(self, job: dict) -> bool:
        job_dir = self.data.job(job["id"])
        n = job["attempt"]
        claim = read_json(job_dir / f"attempt-{n}.json")
        if claim is None:
            return False
        changed = False
        if job["state"] == "queued":
            with self.store.transaction() as db:
                started = db.execute("UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, ?),"
                                     " worker = ? WHERE id = ? AND state = 'queued'",
                                     (claim["claimed_at"], f"{claim['host']}:{claim['pid']}", job["id"])).rowcount
                if started:  # not cancelled meanwhile
                    add_event(db, job["id"], "state", {"state": "running", "attempt": n,
                                                       "worker": f"{claim['host']}:{claim['pid']}"})
            if not started:
                return False
            job["state"] = "running"
            changed = True
        changed |= self._follow(job, job_dir, claim)
        outcome = read_json(job_dir / f"exit-{n}.json")
        if outcome is not None:
            self._finish(job, job_dir, outcome)
            return True
        if self._orphaned(job, job_dir, claim):
            self._finish(job, job_dir, {"attempt": n, "rc": None, "reason": "orphaned"})
            return True
        return changed

    def _follow(self, job: dict, job_dir: Path, claim: dict) -> bool:
        """Turn new training-log lines into events and progress; True if anything was recorded."""
        tail = job["tail"] or {}
        if tail.get("attempt") != job["attempt"]:
            tail = {"attempt": job["attempt"], "offset": 0, "log_offset": claim.get("log_offset", 0),
                    "last": tail.get("last")}
        progress = dict(job["progress"] or {})
        events: list[tuple[str, dict]] = []
        lines, log_offset = read_new_lines(job_dir / "job.log", tail["log_offset"], 256 * 1024)
        for line in lines:
            if (m := PLAN.search(line)) and progress.get("total_steps") != int(m.group(1)):
                plan = {"total_steps": int(m.group(1)), "steps_per_epoch": int(m.group(2)),
                        "global_batch": int(m.group(3)), **({"metric": m.group(4)} if m.group(4) else {})}
                progress.update(plan)
                events.append(("plan", plan))
        lines, offset = read_new_lines(job_dir / RUN_DIR / "train_log.jsonl", tail["offset"])
        spec = read_json(job_dir / "job.json") or {}
        # an explicit train.metric_for_best, else the one the run resolved (its plan line names it)
        metric = spec.get("metric_for_best", "auto")
        metric = progress.get("metric", "macro_f1") if metric == "auto" else metric
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            key = [entry.get("step", 0), 1 if "eval" in entry else 0]
            if tail.get("last") is not None and key <= tail["last"]:
                continue  # already reported before a resume rewound the log
            tail["last"] = key
            events.append(("log", entry))
            progress["step"], progress["epoch"] = entry.get("step"), entry.get("epoch")
            if "eval" in entry:
                value = entry["eval"].get(metric)
                best = progress.get("best")
                better = value is not None and (
                    best is None or (value < best["value"] if lower_is_better(metric) else value > best["value"]))
                if better:
                    progress["best"] = {"metric": metric, "value": value, "step": entry.get("step"),
                                        "lower_is_better": lower_is_better(metric)}
            else:
                for k in ("loss", "lr", "samples_per_s"):
                    if k in entry:
                        progress[k] = entry[k]
        if progress.get("total_steps") and progress.get("samples_per_s") and progress.get("global_batch"):
            left = max(0, progress["total_steps"] - (progress.get("step") or 0))
            progress["eta_s"] = round(left * progress["global_batch"] / progress["samples_per_s"], 1)
        tail.update(offset=offset, log_offset=log_offset)
        if not events and tail == job["tail"]:
            return False
        with self.store.transaction() as db:
            db.execute("UPDATE jobs SET progress = ?, tail = ? WHERE id = ?", (dumps(progress), dumps(tail), job["id"]))
            for kind, data in events:
                add_event(db, job["id"], kind, data)
        job["tail"], job["progress"] = tail, progress
        return bool(events)

    def _orphaned(self, job: dict, job_dir: Path, claim: dict) -> bool:
        if is_local(claim):
            if process_alive(claim):
                return False
            self._stop_group(job_dir, job["attempt"])
            return True
        key = f"{job['id']}:{job['attempt']}"
        beat = (job_dir / f"heartbeat-{job['attempt']}").read_text() if \
            (job_dir / f"heartbeat-{job['attempt']}").exists() else ""
        seen = self._heartbeats.get(key)
        if seen is None or seen[0] != beat:
            self._heartbeats[key] = (beat, time.monotonic())
            return False
        return time.monotonic() - seen[1] > STALE_S

    def _stop_group(self, job_dir: Path, attempt: int) -> None:
        """Stop what an orphaned attempt left running on this machine (its supervisor starts
        doing so when its executor dies; this makes sure, before the job runs again)."""
        group = read_json(job_dir / f"proc-{attempt}.json")
        if group is None or not is_local(group) or not group_alive(group["pgid"]):
            return
        if _belongs_to(group["pgid"], job_dir):
            log.warning("stopping the orphaned process group %d of %s", group["pgid"], job_dir.name)
            stop_group(group["pgid"], 10.0)

    def _finish(self, job: dict, job_dir: Path, outcome: dict) -> None:
        self._settle(job, job_dir, outcome)
        spec = read_json(job_dir / "job.json")
        if spec is not None and spec.get("settled", 0) < job["attempt"]:
            # Written last, after any re-queueing: the executor waits for it before taking the next job.
            write_json(job_dir / "job.json", {**spec, "settled": job["attempt"]})

    def _settle(self, job: dict, job_dir: Path, outcome: dict) -> None:
        reason, rc = outcome.get("reason"), outcome.get("rc")
        run = job_dir / RUN_DIR
        self._heartbeats.pop(f"{job['id']}:{job['attempt']}", None)
        if job["cancel_requested"] or reason == "cancelled":
            return self._end(job, "cancelled", stop_reason="cancelled")
        if reason in ("unschedulable", "error"):
            return self._end(job, "failed", error=outcome.get("error"))
        if (run / "eval_report.json").is_file() and (run / "config.json").is_file():
            return self._succeed(job, run)  # exported (the final directory appears whole or not at all)
        if reason == "limit":  # past its memory or time: running it again would end the same way
            return self._end(job, "failed", error=outcome.get("error"))
        claim = read_json(job_dir / f"attempt-{job['attempt']}.json") or {}
        if reason == "shutdown":  # a graceful stop is no fault of the job's
            return self._requeue(job, "interrupted: the service stopped; it resumes from its latest checkpoint",
                                 count=False)
        if reason == "orphaned":
            # Counted: a job that takes its executor down with it (the machine out of memory) would
            # otherwise run again at every start.
            why, killed = "its executor stopped (service or worker killed)", True
        else:
            why, killed = failure_reason(job_dir / "job.log", claim.get("log_offset", 0), rc)
        if killed and job["interruptions"] < self.max_retries:
            return self._requeue(job, f"interrupted: {why}; it resumes from its latest checkpoint", count=True)
        if killed:
            why += f" ({job['interruptions'] + 1} times)"
        self._end(job, "failed", error=why)

    def _succeed(self, job: dict, run: Path) -> None:
        metrics = headline_metrics(run)
        shutil.rmtree(run / "checkpoints", ignore_errors=True)  # the model is final: resume states are dead weight
        self._end(job, "succeeded", metrics=metrics, stop_reason=(metrics or {}).get("stop_reason"))

    def _end(self, job: dict, state: str, error: str | None = None, metrics: dict | None = None,
             stop_reason: str | None = None) -> None:
        with self.store.transaction() as db:
            ended = db.execute(f"UPDATE jobs SET state = ?, finished_at = ?, error = ?, metrics = ?, stop_reason = ?"
                               f" WHERE id = ? AND state IN {ACTIVE}",
                               (state, time.time(), error, dumps(metrics) if metrics else None, stop_reason,
                                job["id"])).rowcount
            if ended:
                add_event(db, job["id"], "state", {"state": state, "error": error, "stop_reason": stop_reason,
                                                   "metrics": metrics})
        log.info("job %s %s%s", job["id"], state, f": {error}" if error else "")

    def _requeue(self, job: dict, why: str, count: bool) -> None:
        job_dir = self.data.job(job["id"])
        attempt = job["attempt"] + 1
        spec = read_json(job_dir / "job.json")
        spec.update(attempt=attempt, resume=True, time_used_s=(spec.get("time_used_s") or 0.0) + self._spent(job))
        write_json(job_dir / "job.json", spec)
        with self.store.transaction() as db:
            requeued = db.execute(f"UPDATE jobs SET state = 'queued', attempt = ?, priority = ?,"
                                  f" interruptions = interruptions + ? WHERE id = ? AND state IN {ACTIVE}",
                                  (attempt, PRIORITY_RESUMED, int(count), job["id"])).rowcount
            if requeued:
                add_event(db, job["id"], "state", {"state": "queued", "attempt": attempt, "reason": why})
        if not requeued:
            return
        self.queue.enqueue(job["id"], attempt, PRIORITY_RESUMED)
        log.info("job %s re-queued (attempt %d): %s", job["id"], attempt, why)

    def _spent(self, job: dict) -> float:
        """Wall-clock seconds the job's current attempt ran (they count toward its time limit)."""
        job_dir = self.data.job(job["id"])
        claim = read_json(job_dir / f"attempt-{job['attempt']}.json") or {}
        ended = (read_json(job_dir / f"exit-{job['attempt']}.json") or {}).get("finished_at")
        if ended is None:  # orphaned: its executor was last alive when it wrote its heartbeat
            try:
                ended = (job_dir / f"heartbeat-{job['attempt']}").stat().st_mtime
            except OSError:
                ended = claim.get("claimed_at", 0.0)
        return max(0.0, ended - claim.get("claimed_at", ended))

    # -- the queue ----------------------------------------------------------------------------

    def _reconcile(self, immediate: bool) -> bool:
        queued = self.store.rows("SELECT id, attempt, priority FROM jobs WHERE state = 'queued' ORDER BY seq")
        if not queued:
            self._missing.clear()
            return False
        waiting = self.queue.pending()
        now, missing = time.monotonic(), {}
        for job in queued:
            key = (job["id"], job["attempt"])
            if key in waiting or (self.data.job(job["id"]) / f"attempt-{job['attempt']}.json").exists():
                continue
            first = self._missing.get(key, now)
            if immediate or now - first >= RECONCILE_S:
                log.warning("job %s (attempt %d) was not in the queue; queued again", *key)
                self.queue.enqueue(job["id"], job["attempt"], job["priority"])
            else:
                missing[key] = first
        self._missing = missing
        return False


def _belongs_to(pgid: int, job_dir: Path) -> bool:
    """Whether some process of group ``pgid`` runs this job (a pid can be reused after a reboot)."""
    marker = str(job_dir).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[2]) != pgid:
                continue
            if marker in (proc / "cmdline").read_bytes():
                return True
        except (OSError, ValueError):
            continue
    return False
