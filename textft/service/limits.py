"""What one tenant may ask of the service: bounds on every resource a job request or an upload can
ask for, and the storage each key holds.

Service-wide values are ``textft service`` flags whose defaults come from the machine (its cores,
GPUs, memory and disk); a key may carry its own optimizer-step, job-time and storage limits
(``textft service keys create``). Every bound is checked on the typed request, before anything
sized by a requested value is built, and each refusal names the setting and the limit.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from textft.service.containment import duration
from textft.service.store import Store
from textft.service.textft_api import count_evaluations

AUTO_MAX_EPOCHS = 20
"""Most passes the auto recipe ever plans (textft.recipe.MAX_EPOCHS): the bound of an auto-length job."""
REMOTE_GPUS = 16
"""GPU processes a job may ask for when remote workers (``--broker``) may have more GPUs than this machine."""


class Refused(Exception):
    """A request refused for want of a resource (a quota, the disk): answered with ``status`` and one
    (field, message) per problem."""

    def __init__(self, status: int, problems: list[tuple[str, str]]):
        self.status, self.problems = status, problems
        super().__init__("; ".join(m for _, m in problems))


def machine_memory() -> int:
    """Bytes of memory of this machine (what the limits are a share of)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def machine_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Limits:
    """Bounds of one job and one upload (``textft service`` flags)."""

    max_steps: int = 1_000_000
    """Optimizer steps of one job (``train.max_steps``, or ``train.epochs`` x steps per epoch); per key."""
    max_epochs: float = 1000
    """Passes over the training data (``train.epochs``)."""
    max_batch_size: int = 1024
    """``train.batch_size``, ``train.eval_batch_size`` and ``train.grad_accum_steps``."""
    max_evaluations: int = 1000
    """Validation passes one job plans (epoch ends and ``train.eval_every_steps``)."""
    max_log_entries: int = 100_000
    """Training-log lines (hence job events) one job writes: optimizer steps / ``train.logging_steps``."""
    max_keep_checkpoints: int = 5
    """``train.keep_checkpoints``: resumable checkpoints a job keeps on disk."""
    job_seconds: float = 24 * 3600.0
    """Wall-clock time of one job, all its attempts together (and the bound of ``train.time_budget_s``); per key."""
    job_memory_bytes: int | None = None
    """Memory of one job's processes together; past it the job is stopped and fails. None: no limit."""
    max_storage_bytes: int | None = None
    """Bytes one key stores (datasets and job directories with their models); per key. None: no limit."""
    upload_columns: int = 1000
    """Columns (fields, keys) of an uploaded file."""
    upload_row_bytes: int = 1_000_000
    """Bytes of one row (a line, a record) of an uploaded file."""
    upload_cells: int = 50_000_000
    """Rows x columns of an uploaded file."""
    cores: int = 1
    """CPU cores jobs may use (bounds train.num_workers and CPU processes)."""
    gpus: int = 0
    """GPUs jobs may use; with remote workers (``remote``) GPU jobs may ask for up to REMOTE_GPUS."""
    remote: bool = False

    def for_key(self, who) -> "Limits":
        """These limits with the key's own (a ``Principal``; None keeps the service's)."""
        own = {name: getattr(who, name, None) for name in ("max_steps", "max_storage_bytes")}
        own["job_seconds"] = getattr(who, "max_job_seconds", None)
        return replace(self, **{k: v for k, v in own.items() if v is not None})


def default_limits(data_dir: Path, slots: int, gpus: int, **given) -> Limits:
    """The service's limits: what was given, the rest derived from this machine. A job may use 60%
    of the memory shared among the jobs that run at once; a key may store a quarter of the disk."""
    derived: dict[str, Any] = {"cores": machine_cores(), "gpus": gpus,
                               "job_memory_bytes": int(0.6 * machine_memory() / max(1, slots))}
    try:
        derived["max_storage_bytes"] = shutil.disk_usage(data_dir).total // 4
    except OSError:
        pass
    derived.update({k: v for k, v in given.items() if v is not None})
    return Limits(**derived)


# --- a job's bounds -------------------------------------------------------------------------------


