"""The single-label sections of the reports: per-class tables, the confusion matrix
(and the most confused pairs), calibration of the softmax confidence, the most confident mistakes, and
the out-of-scope score and threshold with the histograms of in-scope and out-of-scope scores."""

from __future__ import annotations

from typing import Any

import numpy as np

from textft.out_of_scope import OOS_METHODS
from textft.plots import (MANY_CLASSES, plot_calibration, plot_confusion, plot_per_class_f1,
                          plot_score_histograms)
from textft.report_parts import (check_rows, class_cells, coverage_note, example, example_markdown, fmt, md_cell, md_code,
                                 sorted_classes)
from textft.tasks.single_label import SingleLabel
from textft.templating import render

TASK = SingleLabel.name
HTML_TEMPLATE = "single_label.html.j2"
"""The template of a split's section in report.html (``textft/templates``)."""
OOS_TEMPLATE = "single_label_out_of_scope.html.j2"
"""The template of the out-of-scope section of report.html."""
CALIBRATION_BINS = 15
HISTOGRAM_BINS = 20
TOP_CONFUSIONS = 20


# --- report.json / report.md / report.html --------------------------------------------------------


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


def confident_mistakes(rows: list[dict], n: int) -> list[dict[str, Any]]:
    wrong = [r for r in rows if r.get("label") != r.get("pred") and isinstance(r.get("confidence"), (int, float))]
    wrong.sort(key=lambda r: -r["confidence"])
    return [{"confidence": float(r["confidence"]), "label": r["label"], "pred": r["pred"], **example(r)}
            for r in wrong[:n]]


def split_entry(m: dict, labels: list[str], rows: list[dict] | None, split: str, mistakes: int,
                warnings: list[str]) -> dict[str, Any]:
    """One split of the report: its metrics, the normalised confusions and, from its predictions,
    calibration and the most confident mistakes."""
    entry = dict(m)
    entry["confusion_matrix_normalized"] = normalized_confusion(m["confusion_matrix"])
    entry["top_confusions"] = top_confusions(m["confusion_matrix"], m.get("labels") or labels)
    entry["ece"] = None
    if rows:
        check_rows(rows, m, split, warnings)
        usable = [r for r in rows if isinstance(r.get("confidence"), (int, float))]
        if usable:
            entry["calibration"] = calibration([r["confidence"] for r in usable],
                                               [r.get("label") == r.get("pred") for r in usable])
            entry["ece"] = entry["calibration"]["ece"]
        entry["most_confident_mistakes"] = confident_mistakes(rows, mistakes)
        entry["predictions_file"] = f"predictions/{split}.jsonl"
    return entry


def markdown_split(split: str, m: dict) -> list[str]:
    lines = ["", "### Per class (worst F1 first)", "", "| label | precision | recall | F1 | support |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {md_cell(name)} | {' | '.join(class_cells(c))} | {c['support']} |" for name, c in sorted_classes(m)]
    if note := coverage_note(m):
        lines += ["", md_cell(note)]
    if m["top_confusions"]:
        lines += ["", "### Most confused pairs", "", "| true | predicted | count | share of true class |",
                  "|---|---|---:|---:|"]
        lines += [f"| {md_cell(c['true'])} | {md_cell(c['pred'])} | {c['count']} | {100 * c['share']:.1f}% |" for c in m["top_confusions"]]
    if m.get("calibration"):
        cal = m["calibration"]
        lines += ["", f"### Calibration: ECE {cal['ece']:.4f} ({cal['num_bins']} bins; mean confidence"
                      f" {cal['mean_confidence']:.4f}, accuracy {cal['accuracy']:.4f})", "",
                  "| confidence | examples | accuracy | mean confidence |", "|---|---:|---:|---:|"]
        lines += [f"| {b['low']:.2f}-{b['high']:.2f} | {b['count']} | {fmt(b['accuracy'])} |"
                  f" {fmt(b['confidence'])} |" for b in cal["bins"] if b["count"]]
    if m.get("most_confident_mistakes"):
        lines += ["", "### Most confident mistakes", "", "| confidence | true | predicted | text |", "|---:|---|---|---|"]
        lines += [f"| {r['confidence']:.3f} | {md_cell(r['label'])} | {md_cell(r['pred'])} | {example_markdown(r)} |"
                  for r in m["most_confident_mistakes"]]
    elif "predictions_file" not in m:
        lines += ["", f"(no predictions/{split}.jsonl: calibration and mistakes are not available)"]
    return lines


