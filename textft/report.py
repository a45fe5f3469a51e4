"""Run reports a person wants to read: ``report.json``, ``report.md`` and one self-contained ``report.html``.

Everything is derived from what a finished run directory already holds (eval_report.json,
train_log.jsonl, predictions/<split>.jsonl, textft_config.yaml), so ``textft report RUN_DIR``
re-renders it at any time. ``report.json`` is the single machine-readable summary of a run: the
comparison table and the model card read it.

    textft report RUN_DIR [RUN_DIR ...] [--mistakes N]
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from textft.config import UserError

log = logging.getLogger("textft")

REPORT_VERSION = 1
CALIBRATION_BINS = 15
HISTOGRAM_BINS = 20
MANY_CLASSES = 20
"""Above this many classes the confusion matrix drops its cell annotations and tables fold away."""
TOP_CONFUSIONS = 20
DEFAULT_MISTAKES = 10
PIXEL_DENSITY = 2
"""Image pixels per CSS pixel of the page."""
SHORT_TEXT = 180
HEADLINE = ("accuracy", "macro_f1", "weighted_f1", "loss", "ece")
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "weighted_f1": "weighted-F1", "loss": "loss",
                "ece": "ECE"}


# --- reading a run directory -----------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"'{path}' could not be read as JSON: {' '.join(str(e).split())}") from None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a run killed mid-write leaves a torn last line; the rest is still good
            if isinstance(row, dict):
                rows.append(row)
    return rows


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
    evaluation = _read_json(run_dir / "eval_report.json")
    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("splits"), dict):
        raise UserError(f"'{run_dir / 'eval_report.json'}' has no 'splits' mapping: not written by textft")
    records = _read_jsonl(run_dir / "train_log.jsonl") if (run_dir / "train_log.jsonl").is_file() else []
    predictions = {}
    for split in evaluation["splits"]:
        path = run_dir / "predictions" / f"{split}.jsonl"
        if path.is_file():
            predictions[split] = _read_jsonl(path)
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


def confident_mistakes(rows: list[dict], n: int) -> list[dict[str, Any]]:
    wrong = [r for r in rows if r.get("label") != r.get("pred") and isinstance(r.get("confidence"), (int, float))]
    wrong.sort(key=lambda r: -r["confidence"])
    return [{"confidence": float(r["confidence"]), "label": r["label"], "pred": r["pred"],
             "text": shorten(r.get("text", ""))} for r in wrong[:n]]


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


def _eval_summary(m: dict) -> dict[str, Any]:
    return {k: m.get(k) for k in ("accuracy", "macro_f1", "weighted_f1", "loss", "num_examples")}


def build_report(run_dir: str | Path, mistakes: int = DEFAULT_MISTAKES) -> dict[str, Any]:
    """The content of ``report.json`` for a finished run directory (nothing is written)."""
    run = load_run(run_dir)
    ev, cfg = run["evaluation"], run["config"] or {}
    label_names = ev.get("label_names") or next(iter(ev["splits"].values()), {}).get("labels", [])
    model_cfg, data_cfg = cfg.get("model", {}), cfg.get("data", {})
    warnings: list[str] = []

    splits: dict[str, Any] = {}
    for split, m in ev["splits"].items():
        labels = m.get("labels") or label_names
        entry = dict(m)
        entry["confusion_matrix_normalized"] = normalized_confusion(m["confusion_matrix"])
        entry["top_confusions"] = top_confusions(m["confusion_matrix"], labels)
        entry["ece"] = None
        rows = run["predictions"].get(split)
        if rows:
            if len(rows) != m.get("num_examples"):
                warnings.append(f"predictions/{split}.jsonl holds {len(rows)} rows but the {split} split has"
                                f" {m.get('num_examples')} examples")
            usable = [r for r in rows if isinstance(r.get("confidence"), (int, float))]
            if usable:
                entry["calibration"] = calibration([r["confidence"] for r in usable],
                                                   [r.get("label") == r.get("pred") for r in usable])
                entry["ece"] = entry["calibration"]["ece"]
            entry["most_confident_mistakes"] = confident_mistakes(rows, mistakes)
            entry["predictions_file"] = f"predictions/{split}.jsonl"
        splits[split] = entry

    train_records = [r for r in run["records"] if "loss" in r and "eval" not in r and "step" in r]
    eval_records = [{"step": r.get("step"), "epoch": r.get("epoch"), **_eval_summary(r["eval"])}
                    for r in run["records"] if isinstance(r.get("eval"), dict)]
    best = None
    if isinstance(ev.get("best"), dict):
        best = {**ev["best"], "source": "eval_report.json"}
    elif eval_records:
        scored = [r for r in eval_records if isinstance(r.get("macro_f1"), (int, float))]
        if scored:
            top = max(scored, key=lambda r: r["macro_f1"])  # max keeps the earliest of equal scores
            best = {"step": top["step"], "epoch": top["epoch"], "metric": "macro_f1", "value": top["macro_f1"],
                    "source": "train_log.jsonl"}

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


# --- text ------------------------------------------------------------------------------------


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _setting(v) -> str:
    return f"{v:g}" if isinstance(v, float) else _fmt(v)


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _sorted_classes(split: dict) -> list[tuple[str, dict]]:
    return sorted(split["per_class"].items(), key=lambda kv: (kv[1]["f1"], kv[0]))


def run_facts(report: dict) -> list[tuple[str, str]]:
    """(name, value) lines describing the run, shared by the Markdown and HTML reports."""
    facts = []
    if report.get("model"):
        transfer = report.get("transfer") or "-"
        if report.get("unfreeze_top_k") is not None:
            transfer += f" (top {report['unfreeze_top_k']} layers)"
        facts += [("model", report["model"]), ("transfer", transfer)]
    facts.append(("data", f"{report.get('data_source') or '-'} ({report['num_labels']} labels)"))
    p = report.get("parameters") or {}
    if p.get("total"):
        facts.append(("trainable parameters", f"{p['trainable']:,} of {p['total']:,}"
                                              f" ({100 * p['trainable'] / p['total']:.1f}%)"))
    t, tp = report["timings"], report["throughput"]
    if t.get("train_seconds") is not None:
        per = f", {t['seconds_per_step']:.3f} s/step" if t.get("seconds_per_step") else ""
        exact = f"{t['train_seconds']:.1f} s, " if t["train_seconds"] >= 90 else ""
        facts.append(("training time", f"{_duration(t['train_seconds'])} ({exact}{t.get('optimizer_steps')}"
                                       f" optimizer steps{per})"))
    if tp.get("samples_per_s"):
        tokens = f", {tp['tokens_per_s']:,.0f} tokens/s" if tp.get("tokens_per_s") else ""
        facts.append(("throughput", f"{tp['samples_per_s']:,.1f} samples/s{tokens} (training)"))
    if report.get("precision"):
        facts.append(("precision / processes", f"{report['precision']} / {report.get('num_processes') or 1}"))
    if report.get("best"):
        b = report["best"]
        name = METRIC_NAMES.get(b.get("metric"), b.get("metric"))
        epoch = f" (epoch {b['epoch']:.2f})" if isinstance(b.get("epoch"), (int, float)) else ""
        facts.append(("best validation", f"{name} {_fmt(b.get('value'))} at step {b.get('step')}{epoch}"))
    if report.get("stop_reason"):
        facts.append(("stopped", str(report["stop_reason"])))
    return facts


def render_markdown(report: dict) -> str:
    lines = [f"# {report['title']}", "", "| split | examples | accuracy | macro-F1 | weighted-F1 | loss | ECE |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for split, m in report["splits"].items():
        lines.append(f"| {split} | {m.get('num_examples')} | " + " | ".join(_fmt(m.get(k)) for k in HEADLINE) + " |")
    lines += ["", "## Run", ""] + [f"- {k}: {v}" for k, v in run_facts(report)]
    for w in report["warnings"]:
        lines.append(f"- warning: {w}")
    evals = report["history"]["eval"]
    if evals:
        lines += ["", "## Validation during training", "", "| step | epoch | loss | accuracy | macro-F1 |",
                  "|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['step']} | {_fmt(r['epoch'], 2)} | {_fmt(r['loss'])} | {_fmt(r['accuracy'])} |"
                  f" {_fmt(r['macro_f1'])} |" for r in evals]
    for split, m in report["splits"].items():
        lines += ["", f"## {split}", "", "### Per class (worst F1 first)", "",
                  "| label | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
                  for name, c in _sorted_classes(m)]
        if m["top_confusions"]:
            lines += ["", "### Most confused pairs", "", "| true | predicted | count | share of true class |",
                      "|---|---|---:|---:|"]
            lines += [f"| {c['true']} | {c['pred']} | {c['count']} | {100 * c['share']:.1f}% |"
                      for c in m["top_confusions"]]
        if m.get("calibration"):
            cal = m["calibration"]
            lines += ["", f"### Calibration: ECE {cal['ece']:.4f} ({cal['num_bins']} bins; mean confidence"
                          f" {cal['mean_confidence']:.4f}, accuracy {cal['accuracy']:.4f})", "",
                      "| confidence | examples | accuracy | mean confidence |", "|---|---:|---:|---:|"]
            lines += [f"| {b['low']:.2f}-{b['high']:.2f} | {b['count']} | {_fmt(b['accuracy'])} |"
                      f" {_fmt(b['confidence'])} |" for b in cal["bins"] if b["count"]]
        if m.get("most_confident_mistakes"):
            lines += ["", "### Most confident mistakes", "", "| confidence | true | predicted | text |",
                      "|---:|---|---|---|"]
            lines += [f"| {r['confidence']:.3f} | {r['label']} | {r['pred']} | {_md_cell(r['text'])} |"
                      for r in m["most_confident_mistakes"]]
        elif "predictions_file" not in m:
            lines += ["", f"(no predictions/{split}.jsonl: calibration and mistakes are not available)"]
    if report.get("recipe"):
        lines += ["", "## Settings chosen automatically", "", "| setting | value | why |", "|---|---:|---|"]
        lines += [f"| {r['key']} | {_setting(r['value'])} | {_md_cell(r['why'])} |" for r in report["recipe"]]
    if report.get("config"):
        lines += ["", "## Configuration", "", "```yaml", yaml.safe_dump(report["config"], sort_keys=False).rstrip(),
                  "```"]
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


# --- figures ---------------------------------------------------------------------------------


def _figure(width: float, height: float):
    # The object-oriented API keeps clear of pyplot's global state and never needs a display.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    # Twice the pixels the page shows (see _img), so that zooming in on 77 tick labels stays sharp.
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white", dpi=PIXEL_DENSITY * 100)
    return buf.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels, read from the PNG header."""
    return struct.unpack(">II", png[16:24])


