"""``textft calibrate``: the out-of-scope threshold that meets a target, and what each task calibrates.

``textft calibrate`` picks, on labelled validation data, the confidence below which a prediction is
answered with an out-of-scope label, and stores it in the model's ``config.json`` under ``OOS_KEY``;
``textft.load``, ``predict`` and ``serve`` apply it from there (``textft.out_of_scope``). Out of scope is a single-label idea
(a softmax over known classes); a multi-label model calibrates its decision thresholds instead, and a
regression model has nothing to calibrate.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from textft.errors import UserError
from textft.files import replace_file
from textft.lora import RECORD, is_adapter_dir
from textft.out_of_scope import DEFAULT_OOS_LABEL, OOS_KEY, OOS_METHODS, check_method, oos_scores  # noqa: F401
from textft.tasks import from_model_config
from textft.tasks.multi_label import THRESHOLDS_KEY


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
    out_of_scope_recall is the share of out-of-scope examples rejected.
    """
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
            "coverage": ratio(accepted.sum(), len(truth))}


def rejection_lines(m: dict, method: str) -> list[str]:
    """``rejection_metrics`` in words."""
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    return [f"threshold {m['threshold']:.6g} ({method}) on {m['num_examples']} examples"
            f" ({m['num_in_scope']} in scope, {m['num_out_of_scope']} out of scope)",
            f"in-scope accuracy {fmt(m['in_scope_accuracy'])} (without rejection"
            f" {fmt(m['in_scope_accuracy_without_rejection'])}), in-scope rejected {fmt(m['in_scope_rejection_rate'])},"
            f" out-of-scope recall {fmt(m['out_of_scope_recall'])}, precision of answers {fmt(m['precision'])}"]


def class_ids(labels: list, model_labels: list[str]) -> np.ndarray:
    """The model's class id of each label, -1 for a label the model does not have (out of scope)."""
    label2id = {name: i for i, name in enumerate(model_labels)}
    return np.array([label2id.get(str(y), -1) for y in labels])


def calibrate(clf, texts: list[str], labels: list, method: str = "msp", target_precision: float | None = None,
              target_rejection: float | None = None, oos_label: str = DEFAULT_OOS_LABEL,
              batch_size: int = 32) -> dict:
    """Out-of-scope settings for the classifier ``clf`` from labelled validation texts; labels that
    are not classes of the model (``oos_label`` or any other) count as out of scope."""
    if (target_precision is None) == (target_rejection is None):
        raise UserError("give exactly one of --target-precision and --target-rejection")
    if target_precision is not None and not 0 < target_precision <= 1:
        raise UserError(f"'--target-precision' must be in (0, 1], got {target_precision}")
    if target_rejection is not None and not 0 <= target_rejection < 1:
        raise UserError(f"'--target-rejection' must be in [0, 1), got {target_rejection}")
    check_method(method)
    if oos_label in clf.labels:
        raise UserError(f"'--label': '{oos_label}' is one of the model's own labels; choose another name")
    truth = class_ids(labels, clf.labels)
    logits = clf.logits(texts, batch_size)
    scores = oos_scores(logits, method)
    pred = logits.argmax(-1)
    threshold = choose_threshold(scores, (pred == truth) & (truth >= 0), truth >= 0, target_precision,
                                 target_rejection)
    target = {"precision": target_precision} if target_precision is not None else {"rejection": target_rejection}
    return {"method": method, "threshold": threshold, "label": oos_label, "temperature": 1.0, "target": target,
            "calibration": {**rejection_metrics(pred, truth, scores, threshold),
                            "precision_setting": clf.precision, "long_text": clf.long_text}}


def measure_threshold(clf, texts: list[str], labels: list, batch_size: int = 32) -> dict:
    """Quality of the threshold already stored in ``clf`` on labelled texts (e.g. a test file)."""
    stored = clf.out_of_scope
    logits = clf.logits(texts, batch_size)
    scores = oos_scores(logits, stored["method"], stored.get("temperature", 1.0))
    return rejection_metrics(logits.argmax(-1), class_ids(labels, clf.labels), scores, stored["threshold"])


def write_settings(model_dir: Path, settings: dict | None) -> None:
    """Store (or with None remove) the out-of-scope settings in ``config.json``, atomically."""
    write_config_entry(model_dir, OOS_KEY, settings)


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
                                         ("--method", args.method != "msp"), ("--label", args.label != DEFAULT_OOS_LABEL))
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
