"""The multi-label sections of the reports: scores at the chosen thresholds and at 0.5, per-label
precision / recall / F1 / support with each threshold, label co-occurrence, the texts with the most
wrong labels."""

from __future__ import annotations

from typing import Any

from textft.plots import img_tag, plot_cooccurrence, plot_per_class_f1
from textft.report_parts import (METRIC_NAMES, check_rows, class_cells, coverage_note, escape, example, example_html,
                                 example_markdown, html_table, shown, sorted_classes)
from textft.tasks.multi_label import SCORE_KEYS as SCORES, MultiLabel

TASK = MultiLabel.name


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
    lines += ["| " + " | ".join(row) + " |" for row in score_rows(m)]
    lines += ["", "### Per label (worst F1 first)", "", "| " + " | ".join(LABEL_HEADER) + " |",
              "|---|" + "---:|" * (len(LABEL_HEADER) - 1)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in label_rows(m)]
    if note := coverage_note(m):
        lines += ["", note]
    if m.get("top_cooccurrences"):
        lines += ["", "### Labels that go together (true labels)", "", "| labels | texts | share of the rarer |",
                  "|---|---:|---:|"]
        lines += [f"| {' + '.join(p['labels'])} | {p['count']} | {100 * p['share']:.1f}% |" for p in m["top_cooccurrences"]]
    if m.get("most_wrong"):
        lines += ["", "### Texts with the most wrong labels", "", "| wrong | true (score) | predicted (score) | text |",
                  "|---:|---|---|---|"]
        lines += [f"| {r['errors']} | {_labels_text(r['labels'], r['scores'])} | {_labels_text(r['pred'], r['scores'])}"
                  f" | {example_markdown(r)} |" for r in m["most_wrong"]]
    return lines


def html_split(split: str, m: dict, figures: dict[str, bytes]) -> list[str]:
    tuning = m["threshold_tuning"]
    out = ["<h3>Scores at the chosen thresholds and at 0.5</h3>",
           f"<p class='note'>Thresholds: {escape(tuning['tuning'])}, {escape(tuning['source'])}; predictions"
           " list every label whose score reaches its threshold.</p>",
           html_table(["thresholds", *(METRIC_NAMES[k] for k in SCORES)], score_rows(m),
                      numeric=set(range(1, len(SCORES) + 1))),
           "<h3>Per label</h3>", img_tag(figures.get(f"{split}/per_class_f1"), f"{split} F1 per label")]
    rows = label_rows(m)
    out.append(f"<details open><summary>threshold, precision, recall, F1 and support of {len(rows)} labels (worst F1"
               f" first)</summary>{html_table(LABEL_HEADER, rows, numeric=set(range(1, 7)))}</details>")
    if note := coverage_note(m):
        out.append(f"<p class='note'>{escape(note)}</p>")
    out += ["<h3>Label co-occurrence</h3>", img_tag(figures.get(f"{split}/cooccurrence"), f"{split} co-occurrence")]
    if m.get("top_cooccurrences"):
        out.append(html_table(["labels", "texts", "share of the rarer"],
                              [[" + ".join(p["labels"]), p["count"], f"{100 * p['share']:.1f}%"]
                               for p in m["top_cooccurrences"]], numeric={1, 2}))
    if m.get("most_wrong"):
        out.append(f"<h3>The {len(m['most_wrong'])} texts with the most wrong labels</h3>")
        body = "".join(f"<tr><td class='n'>{r['errors']}</td><td>{escape(_labels_text(r['labels'], r['scores']))}</td>"
                       f"<td>{escape(_labels_text(r['pred'], r['scores']))}</td>{example_html(r)}</tr>"
                       for r in m["most_wrong"])
        out.append("<table><thead><tr><th class='n'>wrong</th><th>true (score)</th><th>predicted (score)</th>"
                   f"<th>text</th></tr></thead><tbody>{body}</tbody></table>")
    return out


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
    shown = ", ".join(f"`{x}`" for x in labels[:30])
    return (f"It tags a text with any of {len(labels)} labels (none, one or several)"
            + (f": {shown}." if len(labels) <= 30 else f" (first 30: {shown}, ...)."))


def card_usage(repo: str, example: str) -> list[str]:
    return [f'classifier = pipeline("text-classification", model="{repo}", top_k=None)  # sigmoid score per label',
            "# the decision threshold of each label, chosen on validation data by textft",
            'thresholds = classifier.model.config.textft_thresholds["values"]',
            f"scores = classifier({example}, truncation=True)",
            'print([s for s in scores if s["score"] >= thresholds[s["label"]]])']
