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


# ---- plots (matplotlib's Agg backend: files only, no display needed) ----


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_log_history(log_history: list[dict], keys: list[str], path: str, title: str, x_key: str = "step") -> bool:
    """Plots each of `keys` over `x_key` from a Trainer's `state.log_history`; returns False when none was logged."""
    series = {key: [(entry[x_key], entry[key]) for entry in log_history if key in entry and x_key in entry]
              for key in keys}  # fmt: skip
    series = {key: points for key, points in series.items() if points}
    if not series:
        return False
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for key, points in sorted(series.items()):
        axis.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
    axis.set_xlabel(x_key)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def logging_steps_for_curves(total_steps: int, points: int = 20, at_most: int = 10) -> int:
    """A `logging_steps` that draws training curves of at least `points` logged steps over a run of `total_steps`
    optimizer steps (every step when the run is shorter), and logs at least every `at_most` steps in longer runs.

    Example:

    ```python
    >>> logging_steps_for_curves(8), logging_steps_for_curves(100), logging_steps_for_curves(10_000)
    (1, 5, 10)
    ```
    """
    return max(1, min(at_most, total_steps // points))


def plot_training_curves(log_history: list[dict], path: str, title: str) -> bool:
    """Training loss, gradient norm and learning rate over steps, one panel each, from a Trainer's
    `state.log_history`; returns False when nothing was logged."""
    panels = [("loss", "training loss"), ("grad_norm", "gradient norm"), ("learning_rate", "learning rate")]
    series = {key: [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
              for key, _ in panels}  # fmt: skip
    if not any(series.values()):
        return False
    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for axis, (key, name) in zip(axes, panels):
        if series[key]:
            axis.plot(*zip(*series[key]), marker="." if len(series[key]) < 30 else None)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def plot_attention_overlays(
    images: np.ndarray, teacher_maps: np.ndarray, student_maps: np.ndarray, path: str, labels: list[str] | None = None
) -> None:
    """One row per image: the image, the teacher's attention over it, the student's.

    Args:
        images: `(count, height, width, 3)` in [0, 1].
        teacher_maps, student_maps: `(count, rows, columns)` spatial distributions (resampled to the image size).
    """
    plt = _pyplot()
    count = len(images)
    figure, axes = plt.subplots(count, 3, figsize=(6, 2 * count), squeeze=False)
    for row in range(count):
        height, width = images[row].shape[:2]
        for column, (title, attention) in enumerate(
            (("image", None), ("teacher attention", teacher_maps[row]), ("student attention", student_maps[row]))
        ):
            axis = axes[row][column]
            axis.imshow(images[row], interpolation="nearest")
            if attention is not None:
                axis.imshow(attention, cmap="jet", alpha=0.5, extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                            interpolation="bilinear")  # fmt: skip
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(title, fontsize=9)
        if labels is not None:
            axes[row][0].set_ylabel(labels[row], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def classification_report_rows(labels: np.ndarray, predictions: np.ndarray, id2label: dict[int, str]) -> list[dict]:
    """Per-class precision, recall, F1 and support (scikit-learn's classification report), one dict per class, then
    the macro and weighted averages."""
    from sklearn.metrics import classification_report

    indices = sorted(id2label)
    report = classification_report(labels, predictions, labels=indices, target_names=[id2label[i] for i in indices],
                                   output_dict=True, zero_division=0)  # fmt: skip
    rows = []
    for name in [id2label[i] for i in indices] + ["macro avg", "weighted avg"]:
        values = report[name]
        rows.append({"class": name, "precision": values["precision"], "recall": values["recall"],
                     "f1": values["f1-score"], "support": int(values["support"])})  # fmt: skip
    return rows


def plot_confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, id2label: dict[int, str], path: str, title: str
) -> np.ndarray:
    """Saves the confusion matrix (rows: true class, columns: predicted; counts, and colour by row share) as a PNG
    and returns it."""
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    indices = sorted(id2label)
    matrix = confusion_matrix(labels, predictions, labels=indices)
    plt = _pyplot()
    size = max(5, 0.5 * len(indices) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    display = ConfusionMatrixDisplay(matrix, display_labels=[id2label[i] for i in indices])
    display.plot(ax=axis, cmap="Blues", colorbar=False, xticks_rotation=45, values_format="d")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return matrix


def paired_accuracy_gain(
    correct: np.ndarray, reference_correct: np.ndarray, confidence: float = 0.95, num_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, float | int]:  # fmt: skip
    """How much more accurate a model is than a reference model on the same images, with a paired bootstrap interval:
    the images are resampled with replacement and both models' results on an image stay together, so the interval
    says how much the gain depends on which images were drawn for the split (not on the training seed).

    Args:
        correct (`np.ndarray` of shape `(num_images,)`): whether the model got each image right.
        reference_correct (`np.ndarray` of shape `(num_images,)`): the same for the reference, on the same images.
        confidence (`float`, *optional*, defaults to 0.95): the interval's coverage.

    Returns:
        `gain` (accuracy difference), `low` and `high` (the interval's ends), `images`, and `only_model_right` /
        `only_reference_right` (the images only one of the two got right).
    """
    correct, reference_correct = np.asarray(correct, dtype=bool), np.asarray(reference_correct, dtype=bool)
    if correct.ndim != 1 or correct.shape != reference_correct.shape or not len(correct):
        raise ValueError(
            f"paired_accuracy_gain needs two equal-length, non-empty 1-D results; got shapes {correct.shape} and "
            f"{reference_correct.shape}."
        )
    differences = correct.astype(np.int8) - reference_correct.astype(np.int8)  # +1, 0 or -1 per image
    generator = np.random.default_rng(seed)
    means = np.concatenate([
        differences[generator.integers(0, len(differences), size=(min(1000, num_resamples - start), len(differences)))]
        .mean(axis=1)
        for start in range(0, num_resamples, 1000)
    ])  # fmt: skip
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {
        "gain": float(differences.mean()),
        "low": float(low),
        "high": float(high),
        "confidence": confidence,
        "images": len(differences),
        "only_model_right": int((differences == 1).sum()),
        "only_reference_right": int((differences == -1).sum()),
    }


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of `rows` (dicts) with `columns` given as (key, header); floats with 4 decimals."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        if isinstance(value, int):
            return f"{value:,}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(header for _, header in columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


__all__ = [
    "ClassificationMetrics",
    "build_compute_metrics",
    "classification_report_rows",
    "logging_steps_for_curves",
    "markdown_table",
    "paired_accuracy_gain",
    "plot_attention_overlays",
    "plot_confusion_matrix",
    "plot_log_history",
    "plot_training_curves",
]
