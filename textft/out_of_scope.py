"""Out-of-scope rejection at prediction time: the in-scope score of an answer and whether it falls
below the threshold stored in a model's ``config.json`` (under ``OOS_KEY``).

Four scores, higher meaning more in scope: two read the logits (``msp``, ``energy``), two the features
the head reads (``mahalanobis``, ``knn``; their training statistics sit in a verified safetensors file
beside the model, textft.oos_features). ``textft calibrate`` (``textft.calibration``) chooses the score
and its threshold; ``textft.load``, ``predict`` and ``serve`` apply them through the single-label
task's ``decode``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from textft import oos_features
from textft.errors import UserError, closest

OOS_KEY = "textft_out_of_scope"
OOS_METHODS = ("msp", "energy", *oos_features.FEATURE_METHODS)
LOGIT_METHODS = ("msp", "energy")
DEFAULT_ORDER = ("mahalanobis", "knn", "energy", "msp")
"""The score ``textft calibrate`` picks when the validation data has no out-of-scope example to
compare them on, best first: the distance scores on a fine-tuned encoder's features beat the softmax
on held-out intents in published comparisons (Podolskiy et al. 2021: Mahalanobis first), and
benchmarks/oos_heldout.py measures all four on held-out Banking77 intents (BENCHMARKS.md)."""
DEFAULT_OOS_LABEL = "out_of_scope"
METHOD_NAMES = {"msp": "maximum softmax probability", "energy": "energy (logsumexp of the logits)",
                "mahalanobis": "minus the Mahalanobis distance to the nearest class mean", "knn": "cosine similarity"
                f" to the {oos_features.KNN_K}th nearest training example"}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def check_method(method: str, choices: tuple[str, ...] = OOS_METHODS) -> None:
    if method not in choices:
        raise UserError(f"'--method' must be one of {', '.join(choices)}, got '{method}'{closest(method, choices)}")


def oos_scores(logits: np.ndarray, method: str, temperature: float = 1.0) -> np.ndarray:
    """In-scope confidence of each row from its logits: maximum softmax probability (Hendrycks & Gimpel
    2017) or negative energy T·logsumexp(logits/T) (Liu et al. 2020); higher means more in scope."""
    check_method(method, LOGIT_METHODS)
    if problem := temperature_problem(temperature):
        raise UserError(f"out-of-scope temperature {problem}")
    logits = np.asarray(logits, dtype=np.float64)
    if method == "msp":
        return softmax(logits / temperature).max(-1)
    z = logits / temperature
    m = z.max(-1)
    return temperature * (m + np.log(np.exp(z - m[:, None]).sum(-1)))


def all_scores(logits: np.ndarray, features: np.ndarray | None,
               statistics: oos_features.FeatureStatistics | None) -> dict[str, np.ndarray]:
    """Every score these outputs allow: the logit scores, and the feature scores given statistics."""
    scores = {m: oos_scores(logits, m) for m in LOGIT_METHODS}
    if statistics is not None and features is not None:
        scores.update({m: statistics.score(features, m) for m in oos_features.FEATURE_METHODS})
    return scores


def in_scope_scores(settings: dict | None, statistics, logits: np.ndarray, features: np.ndarray | None):
    """The stored method's in-scope score of each row, or None without settings."""
    if settings is None:
        return None
    if len(logits) == 0:
        return np.zeros(0)
    if settings["method"] in LOGIT_METHODS:
        return oos_scores(logits, settings["method"], settings.get("temperature", 1.0))
    if features is None or statistics is None:
        raise ValueError(f"the {settings['method']} score needs the features and the statistics")
    return statistics.score(features, settings["method"])


def temperature_problem(temperature: Any) -> str | None:
    """Why ``temperature`` cannot scale logits (0 divides by zero, a negative one flips the order)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature <= 0:
        return f"must be a finite number > 0, got {temperature!r}"
    return None


def check_settings(settings: Any, where: str) -> dict | None:
    """The stored out-of-scope settings with defaults filled in, or None; malformed ones are an error."""
    if settings is None:
        return None
    if not isinstance(settings, dict):
        raise UserError(f"{where}: '{OOS_KEY}' must be a mapping, got {settings!r}")
    problems = []
    method = settings.get("method")
    if method not in OOS_METHODS:
        problems.append(f"{where}: '{OOS_KEY}.method' must be one of {', '.join(OOS_METHODS)}, got {method!r}"
                        + (closest(method, OOS_METHODS) if isinstance(method, str) else ""))
    threshold = settings.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        problems.append(f"{where}: '{OOS_KEY}.threshold' must be a number, got {threshold!r}")
    if problem := temperature_problem(settings.get("temperature", 1.0)):
        problems.append(f"{where}: '{OOS_KEY}.temperature' {problem}")
    if not isinstance(settings.get("label", DEFAULT_OOS_LABEL), str):
        problems.append(f"{where}: '{OOS_KEY}.label' must be a string, got {settings.get('label')!r}")
    if method in oos_features.FEATURE_METHODS and (problem := oos_features.entry_problem(settings.get("statistics"))):
        problems.append(f"{where}: '{OOS_KEY}.statistics' {problem}")
    if problems:
        raise UserError(problems)
    return {"label": DEFAULT_OOS_LABEL, "temperature": 1.0, **settings}


def load_statistics(model_dir, settings: dict | None, num_classes: int, where: str):
    """The verified feature statistics the stored method reads (None for a logit score or no settings)."""
    if settings is None or settings["method"] not in oos_features.FEATURE_METHODS:
        return None
    return oos_features.load(model_dir, settings["statistics"], num_classes, where)


def rejected(logits: np.ndarray, settings: dict, in_scope: np.ndarray | None = None) -> np.ndarray:
    """Which rows fall below the stored threshold: by their ``in_scope`` scores, or (for a logit score)
    by the scores of their logits."""
    if in_scope is None:
        in_scope = in_scope_scores(settings, None, logits, None)
    return np.asarray(in_scope) < settings["threshold"]
