"""Out-of-scope rejection at prediction time: the confidence score of an answer and whether it falls
below the threshold stored in a model's ``config.json`` (under ``OOS_KEY``). ``textft calibrate``
(``textft.calibration``) chooses that threshold; ``textft.load``, ``predict`` and ``serve`` apply it
through the single-label task's ``decode``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from textft.errors import UserError, closest

OOS_KEY = "textft_out_of_scope"
OOS_METHODS = ("msp", "energy")
DEFAULT_OOS_LABEL = "out_of_scope"


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def check_method(method: str) -> None:
    if method not in OOS_METHODS:
        raise UserError(f"'--method' must be one of {', '.join(OOS_METHODS)}, got '{method}'"
                        f"{closest(method, OOS_METHODS)}")


def oos_scores(logits: np.ndarray, method: str, temperature: float = 1.0) -> np.ndarray:
    """In-scope confidence of each row: maximum softmax probability (Hendrycks & Gimpel 2017) or
    negative energy T·logsumexp(logits/T) (Liu et al. 2020); higher means more in scope."""
    check_method(method)
    if problem := temperature_problem(temperature):
        raise UserError(f"out-of-scope temperature {problem}")
    logits = np.asarray(logits, dtype=np.float64)
    if method == "msp":
        return softmax(logits / temperature).max(-1)
    z = logits / temperature
    m = z.max(-1)
    return temperature * (m + np.log(np.exp(z - m[:, None]).sum(-1)))


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
    if settings.get("method") not in OOS_METHODS:
        problems.append(f"{where}: '{OOS_KEY}.method' must be one of {', '.join(OOS_METHODS)},"
                        f" got {settings.get('method')!r}")
    threshold = settings.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        problems.append(f"{where}: '{OOS_KEY}.threshold' must be a number, got {threshold!r}")
    if problem := temperature_problem(settings.get("temperature", 1.0)):
        problems.append(f"{where}: '{OOS_KEY}.temperature' {problem}")
    if not isinstance(settings.get("label", DEFAULT_OOS_LABEL), str):
        problems.append(f"{where}: '{OOS_KEY}.label' must be a string, got {settings.get('label')!r}")
    if problems:
        raise UserError(problems)
    return {"label": DEFAULT_OOS_LABEL, "temperature": 1.0, **settings}


def rejected(logits: np.ndarray, settings: dict) -> np.ndarray:
    """Which rows fall below the stored threshold."""
    return oos_scores(logits, settings["method"], settings.get("temperature", 1.0)) < settings["threshold"]