def _short_label(name: str, limit: int = 34) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def plot_confusion(split: dict) -> bytes:
    from matplotlib.colors import PowerNorm

    labels = split.get("labels") or list(split["per_class"])
    cm = np.asarray(split["confusion_matrix_normalized"])
    counts = np.asarray(split["confusion_matrix"])
    n = len(labels)
    many = n > MANY_CLASSES
    names = [_short_label(x) for x in labels]
    size = 7 if many else 10
    # Room for the longest tick label, then square cells: about 0.105 in (10 px) each for many classes.
    margin = 0.6 + max(len(x) for x in names) * size * 0.6 / 72
    matrix = max(8.0, 0.105 * n) if many else max(2.6, 0.9 * n)
    fig = _figure(matrix + margin + 1.3, matrix + margin + 0.5)
    ax = fig.add_subplot()
    # A square-root colour scale keeps a 2% confusion visible next to a 95% diagonal.
    im = ax.imshow(cm, cmap="Blues", norm=PowerNorm(gamma=0.5, vmin=0, vmax=1), interpolation="nearest")
    horizontal = not many and max(len(x) for x in names) * n <= 40
    ax.set_xticks(range(n), names, rotation=0 if horizontal else 90, fontsize=size)
    ax.set_yticks(range(n), names, fontsize=size)
    ax.set_xlabel("predicted label", fontsize=11)
    ax.set_ylabel("true label", fontsize=11)
    if many:
        ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
        ax.grid(which="minor", color="#e6e6e6", linewidth=0.4)
        ax.tick_params(which="minor", length=0)
    else:
        for i in range(n):
            for j in range(n):
                text = f"{100 * cm[i, j]:.1f}%\n{counts[i, j]}" if n <= 10 else f"{100 * cm[i, j]:.0f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=10 if n <= 10 else 8,
                        color="white" if cm[i, j] > 0.45 else "#222222")
    fig.colorbar(im, ax=ax, shrink=0.6 if many else 0.8, label="share of the true class (row-normalised)")
    return _png(fig)


