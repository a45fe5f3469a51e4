"""What a run report says, read from a finished run directory: ``build_report(RUN_DIR)`` is the
content of ``report.json``, the single machine-readable summary of a run (the comparison table and
the model card read it).

Everything is derived from what the directory already holds (eval_report.json, the records of train_log.jsonl,
predictions/<split>.jsonl, textft_config.yaml), so a report can be rebuilt at any time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from textft import run_events, task_reports, tasks
from textft.errors import UserError
from textft.files import read_json, read_jsonl
from textft.out_of_scope import METHOD_NAMES, OOS_KEY

REPORT_VERSION = 1
DEFAULT_MISTAKES = 10


# --- reading a run directory -----------------------------------------------------------------


def check_run_dir(run_dir: str | Path) -> str | None:
    """The reason ``run_dir`` cannot be reported on, or None."""
    path = Path(run_dir)
    if not path.is_dir():
        return f"run directory '{run_dir}' does not exist"
    if not (path / "eval_report.json").is_file():
        return (f"'{run_dir}' has no eval_report.json: not a finished textft run"
                " (train or `textft evaluate --output` writes it)")
    return None


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The raw pieces of a run directory: eval report, log records, predictions per split, config."""
    run_dir = Path(run_dir)
    if problem := check_run_dir(run_dir):
        raise UserError(problem)
    evaluation = read_json(run_dir / "eval_report.json")
    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("splits"), dict):
        raise UserError(f"'{run_dir / 'eval_report.json'}' has no 'splits' mapping: not written by textft")
    rows = read_jsonl(run_dir / "train_log.jsonl") if (run_dir / "train_log.jsonl").is_file() else []
    warnings = []
    try:
        records = run_events.read(rows)
    except run_events.NewerSchema as e:  # the numbers of eval_report.json are still reported
        records, warnings = [], [f"{e}; the learning curves are left out"]
    predictions = {}
    for split in evaluation["splits"]:
        path = run_dir / "predictions" / f"{split}.jsonl"
        if path.is_file():
            predictions[split] = read_jsonl(path)
    config = evaluation.get("config")
    if (run_dir / "textft_config.yaml").is_file():
        try:
            config = yaml.safe_load((run_dir / "textft_config.yaml").read_text()) or config
        except yaml.YAMLError:
            pass  # eval_report.json carries the same resolved config
    return {"dir": run_dir, "evaluation": evaluation, "records": records, "predictions": predictions,
            "config": config if isinstance(config, dict) else None, "warnings": warnings}


# --- numbers ---------------------------------------------------------------------------------


def throughput(train_records: list[dict]) -> dict[str, float | None]:
    """Whole-run samples/s and tokens/s from the logged windows.

    Each record's rate covers the optimizer steps since the previous record, so the run's rate is
    the step-weighted harmonic mean of the windows (total work / total time), not their plain mean.
    """
    out: dict[str, float | None] = {"samples_per_s": None, "tokens_per_s": None}
    for key in out:
        prev, work, seconds = 0, 0.0, 0.0
        for r in train_records:
            steps = r["step"] - prev if r["step"] > prev else r["step"]
            prev = r["step"]
            rate = r.get(key)
            if isinstance(rate, (int, float)) and rate > 0 and steps > 0:
                work += steps
                seconds += steps / rate
        out[key] = round(work / seconds, 3) if seconds > 0 else None
    return out


def run_name(run_dir: str | Path, cfg: dict) -> str:
    """The run directory's name; while train.py stages the run in a hidden temporary sibling, the
    name it is about to get (``output.dir``)."""
    name = Path(run_dir).resolve().name
    final = (cfg.get("output") or {}).get("dir")
    if name.startswith(".") and ".tmp-" in name and final:
        return Path(final).name
    return name


def best_evaluation(ev: dict, records: list, eval_records: list[dict], metric: str) -> dict | None:
    """The best validation result: as training recorded it (eval_report.json, else the loop's last
    ``best`` record), else, for a log from before those records, the best ``metric`` in it."""
    if isinstance(ev.get("best"), dict):
        return {**ev["best"], "source": "eval_report.json"}
    summary = run_events.summarize(records)
    if summary.best is not None:
        b = summary.best
        return {"step": b.step, "epoch": b.epoch, "metric": b.metric, "value": b.value, "source": "train_log.jsonl"}
    if summary.plan is not None:  # the loop recorded its decisions: none was a best model
        return None
    scored = [r for r in eval_records if isinstance(r.get(metric), (int, float))]
    if not scored:
        return None
    pick = min if metric in tasks.LOWER_IS_BETTER else max
    top = pick(scored, key=lambda r: r[metric])  # min/max keep the earliest of equal scores
    return {"step": top["step"], "epoch": top["epoch"], "metric": metric, "value": top[metric],
            "source": "train_log.jsonl"}


def with_intervals(task, m: dict, rows: list[dict] | None, label_names: list[str]) -> dict:
    """A split's metrics with their 95% intervals: as evaluated, or for a run from before intervals
    were stored, rescored the same way from its saved predictions (``Task.rescored``)."""
    if m.get("intervals") is not None or not rows or len(rows) != m.get("num_examples"):
        return m
    try:
        truth, (pred,) = task.row_outcomes([rows], m.get("labels") or label_names)
    except (KeyError, TypeError, ValueError):
        return m  # records of another shape: the report goes on without intervals
    return task.rescored(m, truth, pred)


