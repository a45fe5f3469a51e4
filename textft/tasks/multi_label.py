"""A set of classes per text (possibly empty): multi-hot targets, binary cross-entropy per label,
sigmoid scores and decision thresholds chosen on validation data (one per label for macro-F1, or one
for all), saved in config.json and applied by predict, serve and ``textft.load``."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from textft.errors import UserError, closest, row_list
from textft.intervals import multi_label_values
from textft.metric_modules import load_metric
from textft.tasks.base import (METRIC_NAMES, Task, check_top_k, class_cells, class_index, coverage_note, example_text,
                               is_list, is_sequence_feature, md_cell, shown, weights_by_name)

THRESHOLDS_KEY = "textft_thresholds"
"""config.json entry holding the decision thresholds of a multi-label model."""
GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)
"""Candidate thresholds: a coarse grid generalises better than every distinct validation score."""
SCORE_KEYS = ("macro_f1", "micro_f1", "samples_f1", "subset_accuracy", "hamming_loss")
MAX_UNSEEN_SHOWN = 10


def sigmoid(logits: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(np.asarray(logits, dtype=np.float64))


def f1_counts(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-label F1 of boolean (n, L) predictions (0 where a label has neither positives nor predictions)."""
    tp = (pred & truth).sum(0)
    denom = pred.sum(0) + truth.sum(0)
    return np.divide(2 * tp, denom, out=np.zeros(pred.shape[1]), where=denom > 0)


def grid_score(pred: np.ndarray, truth: np.ndarray, metric: str) -> float:
    """One of SCORE_KEYS for boolean predictions, higher is better (Hamming loss is negated)."""
    if metric == "macro_f1":  # over the labels present (a true or predicted positive), as the reports
        present = pred.any(0) | truth.any(0)
        return float(f1_counts(pred, truth)[present].mean()) if present.any() else 0.0
    if metric == "micro_f1":
        tp = (pred & truth).sum()
        return float(2 * tp / max(1, pred.sum() + truth.sum()))
    if metric == "samples_f1":
        tp, denom = (pred & truth).sum(1), pred.sum(1) + truth.sum(1)
        return float(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0).mean())
    if metric == "subset_accuracy":
        return float((pred == truth).all(1).mean())
    return -float((pred != truth).mean())