def plot_per_class_f1(split: dict, macro_f1: float | None) -> bytes:
    """One row per class, worst F1 on top: F1 as a coloured dot, precision and recall as small marks.

    Dots rather than bars, because the axis starts near the worst class: a good model's classes all
    sit between 0.8 and 1.0, and bars from zero would make them look the same.
    """
    from matplotlib import colormaps

    items = _sorted_classes(split)[::-1]  # rows are drawn bottom-up: the worst class ends on top
    n = len(items)
    many = n > MANY_CLASSES
    fig = _figure(10 if many else 8, max(2.6, 0.18 * n + 1.4))
    ax = fig.add_subplot()
    y = np.arange(n)
    f1 = np.array([c["f1"] for _, c in items])
    precision = np.array([c["precision"] for _, c in items])
    recall = np.array([c["recall"] for _, c in items])
    low = min(f1.min(), precision.min(), recall.min())
    start = 0.0 if low < 0.5 else np.floor(low * 10 - 0.5) / 10
    ax.hlines(y, start, f1, color="#d5d9e0", linewidth=0.8, zorder=1)
    ax.scatter(precision, y, marker="|", s=40 if many else 90, color="#7f7f7f", linewidths=1.2, zorder=2,
               label="precision")
    ax.scatter(recall, y, marker="x", s=14 if many else 40, color="#1f77b4", linewidths=0.9, zorder=2,
               label="recall")
    ax.scatter(f1, y, s=26 if many else 70, c=colormaps["RdYlGn"](0.15 + 0.7 * f1), edgecolors="#444444",
               linewidths=0.4, zorder=3, label="F1")
    ax.set_yticks(y, [_short_label(name, 40) for name, _ in items], fontsize=7 if many else 10)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlim(start, 1.0 + 0.015 * (1.0 - start))
    ax.set_xticks(np.round(np.arange(start, 1.0001, 0.1 if start >= 0.5 else 0.2), 2))
    ax.set_xlabel("score" + (f" (axis starts at {start:.1f})" if start > 0 else ""))
    right_of_axes = ax.get_yaxis_transform()  # x in axes fractions, y in rows
    for i, (_, c) in enumerate(items):
        ax.text(1.01, i, f"{c['f1']:.2f} (n={c['support']})", va="center", fontsize=6.5 if many else 9,
                color="#333333", transform=right_of_axes)
    if macro_f1 is not None:
        ax.axvline(macro_f1, color="#555555", linestyle="--", linewidth=1, zorder=0, label=f"macro-F1 {macro_f1:.3f}")
    ax.axvline(1.0, color="#bbbbbb", linewidth=0.8, zorder=0)
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="lower left", fontsize=9, ncols=4)
    ax.set_title("Per class, worst F1 at the top (F1 and support at the right)", loc="left", fontsize=11)
    return _png(fig)


