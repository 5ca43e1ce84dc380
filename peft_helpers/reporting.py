"""Numbers and pictures: label balance, the pretrained model against the fine-tuned one, learning curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from datasets import DatasetDict

from .data import label_names, problem_of
from .metrics import METRIC_NAMES, PROBLEM_METRICS


def label_balance(data: DatasetDict) -> pd.DataFrame:
    """Examples per label and split (multi-label: texts carrying each label, and texts with none): a skewed split
    makes accuracy misleading. Regression: the target's mean, spread and range per split."""
    names, problem = label_names(data), problem_of(data["train"])
    if problem == "regression":
        return pd.DataFrame({split: pd.Series(ds["label"]).describe()[["mean", "std", "min", "max"]]
                             for split, ds in data.items()}).rename_axis("target")
    if problem == "multi-label":
        counts = {split: [*np.bincount([i for row in ds["label"] for i in row], minlength=len(names)).tolist(),
                          sum(not row for row in ds["label"])] for split, ds in data.items()}
        return pd.DataFrame(counts, index=[*names, "(none)"]).rename_axis("label")
    counts = {split: np.bincount(ds["label"], minlength=len(names)).tolist() for split, ds in data.items()}
    return pd.DataFrame(counts, index=names).rename_axis("label")


def comparison_table(baseline: dict, finetuned: dict) -> pd.DataFrame:
    """One row per metric: pretrained, fine-tuned and the change in points."""
    names = next((names for names in PROBLEM_METRICS.values() if names[0] in finetuned), METRIC_NAMES)
    rows = {
        name: {
            "pretrained": baseline[name],
            "fine-tuned": finetuned[name],
            # errors (MSE, MAE) are not fractions: their change is given as it is
            "change (points)": (1 if name in ("mse", "mae") else 100) * (finetuned[name] - baseline[name]),
        }
        for name in names
    }
    return pd.DataFrame.from_dict(rows, orient="index")


def format_comparison(baseline: dict, finetuned: dict) -> str:
    table = comparison_table(baseline, finetuned)
    lines = [f"{'metric':<10} {'pretrained':>10} {'fine-tuned':>10} {'change':>8}"]
    for name, row in table.iterrows():
        lines.append(f"{name:<10} {row['pretrained']:>10.4f} {row['fine-tuned']:>10.4f} {row['change (points)']:>+7.1f}p")
    return "\n".join(lines)


def plot_metrics(baseline: dict, finetuned: dict, ax=None):
    """Grouped bars, one group per metric."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    table = comparison_table(baseline, finetuned)[["pretrained", "fine-tuned"]]
    table.plot.bar(ax=ax, rot=0, color=["#9e9e9e", "#1f77b4"], ylim=(0, 1))
    for container in ax.containers:
        ax.bar_label(container, fmt="%.2f", fontsize=8)
    ax.set_ylabel("score")
    ax.set_title("Pretrained vs LoRA fine-tuned")
    ax.legend(loc="lower right")
    return ax


def plot_comparison(baseline: dict, finetuned: dict, label_names: list[str], method: str = "lora"):
    """One figure: the metrics before and after as grouped bars, then both confusion matrices."""
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), gridspec_kw={"width_ratios": [1.6, 1, 1]})
    plot_metrics(baseline, finetuned, ax=axes[0])
    axes[0].set_title(f"Pretrained vs {method} fine-tuned")
    for ax, (title, metrics) in zip(axes[1:], (("pretrained", baseline), (f"{method} fine-tuned", finetuned))):
        ConfusionMatrixDisplay(np.asarray(metrics["confusion_matrix"]), display_labels=label_names).plot(
            ax=ax, colorbar=False, cmap="Blues")
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_confusion_matrices(matrices: dict[str, list[list[int]]], label_names: list[str]):
    """Side-by-side confusion matrices, e.g. {'pretrained': cm_a, 'fine-tuned': cm_b}."""
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 3.8), squeeze=False)
    for ax, (title, matrix) in zip(axes[0], matrices.items()):
        ConfusionMatrixDisplay(np.asarray(matrix), display_labels=label_names).plot(ax=ax, colorbar=False, cmap="Blues")
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_regression(targets, predictions, title: str = "fine-tuned"):
    """Predicted against true values on the test split, with the diagonal a perfect model would follow."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.scatter(targets, predictions, s=6, alpha=0.4)
    low, high = float(min(np.min(targets), np.min(predictions))), float(max(np.max(targets), np.max(predictions)))
    ax.plot([low, high], [low, high], color="#9e9e9e", linewidth=1)
    ax.set(xlabel="true", ylabel="predicted", title=f"Test split: {title}")
    fig.tight_layout()
    return fig


