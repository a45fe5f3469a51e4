"""Classification metrics (scikit-learn) and the evaluation report files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

METRICS = ("accuracy", "macro_f1", "weighted_f1", "loss")


def compute_metrics(y_true, y_pred, label_names: list[str], extra: list[str] | None = None) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, per-class precision/recall/F1/support and the confusion matrix.

    ``extra`` names metrics from the ``evaluate`` library (they may need the Hub to load).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    ids = list(range(len(label_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    out: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=ids, average="weighted", zero_division=0)),
        "num_examples": int(len(y_true)),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                             "support": int(s[i])} for i, name in enumerate(label_names)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        "labels": list(label_names),
    }
    for name in extra or []:
        import evaluate

        out[name] = evaluate.load(name).compute(predictions=y_pred.tolist(), references=y_true.tolist())
    return out


def markdown_report(reports: dict[str, dict[str, Any]], title: str = "Evaluation") -> str:
    """Readable tables: headline metrics per split, then per-class scores and confusion matrix."""
    lines = [f"# {title}", "", "| split | examples | accuracy | macro-F1 | weighted-F1 | loss |",
             "|---|---:|---:|---:|---:|---:|"]
    for split, m in reports.items():
        loss = f"{m['loss']:.4f}" if m.get("loss") is not None else "-"
        lines.append(f"| {split} | {m['num_examples']} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} |"
                     f" {m['weighted_f1']:.4f} | {loss} |")
    for split, m in reports.items():
        lines += ["", f"## {split}: per class", "", "| label | precision | recall | F1 | support |",
                  "|---|---:|---:|---:|---:|"]
        for name, c in m["per_class"].items():
            lines.append(f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |")
        if len(m["labels"]) <= 20:
            names = m["labels"]
            lines += ["", f"## {split}: confusion matrix (rows: true, columns: predicted)", "",
                      "| true \\ pred | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
            for name, row in zip(names, m["confusion_matrix"]):
                lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_reports(out_dir: str | Path, reports: dict[str, dict[str, Any]], extra: dict[str, Any] | None = None,
                  title: str = "Evaluation") -> None:
    """``eval_report.json`` (all numbers) and ``eval_report.md`` (tables) in ``out_dir``."""
    out_dir = Path(out_dir)
    payload = {"splits": reports, **(extra or {})}
    (out_dir / "eval_report.json").write_text(json.dumps(payload, indent=2))
    (out_dir / "eval_report.md").write_text(markdown_report(reports, title))


def prediction_rows(texts: list[str], labels, logits, label_names: list[str], max_chars: int = 1000) -> list[dict]:
    """One record per example: text (shortened), true and predicted label, confidence (max softmax)."""
    z = logits - logits.max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    pred = probs.argmax(-1)
    return [{"text": t if len(t) <= max_chars else t[:max_chars] + "…", "label": label_names[int(y)],
             "pred": label_names[int(p)], "confidence": round(float(probs[i, p]), 6)}
            for i, (t, y, p) in enumerate(zip(texts, labels, pred))]


def write_predictions(out_dir: Path, predictions: dict[str, list[dict]]) -> None:
    """``predictions/<split>.jsonl``: the per-example record behind every number in the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in predictions.items():
        with open(out_dir / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def summary_line(split: str, m: dict[str, Any]) -> str:
    loss = f" loss {m['loss']:.4f}" if m.get("loss") is not None else ""
    return (f"{split}: accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}"
            f"  weighted-F1 {m['weighted_f1']:.4f}{loss}  ({m['num_examples']} examples)")


def evaluate_checkpoint(model_dir: str, data: str, split: str | None = None, text_column: str = "text",
                        label_column: str = "label", batch_size: int = 64, max_length: int | None = None,
                        long_text: str | None = None, stride: int | None = None, pooling: str = "mean",
                        precision: str = "fp32", device: str | None = None, output: str | None = None,
                        allow_pickle: bool = False, trust_remote_code: bool = False) -> dict[str, Any]:
    """Metrics of a saved classifier on a labelled file or hub split.

    Runs through the same ``Classifier`` that ``textft predict`` and ``textft serve`` use, so the
    numbers describe the model as it will be deployed: long texts truncated, head+tail, or
    pooled over sliding windows. fp32 by default, so that a re-evaluation reproduces the numbers
    of an fp32 training run exactly. With ``output`` the directory gets ``eval_report.json/.md``,
    ``predictions/evaluation.jsonl`` and the rendered ``report.json/.md/.html``.
    """
    import time

    import torch
    import torch.nn.functional as F

    from textft.config import UserError
    from textft.data import load_eval_split
    from textft.inference import Classifier

    if output and (Path(output) / "config.json").exists():
        # eval_report.json and report.* there belong to the run that trained the model
        raise UserError(f"'--output': '{output}' holds a saved model, whose reports this evaluation would"
                        " replace; pass a new directory, such as runs/NAME-eval")
    started = time.perf_counter()
    clf = Classifier.from_pretrained(model_dir, device=device, precision=precision, long_text=long_text,
                                     stride=stride, max_length=max_length, pooling=pooling,
                                     allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                                     out_of_scope=False)
    label2id = {name: i for i, name in enumerate(clf.labels)}
    ds, source = load_eval_split(data, split, text_column, label_column, label2id)
    texts, labels = ds["text"], np.asarray(ds["labels"])
    predict_started = time.perf_counter()
    logits = clf.logits(texts, batch_size=batch_size)
    predict_s = time.perf_counter() - predict_started
    metrics = compute_metrics(labels, logits.argmax(-1), clf.labels)
    metrics["loss"] = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
    settings = {"model": str(clf.model_dir), "data_source": source, "max_length": clf.max_length,
                "long_text": clf.long_text, "stride": clf.stride if clf.long_text == "sliding_window" else None,
                "pooling": clf.pooling if clf.long_text == "sliding_window" else None,
                "precision": clf.precision, "device": str(clf.device)}
    metrics["settings"] = settings
    if output:
        from textft.report import write_run_report

        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        write_predictions(out / "predictions", {"evaluation": prediction_rows(texts, labels, logits, clf.labels)})
        timing = {"eval_s": round(time.perf_counter() - started, 3), "predict_s": round(predict_s, 3),
                  "texts_per_s": round(len(texts) / predict_s, 2) if predict_s > 0 else None}
        write_reports(out, {"evaluation": metrics}, {**settings, "timing": timing},
                      title=f"textft evaluate: {clf.model_dir} on {source}")
        write_run_report(out)
    return metrics