def plot_learning_curves(report: dict) -> bytes | None:
    train, evals = report["history"]["train"], report["history"]["eval"]
    if not train and not evals:
        return None
    fig = _figure(12, 4.2)
    ax_loss, ax_metric = fig.subplots(1, 2) if evals else (fig.add_subplot(), None)
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], color="#1f77b4", linewidth=1.2,
                     marker="o" if len(train) < 3 else None, label="training loss")
    val = [r for r in evals if r.get("loss") is not None]
    if val:
        ax_loss.plot([r["step"] for r in val], [r["loss"] for r in val], color="#d62728", marker="o",
                     linewidth=1.5, label="validation loss")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_title("Loss", loc="left")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    best = report.get("best")
    if ax_metric is not None:
        for key, color in (("macro_f1", "#2ca02c"), ("accuracy", "#9467bd")):
            pts = [r for r in evals if r.get(key) is not None]
            ax_metric.plot([r["step"] for r in pts], [r[key] for r in pts], marker="o", color=color,
                           linewidth=1.5, label=f"validation {METRIC_NAMES[key]}")
        ax_metric.set_xlabel("optimizer step")
        ax_metric.set_title("Validation metrics", loc="left")
        ax_metric.grid(alpha=0.3)
        if best and isinstance(best.get("step"), (int, float)):
            ax_metric.axvline(best["step"], color="#555555", linestyle="--", linewidth=1)
            name = METRIC_NAMES.get(best.get("metric"), best.get("metric"))
            ax_metric.annotate(f"best {name} {_fmt(best.get('value'), 3)}\nstep {best['step']}",
                               xy=(best["step"], best.get("value") or 0), xytext=(-8, -28),
                               textcoords="offset points", ha="right", fontsize=9,
                               arrowprops={"arrowstyle": "-", "color": "#555555"})
        ax_metric.legend(loc="lower right")
    return _png(fig)


