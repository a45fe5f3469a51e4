"""What a run report says, read from a finished run directory: ``build_report(RUN_DIR)`` is the
content of ``report.json``, the single machine-readable summary of a run (the comparison table and
the model card read it).

Everything is derived from what the directory already holds (eval_report.json, train_log.jsonl,
predictions/<split>.jsonl, textft_config.yaml), so a report can be rebuilt at any time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from textft import tasks
from textft.errors import UserError
from textft.files import read_json, read_jsonl

REPORT_VERSION = 1
CALIBRATION_BINS = 15
HISTOGRAM_BINS = 20
TOP_CONFUSIONS = 20
DEFAULT_MISTAKES = 10
SHORT_TEXT = 180
METRIC_NAMES = tasks.METRIC_NAMES


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
    records = read_jsonl(run_dir / "train_log.jsonl") if (run_dir / "train_log.jsonl").is_file() else []
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
            "config": config if isinstance(config, dict) else None}


# --- numbers ---------------------------------------------------------------------------------


def calibration(confidences, correct, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Expected calibration error over equal-width confidence bins (Guo et al. 2017), with the bins.

    Bin i holds confidences in (i/bins, (i+1)/bins]; ECE = sum over bins of |bin| / n * |accuracy - confidence|.
    """
    conf = np.asarray(confidences, dtype=float)
    ok = np.asarray(correct, dtype=bool)
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for i in range(bins):
        mask = idx == i
        count = int(mask.sum())
        acc = float(ok[mask].mean()) if count else None
        mean_conf = float(conf[mask].mean()) if count else None
        if count:
            ece += count / len(conf) * abs(acc - mean_conf)
        rows.append({"low": i / bins, "high": (i + 1) / bins, "count": count, "accuracy": acc,
                     "confidence": mean_conf})
    edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)
    return {"ece": float(ece), "num_bins": bins, "bins": rows, "mean_confidence": float(conf.mean()),
            "accuracy": float(ok.mean()),
            "histogram": {"edges": edges.round(4).tolist(),
                          "correct": np.histogram(conf[ok], edges)[0].tolist(),
                          "wrong": np.histogram(conf[~ok], edges)[0].tolist()}}


def normalized_confusion(matrix) -> list[list[float]]:
    """Rows divided by their totals: cell (i, j) is the share of class i predicted as j."""
    cm = np.asarray(matrix, dtype=float)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0).round(6).tolist()


def top_confusions(matrix, labels: list[str], k: int = TOP_CONFUSIONS) -> list[dict[str, Any]]:
    """The k most frequent (true, predicted) mistakes, with their share of the true class."""
    cm = np.asarray(matrix)
    totals = cm.sum(axis=1)
    off = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] > 0]
    off.sort(key=lambda t: (-t[0], -t[0] / max(1, totals[t[1]]), t[1], t[2]))
    return [{"true": labels[i], "pred": labels[j], "count": c, "share": round(c / max(1, totals[i]), 6)}
            for c, i, j in off[:k]]


def shorten(text: str, limit: int = SHORT_TEXT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def example(r: dict) -> dict[str, str]:
    """The shortened text of a prediction record, and its second text for a pair."""
    out = {"text": shorten(r.get("text", ""))}
    if r.get("text_pair") is not None:
        out["text_pair"] = shorten(r["text_pair"])
    return out


def confident_mistakes(rows: list[dict], n: int) -> list[dict[str, Any]]:
    wrong = [r for r in rows if r.get("label") != r.get("pred") and isinstance(r.get("confidence"), (int, float))]
    wrong.sort(key=lambda r: -r["confidence"])
    return [{"confidence": float(r["confidence"]), "label": r["label"], "pred": r["pred"], **example(r)}
            for r in wrong[:n]]


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


def check_rows(rows: list[dict], m: dict, split: str, warnings: list[str]) -> None:
    if len(rows) != m.get("num_examples"):
        warnings.append(f"predictions/{split}.jsonl holds {len(rows)} rows but the {split} split has"
                        f" {m.get('num_examples')} examples")


def best_evaluation(ev: dict, eval_records: list[dict], metric: str) -> dict | None:
    """The best validation result: as training recorded it, else the best ``metric`` in the log."""
    if isinstance(ev.get("best"), dict):
        return {**ev["best"], "source": "eval_report.json"}
    scored = [r for r in eval_records if isinstance(r.get(metric), (int, float))]
    if not scored:
        return None
    pick = min if metric in tasks.LOWER_IS_BETTER else max
    top = pick(scored, key=lambda r: r[metric])  # min/max keep the earliest of equal scores
    return {"step": top["step"], "epoch": top["epoch"], "metric": metric, "value": top[metric],
            "source": "train_log.jsonl"}


def build_report(run_dir: str | Path, mistakes: int = DEFAULT_MISTAKES) -> dict[str, Any]:
    """The content of ``report.json`` for a finished run directory (nothing is written)."""
    run = load_run(run_dir)
    ev, cfg = run["evaluation"], run["config"] or {}
    label_names = ev.get("label_names") or next(iter(ev["splits"].values()), {}).get("labels", [])
    model_cfg, data_cfg = cfg.get("model", {}), cfg.get("data", {})
    task = tasks.task_class(ev.get("task") or "single_label")  # runs from before tasks were single-label
    warnings: list[str] = []
    splits = {split: task.report().split_entry(m, label_names, run["predictions"].get(split), split, mistakes,
                                               warnings) for split, m in ev["splits"].items()}
    train_records = [r for r in run["records"] if "loss" in r and "eval" not in r and "step" in r]
    summary = [k for k in (*task.headline, "num_examples") if k != "ece"]
    eval_records = [{"step": r.get("step"), "epoch": r.get("epoch"), **{k: r["eval"].get(k) for k in summary}}
                    for r in run["records"] if isinstance(r.get("eval"), dict)]
    best = best_evaluation(ev, eval_records, task.default_metric)

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
    return {
        "report_version": REPORT_VERSION,
        "run": run_name(run_dir, cfg),
        "title": f"{model_name or 'model'} on {source or 'data'}",
        "model": model_name,
        "transfer": model_cfg.get("transfer"),
        "unfreeze_top_k": model_cfg.get("unfreeze_top_k") if model_cfg.get("transfer") == "top_k" else None,
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
        "warnings": warnings,
    }


def recipe_rows(recipe: Any, cfg: dict) -> list[dict[str, Any]]:
    """The settings textft chose by itself (``auto``), with the value used and the reason."""
    if not isinstance(recipe, dict):
        return []
    rows = []
    for key, why in recipe.items():
        section, _, name = str(key).partition(".")
        rows.append({"key": key, "value": (cfg.get(section) or {}).get(name), "why": str(why)})
    return rows


def fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def sorted_classes(split: dict) -> list[tuple[str, dict]]:
    return sorted(split["per_class"].items(), key=lambda kv: (kv[1]["f1"], kv[0]))
