"""What every task is: the ``Task`` interface, the metric names and directions all tasks share, and
the small helpers the task classes use. The tasks themselves (one module each) and the registry that
picks one are in the ``textft.tasks`` package."""

from __future__ import annotations

import re
from typing import Any, Callable, ClassVar

import numpy as np

from textft.errors import UserError, closest
from textft.intervals import (METHOD as INTERVAL_METHOD, exact_proportion_interval, split_intervals, statistics,
                              wide_interval)

LOWER_IS_BETTER = frozenset({"loss", "mae", "rmse", "hamming_loss", "ece"})
"""Metrics where a smaller value is better (model selection, early stopping, sweeps, comparisons)."""
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "weighted_f1": "weighted-F1", "loss": "loss",
                "ece": "ECE", "micro_f1": "micro-F1", "samples_f1": "samples-F1", "subset_accuracy": "subset accuracy",
                "hamming_loss": "Hamming loss", "mae": "MAE", "rmse": "RMSE", "r2": "R²", "pearson": "Pearson",
                "spearman": "Spearman"}
"""How each metric is written in reports, tables and logs."""


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def is_missing(v: Any) -> bool:
    """None, or NaN (what pandas-style files and JSON writers put in an empty cell)."""
    return v is None or (isinstance(v, (float, np.floating)) and v != v)


def is_list(v: Any) -> bool:
    return isinstance(v, (list, tuple))