def plot_calibration(cal: dict) -> bytes:
    fig = _figure(12, 4.2)
    ax_hist, ax_rel = fig.subplots(1, 2)
    hist = cal["histogram"]
    edges = np.asarray(hist["edges"])
    width = np.diff(edges)
    correct, wrong = np.asarray(hist["correct"]), np.asarray(hist["wrong"])
    # Side by side, not stacked: stacked bars misstate the smaller part on a log scale.
    ax_hist.bar(edges[:-1], correct, width=width / 2, align="edge", color="#2ca02c", label="correct")
    ax_hist.bar(edges[:-1] + width / 2, wrong, width=width / 2, align="edge", color="#d62728", label="wrong")
    ax_hist.set_xlim(0, 1)
    ax_hist.set_xlabel("confidence (highest softmax probability)")
    # A confident model puts most examples in the last bin; a log scale keeps its mistakes visible.
    log_scale = (correct + wrong).max() > 0.5 * (correct + wrong).sum()
    if log_scale:
        ax_hist.set_yscale("log")
    ax_hist.set_ylabel("examples" + (" (log scale)" if log_scale else ""))
    ax_hist.set_title("Confidence of the predictions", loc="left")
    ax_hist.legend(loc="best")
    ax_hist.grid(axis="y", alpha=0.3)

    bins = [b for b in cal["bins"] if b["count"]]
    bw = 1 / cal["num_bins"]
    lows = np.array([b["low"] for b in bins])
    acc = np.array([b["accuracy"] for b in bins])
    conf = np.array([b["confidence"] for b in bins])
    ax_rel.plot([0, 1], [0, 1], linestyle="--", color="#777777", linewidth=1, label="perfect calibration")
    ax_rel.bar(lows, acc, width=bw, align="edge", color="#1f77b4", alpha=0.85, edgecolor="white", linewidth=0.8,
               label="accuracy in bin")
    # The gap is drawn as a line at the bin's mean confidence: shading it would hide the bar it overlaps.
    ax_rel.hlines(conf, lows + 0.1 * bw, lows + 0.9 * bw, color="#d62728", linewidth=2.2,
                  label="mean confidence in bin")
    ax_rel.vlines(lows + bw / 2, np.minimum(acc, conf), np.maximum(acc, conf), color="#d62728", linewidth=1)
    ax_rel.set_xlim(0, 1)
    ax_rel.set_ylim(0, 1.02)
    ax_rel.set_xlabel("confidence")
    ax_rel.set_ylabel("accuracy")
    ax_rel.set_title(f"Reliability: ECE {cal['ece']:.3f} ({cal['num_bins']} bins)", loc="left")
    ax_rel.legend(loc="upper left", fontsize=9)
    ax_rel.grid(alpha=0.3)
    return _png(fig)


