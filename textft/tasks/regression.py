"""A number per text: one output, MSE (or Huber) on standardised targets, MAE / RMSE / R² / Pearson /
Spearman. The standardisation is folded into the exported head (w' = std·w, b' = std·b + mean), so
the saved model, in textft and in a plain pipeline, outputs values in the label's own units."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from textft.errors import UserError, row_list
from textft.intervals import regression_values
from textft.metric_modules import load_metric
from textft.tasks.base import METRIC_NAMES, Task, check_top_k, example_text, is_list, is_number, md_cell, shown

SETTINGS_KEY = "textft_regression"
"""config.json entry describing the target (its name and the scale it was trained on)."""
STRATA = 5
"""A carved validation split keeps the share of each target quintile."""


def as_number(v) -> float | None:
    """The float a label value stands for (numbers, numeric strings), or None."""
    if is_number(v):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def number(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


def output_layer(model):
    """The linear layer that produces the model's single output (the last one with one output)."""
    from torch import nn

    # peft's modules_to_save (LoRA) keeps an untrained copy of the head as "original_module": the
    # trained one is the copy the forward pass uses.
    layers = [m for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == 1
              and "original_module" not in name.split(".")]
    if not layers:
        raise RuntimeError(f"{type(model).__name__} has no linear layer with one output to rescale")
    return layers[-1]


