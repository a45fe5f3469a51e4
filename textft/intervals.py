"""How sure a split's numbers are: 95% intervals of its headline metrics from a seeded percentile
bootstrap over its examples, and the resampled metrics the paired tests of ``textft.significance``
share.

Every headline metric is a function of the per-example outcomes (true and predicted class, label set
or value), so drawing n examples with replacement is a multinomial draw over the distinct outcomes
with their counts as weights: exactly the classic bootstrap, without materialising n indices per
resample. A single-label split has at most K² distinct (true, predicted) pairs however many
examples it holds; a regression split has up to n. Each metric is then a few matrix products of the
resampled counts (resamples x outcomes), for a batch of resamples at once.

    stats = statistics(single_label_values, truth, pred)    # a task's ``resampled`` function
    split_intervals(stats)                                   # {"accuracy": [0.72, 0.90], ...}

Which function scores which task, and which of its metrics flags a small split, the task classes say
(``resampled``, ``resampled_metrics``, ``noise_metric``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 1000
"""Resamples per interval: enough for stable 2.5% / 97.5% percentiles (Efron & Tibshirani 1993)."""
SEED = 0
"""Fixed, so a report rebuilt from the same predictions shows the same intervals."""
BATCH = 250
"""Resamples drawn and scored together: bounds memory to BATCH x distinct outcomes per array."""
WIDE = 0.10
"""A split whose noise metric has an interval wider than this (10 points) is flagged as too small."""
METHOD = {"method": "percentile bootstrap over examples", "confidence": CONFIDENCE, "resamples": RESAMPLES,
          "seed": SEED, "all_right_or_all_wrong": "exact binomial (Clopper-Pearson) interval of the right-or-wrong metric"}
"""How the intervals were made, stored next to them."""

Values = Callable[..., dict[str, np.ndarray]]
"""``values(w, keys=None)``: the metrics (``keys`` of them, default all) of resampled counts w."""


@dataclass
class Statistics:
    """A split collapsed into its distinct outcomes: ``counts[j]`` examples share outcome j, and
    ``values(W)`` scores resampled counts W (resamples x outcomes) as one array per metric."""

    counts: np.ndarray
    values: Values

    def point(self) -> dict[str, float]:
        return {k: float(v[0]) for k, v in self.values(self.counts[None, :].astype(np.float64)).items()}


def distinct(*columns) -> tuple[np.ndarray, np.ndarray]:
    """(index of one example of each distinct outcome, how many examples share it); an outcome is the
    row of all ``columns`` together (1-D per example or 2-D, one row per example)."""
    table = np.column_stack([np.asarray(c, dtype=np.float64).reshape(len(c), -1) for c in columns])
    _, first, counts = np.unique(table, axis=0, return_index=True, return_counts=True)
    return first, counts


def resampled_counts(counts: np.ndarray, resamples: int, rng: np.random.Generator):
    """Batches of bootstrap counts: each row says how often each outcome was drawn among n draws."""
    n, k = int(counts.sum()), len(counts)
    if 10 * k < n:  # few outcomes (classification): one binomial per outcome and resample
        for start in range(0, resamples, BATCH):
            yield rng.multinomial(n, counts / n, size=min(BATCH, resamples - start)).astype(np.float64)
        return
    # many outcomes (values): n indices per resample, counted per outcome, is cheaper than k binomials
    outcome = np.repeat(np.arange(k), counts)
    for start in range(0, resamples, BATCH):
        size = min(BATCH, resamples - start)
        drawn = outcome[rng.integers(0, n, (size, n))] + (k * np.arange(size))[:, None]
        yield np.bincount(drawn.ravel(), minlength=size * k).reshape(size, k).astype(np.float64)


def bootstrap(values: Values, counts: np.ndarray, resamples: int = RESAMPLES,
              seed: int = SEED) -> dict[str, np.ndarray]:
    """Every metric of ``values`` on each of ``resamples`` bootstrap resamples."""
    rng = np.random.default_rng(seed)
    batches = [values(w) for w in resampled_counts(counts, resamples, rng)]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> list[float] | None:
    """The central ``confidence`` share of the resampled values; None when the metric is undefined on
    more than half of the resamples (a correlation of near-constant values)."""
    defined = samples[np.isfinite(samples)]
    if len(defined) < len(samples) / 2:
        return None
    tail = (1 - confidence) / 2
    low, high = np.quantile(defined, [tail, 1 - tail])
    return [round(float(low), 6), round(float(high), 6)]


def split_intervals(stats: Statistics, resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, list[float] | None]:
    """The 95% interval of each metric of ``stats``: {metric: [low, high] or None}."""
    if stats.counts.sum() == 0:
        return {}
    samples = bootstrap(stats.values, stats.counts, resamples, seed)
    return {k: percentile_interval(v) for k, v in samples.items()}


def exact_proportion_interval(right: int, n: int, confidence: float = CONFIDENCE) -> list[float]:
    """Clopper-Pearson interval of a share of right answers. The bootstrap cannot see beyond a split
    where every example is right (or every one wrong): each resample is the same, and it would claim
    [1, 1] for 40 of 40; the exact binomial interval says [0.91, 1]."""
    from scipy.stats import binomtest

    ci = binomtest(right, n).proportion_ci(confidence_level=confidence, method="exact")
    return [round(float(ci.low), 6), round(float(ci.high), 6)]


def wide_interval(split: str, metric: str, name: str, m: dict) -> str | None:
    """One line when the interval of ``metric`` (a task's noise metric, written ``name``) of a split is
    wider than WIDE, else None."""
    ci = (m.get("intervals") or {}).get(metric)
    if not ci or ci[1] - ci[0] <= WIDE:
        return None
    return (f"{split}: {m.get('num_examples')} examples give {name} a 95% interval {100 * (ci[1] - ci[0]):.0f}"
            f" points wide [{ci[0]:.2f}, {ci[1]:.2f}]; differences between runs smaller than that are noise,"
            " a larger split would tell them apart")


# --- the metrics of each task, on resampled counts ------------------------------------------------


def _ratio(a: np.ndarray, b: np.ndarray, empty: float = 0.0) -> np.ndarray:
    return np.divide(a, b, out=np.full(np.broadcast(a, b).shape, empty, dtype=np.float64), where=b > 0)


def single_label_values(truth: np.ndarray, pred: np.ndarray) -> Values:
    """accuracy, macro-F1 over the classes present (true or predicted) and weighted-F1; ``truth`` and
    ``pred`` hold the class id of each outcome."""
    k = int(max(truth.max(initial=0), pred.max(initial=0))) + 1
    true_hot = np.eye(k)[truth]
    pred_hot = np.eye(k)[pred]
    hit_hot = true_hot * (truth == pred)[:, None]

    def values(w: np.ndarray, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        n = w.sum(1)
        support, predicted, tp = w @ true_hot, w @ pred_hot, w @ hit_hot
        f1 = _ratio(2 * tp, support + predicted)
        present = (support + predicted) > 0
        return {"accuracy": tp.sum(1) / n, "macro_f1": _ratio(f1.sum(1), present.sum(1)),
                "weighted_f1": (f1 * support).sum(1) / n}
    return values


def multi_label_values(truth: np.ndarray, pred: np.ndarray) -> Values:
    """micro-, macro- (labels present) and samples-F1, subset accuracy and Hamming loss; ``truth`` and
    ``pred`` are 0/1 rows, one per outcome."""
    t, p = truth.astype(bool), pred.astype(bool)
    both, t_f, p_f = (t & p).astype(np.float64), t.astype(np.float64), p.astype(np.float64)
    per_text = t_f.sum(1) + p_f.sum(1)
    samples_f1 = _ratio(2 * both.sum(1), per_text, empty=1.0)  # no true and no predicted label: right
    exact = (t == p).all(1).astype(np.float64)
    wrong = (t != p).mean(1) if t.shape[1] else np.zeros(len(t))

    def values(w: np.ndarray, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        n = w.sum(1)
        tp, support, predicted = w @ both, w @ t_f, w @ p_f
        denom = support + predicted
        present = denom > 0
        return {"micro_f1": _ratio(2 * tp.sum(1), denom.sum(1)),
                "macro_f1": _ratio(_ratio(2 * tp, denom).sum(1), present.sum(1)),
                "samples_f1": w @ samples_f1 / n, "subset_accuracy": w @ exact / n, "hamming_loss": w @ wrong / n}
    return values


def _midranks(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The average rank of each outcome's value among the examples drawn in each resample (ties share
    the mean of their ranks, as scipy.stats.rankdata)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    first = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    if first.all():  # no ties (predicted values): each outcome is its own group
        drawn = w.T[order]  # outcomes as rows: the gather and the running sum move whole rows
        ranks = np.cumsum(drawn, axis=0)
        ranks -= (drawn - 1) / 2
        out = np.empty_like(ranks)
        out[order] = ranks
        return out.T
    group = np.empty(len(values), dtype=np.int64)
    group[order] = np.cumsum(first) - 1
    if first.sum() <= 256:  # few distinct values (ratings): group totals by one product
        totals = w @ np.eye(int(first.sum()))[group]
    else:
        totals = np.add.reduceat(w[:, order], np.flatnonzero(first), axis=1)
    return (np.cumsum(totals, axis=1) - (totals - 1) / 2)[:, group]


def _correlation(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of x and y over the examples drawn (x, y: one value per outcome, or per
    resample and outcome); NaN where either side is constant."""
    n = w.sum(1)
    if x.ndim == 1:
        sx, sxx, sy, syy, sxy = w @ x, w @ (x * x), w @ y, w @ (y * y), w @ (x * y)
    else:
        wx, wy = w * x, w * y
        sx, sy = wx.sum(1), wy.sum(1)
        sxx, syy, sxy = (np.einsum("ij,ij->i", wx, x), np.einsum("ij,ij->i", wy, y),
                         np.einsum("ij,ij->i", wx, y))
    cov, vx, vy = sxy - sx * sy / n, sxx - sx * sx / n, syy - sy * sy / n
    scale = np.sqrt(np.clip(vx, 0, None) * np.clip(vy, 0, None))
    tiny = 1e-12 * np.sqrt(np.maximum(sxx * syy, 1e-300))  # rounding error of a constant column
    return np.divide(cov, scale, out=np.full(len(w), np.nan), where=scale > tiny)


def regression_values(truth: np.ndarray, pred: np.ndarray) -> Values:
    """MAE, RMSE, R², Pearson and Spearman; ``truth`` and ``pred`` hold each outcome's values."""
    y, p = truth.astype(np.float64), pred.astype(np.float64)
    err = p - y

    def values(w: np.ndarray, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        n = w.sum(1)
        sse = w @ (err * err)
        sst = w @ (y * y) - (w @ y) ** 2 / n
        constant = sst <= 1e-12 * np.maximum(w @ (y * y), 1e-300)  # R² is undefined for one true value
        out = {"mae": lambda: w @ np.abs(err) / n, "rmse": lambda: np.sqrt(sse / n),
               "r2": lambda: np.divide(sst - sse, sst, out=np.full(len(w), np.nan), where=~constant),
               "pearson": lambda: _correlation(w, p, y),
               # ranks within each resample: the costly one, computed only when asked for
               "spearman": lambda: _correlation(w, _midranks(p, w), _midranks(y, w))}
        return {k: f() for k, f in out.items() if keys is None or k in keys}
    return values


def statistics(values: Callable[[np.ndarray, np.ndarray], Values], truth, pred) -> Statistics:
    """One split as distinct outcomes, scored by ``values`` (a task's ``resampled``: one of the
    ``*_values`` functions above) from its per-example truth and predictions (class ids, 0/1 label
    rows or values)."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    first, counts = distinct(truth, pred)
    return Statistics(counts, values(truth[first], pred[first]))
