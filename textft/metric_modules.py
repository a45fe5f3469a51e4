"""textft's metrics: ``evaluate`` modules shipped inside the package (``textft/metrics/<name>``),
loaded from their local path, so they work offline and any Hugging Face code can load them the same
way (``evaluate.load(metric_path("classification"))``); scikit-learn computes inside them. The tasks
compute their validation and test metrics through them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

METRICS_DIR = Path(__file__).parent / "metrics"


def metric_path(name: str) -> str:
    """Local path of one of textft's ``evaluate`` metric modules, for ``evaluate.load``."""
    return str(METRICS_DIR / name)


@functools.lru_cache(maxsize=None)
def load_metric(name: str = "classification"):
    import evaluate

    # In memory: nothing is written next to the module's cache, and several processes do not share files.
    return evaluate.load(metric_path(name), keep_in_memory=True)


def compute_metrics(y_true, y_pred, label_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, per-class precision/recall/F1/support and the confusion matrix."""
    return load_metric("classification").compute(predictions=np.asarray(y_pred).tolist(),
                                                 references=np.asarray(y_true).tolist(),
                                                 label_names=list(label_names))
