"""The pieces every report shares: metric names, numbers and texts as shown, Markdown cells and the
examples that quote an evaluated text (with its pair). The generic report (``textft.report``), the task
sections (``textft.task_reports``) and the comparison use them; the HTML pages lay them out in
templates (``textft.templating``)."""

from __future__ import annotations

import re

from textft.tasks import METRIC_NAMES  # noqa: F401 (how each metric is written, for every report module)
from textft.tasks.base import class_cells, coverage_note, shown  # noqa: F401 (intervals, classes without examples)

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


MARKDOWN_MARKUP = re.compile(r"([\\`*<&|]|\[(?=[^\]]*\][(\[]))")
"""What Markdown (or the HTML inside it) reads as markup: escapes, code, emphasis, tags, entities, table
cells, and a bracket that opens a link (``[text](url)``; an interval's ``[0.71, 0.90]`` stays as it is)."""


def md_cell(value) -> str:
    """A value (a label, an evaluated text, a name) as Markdown shows it as written, in a table cell or in
    a line: a backslash before each character Markdown or HTML would read, so ``<script>`` or ``R&amp;D``
    stays text on the Hub and on GitHub. Underscores stay: inside a word they never emphasise."""
    return MARKDOWN_MARKUP.sub(r"\\\1", str(value))


def md_code(value) -> str:
    """A value as inline code (shown as written: Markdown reads nothing inside), fenced by more backticks
    than it holds in a row."""
    text = str(value)
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def example_markdown(r: dict) -> str:
    """A text of the report's example tables, with its pair."""
    return md_cell(r["text"] + (f" ‖ {r['text_pair']}" if r.get("text_pair") is not None else ""))


INTERVAL_NOTE = "[low, high]: 95% bootstrap interval over the split's examples."
