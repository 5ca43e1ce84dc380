"""Classification metrics with scikit-learn (evaluate.load would need the Hub)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

METRIC_NAMES = ("accuracy", "precision", "recall", "f1")


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


def compute_metrics(eval_pred) -> dict:
    """For Trainer(compute_metrics=...): scalars only, so they show up in logs and log_history."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    metrics = classification_metrics(labels, np.argmax(logits, axis=-1), num_labels=logits.shape[-1])
    return {name: metrics[name] for name in METRIC_NAMES}


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
