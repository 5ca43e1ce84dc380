"""Metrics with scikit-learn and SciPy (evaluate.load would need the Hub): single-label classification, multi-label
classification (SemEval-2018 E-c's Jaccard index first) and regression (GLUE STS-B's Pearson and Spearman)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
)

METRIC_NAMES = ("accuracy", "precision", "recall", "f1")
# The scalar metrics of each problem (data.PROBLEMS), the first one the headline.
PROBLEM_METRICS = {"single-label": METRIC_NAMES, "multi-label": ("jaccard", "micro_f1", "macro_f1", "exact_match"),
                   "regression": ("pearson", "spearman", "mse", "mae")}
# Multi-label: a label is predicted when its sigmoid reaches this, until a threshold is tuned on validation.
DEFAULT_THRESHOLD = 0.5


def classification_metrics(labels, predictions, num_labels: int | None = None) -> dict:
    """Accuracy and macro precision/recall/F1 (every class counts the same, so a model that always answers
    one class cannot look good), plus the confusion matrix (rows: true labels, columns: predictions)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape or labels.size == 0:
        raise ValueError(f"need equally many labels and predictions, got {labels.shape} and {predictions.shape}")
    if num_labels is None:
        num_labels = int(max(labels.max(), predictions.max())) + 1
    classes = list(range(num_labels))
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predictions, labels=classes, average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "confusion_matrix": confusion_matrix(labels, predictions, labels=classes).tolist(),
    }


def multilabel_metrics(labels, predicted, label_names: list[str]) -> dict:
    """Labels and predictions as (n, k) 0/1 arrays. Jaccard index averaged over texts (SemEval-2018 E-c's official
    score; a text with no label and no prediction scores 1), micro- and macro-F1, exact match (every label right),
    and per label precision/recall/F1/support."""
    labels, predicted = np.asarray(labels).astype(int), np.asarray(predicted).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, average=None, zero_division=0)
    return {
        "jaccard": float(jaccard_score(labels, predicted, average="samples", zero_division=1.0)),
        "micro_f1": float(f1_score(labels, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "exact_match": float(accuracy_score(labels, predicted)),
        "per_label": [{"label": n, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for n, p, r, f, s in zip(label_names, precision, recall, f1, support)],
    }


def regression_metrics(targets, predictions) -> dict:
    """Pearson and Spearman correlation (GLUE's STS-B scores), mean squared and mean absolute error."""
    from scipy.stats import pearsonr, spearmanr

    targets, predictions = np.asarray(targets, dtype=np.float64), np.asarray(predictions, dtype=np.float64)
    constant = np.ptp(predictions) == 0 or np.ptp(targets) == 0  # no correlation is defined: call it 0
    return {
        "pearson": 0.0 if constant else float(pearsonr(targets, predictions)[0]),
        "spearman": 0.0 if constant else float(spearmanr(targets, predictions)[0]),
        "mse": float(mean_squared_error(targets, predictions)),
        "mae": float(mean_absolute_error(targets, predictions)),
    }


def sigmoid(logits) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def problem_of_outputs(logits, labels) -> str:
    """The problem of an evaluation from its arrays: one 0/1 column per label (multi-label), one output with float
    targets (regression), class ids (single-label)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return "multi-label"
    return "regression" if logits.shape[-1] == 1 and labels.dtype.kind == "f" else "single-label"


def score(logits, labels, label_names: list[str] | None = None, threshold: float = DEFAULT_THRESHOLD) -> tuple[dict, np.ndarray]:
    """(metrics, predictions) of any problem: class ids, (n, k) 0/1 label sets at `threshold`, or numbers."""
    logits = np.asarray(logits)
    problem = problem_of_outputs(logits, labels)
    if problem == "regression":
        predictions = logits[:, 0]
        return regression_metrics(labels, predictions), predictions
    if problem == "multi-label":
        predictions = (sigmoid(logits) >= threshold).astype(int)
        names = label_names or [str(i) for i in range(logits.shape[-1])]
        return multilabel_metrics(labels, predictions, names), predictions
    predictions = logits.argmax(-1)
    return classification_metrics(labels, predictions, num_labels=logits.shape[-1]), predictions


def tune_threshold(logits, labels) -> float:
    """Multi-label: the one decision threshold (shared by every label) with the best Jaccard index on these
    (validation) rows, from 0.05 to 0.95 in steps of 0.05; ties go to the threshold nearest 0.5."""
    probabilities, labels = sigmoid(logits), np.asarray(labels).astype(int)
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    values = [jaccard_score(labels, (probabilities >= t).astype(int), average="samples", zero_division=1.0) for t in grid]
    best = max(values)
    return float(min((t for t, v in zip(grid, values) if v >= best - 1e-12), key=lambda t: abs(t - 0.5)))


def compute_metrics(eval_pred) -> dict:
    """For Trainer(compute_metrics=...): scalars only, so they show up in logs and log_history. The problem is read
    from the arrays (multi-label at the default threshold while training)."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    metrics, _ = score(logits, labels)
    return {name: value for name, value in metrics.items() if isinstance(value, float)}


def per_class_metrics(labels, predictions, label_names: list[str]) -> list[dict]:
    """Precision, recall, F1 and support of every class (scikit-learn's classification report, as rows)."""
    classes = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        np.asarray(labels), np.asarray(predictions), labels=classes, average=None, zero_division=0
    )
    return [
        {"label": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
        for name, p, r, f, n in zip(label_names, precision, recall, f1, support)
    ]
