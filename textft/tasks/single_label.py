"""One class per text: class ids from names, integers or a ClassLabel; cross-entropy; accuracy and
F1; softmax answers with an optional out-of-scope threshold."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import numpy as np

from textft.errors import closest, row_list
from textft.intervals import single_label_values
from textft.metric_modules import compute_metrics
from textft.out_of_scope import OOS_KEY, rejected, softmax
from textft.tasks.base import (Task, check_top_k, class_cells, class_index, coverage_note, example_text, is_list,
                               is_missing, md_cell, shown, weights_by_name)


OE_WEIGHT = 1.0
"""Weight of an out-of-scope training row's outlier-exposure loss against an in-scope row's
cross-entropy (Hendrycks et al. 2019 use 0.5 for images, 1.0 for text)."""


class SingleLabel(Task):
    name = "single_label"
    problem_type = "single_label_classification"
    metrics = ("accuracy", "macro_f1", "weighted_f1", "loss")
    headline = ("accuracy", "macro_f1", "weighted_f1", "loss", "ece")
    curves = ("accuracy", "macro_f1")
    default_metric = "macro_f1"
    exact_test = "accuracy"
    resampled = staticmethod(single_label_values)
    resampled_metrics = ("accuracy", "macro_f1", "weighted_f1")
    noise_metric = "accuracy"
    loss_name = "cross-entropy loss"
    answer_fields = ("label", "score", "out_of_scope", "model_label", "top_k", "scores")
    one_class_per_text = True
    out_of_scope = True
    calibration = "out_of_scope"

    def __init__(self, label_names: list[str], int_ids: bool = False, oos_label: str | None = None,
                 id_names: list[str] | None = None):
        super().__init__(label_names)
        self.int_ids = int_ids
        """Integer labels are class ids (a ClassLabel, or integers named by data.label_names)."""
        self.oos_label = oos_label
        """The label of known out-of-scope examples (``data.oos_label``): encoded as -1, never a class."""
        self.id_names = id_names or list(label_names)
        """With ``int_ids``: the name of each integer label, the out-of-scope one included."""

    @classmethod
    def from_training(cls, cfg, values: list, feature, where: str, problems: list[str]) -> "SingleLabel":
        """Class names in id order: ClassLabel names, ``data.label_names``, or the sorted training labels;
        without ``data.oos_label``, which is not a class."""
        from datasets import ClassLabel

        present = [v for v in values if not is_missing(v) and not is_list(v)]
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in present)
        if isinstance(feature, ClassLabel):
            names, int_ids = list(cfg.label_names or feature.names), True
        elif cfg.label_names:
            names, int_ids = list(cfg.label_names), ints
        else:
            names, int_ids = ([str(v) for v in sorted(set(present))] if ints else sorted({str(v) for v in present}),
                              False)
        distinct = {names[v] if int_ids and isinstance(v, int) and 0 <= v < len(names) else str(v) for v in present}
        oos = cfg.oos_label
        if oos is not None and oos not in distinct:
            choices = sorted(distinct)
            problems.append(f"'data.oos_label': '{oos}' is not a label of {where} (column '{cfg.label_column}')"
                            f"{closest(oos, choices)}; labels: {', '.join(choices[:20])}")
        classes = distinct - {oos}
        if len(classes) == 1:
            problems.append(f"{where} has only one class ('{classes.pop()}' in column '{cfg.label_column}');"
                            " a classifier needs at least two")
        if cfg.label_names and not int_ids:
            extra = sorted(distinct - set(cfg.label_names) - {oos})
            if extra:
                problems.append(f"'data.label_names' lacks training label(s): {', '.join(extra[:10])}")
        return cls([n for n in names if n != oos], int_ids, oos, names)

    @classmethod
    def from_model_config(cls, names: list[str], config: dict, where: str) -> "SingleLabel":
        """With out-of-scope settings, their label reads as out of scope in labelled data (evaluate)."""
        stored = config.get(OOS_KEY)
        label = stored.get("label") if isinstance(stored, dict) else None
        return cls(names, oos_label=label if isinstance(label, str) and label not in names else None)

    def check(self, where: str, column: str, values: list) -> list[str]:
        problems = []
        missing = [i for i, v in enumerate(values) if is_missing(v)]
        if missing:
            problems.append(f"{where} has {len(missing)} missing label(s) in column '{column}' at {row_list(missing)}")
        lists = [i for i, v in enumerate(values) if is_list(v)]
        if lists:
            problems.append(f"{where} has lists of labels in column '{column}' at {row_list(lists)}; several labels"
                            " per text need data.task=multi_label (or data.task=auto)")
            return problems
        if self.int_ids:
            n = len(self.id_names)
            bad = sorted({v for v in values if not is_missing(v) and not (isinstance(v, int) and 0 <= v < n)}, key=str)
            if bad:
                problems.append(f"{where} has label(s) {bad[:10]} in column '{column}' outside 0..{n - 1} of"
                                " data.label_names / the ClassLabel")
        else:
            unseen = sorted({str(v) for v in values if not is_missing(v)} - set(self.label_names) - {self.oos_label})
            if unseen:
                problems.append(f"{where} has label(s) never seen in training: {', '.join(unseen[:10])}"
                                f"{closest(unseen[0], self.label_names)}; training labels:"
                                f" {', '.join(self.label_names[:20])}")
        return problems

    def encode(self, values: list) -> list[int]:
        """Class ids; -1 for the out-of-scope label. Integer labels with given names keep their value as
        the id unless an out-of-scope name among them shifts the ids; everything else maps by name."""
        if self.int_ids and self.oos_label is None:
            return [int(v) for v in values]
        label2id = {n: i for i, n in enumerate(self.label_names)}
        if self.int_ids:
            return [label2id.get(self.id_names[int(v)], -1) for v in values]
        return [label2id.get(str(v), -1) for v in values]

    def train_problem(self, labels: list) -> str | None:
        if len(set(labels) - {-1}) < 2:  # possible once empty texts are dropped
            return "the train split has fewer than two classes"
        return None

    def strata(self, labels: list) -> list | None:
        return list(labels)

    def label_counts(self, labels: list) -> dict[str, int]:
        names = [*self.label_names, self.oos_label]  # id -1: known out of scope
        return {name: 0 for name in self.label_names} | {names[i]: n for i, n in Counter(labels).items()}

    def describe_label(self, label) -> str:
        return [*self.label_names, self.oos_label][label]

    # -- training and evaluation ------------------------------------------------------------------

    def class_weights(self, spec, labels: list[int]):
        """Loss weights: ``balanced`` (n / (k * count)), a mapping {label: weight}, or None."""
        import torch

        if spec in (None, "none"):
            return None
        k = len(self.label_names)
        if spec == "balanced":
            labels = [y for y in labels if y >= 0]  # known out-of-scope rows are in no class
            counts = np.bincount(labels, minlength=k).astype(float)
            return torch.tensor(len(labels) / (k * np.maximum(counts, 1)), dtype=torch.float32)
        return torch.tensor(weights_by_name(spec, self.label_names), dtype=torch.float32)

    def loss_fn(self, train_cfg, train_labels: list) -> Callable:
        """Cross-entropy; with ``data.oos_label``, the out-of-scope rows (-1) add outlier exposure
        (Hendrycks et al. 2019): the KL divergence of the uniform distribution from their softmax, with
        weight ``OE_WEIGHT`` per row, so the model learns to spread its belief on what no class covers."""
        import math

        import torch
        import torch.nn.functional as F

        weights = self.class_weights(train_cfg.class_weights, train_labels)
        smoothing = train_cfg.label_smoothing
        log_k = math.log(len(self.label_names))

        def loss(logits, labels):
            weight = weights.to(logits.device) if weights is not None else None
            logits = logits.float()
            outside = labels < 0
            if self.oos_label is None or not bool(outside.any()):
                return F.cross_entropy(logits, labels, weight=weight, label_smoothing=smoothing)
            inside = ~outside
            n_in = int(inside.sum())
            known = F.cross_entropy(logits[inside], labels[inside], weight=weight, label_smoothing=smoothing) * n_in \
                if n_in else logits.sum() * 0
            z = logits[outside]
            uniform = (torch.logsumexp(z, -1) - z.mean(-1) - log_k).sum()
            return (known + OE_WEIGHT * uniform) / len(labels)
        return loss

    def evaluate(self, logits: np.ndarray, labels: np.ndarray, intervals: bool = False) -> dict[str, Any]:
        """Accuracy, macro/weighted F1, per-class scores, confusion matrix and the mean cross-entropy of
        the in-scope examples (with their intervals when asked); known out-of-scope ones (label -1) are
        counted (``num_out_of_scope``), and judged by the out-of-scope threshold (textft.calibration)."""
        import torch
        import torch.nn.functional as F

        labels = np.asarray(labels, dtype=np.int64)
        inside = labels >= 0
        logits = np.asarray(logits, dtype=np.float32)[inside]
        pred = logits.argmax(-1)
        metrics = compute_metrics(labels[inside], pred, self.label_names)
        metrics["loss"] = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels[inside])))
        if intervals:
            metrics = self.add_intervals(metrics, labels[inside], pred)
        if not inside.all():
            metrics.update(num_examples=len(labels), num_in_scope=int(inside.sum()),
                           num_out_of_scope=int((~inside).sum()))
        return metrics

    @classmethod
    def row_outcomes(cls, runs: list[list[dict]], label_names: list[str] | None = None
                     ) -> tuple[np.ndarray, list[np.ndarray]]:
        index = class_index(label_names, {str(r.get(key)) for rows in runs for r in rows for key in ("label", "pred")})
        truth = np.array([index[str(r.get("label"))] for r in runs[0]], dtype=np.int64)
        return truth, [np.array([index[str(r.get("pred"))] for r in rows], dtype=np.int64) for rows in runs]

    @staticmethod
    def class_counts(truth, pred, k: int) -> tuple[np.ndarray, np.ndarray]:
        return np.bincount(truth, minlength=k)[:k], np.bincount(pred, minlength=k)[:k]

    # -- prediction -------------------------------------------------------------------------------

    def decode(self, logits: np.ndarray, top_k: int = 1, return_all_scores: bool = False,
               out_of_scope: dict | None = None, in_scope: np.ndarray | None = None) -> list[dict]:
        """Label and score (max softmax probability), the ``top_k`` labels when top_k > 1, every label's
        probability on request, and whether the answer was rejected as out of scope: its ``in_scope``
        score (by default the stored logit score's) is below the threshold of ``out_of_scope`` (then
        ``label`` is the out-of-scope label and ``model_label`` the class the model would have answered)."""
        check_top_k(top_k)
        probs = softmax(np.asarray(logits, dtype=np.float64))
        k = min(top_k, len(self.label_names))
        ranked = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        rejected_rows = rejected(logits, out_of_scope, in_scope) if out_of_scope is not None else None
        records = []
        for i in range(len(probs)):
            best = int(ranked[i, 0])
            record: dict[str, Any] = {"label": self.label_names[best], "score": float(probs[i, best])}
            if rejected_rows is not None:
                record["out_of_scope"] = bool(rejected_rows[i])
                if rejected_rows[i]:
                    record["model_label"] = record["label"]
                    record["label"] = out_of_scope["label"]
            if top_k > 1:
                record["top_k"] = [{"label": self.label_names[int(j)], "score": float(probs[i, j])} for j in ranked[i]]
            if return_all_scores:
                record["scores"] = {name: float(p) for name, p in zip(self.label_names, probs[i])}
            records.append(record)
        return records

    def prediction_rows(self, texts: list[str], labels, logits: np.ndarray, pairs: list[str] | None = None,
                        max_chars: int = 1000) -> list[dict]:
        """text (shortened), true and predicted label, confidence (max softmax)."""
        z = logits - logits.max(-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        pred = probs.argmax(-1)
        names = [*self.label_names, self.oos_label]  # id -1: known out of scope
        return [{**example_text(texts, pairs, i, max_chars), "label": names[int(y)], "pred": names[int(p)],
                 "confidence": round(float(probs[i, p]), 6)} for i, (y, p) in enumerate(zip(labels, pred))]

    def answer_keys(self, logits: np.ndarray) -> list:
        return [self.label_names[i] for i in np.asarray(logits).argmax(-1)]

    def gold_key(self, value) -> str | None:
        return str(value) if str(value) in set(self.label_names) else None

    def agreement(self, truths: list, answers: list[dict]) -> str | None:
        pairs = [(t, a) for t, a in zip(truths, answers) if t is not None]
        if not pairs:
            return None
        correct = sum(str(t) == a["label"] for t, a in pairs)
        return f"accuracy {correct / len(pairs):.4f} on {len(pairs):,} labelled rows"

    @classmethod
    def log_line(cls, m: dict) -> str:
        return f"accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  loss {m['loss']:.4f}"

    @classmethod
    def markdown_report(cls, reports: dict[str, dict[str, Any]], title: str = "Evaluation") -> str:
        """Readable tables: headline metrics per split, then per-class scores and confusion matrix."""
        lines = [f"# {md_cell(title)}", "", "| split | examples | accuracy | macro-F1 | weighted-F1 | loss |",
                 "|---|---:|---:|---:|---:|---:|"]
        for split, m in reports.items():
            lines.append(f"| {md_cell(split)} | {m['num_examples']} | " + " | ".join(
                shown(m, k) for k in ("accuracy", "macro_f1", "weighted_f1", "loss")) + " |")
        if any(m.get("intervals") for m in reports.values()):
            lines += ["", "[low, high]: 95% bootstrap interval over the split's examples."]
        for split, m in reports.items():
            lines += ["", f"## {md_cell(split)}: per class", "", "| label | precision | recall | F1 | support |",
                      "|---|---:|---:|---:|---:|"]
            lines += [f"| {md_cell(name)} | {' | '.join(class_cells(c))} | {c['support']} |"
                      for name, c in m["per_class"].items()]
            if note := coverage_note(m):
                lines += ["", note]
            if len(m["labels"]) <= 20:
                names = [md_cell(name) for name in m["labels"]]
                lines += ["", f"## {md_cell(split)}: confusion matrix (rows: true, columns: predicted)", "",
                          "| true \\ pred | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
                for name, row in zip(names, m["confusion_matrix"]):
                    lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
        return "\n".join(lines) + "\n"
