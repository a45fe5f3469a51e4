"""The report's figures, drawn with matplotlib's object-oriented API (no pyplot state, no display)
into PNG bytes: confusion matrix, per-class F1, learning curves, calibration and out-of-scope score
histograms (single-label), label
co-occurrence (multi-label), predicted against true values and residuals (regression), and the
``<img>`` tag that embeds one in a page. Each task's report sections (``textft.task_reports``) say
which of them its splits get."""

from __future__ import annotations

import io
import struct

import numpy as np

from textft.report_parts import METRIC_NAMES, fmt, sorted_classes
from textft.tasks import LOWER_IS_BETTER

MANY_CLASSES = 20
"""Above this many classes the confusion matrix drops its cell annotations and tables fold away."""
PIXEL_DENSITY = 2
"""Image pixels per CSS pixel of the page."""


def figure(width: float, height: float):
    # The object-oriented API keeps clear of pyplot's global state and never needs a display.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def png(fig) -> bytes:
    # Twice the pixels the page shows (see css_width), so that zooming in on 77 tick labels stays sharp.
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white", dpi=PIXEL_DENSITY * 100)
    return buf.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels, read from the PNG header."""
    return struct.unpack(">II", png[16:24])


def short_label(name: str, limit: int = 34) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def plot_confusion(split: dict) -> bytes:
    from matplotlib.colors import PowerNorm

    labels = split.get("labels") or list(split["per_class"])
    cm = np.asarray(split["confusion_matrix_normalized"])
    counts = np.asarray(split["confusion_matrix"])
    n = len(labels)
    many = n > MANY_CLASSES
    names = [short_label(x) for x in labels]
    size = 7 if many else 10
    # Room for the longest tick label, then square cells: about 0.105 in (10 px) each for many classes.
    margin = 0.6 + max(len(x) for x in names) * size * 0.6 / 72
    matrix = max(8.0, 0.105 * n) if many else max(2.6, 0.9 * n)
    fig = figure(matrix + margin + 1.3, matrix + margin + 0.5)
    ax = fig.add_subplot()
    # A square-root colour scale keeps a 2% confusion visible next to a 95% diagonal.
    im = ax.imshow(cm, cmap="Blues", norm=PowerNorm(gamma=0.5, vmin=0, vmax=1), interpolation="nearest")
    horizontal = not many and max(len(x) for x in names) * n <= 40
    ax.set_xticks(range(n), names, rotation=0 if horizontal else 90, fontsize=size)
    ax.set_yticks(range(n), names, fontsize=size)
    ax.set_xlabel("predicted label", fontsize=11)
    ax.set_ylabel("true label", fontsize=11)
    if many:
        ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
        ax.grid(which="minor", color="#e6e6e6", linewidth=0.4)
        ax.tick_params(which="minor", length=0)
    else:
        for i in range(n):
            for j in range(n):
                text = f"{100 * cm[i, j]:.1f}%\n{counts[i, j]}" if n <= 10 else f"{100 * cm[i, j]:.0f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=10 if n <= 10 else 8,
                        color="white" if cm[i, j] > 0.45 else "#222222")
    fig.colorbar(im, ax=ax, shrink=0.6 if many else 0.8, label="share of the true class (row-normalised)")
    return png(fig)


def plot_per_class_f1(split: dict, macro_f1: float | None) -> bytes:
    """One row per class, worst F1 on top: F1 as a coloured dot, precision and recall as small marks.

    Dots rather than bars, because the axis starts near the worst class: a good model's classes all
    sit between 0.8 and 1.0, and bars from zero would make them look the same.
    """
    from matplotlib import colormaps

    ranked = sorted_classes(split)
    items = [kv for kv in ranked if kv[1].get("in_macro", True)][::-1]  # bottom-up: the worst class on top
    left_out = len(ranked) - len(items)
    n = len(items)
    many = n > MANY_CLASSES
    fig = figure(10 if many else 8, max(2.6, 0.18 * n + 1.4))
    ax = fig.add_subplot()
    y = np.arange(n)
    f1 = np.array([c["f1"] for _, c in items])
    precision = np.array([c["precision"] for _, c in items])
    recall = np.array([c["recall"] for _, c in items])
    low = min(f1.min(), precision.min(), recall.min())
    start = 0.0 if low < 0.5 else np.floor(low * 10 - 0.5) / 10
    ax.hlines(y, start, f1, color="#d5d9e0", linewidth=0.8, zorder=1)
    ax.scatter(precision, y, marker="|", s=40 if many else 90, color="#7f7f7f", linewidths=1.2, zorder=2,
               label="precision")
    ax.scatter(recall, y, marker="x", s=14 if many else 40, color="#1f77b4", linewidths=0.9, zorder=2,
               label="recall")
    ax.scatter(f1, y, s=26 if many else 70, c=colormaps["RdYlGn"](0.15 + 0.7 * f1), edgecolors="#444444",
               linewidths=0.4, zorder=3, label="F1")
    ax.set_yticks(y, [short_label(name, 40) for name, _ in items], fontsize=7 if many else 10)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlim(start, 1.0 + 0.015 * (1.0 - start))
    ax.set_xticks(np.round(np.arange(start, 1.0001, 0.1 if start >= 0.5 else 0.2), 2))
    ax.set_xlabel("score" + (f" (axis starts at {start:.1f})" if start > 0 else ""))
    right_of_axes = ax.get_yaxis_transform()  # x in axes fractions, y in rows
    for i, (_, c) in enumerate(items):
        ax.text(1.01, i, f"{c['f1']:.2f} (n={c['support']})", va="center", fontsize=6.5 if many else 9,
                color="#333333", transform=right_of_axes)
    if macro_f1 is not None:
        ax.axvline(macro_f1, color="#555555", linestyle="--", linewidth=1, zorder=0, label=f"macro-F1 {macro_f1:.3f}")
    ax.axvline(1.0, color="#bbbbbb", linewidth=0.8, zorder=0)
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    # Above the rows: inside the axes it covers the best classes' points at the bottom.
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=9, ncols=4, frameon=False, borderaxespad=0.2)
    title = (f"Per class, worst F1 at the top ({left_out} with no example not shown)" if left_out
             else "Per class, worst F1 at the top (F1 and support at the right)")
    ax.set_title(title, loc="left", fontsize=11, pad=24)
    return png(fig)


def plot_learning_curves(report: dict) -> bytes | None:
    train, evals = report["history"]["train"], report["history"]["eval"]
    if not train and not evals:
        return None
    fig = figure(12, 4.2)
    ax_loss, ax_metric = fig.subplots(1, 2) if evals else (fig.add_subplot(), None)
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], color="#1f77b4", linewidth=1.2,
                     marker="o" if len(train) < 3 else None, label="training loss")
    val = [r for r in evals if r.get("loss") is not None]
    if val:
        ax_loss.plot([r["step"] for r in val], [r["loss"] for r in val], color="#d62728", marker="o",
                     linewidth=1.5, label="validation loss")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel(report.get("loss_name") or "loss")
    ax_loss.set_title("Loss", loc="left")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    best = report.get("best")
    if ax_metric is not None:
        for key, color in zip(report.get("curves") or ("accuracy", "macro_f1"), ("#9467bd", "#2ca02c")):
            pts = [r for r in evals if r.get(key) is not None]
            ax_metric.plot([r["step"] for r in pts], [r[key] for r in pts], marker="o", color=color,
                           linewidth=1.5, label=f"validation {METRIC_NAMES[key]}")
        ax_metric.set_xlabel("optimizer step")
        ax_metric.set_title("Validation metrics", loc="left")
        ax_metric.grid(alpha=0.3)
        if best and isinstance(best.get("step"), (int, float)):
            ax_metric.axvline(best["step"], color="#555555", linestyle="--", linewidth=1)
            name = METRIC_NAMES.get(best.get("metric"), best.get("metric"))
            # Lower-is-better curves fall towards the bottom right, where the legend and the note would sit.
            lower = best.get("metric") in LOWER_IS_BETTER
            ax_metric.annotate(f"best {name} {fmt(best.get('value'), 3)}\nstep {best['step']}",
                               xy=(best["step"], best.get("value") or 0), xytext=(-8, 18 if lower else -28),
                               textcoords="offset points", ha="right", fontsize=9,
                               arrowprops={"arrowstyle": "-", "color": "#555555"})
        ax_metric.legend(loc="upper right" if best and best.get("metric") in LOWER_IS_BETTER else "lower right")
    return png(fig)


def plot_calibration(cal: dict) -> bytes:
    fig = figure(12, 4.2)
    ax_hist, ax_rel = fig.subplots(1, 2)
    hist = cal["histogram"]
    edges = np.asarray(hist["edges"])
    width = np.diff(edges)
    correct, wrong = np.asarray(hist["correct"]), np.asarray(hist["wrong"])
    # Side by side, not stacked: stacked bars misstate the smaller part on a log scale.
    ax_hist.bar(edges[:-1], correct, width=width / 2, align="edge", color="#2ca02c", label="correct")
    ax_hist.bar(edges[:-1] + width / 2, wrong, width=width / 2, align="edge", color="#d62728", label="wrong")
    ax_hist.set_xlim(0, 1)
    ax_hist.set_xlabel("confidence (highest softmax probability)")
    # A confident model puts most examples in the last bin; a log scale keeps its mistakes visible.
    log_scale = (correct + wrong).max() > 0.5 * (correct + wrong).sum()
    if log_scale:
        ax_hist.set_yscale("log")
    ax_hist.set_ylabel("examples" + (" (log scale)" if log_scale else ""))
    ax_hist.set_title("Confidence of the predictions", loc="left")
    ax_hist.legend(loc="best")
    ax_hist.grid(axis="y", alpha=0.3)

    bins = [b for b in cal["bins"] if b["count"]]
    bw = 1 / cal["num_bins"]
    lows = np.array([b["low"] for b in bins])
    acc = np.array([b["accuracy"] for b in bins])
    conf = np.array([b["confidence"] for b in bins])
    ax_rel.plot([0, 1], [0, 1], linestyle="--", color="#777777", linewidth=1, label="perfect calibration")
    ax_rel.bar(lows, acc, width=bw, align="edge", color="#1f77b4", alpha=0.85, edgecolor="white", linewidth=0.8,
               label="accuracy in bin")
    # The gap is drawn as a line at the bin's mean confidence: shading it would hide the bar it overlaps.
    ax_rel.hlines(conf, lows + 0.1 * bw, lows + 0.9 * bw, color="#d62728", linewidth=2.2,
                  label="mean confidence in bin")
    ax_rel.vlines(lows + bw / 2, np.minimum(acc, conf), np.maximum(acc, conf), color="#d62728", linewidth=1)
    ax_rel.set_xlim(0, 1)
    ax_rel.set_ylim(0, 1.02)
    ax_rel.set_xlabel("confidence")
    ax_rel.set_ylabel("accuracy")
    ax_rel.set_title(f"Reliability: ECE {cal['ece']:.3f} ({cal['num_bins']} bins)", loc="left")
    ax_rel.legend(loc="upper left", fontsize=9)
    ax_rel.grid(alpha=0.3)
    return png(fig)


def plot_score_histograms(entry: dict) -> bytes:
    """One panel per data the out-of-scope score was measured on: the scores of in-scope and of
    out-of-scope examples, and the threshold between rejected and answered."""
    measured = {name: m for name, m in entry["measured"].items() if m.get("histogram")}
    fig = figure(6.2 * max(1, len(measured)), 4.0)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(measured))))
    for ax, (name, m) in zip(axes, measured.items()):
        hist = m["histogram"]
        edges = np.asarray(hist["edges"])
        # Each kind as a share of its own examples: out-of-scope ones are often far fewer.
        for key, color, label in (("in_scope", "#1f77b4", "in scope"), ("out_of_scope", "#d62728", "out of scope")):
            counts = np.asarray(hist[key], dtype=float)
            if counts.sum():
                ax.stairs(counts / counts.sum(), edges, fill=True, alpha=0.45, color=color,
                          label=f"{label} ({int(counts.sum())})")
        ax.axvline(hist["threshold"], color="#222222", linestyle="--", linewidth=1.4)
        ax.annotate("rejected  ", (hist["threshold"], 0.97), xycoords=("data", "axes fraction"), ha="right",
                    va="top", fontsize=9)
        ax.annotate("  answered", (hist["threshold"], 0.97), xycoords=("data", "axes fraction"), ha="left",
                    va="top", fontsize=9)
        recall = m.get("out_of_scope_recall")
        shown = f"; out-of-scope recall {recall:.3f}" if recall is not None else ""
        # Two lines: one line of data name and rates ran past a single panel's edge.
        ax.set_title(f"{name}\nin-scope rejected {fmt(m.get('in_scope_rejection_rate'), 3)}{shown}", loc="left",
                     fontsize=10)
        below = f"\nthe first bar also holds {hist['below']} lower scores" if hist.get("below") else ""
        ax.set_xlabel(f"{entry['method']} score (higher: more in scope){below}")
        ax.set_ylabel("share of examples")
        ax.legend(loc="upper left", fontsize=9, bbox_to_anchor=(0, 0.9))
        ax.grid(axis="y", alpha=0.3)
    return png(fig)


def plot_cooccurrence(labels: list[str], counts) -> bytes:
    """Row i, column j: the share of texts carrying label i that also carry label j (the diagonal,
    always 1, shows each label's support instead)."""
    from matplotlib.colors import PowerNorm

    counts = np.asarray(counts, dtype=float)
    n = len(labels)
    support = np.diag(counts).copy()
    share = np.divide(counts, support[:, None], out=np.zeros_like(counts), where=support[:, None] > 0)
    np.fill_diagonal(share, np.nan)
    many = n > MANY_CLASSES
    names = [f"{short_label(x)} ({int(s)})" for x, s in zip(labels, support)]
    size = 7 if many else 10
    margin = 0.6 + max(len(x) for x in names) * size * 0.6 / 72
    matrix = max(8.0, 0.2 * n) if many else max(2.6, 0.9 * n)
    fig = figure(matrix + margin + 1.3, matrix + margin + 0.5)
    ax = fig.add_subplot()
    top = float(np.nanmax(share)) if n > 1 and np.isfinite(share).any() else 1.0
    im = ax.imshow(share, cmap="Purples", norm=PowerNorm(gamma=0.5, vmin=0, vmax=max(top, 1e-6)),
                   interpolation="nearest")
    ax.set_xticks(range(n), [short_label(x) for x in labels], rotation=90, fontsize=size)
    ax.set_yticks(range(n), names, fontsize=size)
    ax.set_xlabel("also carries", fontsize=11)
    ax.set_ylabel("texts with label (support)", fontsize=11)
    if not many:
        for i in range(n):
            for j in range(n):
                if i != j and counts[i, j]:
                    ax.text(j, i, f"{100 * share[i, j]:.0f}%\n{int(counts[i, j])}", ha="center", va="center",
                            fontsize=8, color="white" if share[i, j] > 0.5 * top else "#222222")
    fig.colorbar(im, ax=ax, shrink=0.6 if many else 0.8, label="share of the row label's texts")
    ax.set_title("Label co-occurrence in the true labels", loc="left", fontsize=11)
    return png(fig)


def plot_predicted_vs_true(points: dict, target: str) -> bytes:
    """Each example as a dot at (true, predicted) with the diagonal of perfect answers; when the targets
    take few values, the mean prediction and its spread for each."""
    true, pred = np.asarray(points["true"], dtype=float), np.asarray(points["pred"], dtype=float)
    fig = figure(6.4, 6)
    ax = fig.add_subplot()
    distinct = np.unique(true)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(true)) if len(distinct) <= 20 else 0.0
    ax.scatter(true + jitter, pred, s=8, alpha=0.35, color="#1f77b4", linewidths=0, label="example")
    low, high = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([low, high], [low, high], linestyle="--", color="#777777", linewidth=1, label="predicted = true")
    if len(distinct) <= 20:
        means = [pred[true == v].mean() for v in distinct]
        spread = [pred[true == v].std() for v in distinct]
        ax.errorbar(distinct, means, yerr=spread, color="#d62728", marker="o", linewidth=1.5, capsize=3,
                    label="mean prediction ± sd")
    ax.set_xlabel(f"true {target}")
    ax.set_ylabel(f"predicted {target}")
    ax.set_title(f"Predicted against true ({len(true)} examples)", loc="left", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    return png(fig)


def plot_residuals(points: dict, target: str) -> bytes:
    """Residuals (predicted − true): their distribution, and against the prediction."""
    true, pred = np.asarray(points["true"], dtype=float), np.asarray(points["pred"], dtype=float)
    residual = pred - true
    fig = figure(12, 4.2)
    ax_hist, ax_scatter = fig.subplots(1, 2)
    ax_hist.hist(residual, bins=40, color="#1f77b4", alpha=0.85)
    ax_hist.axvline(0, color="#555555", linestyle="--", linewidth=1)
    ax_hist.axvline(float(residual.mean()), color="#d62728", linewidth=1.5, label=f"mean {residual.mean():+.3f}")
    ax_hist.set_xlabel(f"residual: predicted − true {target}")
    ax_hist.set_ylabel("examples")
    ax_hist.set_title("Distribution of the residuals", loc="left")
    ax_hist.legend(fontsize=9)
    ax_hist.grid(axis="y", alpha=0.3)
    ax_scatter.scatter(pred, residual, s=8, alpha=0.35, color="#1f77b4", linewidths=0)
    ax_scatter.axhline(0, color="#555555", linestyle="--", linewidth=1)
    ax_scatter.set_xlabel(f"predicted {target}")
    ax_scatter.set_ylabel("residual")
    ax_scatter.set_title("Residuals against the prediction", loc="left")
    ax_scatter.grid(alpha=0.3)
    return png(fig)


def css_width(image: bytes) -> int:
    """The width in CSS pixels at which a page shows a figure (``PIXEL_DENSITY`` image pixels each)."""
    return png_size(image)[0] // PIXEL_DENSITY
