"""Classification metrics through `evaluate`, usable as the Trainer's `compute_metrics`.

`evaluate.load("accuracy")` fetches its metric script from the Hub at run time, which fails offline and on locked
down clusters. `ClassificationMetrics` is the same computation (scikit-learn's accuracy and macro-F1, as the Hub's
`accuracy` and `f1` modules do) as a local `evaluate.Metric`, with the same `add_batch` / `compute` interface.
Under the Trainer, predictions are already gathered from every process before `compute_metrics` sees them.
"""

from __future__ import annotations

from collections.abc import Callable

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from transformers import EvalPrediction


class ClassificationMetrics(evaluate.Metric):
    """Accuracy and macro-averaged F1 of integer class predictions.

    Example:

    ```python
    >>> metric = ClassificationMetrics()
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.666..., 'f1_macro': 0.666...}
    ```
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Accuracy and macro-averaged F1 (scikit-learn) of single-label classification.",
            citation="",
            inputs_description="predictions and references: integer class indices of the same length.",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions: list[int], references: list[int]) -> dict[str, float]:
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "f1_macro": float(f1_score(references, predictions, average="macro", zero_division=0)),
        }


def build_compute_metrics() -> Callable[[EvalPrediction], dict[str, float]]:
    """A `compute_metrics` for `transformers.Trainer`: logits and labels in, accuracy and macro-F1 out."""
    # In memory: no arrow cache file written at every evaluation.
    metric = ClassificationMetrics(keep_in_memory=True)

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        if isinstance(logits, tuple):  # the model also returned hidden states or attentions
            logits = logits[0]
        labels = np.asarray(eval_prediction.label_ids)
        return metric.compute(predictions=np.asarray(logits).argmax(axis=-1), references=labels)

    return compute_metrics


__all__ = ["ClassificationMetrics", "build_compute_metrics"]