def render_figures(report: dict) -> dict[str, bytes]:
    """PNG images by name; empty when matplotlib (the ``report`` extra) is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("matplotlib is not installed: the report has no plots (pip install 'textft[report]')")
        return {}
    figures = {}
    if (curves := plot_learning_curves(report)) is not None:
        figures["learning_curves"] = curves
    for split, m in report["splits"].items():
        figures[f"{split}/confusion"] = plot_confusion(m)
        figures[f"{split}/per_class_f1"] = plot_per_class_f1(m, m.get("macro_f1"))
        if m.get("calibration"):
            figures[f"{split}/calibration"] = plot_calibration(m["calibration"])
    return figures


# --- HTML ------------------------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Helvetica,Arial,sans-serif;color:#1d2330;
 margin:0;background:#f4f5f7;line-height:1.45}
main{max-width:1260px;margin:0 auto;padding:24px 32px 64px;background:#fff;min-height:100vh}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:21px;margin:40px 0 10px;padding-top:12px;border-top:2px solid #e3e6eb}
h3{font-size:16px;margin:26px 0 8px;color:#33415c}
nav{font-size:14px;margin:6px 0 18px}nav a{margin-right:14px;color:#2457a6;text-decoration:none}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #dfe3ea;border-radius:8px;padding:10px 16px;min-width:120px;background:#fafbfc}
.card .v{font-size:24px;font-weight:600}.card .k{font-size:12px;color:#5b6577;text-transform:uppercase;letter-spacing:.04em}
table{border-collapse:collapse;font-size:14px;margin:8px 0}
th,td{padding:4px 10px;border-bottom:1px solid #e6e8ec;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafbfc}
.facts td:first-child{color:#5b6577;white-space:nowrap}
img{max-width:100%;height:auto;display:block;margin:8px 0;border:1px solid #eceef2}
.note{color:#5b6577;font-size:13px}.warn{color:#a33}
details{margin:10px 0}summary{cursor:pointer;color:#2457a6}
pre{background:#f6f8fa;padding:10px 14px;font-size:12.5px;overflow:auto;border-radius:6px}
td.text{max-width:560px;font-size:13px}
"""


def _e(v) -> str:
    return html.escape(str(v))


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    width = png_size(png)[0] // PIXEL_DENSITY
    return (f'<img alt="{_e(alt)}" width="{width}"'
            f' src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')


