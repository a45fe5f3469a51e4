"""``textft calibrate``: the out-of-scope score and threshold that meet a target, and what each task
calibrates.

For a single-label model, ``calibrate`` measures every out-of-scope score (textft.out_of_scope) on
labelled validation data, keeps one with the threshold below which a prediction is answered with an
out-of-scope label, and ``write_settings`` stores them in the model's ``config.json`` under ``OOS_KEY``
(with the training-feature statistics of a feature score in a safetensors file beside it,
textft.oos_features); ``textft.load``, ``predict`` and ``serve`` apply them. Out of scope is a
single-label idea (a softmax over known classes); a multi-label model calibrates its decision
thresholds instead, and a regression model has nothing to calibrate.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from textft import oos_features
from textft.errors import UserError
from textft.files import replace_file
from textft.lora import RECORD, is_adapter_dir
from textft.out_of_scope import (DEFAULT_OOS_LABEL, DEFAULT_ORDER, LOGIT_METHODS, OOS_KEY,  # noqa: F401
                                 OOS_METHODS, all_scores, check_method, oos_scores)
from textft.tasks import from_model_config
from textft.tasks.multi_label import THRESHOLDS_KEY

HISTOGRAM_BINS = 30


def choose_threshold(scores: np.ndarray, correct: np.ndarray, in_scope: np.ndarray,
                     target_precision: float | None = None, target_rejection: float | None = None) -> float:
    """The threshold (accept when score >= threshold) that meets the target on this data.

    target_precision: the lowest threshold whose accepted predictions are at least this precise
    (an out-of-scope example given any label counts as wrong): the most answers at that precision.
    target_rejection: reject this fraction of the in-scope examples (false rejections).
    """
    scores, correct, in_scope = np.asarray(scores, float), np.asarray(correct, bool), np.asarray(in_scope, bool)
    if target_rejection is not None:
        s = np.sort(scores[in_scope])
        if len(s) == 0:
            raise UserError("'--data' has no in-scope examples (labels of the model) to calibrate a rejection rate on")
        k = int(math.floor(target_rejection * len(s)))
        return float(s[min(k, len(s) - 1)]) if k > 0 else float(s[0])
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order]
    precision = np.cumsum(c) / np.arange(1, len(s) + 1)
    # Only positions where the score changes are reachable thresholds (ties are accepted together).
    boundary = np.r_[s[1:] != s[:-1], True]
    ok = np.flatnonzero(boundary & (precision >= target_precision - 1e-12))
    if len(ok) == 0:
        best = int(np.argmax(np.where(boundary, precision, -1)))
        raise UserError(f"'--target-precision': no threshold reaches precision {target_precision} on this data"
                        f" (the best is {precision[best]:.4f}, answering {best + 1} of {len(s)} examples);"
                        " lower the target")
    return float(s[ok[-1]])


def rejection_metrics(pred: np.ndarray, truth: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Quality at a threshold; ``truth`` holds a model class id, or -1 for out of scope.

    in_scope_accuracy counts a rejected in-scope example as wrong (as on CLINC150);
    out_of_scope_recall is the share of out-of-scope examples rejected; auroc how well the score
    ranks in-scope above out-of-scope examples, whatever the threshold.
    """
    from sklearn.metrics import roc_auc_score

    pred, truth, scores = np.asarray(pred), np.asarray(truth), np.asarray(scores, float)
    accepted = scores >= threshold
    ins = truth >= 0
    oos = ~ins
    right = accepted & (pred == truth) & ins

    def ratio(a, b):
        return float(a) / float(b) if b else None

    return {"threshold": float(threshold), "num_examples": int(len(truth)), "num_in_scope": int(ins.sum()),
            "num_out_of_scope": int(oos.sum()),
            "in_scope_accuracy": ratio(right.sum(), ins.sum()),
            "in_scope_accuracy_without_rejection": ratio(((pred == truth) & ins).sum(), ins.sum()),
            "in_scope_rejection_rate": ratio((~accepted & ins).sum(), ins.sum()),
            "out_of_scope_recall": ratio((~accepted & oos).sum(), oos.sum()),
            "out_of_scope_precision": ratio((~accepted & oos).sum(), (~accepted).sum()),
            "precision": ratio(right.sum(), accepted.sum()),
            "coverage": ratio(accepted.sum(), len(truth)),
            "auroc": float(roc_auc_score(ins, scores)) if ins.any() and oos.any() else None}


