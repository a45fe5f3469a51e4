"""The single-label sections of the reports: headline and per-class tables, the confusion matrix
(and the most confused pairs), calibration of the softmax confidence, the most confident mistakes."""

from __future__ import annotations

from typing import Any


def markdown_report(task, reports: dict[str, dict[str, Any]], title: str = "Evaluation") -> str:
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


# --- report.json / report.md / report.html --------------------------------------------------------


def split_entry(m: dict, labels: list[str], rows: list[dict] | None, split: str, mistakes: int,
                warnings: list[str]) -> dict[str, Any]:
    """One split of the report: its metrics, the normalised confusions and, from its predictions,
    calibration and the most confident mistakes."""
    from textft.report_data import calibration, check_rows, confident_mistakes, normalized_confusion, top_confusions

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
    from textft.report import example_markdown
    from textft.report_data import fmt, sorted_classes

    lines = ["", "### Per class (worst F1 first)", "", "| label | precision | recall | F1 | support |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
              for name, c in sorted_classes(m)]
    if m["top_confusions"]:
        lines += ["", "### Most confused pairs", "", "| true | predicted | count | share of true class |",
                  "|---|---|---:|---:|"]
        lines += [f"| {c['true']} | {c['pred']} | {c['count']} | {100 * c['share']:.1f}% |" for c in m["top_confusions"]]
    if m.get("calibration"):
        cal = m["calibration"]
        lines += ["", f"### Calibration: ECE {cal['ece']:.4f} ({cal['num_bins']} bins; mean confidence"
                      f" {cal['mean_confidence']:.4f}, accuracy {cal['accuracy']:.4f})", "",
                  "| confidence | examples | accuracy | mean confidence |", "|---|---:|---:|---:|"]
        lines += [f"| {b['low']:.2f}-{b['high']:.2f} | {b['count']} | {fmt(b['accuracy'])} |"
                  f" {fmt(b['confidence'])} |" for b in cal["bins"] if b["count"]]
    if m.get("most_confident_mistakes"):
        lines += ["", "### Most confident mistakes", "", "| confidence | true | predicted | text |", "|---:|---|---|---|"]
        lines += [f"| {r['confidence']:.3f} | {r['label']} | {r['pred']} | {example_markdown(r)} |"
                  for r in m["most_confident_mistakes"]]
    elif "predictions_file" not in m:
        lines += ["", f"(no predictions/{split}.jsonl: calibration and mistakes are not available)"]
    return lines


def html_split(split: str, m: dict, figures: dict[str, bytes]) -> list[str]:
    from textft.plots import MANY_CLASSES
    from textft.report import escape, example_html, html_table, img_tag
    from textft.report_data import fmt, sorted_classes

    many = len(m["per_class"]) > MANY_CLASSES
    out = ["<h3>Confusion matrix</h3><p class='note'>Rows are true labels, columns predictions; each row is"
           " divided by its total, so the diagonal is the recall of each class.</p>",
           img_tag(figures.get(f"{split}/confusion"), f"{split} confusion matrix")]
    if m["top_confusions"] and len(m["per_class"]) > 2:
        out.append(f"<h3>Most confused pairs (top {len(m['top_confusions'])})</h3>")
        out.append(html_table(["true label", "predicted as", "count", "share of true class"],
                              [[c["true"], c["pred"], c["count"], f"{100 * c['share']:.1f}%"]
                               for c in m["top_confusions"]], numeric={2, 3}))
    out += ["<h3>Per class</h3>", img_tag(figures.get(f"{split}/per_class_f1"), f"{split} F1 per class")]
    rows = [[name, fmt(c["precision"]), fmt(c["recall"]), fmt(c["f1"]), c["support"]] for name, c in sorted_classes(m)]
    table = html_table(["label", "precision", "recall", "F1", "support"], rows, numeric={1, 2, 3, 4})
    out.append(f"<details{'' if many else ' open'}><summary>precision, recall, F1 and support of"
               f" {len(rows)} classes (worst F1 first)</summary>{table}</details>")
    if m.get("calibration"):
        cal = m["calibration"]
        out.append(f"<h3>Calibration</h3><p class='note'>Expected calibration error {cal['ece']:.4f}: the"
                   f" mean confidence is {cal['mean_confidence']:.3f} for an accuracy of {cal['accuracy']:.3f}"
                   f" ({cal['num_bins']} equal-width confidence bins).</p>")
        out.append(img_tag(figures.get(f"{split}/calibration"), f"{split} calibration"))
    mistakes = m.get("most_confident_mistakes")
    if mistakes:
        out.append(f"<h3>The {len(mistakes)} most confident mistakes</h3>")
        body = "".join(f"<tr><td class='n'>{r['confidence']:.3f}</td><td>{escape(r['label'])}</td>"
                       f"<td>{escape(r['pred'])}</td>{example_html(r)}</tr>" for r in mistakes)
        out.append("<table><thead><tr><th class='n'>confidence</th><th>true label</th><th>predicted</th>"
                   f"<th>text</th></tr></thead><tbody>{body}</tbody></table>")
    return out


def figures(split: str, m: dict) -> dict[str, bytes]:
    from textft.plots import plot_calibration, plot_confusion, plot_per_class_f1

    out = {f"{split}/confusion": plot_confusion(m), f"{split}/per_class_f1": plot_per_class_f1(m, m.get("macro_f1"))}
    if m.get("calibration"):
        out[f"{split}/calibration"] = plot_calibration(m["calibration"])
    return out


# --- model card ------------------------------------------------------------------------------------

CARD_KIND = "text classifier"

CARD_METRICS = (("accuracy", "accuracy", "Accuracy", None), ("macro_f1", "f1", "Macro F1", {"average": "macro"}),
                ("weighted_f1", "f1", "Weighted F1", {"average": "weighted"}))
"""(metric, model-index type, name, args) of the card's metadata."""


def card_summary(labels: list[str]) -> str:
    shown = ", ".join(f"`{x}`" for x in labels[:20])
    return f"It predicts one of {len(labels)} labels" + (f": {shown}." if len(labels) <= 20 else f" (first 20: {shown}, ...).")


def card_usage(repo: str, example: str) -> list[str]:
    return [f'classifier = pipeline("text-classification", model="{repo}")',
            f"print(classifier({example}, truncation=True))"]
