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
                        truncation: str | None = None, output: str | None = None) -> dict[str, Any]:
    """Metrics of a saved classifier on a labelled file or hub split (length-sorted batches)."""
    import torch
    import torch.nn.functional as F
    import yaml
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from textft.config import UserError
    from textft.data import load_eval_split
    from textft.tokenization import eval_loader, sort_by_length, tokenize_splits

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise UserError(f"'--model': '{model_dir}' is not a saved model directory (no config.json)")
    trained = {}
    if (path / "textft_config.yaml").is_file():
        trained = yaml.safe_load((path / "textft_config.yaml").read_text()).get("data", {})
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    label2id = {str(k): int(v) for k, v in model.config.label2id.items()}
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    ds, source = load_eval_split(data, split, text_column, label_column, label2id)
    max_length = max_length or trained.get("max_length") or min(tokenizer.model_max_length, 512)
    truncation = truncation or trained.get("truncation", "head")
    tokenized = tokenize_splits({"eval": ds}, tokenizer, max_length, truncation,
                                trained.get("head_fraction", 0.25))["eval"]
    tokenized = sort_by_length(tokenized)
    logits = []
    with torch.inference_mode():
        for batch in eval_loader(tokenized, tokenizer, batch_size, mixed_precision=False):
            batch.pop("labels")
            logits.append(model(**batch).logits.float())
    logits_t = torch.cat(logits)
    labels = torch.tensor(tokenized["labels"])
    metrics = compute_metrics(labels.numpy(), logits_t.argmax(-1).numpy(), names)
    metrics["loss"] = float(F.cross_entropy(logits_t, labels))
    if output:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        write_reports(out, {"evaluation": metrics}, {"model": str(path), "data_source": source,
                                                     "max_length": max_length, "truncation": truncation},
                      title=f"textft evaluate: {path} on {source}")
    return metrics
