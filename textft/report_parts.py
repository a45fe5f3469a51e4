"""The pieces every report shares: metric names, numbers and texts as shown, Markdown cells, HTML
tables and the example cells that quote an evaluated text (with its pair). The generic report
(``textft.report``), the task sections (``textft.task_reports``) and the comparison use them."""

from __future__ import annotations

import html
from typing import Any

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


def escape(v) -> str:
    return html.escape(str(v))


def md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def html_table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    th = "".join(f'<th class="n">{escape(h)}</th>' if i in numeric else f"<th>{escape(h)}</th>" for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = "".join(f'<td class="n">{escape(v)}</td>' if i in numeric else f"<td>{escape(v)}</td>"
                        for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def example_markdown(r: dict) -> str:
    """A text of the report's example tables, with its pair."""
    return md_cell(r["text"] + (f" ‖ {r['text_pair']}" if r.get("text_pair") is not None else ""))


def example_html(r: dict) -> str:
    """A text of the report's example tables, with its pair below it."""
    pair = f"<div class='pair'>&#8644; {escape(r['text_pair'])}</div>" if r.get("text_pair") is not None else ""
    return f"<td class='text'>{escape(r['text'])}{pair}</td>"


INTERVAL_NOTE = "[low, high]: 95% bootstrap interval over the split's examples."