class Regression(Task):
    name = "regression"
    problem_type = "regression"
    metrics = ("rmse", "mae", "r2", "pearson", "spearman", "loss")
    headline = ("mae", "rmse", "r2", "pearson", "spearman", "loss")
    curves = ("rmse", "mae")
    default_metric = "rmse"
    resampled = staticmethod(regression_values)
    resampled_metrics = ("mae", "rmse", "r2", "pearson", "spearman")
    noise_metric = "r2"
    loss_name = "regression loss (MSE or Huber, standardised targets)"
    output_noun = "output"
    answer_fields = ("value",)
    answers_are_labels = False

    def __init__(self, label_names: list[str], mean: float = 0.0, std: float = 1.0, folded: bool = False,
                 loss: str = "mse", huber_delta: float = 1.0):
        super().__init__(label_names)
        self.mean, self.std, self.folded = float(mean), float(std), folded
        self.loss, self.huber_delta = loss, huber_delta

    @classmethod
    def from_training(cls, cfg, values: list, feature, where: str, problems: list[str]) -> "Regression":
        task = cls([cfg.label_column])
        found = task.check(where, cfg.label_column, values)
        problems += found
        if found or not cfg.standardize_targets:
            return task
        y = np.array([as_number(v) for v in values], dtype=np.float64)
        std = float(y.std())
        if std == 0:
            problems.append(f"{where}: every target in column '{cfg.label_column}' is {y[0]:g}; regression needs"
                            " targets that differ")
            return task
        task.mean, task.std = float(y.mean()), std
        return task

    @classmethod
    def from_model_config(cls, names: list[str], config: dict, where: str) -> "Regression":
        # The saved head already outputs label units (the standardisation is folded into it).
        return cls(names[:1], folded=True)

    def configure(self, train_cfg, metric: str) -> None:
        problems = []
        if train_cfg.class_weights not in (None, "none"):
            problems.append("'train.class_weights' weighs classes; a regression task has none (remove it)")
        if train_cfg.label_smoothing:
            problems.append("'train.label_smoothing' smooths class targets; a regression task has none (remove it)")
        if problems:
            raise UserError(problems)
        self.loss, self.huber_delta = train_cfg.regression_loss, train_cfg.huber_delta

    # -- reading labels ---------------------------------------------------------------------------

    def check(self, where: str, column: str, values: list) -> list[str]:
        missing, lists, bad = [], [], []
        for i, v in enumerate(values):
            number = as_number(v)
            if v is None or (number is not None and math.isnan(number)):
                missing.append(i)
            elif is_list(v):
                lists.append(i)
            elif number is None or isinstance(v, bool) or math.isinf(number):
                bad.append(i)
        problems = []
        if missing:
            problems.append(f"{where} has {len(missing)} missing or NaN target(s) in column '{column}' at"
                            f" {row_list(missing)}; regression needs a number on every row")
        if lists:
            problems.append(f"{where} has lists in column '{column}' at {row_list(lists)}; regression needs one"
                            " number per text (lists of labels need data.task=multi_label)")
        if bad:
            example = values[bad[0]]
            problems.append(f"{where} has {len(bad)} non-numeric target(s) in column '{column}' at {row_list(bad)}"
                            f" (e.g. {example!r}); regression needs numbers (or set data.task=single_label for"
                            " class names)")
        return problems

    def encode(self, values: list) -> list[float]:
        return [as_number(v) for v in values]

    @classmethod
    def output_names(cls, label_names: list[str]) -> list[str]:
        """One output, whatever the dataset's label values were read as."""
        return list(label_names[:1])

    def label_counts(self, labels: list) -> dict[str, int]:
        """One target: every row has it."""
        return {self.label_names[0] if self.label_names else "value": len(labels)}

    def describe_label(self, label) -> float:
        return float(label)

    def strata(self, labels: list) -> list | None:
        y = np.asarray(labels, dtype=np.float64)
        edges = np.unique(np.quantile(y, np.linspace(0, 1, STRATA + 1)[1:-1]))
        return np.digitize(y, edges).tolist()

    # -- training and evaluation ------------------------------------------------------------------

    def standardised(self, values):
        return (values - self.mean) / self.std

    def values(self, logits: np.ndarray) -> np.ndarray:
        """Predictions in the label's units: the model's output, rescaled until the head is folded."""
        out = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)[:, 0] if len(logits) else np.zeros(0)
        return out if self.folded else out * self.std + self.mean

    def base_loss(self) -> Callable:
        import torch.nn.functional as F

        if self.loss == "huber":
            return lambda pred, target: F.huber_loss(pred, target, delta=self.huber_delta)
        return F.mse_loss

    def loss_fn(self, train_cfg, train_labels: list) -> Callable:
        base = self.base_loss()

        def loss(logits, labels):
            return base(logits.float().squeeze(-1), self.standardised(labels.float()))
        return loss

    def evaluate(self, logits: np.ndarray, labels: np.ndarray, intervals: bool = False) -> dict[str, Any]:
        """MAE, RMSE, R², Pearson and Spearman in label units; the loss on the training scale."""
        import torch

        pred, y = self.values(logits), np.asarray(labels, dtype=np.float64)
        metrics = load_metric("regression").compute(predictions=pred.tolist(), references=y.tolist())
        metrics["loss"] = float(self.base_loss()(torch.from_numpy(self.standardised(pred)),
                                                 torch.from_numpy(self.standardised(y))))
        metrics["target"] = self.label_names[0]
        return self.add_intervals(metrics, y, pred) if intervals else metrics

    @classmethod
    def row_outcomes(cls, runs: list[list[dict]], label_names: list[str] | None = None
                     ) -> tuple[np.ndarray, list[np.ndarray]]:
        truth = np.array([float(r["label"]) for r in runs[0]], dtype=np.float64)
        return truth, [np.array([float(r["pred"]) for r in rows], dtype=np.float64) for rows in runs]

    def export(self, model) -> None:
        """Fold the target scale into the output layer, so the saved model answers in label units."""
        import torch

        if self.folded:
            return
        layer = output_layer(model)
        with torch.no_grad():
            layer.weight.mul_(self.std)
            if layer.bias is not None:
                layer.bias.mul_(self.std).add_(self.mean)
        self.folded = True

    def model_config(self) -> dict[str, Any]:
        return {"problem_type": self.problem_type,
                SETTINGS_KEY: {"target": self.label_names[0], "train_mean": self.mean, "train_std": self.std,
                               "standardised": (self.mean, self.std) != (0.0, 1.0),
                               "outputs": "label units (the standardisation is folded into the head)"}}

    # -- prediction -------------------------------------------------------------------------------

    def decode(self, logits: np.ndarray, top_k: int = 1, return_all_scores: bool = False,
               out_of_scope: dict | None = None, in_scope: np.ndarray | None = None) -> list[dict]:
        """``value``: the predicted number."""
        if check_top_k(top_k) > 1 or return_all_scores:
            raise UserError("'--top-k' and '--all-scores' rank classes; a regression model answers one value")
        return [{"value": float(v)} for v in self.values(logits)]

    def prediction_rows(self, texts: list[str], labels, logits: np.ndarray, pairs: list[str] | None = None,
                        max_chars: int = 1000) -> list[dict]:
        pred = self.values(logits)
        return [{**example_text(texts, pairs, i, max_chars), "label": float(y), "pred": round(float(p), 6),
                 "error": round(float(p - y), 6)} for i, (y, p) in enumerate(zip(labels, pred))]

    def agreement(self, truths: list, answers: list[dict]) -> str | None:
        pairs = [(as_number(t), a["value"]) for t, a in zip(truths, answers) if as_number(t) is not None]
        if not pairs:
            return None
        mae = sum(abs(t - v) for t, v in pairs) / len(pairs)
        return f"MAE {mae:.4f} on {len(pairs):,} labelled rows"

    @classmethod
    def markdown_report(cls, reports: dict[str, dict[str, Any]], title: str = "Evaluation") -> str:
        """Headline metrics per split (in the target's units; the loss on the training scale)."""
        lines = [f"# {md_cell(title)}", "", "| split | examples | " + " | ".join(METRIC_NAMES[k] for k in cls.headline)
                 + " | mean true | mean predicted |", "|---|---:|" + "---:|" * (len(cls.headline) + 2)]
        for split, m in reports.items():
            lines.append(f"| {md_cell(split)} | {m['num_examples']} | " + " | ".join(shown(m, k) for k in cls.headline)
                         + f" | {number(m.get('mean_reference'))} | {number(m.get('mean_prediction'))} |")
        if any(m.get("intervals") for m in reports.values()):
            lines += ["", "[low, high]: 95% bootstrap interval over the split's examples."]
        return "\n".join(lines) + "\n"
