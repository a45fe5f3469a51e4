"""textft's regression metrics as an ``evaluate`` module.

Load it by path, offline, from textft or from any Hugging Face code::

    import evaluate, textft.metric_modules
    metric = evaluate.load(textft.metric_modules.metric_path("regression"))
    metric.compute(predictions=[2.5, 7.0, 9.1], references=[3, 8, 9])

scikit-learn and scipy compute every number.
"""

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

_DESCRIPTION = """Mean absolute error, root mean squared error, coefficient of determination (R²) and the Pearson
and Spearman correlations of predicted and true values. A correlation is undefined (None) when either
side is constant."""

_INPUTS = """
Args:
    predictions (list of float): predicted values.
    references (list of float): true values.
Returns:
    mae, rmse, mse, r2 (float), pearson, spearman (float or None), num_examples (int), mean_prediction,
    mean_reference, std_prediction, std_reference (float).
"""


def _correlation(fn, a, b):
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(fn(a, b)[0])


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class Regression(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("float64"),
                                        "references": datasets.Value("float64")}),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html#regression-metrics"])

    def _compute(self, predictions, references):
        pred, true = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
        mse = float(mean_squared_error(true, pred))
        return {
            "mae": float(mean_absolute_error(true, pred)),
            "rmse": mse ** 0.5,
            "mse": mse,
            "r2": float(r2_score(true, pred)) if len(true) > 1 else None,
            "pearson": _correlation(pearsonr, pred, true),
            "spearman": _correlation(spearmanr, pred, true),
            "num_examples": len(true),
            "mean_prediction": float(pred.mean()),
            "mean_reference": float(true.mean()),
            "std_prediction": float(pred.std()),
            "std_reference": float(true.std()),
        }