def score_histogram(scores: np.ndarray, truth: np.ndarray, threshold: float, bins: int = HISTOGRAM_BINS) -> dict:
    """Counts of in-scope and out-of-scope scores in equal-width bins around the in-scope scores and
    the threshold: scores further below (distances reach far) are counted in the first bin, the top
    0.5% in the last, so that the region where the two kinds meet stays readable."""
    scores, ins = np.asarray(scores, float), np.asarray(truth) >= 0
    inside = scores[ins] if ins.any() else scores
    if len(inside):
        low, high = np.quantile(inside, [0.005, 0.995])
        lo = max(float(scores.min()), min(low, threshold) - (high - low))
        hi = max(float(np.quantile(scores, 0.995)), high, threshold)
    else:
        lo, hi = threshold - 1, threshold + 1
    lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    clipped = np.clip(scores, lo, hi)
    return {"edges": [float(e) for e in edges], "threshold": float(threshold), "below": int((scores < lo).sum()),
            "in_scope": np.histogram(clipped[ins], edges)[0].tolist(),
            "out_of_scope": np.histogram(clipped[~ins], edges)[0].tolist()}


def rejection_lines(m: dict, method: str) -> list[str]:
    """``rejection_metrics`` in words."""
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    auroc = f", AUROC {fmt(m['auroc'])}" if m.get("auroc") is not None else ""
    return [f"threshold {m['threshold']:.6g} ({method}) on {m['num_examples']} examples"
            f" ({m['num_in_scope']} in scope, {m['num_out_of_scope']} out of scope)",
            f"in-scope accuracy {fmt(m['in_scope_accuracy'])} (without rejection"
            f" {fmt(m['in_scope_accuracy_without_rejection'])}), in-scope rejected {fmt(m['in_scope_rejection_rate'])},"
            f" out-of-scope recall {fmt(m['out_of_scope_recall'])}{auroc}, precision of answers {fmt(m['precision'])}"]


