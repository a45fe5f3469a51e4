"""``textft evaluate``: the metrics of a saved classifier on labelled data, as it will be deployed,
with the evaluation report files (``eval_report.json/.md``, predictions, the rendered report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from textft.classifier import Classifier
from textft.data import load_eval_split
from textft.errors import UserError
from textft.report import write_run_report
from textft.run_dir import write_predictions, write_reports


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

    if output and (Path(output) / "config.json").exists():
        # eval_report.json and report.* there belong to the run that trained the model
        raise UserError(f"'--output': '{output}' holds a saved model, whose reports this evaluation would"
                        " replace; pass a new directory, such as runs/NAME-eval")
    started = time.perf_counter()
    clf = Classifier.from_pretrained(model, **load_options)
    task = clf.task
    if label_delimiter is not None:
        task.delimiter = label_delimiter
    text_pair_column = text_pair_column or (clf.trained_setting("text_pair_column") if clf.pairs else None)
    ds, source = load_eval_split(data, split, text_column, label_column, task, dataset_config, text_pair_column)
    texts, labels = ds["text"], np.asarray(ds["labels"])
    pairs = ds["text_pair"] if text_pair_column else None
    predict_started = time.perf_counter()
    outputs = clf.outputs(texts, batch_size=batch_size, pairs=pairs)
    logits = outputs.logits
    predict_s = time.perf_counter() - predict_started
    metrics = task.evaluate(logits, labels, intervals=True)
    if clf.out_of_scope is not None:  # the model's own answers: its out-of-scope threshold applied
        from textft.calibration import measure_outputs

        metrics["out_of_scope"] = measure_outputs(outputs, labels, clf.out_of_scope["threshold"])
    window = clf.long_text == "sliding_window"
    settings = {"model": str(clf.model_dir), "task": task.name, "data_source": source, "max_length": clf.max_length,
                "long_text": clf.long_text, "stride": clf.stride if window else None,
                "pooling": clf.pooling if window else None, "precision": clf.precision, "backend": clf.backend,
                "device": str(clf.device), "out_of_scope": (clf.out_of_scope or {}).get("method")}
    metrics["settings"] = settings
    if output:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        write_predictions(out / "predictions", {"evaluation": task.prediction_rows(texts, labels, logits, pairs)})
        timing = {"eval_s": round(time.perf_counter() - started, 3), "predict_s": round(predict_s, 3),
                  "texts_per_s": round(len(texts) / predict_s, 2) if predict_s > 0 else None}
        write_reports(out, {"evaluation": metrics}, task, {**settings, "timing": timing},
                      title=f"textft evaluate: {clf.model_dir} on {source}")
        write_run_report(out)
    return metrics
