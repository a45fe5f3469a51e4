"""The service's monitor: turns what executors and training runs write into job states and events.

It is the only writer of job progress. Every half second it looks at each queued or running job:

- a claim (``attempt-N.json``) moves a queued job to running;
- new records of the run's ``train_log.jsonl`` (``textft.run_events``) become events and the job's
  progress: the plan (``plan``: step total, metric), training and evaluation (``log``: step, epoch,
  loss, samples/s, ETA), the loop's best model (``best``) and its stop (``end``);
- an exit record (``exit-N.json``) ends the attempt: succeeded, cancelled, failed with the
  ``error`` records the training process wrote, or interrupted (killed by a signal, the service
  stopping), which re-queues the job to resume from its latest checkpoint;
- a claim whose executor is gone (the service or a worker was killed) is an orphan: its process
  group is stopped if it still runs, and the job is re-queued the same way.

Queued jobs missing from the queue (a crash between the database and the queue) are put back.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from textft.service.jobs import RUN_DIR
from textft.service.layout import DataDir, is_local, process_alive, read_json, write_json
from textft.service.models import keep_adapter_only
from textft.service.queue import PRIORITY_RESUMED, JobQueue
from textft.service.safekeeping import keep_aside
from textft.service.store import Store
from textft.service.supervise import group_alive, stop_group
from textft.service.textft_api import (DEFAULT_TASK, BestRecord, EndRecord, EvalRecord, NewerSchema, PlanRecord, Record,
                                      RunSummary, TrainRecord, lower_is_better, run_events, summarize, task_headline,
                                      test_set_key)

log = logging.getLogger("textft.service")

TICK_S = 0.5
RECONCILE_S = 5.0
STALE_S = 60.0
"""A remote executor whose heartbeat has not changed for this long (by this machine's clock) is gone."""
MAX_INTERRUPTIONS = 3
"""Times a job may be killed (out of memory, a stray kill, its executor killed) and resumed before it is
marked failed (textft service --max-retries)."""
MAX_READ = 1 << 20


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


def run_summary(log_path: Path, limit: int = MAX_READ) -> RunSummary | None:
    """The plan, best, end and error records of a run's log (its last ``limit`` bytes: errors come last)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return RunSummary()
    try:
        return summarize(run_events.read(text.splitlines()))
    except NewerSchema:
        return None


def failure_reason(summary: RunSummary | None, rc: int | None) -> tuple[str, bool]:
    """The one-line reason an attempt failed, and whether it was killed (worth resuming) rather than wrong.

    The training process records every failure it sees (``error`` records: a problem of the config or
    the data, an exception, a stop signal, which is resumed like a kill); a process that ended without
    one was killed by a signal it cannot catch (SIGKILL: out of memory, most likely) or crashed in
    native code. ``summary`` is None when the log is of a newer schema than this service reads.
    """
    if summary is not None and summary.errors:
        # a stop signal the service did not send (it cancels and shuts down by itself) is an
        # interruption like a kill: the run resumes from its checkpoint
        stopped = all(e.kind == "interrupted" for e in summary.errors)
        return "; ".join(dict.fromkeys(e.message for e in summary.errors)), stopped
    if rc is not None and rc > 128:
        try:
            name = signal.Signals(rc - 128).name
        except ValueError:
            name = f"signal {rc - 128}"
        return f"the training process was killed by {name}{' (out of memory?)' if name == 'SIGKILL' else ''}", True
    if summary is None:
        return f"training exited with status {rc} (its log is of a newer textft; upgrade the service)", False
    if rc == 0:
        return "training exited without writing its model or an error record", False
    return "the training process was killed by SIGKILL (out of memory?) or crashed before it could record why", True


RANK = {TrainRecord: 0, EvalRecord: 1, BestRecord: 2, EndRecord: 3}
"""Order of the records of one step, for telling a record already reported from a new one."""
EVENT = {TrainRecord: "log", EvalRecord: "log", BestRecord: "best", EndRecord: "end"}
"""The event a record becomes (``log``: training and evaluation records, as before the other kinds)."""


def follow_record(record: Record, entry: dict, progress: dict, tail: dict) -> list[tuple[str, dict]]:
    """What one record of the run's log changes in the job's progress, and the events it becomes.

    The plan gives the total and the metric; the loop's own ``best`` records the best model (the one
    exported), never recomputed here. A resumed attempt rewrites the log from its checkpoint: records
    up to what was already reported are not reported again, but its best records still set the best.
    """
    if isinstance(record, PlanRecord):
        plan = {k: entry.get(k) for k in ("total_steps", "steps_per_epoch", "global_batch", "metric",
                                          "lower_is_better", "task", "eval_every_steps")}
        changed = any(progress.get(k) != v for k, v in plan.items())
        progress.update(plan)
        return [("plan", entry)] if changed else []
    if isinstance(record, BestRecord):
        progress["best"] = {"metric": record.metric, "value": record.value, "step": record.step,
                            "epoch": record.epoch, "lower_is_better": record.lower_is_better}
    if type(record) not in RANK:
        return []  # error records: the attempt's outcome reads them when it ends
    key = [record.step, RANK[type(record)]]
    if tail.get("last") is not None and key <= tail["last"]:
        return []  # already reported before a resume rewound the log
    tail["last"] = key
    if isinstance(record, (TrainRecord, EvalRecord)):
        progress["step"], progress["epoch"] = record.step, record.epoch
    if isinstance(record, TrainRecord):
        progress.update(loss=record.loss, lr=record.lr, samples_per_s=record.samples_per_s)
    return [(EVENT[type(record)], entry)]


def intervals_of(m: dict, keys: tuple[str, ...]) -> dict:
    """``{"intervals": {metric: [low, high]}}`` of the headline metrics the split has intervals for."""
    intervals = m.get("intervals") if isinstance(m.get("intervals"), dict) else {}
    kept = {k: intervals[k] for k in keys if isinstance(intervals.get(k), list) and len(intervals[k]) == 2}
    return {"intervals": kept} if kept else {}


def headline_metrics(run: Path) -> dict | None:
    """What a finished job keeps of its evaluation: its task, each split's numbers of the task's own
    headline metrics, which of them are lower-is-better, and the best validation result."""
    report = read_json(run / "eval_report.json")
    if not isinstance(report, dict):
        return None
    task = report.get("task") or DEFAULT_TASK
    keys = task_headline(task)
    splits = {split: {**{k: m.get(k) for k in (*keys, "num_examples")}, **intervals_of(m, keys)}
              for split, m in (report.get("splits") or {}).items() if isinstance(m, dict)}
    best = report.get("best")
    if isinstance(best, dict) and best.get("metric"):
        best = {**best, "lower_is_better": lower_is_better(best["metric"])}
    return {"task": task, "headline": list(keys), "lower_is_better": [k for k in keys if lower_is_better(k)],
            "splits": splits, "best": best, "stop_reason": report.get("stop_reason"),
            "optimizer_steps": report.get("optimizer_steps"), "train_seconds": report.get("train_seconds"),
            "labels": report.get("label_names"), "test_set": test_set_key(run)}


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
        """On start: keep aside what the database has no row for, settle every active job, refill the queue."""
        keep_aside(self.data, known_datasets=self.store.dataset_ids(),
                   known_jobs=self.store.job_ids())
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
            for job in self.store.active_jobs():
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
            if not self.store.start_job(job["id"], n, claim["claimed_at"], f"{claim['host']}:{claim['pid']}"):
                return False  # cancelled meanwhile
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
        """Turn new records of the run's log into events and progress; True if anything was recorded."""
        tail = job["tail"] or {}
        if tail.get("attempt") != job["attempt"]:
            tail = {"attempt": job["attempt"], "offset": 0, "last": tail.get("last")}
        progress = dict(job["progress"] or {})
        events: list[tuple[str, dict]] = []
        lines, offset = read_new_lines(job_dir / RUN_DIR / "train_log.jsonl", tail["offset"])
        for line in lines if not tail.get("newer_schema") else ():
            try:
                entry = json.loads(line)
                record = run_events.parse(entry)
            except ValueError as e:  # not JSON, or NewerSchema: what follows is not ours to read
                if isinstance(e, NewerSchema):
                    log.warning("job %s: %s; its progress is not followed", job["id"], e)
                    tail["newer_schema"] = e.schema
                    break
                continue
            if record is not None:
                events += follow_record(record, entry, progress, tail)
        if progress.get("total_steps") and progress.get("samples_per_s") and progress.get("global_batch"):
            left = max(0, progress["total_steps"] - (progress.get("step") or 0))
            progress["eta_s"] = round(left * progress["global_batch"] / progress["samples_per_s"], 1)
        tail["offset"] = offset
        if not events and tail == job["tail"] and progress == job["progress"]:
            return False
        self.store.record_progress(job["id"], progress, tail, events)
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
        if reason == "shutdown":  # a graceful stop is no fault of the job's
            return self._requeue(job, "interrupted: the service stopped; it resumes from its latest checkpoint",
                                 count=False)
        if reason == "orphaned":
            # Counted: a job that takes its executor down with it (the machine out of memory) would
            # otherwise run again at every start.
            why, killed = "its executor stopped (service or worker killed)", True
        else:
            why, killed = failure_reason(run_summary(run / "train_log.jsonl"), rc)
        if killed and job["interruptions"] < self.max_retries:
            return self._requeue(job, f"interrupted: {why}; it resumes from its latest checkpoint", count=True)
        if killed:
            why += f" ({job['interruptions'] + 1} times)"
        self._end(job, "failed", error=why)

    def _succeed(self, job: dict, run: Path) -> None:
        metrics = headline_metrics(run)
        shutil.rmtree(run / "checkpoints", ignore_errors=True)  # the model is final: resume states are dead weight
        keep_adapter_only(run)  # a LoRA model is stored as its adapter; its base is shared
        self._end(job, "succeeded", metrics=metrics, stop_reason=(metrics or {}).get("stop_reason"))

    def _end(self, job: dict, state: str, error: str | None = None, metrics: dict | None = None,
             stop_reason: str | None = None) -> None:
        self.store.end_job(job["id"], state, error, metrics, stop_reason)
        log.info("job %s %s%s", job["id"], state, f": {error}" if error else "")

    def _requeue(self, job: dict, why: str, count: bool) -> None:
        job_dir = self.data.job(job["id"])
        attempt = job["attempt"] + 1
        spec = read_json(job_dir / "job.json")
        spec.update(attempt=attempt, resume=True, time_used_s=(spec.get("time_used_s") or 0.0) + self._spent(job))
        write_json(job_dir / "job.json", spec)
        if not self.store.requeue_job(job["id"], attempt, PRIORITY_RESUMED, count, why):
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
        queued = self.store.queued_jobs()
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
