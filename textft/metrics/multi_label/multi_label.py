"""textft's multi-label classification metrics as an ``evaluate`` module.

Load it by path, offline, from textft or from any Hugging Face code::

    import evaluate, textft.metric_modules
    metric = evaluate.load(textft.metric_modules.metric_path("multi_label"))
    metric.compute(predictions=[[1, 0], [1, 1]], references=[[1, 0], [0, 1]], label_names=["joy", "love"])

scikit-learn computes every number.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_recall_fscore_support

_DESCRIPTION = """Micro-, macro- and samples-F1, subset accuracy (every label of a text right), Hamming loss (share
of wrong label decisions), per-label precision / recall / F1 / support and the co-occurrence of the true
labels, for multi-hot predictions and references (one 0/1 column per label)."""

_INPUTS = """
Args:
    predictions (list of list of int): predicted 0/1 per label, one row per text.
    references (list of list of int): true 0/1 per label.
    label_names (list of str, optional): the name of each label column; default its index.
Returns:
    micro_f1, macro_f1, samples_f1, subset_accuracy, hamming_loss, micro_precision, micro_recall (float),
    num_examples (int), per_class ({name: {precision, recall, f1, support, predicted, in_macro}}: texts
    predicted to carry the label, and whether it is present and so in the macro average), macro_classes
    (how many are), classes_without_examples (labels no text of the split carries), cooccurrence (L x L counts of
    texts carrying both labels, the diagonal is each label's support), label_cardinality (mean true labels
    per text), label_cardinality_pred, empty_true / empty_pred (texts with no label), labels (the names).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class MultiLabel(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("int8")),
                                        "references": datasets.Sequence(datasets.Value("int8"))}),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html#multilabel-ranking-metrics"])

    def _compute(self, predictions, references, label_names=None):
        y_pred = np.asarray(predictions, dtype=np.int64).reshape(len(predictions), -1)
        y_true = np.asarray(references, dtype=np.int64).reshape(len(references), -1)
        n_labels = max(y_true.shape[1], y_pred.shape[1])
        label_names = list(label_names) if label_names is not None else [str(i) for i in range(n_labels)]
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
        micro = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
        predicted = y_pred.sum(0)
        present = np.flatnonzero((s > 0) | (predicted > 0))
        macro = f1_score(y_true, y_pred, average="macro", labels=present, zero_division=0) if len(present) else 0.0
        return {
            "micro_f1": float(micro[2]),
            "macro_f1": float(macro),
            # a text with no true and no predicted label is answered right: its F1 counts as 1
            "samples_f1": float(f1_score(y_true, y_pred, average="samples", zero_division=1.0)),
            "subset_accuracy": float(accuracy_score(y_true, y_pred)),
            "hamming_loss": float(hamming_loss(y_true, y_pred)),
            "micro_precision": float(micro[0]),
            "micro_recall": float(micro[1]),
            "num_examples": len(y_true),
            "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                                 "support": int(s[i]), "predicted": int(predicted[i]), "in_macro": bool(i in present)}
                          for i, name in enumerate(label_names)},
            "macro_classes": len(present),
            "classes_without_examples": [name for i, name in enumerate(label_names) if s[i] == 0],
            "cooccurrence": (y_true.T @ y_true).tolist(),
            "label_cardinality": float(y_true.sum(1).mean()),
            "label_cardinality_pred": float(y_pred.sum(1).mean()),
            "empty_true": int((y_true.sum(1) == 0).sum()),
            "empty_pred": int((y_pred.sum(1) == 0).sum()),
            "labels": label_names,
        }