def method_table(methods: dict[str, dict], chosen: str) -> list[str]:
    """Every score measured by ``calibrate``, as a table (the chosen one marked)."""
    def fmt(v):
        return "-" if v is None else f"{v:.4f}"

    lines = ["| score | threshold | in-scope rejected | out-of-scope recall | AUROC | in-scope accuracy |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, m in methods.items():
        mark = " (chosen)" if name == chosen else ""
        lines.append(f"| {name}{mark} | {m['threshold']:.6g} | {fmt(m['in_scope_rejection_rate'])} |"
                     f" {fmt(m['out_of_scope_recall'])} | {fmt(m.get('auroc'))} | {fmt(m['in_scope_accuracy'])} |")
    return lines


def class_ids(labels: list, model_labels: list[str]) -> np.ndarray:
    """The model's class id of each label, -1 for a label the model does not have (out of scope)."""
    label2id = {name: i for i, name in enumerate(model_labels)}
    return np.array([label2id.get(str(y), -1) for y in labels], dtype=np.int64)


def check_targets(target_precision: float | None, target_rejection: float | None) -> dict:
    if (target_precision is None) == (target_rejection is None):
        raise UserError("give exactly one of --target-precision and --target-rejection")
    if target_precision is not None and not 0 < target_precision <= 1:
        raise UserError(f"'--target-precision' must be in (0, 1], got {target_precision}")
    if target_rejection is not None and not 0 <= target_rejection < 1:
        raise UserError(f"'--target-rejection' must be in [0, 1), got {target_rejection}")
    return {"precision": target_precision} if target_precision is not None else {"rejection": target_rejection}


def fit_statistics(clf, texts: list[str], labels: list, batch_size: int = 32):
    """Feature statistics of the training texts (labels that are not classes of ``clf`` are left out;
    beyond ``oos_features.MAX_BANK`` texts, a seeded sample of them)."""
    ids = class_ids(labels, clf.labels)
    if len(texts) > oos_features.MAX_BANK:
        keep = np.sort(np.random.default_rng(0).choice(len(texts), oos_features.MAX_BANK, replace=False))
        texts, ids = [texts[i] for i in keep], ids[keep]
    outputs = clf.outputs(texts, batch_size, features=True)
    return oos_features.fit(outputs.features, ids, len(clf.labels))


def measure_methods(outputs, truth: np.ndarray, statistics, targets: dict, method: str) -> dict[str, dict]:
    """Every score's threshold for the target and its quality on this data (with a precision target, a
    score that cannot reach it is left out; an error if it is the one asked for, or if none can)."""
    pred = outputs.logits.argmax(-1)
    measured, errors = {}, {}
    for name, scores in all_scores(outputs.logits, outputs.features, statistics).items():
        try:
            threshold = choose_threshold(scores, (pred == truth) & (truth >= 0), truth >= 0, targets.get("precision"),
                                         targets.get("rejection"))
        except UserError as e:
            errors[name] = e
            continue
        measured[name] = {**rejection_metrics(pred, truth, scores, threshold),
                          "histogram": score_histogram(scores, truth, threshold)}
    if method in errors or not measured:
        raise errors.get(method) or next(iter(errors.values()))
    return measured


def pick_method(measured: dict[str, dict], targets: dict) -> tuple[str, str]:
    """The score to keep and why: with out-of-scope examples the one that rejects most of them at the
    target (with a precision target: that answers most in-scope examples right); else the default."""
    first = next(iter(measured.values()))
    if not first["num_out_of_scope"]:
        name = next(m for m in DEFAULT_ORDER if m in measured)
        return name, ("it is the default (the calibration data has no out-of-scope example to compare the"
                      " scores on)")
    keys = ("in_scope_accuracy", "out_of_scope_recall") if "precision" in targets else \
        ("out_of_scope_recall", "in_scope_accuracy")
    name = max(measured, key=lambda m: (*(measured[m][k] or 0.0 for k in keys), -DEFAULT_ORDER.index(m)))
    return name, ("it answers the most in-scope examples correctly at the target on the calibration data"
                  if "precision" in targets else "it rejects the most out-of-scope examples at the target on the"
                  " calibration data")


def calibrate(clf, texts: list[str], labels: list, method: str = "auto", target_precision: float | None = None,
              target_rejection: float | None = None, oos_label: str = DEFAULT_OOS_LABEL, batch_size: int = 32,
              train: tuple[list[str], list] | None = None, source: str | None = None) -> tuple[dict, Any]:
    """Out-of-scope settings for the classifier ``clf`` from labelled validation texts, and the feature
    statistics they need (None for a logit score); labels that are not classes of the model
    (``oos_label`` or any other) count as out of scope. ``train`` (texts, labels): the training
    data the feature scores are fitted on; without it only the logit scores are measured. ``method``
    auto measures every score and keeps one (``pick_method``)."""
    targets = check_targets(target_precision, target_rejection)
    check_method(method, ("auto", *OOS_METHODS))
    if oos_label in clf.labels:
        raise UserError(f"'--label': '{oos_label}' is one of the model's own labels; choose another name")
    if method in oos_features.FEATURE_METHODS and train is None:
        raise UserError(f"'--method': {method} reads the training data's features: pass --train-data FILE")
    truth = class_ids(labels, clf.labels)
    if not (truth >= 0).any():
        raise UserError("'--data' has no in-scope examples (labels of the model) to calibrate on")
    statistics = fit_statistics(clf, *train, batch_size=batch_size) if train is not None else None
    outputs = clf.outputs(texts, batch_size, features=statistics is not None)
    measured = measure_methods(outputs, truth, statistics, targets, method)
    chosen, why = (method, "it was asked for (--method)") if method != "auto" else pick_method(measured, targets)
    m = measured[chosen]
    settings = {"method": chosen, "threshold": m["threshold"], "label": oos_label, "temperature": 1.0,
                "target": targets,
                "calibration": {**m, "data": source, "chosen_because": why, "precision_setting": clf.precision,
                                "long_text": clf.long_text,
                                "methods": {k: {key: v for key, v in measured[k].items() if key != "histogram"}
                                            for k in OOS_METHODS if k in measured}}}
    if chosen in oos_features.FEATURE_METHODS:
        settings["statistics"] = {"representation": clf.representation}
        return settings, statistics
    return settings, None


def measure_threshold(clf, texts: list[str], labels: list, batch_size: int = 32) -> dict:
    """Quality of the settings already stored in ``clf`` on labelled texts (e.g. a test file), with the
    histogram of their scores."""
    outputs = clf.outputs(texts, batch_size)
    return measure_outputs(outputs, class_ids(labels, clf.labels), clf.out_of_scope["threshold"])


def measure_outputs(outputs, truth: np.ndarray, threshold: float) -> dict:
    """``rejection_metrics`` and the histogram of the stored score (``outputs.in_scope``) at ``threshold``."""
    return {**rejection_metrics(outputs.logits.argmax(-1), truth, outputs.in_scope, threshold),
            "histogram": score_histogram(outputs.in_scope, truth, threshold)}


def write_settings(model_dir: Path, settings: dict | None, statistics=None) -> dict | None:
    """Store (or with None remove) the out-of-scope settings in ``config.json``, atomically, after the
    statistics file of a feature score; older statistics files go once config.json no longer names them."""
    if settings is not None and statistics is not None:
        entry = oos_features.save(statistics, model_dir, settings["statistics"]["representation"])
        settings = {**settings, "statistics": entry}
    write_config_entry(model_dir, OOS_KEY, settings)
    oos_features.remove_stale(model_dir, (settings or {}).get("statistics", {}).get("file"))
    return settings


# --- what each task calibrates ---------------------------------------------------------------------


def check_calibration(args, raw_config: dict) -> str:
    """What ``textft calibrate`` sets for this model (``out_of_scope`` or ``thresholds``), after refusing
    options that do not apply to it."""
    task = from_model_config(raw_config)
    kind = task.calibration
    if kind is None:
        raise UserError(f"'--model': '{args.model}' is a {task.name} model: its answer is the value itself, with no"
                        " threshold to calibrate")
    oos_only = [flag for flag, given in (("--target-precision", args.target_precision is not None),
                                         ("--target-rejection", args.target_rejection is not None),
                                         ("--method", args.method != "auto"), ("--label", args.label is not None),
                                         ("--train-data", args.train_data is not None))
                if given]
    if kind == "thresholds" and oos_only:
        raise UserError(f"{', '.join(oos_only)}: out-of-scope options apply to single-label models; '{args.model}'"
                        " is multi-label, whose calibration chooses its decision thresholds (--thresholds)")
    if kind == "out_of_scope" and (args.thresholds or args.text_pair_column):
        raise UserError("'--thresholds' and '--text-pair-column' apply to multi-label models; this one is single-label")
    return kind


def calibrate_thresholds(clf, args) -> list[str]:
    """Multi-label: the model's scores with its stored thresholds on ``--data``, then thresholds chosen on
    that data (stored unless --dry-run or --evaluate); returns the lines to print."""
    from textft.data import load_eval_split

    task = clf.task
    pair_column = args.text_pair_column or (clf.trained_setting("text_pair_column") if clf.pairs else None)
    ds, source = load_eval_split(args.data, None, args.text_column, args.label_column, task, None, pair_column)
    logits = clf.logits(ds["text"], args.batch_size, ds["text_pair"] if pair_column else None)
    labels = np.asarray(ds["labels"])

    def line(name: str, m: dict) -> str:
        return (f"{name}: macro-F1 {m['macro_f1']:.4f}  micro-F1 {m['micro_f1']:.4f}  samples-F1 {m['samples_f1']:.4f}"
                f"  ({m['num_examples']} examples of {source})")

    lines = [line(f"stored thresholds ({task.tuning})", task.evaluate(logits, labels))]
    if args.evaluate:
        return lines
    task.tuning = args.thresholds or task.tuning
    settings = task.choose_decision(logits, labels)
    settings["split"] = source
    lines.append(line(f"thresholds chosen here ({task.tuning})", task.evaluate(logits, labels)))
    if not args.dry_run:
        write_config_entry(clf.model_dir, THRESHOLDS_KEY, settings)
        lines.append(f"wrote '{THRESHOLDS_KEY}' to {settings_file(clf.model_dir)}: predict and serve now use them")
    return lines


def settings_file(model_dir: Path) -> Path:
    """Where a model's settings are stored: config.json, or for a LoRA adapter directory the classifier
    config in textft's record (a config.json there would make transformers take it for a full model)."""
    adapter = is_adapter_dir(Path(model_dir)) and (Path(model_dir) / RECORD).is_file()
    return Path(model_dir) / (RECORD if adapter else "config.json")


def write_config_entry(model_dir: Path, key: str, value: Any) -> None:
    """Store (or with None remove) one entry of the model's settings (``settings_file``), atomically."""
    path = settings_file(model_dir)
    whole = json.loads(path.read_text(encoding="utf-8"))
    data = whole["classifier_config"] if path.name == RECORD else whole
    if value is None:
        data.pop(key, None)
    else:
        data[key] = value
    replace_file(path, json.dumps(whole, indent=2, sort_keys=True) + "\n")