def _table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    th = "".join(f'<th class="n">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>" for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = "".join(f'<td class="n">{_e(v)}</td>' if i in numeric else f"<td>{_e(v)}</td>"
                        for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _anchor(split: str) -> str:
    return "split-" + "".join(c if c.isalnum() else "-" for c in split)


def render_html(report: dict, figures: dict[str, bytes]) -> str:
    splits = report["splits"]
    primary = report.get("primary_split")
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(report['title'])}</title>"
           f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head>"
           f"<body><main><h1>{_e(report['title'])}</h1>"]
    links = ["<a href='#summary'>summary</a>"]
    if "learning_curves" in figures:
        links.append("<a href='#training'>training</a>")
    links += [f"<a href='#{_anchor(s)}'>{_e(s)}</a>" for s in splits]
    if report.get("recipe"):
        links.append("<a href='#recipe'>auto settings</a>")
    if report.get("config"):
        links.append("<a href='#config'>configuration</a>")
    out.append(f"<nav>{''.join(links)}</nav><section id='summary'>")
    if primary:
        m = splits[primary]
        cards = "".join(f"<div class='card'><div class='k'>{_e(primary)} {METRIC_NAMES[k]}</div>"
                        f"<div class='v'>{_fmt(m.get(k))}</div></div>" for k in HEADLINE if m.get(k) is not None)
        out.append(f"<div class='cards'>{cards}</div>")
    out.append(_table(["split", "examples", "accuracy", "macro-F1", "weighted-F1", "loss", "ECE"],
                      [[s, m.get("num_examples"), *(_fmt(m.get(k)) for k in HEADLINE)] for s, m in splits.items()],
                      numeric={1, 2, 3, 4, 5, 6}))
    facts = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in run_facts(report))
    out.append(f"<table class='facts'>{facts}</table>")
    out += [f"<p class='warn'>warning: {_e(w)}</p>" for w in report["warnings"]]
    out.append("</section>")

    if "learning_curves" in figures:
        out.append("<section id='training'><h2>Training</h2>")
        out.append(_img(figures["learning_curves"], "learning curves"))
        evals = report["history"]["eval"]
        if evals:
            rows = [[r["step"], _fmt(r["epoch"], 2), _fmt(r["loss"]), _fmt(r["accuracy"]), _fmt(r["macro_f1"])]
                    for r in evals]
            table = _table(["step", "epoch", "validation loss", "accuracy", "macro-F1"], rows, numeric={0, 1, 2, 3, 4})
            out.append(f"<details><summary>validation after each evaluation ({len(evals)})</summary>{table}</details>")
        out.append("</section>")

    for split, m in splits.items():
        many = len(m["per_class"]) > MANY_CLASSES
        out.append(f"<section id='{_anchor(split)}'><h2>{_e(split)} split"
                   f" <span class='note'>({m.get('num_examples')} examples)</span></h2>")
        out.append("<h3>Confusion matrix</h3><p class='note'>Rows are true labels, columns predictions; each row is"
                   " divided by its total, so the diagonal is the recall of each class.</p>")
        out.append(_img(figures.get(f"{split}/confusion"), f"{split} confusion matrix"))
        if m["top_confusions"] and len(m["per_class"]) > 2:
            out.append(f"<h3>Most confused pairs (top {len(m['top_confusions'])})</h3>")
            out.append(_table(["true label", "predicted as", "count", "share of true class"],
                              [[c["true"], c["pred"], c["count"], f"{100 * c['share']:.1f}%"]
                               for c in m["top_confusions"]], numeric={2, 3}))
        out.append("<h3>Per class</h3>")
        out.append(_img(figures.get(f"{split}/per_class_f1"), f"{split} F1 per class"))
        rows = [[name, _fmt(c["precision"]), _fmt(c["recall"]), _fmt(c["f1"]), c["support"]]
                for name, c in _sorted_classes(m)]
        table = _table(["label", "precision", "recall", "F1", "support"], rows, numeric={1, 2, 3, 4})
        out.append(f"<details{'' if many else ' open'}><summary>precision, recall, F1 and support of"
                   f" {len(rows)} classes (worst F1 first)</summary>{table}</details>")
        if m.get("calibration"):
            cal = m["calibration"]
            out.append(f"<h3>Calibration</h3><p class='note'>Expected calibration error {cal['ece']:.4f}: the"
                       f" mean confidence is {cal['mean_confidence']:.3f} for an accuracy of {cal['accuracy']:.3f}"
                       f" ({cal['num_bins']} equal-width confidence bins).</p>")
            out.append(_img(figures.get(f"{split}/calibration"), f"{split} calibration"))
        mistakes = m.get("most_confident_mistakes")
        if mistakes:
            out.append(f"<h3>The {len(mistakes)} most confident mistakes</h3>")
            body = "".join(f"<tr><td class='n'>{r['confidence']:.3f}</td><td>{_e(r['label'])}</td>"
                           f"<td>{_e(r['pred'])}</td><td class='text'>{_e(r['text'])}</td></tr>" for r in mistakes)
            out.append("<table><thead><tr><th class='n'>confidence</th><th>true label</th><th>predicted</th>"
                       f"<th>text</th></tr></thead><tbody>{body}</tbody></table>")
        elif "predictions_file" not in m:
            out.append(f"<p class='note'>No predictions/{_e(split)}.jsonl in the run directory: calibration and"
                       " mistakes are not available.</p>")
        out.append("</section>")

    if report.get("recipe"):
        out.append("<section id='recipe'><h2>Settings chosen automatically</h2><p class='note'>These keys were"
                   " left at <code>auto</code>; textft picked the values from the backbone and the data.</p>")
        out.append(_table(["setting", "value", "why"],
                          [[r["key"], _setting(r["value"]), r["why"]] for r in report["recipe"]], numeric={1}))
        out.append("</section>")
    if report.get("config"):
        out.append("<section id='config'><h2>Configuration</h2><pre>"
                   f"{_e(yaml.safe_dump(report['config'], sort_keys=False))}</pre></section>")
    if not figures:
        out.append("<p class='note'>Plots need matplotlib: pip install 'textft[report]', then"
                   " textft report RUN_DIR.</p>")
    out.append(f"<p class='note'>textft report of {_e(report['run'])}; re-render with"
               f" <code>textft report {_e(report['run'])}</code>.</p></main></body></html>")
    return "\n".join(out)


