"""textft's single-label classification metrics as an ``evaluate`` module.

Load it by path, offline, from textft or from any Hugging Face code::

    import evaluate, textft.metric_modules
    metric = evaluate.load(textft.metric_modules.metric_path("classification"))
    metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], label_names=["neg", "pos"])

scikit-learn computes every number.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

_DESCRIPTION = """Accuracy, macro- and weighted-F1, per-class precision / recall / F1 / support and the confusion
matrix of a single-label classifier. Classes are 0..K-1, named by ``label_names`` (K = its length;
classes that never occur still get a row, so reports of different splits line up).

Macro averages run over the classes present in the split, true or predicted (scikit-learn's default):
a class with no example and no prediction has no F1 to average, and counting it as 0 would make a
split that covers 20 of 150 classes look like a bad model."""

_INPUTS = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    label_names (list of str, optional): the name of each class id; default the ids seen, as strings.
Returns:
    accuracy, macro_f1, weighted_f1 (float), num_examples (int), per_class ({name: {precision, recall,
    f1, support, predicted, in_macro}}: ``predicted`` counts the predictions of the class, ``in_macro``
    says whether it is present and so in the macro average), macro_classes (how many are),
    classes_without_examples (names of the classes with no example in the split), confusion_matrix
    (K x K list, rows true, columns predicted), labels (the names).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html"])

    def _compute(self, predictions, references, label_names=None):
        if label_names is None:
            label_names = [str(i) for i in range(max([*predictions, *references], default=-1) + 1)]
        ids = list(range(len(label_names)))
        p, r, f, s = precision_recall_fscore_support(references, predictions, labels=ids, zero_division=0)
        matrix = confusion_matrix(references, predictions, labels=ids)
        predicted = matrix.sum(axis=0)
        present = (s > 0) | (predicted > 0)
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            # labels=None: the classes in references or predictions, as f1_score(y, p, average="macro")
            "macro_f1": float(f1_score(references, predictions, average="macro", zero_division=0))
            if len(references) else 0.0,
            "weighted_f1": float(f1_score(references, predictions, labels=ids, average="weighted", zero_division=0)),
            "num_examples": len(references),
            "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                                 "support": int(s[i]), "predicted": int(predicted[i]), "in_macro": bool(present[i])}
                          for i, name in enumerate(label_names)},
            "macro_classes": int(present.sum()),
            "classes_without_examples": [name for i, name in enumerate(label_names) if s[i] == 0],
            "confusion_matrix": matrix.tolist(),
            "labels": list(label_names),
        }
