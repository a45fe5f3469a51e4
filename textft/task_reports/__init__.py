"""The report sections of each task, registered by task name: what a split of a report holds beyond
the headline (``split_entry``), how it reads in Markdown and HTML (``markdown_split``, ``html_split``),
its figures (``figures``) and the model card's wording (``CARD_KIND``, ``CARD_METRICS``,
``card_summary``, ``card_usage``).

Presentation registers itself with the task, never the reverse: these modules import
``textft.tasks``; the task classes know nothing of reports. A new task adds its module here.
"""

from __future__ import annotations

from types import ModuleType

from textft.errors import UserError, closest
from textft.task_reports import multi_label, regression, single_label

SECTIONS: dict[str, ModuleType] = {m.TASK: m for m in (single_label, multi_label, regression)}
"""Each task's report module, by task name."""


def sections(task: str) -> ModuleType:
    """The report sections of the task named ``task``."""
    if task not in SECTIONS:
        raise UserError(f"no report sections for task '{task}'{closest(task, SECTIONS)}; tasks: {', '.join(SECTIONS)}")
    return SECTIONS[task]