def number(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


def middle_of_best(scores: np.ndarray) -> int:
    """Index of the middle of the best-scoring run of thresholds: a plateau's centre, not its edge."""
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return int(best[len(best) // 2])


def tune_thresholds(probs: np.ndarray, truth: np.ndarray, tuning: str, metric: str) -> np.ndarray:
    """Per-label thresholds from GRID: each label's best F1 (per_label), the best ``metric`` with one
    threshold for all (global), or 0.5 (none)."""
    n_labels = probs.shape[1]
    if tuning == "none" or len(probs) == 0:
        return np.full(n_labels, 0.5)
    truth = truth.astype(bool)
    if tuning == "per_label":
        f1 = np.stack([f1_counts(probs >= t, truth) for t in GRID])  # (thresholds, labels)
        chosen = np.array([GRID[middle_of_best(f1[:, j])] for j in range(n_labels)])
        # A label without a positive example here cannot be tuned: it keeps the neutral 0.5.
        return np.where(truth.any(0), chosen, 0.5)
    scores = np.array([grid_score(probs >= t, truth, metric) for t in GRID])
    return np.full(n_labels, GRID[middle_of_best(scores)])


class MultiLabel(Task):
    name = "multi_label"
    problem_type = "multi_label_classification"
    metrics = ("macro_f1", "micro_f1", "samples_f1", "subset_accuracy", "hamming_loss", "loss")
    headline = ("macro_f1", "micro_f1", "samples_f1", "subset_accuracy", "hamming_loss", "loss")
    curves = ("macro_f1", "micro_f1")
    default_metric = "macro_f1"
    exact_test = "subset_accuracy"
    resampled = staticmethod(multi_label_values)
    resampled_metrics = ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss")
    noise_metric = "micro_f1"
    loss_name = "binary cross-entropy loss"
    output_noun = "labels"
    min_epochs = 3.0
    """Each label is a binary decision of its own with few positives (GoEmotions: 28 labels, the rarest
    on 0.2% of the rows): one pass ended GoEmotions at macro-F1 0.439, three at 0.535
    (benchmarks/recipes.md)."""
    min_epochs_reason = "each label of a multi_label task is a binary decision with few positives"
    answer_fields = ("labels", "top_k", "scores")
    calibration = "thresholds"

    def __init__(self, label_names: list[str], delimiter: str | None = None, int_ids: bool = False,
                 thresholds: np.ndarray | None = None, tuning: str = "per_label", tune_metric: str = "macro_f1",
                 thresholds_source: str | None = None):
        super().__init__(label_names)
        self.delimiter, self.int_ids = delimiter, int_ids
        self.thresholds = None if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        self.tuning, self.tune_metric = tuning, tune_metric
        self.thresholds_source = thresholds_source

    def configure(self, train_cfg, metric: str) -> None:
        """Threshold tuning for this run: ``train.threshold_tuning`` (auto: per label when selecting by
        macro-F1, else one threshold for the selected metric)."""
        tuning = train_cfg.threshold_tuning
        if tuning == "auto":
            tuning = "per_label" if metric in ("macro_f1", "loss") else "global"
        self.tuning = tuning
        self.tune_metric = metric if metric in SCORE_KEYS else "macro_f1" if tuning == "per_label" else "micro_f1"

    # -- reading labels ---------------------------------------------------------------------------

    @classmethod
    def from_training(cls, cfg, values: list, feature, where: str, problems: list[str]) -> "MultiLabel":
        delimiter = cfg.label_delimiter
        inner = getattr(feature, "feature", None) if is_sequence_feature(feature) else None
        class_names = getattr(inner, "names", None)
        int_ids = class_names is not None or bool(cfg.label_names)
        task = cls(list(cfg.label_names or class_names or []), delimiter, int_ids)
        column = cfg.label_column
        shape = task.shape_problems(where, column, values)
        if delimiter is None and not any(is_list(v) for v in values):
            shape.append(f"{where}: column '{column}' holds single labels, not lists; multi_label needs a list"
                         " per text (e.g. [\"joy\", \"love\"], [] for none) or data.label_delimiter for"
                         " strings like 'joy|love'")
        elif delimiter is not None and not any(isinstance(v, str) and delimiter in v for v in values):
            example = next((v for v in values if isinstance(v, str)), None)
            shape.append(f"'data.label_delimiter' {delimiter!r} splits none of the labels in column '{column}' of"
                         f" {where} (e.g. {example!r}); check the separator, or remove data.label_delimiter"
                         " for one label per text")
        problems += shape
        if shape or task.label_names:
            return task
        task.label_names = sorted({name for labels in task.sets(values) for name in labels})
        return task

    @classmethod
    def from_model_config(cls, names: list[str], config: dict, where: str) -> "MultiLabel":
        stored = config.get(THRESHOLDS_KEY)
        if stored is None:
            return cls(names)
        values = stored.get("values") if isinstance(stored, dict) else None
        bad = not isinstance(values, dict) or set(values) != set(names) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1 for v in values.values())
        if bad:
            raise UserError(f"{where}: '{THRESHOLDS_KEY}.values' must map each of the {len(names)} labels to a"
                            f" threshold in (0, 1), got {values!r}")
        return cls(names, thresholds=np.array([values[n] for n in names]), tuning=stored.get("tuning", "per_label"),
                   tune_metric=stored.get("metric", "macro_f1"), thresholds_source="stored with the model")

    def shape_problems(self, where: str, column: str, values: list) -> list[str]:
        """Rows that are neither the split's kind of label (lists, or delimited strings) nor empty."""
        if self.delimiter is None:
            missing = [i for i, v in enumerate(values) if v is None]
            scalars = [i for i, v in enumerate(values) if v is not None and not is_list(v)]
            problems = [f"{where} has {len(missing)} missing label(s) in column '{column}' at {row_list(missing)};"
                        " write [] for a text with none of the labels"] if missing else []
            if scalars and len(scalars) < len(values) - len(missing):
                problems.append(f"{where} mixes lists and single labels in column '{column}': single labels at"
                                f" {row_list(scalars)}; write every label as a list ([] for none)")
            return problems
        lists = [i for i, v in enumerate(values) if v is not None and not isinstance(v, str)]
        return [f"{where} has non-string labels in column '{column}' at {row_list(lists)}, but"
                f" data.label_delimiter {self.delimiter!r} expects strings like 'a{self.delimiter}b'"] if lists else []

    def label_set(self, value) -> list[str]:
        if value is None:
            return []  # an empty CSV cell: none of the labels
        if isinstance(value, str):
            parts = value.split(self.delimiter) if self.delimiter is not None else [value]
            return [p.strip() for p in parts if p.strip()]
        items = value if is_list(value) else [value]
        names = self.label_names
        # Integers are class ids when the names come from a ClassLabel or data.label_names.
        return [(names[v] if 0 <= v < len(names) else f"#{v}") if self.int_ids and type(v) is int else str(v).strip()
                for v in items]

    def sets(self, values: list) -> list[list[str]]:
        return [self.label_set(v) for v in values]

    def check(self, where: str, column: str, values: list) -> list[str]:
        problems = self.shape_problems(where, column, values)
        if problems:
            return problems
        known, unseen = set(self.label_names), {}
        for i, labels in enumerate(self.sets(values)):
            for name in labels:
                if name not in known:
                    unseen.setdefault(name, []).append(i)
        if unseen:
            shown = "; ".join(f"{name!r} at {row_list(rows)}" for name, rows in list(unseen.items())[:MAX_UNSEEN_SHOWN])
            first = next(iter(unseen))
            more = f" and {len(unseen) - MAX_UNSEEN_SHOWN} more" if len(unseen) > MAX_UNSEEN_SHOWN else ""
            problems.append(f"{where} has label(s) in column '{column}' never seen in training: {shown}{more}"
                            f"{closest(first, self.label_names)}; training labels: {', '.join(self.label_names[:30])}")
        return problems

    def encode(self, values: list) -> list[list[float]]:
        index = {n: i for i, n in enumerate(self.label_names)}
        rows = []
        for labels in self.sets(values):
            row = [0.0] * len(index)
            for name in labels:
                row[index[name]] = 1.0
            rows.append(row)
        return rows

    def label_counts(self, labels: list) -> dict[str, int]:
        """Multi-hot rows: how many texts carry each label."""
        return {name: int(sum(row[i] for row in labels)) for i, name in enumerate(self.label_names)}

    def describe_label(self, label) -> str:
        return ", ".join(name for name, on in zip(self.label_names, label) if on)

    def train_problem(self, labels: list) -> str | None:
        if not np.asarray(labels).any():
            return "every text of the train split has an empty label list; a classifier needs positive examples"
        return None

    # -- training and evaluation ------------------------------------------------------------------

    def pos_weight(self, spec, labels: list):
        """BCE positive-class weights: balanced (negatives / positives of each label) or a mapping."""
        import torch

        if spec in (None, "none"):
            return None
        if spec == "balanced":
            y = np.asarray(labels, dtype=np.float64)
            pos = y.sum(0)
            return torch.tensor(np.where(pos > 0, (len(y) - pos) / np.maximum(pos, 1), 1.0), dtype=torch.float32)
        return torch.tensor(weights_by_name(spec, self.label_names), dtype=torch.float32)

    def loss_fn(self, train_cfg, train_labels: list) -> Callable:
        import torch.nn.functional as F

        pos_weight = self.pos_weight(train_cfg.class_weights, train_labels)
        eps = train_cfg.label_smoothing

        def loss(logits, labels):
            weight = pos_weight.to(logits.device) if pos_weight is not None else None
            targets = labels.float() * (1 - eps) + eps / 2 if eps else labels.float()
            return F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=weight)
        return loss

    def scores(self, pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
        return load_metric("multi_label").compute(predictions=pred.astype(np.int8).tolist(),
                                                  references=truth.astype(np.int8).tolist(),
                                                  label_names=list(self.label_names))

    def evaluate(self, logits: np.ndarray, labels: np.ndarray, intervals: bool = False) -> dict[str, Any]:
        """Scores at the model's thresholds (tuned on this split while training), the same at 0.5, the
        thresholds, and the mean binary cross-entropy."""
        import torch
        import torch.nn.functional as F

        probs, truth = sigmoid(logits), np.asarray(labels) > 0.5
        if self.thresholds is not None:
            thresholds, source = self.thresholds, self.thresholds_source or "chosen on the validation split"
        else:
            thresholds, source = tune_thresholds(probs, truth, self.tuning, self.tune_metric), "tuned on this split"
        metrics = self.scores(probs >= thresholds, truth)
        at_half = self.scores(probs >= 0.5, truth)
        metrics["at_0.5"] = {k: at_half[k] for k in (*SCORE_KEYS, "per_class", "label_cardinality_pred")}
        metrics["thresholds"] = {n: float(t) for n, t in zip(self.label_names, thresholds)}
        metrics["threshold_tuning"] = {"tuning": self.tuning, "metric": self.tune_metric, "source": source}
        metrics["loss"] = float(F.binary_cross_entropy_with_logits(
            torch.from_numpy(np.asarray(logits, dtype=np.float32)), torch.from_numpy(truth.astype(np.float32))))
        return self.add_intervals(metrics, truth, probs >= thresholds) if intervals else metrics

    @classmethod
    def row_outcomes(cls, runs: list[list[dict]], label_names: list[str] | None = None
                     ) -> tuple[np.ndarray, list[np.ndarray]]:
        index = class_index(label_names, {str(x) for rows in runs for r in rows for key in ("labels", "pred")
                                          for x in r.get(key) or []})

        def hot(rows: list[dict], key: str) -> np.ndarray:
            out = np.zeros((len(rows), len(index)), dtype=bool)
            for i, r in enumerate(rows):
                out[i, [index[str(x)] for x in r.get(key) or []]] = True
            return out
        return hot(runs[0], "labels"), [hot(rows, "pred") for rows in runs]

    @staticmethod
    def class_counts(truth, pred, k: int) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(truth).sum(0)[:k], np.asarray(pred).sum(0)[:k]

    def choose_decision(self, logits: np.ndarray, labels: np.ndarray) -> dict | None:
        self.thresholds = tune_thresholds(sigmoid(logits), np.asarray(labels) > 0.5, self.tuning, self.tune_metric)
        self.thresholds_source = "chosen on the validation split"
        return self.model_config()[THRESHOLDS_KEY]

    def model_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"problem_type": self.problem_type}
        if self.thresholds is not None:
            out[THRESHOLDS_KEY] = {"tuning": self.tuning, "metric": self.tune_metric, "split": "validation",
                                   "values": {n: float(t) for n, t in zip(self.label_names, self.thresholds)}}
        return out

    # -- prediction -------------------------------------------------------------------------------

    def decision_thresholds(self) -> np.ndarray:
        return self.thresholds if self.thresholds is not None else np.full(len(self.label_names), 0.5)

    def decode(self, logits: np.ndarray, top_k: int = 1, return_all_scores: bool = False,
               out_of_scope: dict | None = None, in_scope: np.ndarray | None = None) -> list[dict]:
        """``labels``: every label whose sigmoid score reaches its threshold, best first, with scores (an
        empty list: none of them); ``top_k`` ranks the k best whatever the thresholds; ``scores`` has
        every label's score on request."""
        check_top_k(top_k)
        probs, names = sigmoid(logits), self.label_names
        above = probs >= self.decision_thresholds()
        order = np.argsort(-probs, axis=-1, kind="stable")
        records = []
        for i in range(len(probs)):
            record: dict[str, Any] = {"labels": [{"label": names[j], "score": float(probs[i, j])}
                                                 for j in order[i] if above[i, j]]}
            if top_k > 1:
                record["top_k"] = [{"label": names[j], "score": float(probs[i, j])} for j in order[i, :top_k]]
            if return_all_scores:
                record["scores"] = {n: float(p) for n, p in zip(names, probs[i])}
            records.append(record)
        return records

    def prediction_rows(self, texts: list[str], labels, logits: np.ndarray, pairs: list[str] | None = None,
                        max_chars: int = 1000) -> list[dict]:
        """text, true and predicted label lists, the scores of both, and the number of wrong labels."""
        probs, truth = sigmoid(logits), np.asarray(labels) > 0.5
        pred = probs >= self.decision_thresholds()
        names, rows = self.label_names, []
        for i in range(len(texts)):
            shown = np.flatnonzero(truth[i] | pred[i])
            rows.append({**example_text(texts, pairs, i, max_chars),
                         "labels": [names[j] for j in np.flatnonzero(truth[i])],
                         "pred": [names[j] for j in np.flatnonzero(pred[i])],
                         "scores": {names[j]: round(float(probs[i, j]), 6) for j in shown},
                         "errors": int((truth[i] != pred[i]).sum())})
        return rows

    def answer_keys(self, logits: np.ndarray) -> list:
        return [tuple(sorted(x["label"] for x in a["labels"])) for a in self.decode(logits)]

    def agreement(self, truths: list, answers: list[dict]) -> str | None:
        rows = [(set(self.label_set(t)), {x["label"] for x in a["labels"]}) for t, a in zip(truths, answers)]
        if not rows:
            return None
        exact = sum(t == p for t, p in rows)
        tp = sum(len(t & p) for t, p in rows)
        f1 = 2 * tp / max(1, sum(len(t) + len(p) for t, p in rows))
        return f"exact match {exact / len(rows):.4f}, micro-F1 {f1:.4f} on {len(rows):,} labelled rows"

    @classmethod
    def markdown_report(cls, reports: dict[str, dict[str, Any]], title: str = "Evaluation") -> str:
        """Headline scores per split at the model's thresholds and at 0.5, then per-label tables."""
        names = [METRIC_NAMES[k] for k in SCORE_KEYS]
        lines = [f"# {md_cell(title)}", "", "| split | examples | thresholds | " + " | ".join(names) + " | loss |",
                 "|---|---:|---|" + "---:|" * (len(SCORE_KEYS) + 1)]
        for split, m in reports.items():
            lines.append(f"| {md_cell(split)} | {m['num_examples']} | {m['threshold_tuning']['tuning']} | "
                         + " | ".join(shown(m, k) for k in SCORE_KEYS) + f" | {number(m.get('loss'))} |")
            lines.append(f"| {md_cell(split)} | {m['num_examples']} | 0.5 | "
                         + " | ".join(number(m["at_0.5"].get(k)) for k in SCORE_KEYS) + " | |")
        if any(m.get("intervals") for m in reports.values()):
            lines += ["", "[low, high]: 95% bootstrap interval over the split's examples, at the model's thresholds."]
        for split, m in reports.items():
            lines += ["", f"## {md_cell(split)}: per label", "",
                      "| label | threshold | precision | recall | F1 | F1 at 0.5 | support |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
            half = m["at_0.5"]["per_class"]
            lines += [f"| {md_cell(name)} | {m['thresholds'][name]:.2f} | {' | '.join(class_cells(c))} |"
                      f" {half[name]['f1']:.4f} | {c['support']} |" for name, c in m["per_class"].items()]
            if note := coverage_note(m):
                lines += ["", note]
        return "\n".join(lines) + "\n"
