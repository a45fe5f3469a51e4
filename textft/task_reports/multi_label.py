"""The multi-label sections of the reports: scores at the chosen thresholds and at 0.5, per-label
precision / recall / F1 / support with each threshold, label co-occurrence, the texts with the most
wrong labels."""

from __future__ import annotations

from typing import Any

from textft.plots import plot_cooccurrence, plot_per_class_f1
from textft.report_parts import (METRIC_NAMES, check_rows, class_cells, coverage_note, example, example_markdown, md_cell,
                                 md_code, shown, sorted_classes)
from textft.tasks.multi_label import SCORE_KEYS as SCORES, MultiLabel
from textft.templating import render

TASK = MultiLabel.name
HTML_TEMPLATE = "multi_label.html.j2"
"""The template of a split's section in report.html (``textft/templates``)."""


def _f(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


# --- report.json / report.md / report.html --------------------------------------------------------

TOP_PAIRS = 15


def top_pairs(labels: list[str], counts, k: int = TOP_PAIRS) -> list[dict[str, Any]]:
    """The label pairs that most often go together, with the share of the rarer label's texts."""
    pairs = []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            c = counts[i][j]
            if c:
                rarer = max(1, min(counts[i][i], counts[j][j]))
                pairs.append({"labels": [labels[i], labels[j]], "count": int(c), "share": round(c / rarer, 6)})
    pairs.sort(key=lambda p: (-p["count"], p["labels"]))
    return pairs[:k]


def wrong_examples(rows: list[dict], n: int) -> list[dict[str, Any]]:
    """The texts with the most wrong label decisions, the most confident first among equals."""
    def confidence(r):  # how far the wrong decisions were from a coin flip
        return max((abs(s - 0.5) for s in (r.get("scores") or {}).values()), default=0.0)

    wrong = [r for r in rows if r.get("errors")]
    wrong.sort(key=lambda r: (-r["errors"], -confidence(r)))
    return [{"errors": r["errors"], "labels": r.get("labels", []), "pred": r.get("pred", []),
             "scores": r.get("scores", {}), **example(r)} for r in wrong[:n]]


def split_entry(m: dict, labels: list[str], rows: list[dict] | None, split: str, mistakes: int,
                warnings: list[str]) -> dict[str, Any]:
    """One split of the report: its metrics, the most frequent label pairs and, from its predictions,
    the texts with the most wrong labels."""
    entry = dict(m)
    entry["top_cooccurrences"] = top_pairs(m.get("labels") or labels, m["cooccurrence"])
    if rows:
        check_rows(rows, m, split, warnings)
        entry["most_wrong"] = wrong_examples(rows, mistakes)
        entry["predictions_file"] = f"predictions/{split}.jsonl"
    return entry


def _labels_text(names: list[str], scores: dict) -> str:
    return ", ".join(f"{n} {scores[n]:.2f}" if n in scores else n for n in names) or "(none)"


def score_rows(m: dict) -> list[list[str]]:
    tuning = m["threshold_tuning"]
    chosen = f"{tuning['tuning']} ({tuning['source']})"
    return [[chosen, *(shown(m, k) for k in SCORES)], ["0.5", *(_f(m["at_0.5"].get(k)) for k in SCORES)]]


def label_rows(m: dict) -> list[list]:
    """Per label, worst F1 first: threshold, precision, recall, F1, F1 at 0.5, support."""
    half = m["at_0.5"]["per_class"]
    return [[name, f"{m['thresholds'][name]:.2f}", *class_cells(c), _f(half[name]["f1"]), c["support"]]
            for name, c in sorted_classes(m)]


LABEL_HEADER = ["label", "threshold", "precision", "recall", "F1", "F1 at 0.5", "support"]


def markdown_split(split: str, m: dict) -> list[str]:
    lines = ["", "### Scores at the chosen thresholds and at 0.5", "",
             "| thresholds | " + " | ".join(METRIC_NAMES[k] for k in SCORES) + " |", "|---|" + "---:|" * len(SCORES)]
    lines += ["| " + " | ".join(map(md_cell, row)) + " |" for row in score_rows(m)]
    lines += ["", "### Per label (worst F1 first)", "", "| " + " | ".join(LABEL_HEADER) + " |",
              "|---|" + "---:|" * (len(LABEL_HEADER) - 1)]
    lines += ["| " + " | ".join(map(md_cell, row)) + " |" for row in label_rows(m)]
    if note := coverage_note(m):
        lines += ["", md_cell(note)]
    if m.get("top_cooccurrences"):
        lines += ["", "### Labels that go together (true labels)", "", "| labels | texts | share of the rarer |",
                  "|---|---:|---:|"]
        lines += [f"| {md_cell(' + '.join(p['labels']))} | {p['count']} | {100 * p['share']:.1f}% |" for p in m["top_cooccurrences"]]
    if m.get("most_wrong"):
        lines += ["", "### Texts with the most wrong labels", "", "| wrong | true (score) | predicted (score) | text |",
                  "|---:|---|---|---|"]
        lines += [f"| {r['errors']} | {md_cell(_labels_text(r['labels'], r['scores']))} | {md_cell(_labels_text(r['pred'], r['scores']))}"
                  f" | {example_markdown(r)} |" for r in m["most_wrong"]]
    return lines


def html_split(split: str, m: dict, figures: dict[str, bytes]) -> str:
    """The split's section of report.html (``HTML_TEMPLATE``)."""
    scores = {"header": ["thresholds", *(METRIC_NAMES[k] for k in SCORES)], "rows": score_rows(m),
              "numeric": range(1, len(SCORES) + 1)}
    labels = {"header": LABEL_HEADER, "rows": label_rows(m), "numeric": range(1, len(LABEL_HEADER))}
    pairs = [[" + ".join(p["labels"]), p["count"], f"{100 * p['share']:.1f}%"] for p in m.get("top_cooccurrences") or []]
    wrong = [{**r, "true": _labels_text(r["labels"], r["scores"]), "predicted": _labels_text(r["pred"], r["scores"])}
             for r in m.get("most_wrong") or []]
    return render(HTML_TEMPLATE, split=split, figures=figures, tuning=m["threshold_tuning"], scores=scores,
                  labels=labels, coverage=coverage_note(m), pairs=pairs, wrong=wrong)


def figures(split: str, m: dict) -> dict[str, bytes]:
    return {f"{split}/per_class_f1": plot_per_class_f1(m, m.get("macro_f1")),
            f"{split}/cooccurrence": plot_cooccurrence(m.get("labels") or list(m["per_class"]), m["cooccurrence"])}


# --- model card ------------------------------------------------------------------------------------

CARD_KIND = "multi-label text classifier"

CARD_METRICS = (("macro_f1", "f1", "Macro F1", {"average": "macro"}), ("micro_f1", "f1", "Micro F1", {"average": "micro"}),
                ("samples_f1", "f1", "Samples F1", {"average": "samples"}),
                ("subset_accuracy", "accuracy", "Subset accuracy", None),
                ("hamming_loss", "hamming_loss", "Hamming loss", None))
"""(metric, model-index type, name, args) of the card's metadata."""


def card_summary(labels: list[str]) -> str:
    shown = ", ".join(md_code(x) for x in labels[:30])
    return (f"It tags a text with any of {len(labels)} labels (none, one or several)"
            + (f": {shown}." if len(labels) <= 30 else f" (first 30: {shown}, ...)."))


def card_usage(repo: str, example: str) -> list[str]:
    return [f'classifier = pipeline("text-classification", model="{repo}", top_k=None)  # sigmoid score per label',
            "# the decision threshold of each label, chosen on validation data by textft",
            'thresholds = classifier.model.config.textft_thresholds["values"]',
            f"scores = classifier({example}, truncation=True)",
            'print([s for s in scores if s["score"] >= thresholds[s["label"]]])']
