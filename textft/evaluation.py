"""Evaluation: metrics through textft's ``evaluate`` modules, and the evaluation report files.

The metrics are ``evaluate`` modules shipped inside the package (``textft/metrics/<name>``), loaded
from their local path, so they work offline and any Hugging Face code can load them the same way
(``evaluate.load(metric_path("classification"))``); scikit-learn computes inside them.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from textft.files import replace_file, write_jsonl

METRICS_DIR = Path(__file__).parent / "metrics"


def metric_path(name: str) -> str:
    """Local path of one of textft's ``evaluate`` metric modules, for ``evaluate.load``."""
    return str(METRICS_DIR / name)


@functools.lru_cache(maxsize=None)
def load_metric(name: str = "classification"):
    import evaluate

    # In memory: nothing is written next to the module's cache, and several processes do not share files.
    return evaluate.load(metric_path(name), keep_in_memory=True)


def compute_metrics(y_true, y_pred, label_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, per-class precision/recall/F1/support and the confusion matrix."""
    return load_metric("classification").compute(predictions=np.asarray(y_pred).tolist(),
                                                 references=np.asarray(y_true).tolist(),
                                                 label_names=list(label_names))


def write_reports(out_dir: str | Path, reports: dict[str, dict[str, Any]], task, extra: dict[str, Any] | None = None,
                  title: str = "Evaluation") -> None:
    """``eval_report.json`` (all numbers, and the task they describe) and ``eval_report.md`` (tables) in
    ``out_dir``."""
    out_dir = Path(out_dir)
    replace_file(out_dir / "eval_report.json", json.dumps({"splits": reports, "task": task.name, **(extra or {})},
                                                          indent=2))
    replace_file(out_dir / "eval_report.md", task.markdown_report(reports, title))


def write_predictions(out_dir: Path, predictions: dict[str, list[dict]]) -> None:
    """``predictions/<split>.jsonl``: the per-example record behind every number in the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in predictions.items():
        write_jsonl(out_dir / f"{split}.jsonl", rows)


def evaluate_checkpoint(model: str, data: str, *, split: str | None = None, dataset_config: str | None = None,
                        text_column: str = "text", label_column: str = "label", batch_size: int = 64,
                        output: str | None = None, text_pair_column: str | None = None,
                        label_delimiter: str | None = None, **load_options) -> dict[str, Any]:
    """Metrics of a saved classifier (a directory or hub id) on a labelled file or hub split.

    Runs through the same ``Classifier`` that ``textft predict`` and ``textft serve`` use (with
    ``load_options`` for its ``from_pretrained``: precision, long_text, max_length, ...), so the
    numbers describe the model as it will be deployed. With ``output`` the directory gets
    ``eval_report.json/.md``, ``predictions/evaluation.jsonl`` and the rendered ``report.json/.md/.html``.
    """
    import time

    from textft.classifier import Classifier
    from textft.data import load_eval_split
    from textft.errors import UserError

    if output and (Path(output) / "config.json").exists():
        # eval_report.json and report.* there belong to the run that trained the model
        raise UserError(f"'--output': '{output}' holds a saved model, whose reports this evaluation would"
                        " replace; pass a new directory, such as runs/NAME-eval")
    started = time.perf_counter()
    clf = Classifier.from_pretrained(model, out_of_scope=False, **load_options)
    task = clf.task
    if label_delimiter is not None:
        task.delimiter = label_delimiter
    text_pair_column = text_pair_column or (clf.trained_setting("text_pair_column") if clf.pairs else None)
    ds, source = load_eval_split(data, split, text_column, label_column, task, dataset_config, text_pair_column)
    texts, labels = ds["text"], np.asarray(ds["labels"])
    pairs = ds["text_pair"] if text_pair_column else None
    predict_started = time.perf_counter()
    logits = clf.logits(texts, batch_size=batch_size, pairs=pairs)
    predict_s = time.perf_counter() - predict_started
    metrics = task.evaluate(logits, labels)
    window = clf.long_text == "sliding_window"
    settings = {"model": str(clf.model_dir), "task": task.name, "data_source": source, "max_length": clf.max_length,
                "long_text": clf.long_text, "stride": clf.stride if window else None,
                "pooling": clf.pooling if window else None, "precision": clf.precision, "backend": clf.backend,
                "device": str(clf.device)}
    metrics["settings"] = settings
    if output:
        from textft.report import write_run_report

        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        write_predictions(out / "predictions", {"evaluation": task.prediction_rows(texts, labels, logits, pairs)})
        timing = {"eval_s": round(time.perf_counter() - started, 3), "predict_s": round(predict_s, 3),
                  "texts_per_s": round(len(texts) / predict_s, 2) if predict_s > 0 else None}
        write_reports(out, {"evaluation": metrics}, task, {**settings, "timing": timing},
                      title=f"textft evaluate: {clf.model_dir} on {source}")
        write_run_report(out)
    return metrics