def job_problems(cfg, launch: dict, overrides: dict, limits: Limits, n_train: int, positions: int | None,
                 processes_field: str) -> list[tuple[str, str]]:
    """Every setting of a checked job config beyond what ``limits`` allow, as (request field, message);
    a value the request did not set names the preset (``config``)."""
    t, d = cfg.train, cfg.data
    problems: list[tuple[str, str]] = []

    def refuse(key: str, message: str) -> None:
        problems.append((f"overrides.{key}" if key in overrides else "config", f"'{key}': {message}"))

    for key in ("batch_size", "eval_batch_size", "grad_accum_steps"):
        value = getattr(t, key)
        if value is not None and value > limits.max_batch_size:
            refuse(f"train.{key}", f"{value:,} is more than the service allows: at most {limits.max_batch_size:,}")
    if t.keep_checkpoints > limits.max_keep_checkpoints:
        refuse("train.keep_checkpoints", f"{t.keep_checkpoints:,} checkpoints kept; the service keeps at most"
                                         f" {limits.max_keep_checkpoints:,} per job")
    if t.num_workers > limits.cores:
        refuse("train.num_workers", f"{t.num_workers:,} data-loader processes; this machine has {limits.cores}"
                                    f" CPU core(s), so at most {limits.cores}")
    if positions is not None and d.max_length > positions:
        refuse("data.max_length", f"{d.max_length:,} tokens is more than the {positions:,} positions the model"
                                  f" '{cfg.model.name_or_path}' reads; at most {positions:,}")
    if t.time_budget_s is not None and t.time_budget_s > limits.job_seconds:
        refuse("train.time_budget_s", f"{t.time_budget_s:g} s is more than this key's job time limit of"
                                      f" {duration(limits.job_seconds)}")
    if t.epochs != "auto" and t.epochs > limits.max_epochs:
        refuse("train.epochs", f"{t.epochs:g} passes over the data; at most {limits.max_epochs:,g}")
    processes = launch["num_processes"]
    available, what = _process_bound(launch, limits)
    if processes > available:
        problems.append((processes_field, f"'{processes_field}': {processes:,} processes; {what}, so at most"
                                          f" {available}"))
    if not problems:
        problems += _length_problems(t, overrides, limits, max(1, math.ceil(
            n_train / (t.batch_size * t.grad_accum_steps * processes))))
    return problems


def _process_bound(launch: dict, limits: Limits) -> tuple[int, str]:
    if launch.get("gpus"):
        if limits.remote:
            return max(limits.gpus, REMOTE_GPUS), f"a worker has at most {max(limits.gpus, REMOTE_GPUS)} GPU(s)"
        return limits.gpus, f"this machine has {limits.gpus} GPU(s)"
    return limits.cores, f"this machine has {limits.cores} CPU core(s)"


def _length_problems(t, overrides: dict, limits: Limits, per_epoch: int) -> list[tuple[str, str]]:
    """Optimizer steps, evaluations and log lines of the planned run, counted without listing them."""
    problems: list[tuple[str, str]] = []

    def refuse(key: str, message: str) -> None:
        problems.append((f"overrides.{key}" if key in overrides else "config", f"'{key}': {message}"))

    explicit = t.max_steps is not None or t.epochs != "auto"
    length_key = "train.max_steps" if t.max_steps is not None else "train.epochs"
    if explicit:
        total = t.max_steps or max(1, round(t.epochs * per_epoch))
        how = "" if t.max_steps is not None else f" ({t.epochs:g} passes of {per_epoch:,} steps)"
        if total > limits.max_steps:
            refuse(length_key, f"{total:,} optimizer steps{how}; this key may run at most {limits.max_steps:,}"
                               " per job")
            return problems
    else:  # the auto recipe's longest plan
        total = AUTO_MAX_EPOCHS * per_epoch
    every = 0 if t.eval_every_steps == "auto" else t.eval_every_steps
    evaluations = count_evaluations(total, every, per_epoch)
    if evaluations > limits.max_evaluations:
        key = "train.eval_every_steps" if every else length_key
        refuse(key, f"{evaluations:,} evaluations over {total:,} optimizer steps; a job may evaluate at most"
                    f" {limits.max_evaluations:,} times")
    entries = total // t.logging_steps
    if entries > limits.max_log_entries:
        refuse("train.logging_steps", f"{entries:,} log entries over {total:,} optimizer steps; a job may log at"
                                      f" most {limits.max_log_entries:,}: set train.logging_steps to at least"
                                      f" {math.ceil(total / limits.max_log_entries):,}")
    return problems


# --- storage ---------------------------------------------------------------------------------------


def directory_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 if it is gone)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


class Storage:
    """Bytes each key stores: its datasets (as recorded) and its job directories (measured; a finished
    job's size is remembered, since nothing writes there any more)."""

    def __init__(self, store: Store, jobs_dir: Path):
        self.store, self.jobs_dir = store, jobs_dir
        self._finished: dict[str, int] = {}
        self._lock = threading.Lock()

    def used(self, owner: str, db=None) -> int:
        """Bytes ``owner`` stores now; ``db``: read inside the caller's transaction."""
        datasets, jobs = self.store.usage(owner, db)
        return datasets + sum(self._job_bytes(job_id, state) for job_id, state in jobs)

    def _job_bytes(self, job_id: str, state: str) -> int:
        with self._lock:
            if job_id in self._finished:
                return self._finished[job_id]
        size = directory_bytes(self.jobs_dir / job_id)
        if state in ("succeeded", "failed", "cancelled"):
            with self._lock:
                self._finished[job_id] = size
        return size

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._finished.pop(job_id, None)


def storage_message(used: int, limit: int, adding: int = 0) -> str:
    what = f" and this would add {adding / 1e6:.2f} MB" if adding else ""
    return (f"this key stores {used / 1e6:.2f} MB of its {limit / 1e6:.2f} MB (datasets and job models){what};"
            " delete datasets or jobs it no longer needs, or ask the operator for more")
