"""The regression sections of the reports: error and correlation metrics, predicted against true
values, residuals, the largest errors."""

from __future__ import annotations

from typing import Any

import numpy as np

from textft.plots import plot_predicted_vs_true, plot_residuals
from textft.report_parts import check_rows, example, example_markdown, md_code
from textft.tasks.regression import Regression
from textft.templating import render

TASK = Regression.name
HTML_TEMPLATE = "regression.html.j2"
"""The template of a split's section in report.html (``textft/templates``)."""


# --- report.json / report.md / report.html --------------------------------------------------------

MAX_POINTS = 5000
"""Examples kept in report.json for the scatter plots (a seeded sample beyond that)."""
MAX_GROUPS = 20
"""Targets with at most this many distinct values (ratings, stars) get a table per value."""


def by_target(true, pred) -> list[dict[str, Any]]:
    """For targets with few distinct values: count, mean prediction and MAE per true value."""
    true, pred = np.asarray(true, dtype=float), np.asarray(pred, dtype=float)
    values = np.unique(true)
    if len(values) > MAX_GROUPS:
        return []
    return [{"true": float(v), "count": int((true == v).sum()), "mean_pred": float(pred[true == v].mean()),
             "mae": float(np.abs(pred[true == v] - v).mean())} for v in values]


def split_entry(m: dict, labels: list[str], rows: list[dict] | None, split: str, mistakes: int,
                warnings: list[str]) -> dict[str, Any]:
    """One split of the report: its metrics and, from its predictions, the points of the plots, the
    error per true value and the largest errors."""
    entry = dict(m)
    rows = [r for r in rows or [] if isinstance(r.get("label"), (int, float)) and isinstance(r.get("pred"), (int, float))]
    if rows:
        check_rows(rows, m, split, warnings)
        keep = rows if len(rows) <= MAX_POINTS else [rows[i] for i in sorted(
            np.random.default_rng(0).choice(len(rows), MAX_POINTS, replace=False))]
        entry["points"] = {"true": [r["label"] for r in keep], "pred": [r["pred"] for r in keep]}
        entry["by_target"] = by_target([r["label"] for r in rows], [r["pred"] for r in rows])
        largest = sorted(rows, key=lambda r: -abs(r["pred"] - r["label"]))[:mistakes]
        entry["largest_errors"] = [{"label": r["label"], "pred": r["pred"], "error": r["pred"] - r["label"],
                                    **example(r)} for r in largest]
        entry["predictions_file"] = f"predictions/{split}.jsonl"
    return entry


def markdown_split(split: str, m: dict) -> list[str]:
    lines = []
    if m.get("by_target"):
        lines += ["", "### By true value", "", "| true | examples | mean predicted | MAE |", "|---:|---:|---:|---:|"]
        lines += [f"| {g['true']:g} | {g['count']} | {g['mean_pred']:.3f} | {g['mae']:.3f} |" for g in m["by_target"]]
    if m.get("largest_errors"):
        lines += ["", "### Largest errors", "", "| true | predicted | error | text |", "|---:|---:|---:|---|"]
        lines += [f"| {r['label']:g} | {r['pred']:.3f} | {r['error']:+.3f} | {example_markdown(r)} |"
                  for r in m["largest_errors"]]
    return lines


def html_split(split: str, m: dict, figures: dict[str, bytes]) -> str:
    """The split's section of report.html (``HTML_TEMPLATE``)."""
    by_target = [[f"{g['true']:g}", g["count"], f"{g['mean_pred']:.3f}", f"{g['mae']:.3f}"] for g in m.get("by_target") or []]
    return render(HTML_TEMPLATE, split=split, figures=figures, target=m.get("target") or "value", by_target=by_target,
                  largest=m.get("largest_errors"))


def figures(split: str, m: dict) -> dict[str, bytes]:
    if not m.get("points"):
        return {}
    target = m.get("target") or "value"
    return {f"{split}/predicted_vs_true": plot_predicted_vs_true(m["points"], target),
            f"{split}/residuals": plot_residuals(m["points"], target)}


# --- model card ------------------------------------------------------------------------------------

CARD_KIND = "text regressor"

CARD_METRICS = (("mae", "mae", "MAE", None), ("rmse", "rmse", "RMSE", None), ("r2", "r_squared", "R²", None),
                ("pearson", "pearsonr", "Pearson", None), ("spearman", "spearmanr", "Spearman", None))
"""(metric, model-index type, name, args) of the card's metadata."""


def card_summary(labels: list[str]) -> str:
    return f"It predicts {md_code(labels[0] if labels else 'value')}, a number, in the units of the training labels."


def card_usage(repo: str, example: str) -> list[str]:
    return [f'regressor = pipeline("text-classification", model="{repo}", function_to_apply="none")',
            f'print(regressor({example}, truncation=True))  # [{{"label": ..., "score": the predicted value}}]']