class Task:
    """The interface every task implements; the class attributes describe it to reports and the recipe."""

    name: ClassVar[str]
    problem_type: ClassVar[str]
    """``problem_type`` in config.json: how a plain transformers pipeline post-processes the logits."""
    metrics: ClassVar[tuple[str, ...]]
    """Validation metrics ``train.metric_for_best`` may name."""
    headline: ClassVar[tuple[str, ...]]
    """The metrics of the report's summary table, the comparison and the model card, in order."""
    exact_test: ClassVar[str | None] = None
    """The right-or-wrong-per-example metric McNemar's exact test compares (others: a paired bootstrap)."""
    resampled: ClassVar[Callable]
    """``textft.intervals``' function that scores this task's headline metrics on bootstrap resamples."""
    resampled_metrics: ClassVar[tuple[str, ...]]
    """The headline metrics it computes: those a prediction record determines (the loss and the
    calibration need the model's scores), which get intervals and paired tests."""
    noise_metric: ClassVar[str]
    """The 0-1 metric whose interval, when wider than 10 points, flags a split as too small to tell
    models apart."""
    curves: ClassVar[tuple[str, ...]]
    """Validation metrics drawn in the learning curves."""
    default_metric: ClassVar[str]
    """The validation metric a run picks its best model by when ``train.metric_for_best`` is auto."""
    loss_name: ClassVar[str]
    output_noun: ClassVar[str] = "classes"
    """What the rows of the head are, where the recipe counts them (classes, labels, output)."""
    min_epochs: ClassVar[float] = 1.0
    """Fewest passes over the training data an auto-length run of this task makes (``textft.recipe``)."""
    min_epochs_reason: ClassVar[str] = "one pass"
    """Why, in the words the recipe's reasons use."""
    answer_fields: ClassVar[tuple[str, ...]]
    """The fields one answer (``decode``) may hold, as ``textft.load``, predict and serve return it."""
    answers_are_labels: ClassVar[bool] = True
    """Answers are labels, which can stay exactly equal across precisions (int8 is then measured by how
    many stay equal); False for values, which always move a little."""

    one_class_per_text: ClassVar[bool] = False
    """Each text has exactly one class: examples per class can be counted, and the few-shot method
    (fitted head, class-grouped batches) applies."""
    out_of_scope: ClassVar[bool] = False
    """Whether ``textft calibrate`` can give this task an out-of-scope threshold."""
    calibration: ClassVar[str | None] = None
    """What ``textft calibrate`` sets: ``out_of_scope`` (single-label), ``thresholds`` (multi-label) or
    nothing (None)."""

    def __init__(self, label_names: list[str]):
        self.label_names = list(label_names)
        self.delimiter: str | None = None
        """Separator of several labels in one string (multi_label files such as CSV)."""

    # -- description ------------------------------------------------------------------------------

    @property
    def num_outputs(self) -> int:
        return len(self.label_names)

    @staticmethod
    def lower_is_better(metric: str) -> bool:
        return metric in LOWER_IS_BETTER

    @classmethod
    def output_names(cls, label_names: list[str]) -> list[str]:
        """The name of each output of the head, from the label names a dataset was read with."""
        return list(label_names)

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """What clients need to show this task's runs (``GET /v1/tasks``): every metric it reports with
        its display name, direction and whether ``train.metric_for_best`` may name it; the headline,
        the learning curves, the default metric and the fields of an answer."""
        keys = list(dict.fromkeys((*cls.headline, *cls.metrics)))
        return {"name": cls.name, "problem_type": cls.problem_type, "loss_name": cls.loss_name,
                "metrics": [{"name": k, "display_name": METRIC_NAMES[k], "lower_is_better": k in LOWER_IS_BETTER,
                             "selectable": k in cls.metrics} for k in keys],
                "headline": list(cls.headline), "curves": list(cls.curves), "default_metric": cls.default_metric,
                "answer_fields": list(cls.answer_fields)}

    @classmethod
    def check_metric(cls, metric: str, key: str = "'train.metric_for_best'") -> str:
        """``metric`` (``auto``: the task's default) when this task computes it, else a UserError."""
        if metric == "auto":
            return cls.default_metric
        if metric not in cls.metrics:
            raise UserError(f"{key}: {metric} is not a {cls.name} metric; choose one of {', '.join(cls.metrics)}"
                            f"{closest(metric, cls.metrics)}")
        return metric

    def configure(self, train_cfg, metric: str) -> None:
        """Take the run's training settings (loss options, what thresholds optimise); refuse those that
        do not apply to this task with a UserError."""

    def model_config(self) -> dict[str, Any]:
        """Attributes written into config.json next to id2label."""
        return {"problem_type": self.problem_type}

    # -- data -------------------------------------------------------------------------------------

    def check(self, where: str, column: str, values: list) -> list[str]:
        """Problems with the label values of one split (``where`` names it, with its file)."""
        raise NotImplementedError

    def encode(self, values: list) -> list:
        """The ``labels`` column the model trains on, from checked label values."""
        raise NotImplementedError

    def train_problem(self, labels: list) -> str | None:
        """What makes the encoded training labels unusable (e.g. a single class), or None."""
        return None

    def strata(self, labels: list) -> list | None:
        """Groups a carved validation split keeps in proportion (None: a plain random split)."""
        return None

    def label_counts(self, labels: list) -> dict[str, int]:
        """How many encoded labels carry each label name (the distribution a dataset upload shows)."""
        raise NotImplementedError

    def describe_label(self, label) -> Any:
        """An encoded label as a person reads it (an upload's preview)."""
        raise NotImplementedError

    # -- training and evaluation ------------------------------------------------------------------

    def loss_fn(self, train_cfg, train_labels: list) -> Callable:
        raise NotImplementedError

    def evaluate(self, logits: np.ndarray, labels: np.ndarray, intervals: bool = False) -> dict[str, Any]:
        """This task's metrics of a split; with ``intervals`` also the 95% interval of each headline
        metric (``intervals``: {metric: [low, high]}) and how it was made (``interval_method``)."""
        raise NotImplementedError

    @classmethod
    def statistics(cls, truth, pred):
        """A split's outcomes (``row_outcomes`` or what ``evaluate`` scores) as ``textft.intervals`` resamples them."""
        return statistics(cls.resampled, truth, pred)

    @classmethod
    def intervals(cls, truth, pred, stats=None) -> dict[str, list[float] | None]:
        """The 95% interval of each resampled metric of a split; for the right-or-wrong metric of a split
        where every example is right (or every one wrong), the exact binomial interval instead of the
        bootstrap's zero-width one."""
        stats = stats or cls.statistics(truth, pred)
        out = split_intervals(stats)
        ci, n = out.get(cls.exact_test), int(stats.counts.sum())
        if ci and ci[0] == ci[1] and n:
            out[cls.exact_test] = exact_proportion_interval(round(stats.point()[cls.exact_test] * n), n)
        return out

    @classmethod
    def add_intervals(cls, metrics: dict[str, Any], truth, pred) -> dict[str, Any]:
        """``metrics`` with the 95% interval of each resampled metric and how they were made."""
        metrics["intervals"] = cls.intervals(truth, pred)
        metrics["interval_method"] = dict(INTERVAL_METHOD)
        return metrics

    @classmethod
    def rescored(cls, m: dict[str, Any], truth, pred) -> dict[str, Any]:
        """A split of a run from before the intervals, brought to today's definitions from its saved
        predictions: its resampled metrics recomputed (macro averages over the classes present, where the
        older run counted absent classes as zero), their intervals, and which classes the averages cover.
        The loss and the calibration need the model's scores and stay as the run stored them."""
        stats = cls.statistics(truth, pred)
        out = {**m, **stats.point(), "intervals": cls.intervals(truth, pred, stats),
               "interval_method": dict(INTERVAL_METHOD), "rescored_from_predictions": True}
        per_class = m.get("per_class")
        counts = cls.class_counts(truth, pred, len(per_class)) if per_class else None
        if counts is not None:
            support, predicted = counts
            out["per_class"] = {name: {**c, "support": int(support[i]), "predicted": int(predicted[i]),
                                       "in_macro": bool(support[i] or predicted[i])}
                                for i, (name, c) in enumerate(per_class.items())}
            out["macro_classes"] = int(((support > 0) | (predicted > 0)).sum())
            out["classes_without_examples"] = [name for i, name in enumerate(per_class) if not support[i]]
        return out

    @staticmethod
    def class_counts(truth, pred, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(examples of each of the k classes, predictions of each) from ``row_outcomes``; None for a
        task without classes."""
        return None

    @classmethod
    def wide_interval(cls, split: str, m: dict) -> str | None:
        """One line when the split is too small to tell models apart (see ``noise_metric``)."""
        return wide_interval(split, cls.noise_metric, METRIC_NAMES[cls.noise_metric], m)

    @classmethod
    def row_outcomes(cls, runs: list[list[dict]], label_names: list[str] | None = None
                     ) -> tuple[np.ndarray, list[np.ndarray]]:
        """True outcomes and each run's predicted ones, as ``textft.intervals.statistics`` takes them,
        from prediction records (``prediction_rows``) of the same examples in the same order. Classes
        are numbered in the order of ``label_names`` (the model's, so that the intervals come out as
        the evaluation computed them), then any other name the records hold."""
        raise NotImplementedError


    def choose_decision(self, logits: np.ndarray, labels: np.ndarray) -> dict | None:
        """Decision settings chosen on validation data and kept for prediction (thresholds); None if
        the task has none."""
        return None

    def export(self, model) -> None:
        """Last changes to the model before it is evaluated and saved as the run's result."""

    # -- prediction -------------------------------------------------------------------------------

    def decode(self, logits: np.ndarray, top_k: int = 1, return_all_scores: bool = False,
               out_of_scope: dict | None = None, in_scope: np.ndarray | None = None) -> list[dict]:
        """One answer per row of logits, as predict, serve and ``textft.load`` return it (``in_scope``:
        each row's out-of-scope score, for a task that answers out of scope)."""
        raise NotImplementedError

    def prediction_rows(self, texts: list[str], labels, logits: np.ndarray, pairs: list[str] | None = None,
                        max_chars: int = 1000) -> list[dict]:
        """The record behind every evaluated example, for ``predictions/<split>.jsonl``."""
        raise NotImplementedError

    def agreement(self, truths: list, answers: list[dict]) -> str | None:
        """One line comparing answers with true labels (``textft predict --label-column``)."""
        return None

    def answer_keys(self, logits: np.ndarray) -> list | None:
        """What must stay equal between two precisions of the same model, one per row (the label, the
        set of labels); None where the answers are values (see ``answers_are_labels``)."""
        return None

    def gold_key(self, value) -> Any:
        """A true label as ``answer_keys`` writes an answer, or None where it cannot be compared (int8
        against fp32 accuracy on saved validation rows)."""
        return None

    # -- text -------------------------------------------------------------------------------------

    @classmethod
    def summary_line(cls, split: str, m: dict) -> str:
        """``test: accuracy 0.8167 [0.72, 0.90]  ...  (60 examples)``: each headline metric with its 95%
        interval."""
        values = "  ".join(f"{METRIC_NAMES[k]} {shown(m, k)}" for k in cls.headline
                           if isinstance(m.get(k), (int, float)))
        return f"{split}: {values}  ({m.get('num_examples')} examples)"

    @classmethod
    def summary(cls, reports: dict[str, dict]) -> list[str]:
        """The terminal summary of a run or an evaluation: a line per split, then a line for each split
        too small to tell models apart and for each that lacks classes."""
        lines = [cls.summary_line(split, m) for split, m in reports.items()]
        lines += [line for split, m in reports.items() if (line := cls.wide_interval(split, m))]
        return lines + [f"{split}: {note}" for split, m in reports.items() if (note := coverage_note(m))]

    @classmethod
    def log_line(cls, m: dict) -> str:
        return "  ".join(f"{METRIC_NAMES[k]} {m[k]:.4f}" for k in (*cls.curves, "loss")
                         if isinstance(m.get(k), (int, float)))

    @classmethod
    def markdown_report(cls, reports: dict[str, dict], title: str = "Evaluation") -> str:
        """``eval_report.md`` (and what train and evaluate print): the headline table of every split,
        then the task's own tables."""
        raise NotImplementedError


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


def class_index(label_names: list[str] | None, seen: set[str]) -> dict[str, int]:
    """Class ids of ``label_names`` in their order, then the other names ``seen``, sorted."""
    names = list(label_names or [])
    names += sorted(seen - set(names))
    return {n: i for i, n in enumerate(names)}


def shown(m: dict, key: str, digits: int = 4) -> str:
    """A split's metric as tables and summaries write it: the value, then its 95% interval when the
    split has one (2 decimals; 3 when it is narrower than 5 points)."""
    v = m.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "-"
    ci = (m.get("intervals") or {}).get(key)
    if not ci:
        return f"{v:.{digits}f}"
    d = 3 if ci[1] - ci[0] < 0.05 else 2
    return f"{v:.{digits}f} [{ci[0]:.{d}f}, {ci[1]:.{d}f}]"


def class_cells(c: dict) -> list[str]:
    """Precision, recall and F1 of one class as the per-class tables show them: a class with no example
    in the split reads "no examples" (out of the macro averages), or, when the model predicted it
    anyway, F1 0 with how often (those wrong predictions stay in the averages)."""
    if c.get("support") == 0 and "in_macro" in c:
        if not c.get("predicted"):
            return ["-", "-", "no examples"]
        return [f"{c['precision']:.4f}", "-", f"{c['f1']:.4f} (no examples, predicted {c['predicted']}x)"]
    return [f"{c[k]:.4f}" for k in ("precision", "recall", "f1")]


def coverage_note(m: dict) -> str | None:
    """How many classes of the model the split has no example of, and what the macro averages cover."""
    absent, per_class = m.get("classes_without_examples"), m.get("per_class") or {}
    if not absent or not per_class:
        return None
    kind = "labels" if "cooccurrence" in m else "classes"
    predicted = sum(1 for name in absent if (per_class.get(name) or {}).get("predicted"))
    wrongly = f" ({predicted} of them predicted, wrongly)" if predicted else ""
    return (f"{len(absent)} of {len(per_class)} {kind} have no example here{wrongly}; macro averages cover the"
            f" {m.get('macro_classes', len(per_class) - len(absent))} {kind} present (true or predicted)")


def shorten_text(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max_chars] + "…"


def example_text(texts: list[str], pairs: list[str] | None, i: int, max_chars: int) -> dict[str, str]:
    """``text`` (and ``text_pair``) of example i, shortened for prediction records."""
    out = {"text": shorten_text(texts[i], max_chars)}
    if pairs is not None:
        out["text_pair"] = shorten_text(pairs[i], max_chars)
    return out


def check_top_k(top_k) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UserError(f"'--top-k' must be an integer >= 1, got {top_k!r}")
    return top_k


def is_sequence_feature(feature) -> bool:
    from datasets import LargeList, List

    return isinstance(feature, (List, LargeList))


def weights_by_name(spec: dict, label_names: list[str]) -> list[float]:
    """Per-label weights from a mapping {label: weight} (1 for labels it leaves out)."""
    unknown = [str(k) for k in spec if str(k) not in label_names]
    if unknown:
        raise UserError(f"'train.class_weights': unknown label(s) {', '.join(unknown)}"
                        f"{closest(unknown[0], label_names)}; labels: {', '.join(label_names[:20])}")
    weights = {str(k): float(v) for k, v in spec.items()}
    return [weights.get(n, 1.0) for n in label_names]