# --- writing ---------------------------------------------------------------------------------


def _replace_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_run_report(run_dir: Path, mistakes: int = DEFAULT_MISTAKES) -> None:
    """Write ``report.json``, ``report.md`` and ``report.html`` into a finished run directory.

    All three are rendered in memory first and each replaces its old version in one rename, so a
    failure leaves the previous report whole.
    """
    run_dir = Path(run_dir)
    report = build_report(run_dir, mistakes)
    texts = {"report.json": json.dumps(_json_safe(report), indent=2, ensure_ascii=False) + "\n",
             "report.md": render_markdown(report),
             "report.html": render_html(report, render_figures(report))}
    try:
        for name, text in texts.items():
            _replace_atomically(run_dir / name, text.encode("utf-8"))
    except OSError as e:
        raise UserError(f"could not write the report into '{run_dir}': {e.strerror or e}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="textft report", description="(Re-)render report.json, report.md and report.html of finished runs.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="directory written by textft train")
    parser.add_argument("--mistakes", type=int, default=DEFAULT_MISTAKES,
                        help=f"how many of the most confident mistakes to list (default {DEFAULT_MISTAKES})")
    args = parser.parse_args(argv)
    problems = [p for d in args.run_dirs if (p := check_run_dir(d))]
    if args.mistakes < 0:
        problems.append(f"'--mistakes' must be >= 0, got {args.mistakes}")
    if problems:
        raise UserError(problems)
    for run_dir in args.run_dirs:
        write_run_report(Path(run_dir), args.mistakes)
        report = json.loads((Path(run_dir) / "report.json").read_text())
        for split, m in report["splits"].items():
            ece = f"  ECE {m['ece']:.4f}" if m.get("ece") is not None else ""
            print(f"{run_dir} {split}: accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}{ece}")
        print(f"report written: {Path(run_dir) / 'report.html'} (also report.md, report.json)")
    return 0