def html_split(split: str, m: dict, figures: dict[str, bytes]) -> str:
    """The split's section of report.html (``HTML_TEMPLATE``)."""
    confusions = [[c["true"], c["pred"], c["count"], f"{100 * c['share']:.1f}%"] for c in m["top_confusions"]]
    classes = [[name, *class_cells(c), c["support"]] for name, c in sorted_classes(m)]
    return render(HTML_TEMPLATE, split=split, figures=figures, many=len(m["per_class"]) > MANY_CLASSES,
                  confusions=confusions if len(m["per_class"]) > 2 else [], classes=classes,
                  coverage=coverage_note(m), cal=m.get("calibration"), mistakes=m.get("most_confident_mistakes"))


def figures(split: str, m: dict) -> dict[str, bytes]:
    out = {f"{split}/confusion": plot_confusion(m), f"{split}/per_class_f1": plot_per_class_f1(m, m.get("macro_f1"))}
    if m.get("calibration"):
        out[f"{split}/calibration"] = plot_calibration(m["calibration"])
    return out


# --- out of scope --------------------------------------------------------------------------------

OOS_COLUMNS = (("in_scope_rejection_rate", "in-scope rejected"), ("out_of_scope_recall", "out-of-scope recall"),
               ("auroc", "AUROC"), ("in_scope_accuracy", "in-scope accuracy"),
               ("in_scope_accuracy_without_rejection", "without rejection"))


def out_of_scope_rows(entry: dict) -> tuple[list[list], list[list]]:
    """(the chosen score on each data it was measured on, every score on the calibration data)."""
    measured = [[name, m.get("num_in_scope"), m.get("num_out_of_scope"), *(fmt(m.get(k)) for k, _ in OOS_COLUMNS)]
                for name, m in entry["measured"].items()]
    methods = [[name + (" (chosen)" if name == entry["method"] else ""), f"{m['threshold']:.6g}",
                *(fmt(m.get(k)) for k, _ in OOS_COLUMNS[:4])]
               for name, m in sorted(entry["methods"].items(), key=lambda kv: OOS_METHODS.index(kv[0]))]
    return measured, methods


def out_of_scope_summary(entry: dict) -> str:
    target = entry.get("target") or {}
    goal = (f"in-scope precision {target['precision']}" if "precision" in target
            else f"{target.get('rejection', 0):.1%} of in-scope examples rejected")
    why = f"; this score was chosen because {entry['chosen_because']}" if entry.get("chosen_because") else ""
    return (f"Predictions whose {entry['method']} score ({entry['description']}) is below {entry['threshold']:.6g}"
            f" are answered '{entry['label']}'. The threshold was set for {goal} on the calibration data{why}.")


def markdown_out_of_scope(entry: dict) -> list[str]:
    measured, methods = out_of_scope_rows(entry)
    lines = ["", "## Out of scope", "", md_cell(out_of_scope_summary(entry)), "",
             "| data | in scope | out of scope | " + " | ".join(n for _, n in OOS_COLUMNS) + " |",
             "|---|---:|---:|" + "---:|" * len(OOS_COLUMNS)]
    lines += ["| " + " | ".join(md_cell(str(v)) for v in row) + " |" for row in measured]
    lines += ["", "Every score on the calibration data, each at its own threshold for the same target:", "",
              "| score | threshold | " + " | ".join(n for _, n in OOS_COLUMNS[:4]) + " |", "|---|---:|" + "---:|" * 4]
    return lines + ["| " + " | ".join(md_cell(str(v)) for v in row) + " |" for row in methods]


def out_of_scope_figure(entry: dict) -> bytes:
    return plot_score_histograms(entry)


def html_out_of_scope(entry: dict, figure: bytes | None) -> str:
    """The out-of-scope section of report.html (``OOS_TEMPLATE``)."""
    measured, methods = out_of_scope_rows(entry)
    return render(OOS_TEMPLATE, summary=out_of_scope_summary(entry), figure=figure, measured=measured,
                  methods=methods, names=[n for _, n in OOS_COLUMNS])


# --- model card ------------------------------------------------------------------------------------

CARD_KIND = "text classifier"

CARD_METRICS = (("accuracy", "accuracy", "Accuracy", None), ("macro_f1", "f1", "Macro F1", {"average": "macro"}),
                ("weighted_f1", "f1", "Weighted F1", {"average": "weighted"}))
"""(metric, model-index type, name, args) of the card's metadata."""


def card_summary(labels: list[str]) -> str:
    shown = ", ".join(md_code(x) for x in labels[:20])
    return f"It predicts one of {len(labels)} labels" + (f": {shown}." if len(labels) <= 20 else f" (first 20: {shown}, ...).")


def card_usage(repo: str, example: str) -> list[str]:
    return [f'classifier = pipeline("text-classification", model="{repo}")',
            f"print(classifier({example}, truncation=True))"]
