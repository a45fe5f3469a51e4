"""What a label is, in one place: a task object per kind of label.

``single_label`` (one class per text), ``multi_label`` (a set of classes, possibly empty) and
``regression`` (a number). Each task owns what differs between them: reading and checking the label
column, the loss, the metrics (``evaluate`` modules under ``textft/metrics``), turning logits into
predictions, what it stores in ``config.json``, its metrics' names, directions and curves. Everything
else (data loading, tokenisation, the loop, checkpoints, serving) is the same code for all three and
asks the task; the report sections of each task live with the reports (``textft.task_reports``), which
import the tasks, never the reverse. Text pairs are orthogonal: a second text column, a tokenisation concern.

    task = tasks.for_training(cfg.data, train_values, feature, where, problems)   # training
    task = tasks.from_model_config(config_json)                                 # a saved model
"""

from __future__ import annotations

import logging
import math

from textft.errors import UserError, closest
from textft.tasks.base import (LOWER_IS_BETTER, METRIC_NAMES, Task, check_top_k, example_text,  # noqa: F401
                               is_list, is_missing, is_number, is_sequence_feature, shorten_text)
from textft.tasks.multi_label import MultiLabel
from textft.tasks.regression import Regression
from textft.tasks.single_label import SingleLabel

log = logging.getLogger("textft")

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (SingleLabel, MultiLabel, Regression)}
"""Every task by name: the one list a new task is added to."""
TASK_NAMES = tuple(TASKS)
DEFAULT_TASK = SingleLabel.name
"""The task assumed where none is named: runs and models from before textft had tasks."""


def describe_tasks() -> list[dict]:
    """``Task.describe()`` of every task, in ``TASKS`` order."""
    return [cls.describe() for cls in TASKS.values()]


# --- which task ----------------------------------------------------------------------------------


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise UserError(f"unknown task '{name}'{closest(name, TASKS)}; tasks: {', '.join(TASKS)}")
    return TASKS[name]


def detect(cfg, values: list, feature, column: str) -> str:
    """The task of a label column: ``data.task``, or with ``auto`` what the training values look like."""
    if cfg.task != "auto":
        return cfg.task
    if is_sequence_feature(feature) or cfg.label_delimiter or any(is_list(v) for v in values):
        return MultiLabel.name
    present = [v for v in values if not is_missing(v)]
    numbers = bool(present) and all(is_number(v) for v in present)
    fraction = next((v for v in present if numbers and not float(v).is_integer()), None)
    if fraction is not None and not (isinstance(fraction, float) and math.isnan(fraction)):
        log.warning("data.task=auto: column '%s' holds numbers that are not whole (e.g. %s), so this is a"
                    " regression task; set data.task=single_label to treat its values as class names",
                    column, fraction)
        return Regression.name
    return SingleLabel.name


def for_training(cfg, values: list, feature, where: str, problems: list[str]) -> Task:
    """The task of a training label column, with its label names (or target scale) read from it;
    problems found on the way are appended to ``problems``."""
    kind = detect(cfg, values, feature, cfg.label_column)
    if getattr(cfg, "oos_label", None) is not None and kind != SingleLabel.name:
        problems.append(f"'data.oos_label' names out-of-scope examples of a single_label task; column"
                        f" '{cfg.label_column}' of {where} makes this a {kind} task")
    return task_class(kind).from_training(cfg, values, feature, where, problems)


def from_model_config(config: dict, where: str = "config.json") -> Task:
    """The task of a saved model, from its config.json (problem_type, id2label, textft's settings)."""
    id2label = config.get("id2label") or {}
    try:
        names = [str(v) for _, v in sorted((int(k), v) for k, v in id2label.items())]
    except (TypeError, ValueError):
        raise UserError(f"{where}: 'id2label' must map class ids to names, got {id2label!r}") from None
    num_labels = config.get("num_labels") or len(names)
    names = names or [f"LABEL_{i}" for i in range(num_labels)]
    problem = config.get("problem_type")
    by_problem = {cls.problem_type: cls for cls in TASKS.values()}
    # Without a problem_type, transformers reads one output as regression and several as classes.
    cls = by_problem.get(problem) or (Regression if problem is None and len(names) == 1 else SingleLabel)
    return cls.from_model_config(names, config, where)