def training_curves(log_history: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training loss per logged step, validation metrics per evaluation) from Trainer.state.log_history."""
    train = pd.DataFrame([r for r in log_history if "loss" in r and "eval_loss" not in r])
    evals = pd.DataFrame([r for r in log_history if "eval_loss" in r])
    return train, evals


def learning_curve(log_history: list[dict]) -> list[dict]:
    """The Trainer's log cut to what a learning curve needs (loss, validation metrics, by step and epoch),
    small enough to keep in results.json."""
    keep = ("step", "epoch", "loss", "learning_rate", "eval_loss", "eval_accuracy", "eval_f1")
    return [{k: r[k] for k in keep if k in r} for r in log_history if "loss" in r or "eval_loss" in r]


def plot_learning_curves(runs: dict[str, list[dict]]):
    """Training loss and validation accuracy against epochs, one line per run, so runs of different lengths
    and batch counts line up."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, history in runs.items():
        train, evals = training_curves(history)
        if not train.empty:
            ax_loss.plot(train["epoch"], train["loss"], marker=".", label=name or None)
        if not evals.empty:
            ax_acc.plot(evals["epoch"], evals["eval_accuracy"], marker="o", label=name or None)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy")
    if any(runs):
        ax_loss.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def plot_training(log_history: list[dict]):
    """The learning curve of one run (Trainer.state.log_history or results.json's learning_curve)."""
    return plot_learning_curves({"": log_history})


def file_sizes(path: str | Path) -> pd.DataFrame:
    files = sorted(f for f in Path(path).rglob("*") if f.is_file())
    return pd.DataFrame(
        {"file": [str(f.relative_to(path)) for f in files], "KiB": [round(f.stat().st_size / 1024, 1) for f in files]}
    )


def prediction_table(before, after) -> pd.DataFrame:
    """The same texts classified by two models (inference.Predictions), side by side."""
    rows = []
    pairs = zip(before.texts, before.labels, before.probabilities, after.labels, after.probabilities)
    for text, label_a, probs_a, label_b, probs_b in pairs:
        rows.append({"text": text, "before": f"{label_a} ({probs_a.max():.2f})", "after": f"{label_b} ({probs_b.max():.2f})"})
    return pd.DataFrame(rows)


def per_class_report(labels, predictions, label_names: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, one row per class."""
    from .metrics import per_class_metrics

    return per_class_table(per_class_metrics(labels, predictions, label_names))


def per_class_table(rows: list[dict]) -> pd.DataFrame:
    """metrics.per_class_metrics as a table, one row per class."""
    return pd.DataFrame(rows).set_index("label")


def confident_mistakes(texts: list[str], labels, logits, label_names: list[str], k: int = 10) -> pd.DataFrame:
    """The k wrong predictions the model was surest of: often label noise, sarcasm, or a class the model confuses."""
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    predicted = probabilities.argmax(-1)
    wrong = np.flatnonzero(predicted != np.asarray(labels))
    worst = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:k]
    return pd.DataFrame({
        "text": [texts[i] for i in worst],
        "true": [label_names[labels[i]] for i in worst],
        "predicted": [label_names[predicted[i]] for i in worst],
        "probability": [round(float(probabilities[i, predicted[i]]), 4) for i in worst],
    })
