"""How long a job will take on this service, before it starts: from the measured times of the jobs it
already ran.

Every job that succeeded at its first attempt left what it measured: its optimizer steps and training
seconds (the evaluation report), its global batch (the plan), and its wall time from start to finish.
Training throughput is a property of the backbone, the sequence length and the hardware, not of the
data set, so a new job is estimated from the latest jobs with the same backbone and ``data.max_length``:
with jobs of different sizes, from the straight line through their times (a fixed part, and a part
that grows with the samples trained on); with one, or jobs of about one size, from their median samples
per second over the samples it will train on plus the median time they spent outside the training
loop (starting, tokenizing, the final evaluation and the export). With no such job, jobs of the same backbone at another length are scaled by the ratio of the lengths (time grows
about linearly with it at these lengths). With neither, there is no estimate and the answer says so:
a first job measures it. Early stopping and a time budget can only make a job shorter.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import yaml

from textft.service.containment import duration
from textft.service.jobs import RUN_DIR
from textft.service.layout import DataDir
from textft.service.store import Store

SAMPLE = 5
"""Latest matching jobs an estimate is taken from."""
_SETTINGS: dict[str, tuple[str, int] | None] = {}


@dataclass
class Measured:
    job: str
    backbone: str
    max_length: int
    samples_per_s: float
    overhead_s: float
    samples: int
    """Samples it trained on (optimizer steps x global batch)."""
    wall_s: float
    """Its time from start to model."""


def job_settings(data: DataDir, job_id: str) -> tuple[str, int] | None:
    """(backbone, max_length) a finished job trained with, from its saved config (read once)."""
    if job_id not in _SETTINGS:
        if len(_SETTINGS) > 10_000:
            _SETTINGS.clear()
        path = data.job(job_id) / RUN_DIR / "textft_config.yaml"
        try:
            saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            _SETTINGS[job_id] = (str(saved["model"]["name_or_path"]), int(saved["data"]["max_length"]))
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
            _SETTINGS[job_id] = None
    return _SETTINGS[job_id]


def measurements(store: Store, data: DataDir) -> list[Measured]:
    """What each recent uninterrupted job measured, latest first."""
    out = []
    for row in store.timed_jobs():
        metrics, progress = row["metrics"] or {}, row["progress"] or {}
        seconds, steps, batch = metrics.get("train_seconds"), metrics.get("optimizer_steps"), progress.get("global_batch")
        settings = job_settings(data, row["id"])
        if not (settings and seconds and steps and batch and row["finished_at"]):
            continue
        wall = row["finished_at"] - row["started_at"]
        out.append(Measured(row["id"], settings[0], settings[1], steps * batch / seconds, max(0.0, wall - seconds),
                            steps * batch, wall))
    return out


def line_through(used: list[Measured]) -> tuple[float, float] | None:
    """(fixed seconds, seconds per sample) of the least-squares line through the wall times of jobs of
    different sizes: it also carries the costs inside the training loop that do not grow with the
    samples (the first steps, evaluations of a fixed validation set). None when the sizes are too close
    to tell the two apart (the largest under 1.5 x the smallest) or the line makes no sense."""
    sizes = [m.samples for m in used]
    if len(used) < 2 or max(sizes) < 1.5 * min(sizes):
        return None
    slope, intercept = statistics.linear_regression(sizes, [m.wall_s for m in used])
    return (intercept, slope) if slope > 0 and intercept >= 0 else None


def estimate(store: Store, data: DataDir, backbone: str, max_length: int, total_steps: int, global_batch: int,
             time_budget_s: float | None = None) -> dict:
    """The expected time of a job from its start to its model (``seconds``, None when nothing was
    measured yet) and how it was estimated (``method``, ``jobs``, ``how``)."""
    history = [m for m in measurements(store, data) if m.backbone == backbone]
    same = [m for m in history if m.max_length == max_length][:SAMPLE]
    samples = total_steps * global_batch
    line = line_through(same)
    if line:
        method, used = "measured", same
        overhead, rate = line[0], 1 / line[1]
        basis = (f"a line through the times of {len(used)} earlier jobs with {backbone} at max_length {max_length}"
                 f" ({min(m.samples for m in used):,} to {max(m.samples for m in used):,} samples) on this service:"
                 f" {duration(overhead)} whatever the size (start, evaluation, export) plus {rate:,.1f} samples/s")
    elif same or history:
        method, used = ("measured", same) if same else ("scaled", history[:SAMPLE])
        rate = statistics.median(m.samples_per_s * m.max_length / max_length for m in used)
        overhead = statistics.median(m.overhead_s for m in used)
        lengths = ", ".join(str(n) for n in sorted({m.max_length for m in used}))
        basis = (f"{len(used)} earlier job(s) with {backbone} at max_length {lengths}"
                 f"{'' if same else f', scaled to {max_length}'} on this service: {rate:,.1f} samples/s (median),"
                 f" plus {duration(overhead)} to start, evaluate and export")
    else:
        return {"seconds": None, "method": "none", "jobs": [], "how": f"no job with {backbone} has finished on this"
                " service yet: the first one measures its speed here, and later jobs are estimated from it"}
    training = samples / rate
    capped = bool(time_budget_s) and training > time_budget_s
    training = min(training, time_budget_s) if time_budget_s else training
    how = (f"from {basis}, for {samples:,} samples ({total_steps} steps of {global_batch})"
           + (f"; train.time_budget_s stops it at {duration(time_budget_s)}" if capped else "")
           + ". Time in the queue is not included.")
    return {"seconds": round(training + overhead, 1), "training_s": round(training, 1), "overhead_s": round(overhead, 1),
            "samples_per_s": round(rate, 2), "method": method, "jobs": [m.job for m in used], "how": how}


def recipe_estimate(service, resolved, total_steps: int, global_batch: int) -> dict:
    """The estimate ``POST /v1/recipe`` answers for a resolved config."""
    budget = getattr(resolved.train, "time_budget_s", None)
    return estimate(service.store, service.data, str(resolved.model.name_or_path), int(resolved.data.max_length),
                    total_steps, global_batch, float(budget) if budget else None)

