"""Is one model really better than another? Paired tests over the predictions both saved for the same
examples (``predictions/<split>.jsonl``).

A right-or-wrong metric (accuracy; subset accuracy for multi-label) gets McNemar's exact test: only
the examples the two models disagree on count, and under "equally good" each disagreement is a fair
coin (McNemar 1947; the exact binomial form, Edwards 1948). Every other metric (F1s, the regression
errors and correlations) gets a paired bootstrap: both models are scored on the same resamples of
the examples, and the p-value is the share of resampled differences at least as far from the
observed one as the observed one is from zero (the shifted null of Berg-Kirkpatrick et al. 2012).

    result = paired_test(task_class, metric, rows_best, rows_other)   # a PairTest
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np

from textft.intervals import SEED, Values, bootstrap, distinct, percentile_interval

ALPHA = 0.05
"""Differences with a two-sided p-value below this are called significant."""
PAIRED_RESAMPLES = 2000
"""Resamples of a paired bootstrap: a p-value near 5% is then known to about +-0.5 points."""


@dataclass
class PairTest:
    """One metric of two runs on the same split: the difference (other - best), its test, p-value and
    verdict; or, when no paired test applies, the reason (then ``p_value`` is None)."""

    metric: str
    test: str | None
    difference: float | None = None
    p_value: float | None = None
    significant: bool | None = None
    interval: list[float] | None = None
    """95% paired-bootstrap interval of the difference (bootstrap tests only)."""
    examples: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def mcnemar_exact(right_a: np.ndarray, right_b: np.ndarray) -> tuple[int, int, float]:
    """(examples only A gets right, examples only B gets right, two-sided exact p-value)."""
    from scipy.stats import binomtest

    only_a = int((right_a & ~right_b).sum())
    only_b = int((~right_a & right_b).sum())
    if only_a + only_b == 0:
        return 0, 0, 1.0
    return only_a, only_b, float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_bootstrap(values, metric: str, truth: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                     resamples: int = PAIRED_RESAMPLES, seed: int = SEED) -> tuple[float, float, list[float] | None]:
    """(metric of B - metric of A, two-sided p-value, 95% interval of the difference), both models
    scored on the same resamples of the examples by ``values`` (a task's ``resampled``)."""
    first, counts = distinct(truth, pred_a, pred_b)
    score_a: Values = values(truth[first], pred_a[first])
    score_b: Values = values(truth[first], pred_b[first])

    def difference(w: np.ndarray) -> dict[str, np.ndarray]:
        return {"d": score_b(w, (metric,))[metric] - score_a(w, (metric,))[metric]}
    observed = float(difference(counts[None, :].astype(np.float64))["d"][0])
    resampled = bootstrap(difference, counts, resamples, seed)["d"]
    resampled = resampled[np.isfinite(resampled)]
    if not np.isfinite(observed) or len(resampled) < resamples / 2:
        return observed, float("nan"), None
    beyond = int((np.abs(resampled - observed) >= abs(observed) - 1e-12).sum())
    return observed, (1 + beyond) / (1 + len(resampled)), percentile_interval(resampled)


def example_key(r: dict) -> tuple:
    """What identifies the example behind a prediction record: its text(s) and true label(s)."""
    label = r.get("labels", r.get("label"))
    return r.get("text"), r.get("text_pair"), tuple(label) if isinstance(label, list) else label


def examples_key(rows: list[dict]) -> str:
    """A fingerprint of the examples a model was scored on (in any order): equal for two runs whose
    predictions a paired test can compare."""
    import hashlib

    digest = hashlib.sha256()
    for key in sorted(repr(example_key(r)) for r in rows):
        digest.update(key.encode("utf-8", "surrogatepass") + b"\n")
    return digest.hexdigest()[:16]


def aligned(rows_a: list[dict], rows_b: list[dict]) -> tuple[list[dict] | None, str | None]:
    """``rows_b`` in the order of ``rows_a`` when both hold the same examples (text, second text and
    true label), else None and the reason."""
    key = example_key
    if len(rows_a) != len(rows_b):
        return None, f"scored on different rows ({len(rows_a)} vs {len(rows_b)} examples)"
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows_b:
        by_key[key(r)].append(r)
    out = []
    for r in rows_a:
        same = by_key.get(key(r))
        if not same:
            return None, "scored on different rows (same count, other texts or labels)"
        out.append(same.pop())
    return out, None


def paired_test(task_cls, metric: str, rows_best: list[dict] | None, rows_other: list[dict] | None) -> PairTest:
    """``metric`` of the run behind ``rows_other`` against the best run's, with the test that fits it."""
    exact = metric == task_cls.exact_test
    if metric not in task_cls.resampled_metrics:
        return PairTest(metric, None, reason=f"{metric} cannot be recomputed from saved predictions")
    if not rows_best or not rows_other:
        return PairTest(metric, None, reason="no saved predictions for this split")
    other, reason = aligned(rows_best, rows_other)
    if other is None:
        return PairTest(metric, None, reason=reason)
    try:
        truth, (pred_best, pred_other) = task_cls.row_outcomes([rows_best, other])
    except (KeyError, TypeError, ValueError):
        return PairTest(metric, None, reason=f"the saved predictions are not {task_cls.name} records")
    n = len(truth)
    if exact:
        right_best, right_other = _right(pred_best, truth), _right(pred_other, truth)
        _, _, p = mcnemar_exact(right_other, right_best)
        diff = float(right_other.mean() - right_best.mean())
        return PairTest(metric, "McNemar exact", round(diff, 6), round(p, 6), p < ALPHA, examples=n)
    diff, p, interval = paired_bootstrap(task_cls.resampled, metric, truth, pred_best, pred_other)
    if not np.isfinite(p):
        return PairTest(metric, "paired bootstrap", diff if np.isfinite(diff) else None, examples=n,
                        reason=f"{metric} is undefined on most resamples")
    return PairTest(metric, "paired bootstrap", round(diff, 6), round(p, 6), p < ALPHA, interval, examples=n)


def _right(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Whether each example is answered right (multi-label: every label)."""
    same = pred == truth
    return same.all(1) if same.ndim == 2 else same
