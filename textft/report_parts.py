"""The pieces every report shares: metric names, numbers and texts as shown, Markdown cells and the
examples that quote an evaluated text (with its pair). The generic report (``textft.report``), the task
sections (``textft.task_reports``) and the comparison use them; the HTML pages lay them out in
templates (``textft.templating``)."""

from __future__ import annotations

from textft.tasks import METRIC_NAMES  # noqa: F401 (how each metric is written, for every report module)
# intervals, classes without examples and Markdown cells as written, for every report module
from textft.tasks.base import class_cells, coverage_note, md_cell, md_code, shown  # noqa: F401

SHORT_TEXT = 180
"""Characters of an evaluated text a report quotes."""


def fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def sorted_classes(split: dict) -> list[tuple[str, dict]]:
    """Worst F1 first; the classes without an example in the split (out of the averages) last."""
    return sorted(split["per_class"].items(), key=lambda kv: (not kv[1].get("in_macro", True), kv[1]["f1"], kv[0]))


def shorten(text: str, limit: int = SHORT_TEXT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def example(r: dict) -> dict[str, str]:
    """The shortened text of a prediction record, and its second text for a pair."""
    out = {"text": shorten(r.get("text", ""))}
    if r.get("text_pair") is not None:
        out["text_pair"] = shorten(r["text_pair"])
    return out


def check_rows(rows: list[dict], m: dict, split: str, warnings: list[str]) -> None:
    if len(rows) != m.get("num_examples"):
        warnings.append(f"predictions/{split}.jsonl holds {len(rows)} rows but the {split} split has"
                        f" {m.get('num_examples')} examples")


def example_markdown(r: dict) -> str:
    """A text of the report's example tables, with its pair."""
    return md_cell(r["text"] + (f" ‖ {r['text_pair']}" if r.get("text_pair") is not None else ""))


INTERVAL_NOTE = "[low, high]: 95% bootstrap interval over the split's examples."