def build_report(run_dir: str | Path, mistakes: int = DEFAULT_MISTAKES) -> dict[str, Any]:
    """The content of ``report.json`` for a finished run directory (nothing is written)."""
    run = load_run(run_dir)
    ev, cfg = run["evaluation"], run["config"] or {}
    label_names = ev.get("label_names") or next(iter(ev["splits"].values()), {}).get("labels", [])
    model_cfg, data_cfg = cfg.get("model", {}), cfg.get("data", {})
    task = tasks.task_class(ev.get("task") or tasks.DEFAULT_TASK)
    warnings: list[str] = list(run["warnings"])
    sections = task_reports.sections(task.name)
    splits = {split: sections.split_entry(with_intervals(task, m, run["predictions"].get(split), label_names), label_names,
                                        run["predictions"].get(split), split, mistakes, warnings)
              for split, m in ev["splits"].items()}
    train_records = [run_events.to_dict(r) for r in run["records"] if isinstance(r, run_events.TrainRecord)]
    summary = [k for k in (*task.headline, "num_examples") if k != "ece"]
    eval_records = [{"step": r.step, "epoch": r.epoch, **{k: r.eval.get(k) for k in summary}}
                    for r in run["records"] if isinstance(r, run_events.EvalRecord)]
    best = best_evaluation(ev, run["records"], eval_records, task.default_metric)

    steps = ev.get("optimizer_steps")
    seconds = ev.get("train_seconds")
    timings = {"train_seconds": seconds, "optimizer_steps": steps,
               "seconds_per_step": round(seconds / steps, 4) if seconds and steps else None,
               "evaluations": len(eval_records)}
    params = ev.get("parameters") or {}
    model_name = model_cfg.get("name_or_path") or ev.get("model")
    source = ev.get("data_source") or data_cfg.get("train_file") or data_cfg.get("dataset")
    # The held-out test split leads: it is the number a run is judged by.
    primary = "test" if "test" in splits else next(iter(splits), None)
    if primary:
        splits = {primary: splits[primary], **{k: v for k, v in splits.items() if k != primary}}
    warnings += [line for split, m in splits.items() if (line := task.wide_interval(split, m))]
    if rescored := [split for split, m in splits.items() if m.get("rescored_from_predictions")]:
        warnings.append(f"{', '.join(rescored)}: rescored from the saved predictions of a run from an older textft"
                        " (macro averages over the classes present, and intervals); the validation during training"
                        " and the best validation are as the run recorded them")
    return {
        "report_version": REPORT_VERSION,
        "run": run_name(run_dir, cfg),
        "title": f"{model_name or 'model'} on {source or 'data'}",
        "model": model_name,
        "transfer": model_cfg.get("transfer"),
        "unfreeze_top_k": model_cfg.get("unfreeze_top_k") if model_cfg.get("transfer") == "top_k" else None,
        "lora": {k: model_cfg.get(f"lora_{k}") for k in ("rank", "alpha", "dropout", "target_modules", "train_pooler")}
        if model_cfg.get("transfer") == "lora" else None,
        "data_source": source,
        "task": task.name,
        "headline": list(task.headline),
        "curves": list(task.curves),
        "loss_name": task.loss_name,
        "text_pair": bool(ev.get("text_pair")),
        "label_names": label_names,
        "num_labels": len(label_names),
        "primary_split": primary,
        "splits": splits,
        "parameters": params,
        "precision": ev.get("precision"),
        "num_processes": ev.get("num_processes"),
        # The same top-level keys as eval_report.json, so readers of either (the model card) find them.
        "optimizer_steps": steps,
        "train_seconds": seconds,
        "timings": timings,
        "throughput": throughput(train_records),
        "best": best,
        "stop_reason": ev.get("stop_reason"),
        "history": {"train": [{k: r.get(k) for k in ("step", "epoch", "loss", "lr", "samples_per_s",
                                                     "tokens_per_s")} for r in train_records],
                    "eval": eval_records},
        "config": cfg or None,
        "recipe": recipe_rows(ev.get("recipe"), cfg),
        "out_of_scope": out_of_scope_entry(Path(run_dir)),
        "warnings": warnings,
    }


def out_of_scope_entry(run_dir: Path) -> dict[str, Any] | None:
    """The model's out-of-scope settings (``textft calibrate``, or training with data.oos_label) as the
    report shows them: the score and threshold, why that score, every score measured, and the
    histograms of in-scope and out-of-scope scores on each data it was measured on."""
    path = run_dir / "config.json"
    try:
        settings = read_json(path).get(OOS_KEY) if path.is_file() else None
    except (UserError, AttributeError):
        return None
    if not isinstance(settings, dict) or not isinstance(settings.get("calibration"), dict):
        return None
    cal = settings["calibration"]
    measured = {f"calibration ({cal.get('data') or 'labelled data'})": cal,
                **{split: m for split, m in (settings.get("evaluations") or {}).items() if isinstance(m, dict)}}
    return {"method": settings.get("method"), "description": METHOD_NAMES.get(settings.get("method"), ""),
            "threshold": settings.get("threshold"), "label": settings.get("label"), "target": settings.get("target"),
            "chosen_because": cal.get("chosen_because"), "methods": cal.get("methods") or {},
            "measured": {name: {k: v for k, v in m.items() if k != "methods"} for name, m in measured.items()}}



def recipe_rows(recipe: Any, cfg: dict) -> list[dict[str, Any]]:
    """The settings textft chose by itself (``auto``), with the value used and the reason."""
    if not isinstance(recipe, dict):
        return []
    rows = []
    for key, why in recipe.items():
        section, _, name = str(key).partition(".")
        rows.append({"key": key, "value": (cfg.get(section) or {}).get(name), "why": str(why)})
    return rows


